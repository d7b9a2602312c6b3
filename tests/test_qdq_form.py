"""export/qdq_form.py: QuantizeLinear reproduced bit for bit, a fake-quantized graph rewritten into PTQ's stored
form with unchanged outputs, and forms described and compared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.qdq_form import fold_weight_quantizers, form_differences, qdq_form, quantize_array, quantize_biases
from export.quantize import quantize


def _run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("per_channel", [False, True])
def test_quantize_array_matches_onnx_runtime(dtype: type, per_channel: bool) -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((4, 3, 2, 2)) * 3).astype(np.float32)
    x.flat[:4] = [0.5, 1.5, -0.5, 2.5]  # ties: round half to even
    shape = (4,) if per_channel else ()
    scale = rng.uniform(0.01, 0.05, shape).astype(np.float32) if per_channel else np.float32(0.5)
    zero = np.full(shape, 3 if dtype == np.uint8 else 0, dtype)
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], axis=0)
    y_type = TensorProto.UINT8 if dtype == np.uint8 else TensorProto.INT8
    params = [numpy_helper.from_array(np.asarray(scale), "s"), numpy_helper.from_array(zero, "z")]
    graph = helper.make_graph([node], "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", y_type, x.shape)], params)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    expected = _run(model, x)
    np.testing.assert_array_equal(quantize_array(x, np.asarray(scale), zero, axis=0), expected)


def fake_quantized_conv(with_identity: bool = True) -> onnx.ModelProto:
    """input -> Q/DQ (uint8) -> Conv(weight: Q/DQ of a float constant, per channel; float bias) -> logits: the
    shape of a graph exported from quantization-aware training."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.2
    w_scale = (np.abs(w).reshape(4, -1).max(1) / 127).astype(np.float32)
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(w_scale, "w_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_zero"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
        numpy_helper.from_array(np.float32(0.02), "x_scale"),
        numpy_helper.from_array(np.uint8(128), "x_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "x_scale", "x_zero"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"]),
        helper.make_node("Identity", ["w"], ["w_id"]) if with_identity else None,
        helper.make_node("QuantizeLinear", ["w_id" if with_identity else "w", "w_scale", "w_zero"], ["wq"], axis=0),
        helper.make_node("DequantizeLinear", ["wq", "w_scale", "w_zero"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd", "b"], ["logits"], pads=[1, 1, 1, 1], name="conv"),
    ]
    io = (helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3, 5, 5]),
          helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 4, 5, 5]))  # fmt: skip
    graph = helper.make_graph([n for n in nodes if n is not None], "qat", [io[0]], [io[1]], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_folding_stores_int8_weights_with_identical_outputs() -> None:
    proto = fake_quantized_conv()
    x = np.random.default_rng(2).uniform(-2, 2, (2, 3, 5, 5)).astype(np.float32)
    before = _run(proto, x)
    assert qdq_form(proto)["runtime_quantizers"] == 1
    assert fold_weight_quantizers(proto) == 1
    onnx.checker.check_model(proto, full_check=True)
    np.testing.assert_array_equal(_run(proto, x), before)
    stored = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    assert "w" not in stored and stored["w_id_quantized"].dtype == np.int8  # the float weights are gone
    assert not any(n.op_type == "Identity" for n in proto.graph.node)
    form = qdq_form(proto)
    assert (form["weights"], form["weight_granularity"], form["runtime_quantizers"]) == ("int8", "per-channel", 0)
    assert (form["activations"], form["activation_zero_points"], form["bias"]) == ("uint8", "asymmetric", "float")


def test_bias_stored_as_int32_at_input_times_weight_scale() -> None:
    proto = fake_quantized_conv(with_identity=False)
    bias = numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == "b"))
    fold_weight_quantizers(proto)
    x = np.random.default_rng(3).uniform(-2, 2, (2, 3, 5, 5)).astype(np.float32)
    before = _run(proto, x)
    assert quantize_biases(proto) == 1
    onnx.checker.check_model(proto, full_check=True)
    stored = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    bias_scale = np.float32(0.02) * stored["w_scale"]
    assert stored["b_quantized"].dtype == np.int32 and "b" not in stored
    np.testing.assert_array_equal(stored["b_quantized"], np.rint(bias / bias_scale).astype(np.int32))
    np.testing.assert_allclose(stored["b_scale"], bias_scale, rtol=1e-7)
    # int32 at that scale rounds the bias by at most half a step
    np.testing.assert_allclose(_run(proto, x), before, atol=float(bias_scale.max()) / 2 + 1e-6)
    assert qdq_form(proto)["bias"] == "int32"


