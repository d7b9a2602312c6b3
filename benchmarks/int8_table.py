"""Every exported form of trained Fashion-MNIST students, side by side in one run -> a Markdown table.

For each run (default: ResNet-18 and MobileNetV2 trained by recipes/fashion_mnist_*.yaml):
  - at the recipe's input size, `toolkit export --int8 --backend all` on a copy of the run (so the table
    measures exactly what users ship, accuracy guard included), then top-1 of every artifact on the 10,000
    official test images through its own runtime and preprocessing;
  - at the recipe size and at 224x224 (the same trained weights exported at 224, calibrated on training
    images resized to 224; no top-1 there: the students were trained at 28x28), SingleStream batch-1
    latency (median, p90) and Offline throughput at batch 32, every variant timed in interleaved rounds
    so machine noise hits all alike; file sizes; calibration time (calibration + quantization + guard).
Writes benchmarks/results/int8_fashion_mnist.md; the last line is
`best int8 speedup vs torch fp32: <ratio>x, top-1 drop: <points>` (batch-1 median at 224 vs PyTorch eager
FP32 of the same model, and that artifact's top-1 drop vs PyTorch FP32 at the recipe size).

    python benchmarks/int8_table.py --run runs/fashion_mnist_resnet18 --run runs/fashion_mnist_mobilenetv2
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from distill.evaluate import predict_logits
from export.calibration import calibration_batches
from export.onnx_export import export_onnx
from export.openvino_export import onnx_to_openvino
from export.quantize import quantize
from runtime.atomic import write_text
from runtime.classifier import open_classifier
from runtime.environment import describe_environment
from runtime.latency import LatencyStats, RunLimits, offline, single_stream
from runtime.preprocess import PreprocessContract
from runtime.sources import parse_data_arg
from toolkit.evaluation import load_run_student
from toolkit.exporting import run_export, run_splits
from toolkit.recipe import Recipe

console = Console(stderr=True, markup=False)
RUN_FILES = ("config.yaml", "student.safetensors", "preprocess.json", "metrics.json", "metrics.jsonl", "manifest.json")
# label -> manifest export key of the toolkit-exported artifact at the recipe size
VARIANTS = {
    "PyTorch eager FP32": None,
    "ONNX Runtime FP32": "onnx",
    "ONNX Runtime INT8 U8S8": "int8_onnxruntime",
    "ONNX Runtime INT8 S8S8 (TensorRT form)": "int8_tensorrt",
    "OpenVINO FP32": "openvino",
    "OpenVINO INT8 (NNCF)": "int8_openvino",
}
FILES = {
    "onnx": "model.onnx",
    "int8_onnxruntime": "model.int8.onnx",
    "int8_tensorrt": "model.int8.tensorrt.onnx",
    "openvino": "model.openvino/model.xml",
    "int8_openvino": "model.int8.openvino/model.xml",
}


def size_of(path: Path) -> int:
    return path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)


def torch_runner(model: torch.nn.Module) -> Callable[[np.ndarray], object]:
    def run(x: np.ndarray) -> object:
        with torch.inference_mode():
            return model(torch.from_numpy(x))

    return run


def export_at(model: torch.nn.Module, contract: PreprocessContract, batches: list[np.ndarray], out: Path) -> dict:
    """The same four exports `toolkit export` makes, at another input size (latency only), timed."""
    import nncf
    import openvino as ov

    seconds = {}
    onnx_path = export_onnx(model, contract, out / FILES["onnx"])
    for key, target in (("int8_onnxruntime", "onnxruntime"), ("int8_tensorrt", "tensorrt")):
        t0 = time.perf_counter()
        quantize(onnx_path, out / FILES[key], target, batches)
        seconds[key] = time.perf_counter() - t0
    ov_model = onnx_to_openvino(onnx_path, out / FILES["openvino"], contract)
    t0 = time.perf_counter()
    ov.save_model(
        nncf.quantize(ov_model, nncf.Dataset(batches), subset_size=len(batches)), str(out / FILES["int8_openvino"])
    )
    seconds["int8_openvino"] = time.perf_counter() - t0
    return seconds


def time_variants(
    runners: dict[str, Callable[[np.ndarray], object]], shape: tuple[int, int], rounds: int, queries: int, batch: int
) -> dict[str, dict]:
    """Interleaved rounds: each round runs every variant for ``queries`` batch-1 queries and a few batch runs."""
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, 3, *shape)).astype(np.float32)
    many = rng.standard_normal((batch, 3, *shape)).astype(np.float32)
    ss_limits = RunLimits(warmup_queries=0, min_duration_s=0.0, min_queries=queries)
    off_limits = RunLimits(warmup_queries=0, min_duration_s=0.0, min_queries=2)
    samples: dict[str, list[float]] = {k: [] for k in runners}
    images: dict[str, list[float]] = {k: [0.0, 0.0] for k in runners}
    for run in runners.values():  # warm-up
        for _ in range(3):
            run(one)
        run(many)
    for r in range(rounds):
        for name, run in runners.items():
            samples[name] += single_stream(run, one, ss_limits)["samples_ms"]
            o = offline(run, many, off_limits)
            images[name][0] += o["batches"] * batch
            images[name][1] += o["seconds"]
        console.print(f"  latency round {r + 1}/{rounds}")
    return {
        name: {"stats": LatencyStats.from_samples(samples[name], 0.0), "throughput": images[name][0] / images[name][1]}
        for name in runners
    }


def bench_run(run: Path, work: Path, test_data: str, args: argparse.Namespace) -> list[dict]:
    """Rows (one per variant and input size) for one trained run."""
    copy = work / run.name
    copy.mkdir(parents=True)
    for f in RUN_FILES:
        if (run / f).is_file():
            shutil.copy2(run / f, copy / f)
    console.print(f"{run}: toolkit export --int8 --backend all (calibration {args.calib_size} images)")
    section = run_export(
        copy, int8=True, targets=("onnxruntime", "tensorrt", "openvino"), calib_size=args.calib_size, console=console
    )
    model, contract, raw = load_run_student(copy)
    student = raw["student"]["name"]
    test = parse_data_arg(test_data).open(list(contract.class_names))
    labels = test.labels
    console.print(f"{student}: top-1 of every artifact on {len(test)} test images")
    top1 = {"PyTorch eager FP32": float((predict_logits(model, test, contract).argmax(1) == labels).mean())}
    for label, key in VARIANTS.items():
        if key:
            top1[label] = float((open_classifier(copy / FILES[key]).predict(test, 256).argmax(1) == labels).mean())
    rows = []
    sizes = {}
    h, w = contract.input_size
    size_224 = PreprocessContract.from_dict({**contract.to_dict(), "input_size": [224, 224], "resize_size": 224})
    train, _ = run_splits(Recipe.model_validate(raw), console)
    out_224 = work / f"{run.name}-224"
    console.print(f"{student}: exporting at 224 (calibration {args.calib_224} images)")
    seconds_224 = export_at(model, size_224, calibration_batches(train, size_224, args.calib_224, 0), out_224)
    for shape, folder, calib in (((h, w), copy, None), ((224, 224), out_224, seconds_224)):
        runners = {"PyTorch eager FP32": torch_runner(model)}
        runners.update({label: open_classifier(folder / FILES[key]).run for label, key in VARIANTS.items() if key})
        console.print(f"{student} at {shape[0]}x{shape[1]}: timing {len(runners)} variants")
        timed = time_variants(runners, shape, args.rounds, args.queries, args.batch)
        base = timed["PyTorch eager FP32"]["stats"].p50_ms
        for label, key in VARIANTS.items():
            if key:
                sizes[key] = size_of(folder / FILES[key])
            at_recipe = calib is None
            entry = section.get(key or "", {}) if at_recipe else {}
            rows.append(
                {
                    "model": student,
                    "size": f"{shape[0]}x{shape[1]}",
                    "variant": label,
                    "top1": top1[label] if at_recipe else None,
                    "drop": 100 * (top1["PyTorch eager FP32"] - top1[label]),  # measured at the recipe size
                    "p50": timed[label]["stats"].p50_ms,
                    "p90": timed[label]["stats"].p90_ms,
                    "speedup": base / timed[label]["stats"].p50_ms,
                    "throughput": timed[label]["throughput"],
                    "mb": sizes[key] / 1e6 if key else None,
                    "calib_s": entry.get("seconds") if at_recipe else calib.get(key or ""),
                    "guard": entry.get("guard", {}).get("verdict"),
                }
            )
    return rows


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(rows: list[dict], args: argparse.Namespace) -> str:
    env = describe_environment()
    cpu = env["cpu"]
    head = [
        "# INT8 on this CPU: Fashion-MNIST students in every exported form",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {cpu['model']} ({cpu['usable_cores']} cores; "
        f"{', '.join(cpu['flags'])}), {platform.system()}; torch {torch.__version__}, "
        + ", ".join(f"{k} {v}" for k, v in env["packages"].items())
        + ".",
        f"Command: `{' '.join(['python benchmarks/int8_table.py', *args.argv])}`.",
        "Top-1 on the 10,000 official test images at the recipe's input size (the size trained at); at 224 the "
        "same weights are exported for latency only. Latency: SingleStream batch 1, "
        f"{args.rounds} interleaved rounds x {args.queries} queries per variant; throughput: Offline at batch "
        f"{args.batch}. Calibration: seconds for calibration + quantization (+ the accuracy guard at the recipe "
        "size, whose verdict is shown).",
        "",
        "| model | input | variant | top-1 (%) | drop vs torch (pts) | p50 ms | p90 ms | speed-up vs torch | "
        f"img/s @ b{args.batch} | MB | calib s | guard |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines = []
    for r in rows:
        top1 = fmt(r["top1"] and 100 * r["top1"], ".2f")
        drop = fmt(r["drop"] if r["top1"] is not None else None, ".2f")
        lines.append(
            f"| {r['model']} | {r['size']} | {r['variant']} | {top1} | {drop} | {r['p50']:.2f} | {r['p90']:.2f} | "
            f"{r['speedup']:.1f}x | {r['throughput']:.0f} | {fmt(r['mb'], '.1f')} | {fmt(r['calib_s'], '.1f')} | "
            f"{r['guard'] or '-'} |"
        )
    int8_224 = [r for r in rows if "INT8" in r["variant"] and r["size"] == "224x224"]
    best = max(int8_224, key=lambda r: r["speedup"], default=None)
    tail = [""]
    if best:
        tail.append(f"Best INT8 at 224: {best['model']} {best['variant']} (top-1 drop measured at the recipe size).")
        tail.append(f"best int8 speedup vs torch fp32: {best['speedup']:.1f}x, top-1 drop: {best['drop']:.2f}")
    return "\n".join(head + lines + tail) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", type=Path, help="A trained run directory (repeatable).")
    ap.add_argument("--test-data", default="fashion_mnist:test")
    ap.add_argument("--calib-size", type=int, default=512, help="Calibration images at the recipe size.")
    ap.add_argument("--calib-224", type=int, default=128, help="Calibration images for the 224 latency exports.")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--queries", type=int, default=20, help="Batch-1 queries per variant per round.")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/int8_fashion_mnist.md"))
    args = ap.parse_args()
    args.argv = sys.argv[1:]
    runs = args.run or [Path("runs/fashion_mnist_resnet18"), Path("runs/fashion_mnist_mobilenetv2")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            rows += bench_run(run, Path(tmp), args.test_data, args)
    text = table(rows, args)
    write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
