"""Every distillation method on real Fashion-MNIST, few-shot, several seeds -> a Markdown table.

Trains the students (default ResNet-18 and MobileNetV2) with every method through `toolkit distill`'s own code
path (recipes/fashion_mnist_fewshot_distill.yaml: 30 training images per class, the offline ConSE teacher,
32 px, one shared teacher cache), and evaluates each on the 10,000 official test images (last epoch; no
selection on test). Per seed, the order reuses what is shared:
  - PAND on the first student runs its PSC stage -> calibrated anchors; KD's teacher is that calibrated
    teacher, and PAND on the other students reuses the anchors (stages: [student]);
  - DAIT-F on the first student trains the intermediate teacher; DAIT-F/L on every student reuse it.
The teacher's own top-1 on the test set with the template anchors and with each seed's calibrated anchors is
measured once (test embeddings computed once and kept in the output folder).

    python benchmarks/methods_table.py --epochs 20 --seeds 0 1 2
Writes benchmarks/results/methods_fashion_mnist.md and prints it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from distill.teachers.coop import image_features, load_anchors, top1
from runtime.atomic import write_text
from runtime.sources import parse_data_arg
from toolkit.distilling import run_distill
from toolkit.recipe import load_recipe
from toolkit.teaching import build_teacher

console = Console(stderr=True, markup=False)
METHODS = ("ce", "kd", "rkd", "vl2lite", "pand", "dait_f", "dait_l")
LABELS = {"ce": "w/o KD", "kd": "KD (calibrated teacher)", "rkd": "RKD", "vl2lite": "VL2Lite",
          "pand": "PAND (PSC+NSD)", "dait_f": "DAIT-F", "dait_l": "DAIT-L"}  # fmt: skip


def _run(recipe: Path, out: Path, student: str, method: str, seed: int, epochs: int, extra: list[str]) -> dict:
    run_dir = out / f"{student}-{method}-s{seed}"
    if (run_dir / "metrics.json").is_file():
        return json.loads((run_dir / "metrics.json").read_text())
    sets = [f"student.name={student}", f"distill.method={method}", f"seed={seed}", f"train.epochs={epochs}", *extra]
    r = load_recipe(recipe, sets)
    console.print(f"--- {student} {method} seed {seed}")
    return run_distill(r, run_dir, force=True, console=console)


def _teacher_top1(recipe: Path, out: Path, anchor_files: list[Path]) -> tuple[float, list[float]]:
    r = load_recipe(recipe)
    teacher = build_teacher(r.distill.teacher, None)  # type: ignore[union-attr]
    test = parse_data_arg("fashion_mnist:test").open()
    names = list(test.class_names)
    path = out / "teacher_test_features.npy"
    if path.is_file():
        feats = torch.from_numpy(np.load(path))
    else:
        console.print(f"embedding {len(test)} test images with {teacher.spec} (once)")
        feats = image_features(teacher, test)
        np.save(path, feats.numpy())
    with torch.no_grad():
        zero = teacher.class_anchors(names, r.distill.template)  # type: ignore[union-attr]
    calibrated = [top1(teacher, feats, test.labels, load_anchors(f, None, names)[0]) for f in anchor_files]
    return top1(teacher, feats, test.labels, zero), calibrated


def _fmt(values: list[float]) -> str:
    a = 100 * np.asarray(values)
    return f"{a.mean():.2f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=Path("recipes/fashion_mnist_fewshot_distill.yaml"))
    ap.add_argument("--students", nargs="+", default=["resnet18", "mobilenetv2_100"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("runs/methods_table"))
    ap.add_argument("--table", type=Path, default=Path("benchmarks/results/methods_fashion_mnist.md"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    results: dict[tuple[str, str], list[dict]] = {}
    anchor_files: list[Path] = []
    first = args.students[0]
    for seed in args.seeds:
        pand_anchors = args.out / f"{first}-pand-s{seed}" / "anchors.safetensors"
        it_weights = args.out / f"{first}-dait_f-s{seed}" / "intermediate_teacher.safetensors"
        for student in args.students:
            order = sorted(args.methods, key=lambda m: (m != "pand", m != "dait_f", METHODS.index(m)))
            for method in order:
                extra: list[str] = []
                if method == "kd" or (method == "pand" and student != first):
                    extra.append(f"distill.anchors={pand_anchors}")
                if method == "pand" and student != first:
                    extra.append("distill.stages=[{name: student}]")
                if method == "dait_l" or (method == "dait_f" and student != first):
                    extra += [f"distill.intermediate_teacher={it_weights}", "distill.stages=[{name: student}]"]
                metrics = _run(args.recipe, args.out, student, method, seed, args.epochs, extra)
                results.setdefault((student, method), []).append(metrics)
        if pand_anchors.is_file():
            anchor_files.append(pand_anchors)
    zero, calibrated = _teacher_top1(args.recipe, args.out, anchor_files)

    lines = [
        "# Distillation methods on Fashion-MNIST, few-shot (30 images per class)",
        "",
        f"Command: `python benchmarks/methods_table.py --epochs {args.epochs} --seeds {' '.join(map(str, args.seeds))}`"
        f" (recipe `{args.recipe}`); {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}.",
        "",
        f"Top-1 % on the 10,000 official test images (last epoch, no selection on test), mean ± std over "
        f"{len(args.seeds)} seeds; time = training wall-clock per run on this CPU (teacher cache excluded, "
        "shared by all runs).",
        "",
        f"Teacher (ConSE, offline): zero-shot top-1 {100 * zero:.2f} %; after PSC (CoOp on the 300 training "
        f"images' cached crops) {_fmt(calibrated) if calibrated else 'n/a'} %.",
        "",
        "| method | " + " | ".join(f"{s} top-1 % | {s} s/run" for s in args.students) + " |",
        "|---|" + "---|---|" * len(args.students),
    ]
    for method in args.methods:
        cells = []
        for student in args.students:
            runs = results.get((student, method), [])
            cells.append(_fmt([m["test_top1"] for m in runs]))
            cells.append(f"{np.mean([m['train_time_s'] for m in runs]):.0f}")
        lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    total = sum(m["train_time_s"] for runs in results.values() for m in runs)
    lines += [
        "",
        f"Training time summed over all {sum(map(len, results.values()))} runs: {total / 60:.0f} min "
        f"(this invocation: {(time.perf_counter() - t_all) / 60:.0f} min; runs already in {args.out} are "
        "reused, so the table can be built by workers running seeds in parallel, e.g. with OMP_NUM_THREADS=1).",
    ]
    text = "\n".join(lines) + "\n"
    write_text(args.table, text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
