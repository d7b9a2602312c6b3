"""toolkit/formats.py: one table of export formats, and everything that names a format agrees with it."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from runtime.artifacts import KNOWN
from runtime.errors import ToolkitError
from runtime.targets import BACKENDS as TARGET_BACKENDS
from runtime.targets import load_targets
from toolkit.cli import app
from toolkit.formats import FORMATS, INT8_BACKENDS, MOBILE, get_format
from toolkit.recipe import ExportStepConfig


def test_the_options_each_format_lists_are_export_flags() -> None:
    export = typer.main.get_command(app).commands["export"]
    flags = {opt for param in export.params for opt in param.opts}
    for f in FORMATS.values():
        assert set(f.options) <= flags, (f.name, set(f.options) - flags)


def test_formats_cover_every_artifact_and_target_engine() -> None:
    engines = {e for f in FORMATS.values() for e in f.engines}
    assert {backend for _, backend, _ in KNOWN.values()} <= engines <= set(TARGET_BACKENDS)
    assert set(INT8_BACKENDS) | set(MOBILE) <= set(FORMATS)
    assert all("int8" in FORMATS[b].files for b in INT8_BACKENDS)
    for target in load_targets().values():  # every shipped target measures some format's files
        assert any(target.backend in f.engines and set(target.precisions) & set(f.files) for f in FORMATS.values())


def test_the_recipe_and_the_mobile_exporters_take_their_names_from_the_table() -> None:
    from toolkit.mobile_export import MOBILE_FORMATS

    assert ExportStepConfig(backends=list(INT8_BACKENDS), formats=list(MOBILE)).backends == list(INT8_BACKENDS)
    with pytest.raises(ValueError, match="onnxruntime"):
        ExportStepConfig(backends=["onnxrt"])
    for name, fmt in MOBILE_FORMATS.items():
        assert fmt.fp32_file in FORMATS[name].files.values()
        assert fmt.int8_file is None or fmt.int8_file == FORMATS[name].files["int8"]


def test_get_format_and_the_cli_table() -> None:
    assert get_format("fp16").file("fp16") == "model.fp16.onnx"
    with pytest.raises(ToolkitError, match='Did you mean "openvino"'):
        get_format("openvin")
    with pytest.raises(ToolkitError, match="format fp16 has no int8 file"):
        FORMATS["fp16"].file("int8")
    res = CliRunner().invoke(app, ["formats"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    for name in FORMATS:
        assert f"│ {name} " in res.output
    assert "trt-gpu-fp16-engine" in res.output  # the FP16 file's TensorRT engine target
