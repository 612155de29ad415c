"""airbench94 on CIFAR-10 in PyTorch on the CPU: the twin of polyak's `speedrun` app.

Keller Jordan's airbench94 recipe (whitened 2x2 first layer, Nesterov SGD with summed
label-smoothed loss, triangular lr, Lookahead, alternating flips, reflect translations,
test-time augmentation), written from polyak's apps/speedrun/recipe.h spec, in plain
fp32, so that polyak's time and accuracy can be compared with PyTorch's on the same cores:

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \
        /usr/bin/python3 tools/airbench_torch.py --threads 2 --runs 5 \
        [--data ../shared/data/cifar10] [--output runs/airbench94_torch]

Times each run as polyak's speedrun does: whitening_seconds (the first layer's
initialisation from 5,000 images), training_seconds (every epoch's loop, with its
augmentation and batching), tta_seconds (test evaluation with TTA); seconds is their
sum. Reading the data (data_read_seconds) is timed once, outside the runs. There is no
untimed warm-up run (as in polyak's app): the first run's first step includes PyTorch's
one-off set-up (a few seconds). Writes
run<seed>.json per run and summary.json (the same keys as polyak's) to --output.
"""
import argparse, gzip, json, math, os, statistics, sys, time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_models import airbench94

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

# The recipe (apps/speedrun/recipe.h), in its decoupled form: lr and weight decay are
# per 1024 examples, and kilostep_scale is how much larger a Nesterov step is than one
# example's gradient when gradients are constant.
BATCH = 1024
MOMENTUM = 0.85
KILOSTEP_SCALE = 1024 * (1 + 1 / (1 - MOMENTUM))
LR = 11.5 / KILOSTEP_SCALE
WD = 0.0153 * BATCH / KILOSTEP_SCALE  # decay per step at lr factor 1
LR_BIASES = LR * 64                   # BatchNorm biases step 64x faster, same absolute decay
LABEL_SMOOTHING = 0.2
WHITEN_BIAS_EPOCHS = 3                # the whitening bias trains in epochs 0..2 only
LOOKAHEAD_START_EPOCH, LOOKAHEAD_EVERY = 3, 5
SCHEDULE = (0.2, 0.23, 0.07)          # lr factor at step 0, peak position (share), factor at the end
TRANSLATE = 2
WHITENING_IMAGES, WHITENING_EPS = 5000, 5e-4

# Memory format of the model and its inputs: channels_last, the faster one on the 2 cores
# this was written on (AMD EPYC, torch 1.13.0a0, tcmalloc, 2 threads, fp32), per training
# step of batch 1024 after a warm-up step:
#   steps alternating between the two in one process:  NCHW 3.06 s, channels_last 2.62 s
#   10 steps each, separate processes (cores shared):    NCHW 7.01 s, channels_last 6.44 s
# and per eval forward of 500 images: NCHW 1.29-1.44 s, channels_last 1.05 s.
MEMORY_FORMAT = torch.channels_last


# ---------------------------------------------------------------------------- data

def read_batch(folder, name):
    """uint8 images (N, 3, 32, 32) and int64 labels of one CIFAR-10 binary batch."""
    path = os.path.join(folder, name)
    raw = open(path, "rb").read() if os.path.exists(path) else gzip.open(path + ".gz").read()
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3073)
    labels = torch.from_numpy(records[:, 0].astype(np.int64))
    images = torch.from_numpy(records[:, 1:].reshape(-1, 3, 32, 32).copy())
    return images, labels


def normalise(images):
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def load_cifar10(folder, train_subset, test_subset):
    """Normalised fp32 (train images, train labels, test images, test labels)."""
    batches = [read_batch(folder, f"data_batch_{i}.bin") for i in range(1, 6)]
    train_x = torch.cat([b[0] for b in batches])
    train_y = torch.cat([b[1] for b in batches])
    test_x, test_y = read_batch(folder, "test_batch.bin")
    if train_subset:
        train_x, train_y = train_x[:train_subset], train_y[:train_subset]
    if test_subset:
        test_x, test_y = test_x[:test_subset], test_y[:test_subset]
    return normalise(train_x), train_y, normalise(test_x), test_y


