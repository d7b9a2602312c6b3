"""What onnxslim changes in the ONNX files `toolkit export` writes: node counts, outputs, and ONNX Runtime
latency (FP32 and U8S8 INT8, batch 1, 1 thread) of the plain and the slimmed file side by side in interleaved
rounds. Randomly initialised timm models (weights do not change the graph); INT8 calibrated on 16 noise images
(latency only).

    python benchmarks/onnxslim_effect.py --out benchmarks/results/onnxslim.md
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import timm
import torch

sys.path.insert(0, str(Path(__file__).parent))
from prune_recovery import time_interleaved  # noqa: E402

from export.onnx_export import export_onnx  # noqa: E402
from export.quantize import quantize  # noqa: E402
from export.slim import slim_onnx  # noqa: E402
from runtime.classifier import OnnxClassifier  # noqa: E402
from runtime.environment import cpu_description  # noqa: E402
from runtime.preprocess import PreprocessContract  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet18", "mobilenetv2_100", "efficientnet_lite0",
                                                    "vit_tiny_patch16_224", "convnext_atto", "fastvit_t8"])  # fmt: skip
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    cpu = cpu_description()
    flags = ", ".join(f for f in cpu.get("flags", []) if f.startswith(("avx", "amx")))
    lines = [f"# onnxslim on the toolkit's ONNX exports ({args.size} px)", "",
             f"Machine: {cpu.get('model')} ({platform.machine()}), ISA flags: {flags}; onnxruntime {ort.__version__}. "
             f"p50 of {args.rounds * args.queries} batch-1 queries per file, 1 thread, interleaved rounds; ratio = "
             "slimmed / plain (below 1: slimming helps).", "",
             "| model | nodes | max abs diff | FP32 p50 ms plain / slim (ratio) | INT8 p50 ms plain / slim (ratio) |",
             "|---|---|---|---|---|"]  # fmt: skip
    rng = np.random.default_rng(0)
    calibration = [rng.standard_normal((8, 3, args.size, args.size)).astype(np.float32) for _ in range(2)]
    contract = PreprocessContract(input_size=args.size, resize_size=args.size, class_names=tuple("abcdefghij"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models:
            torch.manual_seed(0)
            model = timm.create_model(name, num_classes=10).eval()
            plain = export_onnx(model, contract, work / f"{name}.onnx")
            slim = work / f"{name}.slim.onnx"
            shutil.copy(plain, slim)
            info = slim_onnx(slim)
            x = calibration[0][:2]
            diff = float(np.abs(OnnxClassifier(plain).run(x) - OnnxClassifier(slim).run(x)).max())
            paths = {"fp32": plain, "fp32 slim": slim}
            for tag, src in (("int8", plain), ("int8 slim", slim)):
                paths[tag] = quantize(src, work / f"{name}.{tag.replace(' ', '-')}.onnx", "onnxruntime", calibration)
            p50 = time_interleaved({k: OnnxClassifier(v, threads=1) for k, v in paths.items()}, args.size, args.rounds,
                                   args.queries)  # fmt: skip
            int8_nodes = [len(onnx.load(str(paths[t])).graph.node) for t in ("int8", "int8 slim")]
            lines.append(f"| {name} | {info['nodes_before']} -> {info['nodes_after']} (INT8 {int8_nodes[0]} -> "
                         f"{int8_nodes[1]}) | {diff:.1e} | {p50['fp32']:.2f} / {p50['fp32 slim']:.2f} "
                         f"({p50['fp32 slim'] / p50['fp32']:.2f}) | {p50['int8']:.2f} / {p50['int8 slim']:.2f} "
                         f"({p50['int8 slim'] / p50['int8']:.2f}) |")  # fmt: skip
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
