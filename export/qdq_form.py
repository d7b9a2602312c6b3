"""What INT8 form a Q/DQ ONNX graph is in, and turning a fake-quantized export into the form PTQ writes.

A model exported from quantization-aware training carries float weights behind QuantizeLinear nodes and float
biases; ONNX Runtime's static quantizer (our PTQ) stores weights as int8 initializers behind DequantizeLinear
and biases as int32 at scale (input scale x weight scale). ``fold_weight_quantizers`` and ``quantize_biases``
rewrite the first into the second with the same arithmetic ONNX Runtime applies at run time, so both kinds of
file are the same form, the same size and run through the same INT8 kernels. ``qdq_form`` describes a graph's
form so that the two can be compared.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

COMPUTE_OPS = {"Conv", "Gemm", "MatMul", "ConvTranspose"}
# Ops that keep values on their input's quantization grid: ONNX Runtime carries Q/DQ across them
# (QDQPropagationTransformer), so a layer reading DequantizeLinear -> MaxPool runs in INT8.
GRID_PRESERVING = {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity"}
INT_RANGES = {np.dtype(t): (np.iinfo(t).min, np.iinfo(t).max) for t in (np.int8, np.uint8, np.int32)}
# Fields of the form that must agree between two files for them to run through the same kernels.
COMPARED = ("activations", "activation_zero_points", "weights", "weight_granularity", "bias", "runtime_quantizers")


def constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Every tensor whose value is fixed: initializers, Constant nodes, and Identity nodes of either."""
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            attr = next((a for a in node.attribute if a.name == "value"), None)
            if attr is not None:
                values[node.output[0]] = numpy_helper.to_array(attr.t)
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def _axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


def _broadcast(param: np.ndarray, rank: int, axis: int) -> np.ndarray:
    """A per-axis scale or zero point shaped to broadcast against a tensor of ``rank`` along ``axis``."""
    if param.ndim == 0 or param.size == 1:
        return param.reshape(())
    shape = [1] * rank
    shape[axis % rank] = param.size
    return param.reshape(shape)


def quantize_array(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int = 1) -> np.ndarray:
    """ONNX QuantizeLinear: saturate(round_half_even(x / scale) + zero_point) in the zero point's type."""
    lo, hi = INT_RANGES[zero_point.dtype]
    s = _broadcast(scale.astype(np.float32), x.ndim, axis)
    z = _broadcast(zero_point.astype(np.int64), x.ndim, axis)
    q = np.rint(x.astype(np.float32) / s).astype(np.int64) + z
    return np.clip(q, lo, hi).astype(zero_point.dtype)


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def fold_weight_quantizers(proto: onnx.ModelProto) -> int:
    """Replace every QuantizeLinear of a constant float tensor by its quantized initializer; returns how many."""
    graph = proto.graph
    values = constant_values(graph)
    names = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output}
    folded = []
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3 or node.input[0] not in values:
            continue
        x, scale, zero_point = (values.get(n) for n in node.input[:3])
        if scale is None or zero_point is None or x.dtype.kind != "f":
            continue
        name = _unique(f"{node.input[0]}_quantized", names)
        graph.initializer.append(numpy_helper.from_array(quantize_array(x, scale, zero_point, _axis(node)), name))
        _rename_uses(graph, node.output[0], name)
        folded.append(node)
    for node in folded:
        graph.node.remove(node)
    remove_unused(graph)
    return len(folded)


