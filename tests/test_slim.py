"""export/slim.py: onnxslim on model.onnx, in place, only when it changes something; outputs unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from export.slim import slim_onnx


def _graph(redundant: bool) -> onnx.ModelProto:
    """input -> (Identity -> Mul by 1 ->) Relu -> logits, with a dynamic batch axis and metadata."""
    nodes = [helper.make_node("Relu", ["x1" if redundant else "input"], ["logits"])]
    inits = []
    if redundant:
        nodes = [helper.make_node("Identity", ["input"], ["x0"]), helper.make_node("Mul", ["x0", "one"], ["x1"]),
                 *nodes]  # fmt: skip
        inits = [numpy_helper.from_array(np.ones((1,), np.float32), "one")]
    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 3]) for name in ("input", "logits")]
    graph = helper.make_graph(nodes, "g", io[:1], io[1:], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.metadata_props.add(key="toolkit.preprocess", value="{}")
    return model


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_slim_removes_redundant_nodes_and_keeps_outputs_batch_axis_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(_graph(redundant=True), str(path))
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    before = _run(path, x)
    info = slim_onnx(path)
    assert info["nodes_before"] == 3 and info["nodes_after"] < 3 and info["tool"].startswith("onnxslim ")
    proto = onnx.load(str(path))
    assert len(proto.graph.node) == info["nodes_after"]  # written in place
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert {p.key for p in proto.metadata_props} >= {"toolkit.preprocess"}
    np.testing.assert_array_equal(_run(path, x), before)


def test_a_clean_graph_is_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(_graph(redundant=False), str(path))
    stamp = path.stat().st_mtime_ns, path.read_bytes()
    assert slim_onnx(path)["nodes_after"] == 1
    assert (path.stat().st_mtime_ns, path.read_bytes()) == stamp
