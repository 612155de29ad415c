#!/usr/bin/env bash
# The runs behind docs/RESULTS.md: the paper's findings F1-F4 (and P1, post-hoc EMA) on CIFAR-10 with
# ResNet-20, an 80/20 train/validation split and five EMAs, 30 epochs each (the
# times measured are in docs/RESULTS.md).
#
#   tools/run-findings.sh F1 [F2 ...]    (or: all)
#
# Each finding is one `train` command (printed before it runs); its run folder is
# runs/findings/<name>, and the wall and CPU time of the command are appended to
# runs/findings/times.txt. Build first (README). Runs go one after another: they
# use every core.
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/findings
mkdir -p "$out"
train=${POLYAK_TRAIN:-./build/apps/train}   # a copy lets a rebuild go on while runs do
common=(--model resnet20 --epochs 30 --val-split 0.2)

run() {
  local name=$1
  shift
  echo "+ $train ${common[*]} $* --output $out/$name"
  local start=$SECONDS
  /usr/bin/time -f "$name: %e s wall, %U s user, %S s system, max RSS %M KiB" -a -o "$out/times.txt" \
    "$train" "${common[@]}" "$@" --output "$out/$name"
  echo "$name finished in $((SECONDS - start)) s"
}

finding() {
  case $1 in
    # Label noise: CIFAR-10N's worst human labels for training, clean validation.
    F1) run f1_noisy --labels ../shared/data/cifar-n/cifar10n_worse_label.u8 --bn-recompute end ;;
    # The paper's five decays at T = 16, every average evaluated every other epoch with
    # its running statistics and with statistics recomputed on 40 training batches.
    F2) run f2_paper_decays --ema-decays paper --bn-recompute epoch --bn-recompute-batches 40 --eval-every 2 ;;
    # Three seeds of the default protocol (cosine), evaluated every other epoch; seed 0
    # is also F4's cosine arm.
    F3) run f3_seeds --seeds 0,1,2 --bn-recompute end --eval-every 2 ;;
    # Step decay, seed 0: compare with f3_seeds/seed0.
    F4) run f4_multistep --sched multistep --seed 0 --bn-recompute end --eval-every 2 ;;
    # Post-hoc EMA (seed 0 of F3's protocol, two power averages tracked and snapshot),
    # then every average rebuilt from the snapshots: a grid of power averages and the
    # run's own five exponential ones, each evaluated with and without BN recompute.
    P1) run p1_phema --seed 0 --bn-recompute end --eval-every 2 --phema 0.05,0.10
        phema=${POLYAK_PHEMA:-$(dirname "$train")/phema}
        /usr/bin/time -f "p1_phema reconstruction: %e s wall, %U s user" -a -o "$out/times.txt" \
          "$phema" "$out/p1_phema" --sigma-rel 0.02,0.03,0.05,0.08,0.1,0.13,0.17,0.2,0.25 --ema run ;;
    *) echo "run-findings.sh: unknown finding '$1' (F1, F2, F3, F4, P1 or all)" >&2; exit 2 ;;
  esac
}

[ $# -gt 0 ] || { echo "usage: tools/run-findings.sh F1|F2|F3|F4|all ..." >&2; exit 2; }
[ "$1" = all ] && set -- F1 F2 F3 F4
for f in "$@"; do finding "$f"; done
