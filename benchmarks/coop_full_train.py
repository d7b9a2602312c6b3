"""PAND's PSC (CoOp) on the whole Fashion-MNIST training set with the offline ConSE teacher: top-1 on the
10,000 test images before and after. Image features are computed once with the teacher's eval preprocessing
and kept as .npy beside the output (the test features can be shared with benchmarks/methods_table.py),
so a rerun only trains CoOp.

    python benchmarks/coop_full_train.py --epochs 2 --batch-size 128
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from distill.teachers.coop import CoOpConfig, calibrate, top1
from runtime.atomic import write_json
from runtime.sources import parse_data_arg
from toolkit.teaching import DEFAULT_TEMPLATE, build_teacher, features_with_progress

console = Console(stderr=True, markup=False)


def features(teacher, data: str, path: Path) -> tuple[torch.Tensor, np.ndarray]:
    dataset = parse_data_arg(data).open()
    if path.is_file():
        return torch.from_numpy(np.load(path)), dataset.labels
    t0 = time.perf_counter()
    feats = features_with_progress(teacher, dataset, console, f"{len(dataset)} images of {dataset.name}")
    np.save(path, feats.numpy())
    console.print(f"{data}: {len(dataset)} embeddings in {time.perf_counter() - t0:.0f}s -> {path}")
    return feats, dataset.labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="conse:efficientnet_lite0+minilm")
    ap.add_argument("--template", default=DEFAULT_TEMPLATE)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path("runs/coop_full_train"))
    ap.add_argument("--test-features", type=Path, default=Path("runs/methods_table/teacher_test_features.npy"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    teacher = build_teacher(args.teacher, None)
    train, train_y = features(teacher, "fashion_mnist:train", args.out / "train_features.npy")
    test, test_y = features(teacher, "fashion_mnist:test", args.test_features)
    names = list(parse_data_arg("fashion_mnist:test").open().class_names)
    with torch.no_grad():
        zero = teacher.class_anchors(names, args.template)
    t0 = time.perf_counter()
    result = calibrate(teacher, train, train_y, names, args.template,
                       CoOpConfig(epochs=args.epochs, batch_size=args.batch_size))  # fmt: skip
    report = {
        "teacher": args.teacher, "train_images": len(train), "coop_epochs": args.epochs,
        "batch_size": args.batch_size, "coop_seconds": round(time.perf_counter() - t0, 1),
        "test_top1_zero_shot": top1(teacher, test, test_y, zero),
        "test_top1_calibrated": top1(teacher, test, test_y, result.anchors),
    }  # fmt: skip
    write_json(args.out / "report.json", report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
