"""Batch-1 latency of one student in every exported form, measured side by side in one run.

PyTorch eager FP32, ONNX Runtime FP32 / INT8 U8S8 (model.int8.onnx) / INT8 S8S8 TensorRT form, OpenVINO
FP32 / INT8 (NNCF). Variants are timed in interleaved rounds so machine noise hits all alike; the table
gives median and p90 per variant and the speed-up over PyTorch. Latency only: weights are random and
calibration uses random images (accuracy is what `toolkit export`'s guard measures on real data).

    python benchmarks/int8_latency.py --student resnet18 --size 224
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from distill.students import create_student
from export.onnx_export import export_onnx
from export.openvino_export import onnx_to_openvino
from export.quantize import quantize
from runtime.classifier import OnnxClassifier, OpenVinoClassifier
from runtime.preprocess import PreprocessContract


def build_variants(student: str, size: int, workdir: Path) -> dict[str, Callable[[np.ndarray], object]]:
    import nncf
    import openvino as ov

    torch.manual_seed(0)
    model = create_student(student, num_classes=10).eval()
    contract = PreprocessContract(input_size=size, resize_size=size, class_names=tuple(map(str, range(10))))
    onnx_path = export_onnx(model, contract, workdir / "model.onnx")
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((8, 3, size, size)).astype(np.float32) for _ in range(4)]
    quantize(onnx_path, workdir / "u8s8.onnx", "onnxruntime", batches)
    quantize(onnx_path, workdir / "s8s8.onnx", "tensorrt", batches)
    ov_model = onnx_to_openvino(onnx_path, workdir / "ov" / "model.xml", contract)
    ov.save_model(
        nncf.quantize(ov_model, nncf.Dataset(batches), subset_size=len(batches)), str(workdir / "ov8" / "model.xml")
    )

    def torch_run(x: np.ndarray) -> object:
        with torch.inference_mode():
            return model(torch.from_numpy(x))

    return {
        "pytorch eager fp32": torch_run,
        "onnxruntime fp32": OnnxClassifier(onnx_path).run,
        "onnxruntime int8 u8s8": OnnxClassifier(workdir / "u8s8.onnx").run,
        "onnxruntime int8 s8s8 (tensorrt form)": OnnxClassifier(workdir / "s8s8.onnx").run,
        "openvino fp32": OpenVinoClassifier(workdir / "ov" / "model.xml").run,
        "openvino int8 (nncf)": OpenVinoClassifier(workdir / "ov8" / "model.xml").run,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="resnet18")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--queries", type=int, default=10, help="batch-1 queries per variant per round")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        variants = build_variants(args.student, args.size, Path(tmp))
        x = np.random.default_rng(1).standard_normal((1, 3, args.size, args.size)).astype(np.float32)
        for fn in variants.values():  # warm-up
            for _ in range(3):
                fn(x)
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                for _ in range(args.queries):
                    t0 = time.perf_counter()
                    fn(x)
                    times[name].append((time.perf_counter() - t0) * 1000)
    base = float(np.median(times["pytorch eager fp32"]))
    print(
        f"{args.student} {args.size}px, batch 1, {torch.get_num_threads()} threads, "
        f"{args.rounds * args.queries} queries each"
    )
    print("| variant | median ms | p90 ms | speed-up vs pytorch |\n|---|---|---|---|")
    for name, ts in times.items():
        med = float(np.median(ts))
        print(f"| {name} | {med:.2f} | {np.percentile(ts, 90):.2f} | {base / med:.1f}x |")
    best = min((k for k in times if "int8" in k), key=lambda k: float(np.median(times[k])))
    print(f"best int8 speedup vs torch fp32: {base / float(np.median(times[best])):.1f}x ({best})")


if __name__ == "__main__":
    main()