def translate(images, dy, dx):
    """Each image shifted by its own (dy, dx) in [0, 2 TRANSLATE]: a 32x32 crop of the
    image reflect-padded by TRANSLATE, rows first, then columns (2 x 5 masked copies
    rather than 25, and no per-pixel index tensors)."""
    padded = F.pad(images, (TRANSLATE,) * 4, mode="reflect")
    n, c, h, w = images.shape
    rows = torch.empty(n, c, h, w + 2 * TRANSLATE)
    for s in range(2 * TRANSLATE + 1):
        m = dy == s
        rows[m] = padded[m, :, s:s + h, :]
    out = torch.empty(n, c, h, w)
    for s in range(2 * TRANSLATE + 1):
        m = dx == s
        out[m] = rows[m, :, :, s:s + w]
    return out


def epoch_batches(images, labels, base_flip, epoch):
    """The epoch's shuffled full batches (the last partial one dropped), augmented: each
    image's fixed flip, all of them mirrored once more in odd epochs (so every image is
    seen both ways in two epochs), and a fresh random translation per image."""
    n = len(images)
    order = torch.randperm(n)
    shifts = torch.randint(0, 2 * TRANSLATE + 1, (2, n))
    flip = base_flip ^ (epoch % 2 == 1)
    for b in range(n // BATCH):
        idx = order[b * BATCH:(b + 1) * BATCH]
        x = images[idx]
        x = torch.where(flip[idx].view(-1, 1, 1, 1), x.flip(3), x)
        x = translate(x, shifts[0, idx], shifts[1, idx])
        yield x.contiguous(memory_format=MEMORY_FORMAT), labels[idx]


# ----------------------------------------------------------------------- whitening

def whitening_filters(images):
    """The 24 filters of the 2x2 first layer: the 12 eigenvectors of the 2x2 patches'
    second moments, scaled by 1/sqrt(eigenvalue + eps) so that their outputs are white,
    largest eigenvalue first, followed by their negatives (GELU keeps both signs)."""
    c = images.shape[1]
    moments = torch.zeros(c * 4, c * 4, dtype=torch.float64)
    count = 0
    for chunk in images.split(1000):  # bounded memory; float64 for the sum of ~5M patches
        patches = chunk.unfold(2, 2, 1).unfold(3, 2, 1)  # (N, C, 31, 31, 2, 2)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * 4).double()  # (C, kh, kw)
        moments += patches.T @ patches
        count += len(patches)
    values, vectors = torch.linalg.eigh(moments / count)  # ascending
    values, vectors = values.flip(0), vectors.flip(1)
    filters = (vectors / torch.sqrt(values + WHITENING_EPS)).T.reshape(-1, c, 2, 2).float()
    return torch.cat([filters, -filters])


# ------------------------------------------------------------------------ training

def total_steps(train_images, epochs):
    """Optimiser steps of a run: full batches per epoch times epochs, rounded up."""
    return math.ceil(train_images // BATCH * epochs)


def lr_factor(step, total):
    """The triangle: SCHEDULE[0] at step 0, 1 at int(0.23 total), SCHEDULE[2] at total."""
    start, peak_share, end = SCHEDULE
    peak = int(peak_share * total)
    if step < peak:
        return start + (1 - start) * step / peak
    return 1 + (end - 1) * (step - peak) / (total - peak)


def make_optimizer(model, total):
    """Nesterov SGD in two groups, BatchNorm biases and the rest, over the parameters
    trainable now; weight decay is divided by the lr since SGD multiplies it back."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    biases = [p for n, p in trainable if "norm" in n]
    others = [p for n, p in trainable if "norm" not in n]
    opt = torch.optim.SGD([dict(params=biases, lr=LR_BIASES, weight_decay=WD / LR_BIASES),
                           dict(params=others, lr=LR, weight_decay=WD / LR)],
                          lr=LR, momentum=MOMENTUM, nesterov=True)
    # LambdaLR's factor for the i-th optimiser step (0-based) is lr_factor(i).
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(i, total))


class Lookahead:
    """Slow weights over every float tensor of the state dict (parameters and BatchNorm
    statistics): slow <- lerp(slow, live, 1 - decay), then live <- slow."""

    def __init__(self, model):
        self.slow = {k: v.clone() for k, v in float_state(model).items()}

    @torch.no_grad()
    def update(self, model, decay):
        for k, live in float_state(model).items():
            self.slow[k].lerp_(live, 1 - decay)
            live.copy_(self.slow[k])


def float_state(model):
    # state_dict's tensors share storage with the model's, so copy_ into them writes it.
    return {k: v for k, v in model.state_dict().items() if v.is_floating_point()}


def train_epoch(model, opt, sched, batches, state):
    """One epoch's loop; state holds the step count, total and Lookahead across epochs.
    Returns (steps, last batch's loss per image, last batch's accuracy in percent)."""
    steps, last = 0, None
    for x, y in batches:
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=LABEL_SMOOTHING, reduction="none").sum()
        opt.zero_grad(set_to_none=True)  # a frozen parameter keeps grad None: SGD skips it
        loss.backward()
        opt.step()
        sched.step()
        state["step"] += 1
        steps += 1
        last = (logits.detach(), loss.detach(), y)
        s = state["step"]
        if state["epoch"] >= LOOKAHEAD_START_EPOCH and s % LOOKAHEAD_EVERY == 0:
            if state["lookahead"] is None:
                state["lookahead"] = Lookahead(model)
            else:
                decay = 0.95 ** LOOKAHEAD_EVERY * (s / state["total"]) ** 3
                state["lookahead"].update(model, decay)
        if s >= state["total"]:
            break
    if state["lookahead"] is not None:
        state["lookahead"].update(model, 1.0)  # the epoch ends on the slow weights
    logits, loss, y = last
    return steps, loss.item() / len(y), percent_correct(logits, y)


# ---------------------------------------------------------------------- evaluation

def tta_logits(model, x, level):
    """Level 0: f(x); 1: mean over the mirror; 2: also the views shifted by one pixel up-left
    and down-right (reflect padding), weighted 1/2, 1/4, 1/4."""
    def f(v):
        return model(v.contiguous(memory_format=MEMORY_FORMAT))

    def mirrored(v):
        return 0.5 * (f(v) + f(v.flip(3)))

    if level == 0:
        return f(x)
    if level == 1:
        return mirrored(x)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    return (0.5 * mirrored(x) + 0.25 * mirrored(padded[:, :, 0:32, 0:32])
            + 0.25 * mirrored(padded[:, :, 2:34, 2:34]))


@torch.inference_mode()
def evaluate(model, images, labels, level, batch=1000):
    model.eval()
    logits = torch.cat([tta_logits(model, x, level) for x in images.split(batch)])
    return percent_correct(logits, labels)


def percent_correct(logits, labels):
    return 100.0 * (logits.argmax(1) == labels).sum().item() / len(labels)


# ----------------------------------------------------------------------------- run

def make_model():
    """airbench94 with the recipe's frozen parameters: the whitening filters and the
    BatchNorm weights (which stay 1)."""
    model = airbench94(10)
    for name, p in model.named_parameters():
        if name == "0.weight" or ("norm" in name and name.endswith(".weight")):
            p.requires_grad_(False)
    return model.to(memory_format=MEMORY_FORMAT)


def run(args, seed, data):
    train_x, train_y, test_x, test_y = data
    torch.manual_seed(seed)
    model = make_model()
    base_flip = torch.rand(len(train_x)) < 0.5  # each image's flip for the whole run

    start = time.perf_counter()
    with torch.no_grad():
        model[0].weight.copy_(whitening_filters(train_x[:WHITENING_IMAGES]))
    whitening_seconds = time.perf_counter() - start

    total = total_steps(len(train_x), args.epochs)
    opt, sched = make_optimizer(model, total)
    state = dict(step=0, total=total, epoch=0, lookahead=None)
    epochs, training_seconds = [], 0.0
    model.train()
    for epoch in range(math.ceil(args.epochs)):
        if state["step"] >= total:
            break
        start = time.perf_counter()
        state["epoch"] = epoch
        model[0].bias.requires_grad_(epoch < WHITEN_BIAS_EPOCHS)
        batches = epoch_batches(train_x, train_y, base_flip, epoch)
        steps, loss, acc = train_epoch(model, opt, sched, batches, state)
        seconds = time.perf_counter() - start
        training_seconds += seconds
        epochs.append(dict(epoch=epoch + 1, steps=steps, seconds=seconds,
                           last_batch_loss=loss, last_batch_accuracy=acc))
        print(f"epoch {epoch + 1:2d}  steps {state['step']}  last batch: loss {loss:.4f} "
              f"acc {acc:.2f}%  ({seconds:.1f} s)", flush=True)

    start = time.perf_counter()
    accuracy = evaluate(model, test_x, test_y, args.tta)
    tta_seconds = time.perf_counter() - start
    return dict(seed=seed, accuracy=accuracy,
                seconds=whitening_seconds + training_seconds + tta_seconds,
                whitening_seconds=whitening_seconds, training_seconds=training_seconds,
                tta_seconds=tta_seconds, epochs=epochs)


def mean_std(values):
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def write_json(folder, name, obj):
    with open(os.path.join(folder, name), "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.join(os.environ.get("POLYAK_DATA", "../shared/data"), "cifar10"))
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="the first run's seed; run k uses seed + k")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=float, default=9.9)
    p.add_argument("--tta", type=int, default=2, choices=(0, 1, 2))
    p.add_argument("--train-subset", type=int, default=0, help="first N training images (0: all)")
    p.add_argument("--test-subset", type=int, default=0, help="first N test images (0: all)")
    p.add_argument("--output", default="runs/airbench94_torch")
    args = p.parse_args()
    if args.runs < 1 or args.threads < 1 or not args.epochs > 0:
        p.error("--runs and --threads must be at least 1 and --epochs above 0")
    return args


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)  # before any parallel work, or torch refuses
    os.makedirs(args.output, exist_ok=True)

    start = time.perf_counter()
    data = load_cifar10(args.data, args.train_subset, args.test_subset)
    data_read_seconds = time.perf_counter() - start
    n_train, n_test = len(data[0]), len(data[2])
    if n_train < BATCH:
        sys.exit(f"--train-subset {n_train}: the recipe needs at least one batch of {BATCH} images")
    print(f"airbench94 recipe (pytorch {torch.__version__}): {n_train} train / {n_test} test images "
          f"(read in {data_read_seconds:.1f} s), {total_steps(n_train, args.epochs)} steps of "
          f"{BATCH}, TTA level {args.tta}, {torch.get_num_threads()} threads -> {args.output}", flush=True)

    runs = []
    for k in range(args.runs):
        seed = args.seed + k
        print(f"run {k + 1}/{args.runs}, seed {seed}", flush=True)
        r = run(args, seed, data)
        print(f"seed {seed}: test accuracy {r['accuracy']:.2f}% (TTA {args.tta}) in {r['seconds']:.1f} s "
              f"(whitening {r['whitening_seconds']:.1f}, training {r['training_seconds']:.1f}, "
              f"TTA {r['tta_seconds']:.1f})", flush=True)
        write_json(args.output, f"run{seed}.json", r)
        runs.append(r)

    accuracy, accuracy_std = mean_std([r["accuracy"] for r in runs])
    seconds, seconds_std = mean_std([r["seconds"] for r in runs])
    write_json(args.output, "summary.json", {
        "recipe": "airbench94", "engine": f"pytorch {torch.__version__}",
        "threads": torch.get_num_threads(), "runs": runs,
        "accuracy_mean": accuracy, "accuracy_std": accuracy_std,
        "seconds_mean": seconds, "seconds_std": seconds_std,
        "data_read_seconds": data_read_seconds})
    print(f"{len(runs)} run(s): test accuracy {accuracy:.2f}% +- {accuracy_std:.2f}, "
          f"time {seconds:.1f} s +- {seconds_std:.1f}")


if __name__ == "__main__":
    main()
