"""NVIDIA ModelOpt as the second writer of the TensorRT-form Q/DQ model (export/modelopt_quantize.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto
from torch import nn

from export.modelopt_quantize import exact_patterns, unavailable_reason
from export.onnx_export import export_onnx
from export.qdq_form import qdq_form
from export.quantize import check_producer, quantize
from runtime.classifier import OnnxClassifier
from runtime.errors import ToolkitError
from runtime.preprocess import PreprocessContract

needs_modelopt = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))


def test_exclusions_match_whole_names_and_producers_are_checked(tmp_path: Path) -> None:
    import re

    (pattern,) = exact_patterns(["node_Conv_31"])
    assert re.match(pattern, "node_Conv_31") and not re.match(pattern, "node_Conv_310")
    assert re.match(exact_patterns(["layer1.0.conv"])[0], "layer1x0.conv") is None  # dots are literal
    assert exact_patterns([]) is None
    with pytest.raises(ToolkitError, match="--tensorrt-quantizer 'modelop' is not one of onnxruntime, modelopt"):
        check_producer("modelop")
    with pytest.raises(ToolkitError, match="ModelOpt writes the TensorRT form only, not the onnxruntime one"):
        check_producer("modelopt", "onnxruntime")
    from toolkit.exporting import run_export

    with pytest.raises(ToolkitError, match="--tensorrt-quantizer modelopt writes the TensorRT INT8 form"):
        run_export(tmp_path, int8=True, targets=("onnxruntime",), tensorrt_quantizer="modelopt")


@needs_modelopt
def test_modelopt_writes_tensorrts_form_with_fp16_high_precision(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 3)).eval()  # fmt: skip
    contract = PreprocessContract(input_size=12, resize_size=12, class_names=("a", "b", "c"))
    fp32 = export_onnx(model, contract, tmp_path / "model.onnx")
    convs = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv"]
    batches = [np.random.default_rng(0).standard_normal((8, 3, 12, 12)).astype(np.float32)]
    out = quantize(fp32, tmp_path / "q.onnx", "tensorrt", batches, producer="modelopt")
    proto = onnx.load(str(out))
    form = qdq_form(proto)
    assert form["activations"] == "int8" and form["activation_zero_points"] == "all zero"
    assert form["weights"].startswith("float") and convs[0] not in form["float_ops"]
    assert any(n.op_type == "Cast" and n.attribute[0].i == TensorProto.FLOAT16 for n in proto.graph.node)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["toolkit.int8_target"] == "tensorrt" and meta["toolkit.int8_producer"].startswith("modelopt ")
    session = OnnxClassifier(out)  # the contract came along; ONNX Runtime's CPU kernels run it
    assert session.contract == contract and session.run(batches[0]).shape == (8, 3)
    assert np.abs(session.run(batches[0]) - OnnxClassifier(fp32).run(batches[0])).max() < 0.5
