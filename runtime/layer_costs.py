"""Multiply-accumulates and bytes moved per layer, counted from a model file's own graph.

ONNX (FP32 and Q/DQ or QOperator INT8) through ``onnx`` shape inference; OpenVINO IR through OpenVINO's
op list. Counted at batch 1: convolutions (grouped and depthwise included), Gemm and MatMul, which hold
all but a sliver of a CNN classifier's arithmetic. Bytes are what each layer must read and write at the
artifact's precision (input, weights, output) if nothing stayed in cache between layers: an upper bound
on memory traffic, and the figure that shows why depthwise layers are bound by memory, not arithmetic.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from runtime.errors import ToolkitError

BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "int8": 1}


@dataclass(frozen=True)
class LayerCost:
    """One arithmetic layer at batch 1; ``kind`` is conv, depthwise, pointwise or matmul."""

    name: str
    kind: str
    macs: int
    input_elements: int
    weight_elements: int
    output_elements: int

    def bytes_moved(self, precision: str) -> int:
        return (self.input_elements + self.weight_elements + self.output_elements) * BYTES_PER_ELEMENT[precision]


def _conv_kind(weight_shape: list[int], groups: int, in_channels: int) -> str:
    if groups > 1 and groups == in_channels and weight_shape[0] % groups == 0:
        return "depthwise"
    if all(k == 1 for k in weight_shape[2:]):
        return "pointwise"
    return "conv"


def _conv(name: str, x: list[int], w: list[int], y: list[int], groups: int) -> LayerCost:
    # weight (Cout, Cin/groups, k...) -> each output element costs Cin/groups * prod(k) MACs
    per_output = w[1] * math.prod(w[2:])
    return LayerCost(name, _conv_kind(w, groups, x[1]), math.prod(y) * per_output, math.prod(x), math.prod(w),
                     math.prod(y))  # fmt: skip


def _matmul(name: str, a: list[int], b: list[int], y: list[int], k: int, b_is_weight: bool) -> LayerCost:
    inputs = math.prod(a) + (0 if b_is_weight else math.prod(b))
    return LayerCost(name, "matmul", math.prod(y) * k, inputs, math.prod(b) if b_is_weight else 0, math.prod(y))


# ONNX op -> (index of the activation input, index of the weight input)
_ONNX_CONV = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3)}
_ONNX_MATMUL = {"MatMul": (0, 1), "Gemm": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3)}


def onnx_layer_costs(path: Path) -> list[LayerCost]:
    """Per-layer costs of an ONNX model at batch 1 (the batch dimension is fixed to 1 for shape inference)."""
    try:
        import onnx
    except ImportError as exc:
        raise ToolkitError("counting MACs from an ONNX graph needs the onnx package (pip install onnx)") from exc
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf decode errors have no common base
        raise ToolkitError(f"{path}: onnx cannot read it ({exc})") from exc
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    model = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    initializers = {t.name: list(t.dims) for t in model.graph.initializer}
    shapes.update(initializers)
    producers = {out: node for node in model.graph.node for out in node.output}

    def is_weight(name: str) -> bool:
        # a weight is an initializer, possibly behind DequantizeLinear / Cast / Transpose (Q/DQ models)
        seen = 0
        while name not in initializers and name in producers and seen < 4:
            node = producers[name]
            if node.op_type not in ("DequantizeLinear", "QuantizeLinear", "Cast", "Transpose", "Identity"):
                return False
            name, seen = node.input[0], seen + 1
        return name in initializers

    costs: list[LayerCost] = []
    for node in model.graph.node:
        op = node.op_type
        if op not in _ONNX_CONV and op not in _ONNX_MATMUL:
            continue
        xi, wi = _ONNX_CONV.get(op) or _ONNX_MATMUL[op]
        x, w, y = (shapes.get(node.input[xi]), shapes.get(node.input[wi]), shapes.get(node.output[0]))
        if x is None or w is None or y is None:
            raise ToolkitError(f"{path}: cannot infer the shapes of {op} node '{node.name}' (dynamic dimensions?)")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        name = node.name or node.output[0]
        if op in _ONNX_CONV:
            costs.append(_conv(name, x, w, y, int(attrs.get("group", 1))))
        else:
            k = (x[0] if attrs.get("transA") else x[-1]) if op == "Gemm" else x[-1]
            costs.append(_matmul(name, x, w, y, k, is_weight(node.input[wi])))
    return costs


def openvino_layer_costs(path: Path) -> list[LayerCost]:
    """Per-layer costs of an OpenVINO IR at batch 1 (reshaped to a static batch of 1 first)."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    shape = model.inputs[0].get_partial_shape()
    if shape.rank.is_static and not shape[0].is_static:
        model.reshape({model.inputs[0]: [1, *[d.get_length() for d in list(shape)[1:]]]})
    costs: list[LayerCost] = []
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in ("Convolution", "GroupConvolution", "MatMul"):
            continue
        x, w = (list(op.input(i).get_shape()) for i in (0, 1))
        y = list(op.output(0).get_shape())
        if kind == "Convolution":
            costs.append(_conv(op.get_friendly_name(), x, w, y, 1))
        elif kind == "GroupConvolution":  # weight (G, Cout/G, Cin/G, k...) -> the ONNX layout with groups=G
            costs.append(_conv(op.get_friendly_name(), x, [w[0] * w[1], *w[2:]], y, w[0]))
        else:
            attrs = op.get_attributes()
            k = x[-2] if attrs.get("transpose_a") else x[-1]
            costs.append(_matmul(op.get_friendly_name(), x, w, y, k, not _is_activation(op)))
    return costs


