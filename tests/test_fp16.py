"""model.fp16.onnx (export/fp16_export.py): FP16 weights and compute, FP32 inputs and outputs, the contract kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto
from torch import nn

from export.fp16_export import META_PRECISION, to_fp16
from export.onnx_export import export_onnx
from runtime.classifier import OnnxClassifier
from runtime.preprocess import PreprocessContract


def test_fp16_model_keeps_float32_io_the_contract_and_the_logits(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 3)).eval()  # fmt: skip
    contract = PreprocessContract(input_size=16, resize_size=16, class_names=("a", "b", "c"))
    fp32 = export_onnx(model, contract, tmp_path / "model.onnx")
    half = to_fp16(fp32, tmp_path / "model.fp16.onnx")
    proto = onnx.load(str(half))
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    types = {i.name: i.data_type for i in proto.graph.initializer}
    gemm = next(n for n in proto.graph.node if n.op_type == "Gemm")
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    assert types[conv.input[1]] == types[gemm.input[1]] == TensorProto.FLOAT16
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta[META_PRECISION] == "fp16" and OnnxClassifier(half).contract == contract
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    a, b = OnnxClassifier(fp32).run(x), OnnxClassifier(half).run(x)
    assert b.dtype == np.float32 and np.abs(a - b).max() < 2e-2 * max(1.0, np.abs(a).max())
    assert not np.array_equal(a, b)  # it did compute in FP16
