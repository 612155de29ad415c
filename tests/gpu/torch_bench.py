"""PyTorch reference for apps/bench on the same GPU: training-step and evaluation
images/s of a model of polyak's zoo (tools/torch_models.py) on random data, fp32 with
cuDNN autotuning, TF32 off (as polyak's default) and on; and the time of one update of
five EMAs of the weights (torch._foreach ops, as fused as PyTorch gets).

    python3 tests/gpu/torch_bench.py --model resnet18 --batch-size 128

Prints one line per setting, the form tests/gpu/run.sh puts in its table.
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
from torch_models import create_model  # noqa: E402


def median_rate(step, batch, windows=5, steps=5):
    rates = []
    for _ in range(windows):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        rates.append(steps * batch / (time.perf_counter() - start))
    rates.sort()
    return rates[len(rates) // 2]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = create_model(args.model, 10).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)

    def train_step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def eval_step():
        with torch.no_grad():
            model(x)

    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        model.train()
        for _ in range(3):
            train_step()
        train = median_rate(train_step, args.batch_size)
        model.eval()
        for _ in range(2):
            eval_step()
        evaluate = median_rate(eval_step, args.batch_size)
        print(f"torch {args.model} b{args.batch_size} tf32={'on' if tf32 else 'off'}: "
              f"train {train:.0f} img/s, eval {evaluate:.0f} img/s")

    params = [p.detach() for p in model.parameters()]
    emas = [[p.clone() for p in params] for _ in range(5)]
    decays = [0.968, 0.984, 0.992, 0.996, 0.998]

    def ema_update():
        for e, a in zip(emas, decays):
            torch._foreach_mul_(e, a)
            torch._foreach_add_(e, params, alpha=1 - a)

    for _ in range(3):
        ema_update()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(50):
        ema_update()
    torch.cuda.synchronize()
    n = sum(p.numel() for p in params)
    print(f"torch {args.model} ema x5 update: {(time.perf_counter() - start) / 50 * 1e3:.3f} ms "
          f"({n} parameters), peak memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
