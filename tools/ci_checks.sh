#!/usr/bin/env bash
# The checks meant to follow the README's test command in CI (not yet wired into .ci/run:
# they wait for a measured run on an idle machine), each in a build folder of its own,
# from scratch:
#   build-asan  the whole test suite under AddressSanitizer + UndefinedBehaviorSanitizer
#               (g++; any report fails the test that made it)
#   build-fuzz  every parser fuzzed for SECONDS (clang + libFuzzer, tests/fuzz/run.sh)
#   usage: tools/ci_checks.sh [SECONDS per fuzz target, default 40]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-40}
tools/install-deps.sh --fuzz
rm -rf build-asan build-fuzz
cmake -S . -B build-asan -DPOLYAK_SANITIZE=ON -DPOLYAK_CUDA=OFF
cmake --build build-asan -j2
ctest --test-dir build-asan --output-on-failure
CC=clang CXX=clang++ cmake -S . -B build-fuzz -DPOLYAK_FUZZ=ON -DPOLYAK_CUDA=OFF -DPOLYAK_BUILD_TESTS=OFF
cmake --build build-fuzz -j2 --target fuzzers
tests/fuzz/run.sh build-fuzz "$seconds"