def _unique(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def quantize_biases(proto: onnx.ModelProto) -> int:
    """Store each float bias of a Conv/Gemm whose input and weight are dequantized as int32 at scale
    input scale x weight scale (zero point 0) behind a DequantizeLinear, as ONNX Runtime's quantizer does."""
    graph = proto.graph
    values = constant_values(graph)
    producer = {o: n for n in graph.node for o in n.output}
    names = {i.name for i in graph.initializer} | set(producer)
    added: list[tuple[int, onnx.NodeProto]] = []
    count = 0
    for index, node in enumerate(graph.node):
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[2] not in values:
            continue
        act, weight = _through_grid_preserving(producer, node.input[0]), producer.get(node.input[1])
        if not (_is_dq(act) and _is_dq(weight)) or act.input[1] not in values or weight.input[1] not in values:
            continue
        bias = values[node.input[2]].astype(np.float32)
        input_scale = values[act.input[1]].astype(np.float32).reshape(())
        weight_scale = _bias_fitting_weight_scale(graph, weight, values, names, bias, input_scale)
        scale = (input_scale * weight_scale).astype(np.float32)
        scale = np.broadcast_to(scale, bias.shape).copy() if scale.size > 1 else scale.reshape(())
        scale[scale == 0] = 1.0  # all-zero weights and bias: any scale stores it (0 would divide)
        q = quantize_array(bias, scale, np.zeros(scale.shape, np.int32), axis=0)
        base = node.input[2]
        q_name, s_name, z_name, out = (_unique(f"{base}_{s}", names) for s in ("quantized", "scale", "zero_point",
                                                                                "dequantized"))  # fmt: skip
        graph.initializer.extend([numpy_helper.from_array(q, q_name), numpy_helper.from_array(scale, s_name),
                                  numpy_helper.from_array(np.zeros(scale.shape, np.int32), z_name)])  # fmt: skip
        dq = onnx.helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [out], name=out, axis=0)
        added.append((index, dq))
        node.input[2] = out
        count += 1
    for offset, (index, dq) in enumerate(added):
        graph.node.insert(index + offset, dq)
    remove_unused(graph)
    return count


# A bias may use at most this share of the int32 range (ONNX Runtime's quantizer leaves headroom likewise).
BIAS_RANGE_SHARE = 0.5


