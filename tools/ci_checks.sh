#!/usr/bin/env bash
# The checks CI runs after the README's test command (.ci/run). One clang build, in
# build-checks/ from scratch, with AddressSanitizer + UndefinedBehaviorSanitizer
# (POLYAK_FUZZ=ON implies them, and adds libFuzzer's coverage hooks), serves:
#   1. the whole test suite under the sanitizers: any report aborts the process that
#      made it (-fno-sanitize-recover=all), which fails its test. Two suites at a time,
#      one thread each: on two cores that beats one suite at a time on both.
#   2. the fuzz smoke: every parser fuzzed for SECONDS, two at a time (tests/fuzz/run.sh), starting
#      with the regression inputs of tests/fuzz/corpus
# Only what these need is built (not sgemm_bench).
#   usage: tools/ci_checks.sh [SECONDS per fuzz target, default 20]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
tools/install-deps.sh --fuzz
rm -rf build-checks
# Without MPI: Open MPI's libraries keep memory until exit that LeakSanitizer would
# report in every multi-rank test; the data-parallel code is tested by the README's
# command (test_distributed_np2/np4, test_apps' data-parallel cases).
CC=clang CXX=clang++ cmake -S . -B build-checks -DPOLYAK_FUZZ=ON -DPOLYAK_CUDA=OFF -DPOLYAK_MPI=OFF
cmake --build build-checks -j2 --target test_engine test_data test_e2e test_models test_apps test_ema test_distributed fuzzers
POLYAK_THREADS=1 ctest --test-dir build-checks --output-on-failure -j2
tests/fuzz/run.sh build-checks "$seconds" 2
