"""ExecuTorch programs (.pte, XNNPACK delegate): export FP32 and INT8 with the contract inside, and the session
that reads them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_conv_classifier

from export.executorch_export import export_executorch
from runtime.classifier import ExecuTorchClassifier, open_classifier
from runtime.errors import ToolkitError
from runtime.layer_costs import graph_precision
from runtime.preprocess import PreprocessContract

pytest.importorskip("executorch")
SIZE = 12
CONTRACT = PreprocessContract(input_size=(SIZE, SIZE), resize_size=SIZE, class_names=("a", "b", "c"))


def test_fp32_and_int8_programs_carry_the_contract_and_match_the_model(tmp_path: Path) -> None:
    model = tiny_conv_classifier()
    x = np.random.default_rng(0).standard_normal((5, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    info = export_executorch(model, CONTRACT, tmp_path / "m.pte")
    assert info["delegate_calls"] >= 1  # the convolution and the linear layer run in XNNPACK
    fp32 = open_classifier(tmp_path / "m.pte", threads=1)
    assert isinstance(fp32, ExecuTorchClassifier) and fp32.contract == CONTRACT and fp32.precision == "fp32"
    np.testing.assert_allclose(fp32.run(x), reference, atol=1e-5)
    assert fp32.run(x[:1]).shape == (1, 3)  # dynamic batch
    many = np.repeat(x, 8, axis=0)  # 40 images: more than the program's planned batch, run in chunks
    assert fp32.max_batch < len(many)
    np.testing.assert_allclose(fp32.run(many), np.repeat(reference, 8, axis=0), atol=1e-5)
    export_executorch(model, CONTRACT, tmp_path / "m.int8.pte", calibration=[x])
    int8 = ExecuTorchClassifier(tmp_path / "m.int8.pte")
    assert int8.precision == "int8" and graph_precision(tmp_path / "m.int8.pte") == "int8"
    assert graph_precision(tmp_path / "m.pte") == "fp32"
    out = int8.run(x)
    assert not np.array_equal(out, fp32.run(x))  # quantized arithmetic, not the float program
    np.testing.assert_allclose(out, reference, atol=0.1 * np.abs(reference).max())


def test_bad_programs_and_formats_are_named(tmp_path: Path) -> None:
    with pytest.raises(ToolkitError, match="ExecuTorch program not found"):
        ExecuTorchClassifier(tmp_path / "missing.pte")
    (tmp_path / "junk.pte").write_bytes(b"not a program")
    with pytest.raises(ToolkitError, match="junk.pte: ExecuTorch cannot load it"):
        ExecuTorchClassifier(tmp_path / "junk.pte")
    from executorch.exir import to_edge_transform_and_lower  # a program without our contract

    program = torch.export.export(tiny_conv_classifier(), (torch.zeros(1, 3, SIZE, SIZE),))
    (tmp_path / "bare.pte").write_bytes(to_edge_transform_and_lower(program).to_executorch().buffer)
    with pytest.raises(ToolkitError, match="no toolkit_preprocess method; export it with `toolkit export"):
        ExecuTorchClassifier(tmp_path / "bare.pte")
