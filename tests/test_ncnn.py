"""NCNN models through PNNX: the param file's blobs read by hand, export with the contract sidecar, the session
(FP32 arithmetic, one image per call) and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.students import create_student
from export.ncnn_export import blob_names, export_ncnn
from runtime.classifier import NcnnClassifier, open_classifier
from runtime.errors import ToolkitError
from runtime.preprocess import PreprocessContract

pytest.importorskip("ncnn")
pytest.importorskip("pnnx")
CONTRACT = PreprocessContract(input_size=(16, 16), resize_size=16, class_names=("a", "b", "c", "d"))


def test_blob_names_by_hand() -> None:
    text = """7767517
4 5
Input            in0   0 1 in0
Convolution      c0    1 1 in0 1 0=8
Split            s0    1 2 1 2 3
BinaryOp         add   2 1 2 3 out0 0=0
"""
    assert blob_names(text) == (["in0"], ["out0"])


def test_export_and_session_match_the_student(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_student("mobilenetv2_100", 4).eval()
    info = export_ncnn(model, CONTRACT, tmp_path / "model.ncnn" / "model.param")
    assert (info["input"], info["output"]) == ("in0", "out0")
    session = open_classifier(tmp_path / "model.ncnn" / "model.param", threads=1)
    assert isinstance(session, NcnnClassifier) and session.contract == CONTRACT
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(x), reference, atol=1e-4)
    # Winograd off (a tuning setting: NCNN's transforms dominate at small inputs) keeps the outputs.
    plain = NcnnClassifier(tmp_path / "model.ncnn" / "model.param", threads=1, settings={"winograd": False})
    assert not plain.net.opt.use_winograd_convolution and session.net.opt.use_winograd_convolution
    np.testing.assert_allclose(plain.run(x), reference, atol=1e-4)
    with pytest.raises(ToolkitError, match="session setting winograd must be True | False"):
        NcnnClassifier(tmp_path / "model.ncnn" / "model.param", settings={"winograd": "no"})
    from runtime.tuning import sweep_settings

    model_file = tmp_path / "model.ncnn" / "model.param"
    result = sweep_settings("ncnn", lambda s: open_classifier(model_file, threads=1, settings=s), x[:1], {},
                            rounds=1, queries=2)  # fmt: skip
    assert "winograd" in {r["step"] for r in result["rows"]} and all(r["status"] == "ok" for r in result["rows"])


def test_bad_ncnn_files_are_named(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.param").write_text("not a param file")
    with pytest.raises(ToolkitError, match="model.bin: not found"):
        NcnnClassifier(folder / "model.param")
    (folder / "model.bin").write_bytes(b"")
    (folder / "model.json").write_text(json.dumps({"preprocess": CONTRACT.to_dict()}))  # no blob names
    with pytest.raises(ToolkitError, match="model.json: not a valid NCNN sidecar"):
        NcnnClassifier(folder / "model.param")
    (folder / "model.json").write_text(json.dumps({"preprocess": CONTRACT.to_dict(), "input": "in0",
                                                   "output": "out0"}))  # fmt: skip
    with pytest.raises(ToolkitError, match="ncnn cannot load it"):
        NcnnClassifier(folder / "model.param")


def test_int8_layers_by_hand_and_the_int8_model_runs_quantized(tmp_path: Path) -> None:
    """NCNN INT8 written in Python (no ncnn2table/ncnn2int8): each conv/fc layer's int8 weights and scales equal
    what its FP32 weights give by hand, the input scale is 127 / max|x| over the calibration images, and ncnn
    loads and runs the result in INT8."""
    import struct

    from export.ncnn_export import layer_params
    from export.ncnn_int8 import INT8_TAG
    from runtime.layer_costs import graph_precision

    torch.manual_seed(0)
    model = create_student("resnet10t", 4).eval()
    # 32 px: at 16 px NCNN's own FP32 model gives NaN (its ceil-mode average pool on a 1x1 map divides by zero).
    contract = PreprocessContract(input_size=(32, 32), resize_size=32, class_names=("a", "b", "c", "d"))
    x = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32)
    export_ncnn(model, contract, tmp_path / "fp32" / "model.param")
    info = export_ncnn(model, contract, tmp_path / "int8" / "model.param", calibration=[x[:3], x[3:]])
    fp32_text = (tmp_path / "fp32" / "model.param").read_text()
    int8_text = (tmp_path / "int8" / "model.param").read_text()
    weighted = [line for line in int8_text.splitlines() if line.startswith(("Convolution", "InnerProduct"))]
    assert info["int8_layers"] == len(weighted) > 10 and all(line.endswith(" 8=1") for line in weighted)
    assert json.loads((tmp_path / "int8" / "model.json").read_text())["precision"] == "int8"
    assert graph_precision(tmp_path / "int8" / "model.param") == "int8"
    assert graph_precision(tmp_path / "fp32" / "model.param") == "fp32"
    # The first layer (a convolution reading the input image) by hand.
    first = next(line.split() for line in fp32_text.splitlines() if line.startswith("Convolution"))
    _, _, _, _, p = layer_params(first)
    n_out, size = int(p["0"]), int(p["6"])
    fp32_bin, int8_bin = (tmp_path / "fp32" / "model.bin").read_bytes(), (tmp_path / "int8" / "model.bin").read_bytes()
    w = np.frombuffer(fp32_bin[4 : 4 + 4 * size], np.float32).reshape(n_out, -1)
    scales = 127.0 / np.abs(w).max(axis=1)
    expected = np.clip(np.trunc(w * scales[:, None] + np.copysign(0.5, w)), -127, 127).astype(np.int8)
    assert struct.unpack_from("<I", int8_bin, 0)[0] == INT8_TAG
    np.testing.assert_array_equal(np.frombuffer(int8_bin[4 : 4 + size], np.int8).reshape(n_out, -1), expected)
    at = 4 + size + (-size % 4) + 4 * n_out * int(p.get("5", 0))  # after the int8 weights and the float bias
    np.testing.assert_allclose(np.frombuffer(int8_bin[at : at + 4 * n_out], np.float32), scales, rtol=1e-6)
    x_scale = np.frombuffer(int8_bin[at + 4 * n_out : at + 4 * n_out + 4], np.float32)[0]
    assert x_scale == pytest.approx(127.0 / np.abs(x).max(), rel=1e-6)  # the input image's range
    assert len(int8_bin) < 0.3 * len(fp32_bin)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    fp32 = open_classifier(tmp_path / "fp32" / "model.param", threads=1).run(x)
    np.testing.assert_allclose(fp32, reference, atol=1e-4)
    int8 = open_classifier(tmp_path / "int8" / "model.param", threads=1).run(x)
    assert not np.allclose(int8, fp32, atol=1e-5)  # INT8 arithmetic, not the float model
    np.testing.assert_allclose(int8, reference, atol=0.1 * np.abs(reference).max())


def test_ncnn_int8_refuses_what_it_cannot_repack() -> None:
    from export.ncnn_int8 import quantize_model

    text = """7767517
3 3
Input            in0   0 1 in0
BatchNorm        bn0   1 1 in0 1 0=3
InnerProduct     fc    1 1 1 out0 0=2 1=0 2=6
"""
    with pytest.raises(ToolkitError, match=r"layer bn0 \(BatchNorm\) carries weights the toolkit cannot re-pack"):
        quantize_model(text, b"\0" * 100, {"in0": 1.0, "1": 1.0})
    fc_only = text.replace("BatchNorm        bn0   1 1 in0 1 0=3\n", "Noop  n0  1 1 in0 1\n")
    with pytest.raises(ToolkitError, match="model.bin has 4 bytes no layer reads"):
        quantize_model(fc_only, b"\0" * (4 + 24 + 4), {"1": 1.0})
    _, weights, count = quantize_model(fc_only, b"\0" * (4 + 24), {"1": 2.0})
    assert count == 1 and weights[4:10] == b"\0" * 6 and np.frombuffer(weights[-4:], np.float32)[0] == 63.5
