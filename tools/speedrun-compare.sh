#!/usr/bin/env bash
# Time to 94% on this machine: polyak's speedrun and its PyTorch twin
# (tools/airbench_torch.py, with tcmalloc), one run each per seed, alternated, so that
# both meet the same machine conditions; then the table (tools/speedrun_table.py).
# A seed whose run file exists is skipped: a stopped comparison continues where it was.
# Each run takes 15-25 minutes here; nothing else may run meanwhile.
#   usage: tools/speedrun-compare.sh [BUILD=build] [SEEDS="0 1 2 3 4"] [OUT=runs/speedrun-compare] [THREADS=2]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
seeds=${2:-0 1 2 3 4}
out=${3:-runs/speedrun-compare}
threads=${4:-2}
data=${POLYAK_DATA:-../shared/data}/cifar10
tcmalloc=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
mkdir -p "$out/polyak" "$out/pytorch"
for seed in $seeds; do
  if [[ ! -f $out/polyak/run$seed.json ]]; then
    "$build/apps/speedrun" --runs 1 --seed "$seed" --threads "$threads" --data "$data" --output "$out/polyak" \
      > "$out/polyak/seed$seed.log" 2>&1
  fi
  tail -1 "$out/polyak/seed$seed.log"
  if [[ ! -f $out/pytorch/run$seed.json ]]; then
    LD_PRELOAD=$tcmalloc /usr/bin/python3 tools/airbench_torch.py --runs 1 --seed "$seed" --threads "$threads" \
      --data "$data" --output "$out/pytorch" > "$out/pytorch/seed$seed.log" 2>&1
  fi
  tail -1 "$out/pytorch/seed$seed.log"
done
/usr/bin/python3 tools/speedrun_table.py "$out/polyak" "$out/pytorch"