def _bias_fitting_weight_scale(
    graph: onnx.GraphProto, weight_dq: onnx.NodeProto, values: dict[str, np.ndarray], names: set[str],
    bias: np.ndarray, input_scale: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """The weight scale at which ``bias`` fits int32 at input scale x weight scale, widened where it would not.

    A channel whose weights are (near) zero has a (near) zero weight scale, and its bias at that scale overflows
    int32 and saturates (a MobileNetV2 whose dead channels were zeroed fell from 72% to 50%). Such a channel's
    scale is raised until its bias fits; its int8 weights are requantized to the new scale (zeros stay zero), as
    ONNX Runtime's quantizer does (``_adjust_weight_scale_for_int32_bias``)."""
    scale = values[weight_dq.input[1]].astype(np.float32)
    limit = BIAS_RANGE_SHARE * float(np.iinfo(np.int32).max)
    needed = (np.abs(bias) / (float(input_scale) * limit)).astype(np.float32)
    needed = needed.reshape(scale.shape) if scale.size > 1 else needed.max(initial=0.0).reshape(scale.shape)
    if not np.any(needed > scale) or weight_dq.input[0] not in values:
        return scale
    quantized = values[weight_dq.input[0]]
    zero_point = values[weight_dq.input[2]] if len(weight_dq.input) > 2 else np.zeros((), quantized.dtype)
    if np.any(zero_point != 0):
        return scale  # symmetric weights only (every form we write)
    wider = np.maximum(scale, needed)
    axis = _axis(weight_dq) if scale.size > 1 else 0
    requantized = quantize_array(quantized.astype(np.float32) * _broadcast(scale / wider, quantized.ndim, axis),
                                 np.ones_like(wider), zero_point.astype(quantized.dtype), axis)  # fmt: skip
    w_name, s_name = (_unique(f"{weight_dq.input[0]}_{k}", names) for k in ("widened", "widened_scale"))
    graph.initializer.extend([numpy_helper.from_array(requantized, w_name), numpy_helper.from_array(wider, s_name)])
    weight_dq.input[0], weight_dq.input[1] = w_name, s_name
    return wider


def _is_dq(node: onnx.NodeProto | None) -> bool:
    return node is not None and node.op_type == "DequantizeLinear"


def keep_inputs_float(proto: onnx.ModelProto, node_names: list[str] | set[str]) -> int:
    """Make the named nodes read their activations in float: each input that comes through a Quantize/Dequantize
    pair of an activation is rewired to the float tensor the pair quantizes (the pair stays for its other readers).

    ONNX Runtime's ``WeightBiasQuantization`` graph optimisation (1.21+, on at the basic level) turns a
    DequantizeLinear -> Conv/Gemm with float weights whose output is quantized back into an INT8 layer with
    per-tensor weights: a layer the guard keeps in float would silently run in INT8, and per-tensor weights can be
    far worse than the per-channel ones it replaced. The float tensor is clamped to the quantizer's range, which
    may stand for an activation the quantizer absorbed (ReLU6). Returns how many inputs were rewired."""
    graph = proto.graph
    values = constant_values(graph)
    producer = {o: n for n in graph.node for o in n.output}
    names = {i.name for i in graph.initializer} | set(producer)
    clips: list[tuple[onnx.NodeProto, onnx.NodeProto]] = []
    for node in graph.node:
        if node.name not in node_names:
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if _is_dq(dq) else None
            if q is None or q.op_type != "QuantizeLinear" or q.input[0] in values or len(q.input) < 3:
                continue
            # The quantizer's range clamps: the quantizer may stand in for a ReLU/ReLU6 it absorbed.
            scale, zero = values[q.input[1]].astype(np.float32), values[q.input[2]]
            lo, hi = INT_RANGES[zero.dtype]
            bounds = [np.float32((b - zero.astype(np.int64)) * scale) for b in (lo, hi)]
            lo_name, hi_name, out = (_unique(f"{q.input[0]}_float_{s}", names) for s in ("min", "max", "clipped"))
            graph.initializer.extend(numpy_helper.from_array(np.asarray(b, np.float32), n)
                                     for b, n in zip(bounds, (lo_name, hi_name)))  # fmt: skip
            clips.append((node, onnx.helper.make_node("Clip", [q.input[0], lo_name, hi_name], [out], name=out)))
            node.input[i] = out
    for node, clip in clips:
        graph.node.insert(list(graph.node).index(node), clip)
    remove_unused(graph)
    return len(clips)


def remove_unused(graph: onnx.GraphProto) -> None:
    """Drop nodes and initializers nothing reads (the graph outputs are read)."""
    while True:
        used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        for node in dead:
            graph.node.remove(node)
        if not dead:
            break
    used = {name for n in graph.node for name in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def qdq_form(proto: onnx.ModelProto) -> dict[str, Any]:
    """How the compute layers (Conv, Gemm, MatMul) of a graph are quantized: activation and weight types, zero
    points, weight granularity, bias storage, and quantizers left to run on constants at load time."""
    graph = proto.graph
    values = constant_values(graph)
    producer = {o: n for n in graph.node for o in n.output}
    acts, act_zero, weights, granularity, bias = Counter(), Counter(), Counter(), Counter(), Counter()
    quantized, float_ops = 0, []
    for node in graph.node:
        if node.op_type not in COMPUTE_OPS:
            continue
        x, w = _through_grid_preserving(producer, node.input[0]), producer.get(node.input[1])
        if not (_is_dq(x) and _is_dq(w)):
            float_ops.append(node.name)
            continue
        quantized += 1
        if x.input[0] not in values and len(x.input) > 2 and x.input[2] in values:
            zero = values[x.input[2]]
            acts[str(zero.dtype)] += 1
            act_zero["all zero" if not zero.any() else "asymmetric"] += 1
        stored = values.get(w.input[0])
        runtime_q = producer.get(w.input[0])
        if stored is not None or (runtime_q is not None and runtime_q.input[0] in values):
            weights[str(stored.dtype) if stored is not None else "float (quantized at load)"] += 1
            granularity["per-channel" if values[w.input[1]].size > 1 else "per-tensor"] += 1
        if len(node.input) > 2 and node.input[2]:
            b = producer.get(node.input[2])
            bias[str(values[b.input[0]].dtype) if _is_dq(b) and b.input[0] in values else "float"] += 1
    runtime = sum(1 for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in values)

    def kinds(counter: Counter) -> str:
        return "/".join(sorted(counter)) or "none"

    return {"quantized_ops": quantized, "float_ops": float_ops, "activations": kinds(acts),
            "activation_zero_points": "asymmetric" if act_zero["asymmetric"] else kinds(act_zero),
            "weights": kinds(weights), "weight_granularity": kinds(granularity), "bias": kinds(bias),
            "runtime_quantizers": runtime}  # fmt: skip


def _through_grid_preserving(producer: dict[str, onnx.NodeProto], tensor: str) -> onnx.NodeProto | None:
    node = producer.get(tensor)
    while node is not None and node.op_type in GRID_PRESERVING:
        node = producer.get(node.input[0])
    return node


def form_differences(candidate: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """Where ``candidate``'s form departs from ``reference``'s (layers kept in float by a guard aside)."""
    return [
        f"{key}: {candidate[key]} (reference: {reference[key]})" for key in COMPARED if candidate[key] != reference[key]
    ]