def test_a_zero_weight_channels_bias_fits_int32_by_widening_its_weight_scale() -> None:
    """Regression: a channel whose weights are all zero (a dead channel zeroed by QAD's BatchNorm folding) has
    a weight scale of ~1e-10; its bias at input x weight scale overflowed int32 and saturated."""
    proto = fake_quantized_conv(with_identity=False)
    inits = {i.name: i for i in proto.graph.initializer}
    w, w_scale = numpy_helper.to_array(inits["w"]).copy(), numpy_helper.to_array(inits["w_scale"]).copy()
    w[0], w_scale[0] = 0.0, 1e-8 / 127
    inits["w"].CopyFrom(numpy_helper.from_array(w, "w"))
    inits["w_scale"].CopyFrom(numpy_helper.from_array(w_scale, "w_scale"))
    fold_weight_quantizers(proto)
    x = np.random.default_rng(3).uniform(-2, 2, (2, 3, 5, 5)).astype(np.float32)
    before = _run(proto, x)
    quantize_biases(proto)
    onnx.checker.check_model(proto, full_check=True)
    after = _run(proto, x)
    bias = numpy_helper.to_array(inits["b"])
    np.testing.assert_allclose(after[:, 0], bias[0], rtol=1e-6)  # the constant the channel outputs
    np.testing.assert_allclose(after, before, atol=float(0.02 * w_scale[1:].max()) / 2 + 1e-6)
    stored = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    widened = next(v for k, v in stored.items() if k.endswith("widened_scale"))
    assert widened[0] > w_scale[0] and np.array_equal(widened[1:], w_scale[1:])  # only that channel's scale


def float_conv(folder: Path) -> Path:
    """The float convolution behind ``fake_quantized_conv``, saved in ``folder``."""
    graph = fake_quantized_conv().graph
    float_graph = helper.make_graph([helper.make_node("Conv", ["input", "w", "b"], ["logits"], pads=[1, 1, 1, 1])],
                                    "f", list(graph.input), list(graph.output),
                                    [i for i in graph.initializer if i.name in ("w", "b")])  # fmt: skip
    path = folder / "f.onnx"
    onnx.save(helper.make_model(float_graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_form_of_ptq_files_and_differences(tmp_path: Path) -> None:
    proto = fake_quantized_conv()
    fp32 = float_conv(tmp_path)  # the float model behind it, quantized by our PTQ for two targets
    batches = [np.random.default_rng(4).uniform(-2, 2, (4, 3, 5, 5)).astype(np.float32)]
    forms = {}
    for target in ("onnxruntime", "tensorrt"):
        quantize(fp32, tmp_path / f"{target}.onnx", target, batches, "minmax")
        forms[target] = qdq_form(onnx.load(str(tmp_path / f"{target}.onnx")))
    assert forms["onnxruntime"] | {"float_ops": []} == {
        "quantized_ops": 1, "float_ops": [], "activations": "uint8", "activation_zero_points": "asymmetric",
        "weights": "int8", "weight_granularity": "per-channel", "bias": "int32", "runtime_quantizers": 0,
    }  # fmt: skip
    assert (forms["tensorrt"]["activations"], forms["tensorrt"]["activation_zero_points"]) == ("int8", "all zero")
    assert forms["tensorrt"]["bias"] == "float"
    assert form_differences(forms["onnxruntime"], forms["onnxruntime"]) == []
    diff = form_differences(forms["tensorrt"], forms["onnxruntime"])
    assert any(d.startswith("activations: int8") for d in diff) and any(d.startswith("bias: float") for d in diff)
    fold_weight_quantizers(proto)
    quantize_biases(proto)
    assert form_differences(qdq_form(proto), forms["onnxruntime"]) == []
    unfolded = qdq_form(fake_quantized_conv())
    assert form_differences(unfolded, forms["onnxruntime"]) == [
        "weights: float (quantized at load) (reference: int8)", "bias: float (reference: int32)",
        "runtime_quantizers: 1 (reference: 0)",
    ]  # fmt: skip


def test_layers_behind_maxpool_count_as_quantized() -> None:
    proto = fake_quantized_conv()
    conv = proto.graph.node[-1]
    proto.graph.node.insert(len(proto.graph.node) - 1,
                            helper.make_node("MaxPool", ["xd"], ["pooled"], kernel_shape=[1, 1]))  # fmt: skip
    conv.input[0] = "pooled"
    assert qdq_form(proto)["float_ops"] == [] and qdq_form(proto)["quantized_ops"] == 1
    proto.graph.node[-2].op_type = "Sigmoid"  # off the input's grid: the layer reads float values
    proto.graph.node[-2].ClearField("attribute")
    assert qdq_form(proto)["float_ops"] == ["conv"]


def _dead_channel_net():
    import torch

    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU6(), nn.Conv2d(4, 4, 3, padding=1, groups=4),
                        nn.ReLU6(), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 3, 1), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten()).eval()  # fmt: skip
    with torch.no_grad():
        net[0].weight[0], net[0].bias[0] = 0.0, -1.0  # channel 0 is dead after ReLU6 ...
        net[2].weight[0], net[2].bias[0] = 1e4, -1.0  # ... so its depthwise weights are unconstrained
        net[4].weight[0, 0], net[4].bias[0] = 1e4, 0.5  # a linear layer's channel reading it: coarse bias grid
    return net


