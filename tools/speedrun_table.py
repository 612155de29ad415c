"""The time-to-94% table of two folders of runs, as Markdown: per seed, each side's time
and TTA test accuracy, then the mean and sample standard deviation of each, the ratio of
mean times and the share of runs at 94% or above. The seconds per step of each run's
median epoch are listed too: this machine's speed drifts (by half, for minutes at a
time, when other work shares its host), and the median epoch shows a run's pace without
the slow minutes. Where both sides recorded the accuracy without TTA, it is listed.

    /usr/bin/python3 tools/speedrun_table.py RUNS/polyak RUNS/pytorch            (tools/speedrun-compare.sh)
    /usr/bin/python3 tools/speedrun_table.py RUNS/polyak runs/lookahead-off "Lookahead" "no Lookahead"

The two optional names label the sides (default: polyak, PyTorch). Reads every
run<seed>.json in the two folders (the files speedrun and tools/airbench_torch.py
write); seeds present in only one folder are listed and left out of the comparison.
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


def accuracy_text(run, plain):
    return f"{run['accuracy']:.2f} ({run['accuracy_without_tta']:.2f})" if plain else f"{run['accuracy']:.2f}"


def main():
    if len(sys.argv) not in (3, 5):
        sys.exit(__doc__)
    names = sys.argv[3:5] or ["polyak", "PyTorch"]
    ours, theirs = runs(sys.argv[1]), runs(sys.argv[2])
    seeds = sorted(set(ours) & set(theirs))
    for name, table in zip(names, (ours, theirs)):
        alone = sorted(set(table) - set(seeds))
        if alone:
            print(f"(seeds run by {name} only, left out: {alone})")
    if not seeds:
        sys.exit("no seed was run by both")
    plain = all("accuracy_without_tta" in t[s] for t in (ours, theirs) for s in seeds)
    acc_head = "acc % (without TTA)" if plain else "acc %"
    a_name, b_name = names
    print(f"| seed | {a_name} s | {a_name} {acc_head} | {b_name} s | {b_name} {acc_head} | time ratio "
          f"| s/step, median epoch ({a_name} / {b_name}) |")
    print("|---|---|---|---|---|---|---|")
    for s in seeds:
        a, b = ours[s], theirs[s]
        print(f"| {s} | {a['seconds']:.0f} | {accuracy_text(a, plain)} | {b['seconds']:.0f} | {accuracy_text(b, plain)} "
              f"| {b['seconds'] / a['seconds']:.2f}x | {median_step_seconds(a):.2f} / {median_step_seconds(b):.2f} |")
    print()
    print(f"| run | runs | time s (mean +- std) | {acc_head}: mean +- std | runs >= 94% | whitening / training / TTA s |")
    print("|---|---|---|---|---|---|")
    means = []
    for name, table in zip(names, (ours, theirs)):
        tm, ts = mean_std([table[s]["seconds"] for s in seeds])
        am, ast = mean_std([table[s]["accuracy"] for s in seeds])
        accuracy = f"{am:.2f} +- {ast:.2f}"
        if plain:
            pm, ps = mean_std([table[s]["accuracy_without_tta"] for s in seeds])
            accuracy += f" ({pm:.2f} +- {ps:.2f})"
        hits = sum(table[s]["accuracy"] >= 94.0 for s in seeds)
        phases = [statistics.mean(table[s][k] for s in seeds)
                  for k in ("whitening_seconds", "training_seconds", "tta_seconds")]
        print(f"| {name} | {len(seeds)} | {tm:.0f} +- {ts:.0f} | {accuracy} | {hits}/{len(seeds)} "
              f"| {phases[0]:.1f} / {phases[1]:.0f} / {phases[2]:.0f} |")
        means.append(tm)
    print()
    print(f"{b_name} / {a_name} mean time: {means[1] / means[0]:.2f}x")


if __name__ == "__main__":
    main()
