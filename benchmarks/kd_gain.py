"""Does distilling from a stronger checkpoint teacher beat plain training? Real Fashion-MNIST, side by side.

A teacher (default ResNet-18, 30 epochs) is trained with `toolkit train` on a class-balanced subset; then a
smaller student (default resnet10t, 10 epochs) is distilled from it (`run:<teacher run>`) with w/o KD
(cross-entropy), KD and RKD, on the same cached crops (one teacher cache: every method sees the same augmented
images), over several seeds.
Few-shot variant: the teacher and the w/o-KD student see only ``--few-shot`` labelled images per class; the KD
student sees the whole subset with the teacher's outputs only (alpha 1: the teacher labels the unlabelled rest).
Runs already finished in ``--work`` are reused (the table can be rebuilt, or extended with seeds, cheaply).
Top-1 on the test images (last epoch; nothing selected on test). The last line is machine-read:
``kd gain vs w/o KD: <points> +- <std>`` (KD minus w/o KD on the full-label setting, per seed, mean and std).

    python benchmarks/kd_gain.py --out benchmarks/results/kd_gain_fashion_mnist.md
    python benchmarks/kd_gain.py --teacher-model resnet50 --teacher-epochs 10 \
        --out benchmarks/results/kd_gain_fashion_mnist_resnet50_teacher.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from prune_recovery import write_subset  # noqa: E402

from runtime.environment import cpu_description  # noqa: E402
from toolkit.distilling import run_distill  # noqa: E402
from toolkit.recipe import load_recipe  # noqa: E402
from toolkit.training import run_train  # noqa: E402

METHODS = {"ce": "w/o KD", "kd": "KD", "rkd": "RKD"}
TRAIN_S: list[float] = []  # students' training seconds, as their runs recorded them


def recipe(path: Path, name: str, model: str, train: Path, test: Path, args: argparse.Namespace, seed: int,
           distill: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """A recipe at ``args.size`` px with Fashion-MNIST's statistics; ``distill`` makes it a distillation."""
    raw: dict[str, Any] = {
        "name": name, "seed": seed,
        "data": {"train": {"kind": "imagefolder", "path": str(train)},
                 "test": {"kind": "imagefolder", "path": str(test)}, "val_fraction": 0.0},
        "preprocess": {"input_size": args.size, "resize_size": args.size, "mean": [0.286] * 3, "std": [0.353] * 3},
        "student": {"name": model},
        "train": {"epochs": args.epochs, "batch_size": 64, "optimizer": {"name": "sgd", "lr": args.lr},
                  "precision": "fp32", "select": "last", "ema": {"enabled": False}},
    }  # fmt: skip
    if distill is None:
        raw["train"]["augment"] = {"pad_crop": 2, "hflip": 0.5}
    else:
        raw["distill"] = distill
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def train_teacher(work: Path, train: Path, test: Path, args: argparse.Namespace, console: Console) -> tuple:
    run = work / f"teacher-{train.name}"
    if not (run / "metrics.json").is_file():
        r = recipe(work / f"teacher-{train.name}.yaml", "teacher", args.teacher_model, train, test, args, 0)
        loaded = load_recipe(r)
        loaded = loaded.model_copy(update={"train": loaded.train.model_copy(update={"epochs": args.teacher_epochs})})
        run_train(loaded, run, force=True, console=console)
    return run, float(yaml.safe_load((run / "metrics.json").read_text())["test_top1"])


