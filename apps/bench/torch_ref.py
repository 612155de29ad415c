"""PyTorch reference for apps/bench (bench --compare-torch runs it): the same model
(tools/torch_models.py), recipe and measurements as the bench's own worker, printed as
one JSON object in the same layout.

    /usr/bin/python3 apps/bench/torch_ref.py --model resnet20 --batch-size 128 --threads 2

Recipe: SGD with Nesterov momentum 0.9 and the given weight decay, cross-entropy,
random CIFAR-shaped inputs; training in train mode, evaluation in eval mode without
gradients. Each measurement is `--windows` timed windows of `--steps` steps after a
warm-up. The five EMAs are updated with torch._foreach ops, as fused as PyTorch gets;
the BN recompute is torch.optim.swa_utils.update_bn's: reset the statistics, momentum
None (a cumulative average), a train-mode forward without gradients. Peak RSS is this
process's (the interpreter and torch included: what a PyTorch training job holds).
"""
import argparse
import json
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
from torch_models import create_model  # noqa: E402

DECAYS = [0.968, 0.984, 0.992, 0.996, 0.998]  # ema/ema.h's defaults


def window_seconds(call, windows, calls, synchronize):
    seconds = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds


def tcmalloc_loaded():
    with open("/proc/self/maps") as maps:
        return any("tcmalloc" in line for line in maps)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--tf32", action="store_true")
    parser.add_argument("--deterministic", action="store_true")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("torch_ref.py: --device cuda: this PyTorch has no usable CUDA device")

    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cudnn.deterministic = args.deterministic
    torch.backends.cudnn.benchmark = not args.deterministic
    device = torch.device(args.device)
    synchronize = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = create_model(args.model, 10).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=args.weight_decay, nesterov=True)
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    images_per_window = args.steps * args.batch_size

    def train_step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def eval_step():
        with torch.no_grad():
            model(x)

    model.train()
    for _ in range(2):
        train_step()
    train = window_seconds(train_step, args.windows, args.steps, synchronize)
    model.eval()
    eval_step()
    evaluate = window_seconds(eval_step, args.windows, args.steps, synchronize)

    # The five EMAs of the weights and the float buffers (BN statistics), as ours.
    live = [p.detach() for p in model.parameters()] + [b for b in model.buffers() if b.is_floating_point()]
    emas = [[t.clone() for t in live] for _ in DECAYS]
    steps_taken = 0

    def ema_update():
        nonlocal steps_taken
        steps_taken += 1
        for average, decay in zip(emas, DECAYS):
            a = min(decay, (steps_taken + 1) / (steps_taken + 10))
            torch._foreach_mul_(average, a)
            torch._foreach_add_(average, live, alpha=1 - a)

    ema_calls = args.steps * 10
    ema = window_seconds(ema_update, args.windows, ema_calls, synchronize)

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

    def recompute_bn():
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        with torch.no_grad():
            model(x)
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()

    recompute = window_seconds(recompute_bn, args.windows, args.steps, synchronize)

    print(json.dumps({
        "implementation": "pytorch",
        "threads": args.threads,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_images_per_s": [images_per_window / s for s in train],
        "eval_images_per_s": [images_per_window / s for s in evaluate],
        "ema_update_us": [1e6 * s / ema_calls for s in ema],
        "bn_recompute_us_per_image": [1e6 * s / images_per_window for s in recompute],
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "torch_version": torch.__version__,
        "tcmalloc": tcmalloc_loaded(),
    }))


if __name__ == "__main__":
    main()
