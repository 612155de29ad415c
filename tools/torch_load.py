"""Loads a polyak checkpoint into the equivalent PyTorch model by name and evaluates it.

    /usr/bin/python3 tools/torch_load.py RUN/model.safetensors --model resnet20 \
        [--data ../shared/data/cifar10]

Reads safetensors with the standard library (no safetensors package needed), loads the
model with load_state_dict(strict=True) after dropping polyak's "polyak.*" training
state, and prints the CIFAR-10 test accuracy and loss, which match polyak's own.
"""
import argparse, gzip, json, os, struct, sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_models import create_model

DTYPES = {"F32": torch.float32, "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}


def load_safetensors(path):
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        begin, end = spec["data_offsets"]
        out[name] = torch.frombuffer(bytearray(data[begin:end]), dtype=DTYPES[spec["dtype"]]).reshape(spec["shape"])
    return out, header.get("__metadata__", {})


def cifar10_test(folder):
    path = os.path.join(folder, "test_batch.bin")
    raw = open(path, "rb").read() if os.path.exists(path) else gzip.open(path + ".gz").read()
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3073)
    labels = torch.from_numpy(records[:, 0].astype(np.int64))
    images = torch.from_numpy(records[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    return (images - mean) / std, labels


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--model", required=True)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--data", default=os.path.join(os.environ.get("POLYAK_DATA", "../shared/data"), "cifar10"))
    args = parser.parse_args()
    tensors, _ = load_safetensors(args.checkpoint)
    state = {k: v for k, v in tensors.items() if not k.startswith("polyak.")}
    model = create_model(args.model, args.classes)
    model.load_state_dict(state, strict=True)  # every name must match, both ways
    model.eval()
    images, labels = cifar10_test(args.data)
    with torch.no_grad():
        logits = torch.cat([model(images[i:i + 500]) for i in range(0, len(images), 500)])
    accuracy = (logits.argmax(1) == labels).float().mean().item() * 100
    loss = F.cross_entropy(logits, labels).item()
    print(f"{args.checkpoint}: loaded {len(state)} tensors into torch {args.model} (strict); "
          f"CIFAR-10 test accuracy {accuracy:.2f}%, loss {loss:.4f}")


if __name__ == "__main__":
    main()
