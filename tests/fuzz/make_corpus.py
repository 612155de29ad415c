#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into tests/fuzz/corpus/<target>/: a few
small valid inputs each, in the input layout the target's header comment describes.
Deterministic (gzip without a time stamp), so rerunning it changes nothing. The JPEG
seed comes from stb_image_write (libstb-dev), through a throwaway C++ program.
Regression inputs (crash-*) are added by hand next to these and are left alone.
The seed of fuzz_resume_checkpoint is a training checkpoint that the train app wrote
(tiny_cnn, one average, stopped inside epoch 2 with a selection for epoch 1):
  train --model tiny_cnn --train-subset 256 --test-subset 64 --batch-size 64 --epochs 3 --max-steps 5
        --ema-decays 0.9 --ema-every 2 --val-split 0.25 --bn-recompute epoch --bn-recompute-batches 2 --threads 1
then last.safetensors copied to corpus/fuzz_resume_checkpoint/tiny_cnn_mid_epoch."""
import gzip
import json
import os
import struct
import subprocess
import tempfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    folder = os.path.join(HERE, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def cifar_record(labels, seed):
    # label byte(s), then 3 planes of 32x32 pixels: a gradient that differs per record
    pixels = bytes((seed * 37 + c * 85 + y * 8 + x) % 256 for c in range(3) for y in range(32) for x in range(32))
    return bytes(labels) + pixels


def cifar():
    # byte 0: bit 0 gzip, bit 1 CIFAR-100, bit 2 coarse labels (see fuzz_cifar_binary.cpp)
    two10 = cifar_record([3], 1) + cifar_record([9], 2)
    put("fuzz_cifar_binary", "cifar10_plain_2", bytes([0]) + two10)
    put("fuzz_cifar_binary", "cifar10_gzip_2", bytes([1]) + gzip.compress(two10, mtime=0))
    one100 = cifar_record([19, 99], 3)
    put("fuzz_cifar_binary", "cifar100_plain_fine_1", bytes([2]) + one100)
    put("fuzz_cifar_binary", "cifar100_gzip_coarse_1", bytes([7]) + gzip.compress(one100, mtime=0))


def safetensors(tensors, metadata=None):
    # tensors: (name, dtype, shape, raw bytes), already in the writer's order
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(raw for *_, raw in tensors)


def safetensors_seeds():
    put("fuzz_safetensors", "four_dtypes", safetensors(
        [("step", "I64", [], struct.pack("<q", 7)),
         ("w", "F32", [2, 3], struct.pack("<6f", 1, -2, 0.5, 3e38, -0.0, 1e-40)),
         ("idx", "I32", [2], struct.pack("<2i", -1, 2)),
         ("mask", "U8", [4], bytes([0, 1, 254, 255]))],
        {"format": "pt", "epoch": "3"}))
    put("fuzz_safetensors", "half", safetensors(  # F16: 1, -2, 65504, inf, NaN, the smallest subnormal
        [("h", "F16", [6], struct.pack("<6H", 0x3c00, 0xc000, 0x7bff, 0x7c00, 0x7e00, 0x0001)),
         ("mask", "U8", [1], bytes([1]))]))
    put("fuzz_safetensors", "empty_tensor", safetensors([("e", "F32", [0, 5], b"")]))
    put("fuzz_safetensors", "no_tensors", safetensors([]))


def png(width, height, color_type, depth, rows):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    raw = b"".join(b"\0" + row for row in rows)  # filter type 0 on every row
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def bmp24(width, height):
    stride = (3 * width + 3) // 4 * 4
    rows = b"".join(bytes((x * 50 + y * 90 + c * 30) % 256 for x in range(width) for c in range(3)).ljust(stride, b"\0")
                    for y in range(height))
    size = 54 + len(rows)
    return (b"BM" + struct.pack("<IHHI", size, 0, 0, 54) +
            struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(rows), 2835, 2835, 0, 0) + rows)


def jpeg(width, height):
    program = r"""
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>
#include <cstdio>
static void out(void*, void* data, int size) { std::fwrite(data, 1, size, stdout); }
int main() {
  unsigned char rgb[%d * %d * 3];
  for (unsigned i = 0; i < sizeof rgb; ++i) rgb[i] = static_cast<unsigned char>(i * 29);
  return !stbi_write_jpg_to_func(out, nullptr, %d, %d, 3, rgb, 75);
}
""" % (width, height, width, height)
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = os.path.join(tmp, "jpg.cpp"), os.path.join(tmp, "jpg")
        with open(src, "w") as f:
            f.write(program)
        subprocess.run(["c++", "-O1", "-w", src, "-o", exe], check=True)
        return subprocess.run([exe], check=True, capture_output=True).stdout


def images():
    # byte 0: target size, height 1 + 3 * (low 4 bits), width 1 + 3 * (high 4 bits)
    size_10x10 = bytes([3 | 3 << 4])
    size_4x7 = bytes([1 | 2 << 4])
    rgb = [bytes((x * 40 + y * 70 + c * 20) % 256 for x in range(5) for c in range(3)) for y in range(3)]
    put("fuzz_image_folder", "png_rgb8_5x3", size_10x10 + png(5, 3, 2, 8, rgb))
    grey_alpha16 = [bytes((x * 97 + y * 31 + k) % 256 for x in range(2) for k in range(4)) for y in range(2)]
    put("fuzz_image_folder", "png_grey_alpha16_2x2", size_4x7 + png(2, 2, 4, 16, grey_alpha16))
    put("fuzz_image_folder", "bmp24_3x2", size_10x10 + bmp24(3, 2))
    put("fuzz_image_folder", "jpeg_8x8", size_4x7 + jpeg(8, 8))


def labels():
    # byte 0: classes, byte 1 % 3 == 1: the count is the file size (see fuzz_cifarn_labels.cpp)
    put("fuzz_cifarn_labels", "cifar10_12", bytes([10, 1]) + bytes([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 0]))
    put("fuzz_cifarn_labels", "cifar100_5", bytes([100, 1]) + bytes([99, 0, 42, 7, 98]))


def train_flags():
    put("fuzz_train_flags", "multistep_ema_list",
        "--model resnet20 --epochs 3 --batch-size 64 --lr 0.05 --sched multistep --milestones 1,2 --gamma 0.1 "
        "--ema-decays 0.99,0.999 --ema-every 4 --ema-warmup off --bn-recompute epoch --bn-recompute-batches 2\n")
    put("fuzz_train_flags", "cifar100_noise",
        "--dataset cifar100 --label-noise 0.2 --noise-type asym --val-split 0.1 --ema-decays paper "
        "--no-nesterov --momentum 0 --weight-decay 5e-4 --warmup-epochs 1 --seed 12345 --no-augment --no-shuffle\n")
    put("fuzz_train_flags", "folder_scaled",
        "--dataset folder --data /nonexistent --ema-decays scaled --ema-buffers copy --max-steps 10 "
        "--train-subset 100 --test-subset 50 --eval-every 2 --threads 1 --output /nonexistent/run\n")
    put("fuzz_train_flags", "bad_value", "--epochs 0 --lr -1\n")
    put("fuzz_train_flags", "seeds", "--seeds 0,1,2 --epochs 30 --val-split 0.2 --output runs/s\n")


def app_flags():
    # "c.safetensors" exists in the targets' working folder (fuzz_flags.h); the regression input
    # crash-no-nesterov-out-of-range of fuzz_train_flags is kept by hand
    put("fuzz_eval_flags", "ema_recompute",
        "c.safetensors --ema sgd,ema0.998,all --split val --val-split 0.1 --seed 3 --bn-recompute on "
        "--bn-recompute-batches 20 --batch-size 256 --no-augment --train-subset 1000 --test-subset 100 --json -\n")
    put("fuzz_eval_flags", "folder_model", "c.safetensors c.safetensors --model resnet20 --dataset folder --data . "
        "--split train --device cpu --threads 2\n")
    put("fuzz_probe_flags", "defaults", "c.safetensors --ema ema0.998 --dataset cifar100 --epochs 5 --lr 0.01 "
        "--momentum 0.9 --no-nesterov --weight-decay 0 --sched cosine --augment --output head.safetensors\n")
    put("fuzz_probe_flags", "selected", ". --selected ema_acc_bn --bn-recompute on --bn-recompute-batches 10\n")
    put("fuzz_probe_flags", "bad_values", "c.safetensors --epochs 0 --batch-size 70000 --sched step --threads 2000\n")
    put("fuzz_report_flags", "seeds", "run1 run2 run3 -o report.html\n")
    put("fuzz_report_flags", "one", "run --output=out/report.html\n")
    put("fuzz_bench_flags", "compare", "--model resnet18 --batch-size 64 --threads 1,2 --windows 3 --steps 2 "
        "--rounds 2 --compare-torch --python python3 --tcmalloc /nonexistent --json -\n")
    put("fuzz_phema_flags", "targets", ". --sigma-rel 0.05,0.1,0.2 --ema 0.998@1,ema0.99@16 --ema-warmup off "
        "--step 100 --max-residual 0.05 --bn-recompute-batches 4 --threads 2 --device cpu\n")
    put("fuzz_phema_flags", "bad_values", "run --sigma-rel 0.3,x --ema 1.5@0 --max-residual 0 --no-eval\n")
    put("fuzz_bench_flags", "worker", "--worker --threads 1 --weight-decay 5e-4 --device cuda --tf32 --deterministic\n")


def resume_config():
    config = {"model": "resnet20", "dataset": "cifar10", "data_dir": "../shared/data/cifar10", "epochs": 10,
              "batch_size": 128, "lr": 0.10000000149011612, "momentum": 0.8999999761581421, "nesterov": True,
              "weight_decay": 9.999999747378752e-05, "sched": "multistep", "warmup_epochs": 0.25,
              "milestones": [3, 6, 8], "gamma": 0.20000000298023224, "seed": 18446744073709551615, "threads": 0,
              "val_split": 0.1, "labels_file": "", "label_noise": 0.2, "noise_type": "asym", "output": "runs/x",
              "resume": "", "init": "", "augment": True, "shuffle": True, "max_steps": 0, "save_every": 100,
              "on_nonfinite": "skip", "max_skips": 10, "eval_every": 2, "train_subset": 0, "test_subset": 0,
              "device": "cpu", "tf32": False, "deterministic": False, "ema_decays": "0.99,0.999", "ema_every": 16,
              "ema_warmup": True, "ema_buffers": "average", "bn_recompute": "epoch", "bn_recompute_batches": 40}
    put("fuzz_resume_config", "full", json.dumps(config, indent=2))
    put("fuzz_resume_config", "partial", json.dumps({"epochs": 3, "ema_decays": "scaled", "lr": 0.05}))


if __name__ == "__main__":
    cifar()
    safetensors_seeds()
    images()
    labels()
    train_flags()
    app_flags()
    resume_config()
