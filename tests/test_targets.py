"""Target profiles: packaged ones validate, user files add/override, typos and bad values are clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from runtime.errors import ToolkitError
from runtime.targets import BACKENDS, get_target, load_targets
from toolkit.cli import app


def test_packaged_profiles_cover_every_backend_and_the_cpu_ones_run_here() -> None:
    targets = load_targets()
    assert {"ort-cpu-1t", "ort-cpu-2t", "openvino-cpu", "trt-jetson-orin-int8", "trt-gpu-fp16"} <= set(targets)
    assert {t.backend for t in targets.values()} == set(BACKENDS)
    assert targets["ort-cpu-1t"].threads == 1 and targets["ort-cpu-1t"].batch_sizes[0] == 1
    assert targets["ort-cpu-1t"].unavailable_reason() is None
    assert targets["openvino-cpu"].unavailable_reason() is None


@pytest.mark.parametrize("name", sorted(load_targets()))
def test_every_profile_says_whether_it_runs_here(name: str) -> None:
    reason = load_targets()[name].unavailable_reason()
    assert reason is None or (isinstance(reason, str) and len(reason) > 10)


def test_missing_provider_is_named() -> None:
    reason = load_targets()["ort-cuda"].unavailable_reason()
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "CUDAExecutionProvider is missing" in reason


def test_user_file_adds_and_overrides(tmp_path: Path) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text(
        "ort-cpu-1t: {backend: onnxruntime, provider: CPUExecutionProvider, precisions: [int8], threads: 1}\n"
        "pi5: {backend: onnxruntime, provider: CPUExecutionProvider, precisions: [fp32, int8], threads: 4,"
        " batch_sizes: [1, 4]}\n"
    )
    targets = load_targets(f)
    assert targets["ort-cpu-1t"].precisions == ("int8",)
    assert targets["pi5"].batch_sizes == (1, 4) and "openvino-cpu" in targets


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("x: {backend: onnxruntime, provider: CPUExecutionProvider, precisions: [fp32], thread: 1}", "Did you mean"),
        ("x: {backend: onnx, precisions: [fp32]}", "backend must be one of"),
        ("x: {backend: openvino, device: CPU, precisions: [int4]}", "precisions must be"),
        ("x: {backend: openvino, device: CPU, precisions: [fp32], batch_sizes: [0]}", "batch_sizes"),
        ("x: {backend: onnxruntime, precisions: [fp32]}", "needs provider"),
        ("x: {backend: openvino, precisions: [fp32]}", "needs device"),
        ("x: {backend: openvino, device: CPU, precisions: [fp32], threads: -2}", "threads must be"),
        ("[1, 2]", "expected a mapping"),
        ("x: [", "not valid YAML"),
    ],
)
def test_bad_profiles_name_file_target_and_key(tmp_path: Path, body: str, message: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(body)
    with pytest.raises(ToolkitError, match=message) as err:
        load_targets(f)
    assert str(f) in str(err.value)


def test_unknown_target_suggests() -> None:
    with pytest.raises(ToolkitError, match='Did you mean "ort-cpu-1t"'):
        get_target("ort-cpu-1", load_targets())


def test_targets_command_lists_availability() -> None:
    res = CliRunner().invoke(app, ["targets"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert "ort-cpu-1t" in res.output and "trt-jetson-orin-int8" in res.output
    assert "yes" in res.output and "no:" in res.output
    rows = {line.split()[1]: line for line in res.output.splitlines() if len(line.split()) > 1}
    assert "needs torch" in rows["executorch-xnnpack-cpu"] and "needs torch" not in rows["ncnn-cpu"]
