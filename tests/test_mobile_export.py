"""`toolkit export --format`: the format registry's checks before export, and every phone/board format end to
end (export, eval, bench on its target)."""

from __future__ import annotations

import importlib.util
import json
import platform
from pathlib import Path

import pytest
from conftest import LENIENT_GUARD, write_image_folder, write_recipe
from typer.testing import CliRunner

from runtime.artifacts import run_artifacts
from runtime.errors import ToolkitError
from toolkit.cli import app
from toolkit.mobile_export import check_formats

pytest.importorskip("executorch")
pytest.importorskip("ncnn")
pytest.importorskip("coremltools")
if importlib.util.find_spec("litert_torch") is None:  # not imported here: it would bring jax into this process
    pytest.skip("litert-torch not installed", allow_module_level=True)


def test_formats_are_checked_before_export() -> None:
    with pytest.raises(ToolkitError, match="--format 'executorh' is not one of executorch, ncnn, coreml, litert. Did"):
        check_formats(("executorh",))
    with pytest.raises(ToolkitError, match="--int8 --format coreml: Core ML INT8 .* calibrates by running Core ML"):
        check_formats(("coreml",), int8=True)
    check_formats(("executorch", "ncnn", "coreml", "litert"))
    check_formats(("executorch", "litert", "ncnn"), int8=True)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("et")
    recipe = write_recipe(tmp / "r.yaml", write_image_folder(tmp / "data", per_class=10, size=20), epochs=1)
    res = CliRunner().invoke(app, ["train", str(recipe), "--out", str(tmp / "run")])
    assert res.exit_code == 0, res.output
    return tmp / "run"


@pytest.mark.slow
def test_export_formats_then_eval_and_bench(tiny_run: Path) -> None:
    runner = CliRunner()
    args = ["export", str(tiny_run), "--int8", "--format", "executorch", "--format", "litert", "--format", "ncnn",
            *LENIENT_GUARD, "--held-out-images", "8", "--calib-size", "8"]  # fmt: skip
    res = runner.invoke(app, [*args, "--format", "coreml"])  # no Core ML INT8 here: refused before anything is written
    assert isinstance(res.exception, ToolkitError) and not (tiny_run / "model.onnx").exists()
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["export", str(tiny_run), "--format", "coreml", "--held-out-images", "8"])
    assert res.exit_code == 0, res.output
    exports = json.loads((tiny_run / "manifest.json").read_text())["exports"]
    assert exports["executorch"]["parity"]["passed"] and exports["executorch"]["file"] == "model.pte"
    assert exports["int8_executorch"]["guard"]["verdict"] == "PASS" and exports["int8_executorch"]["delegate_calls"]
    assert exports["ncnn"]["parity"]["passed"] and exports["ncnn"]["file"] == "model.ncnn/model.param"
    assert exports["int8_ncnn"]["guard"]["verdict"] == "PASS" and exports["int8_ncnn"]["int8_layers"] > 10
    assert exports["litert"]["parity"]["passed"] and exports["litert"]["file"] == "model.tflite"
    assert exports["int8_litert"]["guard"]["verdict"] == "PASS" and exports["int8_litert"]["io"]["input"] == "int8"
    assert "executorch" in exports  # a later export keeps the earlier ones' entries
    coreml = exports["coreml"]
    assert coreml["file"] == "model.mlpackage" and coreml["spec_check"] == "passed"
    if platform.system() != "Darwin":  # parity needs Core ML predictions
        assert "macOS only" in coreml["parity"]["skipped"]
    keys = {a.key for a in run_artifacts(tiny_run)}
    assert {"executorch", "int8_executorch", "ncnn", "int8_ncnn", "litert", "int8_litert"} <= keys
    test = write_image_folder(tiny_run.parent / "test", per_class=2, seed=3, size=20)
    res = runner.invoke(app, ["eval", str(tiny_run), "--data", str(test), "--artifact", "all"])
    assert res.exit_code == 0, res.output
    assert "ExecuTorch INT8 (XNNPACK)" in res.output and "NCNN FP32" in res.output
    assert "LiteRT INT8, full integer" in res.output
    if platform.system() != "Darwin":
        assert "Core ML FP16 (ML Program): not evaluated here: Core ML predicts on macOS only" in res.output
    res = runner.invoke(app, ["bench", str(tiny_run), "--target", "executorch-xnnpack-cpu", "--min-duration",
                              "0.05", "--min-queries", "3", "--warmup", "1", "--rounds", "1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    bench = json.loads((tiny_run / "bench" / "executorch-xnnpack-cpu.json").read_text())
    assert {r["artifact"] for r in bench["artifacts"]} == {"executorch", "int8_executorch"}
    assert all(r["single_stream"]["p50_ms"] > 0 and "gmacs_per_image" in r["roofline"] for r in bench["artifacts"])
    res = runner.invoke(app, ["bench", str(tiny_run), "--target", "ncnn-cpu", "--min-duration", "0.05",
                              "--min-queries", "3", "--warmup", "1", "--rounds", "1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    bench = json.loads((tiny_run / "bench" / "ncnn-cpu.json").read_text())
    assert [r["artifact"] for r in bench["artifacts"]] == ["ncnn", "int8_ncnn"]
    res = runner.invoke(app, ["bench", str(tiny_run), "--target", "litert-cpu", "--min-duration", "0.05",
                              "--min-queries", "3", "--warmup", "1", "--rounds", "1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    bench = json.loads((tiny_run / "bench" / "litert-cpu.json").read_text())
    assert [r["artifact"] for r in bench["artifacts"]] == ["litert", "int8_litert"]


def test_a_missing_exporter_package_names_the_extra() -> None:
    from export.packages import missing_package

    assert missing_package(("executorch", "ncnn"), "mobile") is None
    assert missing_package(("ncnn", "no_such_package_xyz"), "mobile") == (
        "the no_such_package_xyz package is not installed (pip install 'edge-distill-toolkit[mobile]')"
    )
