"""Session settings (validated, applied by the engines) and the measured sweep that picks them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_sessions import write_tiny_onnx

from runtime.classifier import OnnxClassifier, open_classifier
from runtime.errors import ToolkitError
from runtime.session_settings import check_settings
from runtime.targets import load_targets
from runtime.tuning import SWEEP, sweep_settings


def test_settings_are_validated() -> None:
    with pytest.raises(ToolkitError, match=r"unknown onnxruntime session setting 'static_batc'.*static_batch"):
        check_settings("onnxruntime", {"static_batc": 1}, "t")
    with pytest.raises(ToolkitError, match="performance_hint must be LATENCY"):
        check_settings("openvino", {"performance_hint": "fast"}, "t")
    with pytest.raises(ToolkitError, match="static_batch must be a positive integer, got True"):
        check_settings("openvino", {"static_batch": True}, "t")
    assert check_settings("onnxruntime", {"io_binding": True, "graph_optimization": "basic"}, "t")


def test_target_file_session_settings_are_checked_when_used(tmp_path: Path) -> None:
    f = tmp_path / "t.yaml"
    f.write_text("mine:\n  backend: onnxruntime\n  provider: CPUExecutionProvider\n  precisions: [fp32]\n"
                 "  session: {graph_optimization: fastest}\n")  # fmt: skip
    target = load_targets(f)["mine"]
    with pytest.raises(ToolkitError, match="graph_optimization must be"):
        open_classifier(write_tiny_onnx(tmp_path / "m.onnx"), settings=target.session)


@pytest.mark.parametrize("settings", [{"static_batch": 2}, {"io_binding": True}, {"graph_optimization": "disable"},
                                      {"allow_spinning": False}])  # fmt: skip
def test_onnxruntime_settings_keep_the_outputs(tmp_path: Path, settings: dict) -> None:
    path = write_tiny_onnx(tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(OnnxClassifier(path, settings=settings).run(x), OnnxClassifier(path).run(x), atol=1e-6)


def test_static_batch_sessions_are_fixed_to_their_batch(tmp_path: Path) -> None:
    clf = OnnxClassifier(write_tiny_onnx(tmp_path / "m.onnx"), settings={"static_batch": 2})
    assert clf.session.get_inputs()[0].shape == [2, 3, 4, 4]
    with pytest.raises(ToolkitError, match="built for batches of 2, got 1"):
        clf.run(np.zeros((1, 3, 4, 4), np.float32))


def test_sweep_visits_every_setting_and_keeps_the_fastest(tmp_path: Path) -> None:
    path = write_tiny_onnx(tmp_path / "m.onnx")
    x = np.ones((1, 3, 4, 4), np.float32)
    result = sweep_settings("onnxruntime", lambda s: OnnxClassifier(path, settings=s), x, {}, rounds=2, queries=5)
    steps = [r["step"] for r in result["rows"] if r["step"] != "final"]
    assert steps == [key for key, values in SWEEP["onnxruntime"] for _ in values]
    assert all(r["status"] == "ok" and r["p50_ms"] > 0 for r in result["rows"])
    last_step = [r for r in result["rows"] if r["step"] == SWEEP["onnxruntime"][-1][0]]
    assert result["best"] == min(last_step, key=lambda r: r["p50_ms"])["settings"]
    final = [r for r in result["rows"] if r["step"] == "final"]
    if result["best"]:  # defaults vs the choice, head to head: that pair gives the gain
        assert [r["settings"] for r in final] == [{}, result["best"]]
        assert result["speedup"] == pytest.approx(final[0]["p50_ms"] / final[1]["p50_ms"], rel=1e-3)
    else:
        assert final == [] and result["speedup"] == 1.0


def test_sweep_keeps_the_target_fixed_settings_and_rejects_changed_outputs(tmp_path: Path) -> None:
    good = write_tiny_onnx(tmp_path / "m.onnx")
    other = tmp_path / "other.onnx"
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(good))
    model.graph.initializer[0].CopyFrom(
        numpy_helper.from_array(-numpy_helper.to_array(model.graph.initializer[0]), "w")
    )
    onnx.save(model, str(other))

    def opener(settings: dict) -> OnnxClassifier:  # io_binding=True opens a model with other weights
        return OnnxClassifier(other if settings.get("io_binding") else good, settings=settings)

    x = np.ones((1, 3, 4, 4), np.float32)
    result = sweep_settings("onnxruntime", opener, x, {"static_batch": 1}, rounds=1, queries=3)
    assert all(r["settings"]["static_batch"] == 1 for r in result["rows"])
    assert "static_batch" not in [r["step"] for r in result["rows"]]
    rejected = [r for r in result["rows"] if r["status"].startswith("rejected")]
    assert [r["settings"].get("io_binding") for r in rejected] == [True] and "io_binding" not in result["best"]