def distill(work: Path, tag: str, method: str, teacher: Path, train: Path, test: Path, args: argparse.Namespace,
            seed: int, console: Console, alpha: float | None = None) -> float:  # fmt: skip
    params = {"alpha": alpha} if alpha is not None and method == "kd" else {}
    section = {"method": method, "teacher": f"run:{teacher}", "teacher_backend": "torch", "params": params,
               "cache": {"crops": args.crops, "scale": [0.5, 1.0], "dir": str(work / f"cache-{tag}")}}  # fmt: skip
    r = recipe(work / f"{tag}-{method}-{seed}.yaml", f"{tag}-{method}", args.student, train, test, args, seed, section)
    run = work / f"{tag}-{method}-{seed}"
    if not ((run / "metrics.json").is_file() and (run / "config.yaml").is_file()):  # finished runs are reused
        run_distill(load_recipe(r), run, force=True, console=console)
    metrics = yaml.safe_load((run / "metrics.json").read_text())
    TRAIN_S.append(float(metrics.get("train_time_s", 0.0)))
    return float(metrics["test_top1"])


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{100 * statistics.mean(values):.2f} +- {100 * (statistics.stdev(values) if len(values) > 1 else 0):.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher-model", default="resnet18")
    p.add_argument("--student", default="resnet10t")
    p.add_argument("--per-class", type=int, default=200, help="training images per class (the subset)")
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--few-shot", type=int, default=30, help="labelled images per class in the few-shot variant")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--teacher-epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--crops", type=int, default=8, help="teacher-cache crops per image")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--work", type=Path, default=None, help="keep runs here (default: a temporary folder)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    console = Console(stderr=True, quiet=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kd-gain-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        test = write_subset("test", args.test_per_class, work / "test")
        full = write_subset("train", args.per_class, work / "full")
        few = write_subset("train", args.few_shot, work / "few")
        teacher, teacher_top1 = train_teacher(work, full, test, args, console)
        few_teacher, few_teacher_top1 = train_teacher(work, few, test, args, console)
        table: dict[str, dict[str, list[float]]] = {"full": {m: [] for m in METHODS}, "few": {m: [] for m in METHODS}}
        for seed in args.seeds:
            for method in METHODS:
                table["full"][method].append(distill(work, "full", method, teacher, full, test, args, seed, console))
                print(f"full labels, {method}, seed {seed}: {table['full'][method][-1]:.4f}", flush=True)
            # few-shot: w/o KD on the labelled few; KD on every image from the teacher's outputs only (alpha 1: no
            # label is read). RKD needs labels for its CE term, so it has no label-free variant here.
            table["few"]["ce"].append(distill(work, "few", "ce", few_teacher, few, test, args, seed, console))
            table["few"]["kd"].append(distill(work, "fewkd", "kd", few_teacher, full, test, args, seed, console, 1.0))
            print(f"few-shot, seed {seed}: w/o KD {table['few']['ce'][-1]:.4f}, KD {table['few']['kd'][-1]:.4f}",
                  flush=True)  # fmt: skip
    gains = [k - c for k, c in zip(table["full"]["kd"], table["full"]["ce"])]
    cpu = cpu_description()
    flags = ", ".join(f for f in cpu.get("flags", []) if f.startswith(("avx", "amx")))
    lines = [
        "# KD gain on Fashion-MNIST: checkpoint teacher -> smaller student",
        "",
        f"Command: `python benchmarks/kd_gain.py {' '.join(sys.argv[1:])}`; {cpu.get('model')} "
        f"({platform.machine()}, {cpu.get('usable_cores')} cores; {flags}); students' training "
        f"{sum(TRAIN_S) / 60:.0f} min in all (this invocation {time.perf_counter() - t0:.0f} s; runs already in "
        "--work are reused).",
        "",
        f"Subset: {args.per_class} training / {args.test_per_class} test images per class at {args.size} px; "
        f"students {args.student}, {args.epochs} epochs SGD {args.lr}, last epoch, {len(args.seeds)} seeds; one "
        f"teacher cache of {args.crops} crops per image shared by every method (same augmented images). Teachers "
        f"({args.teacher_model}, `toolkit train`, {args.teacher_epochs} epochs): {100 * teacher_top1:.2f}% test "
        f"top-1 on all labels, {100 * few_teacher_top1:.2f}% on {args.few_shot} per class.",
        "",
        "| setting | " + " | ".join(METHODS.values()) + " |",
        "|---|" + "---|" * len(METHODS),
        "| all labels | " + " | ".join(mean_std(table["full"][m]) for m in METHODS) + " |",
        f"| {args.few_shot} labels/class (KD: the teacher's outputs on every image, no labels) | "
        + " | ".join(mean_std(table["few"][m]) for m in METHODS)
        + " |",
        "",
        "Top-1 % on the test images, mean +- std over seeds. Few-shot KD uses alpha 1 (the teacher's outputs only, "
        "T = 4); RKD has no label-free form (its CE term reads labels), hence no few-shot entry.",
        "",
        f"kd gain vs w/o KD: {100 * statistics.mean(gains):.2f} +- "
        f"{100 * (statistics.stdev(gains) if len(gains) > 1 else 0):.2f}",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
