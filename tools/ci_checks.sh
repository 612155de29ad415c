#!/usr/bin/env bash
# The checks CI runs after the README's test command (.ci/run). One clang build of
# everything, in build-checks/ from scratch, with AddressSanitizer + UndefinedBehavior-
# Sanitizer (POLYAK_FUZZ=ON implies them, and adds libFuzzer's coverage hooks), serves:
#   1. the whole test suite under the sanitizers: any report aborts the process that
#      made it (-fno-sanitize-recover=all), which fails its test
#   2. the fuzz smoke: every parser fuzzed for SECONDS (tests/fuzz/run.sh), starting
#      with the regression inputs of tests/fuzz/corpus
# Measured on the 2-core CI machine: about 13 minutes with the default 30 s per target.
#   usage: tools/ci_checks.sh [SECONDS per fuzz target, default 30]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
tools/install-deps.sh --fuzz
rm -rf build-checks
CC=clang CXX=clang++ cmake -S . -B build-checks -DPOLYAK_FUZZ=ON -DPOLYAK_CUDA=OFF
cmake --build build-checks -j2  # the libraries, apps, test suites and fuzz targets
ctest --test-dir build-checks --output-on-failure
tests/fuzz/run.sh build-checks "$seconds"
