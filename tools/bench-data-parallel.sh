#!/usr/bin/env bash
# Data-parallel throughput on this machine: ResNet-20 training images/s of one process
# on all cores (2 threads here) against `mpirun -np 2` at 1 thread each, alternated over
# ROUNDS rounds, and per step the time a rank waits for the other and the time of the
# all-reduce of the gradients and BN statistics, for ResNet-20 and ResNet-18. Each run is
# one epoch of 100 steps of batch 128 (ResNet-18: 20 steps) on real CIFAR-10, without
# averages; the rates are those of the epoch line. Nothing else may run meanwhile.
#   usage: tools/bench-data-parallel.sh [BUILD=build] [ROUNDS=2]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
rounds=${2:-2}
train=$build/apps/train
out=$(mktemp -d /tmp/polyak-dp-bench.XXXXXX)
trap 'rm -rf "$out"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
common=(--epochs 1 --batch-size 128 --ema-decays none --test-subset 256 --eval-every 1)
epoch_line() { grep -a '^epoch 1/1 ' "$1" | tail -1 | sed 's/.*(\(.*\))$/\1/'; }
run() {  # label, model, images, then the launcher words
  local label=$1 model=$2 images=$3
  shift 3
  local log="$out/$label.log"
  "$@" "$train" --model "$model" --train-subset "$images" "${common[@]}" --output "$out/$label.run" > "$log" 2>&1
  rm -rf "$out/$label.run"
  printf '%-28s %s\n' "$label" "$(epoch_line "$log")"
}
for round in $(seq "$rounds"); do
  run "resnet20 1 process x 2 thr" resnet20 12800 env POLYAK_THREADS=2
  run "resnet20 2 ranks x 1 thr" resnet20 12800 mpirun --oversubscribe -np 2 -x POLYAK_THREADS=1
done
run "resnet18 2 ranks x 1 thr" resnet18 2560 mpirun --oversubscribe -np 2 -x POLYAK_THREADS=1
