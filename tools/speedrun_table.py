"""The time-to-94% table of tools/speedrun-compare.sh: per seed, polyak's and PyTorch's
time and TTA test accuracy, then the mean and sample standard deviation of each, the
ratio of mean times and the share of runs at 94% or above, as Markdown. The seconds per
step of each run's median epoch are listed too: this machine's speed drifts (by half,
for minutes at a time, when other work shares its host), and the median epoch shows a
run's pace without the slow minutes.

    /usr/bin/python3 tools/speedrun_table.py RUNS/polyak RUNS/pytorch

Reads every run<seed>.json in the two folders (the files speedrun and
tools/airbench_torch.py write); seeds present in only one folder are listed and left
out of the comparison.
"""
import glob, json, os, statistics, sys


def runs(folder):
    out = {}
    for path in glob.glob(os.path.join(folder, "run*.json")):
        with open(path) as f:
            r = json.load(f)
        out[r["seed"]] = r
    return out


def median_step_seconds(run):
    return statistics.median(e["seconds"] / e["steps"] for e in run["epochs"] if e["steps"])


def mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    ours, theirs = runs(sys.argv[1]), runs(sys.argv[2])
    seeds = sorted(set(ours) & set(theirs))
    for name, table in (("polyak", ours), ("pytorch", theirs)):
        alone = sorted(set(table) - set(seeds))
        if alone:
            print(f"(seeds run by {name} only, left out: {alone})")
    if not seeds:
        sys.exit("no seed was run by both")
    print("| seed | polyak s | polyak acc % | PyTorch s | PyTorch acc % | time ratio "
          "| s/step, median epoch (polyak / PyTorch) |")
    print("|---|---|---|---|---|---|---|")
    for s in seeds:
        a, b = ours[s], theirs[s]
        print(f"| {s} | {a['seconds']:.0f} | {a['accuracy']:.2f} | {b['seconds']:.0f} | {b['accuracy']:.2f} "
              f"| {b['seconds'] / a['seconds']:.2f}x | {median_step_seconds(a):.2f} / {median_step_seconds(b):.2f} |")
    rows = {}
    for name, table in (("polyak", ours), ("pytorch", theirs)):
        t = mean_std([table[s]["seconds"] for s in seeds])
        acc = mean_std([table[s]["accuracy"] for s in seeds])
        hits = sum(table[s]["accuracy"] >= 94.0 for s in seeds)
        phases = {k: statistics.mean(table[s][k] for s in seeds)
                  for k in ("whitening_seconds", "training_seconds", "tta_seconds")}
        rows[name] = (t, acc, hits, phases)
    print()
    print("| engine | runs | time s (mean +- std) | accuracy % (mean +- std) | runs >= 94% | whitening / training / TTA s |")
    print("|---|---|---|---|---|---|")
    for name, ((tm, ts), (am, ast), hits, ph) in rows.items():
        print(f"| {name} | {len(seeds)} | {tm:.0f} +- {ts:.0f} | {am:.2f} +- {ast:.2f} | {hits}/{len(seeds)} "
              f"| {ph['whitening_seconds']:.1f} / {ph['training_seconds']:.0f} / {ph['tta_seconds']:.0f} |")
    print()
    print(f"PyTorch / polyak mean time: {rows['pytorch'][0][0] / rows['polyak'][0][0]:.2f}x")


if __name__ == "__main__":
    main()
