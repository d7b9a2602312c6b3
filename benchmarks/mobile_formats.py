"""Phone/board formats (ExecuTorch, LiteRT, NCNN) beside ONNX Runtime and OpenVINO on real Fashion-MNIST: test top-1,
drop and agreement vs the PyTorch student, file size, and batch-1 latency (1 thread, interleaved rounds) at the
training resolution and at 224 px.

Each student is trained by `toolkit train`, then `toolkit export --int8 --backend onnxruntime --backend openvino
--format executorch --format litert --format ncnn` writes every artifact with its checks (accuracy rows).
The 224 px rows re-export the same weights at 224 px (global pooling makes them valid at any size) with INT8
calibrated on random inputs: latency only.

    python benchmarks/mobile_formats.py --students resnet18 mobilenetv2_100 --out benchmarks/results/mobile_formats.md
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from prune_recovery import recipe_file, time_interleaved, write_subset  # noqa: E402

from export.executorch_export import export_executorch  # noqa: E402
from export.litert_export import export_litert  # noqa: E402
from export.ncnn_export import export_ncnn  # noqa: E402
from export.onnx_export import export_onnx  # noqa: E402
from export.openvino_export import onnx_to_openvino  # noqa: E402
from export.quantize import quantize  # noqa: E402
from runtime.artifacts import run_artifacts  # noqa: E402
from runtime.classifier import open_classifier  # noqa: E402
from runtime.environment import cpu_description  # noqa: E402
from runtime.manifests import load_image_folder  # noqa: E402
from runtime.preprocess import PreprocessContract  # noqa: E402
from toolkit.evaluation import load_run_student  # noqa: E402
from toolkit.exporting import run_export  # noqa: E402
from toolkit.recipe import load_recipe  # noqa: E402
from toolkit.training import run_train  # noqa: E402

# The artifacts compared, by manifest key.
KEYS = ("onnx", "int8_onnxruntime", "openvino", "int8_openvino", "executorch", "int8_executorch", "ncnn",
        "int8_ncnn", "litert", "int8_litert")  # fmt: skip


def accuracy_rows(run: Path, test_root: Path, args: argparse.Namespace, quiet: Console) -> list[dict]:
    """Every artifact of the run on the test set, and its batch-1 latency at the training resolution."""
    run_export(run, int8=True, targets=("onnxruntime", "openvino"), formats=("executorch", "litert", "ncnn"),
               calib_size=args.calib_size, held_out_images=args.held_out, allow_fail=True, console=quiet)  # fmt: skip
    model, contract, _ = load_run_student(run)
    test = load_image_folder(test_root)
    artifacts = {a.key: a for a in run_artifacts(run) if a.key in KEYS}
    sessions = {k: open_classifier(a.path, threads=1) for k, a in artifacts.items()}
    from distill.evaluate import predict_logits

    reference = predict_logits(model, test, contract, 64).argmax(1)
    top1_torch = float((reference == test.labels).mean())
    latency = time_interleaved(sessions, contract.input_size[0], args.rounds, args.queries)
    rows = [{"model": "PyTorch eager FP32", "top1": top1_torch, "agreement": 1.0, "mb": None, "p50": None}]
    for key, session in sessions.items():
        pred = session.predict(test).argmax(1)
        size = artifacts[key].bytes or artifacts[key].path.stat().st_size
        agreement = float((pred == reference).mean())
        rows.append({"model": artifacts[key].label, "top1": float((pred == test.labels).mean()),
                     "agreement": agreement, "mb": size / 1e6, "p50": latency[key]})  # fmt: skip
    for r in rows:
        r["drop"] = 100 * (top1_torch - r["top1"])
    return rows


def latency_at(run: Path, size: int, work: Path, args: argparse.Namespace) -> dict[str, float]:
    """Batch-1 p50 (ms) of each format at ``size`` px, the trained weights re-exported at that size."""
    model, contract, _ = load_run_student(run)
    big = PreprocessContract(input_size=size, resize_size=size, class_names=contract.class_names)
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((8, 3, size, size)).astype(np.float32) for _ in range(2)]
    fp32 = export_onnx(model, big, work / "m.onnx")
    files = {
        "ONNX Runtime FP32": fp32,
        "ONNX Runtime INT8 U8S8": quantize(fp32, work / "m.int8.onnx", "onnxruntime", batches),
        "ExecuTorch FP32 (XNNPACK)": work / "m.pte",
        "ExecuTorch INT8 (XNNPACK)": work / "m.int8.pte",
    }
    onnx_to_openvino(fp32, work / "ov" / "m.xml", big)
    files["OpenVINO FP32"] = work / "ov" / "m.xml"
    export_executorch(model, big, work / "m.pte")
    export_executorch(model, big, work / "m.int8.pte", calibration=batches)
    files["NCNN FP32"] = work / "ncnn" / "model.param"
    export_ncnn(model, big, files["NCNN FP32"])
    files["NCNN INT8"] = work / "ncnn-int8" / "model.param"
    export_ncnn(model, big, files["NCNN INT8"], calibration=batches)
    files["LiteRT FP32 (XNNPACK)"] = work / "m.tflite"
    export_litert(model, big, files["LiteRT FP32 (XNNPACK)"])
    files["LiteRT INT8, full integer"] = work / "m.int8.tflite"
    export_litert(model, big, files["LiteRT INT8, full integer"], calibration=batches)
    sessions = {k: open_classifier(f, threads=1) for k, f in files.items()}
    return time_interleaved(sessions, size, args.rounds, args.queries)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--students", nargs="+", default=["resnet18", "mobilenetv2_100"])
    ap.add_argument("--per-class", type=int, default=300, help="training images per class")
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--size", type=int, default=28, help="training resolution")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--calib-size", type=int, default=256)
    ap.add_argument("--held-out", type=int, default=300)
    ap.add_argument("--latency-size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    quiet = Console(stderr=True, quiet=True)
    cpu = cpu_description()
    flags = ", ".join(f for f in cpu.get("flags", []) if f.startswith(("avx", "amx")))
    lines = [f"# Mobile formats on Fashion-MNIST ({args.per_class}/class train, {args.test_per_class}/class test)",
             "", f"Machine: {cpu.get('model')} ({platform.machine()}), ISA flags: {flags}; torch {torch.__version__}. "
             f"Students trained {args.epochs} epochs at {args.size} px; INT8 calibrated on {args.calib_size} "
             "training images (ONNX Runtime U8S8 and OpenVINO behind the guard with their float fallback, "
             "ExecuTorch XNNPACK, LiteRT full integer and NCNN conv/fc all INT8). Latency: batch 1, 1 thread, "
             f"median of {args.rounds * args.queries} queries in interleaved rounds; ExecuTorch through its Python "
             "runtime, LiteRT through ai-edge-litert's interpreter (XNNPACK delegate).",
             "", f"| student | model | test top-1 (%) | drop vs PyTorch (pts) | agreement with PyTorch (%) | MB | "
             f"p50 ms at {args.size} px | p50 ms at {args.latency_size} px |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    summary = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train = write_subset("train", args.per_class, work / "train")
        test = write_subset("test", args.test_per_class, work / "test")
        for student in args.students:
            recipe = recipe_file(work / f"{student}.yaml", student, train, test, args.epochs, args.size)
            run = work / student
            run_train(load_recipe(recipe), run, resume=False, force=True, console=quiet)
            rows = accuracy_rows(run, test, args, quiet)
            (work / f"{student}-big").mkdir()
            big = latency_at(run, args.latency_size, work / f"{student}-big", args)
            for r in rows:
                p50 = f"{r['p50']:.3f}" if r["p50"] is not None else "-"
                mb = f"{r['mb']:.2f}" if r["mb"] is not None else "-"
                at_big = big.get(r["model"])  # OpenVINO INT8 at 224 px is not measured (its export needs data)
                lines.append(f"| {student} | {r['model']} | {100 * r['top1']:.2f} | {r['drop']:.2f} | "
                             f"{100 * r['agreement']:.2f} | {mb} | {p50} | "
                             + (f"{at_big:.3f}" if at_big is not None else "-") + " |")  # fmt: skip
            et = {r["model"]: r for r in rows}
            summary[student] = {"executorch_int8_drop": et["ExecuTorch INT8 (XNNPACK)"]["drop"],
                                "litert_int8_drop": et["LiteRT INT8, full integer"]["drop"],
                                "ncnn_int8_drop": et["NCNN INT8"]["drop"],
                                "latency_224_ms": big}  # fmt: skip
    lines += ["", f"Reproduce: `python benchmarks/mobile_formats.py --students {' '.join(args.students)}`",
              "", "summary: " + json.dumps(summary)]  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
