"""Core ML ML Programs: conversion with the contract in the metadata, the spec check that stands in for parity
off macOS, the folder artifact's hash, and the session gated on macOS."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest
import torch
from torch import nn

from export.coreml_export import export_coreml
from runtime.artifacts import file_entry, run_artifacts
from runtime.classifier import COREML_META_PREPROCESS, CoreMLClassifier, coreml_spec_problems, open_classifier
from runtime.errors import ToolkitError
from runtime.preprocess import PreprocessContract

ct = pytest.importorskip("coremltools")
CONTRACT = PreprocessContract(input_size=(12, 12), resize_size=12, class_names=("a", "b", "c"))


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 3)).eval()  # fmt: skip


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("coreml") / "model.mlpackage"
    info = export_coreml(tiny(), CONTRACT, path)
    assert info["spec_check"] == "passed" and info["compute_precision"] == "fp16"
    return path


def test_spec_carries_the_contract_and_a_flexible_batch(package: Path) -> None:
    spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
    assert coreml_spec_problems(spec, CONTRACT) == []
    assert json.loads(dict(spec.description.metadata.userDefined)[COREML_META_PREPROCESS]) == CONTRACT.to_dict()
    other = PreprocessContract(input_size=(16, 16), resize_size=16, class_names=("a", "b", "c"))
    problems = coreml_spec_problems(spec, other)
    assert any("shape ranges" in p for p in problems) and any("metadata" in p for p in problems)


def test_the_folder_artifact_is_hashed_whole(package: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(package, run / "model.mlpackage")
    entry = file_entry(run / "model.mlpackage")
    assert entry["file"] == "model.mlpackage" and entry["bytes"] > 0
    (run / "manifest.json").write_text(json.dumps({"exports": {"coreml": entry}}))
    (artifact,) = run_artifacts(run)
    assert (artifact.key, artifact.backend, artifact.precision) == ("coreml", "coreml", "fp16")
    weights = next(p for p in (run / "model.mlpackage").rglob("*") if p.is_file() and p.name == "weight.bin")
    weights.write_bytes(weights.read_bytes() + b"x")
    with pytest.raises(ToolkitError, match="model.mlpackage: its content differs from what manifest.json recorded"):
        run_artifacts(run)


@pytest.mark.skipif(platform.system() == "Darwin", reason="off macOS only: Core ML predicts on macOS")
def test_the_session_says_core_ml_runs_on_macos_only(package: Path) -> None:
    with pytest.raises(ToolkitError, match="Core ML predicts on macOS only"):
        open_classifier(package)
    with pytest.raises(ToolkitError, match="Core ML package not found"):
        CoreMLClassifier(package.with_name("missing.mlpackage"))


def test_int8_is_w8a8_calibrated_through_core_ml_and_refused_off_macos(tmp_path: Path) -> None:
    """The W8A8 recipe and its calibration data are checked here; the calibration itself runs Core ML, so off
    macOS `--int8 --format coreml` is refused before anything is written, and on a Mac it runs for real."""
    import numpy as np

    from export.coreml_export import int8_unavailable_reason, sample_data, w8a8_configs

    activations, weights = w8a8_configs()
    a, w = activations.global_config, weights.global_config
    assert a.mode == "LINEAR_SYMMETRIC" and (w.mode, str(w.granularity)) == (
        "LINEAR_SYMMETRIC",
        "CompressionGranularity.PER_CHANNEL",
    )
    assert w.weight_threshold == 0  # every weight, not only the large ones (coremltools' default skips < 2048)
    batches = [np.zeros((2, 3, 12, 12), np.float32), np.ones((3, 3, 12, 12), np.float32)]
    data = sample_data("pixels", batches)
    assert (
        len(data) == 5 and all(d["pixels"].shape == (1, 3, 12, 12) for d in data) and data[4]["pixels"][0, 0, 0, 0] == 1
    )
    if platform.system() != "Darwin":
        assert "macOS only" in (int8_unavailable_reason() or "")
        with pytest.raises(ToolkitError, match=r"--int8 --format coreml: Core ML INT8 .*\(macOS only\)"):
            export_coreml(tiny(), CONTRACT, tmp_path / "m.int8.mlpackage", calibration=batches)
        assert not (tmp_path / "m.int8.mlpackage").exists()
        return
    info = export_coreml(tiny(), CONTRACT, tmp_path / "m.int8.mlpackage", calibration=batches)  # pragma: macOS
    assert info["compute_precision"].startswith("int8")
    x = np.random.default_rng(0).standard_normal((4, 3, 12, 12)).astype(np.float32)
    with torch.no_grad():
        reference = tiny()(torch.from_numpy(x)).numpy()
    out = CoreMLClassifier(tmp_path / "m.int8.mlpackage").run(x)
    np.testing.assert_allclose(out, reference, atol=0.1 * np.abs(reference).max())
