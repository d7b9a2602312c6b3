"""Quantization-aware distillation vs post-training INT8 on real Fashion-MNIST: test top-1 and agreement with FP32
of PTQ with every layer INT8, PTQ with the guard's float fallback, and QAD (every layer INT8), their batch-1
latency side by side in interleaved rounds, and what QAD costs in training time.

Each student is trained by `toolkit train` on a class-balanced subset; then `toolkit export --int8 --recover qad`
writes the guarded PTQ model and the QAD model; the all-INT8 PTQ model is the guard's first attempt, rebuilt
here with the same calibration images. Latency at the training resolution (the exported models' size).

    python benchmarks/qad_recovery.py --students mobilenetv2_100 resnet18 --out benchmarks/results/qad_fashion_mnist.md
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from prune_recovery import recipe_file, time_interleaved, write_subset  # noqa: E402

from export.calibration import calibration_batches  # noqa: E402
from export.quantize import quantize  # noqa: E402
from runtime.classifier import OnnxClassifier, OpenVinoClassifier  # noqa: E402
from runtime.environment import cpu_description  # noqa: E402
from runtime.manifests import load_image_folder  # noqa: E402
from toolkit.exporting import run_export  # noqa: E402
from toolkit.recipe import load_recipe  # noqa: E402
from toolkit.splits import recipe_splits  # noqa: E402
from toolkit.training import run_train  # noqa: E402

# Per INT8 form: its FP32 reference, all-INT8 PTQ and all-INT8 QAD rows.
FORMS = {
    "ONNX Runtime U8S8": ("ONNX Runtime FP32", "ONNX Runtime PTQ, all layers INT8",
                          "ONNX Runtime QAD, all layers INT8"),
    "TensorRT S8S8": ("ONNX Runtime FP32", "TensorRT form PTQ, all layers INT8", "TensorRT form QAD, all layers INT8"),
    "OpenVINO": ("OpenVINO FP32", "OpenVINO PTQ (NNCF)", "OpenVINO QAD"),
}  # fmt: skip


def measure(
    run: Path, test_root: Path, args: argparse.Namespace, quiet: Console
) -> tuple[list[list[str]], tuple[float, dict[str, float]], dict[str, float]]:
    """Export the trained run with PTQ (guarded) and QAD; rows of the table for it."""
    recipe = load_recipe(run / "config.yaml")
    t0 = time.perf_counter()
    section = run_export(run, int8=True, targets=("onnxruntime", "tensorrt", "openvino"), calib_size=args.calib_size,
                         tolerance_points=args.tolerance, max_float_layers=args.max_float_layers, allow_fail=True,
                         recover="qad", qad_epochs=args.qad_epochs, qad_images=args.qad_images,
                         held_out_images=args.held_out, console=quiet)  # fmt: skip
    export_s = time.perf_counter() - t0
    contract_names = OnnxClassifier(run / "model.onnx").contract.class_names
    splits = recipe_splits(recipe, quiet)
    batches = calibration_batches(splits.train, OnnxClassifier(run / "model.onnx").contract, args.calib_size,
                                  recipe.seed)  # fmt: skip
    quantize(run / "model.onnx", run / "ptq_all_int8.onnx", "onnxruntime", batches, "minmax")
    quantize(run / "model.onnx", run / "ptq_all_int8.tensorrt.onnx", "tensorrt", batches, "minmax")
    test = load_image_folder(test_root)  # sorted class folders: the training split's order
    assert tuple(test.class_names) == tuple(contract_names)
    files = {
        "ONNX Runtime FP32": "model.onnx",
        "ONNX Runtime PTQ, all layers INT8": "ptq_all_int8.onnx",
        "ONNX Runtime PTQ + guard's float fallback": "model.int8.onnx",
        "ONNX Runtime QAD, all layers INT8": "model.int8.qad.onnx",
        "OpenVINO FP32": "model.openvino/model.xml",
        "OpenVINO PTQ (NNCF)": "model.int8.openvino/model.xml",
        "OpenVINO QAD": "model.int8.qad.openvino/model.xml",
        "TensorRT form PTQ, all layers INT8": "ptq_all_int8.tensorrt.onnx",
        "TensorRT form PTQ + guard's float fallback": "model.int8.tensorrt.onnx",
        "TensorRT form QAD, all layers INT8": "model.int8.qad.tensorrt.onnx",
    }
    sessions = {k: (OnnxClassifier if f.endswith(".onnx") else OpenVinoClassifier)(run / f, threads=1)
                for k, f in files.items()}  # fmt: skip
    logits = {k: s.predict(test) for k, s in sessions.items()}
    fp32_pred = logits["ONNX Runtime FP32"].argmax(1)
    size = sessions["ONNX Runtime FP32"].contract.input_size[0]
    latency = time_interleaved(sessions, size, args.rounds, args.queries)
    top1 = {k: float((v.argmax(1) == test.labels).mean()) for k, v in logits.items()}
    qad = section["int8_onnxruntime_qad"]
    kept = section["int8_onnxruntime"]["guard"]["kept_in_float"]
    ov_kept = section["int8_openvino"]["guard"]["kept_in_float"]
    trt_kept = section["int8_tensorrt"]["guard"]["kept_in_float"]
    trt_cost = section["int8_tensorrt_qad"]["qad"]["train_s"]
    cost = f"QAD {qad['qad']['train_s']:.0f} s ({qad['qad']['epochs']} epoch(s), {qad['qad']['images']} images)"
    rows = []
    for k in files:
        extra = {"ONNX Runtime PTQ + guard's float fallback": f"{len(kept)} layer(s) in float",
                 "OpenVINO PTQ (NNCF)": f"{len(ov_kept)} layer(s) in float (accuracy control)",
                 "ONNX Runtime QAD, all layers INT8": cost,
                 "OpenVINO QAD": "the same QAD model, float biases",
                 "TensorRT form PTQ, all layers INT8": "S8S8 in ONNX Runtime's CPU kernels: latency not TensorRT's",
                 "TensorRT form PTQ + guard's float fallback": f"{len(trt_kept)} layer(s) in float",
                 "TensorRT form QAD, all layers INT8": f"QAD {trt_cost:.0f} s, its own fine-tuning",
                 }.get(k, "-")  # fmt: skip
        drop = 100 * (top1["ONNX Runtime FP32"] - top1[k])
        agreement = 100 * float((logits[k].argmax(1) == fp32_pred).mean())
        rows.append([k, f"{100 * top1[k]:.2f}", f"{drop:.2f}", f"{agreement:.2f}", f"{latency[k]:.3f}", extra])
    ptq_drop = top1["ONNX Runtime FP32"] - top1["ONNX Runtime PTQ, all layers INT8"]
    # Below a point the drop is within the test set's noise (1 SE of a 2,000-image top-1 is ~1 point).
    recovered = (
        (top1["ONNX Runtime QAD, all layers INT8"] - top1["ONNX Runtime PTQ, all layers INT8"]) / ptq_drop
        if ptq_drop >= 0.01
        else float("nan")
    )
    ov = {k: 100 * (top1["OpenVINO FP32"] - top1[k]) for k in ("OpenVINO PTQ (NNCF)", "OpenVINO QAD")}
    ov |= {k: 100 * (top1["ONNX Runtime FP32"] - top1[k]) for k in files if k.startswith("TensorRT form")}
    print(json.dumps({"top1": top1, "recovered_share": recovered, "export_s": export_s}), file=sys.stderr)
    return rows, (recovered, ov), top1


def seed_table(results: dict[str, list[dict[str, float]]]) -> list[str]:
    """Per student and INT8 form, over the seeds: PTQ (all INT8) and QAD drops, mean +- std, and the share of
    the PTQ drop QAD recovers (from the mean drops)."""
    lines = ["| student | form | seeds | PTQ all-INT8 drop (pts) | QAD all-INT8 drop (pts) | recovered |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for student, runs in results.items():
        for form, (ref, ptq, qad) in FORMS.items():
            ptq_drops = np.array([100 * (t[ref] - t[ptq]) for t in runs])
            qad_drops = np.array([100 * (t[ref] - t[qad]) for t in runs])
            share = (ptq_drops.mean() - qad_drops.mean()) / ptq_drops.mean() if ptq_drops.mean() >= 1 else None
            lines.append(f"| {student} | {form} | {len(runs)} | {ptq_drops.mean():.2f} +- {ptq_drops.std():.2f} | "
                         f"{qad_drops.mean():.2f} +- {qad_drops.std():.2f} | "
                         + (f"{100 * share:.0f}%" if share is not None else "PTQ drop < 1 pt") + " |")  # fmt: skip
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--students", nargs="+", default=["mobilenetv2_100", "resnet18"])
    ap.add_argument("--per-class", type=int, default=300, help="training images per class")
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--size", type=int, default=32, help="training resolution")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--calib-size", type=int, default=256)
    ap.add_argument("--tolerance", type=float, default=0.5)
    ap.add_argument("--max-float-layers", type=int, default=16)
    ap.add_argument("--held-out", type=int, default=300, help="validation images the guard measures on")
    ap.add_argument("--qad-epochs", type=int, default=2)
    ap.add_argument("--qad-images", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="a student trained (and QAD run) per seed")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--work", type=Path, help="keep the runs in this folder (default: a temporary one, removed)")
    args = ap.parse_args()
    quiet = Console(stderr=True, quiet=True)
    cpu = cpu_description()
    flags = ", ".join(f for f in cpu.get("flags", []) if f.startswith(("avx", "amx")))
    lines = [f"# QAD vs PTQ on Fashion-MNIST ({args.per_class}/class train, {args.test_per_class}/class test)", "",
             f"Machine: {cpu.get('model')} ({platform.machine()}), ISA flags: {flags}; torch {torch.__version__}. "
             f"Students trained {args.epochs} epochs at {args.size} px by `toolkit train`; INT8 in ONNX Runtime's "
             "U8S8 Q/DQ form, TensorRT's S8S8 form (run by ONNX Runtime's CPU kernels here) and OpenVINO "
             "(NNCF PTQ with its accuracy control), "
             f"{args.calib_size} calibration images (minmax); guard tolerance {args.tolerance} "
             f"points on {args.held_out} validation images; QAD {args.qad_epochs} epoch(s), KD from the FP32 "
             f"student's cached logits. Latency: batch 1, 1 thread, {args.size} px, median of "
             f"{args.rounds * args.queries} queries in interleaved rounds.", "",
             "| student | model | test top-1 (%) | drop vs FP32 (pts) | agreement with FP32 (%) | p50 ms | notes |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    summary = []
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        train = write_subset("train", args.per_class, work / "train")
        test = write_subset("test", args.test_per_class, work / "test")
        for student in args.students:
            for seed in args.seeds[1:]:  # the extra seeds: accuracy only, for the table across seeds
                recipe = recipe_file(work / f"{student}-{seed}.yaml", student, train, test, args.epochs, args.size,
                                     seed)  # fmt: skip
                run_train(load_recipe(recipe), work / f"{student}-{seed}", resume=False, force=True, console=quiet)
                results.setdefault(student, []).append(measure(work / f"{student}-{seed}", test, args, quiet)[2])
            t0 = time.perf_counter()
            recipe = recipe_file(work / f"{student}.yaml", student, train, test, args.epochs, args.size,
                                 args.seeds[0])  # fmt: skip
            run = work / student
            run_train(load_recipe(recipe), run, resume=False, force=True, console=quiet)
            rows, recovered, top1 = measure(run, test, args, quiet)
            results.setdefault(student, []).insert(0, top1)
            lines += [f"| {student} | " + " | ".join(r) + " |" for r in rows]
            share, ov = recovered
            ort = (f"ONNX Runtime QAD (every layer INT8) recovers {100 * share:.0f}% of the all-INT8 PTQ drop"
                   if share == share else "ONNX Runtime PTQ loses under a point: nothing to recover")  # fmt: skip
            summary.append(f"{student}: {ort}; OpenVINO: PTQ (accuracy control) drops "
                           f"{ov['OpenVINO PTQ (NNCF)']:.2f} points, QAD (every layer INT8) "
                           f"{ov['OpenVINO QAD']:.2f}; TensorRT form: PTQ all INT8 "
                           f"{ov['TensorRT form PTQ, all layers INT8']:.2f}, QAD all INT8 "
                           f"{ov['TensorRT form QAD, all layers INT8']:.2f}")  # fmt: skip
            print(f"{student}: {time.perf_counter() - t0:.0f}s", flush=True)
    lines += ["", *summary]
    if len(args.seeds) > 1:
        seeds = ", ".join(map(str, args.seeds))
        lines += ["", f"Across seeds {seeds} (each its own split, student and QAD; the table above is the first "
                  "seed; +- is the standard deviation over seeds):", "", *seed_table(results)]  # fmt: skip
    lines += ["", "Reproduce: `python benchmarks/qad_recovery.py --students " + " ".join(args.students)
              + f" --epochs {args.epochs} --qad-epochs {args.qad_epochs} --seeds "
              + " ".join(map(str, args.seeds)) + "`"]  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
