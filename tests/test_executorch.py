"""ExecuTorch programs (.pte, XNNPACK delegate): export FP32 and INT8 with the contract inside, the session
that reads them, the format registry's checks, and `toolkit export --format executorch` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_image_folder, write_recipe
from torch import nn
from typer.testing import CliRunner

from export.executorch_export import export_executorch
from runtime.artifacts import run_artifacts
from runtime.classifier import ExecuTorchClassifier, open_classifier
from runtime.errors import ToolkitError
from runtime.layer_costs import graph_precision
from runtime.preprocess import PreprocessContract
from toolkit.cli import app
from toolkit.mobile_export import check_formats

pytest.importorskip("executorch")
SIZE = 12
CONTRACT = PreprocessContract(input_size=(SIZE, SIZE), resize_size=SIZE, class_names=("a", "b", "c"))


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 3)).eval()  # fmt: skip


def test_fp32_and_int8_programs_carry_the_contract_and_match_the_model(tmp_path: Path) -> None:
    model = tiny()
    x = np.random.default_rng(0).standard_normal((5, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    info = export_executorch(model, CONTRACT, tmp_path / "m.pte")
    assert info["delegate_calls"] >= 1  # the convolution and the linear layer run in XNNPACK
    fp32 = open_classifier(tmp_path / "m.pte", threads=1)
    assert isinstance(fp32, ExecuTorchClassifier) and fp32.contract == CONTRACT and fp32.precision == "fp32"
    np.testing.assert_allclose(fp32.run(x), reference, atol=1e-5)
    assert fp32.run(x[:1]).shape == (1, 3)  # dynamic batch
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

    program = torch.export.export(tiny(), (torch.zeros(1, 3, SIZE, SIZE),))
    (tmp_path / "bare.pte").write_bytes(to_edge_transform_and_lower(program).to_executorch().buffer)
    with pytest.raises(ToolkitError, match="no toolkit_preprocess method; export it with `toolkit export"):
        ExecuTorchClassifier(tmp_path / "bare.pte")
    with pytest.raises(ToolkitError, match="--format 'executorh' is not one of executorch. Did you mean"):
        check_formats(("executorh",))
    check_formats(("executorch",))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("et")
    recipe = write_recipe(tmp / "r.yaml", write_image_folder(tmp / "data", per_class=10, size=20), epochs=1)
    res = CliRunner().invoke(app, ["train", str(recipe), "--out", str(tmp / "run")])
    assert res.exit_code == 0, res.output
    return tmp / "run"


@pytest.mark.slow
def test_export_format_executorch_then_eval_and_bench(tiny_run: Path) -> None:
    runner = CliRunner()
    args = ["export", str(tiny_run), "--int8", "--format", "executorch", "--tolerance", "100", "--held-out-images",
            "8", "--calib-size", "8"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    exports = json.loads((tiny_run / "manifest.json").read_text())["exports"]
    assert exports["executorch"]["parity"]["passed"] and exports["executorch"]["file"] == "model.pte"
    assert exports["int8_executorch"]["guard"]["verdict"] == "PASS" and exports["int8_executorch"]["delegate_calls"]
    assert {"executorch", "int8_executorch"} <= {a.key for a in run_artifacts(tiny_run)}
    test = write_image_folder(tiny_run.parent / "test", per_class=2, seed=3, size=20)
    res = runner.invoke(app, ["eval", str(tiny_run), "--data", str(test), "--artifact", "all"])
    assert res.exit_code == 0, res.output
    assert "ExecuTorch INT8 (XNNPACK)" in res.output
    res = runner.invoke(app, ["bench", str(tiny_run), "--target", "executorch-xnnpack-cpu", "--min-duration",
                              "0.05", "--min-queries", "3", "--warmup", "1", "--rounds", "1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    bench = json.loads((tiny_run / "bench" / "executorch-xnnpack-cpu.json").read_text())
    assert {r["artifact"] for r in bench["artifacts"]} == {"executorch", "int8_executorch"}
    assert all(r["single_stream"]["p50_ms"] > 0 and "gmacs_per_image" in r["roofline"] for r in bench["artifacts"])
