"""ONNX FP32 -> mixed-precision FP16 with FP32 inputs and outputs: ``model.fp16.onnx``.

Converter: onnxconverter-common's ``float16.convert_float_to_float16`` (``keep_io_types``: a Cast after the input
and before the output, so callers feed and read float32 as for model.onnx; ops without FP16 kernels in ONNX
Runtime stay FP32 behind Casts, its default block list). Chosen over ModelOpt's AutoCast because it is a
pure-Python package of ~90 KB that installs beside CPU ONNX Runtime, while ``nvidia-modelopt[onnx]`` pins
onnxruntime-gpu; AutoCast's advantage (keeping FP32 the nodes whose values overflow FP16, found from
calibration data) is covered here by the parity check against model.onnx, which refuses such a model.
TensorRT 11 builds strongly typed: its FP16 engine takes the precision of every layer from this file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx

from export.onnx_export import set_metadata
from runtime.atomic import atomic_path

CONVERTER = "onnxconverter-common float16 (keep_io_types)"
META_PRECISION = "toolkit.precision"


def to_fp16(fp32_path: Path, out_path: Path) -> Path:
    """Convert ``fp32_path`` into ``out_path`` atomically, keeping its metadata (the contract, class names)."""
    from onnxconverter_common import float16

    proto = onnx.load(str(fp32_path))
    with warnings.catch_warnings():  # it warns for every weight below FP16's smallest normal it rounds to 1e-7
        warnings.simplefilter("ignore", UserWarning)
        half = float16.convert_float_to_float16(proto, keep_io_types=True)
    set_metadata(half, {META_PRECISION: "fp16"})
    with atomic_path(out_path) as tmp:
        onnx.save(half, str(tmp))
    return out_path
