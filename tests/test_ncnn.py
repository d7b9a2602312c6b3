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
