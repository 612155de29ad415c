#!/usr/bin/env bash
# Runs every fuzz target of BUILD_DIR (configured with -DPOLYAK_FUZZ=ON, built with
# `cmake --build BUILD_DIR --target fuzzers`) for SECONDS each, JOBS targets at a time
# (default 1), and fails when any of them crashes (a sanitizer report, an abort, a
# broken invariant, a timeout, or memory beyond the limit). Each target starts from a
# copy of tests/fuzz/corpus/<target>/ in a temporary folder, so the corpus in the
# repository does not grow; the regression inputs there (crash-*) are run first.
# libFuzzer draws a fresh random seed each run (printed with the results). A crashing
# input is kept in BUILD_DIR/fuzz-crashes/. Naming TARGETs runs only those.
#   usage: tests/fuzz/run.sh BUILD_DIR SECONDS [JOBS [TARGET...]]
# CI runs a short smoke (tools/ci_checks.sh); long campaigns use the same command, e.g.
#   tests/fuzz/run.sh build-checks 1800 3
set -euo pipefail
if (($# < 2)) || ! [[ $2 =~ ^[1-9][0-9]*$ ]] || ! [[ ${3:-1} =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 BUILD_DIR SECONDS (per target) [JOBS (targets at a time) [TARGET...]]" >&2
  exit 2
fi
build=$(cd "$1" && pwd)
seconds=$2
jobs=${3:-1}
shift $(($# < 3 ? $# : 3))
here=$(cd "$(dirname "$0")" && pwd)
crashes=$build/fuzz-crashes
work=$(mktemp -d "${TMPDIR:-/tmp}/polyak_fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$crashes"

targets=("$@")
if ((${#targets[@]} == 0)); then
  for source in "$here"/fuzz_*.cpp; do targets+=("$(basename "$source" .cpp)"); done
fi
for target in "${targets[@]}"; do
  if [[ ! -x $build/tests/fuzz/$target ]]; then
    echo "$target: $build/tests/fuzz/$target is missing (build it with: cmake --build $1 --target fuzzers)" >&2
    exit 2
  fi
done

# One target: its exit code goes to $work/<target>.rc, its log to $work/<target>.log.
fuzz_one() {
  local target=$1 corpus=$work/corpus/$1 scratch=$work/tmp/$1
  mkdir -p "$corpus" "$scratch"
  cp "$here/corpus/$target"/* "$corpus/"
  # -close_fd_mask=3: the parsers' own messages (bad flags, rejected files) would flood
  # the log; libFuzzer and the sanitizers still report on a duplicate of stderr.
  # TMPDIR: the target's scratch files go into a temporary folder of its own.
  local rc=0
  TMPDIR=$scratch "$build/tests/fuzz/$target" "$corpus" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -close_fd_mask=3 -print_final_stats=1 -artifact_prefix="$crashes/$target-" >"$work/$target.log" 2>&1 || rc=$?
  echo "$rc" >"$work/$target.rc"
}

running=0
for target in "${targets[@]}"; do
  if ((running == jobs)); then
    wait -n || true
    running=$((running - 1))
  fi
  fuzz_one "$target" &
  running=$((running + 1))
done
wait

failed=()
for target in "${targets[@]}"; do
  log=$work/$target.log
  rc=$(cat "$work/$target.rc")
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  runtime=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log")
  seed=$(sed -n 's/^INFO: Seed: \([0-9]*\).*/\1/p' "$log" | head -n 1)
  coverage=$(grep -o 'cov: [0-9]* ft: [0-9]* corp: [0-9]*/[0-9a-zA-Z]*' "$log" | tail -n 1 || true)
  if ((rc == 0)); then
    printf '%-24s ok      %10s execs in %ss (%s/s), seed %s, %s\n' "$target" "$execs" "$runtime" "$rate" "$seed" "$coverage"
  else
    printf '%-24s FAILED  (exit %d); the last lines of its log:\n' "$target" "$rc"
    tail -n 60 "$log" | sed 's/^/    /'
    failed+=("$target")
  fi
done
if ((${#failed[@]})); then
  echo "fuzzing found crashes in: ${failed[*]} (inputs in $crashes/)" >&2
  exit 1
fi
