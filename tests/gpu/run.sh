#!/usr/bin/env bash
# The one script to run on a machine with an NVIDIA GPU: builds polyak with the CUDA
# table, runs the whole test suite with the GPU required (a parity test that would skip
# fails instead), benchmarks training and evaluation on the GPU, compares with PyTorch
# on the same GPU when it is installed, times one training epoch of ResNet-18 with five
# EMAs, and prints a short table last. About 8 minutes on an H200 with 16 cores; every
# step has a timeout and the whole run a budget, after which the remaining steps are
# skipped (and say so in the table).
#
#   tests/gpu/run.sh              on the GPU machine, from anywhere in the checkout
#   tests/gpu/run.sh --prebuild   on a build machine: packs .gpu-prebuilt.tar.gz (test,
#                                 bench and train binaries for sm_90 and the non-system
#                                 libraries they need), which run.sh uses when the GPU
#                                 machine cannot configure the project (a missing
#                                 OpenBLAS, doctest, CLI11 or nlohmann_json). Carry it.
#
# Environment: OUT (a folder for the logs; default gpu-logs/ in the checkout),
# POLYAK_GPU_BUDGET (seconds, default 480), POLYAK_GPU_BUILD (the build folder, default
# /tmp/polyak-gpu-build), POLYAK_DATA (real CIFAR-10 under $POLYAK_DATA/cifar10; without
# it the epoch is timed on random images in the CIFAR-10 file format).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

