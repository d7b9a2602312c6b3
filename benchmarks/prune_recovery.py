"""Structured pruning on real Fashion-MNIST: top-1 after pruning, after CE fine-tuning and after KD recovery
(same epochs), and batch-1 latency of the unpruned and pruned students in ONNX Runtime FP32 and INT8, measured
side by side in interleaved rounds.

Accuracy is measured at the training resolution; latency at ``--latency-size`` (pruned convolutions are the
same at any resolution; the weights are the trained ones, INT8 calibrated on random inputs: latency only).

    python benchmarks/prune_recovery.py --students resnet18 mobilenetv2_100 --macs 0.5 0.25 \\
        --out benchmarks/results/prune_fashion_mnist.md
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from rich.console import Console

from distill.pruning import count
from export.onnx_export import export_onnx
from export.quantize import quantize
from runtime.classifier import OnnxClassifier
from runtime.environment import cpu_description
from runtime.fashion_mnist import load_fashion_mnist
from runtime.preprocess import PreprocessContract
from toolkit.evaluation import load_run_student
from toolkit.pruning import run_prune
from toolkit.recipe import load_recipe
from toolkit.training import run_train


def write_subset(split: str, per_class: int, folder: Path) -> Path:
    """The first ``per_class`` images of each class as an ImageFolder (real Fashion-MNIST pixels)."""
    data = load_fashion_mnist(split)
    for c, name in enumerate(data.class_names):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for k, i in enumerate(np.flatnonzero(data.labels == c)[:per_class]):
            Image.fromarray(data.images[i]).save(folder / name / f"{k:05d}.png")
    return folder


def recipe_file(path: Path, student: str, train: Path, test: Path, epochs: int, size: int, seed: int = 0) -> Path:
    recipe = {
        "name": f"prune-{student}", "seed": seed,
        "data": {"train": {"kind": "imagefolder", "path": str(train)},
                 "test": {"kind": "imagefolder", "path": str(test)}, "val_fraction": 0.1},
        "preprocess": {"input_size": size, "resize_size": size, "mean": [0.286] * 3, "std": [0.353] * 3},
        "student": {"name": student},
        "train": {"epochs": epochs, "batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.05},
                  "augment": {"pad_crop": 2, "hflip": 0.5}, "precision": "fp32"},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def latency_models(runs: dict[str, Path], size: int, work: Path) -> dict[str, OnnxClassifier]:
    """FP32 and INT8 ONNX Runtime sessions of each run's student at ``size`` px (1 thread)."""
    sessions = {}
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((8, 3, size, size)).astype(np.float32) for _ in range(4)]
    for label, run in runs.items():
        model, contract, _ = load_run_student(run)
        big = PreprocessContract(input_size=size, resize_size=size, class_names=contract.class_names)
        fp32 = export_onnx(model, big, work / f"{label}.onnx")
        int8 = quantize(fp32, work / f"{label}.int8.onnx", "onnxruntime", batches)
        sessions[f"{label} fp32"] = OnnxClassifier(fp32, threads=1)
        sessions[f"{label} int8"] = OnnxClassifier(int8, threads=1)
    return sessions


def time_interleaved(sessions: dict[str, OnnxClassifier], size: int, rounds: int, queries: int) -> dict[str, float]:
    x = np.random.default_rng(1).standard_normal((1, 3, size, size)).astype(np.float32)
    for s in sessions.values():
        for _ in range(3):
            s.run(x)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for name, s in sessions.items():
            for _ in range(queries):
                t0 = time.perf_counter()
                s.run(x)
                times[name].append((time.perf_counter() - t0) * 1000)
    return {k: float(np.median(v)) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--students", nargs="+", default=["resnet18", "mobilenetv2_100"])
    ap.add_argument("--macs", nargs="+", type=float, default=[0.5, 0.25], help="MACs budgets (fractions kept)")
    ap.add_argument("--per-class", type=int, default=300, help="training images per class")
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--size", type=int, default=32, help="training resolution")
    ap.add_argument("--epochs", type=int, default=10, help="training epochs of the unpruned student")
    ap.add_argument("--recover-epochs", type=int, default=4)
    ap.add_argument("--latency-size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    quiet = Console(stderr=True, quiet=True)
    lines = [f"# Structured pruning on Fashion-MNIST ({args.per_class}/class train, {args.test_per_class}/class test)",
             "", f"Machine: {cpu_description().get('model')} ({platform.machine()}), ISA flags: "
             f"{', '.join(f for f in cpu_description().get('flags', []) if f.startswith(('avx', 'amx')))}; torch "
             f"{torch.__version__}. Training {args.epochs} epochs at {args.size} px; recovery {args.recover_epochs} "
             f"epochs for CE and for KD (from the unpruned student, logits cached once). Latency: batch 1, ONNX "
             f"Runtime, 1 thread, {args.latency_size} px, median of {args.rounds * args.queries} queries in "
             "interleaved rounds.", "",
             "| student | MACs kept (target) | MACs @train px | params | top-1 unpruned | pruned | + CE | + KD | "
             "FP32 ms | INT8 ms | INT8 speed-up |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train = write_subset("train", args.per_class, work / "train")
        test = write_subset("test", args.test_per_class, work / "test")
        for student in args.students:
            t0 = time.perf_counter()
            recipe = recipe_file(work / f"{student}.yaml", student, train, test, args.epochs, args.size)
            base = work / student
            metrics = run_train(load_recipe(recipe), base, resume=False, force=True, console=quiet)
            runs = {"unpruned": base}
            rows = []
            for budget in args.macs:
                tops = {}
                for recover in ("none", "ce", "kd"):
                    out = work / f"{student}-{budget}-{recover}"
                    info = run_prune(base, out, macs=budget, recover=recover, epochs=args.recover_epochs,
                                     console=quiet)  # fmt: skip
                    tops[recover] = info["test_top1"]
                runs[f"pruned {budget}"] = out
                rows.append((budget, info, tops))
            lat = time_interleaved(latency_models(runs, args.latency_size, work), args.latency_size, args.rounds,
                                   args.queries)  # fmt: skip
            model, contract, _ = load_run_student(base)
            macs, params = count(model, contract.input_size)
            lines.append(
                f"| {student} | 1.00 | {macs / 1e6:.1f}M | {params / 1e6:.2f}M | {metrics['test_top1']:.4f} | - | - | "
                f"- | {lat['unpruned fp32']:.2f} | {lat['unpruned int8']:.2f} | 1.00x |"
            )
            for budget, info, tops in rows:
                label = f"pruned {budget}"
                lines.append(
                    f"| {student} | {info['macs_ratio']:.2f} ({budget}) | {info['macs_after'] / 1e6:.1f}M | "
                    f"{info['params_after'] / 1e6:.2f}M | {info['test_top1_unpruned']:.4f} | {tops['none']:.4f} | "
                    f"{tops['ce']:.4f} | {tops['kd']:.4f} | {lat[label + ' fp32']:.2f} | {lat[label + ' int8']:.2f} | "
                    f"{lat['unpruned int8'] / lat[label + ' int8']:.2f}x |"
                )
            print(f"{student}: {time.perf_counter() - t0:.0f}s", flush=True)
    lines += [
        "",
        "Columns: test top-1 of the unpruned student, right after pruning, after CE fine-tuning and after KD "
        "recovery (same epochs); INT8 speed-up is the unpruned INT8 latency over this row's.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
