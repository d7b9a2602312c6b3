"""Per-layer INT8 sensitivity (export/guard.py): SQNR of every quantized activation, measured a chunk of images at a
time, equal to ONNX Runtime's qdq_loss_debug over all images at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnxruntime.quantization.qdq_loss_debug import (
    collect_activations,
    compute_activation_error,
    create_activation_matching,
    modify_model_output_intermediate_tensors,
)
from torch import nn

from export.calibration import BatchReader
from export.guard import activation_sensitivity, sensitivity_entry, sensitivity_table
from export.onnx_export import export_onnx
from export.quantize import quantize
from runtime.preprocess import PreprocessContract


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 3)).eval()  # fmt: skip
    contract = PreprocessContract(input_size=12, resize_size=12, class_names=("a", "b", "c"))
    folder = tmp_path_factory.mktemp("sens")
    fp32 = export_onnx(model, contract, folder / "model.onnx")
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((5, 3, 12, 12)).astype(np.float32) for _ in range(3)]
    return quantize(fp32, folder / "model.int8.onnx", "onnxruntime", batches), batches


def test_chunked_sqnr_equals_onnx_runtimes_over_all_images(quantized, tmp_path: Path) -> None:
    int8, batches = quantized
    acts = {}
    for name, path in (("float", int8.with_name("model.onnx")), ("qdq", int8)):
        modify_model_output_intermediate_tensors(str(path), str(tmp_path / f"{name}.onnx"))
        acts[name] = collect_activations(str(tmp_path / f"{name}.onnx"), BatchReader("input", batches))
    matched = create_activation_matching(acts["qdq"], acts["float"])
    expected = {k: v["qdq_err"] for k, v in compute_activation_error(matched).items() if "qdq_err" in v}
    for chunk in (2, 15):  # 2 does not divide the 15 images: the last chunk is short
        ranked = activation_sensitivity(int8, batches, chunk=chunk)
        assert {name for name, _ in ranked} == set(expected) and len(ranked) >= 3
        for name, db in ranked:
            assert db == pytest.approx(expected[name], abs=1e-3), name
        assert [db for _, db in ranked] == sorted(db for _, db in ranked)  # worst first


def test_table_names_the_nodes_that_read_each_activation(quantized) -> None:
    int8, batches = quantized
    table = sensitivity_table(int8, batches)
    # every quantized activation but the graph's output feeds a layer --keep-float can name
    assert [row["tensor"] for row in table if not row["consumers"]] == ["logits"]
    ops = {n.name: n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {ops[c] for row in table for c in row["consumers"]} == {"Conv", "ReduceMean", "Gemm"}
    entry = sensitivity_entry(table, batches)
    assert entry["images"] == 15 and entry["tensors"] == table


def test_float16_activations_do_not_overflow_the_sums(tmp_path: Path) -> None:
    """Regression: ModelOpt's TensorRT form carries FP16 activations; a float16 sum of squares overflowed to inf."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Cast", ["input"], ["x"], to=TensorProto.FLOAT16),
             helper.make_node("QuantizeLinear", ["x", "s", "z"], ["x_QuantizeLinear_Output"]),
             helper.make_node("DequantizeLinear", ["x_QuantizeLinear_Output", "s", "z"],
                              ["x_DequantizeLinear_Output"]),
             helper.make_node("Relu", ["x_DequantizeLinear_Output"], ["r"]),
             helper.make_node("Cast", ["r"], ["logits"], to=TensorProto.FLOAT)]  # fmt: skip
    inits = [numpy_helper.from_array(np.array(1.0, np.float16), "s"), numpy_helper.from_array(np.int8(0), "z")]
    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", 64]) for name in ("input", "logits")]
    graph = helper.make_graph(nodes, "g", io[:1], io[1:], inits)
    path = tmp_path / "fp16.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    images = [np.full((16, 64), 100.3, np.float32)]  # sum of squares 1.6e8: beyond float16's 65504
    ((name, db),) = activation_sensitivity(path, images)
    # 100.3 is 100.3125 in float16 and quantizes to 100: an error of 0.3125 on every element
    assert name == "x" and db == pytest.approx(20 * np.log10(100.3125 / 0.3125), abs=1e-3)