# ------------------------------------------------------------------ --prebuild
if [[ "${1:-}" == "--prebuild" ]]; then
  build="$ROOT/build-gpu-prebuilt"
  stage="$(mktemp -d)"
  cmake -S "$ROOT" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPOLYAK_CUDA=ON -DPOLYAK_NATIVE=OFF \
    -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null
  cmake --build "$build" -j"$(nproc)" --target test_engine test_models test_data test_ema test_e2e bench train
  mkdir -p "$stage/bin" "$stage/lib"
  for t in test_engine test_models test_data test_ema test_e2e; do cp "$build/tests/$t" "$stage/bin/"; done
  cp "$build/apps/bench" "$build/apps/train" "$stage/bin/"
  strip "$stage"/bin/*
  # Libraries that a CUDA image may lack (the CUDA ones are found there).
  for lib in libopenblas.so.0 libgfortran.so.5 libquadmath.so.0 libgomp.so.1 libz.so.1; do
    path="$(ldd "$build/tests/test_engine" "$build/apps/train" | awk -v l="$lib" '$1 == l {print $3; exit}')"
    if [[ -n "$path" ]]; then cp -L "$path" "$stage/lib/"; fi
  done
  tar -C "$stage" -czf "$ROOT/.gpu-prebuilt.tar.gz" bin lib
  rm -rf "$stage"
  echo "wrote $ROOT/.gpu-prebuilt.tar.gz ($(du -h "$ROOT/.gpu-prebuilt.tar.gz" | cut -f1)); carry it to the GPU machine"
  exit 0
fi

# ------------------------------------------------------------------ bookkeeping
LOGS="${OUT:-$ROOT/gpu-logs}"
mkdir -p "$LOGS"
BUILD="${POLYAK_GPU_BUILD:-/tmp/polyak-gpu-build}"
BUDGET="${POLYAK_GPU_BUDGET:-480}"
JOBS="$(nproc)"
START=$SECONDS
ROWS=()
FAILED=0

elapsed() { echo $((SECONDS - START)); }
say() { printf '[%4ss] %s\n' "$(elapsed)" "$*"; }
row() { ROWS+=("$1|$2|$3|$4"); }  # step | status | seconds | detail
# A step's timeout: its own limit, or what is left of the budget (minus a reserve for the table).
limit() {
  local left=$((BUDGET - $(elapsed) - 10))
  if ((left < $1)); then echo "$left"; else echo "$1"; fi
}
# run NAME SECONDS CMD...: output to $LOGS/NAME.log; returns the command's status (124: timeout).
run() {
  local name="$1" seconds="$2"
  shift 2
  if ((seconds < 5)); then return 125; fi
  local rc=0
  timeout --kill-after=10 "$seconds" "$@" >"$LOGS/$name.log" 2>&1 || rc=$?
  return "$rc"
}
status_of() { case "$1" in 0) echo ok ;; 124 | 137) echo TIMEOUT ;; 125) echo "skip (budget)" ;; *) echo "FAIL ($1)" ;; esac; }
print_table() {
  {
    echo
    echo "polyak GPU run: $(date -u '+%Y-%m-%d %H:%M UTC'), $(elapsed) s, logs in $LOGS"
    printf '%-22s %-14s %6s  %s\n' step status seconds detail
    printf '%-22s %-14s %6s  %s\n' ---- ------ ------- ------
    local r step st secs detail
    for r in "${ROWS[@]}"; do
      IFS='|' read -r step st secs detail <<<"$r"
      printf '%-22s %-14s %6s  %s\n' "$step" "$st" "$secs" "$detail"
    done
  } | tee "$LOGS/summary.txt"
}
trap 'print_table' EXIT

# ------------------------------------------------------------------ the machine
t0=$SECONDS
gpu="$(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1 || true)"
if [[ -n "$gpu" ]]; then
  row "gpu" ok $((SECONDS - t0)) "$gpu"
else
  row "gpu" FAIL $((SECONDS - t0)) "nvidia-smi sees no GPU"
  FAILED=1
fi
say "GPU: ${gpu:-none}; nvcc: $(nvcc --version 2>/dev/null | tail -1 || echo none); cmake: $(cmake --version | head -1)"

# cuDNN and cuBLAS may live in the CUDA toolkit or only in the Python wheels (nvidia-*).
CMAKE_EXTRA=()
LIBDIRS=()
find_first() { local f; for f in "$@"; do if [[ -e "$f" ]]; then echo "$f"; return 0; fi; done; return 1; }
PY_NVIDIA="$(python3 -c 'import nvidia, os; print(" ".join(nvidia.__path__))' 2>/dev/null || true)"
cudnn_h="$(find_first /usr/local/cuda/include/cudnn.h /usr/include/cudnn.h /usr/include/x86_64-linux-gnu/cudnn.h \
  $(for d in $PY_NVIDIA; do echo "$d/cudnn/include/cudnn.h"; done) || true)"
cudnn_so="$(find_first /usr/local/cuda/lib64/libcudnn.so /usr/local/cuda/lib/libcudnn.so /usr/lib/x86_64-linux-gnu/libcudnn.so \
  $(for d in $PY_NVIDIA; do echo "$d/cudnn/lib/libcudnn.so.9"; done) || true)"
if [[ -n "$cudnn_h" && -n "$cudnn_so" ]]; then
  CMAKE_EXTRA+=("-DCUDNN_INCLUDE_DIR=$(dirname "$cudnn_h")" "-DCUDNN_LIBRARY=$cudnn_so")
  LIBDIRS+=("$(dirname "$cudnn_so")")
fi
if ! ls /usr/local/cuda/lib64/libcublas.so* >/dev/null 2>&1; then
  cublas_so="$(find_first $(for d in $PY_NVIDIA; do echo "$d/cu13/lib/libcublas.so.13" "$d/cublas/lib/libcublas.so.13"; done) || true)"
  if [[ -n "${cublas_so:-}" ]]; then
    CMAKE_EXTRA+=("-DCUDA_cublas_LIBRARY=$cublas_so" "-DCUDA_cublasLt_LIBRARY=$(dirname "$cublas_so")/libcublasLt.so.13")
    LIBDIRS+=("$(dirname "$cublas_so")")
  fi
fi
for d in "${LIBDIRS[@]}"; do export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; done
say "cuDNN: ${cudnn_h:-not found} ${cudnn_so:-}"

# ------------------------------------------------------------------ build
MODE=""
t0=$SECONDS
generator=()
if command -v ninja >/dev/null; then generator=(-G Ninja); fi
if run configure "$(limit 120)" cmake -S "$ROOT" -B "$BUILD" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DPOLYAK_CUDA=ON "${CMAKE_EXTRA[@]}"; then
  archs="$(grep -m1 'CUDA archs' "$LOGS/configure.log" | sed 's/.*: //' || true)"
  rc=0
  run build "$(limit 330)" cmake --build "$BUILD" -j"$JOBS" || rc=$?
  if ((rc == 0)); then
    MODE=built
    BIN_TESTS="$BUILD/tests"
    BIN_APPS="$BUILD/apps"
    row "build" ok $((SECONDS - t0)) "CUDA archs ${archs:-?}; warnings: $(grep -c 'warning' "$LOGS/build.log" || true)"
  else
    row "build" "$(status_of $rc)" $((SECONDS - t0)) "see build.log: $(grep -m1 -E 'error|FAILED' "$LOGS/build.log" || true)"
  fi
else
  row "configure" FAIL $((SECONDS - t0)) "$(grep -m1 -E 'Error|Could not|not found' "$LOGS/configure.log" || true)"
fi
if [[ -z "$MODE" && -f "$ROOT/.gpu-prebuilt.tar.gz" ]]; then
  pre="$(mktemp -d)"
  tar -C "$pre" -xzf "$ROOT/.gpu-prebuilt.tar.gz"
  export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$pre/lib"
  MODE=prebuilt
  BIN_TESTS="$pre/bin"
  BIN_APPS="$pre/bin"
  row "prebuilt" ok 0 "using .gpu-prebuilt.tar.gz (built elsewhere for sm_90)"
fi
if [[ -z "$MODE" ]]; then
  say "no build and no .gpu-prebuilt.tar.gz: stopping"
  exit 1
fi

# ------------------------------------------------------------------ tests
# POLYAK_REQUIRE_GPU=1: a parity test that finds no GPU fails rather than skips.
export POLYAK_REQUIRE_GPU=1
export POLYAK_THREADS=4  # six suites run at once on the CPU side
t0=$SECONDS
if [[ "$MODE" == built ]]; then
  rc=0
  run ctest "$(limit 300)" ctest --test-dir "$BUILD" -j 6 --timeout 280 --output-on-failure || rc=$?
  detail="$(grep -E 'tests passed|tests failed' "$LOGS/ctest.log" | tail -1 || true)"
  failed_tests="$(grep -E '\*\*\*Failed|\*\*\*Timeout|\*\*\*Exception' "$LOGS/ctest.log" | awk '{print $4}' | tr '\n' ' ' || true)"
  row "ctest (whole suite)" "$(status_of $rc)" $((SECONDS - t0)) "$detail ${failed_tests:+failed: $failed_tests}"
  ((rc == 0)) || FAILED=1
else
  pids=()
  for t in test_engine test_models test_data test_ema test_e2e; do
    (run "$t" "$(limit 280)" "$BIN_TESTS/$t") &
    pids+=($!)
  done
  rc_all=0
  for p in "${pids[@]}"; do wait "$p" || rc_all=1; done
  summary=""
  for t in test_engine test_models test_data test_ema test_e2e; do
    summary+="$t: $(grep -m1 -o 'test cases:.*failed' "$LOGS/$t.log" | sed 's/ *| */ /g' || echo '?'); "
  done
  row "tests (prebuilt)" "$( ((rc_all == 0)) && echo ok || echo FAIL)" $((SECONDS - t0)) "$summary"
  ((rc_all == 0)) || FAILED=1