def _is_activation(op: Any) -> bool:
    """A MatMul's second input is an activation when it depends on the model input (not folded constants)."""
    stack, seen = [op.input(1).get_source_output().get_node()], set()
    while stack:
        node = stack.pop()
        if node.get_type_name() == "Parameter":
            return True
        if id(node) in seen or node.get_type_name() == "Constant":
            continue
        seen.add(id(node))
        stack.extend(i.get_source_output().get_node() for i in node.inputs())
    return False


def layer_costs(path: Path) -> list[LayerCost]:
    """Per-layer costs of a model file by its kind (.onnx or OpenVINO .xml)."""
    if path.suffix == ".onnx":
        return onnx_layer_costs(path)
    if path.suffix == ".xml":
        return openvino_layer_costs(path)
    raise ToolkitError(f"{path}: MACs are counted from ONNX or OpenVINO IR graphs, not {path.suffix} files")


def graph_precision(path: Path) -> str:
    """int8 when the graph quantizes (Q/DQ, QOperator or OpenVINO FakeQuantize), else fp32."""
    if path.suffix == ".onnx":
        import onnx

        ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
        return "int8" if ops & {"QuantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger"} else "fp32"
    if path.suffix == ".xml":
        return "int8" if 'type="FakeQuantize"' in path.read_text(errors="replace") else "fp32"
    if path.suffix == ".param":  # an NCNN model's sidecar says which (FP32 before it recorded one)
        from runtime.classifier import NCNN_SIDECAR

        sidecar = path.with_name(NCNN_SIDECAR)
        return str(json.loads(sidecar.read_text()).get("precision", "fp32")) if sidecar.is_file() else "fp32"
    if path.suffix == ".pte":  # an ExecuTorch program says which (its toolkit_precision method)
        from runtime.classifier import ExecuTorchClassifier

        return ExecuTorchClassifier(path).precision
    if path.suffix == ".tflite":  # so does a LiteRT model (its toolkit.precision metadata)
        from runtime.litert import META_PRECISION, read_metadata

        return read_metadata(path.read_bytes(), path).get(META_PRECISION, b"fp32").decode()
    return "int8"


def summarize_costs(costs: list[LayerCost], precision: str) -> dict[str, Any]:
    """Totals and the share of MACs and bytes per layer kind, at the artifact's precision."""
    macs = sum(c.macs for c in costs)
    moved = sum(c.bytes_moved(precision) for c in costs)
    kinds: dict[str, dict[str, float]] = {}
    for c in costs:
        k = kinds.setdefault(c.kind, {"layers": 0, "macs": 0, "bytes": 0})
        k["layers"] += 1
        k["macs"] += c.macs
        k["bytes"] += c.bytes_moved(precision)
    for k in kinds.values():
        k["macs_share"] = round(k["macs"] / macs, 4) if macs else 0.0
        k["bytes_share"] = round(k["bytes"] / moved, 4) if moved else 0.0
        k["macs_per_byte"] = round(k["macs"] / k["bytes"], 2) if k["bytes"] else 0.0
    return {
        "layers": len(costs),
        "macs": macs,
        "bytes_moved": moved,
        "macs_per_byte": round(macs / moved, 2) if moved else 0.0,
        "precision": precision,
        "by_kind": kinds,
    }


def cost_rows(costs: list[LayerCost], precision: str) -> list[dict[str, Any]]:
    """Per-layer rows for JSON output."""
    return [{**asdict(c), "bytes": c.bytes_moved(precision)} for c in costs]
