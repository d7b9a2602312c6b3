"""The TensorRT-form Q/DQ model written by NVIDIA's own quantizer: ModelOpt's ONNX post-training quantization
(``modelopt.onnx.quantization.quantize``), the second producer beside ONNX Runtime's (export/quantize.py).

Its form, as TensorRT wants it (TensorRT's "Explicit Quantization" guide): symmetric INT8 activations and
per-channel weights, the weights kept float behind their own Quantize/Dequantize pair (TensorRT quantizes them
at build time), and FP16 as the high-precision type: every layer left out of INT8 (by the guard or
``--keep-float``) runs in FP16 on TensorRT 11, whose strongly typed builder takes precisions from the file
(ONNX Runtime's writer leaves those layers FP32). Calibration runs here on ONNX Runtime's CPU provider.

``nvidia-modelopt[onnx]`` pins onnxruntime-gpu; the extra ``modelopt`` installs the packages its ONNX path
imports by name instead, next to CPU ONNX Runtime.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from export.onnx_export import set_metadata
from runtime.atomic import atomic_path
from runtime.errors import ToolkitError

METHODS = {"minmax": "max", "entropy": "entropy"}  # our --calib-method -> ModelOpt's calibration_method


def unavailable_reason() -> str | None:
    """Looked up without importing: importing ModelOpt's ONNX quantization patches ONNX Runtime's quantizer."""
    for name in ("modelopt", "onnx_graphsurgeon", "polygraphy", "lief", "cppimport"):
        if importlib.util.find_spec(name) is None:
            return f"the {name} package is not installed (pip install 'edge-distill-toolkit[modelopt]')"
    return None


def version() -> str:
    from importlib.metadata import version as dist_version

    return dist_version("nvidia-modelopt")


def exact_patterns(names: list[str] | None) -> list[str] | None:
    """ModelOpt matches exclusions as regular expressions from the start of a name (``re.match``): "node_Conv_31"
    would also exclude node_Conv_310. Each name becomes a pattern that matches it alone."""
    return [re.escape(n) + "$" for n in names] if names else None


def modelopt_quantize(
    fp32_path: Path, out_path: Path, batches: list[np.ndarray], method: str = "minmax",
    nodes_to_exclude: list[str] | None = None, metadata: dict[str, str] | None = None,
) -> Path:  # fmt: skip
    """Quantize ``fp32_path`` into ``out_path`` (atomically) with ModelOpt; the FP32 model's metadata is carried
    over (ModelOpt drops it), with ``metadata`` and the producer added."""
    reason = unavailable_reason()
    if reason:
        raise ToolkitError(f"--tensorrt-quantizer modelopt: {reason}")
    if method not in METHODS:
        raise ToolkitError(f"--tensorrt-quantizer modelopt calibrates with {' or '.join(METHODS)}, not {method!r}")
    source = onnx.load(str(fp32_path))
    source_metadata = {p.key: p.value for p in source.metadata_props}
    with tempfile.TemporaryDirectory() as tmp:
        written, images = Path(tmp) / "q.onnx", Path(tmp) / "calibration.npy"
        np.save(images, np.concatenate(batches))
        request = {"model": str(fp32_path), "output": str(written), "images": str(images),
                   "input": source.graph.input[0].name, "method": METHODS[method],
                   "exclude": exact_patterns(nodes_to_exclude)}  # fmt: skip
        # In a child process: ModelOpt patches ONNX Runtime's quantization module when it runs, which then breaks
        # ONNX Runtime's own QDQ debugging tools (the sensitivity table) in this process.
        done = subprocess.run([sys.executable, "-m", "export.modelopt_quantize", json.dumps(request)],
                              capture_output=True, text=True, check=False)  # fmt: skip
        if done.returncode != 0 or not written.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise ToolkitError(f"{fp32_path}: ModelOpt's quantization failed: {' | '.join(tail)}")
        proto = onnx.load(str(written))
    set_metadata(proto, source_metadata | (metadata or {}) | {"toolkit.int8_producer": f"modelopt {version()}"})
    with atomic_path(out_path) as tmp_out:
        onnx.save(proto, str(tmp_out))
    return out_path


def _child(request: dict) -> None:
    """Run ModelOpt's ONNX PTQ as ``request`` says (in the child process modelopt_quantize starts)."""
    logging.getLogger("modelopt").setLevel(logging.ERROR)
    from modelopt.onnx.quantization import quantize as mo_quantize

    with contextlib.redirect_stdout(io.StringIO()):  # it prints progress and "no GPU" notes
        images = {request["input"]: np.load(request["images"])}
        mo_quantize(request["model"], quantize_mode="int8", calibration_data=images,
                    calibration_method=request["method"], calibration_eps=["cpu"], output_path=request["output"],
                    high_precision_dtype="fp16", nodes_to_exclude=request["exclude"], log_level="ERROR")  # fmt: skip


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