fi
# The GPU cases alone, for the table (quick: small tensors).
t0=$SECONDS
rc=0
run gpu_cases "$(limit 120)" "$BIN_TESTS/test_engine" -tc='*accelerator*,*GPU*' || rc=$?
row "GPU parity+gradcheck" "$(status_of $rc)" $((SECONDS - t0)) \
  "$(grep -m1 -o 'test cases:.*' "$LOGS/gpu_cases.log" | tr -s ' ' || echo 'no summary')"
((rc == 0)) || FAILED=1

# ------------------------------------------------------------------ benchmarks
unset POLYAK_THREADS
if "$BIN_APPS/bench" --help 2>/dev/null | grep -q -- '--device'; then
  for spec in "resnet20 128" "resnet18 128" "resnet18 512"; do
    read -r model batch <<<"$spec"
    t0=$SECONDS
    rc=0
    run "bench_${model}_b${batch}" "$(limit 120)" "$BIN_APPS/bench" --device cuda --model "$model" --batch-size "$batch" || rc=$?
    row "bench $model b$batch" "$(status_of $rc)" $((SECONDS - t0)) \
      "$(grep -E 'images/s|img/s|ms|MiB' "$LOGS/bench_${model}_b${batch}.log" | tr -s ' ' | tr '\n' ';' | cut -c1-160)"
  done
else
  row "bench" skip 0 "apps/bench has no --device flag yet"
fi

if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  for model in resnet18 resnet20; do
    t0=$SECONDS
    rc=0
    run "torch_$model" "$(limit 120)" python3 "$ROOT/tests/gpu/torch_bench.py" --model "$model" --batch-size 128 || rc=$?
    while IFS= read -r line; do row "pytorch $model" "$(status_of $rc)" $((SECONDS - t0)) "$line"; done \
      < <(grep '^torch' "$LOGS/torch_$model.log" || echo "see torch_$model.log")
  done
else
  row "pytorch" skip 0 "python3 with CUDA-enabled torch not found"
fi

# ------------------------------------------------------------------ one epoch of resnet18 with five EMAs
if "$BIN_APPS/train" --help 2>/dev/null | grep -q -- '--device'; then
  data="${POLYAK_DATA:-$ROOT/shared/data}/cifar10"
  what="CIFAR-10"
  if [[ ! -e "$data/data_batch_1.bin" && ! -e "$data/data_batch_1.bin.gz" ]]; then
    data="/tmp/polyak-synthetic-cifar10"
    what="random images in CIFAR-10 format (timing only)"
    python3 - "$data" <<'EOF'
import os, sys
d = sys.argv[1]
os.makedirs(d, exist_ok=True)
names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
for name in names:
    records = bytearray(os.urandom(10000 * 3073))
    for r in range(10000):
        records[r * 3073] = r % 10
    with open(os.path.join(d, name), "wb") as f:
        f.write(records)
EOF
  fi
  t0=$SECONDS
  rc=0
  run train_epoch "$(limit 240)" "$BIN_APPS/train" --model resnet18 --dataset cifar10 --data "$data" --epochs 1 \
    --device cuda --ema-decays paper --output /tmp/polyak-gpu-run --bn-recompute none || rc=$?
  row "train resnet18 1 epoch" "$(status_of $rc)" $((SECONDS - t0)) \
    "5 EMAs, $what; $(grep -o '[0-9]* img/s[^)]*' "$LOGS/train_epoch.log" | tail -1 || true)"
else
  row "train epoch" skip 0 "apps/train has no --device flag yet"
fi

exit "$FAILED"
