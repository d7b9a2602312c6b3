"""Inference sessions (no torch): metadata read back, raw image -> label, clear errors for what is missing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from runtime.classifier import META_PREPROCESS, OnnxClassifier, TensorRTClassifier, open_classifier
from runtime.errors import ToolkitError
from runtime.preprocess import PreprocessContract

CONTRACT = PreprocessContract(
    input_size=4, resize_size=4, mean=(0.5, 0.5, 0.5), std=(1.0, 1.0, 1.0), class_names=("dark", "bright")
)


def write_tiny_onnx(path: Path, metadata: bool = True) -> Path:
    """Logits = [-mean, +mean] of the pixels: a bright image is 'bright'. Dynamic batch, opset 18."""
    w = np.zeros((48, 2), np.float32)
    w[:, 0], w[:, 1] = -1 / 48, 1 / 48
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    if metadata:
        helper.set_model_props(model, {META_PREPROCESS: CONTRACT.to_json()})
    onnx.save(model, str(path))
    return path


def test_raw_image_in_label_out(tmp_path: Path) -> None:
    clf = open_classifier(write_tiny_onnx(tmp_path / "m.onnx"), threads=1)
    assert isinstance(clf, OnnxClassifier) and clf.contract == CONTRACT
    results = clf.classify([Image.new("RGB", (9, 7), (250, 250, 250)), Image.new("RGB", (5, 5), (3, 3, 3))])
    assert [label for label, _ in results] == ["bright", "dark"]
    assert all(0.5 < score <= 1.0 for _, score in results)
    assert clf.input_spec() == {"shape": ["N", 3, 4, 4], "dtype": "float32"}


def test_wrong_shape_or_dtype_is_named(tmp_path: Path) -> None:
    clf = OnnxClassifier(write_tiny_onnx(tmp_path / "m.onnx"))
    with pytest.raises(ToolkitError, match=r"float32 \(N, 3, 4, 4\), got float64"):
        clf.run(np.zeros((1, 3, 4, 4)))
    with pytest.raises(ToolkitError, match=r"got float32 \(1, 3, 5, 5\)"):
        clf.run(np.zeros((1, 3, 5, 5), np.float32))


def test_missing_metadata_provider_and_kind(tmp_path: Path) -> None:
    with pytest.raises(ToolkitError, match="no 'toolkit.preprocess' metadata"):
        OnnxClassifier(write_tiny_onnx(tmp_path / "bare.onnx", metadata=False))
    model = write_tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(ToolkitError, match="NoSuchExecutionProvider is not available"):
        OnnxClassifier(model, providers=["NoSuchExecutionProvider"])
    with pytest.raises(ToolkitError, match="unknown model kind"):
        open_classifier(tmp_path / "model.pt")


def test_tensorrt_engine_needs_its_sidecar(tmp_path: Path) -> None:
    engine = tmp_path / "model.gpu.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(ToolkitError, match=r"model.gpu.engine.json: not found"):
        TensorRTClassifier(engine)
    (tmp_path / "model.gpu.engine.json").write_text(json.dumps({"preprocess": CONTRACT.to_dict()}))
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(ToolkitError, match="needs tensorrt and cuda-python"):
            open_classifier(engine)
