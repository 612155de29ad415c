#!/usr/bin/env bash
# Runs every fuzz target of BUILD_DIR (configured with -DPOLYAK_FUZZ=ON, built with
# `cmake --build BUILD_DIR --target fuzzers`) for SECONDS each, and fails when any of
# them crashes (a sanitizer report, an abort, a broken invariant, a timeout, or memory
# beyond the limit). Each target starts from a copy of tests/fuzz/corpus/<target>/ in a
# temporary folder, so the corpus in the repository does not grow; the regression inputs
# there (crash-*) are run first. A crashing input is kept in BUILD_DIR/fuzz-crashes/.
#   usage: tests/fuzz/run.sh BUILD_DIR SECONDS
set -euo pipefail
if (($# != 2)) || ! [[ $2 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 BUILD_DIR SECONDS (per target)" >&2
  exit 2
fi
build=$(cd "$1" && pwd)
seconds=$2
here=$(cd "$(dirname "$0")" && pwd)
crashes=$build/fuzz-crashes
work=$(mktemp -d "${TMPDIR:-/tmp}/polyak_fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$crashes" "$work/tmp"

failed=()
for source in "$here"/fuzz_*.cpp; do
  target=$(basename "$source" .cpp)
  binary=$build/tests/fuzz/$target
  if [[ ! -x $binary ]]; then
    echo "$target: $binary is missing (build it with: cmake --build $1 --target fuzzers)" >&2
    exit 2
  fi
  corpus=$work/corpus/$target
  mkdir -p "$corpus"
  cp "$here/corpus/$target"/* "$corpus/"
  log=$work/$target.log
  # -close_fd_mask=3: the parsers' own messages (bad flags, rejected files) would flood
  # the log; libFuzzer and the sanitizers still report on a duplicate of stderr.
  # TMPDIR: the targets' scratch files go into the temporary folder removed at the end.
  rc=0
  TMPDIR=$work/tmp "$binary" "$corpus" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -close_fd_mask=3 -print_final_stats=1 -artifact_prefix="$crashes/$target-" >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  runtime=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log")
  coverage=$(grep -o 'cov: [0-9]* ft: [0-9]* corp: [0-9]*/[0-9a-zA-Z]*' "$log" | tail -n 1 || true)
  if ((rc == 0)); then
    printf '%-20s ok      %9s execs in %ss (%s/s), %s\n' "$target" "$execs" "$runtime" "$rate" "$coverage"
  else
    printf '%-20s FAILED  (exit %d); the last lines of its log:\n' "$target" "$rc"
    tail -n 60 "$log" | sed 's/^/    /'
    failed+=("$target")
  fi
done
if ((${#failed[@]})); then
  echo "fuzzing found crashes in: ${failed[*]} (inputs in $crashes/)" >&2
  exit 1
fi
