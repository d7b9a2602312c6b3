"""INT8 post-training quantization per target, with ONNX Runtime's static QDQ quantizer.

Targets differ because the fastest INT8 form differs by engine:
- ``onnxruntime``: QDQ, unsigned 8-bit activations, signed per-channel weights (U8S8), the form ONNX
  Runtime's CPU kernels run fastest (signed activations measured slower than FP32 there).
- ``tensorrt``: QDQ with symmetric signed activations and weights (zero points 0), per-channel weights,
  biases left in float: the explicit-quantization form TensorRT builds engines from.

Neither ``AddQDQPairToWeight`` nor ``DedicatedQDQPair`` (Optimum's TensorRT preset sets both) is set for the
TensorRT form: TensorRT's explicit-quantization guide takes pre-quantized INT8 weights behind a DequantizeLinear
as well as float weights behind a Q/DQ pair (the former keeps the file 4x smaller), and NVIDIA's own ONNX
quantizer (ModelOpt, export/modelopt_quantize.py) shares one DequantizeLinear between the consumers of an
activation, as ONNX Runtime's writer does.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from export.calibration import BatchReader
from export.onnx_export import set_metadata
from export.qdq_form import keep_inputs_float
from runtime.atomic import atomic_path
from runtime.classifier import META_INT8_TARGET
from runtime.errors import ToolkitError, did_you_mean

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


@dataclass(frozen=True)
class Int8Target:
    name: str
    activation_type: QuantType
    weight_type: QuantType
    extra_options: dict
    description: str


TARGETS = {
    "onnxruntime": Int8Target(
        "onnxruntime", QuantType.QUInt8, QuantType.QInt8, {}, "QDQ U8S8, per-channel weights (ONNX Runtime CPU)"
    ),
    "tensorrt": Int8Target(
        "tensorrt",
        QuantType.QInt8,
        QuantType.QInt8,
        {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
        "QDQ S8S8 symmetric, per-channel weights, float bias (TensorRT explicit quantization)",
    ),
}


PRODUCERS = ("onnxruntime", "modelopt")  # who writes the TensorRT-form Q/DQ model (--tensorrt-quantizer)


def check_producer(producer: str, target: str = "tensorrt") -> None:
    if producer not in PRODUCERS:
        raise ToolkitError(f"--tensorrt-quantizer {producer!r} is not one of {', '.join(PRODUCERS)}."
                           + did_you_mean(producer, PRODUCERS))  # fmt: skip
    if producer == "modelopt" and target != "tensorrt":
        raise ToolkitError(f"ModelOpt writes the TensorRT form only, not the {target} one")


def get_target(name: str) -> Int8Target:
    if name not in TARGETS:
        raise ToolkitError(f"INT8 target {name!r} is not one of {sorted(TARGETS)}." + did_you_mean(name, TARGETS))
    return TARGETS[name]


def quantize(
    fp32_path: Path,
    out_path: Path,
    target: str,
    batches: list,
    method: str = "minmax",
    nodes_to_exclude: list[str] | None = None,
    producer: str = "onnxruntime",
) -> Path:
    """Quantize ``fp32_path`` into ``out_path`` (atomically), keeping the FP32 model's metadata. ``producer``:
    whose quantizer writes it, ONNX Runtime's or (TensorRT form only) NVIDIA ModelOpt's."""
    spec = get_target(target)
    if method not in CALIBRATION_METHODS:
        raise ToolkitError(f"calibration method {method!r} is not one of {sorted(CALIBRATION_METHODS)}")
    check_producer(producer, target)
    if producer == "modelopt":
        from export.modelopt_quantize import modelopt_quantize

        metadata = {META_INT8_TARGET: target, "toolkit.calibration": method}
        return modelopt_quantize(fp32_path, out_path, batches, method, nodes_to_exclude, metadata)
    fp32 = onnx.load(str(fp32_path))
    metadata = {p.key: p.value for p in fp32.metadata_props}
    input_name = fp32.graph.input[0].name
    extra = dict(spec.extra_options)
    if method != "minmax":
        extra["CalibMaxIntermediateOutputs"] = 8  # bounds histogram calibration memory
    with tempfile.TemporaryDirectory() as tmpdir:
        pre = Path(tmpdir) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        with atomic_path(out_path) as tmp:
            quantize_static(
                str(pre),
                str(tmp),
                BatchReader(input_name, batches),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=spec.activation_type,
                weight_type=spec.weight_type,
                calibrate_method=CALIBRATION_METHODS[method],
                nodes_to_exclude=list(nodes_to_exclude or []),
                extra_options=extra,
            )
            proto = onnx.load(str(tmp))
            if nodes_to_exclude:
                keep_inputs_float(proto, set(nodes_to_exclude))
            set_metadata(proto, metadata | {META_INT8_TARGET: target, "toolkit.calibration": method})
            onnx.save(proto, str(tmp))
    return out_path


def quantized_node_names(path: os.PathLike[str] | str) -> list[str]:
    """Compute nodes (Conv, Gemm, MatMul) of a model, in graph order: the candidates to keep in float."""
    graph = onnx.load(str(path)).graph
    return [n.name for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