def test_tensorrt_form_runs_as_written_in_onnx_runtime(tmp_path: Path) -> None:
    """Regression: ONNX Runtime's WeightBiasQuantization quantized the float biases of TensorRT's form when a
    session loaded, and a MobileNetV2's S8S8 file agreed with its own graph on 64% of images."""
    from export.onnx_export import export_onnx
    from runtime.classifier import OnnxClassifier
    from runtime.preprocess import PreprocessContract

    contract = PreprocessContract(input_size=(8, 8), resize_size=8, class_names=("a", "b", "c"))
    fp32 = export_onnx(_dead_channel_net(), contract, tmp_path / "fp32.onnx")
    batches = [np.random.default_rng(6).standard_normal((8, 3, 8, 8)).astype(np.float32)]
    trt = quantize(fp32, tmp_path / "trt.onnx", "tensorrt", batches)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    as_written = ort.InferenceSession(str(trt), options).run(None, {"input": batches[0]})[0]
    np.testing.assert_allclose(OnnxClassifier(trt).run(batches[0]), as_written, rtol=1e-3, atol=1e-3)


def test_a_layer_kept_in_float_stays_float_in_onnx_runtime(tmp_path: Path) -> None:
    """Regression: ONNX Runtime's WeightBiasQuantization optimisation re-quantized a guard-excluded depthwise
    convolution per tensor at load time; with a dead channel of large weights (as BatchNorm folding leaves them)
    a trained MobileNetV2 fell to chance in every fallback attempt."""

    from export.onnx_export import export_onnx
    from runtime.preprocess import PreprocessContract

    contract = PreprocessContract(input_size=(8, 8), resize_size=8, class_names=("a", "b", "c"))
    fp32 = export_onnx(_dead_channel_net(), contract, tmp_path / "fp32.onnx")
    batches = [np.random.default_rng(5).standard_normal((8, 3, 8, 8)).astype(np.float32)]
    quantize(fp32, tmp_path / "full.onnx", "onnxruntime", batches)
    depthwise = [n.name for n in onnx.load(str(tmp_path / "full.onnx")).graph.node if n.op_type == "Conv"][1]
    kept = quantize(fp32, tmp_path / "kept.onnx", "onnxruntime", batches, nodes_to_exclude=[depthwise])
    x = batches[0]
    outputs = {}
    for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL"):
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        outputs[level] = ort.InferenceSession(str(kept), options).run(None, {"input": x})[0]
    reference = _run(onnx.load(str(fp32)), x)
    scale = float(np.abs(reference).max())
    np.testing.assert_allclose(outputs["ORT_ENABLE_ALL"], outputs["ORT_DISABLE_ALL"], atol=1e-4 * scale)
    assert float(np.abs(outputs["ORT_ENABLE_ALL"] - reference).max()) < 0.1 * scale
    conv = next(n for n in onnx.load(str(kept)).graph.node if n.name == depthwise)
    assert conv.input[0].endswith("_float_clipped")  # reads the float activation, clamped as its quantizer did


def test_per_tensor_weights_are_told_apart_from_per_channel(tmp_path: Path) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationDataReader

    fp32 = float_conv(tmp_path)
    x = np.random.default_rng(4).uniform(-2, 2, (4, 3, 5, 5)).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": x}])

        def get_next(self) -> dict | None:
            return next(self.items, None)

    forms = {}
    for per_channel in (False, True):
        out = tmp_path / f"{per_channel}.onnx"
        quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
        forms[per_channel] = qdq_form(onnx.load(str(out)))
    assert (forms[False]["weight_granularity"], forms[True]["weight_granularity"]) == ("per-tensor", "per-channel")
    assert form_differences(forms[False], forms[True]) == ["weight_granularity: per-tensor (reference: per-channel)"]
