"""`toolkit run`: every step in one run directory, skipped when up to date, continued after a kill."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_CLIP_SPEC, write_image_folder, write_tiny_clip_config
from safetensors.torch import load_file
from typer.testing import CliRunner

import distill.engine
import toolkit.exporting
from runtime.errors import ToolkitError
from runtime.hashing import sha256_file
from toolkit.cli import app

runner = CliRunner()
ARTIFACTS = ("student.safetensors", "model.onnx", "model.int8.onnx")


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("pipeline")
    data = write_image_folder(tmp / "train", per_class=8, size=20)
    test = write_image_folder(tmp / "test", per_class=3, seed=1, size=20)
    recipe = {
        "name": "tiny_run",
        "data": {"train": {"kind": "imagefolder", "path": str(data)},
                 "test": {"kind": "imagefolder", "path": str(test)}, "val_fraction": 0.25},
        "preprocess": {"input_size": 16, "resize_size": 16},
        "student": {"name": "resnet18"},
        # fp32: PyTorch 2.14.1's CPU bf16 conv backward is not deterministic at 16 px (see conftest.write_recipe)
        "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 32, "optimizer": {"name": "adamw", "lr": 1e-3},
                  "precision": "fp32"},
        "distill": {"method": "kd", "teacher": TINY_CLIP_SPEC, "teacher_config": str(write_tiny_clip_config(tmp)),
                    "cache": {"crops": 2, "dir": str(tmp / "cache")}},
        "export": {"int8": True, "backends": ["onnxruntime"], "calib_size": 8, "held_out_images": 8},
        "bench": {"targets": ["ort-cpu-1t"], "min_duration": 0.05, "min_queries": 3, "warmup": 1},
    }  # fmt: skip
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
def test_run_makes_every_artifact_then_skips_and_continues_after_a_kill(recipe: Path, tmp_path: Path, monkeypatch):
    full = tmp_path / "full"
    res = runner.invoke(app, ["run", str(recipe), "--out", str(full)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "Report: " in res.output and "student top-1" in res.output and "teacher top-1" in res.output
    for name in (*ARTIFACTS, "report.html", "report.md", "bench/ort-cpu-1t.json", "pipeline.json"):
        assert (full / name).is_file(), name
    state = json.loads((full / "pipeline.json").read_text())
    assert list(state["steps"]) == ["distill", "export", "eval", "bench", "report"]
    report = json.loads((full / "report.json").read_text())
    assert [row["stage"] for row in report["ladder"]][:3] == ["teacher", "student", "onnx"]

    res = runner.invoke(app, ["run", str(recipe), "--out", str(full)])
    assert res.exit_code == 0 and res.output.count("up to date") == 5

    # Killed during training, right after a mid-epoch checkpoint: the rerun continues that stage from it.
    mid = tmp_path / "killed_in_training"
    real_checkpoint = distill.engine._Loop.checkpoint

    def checkpoint_then_die(self, epoch, steps_done, sums):  # noqa: ANN001, ANN202
        real_checkpoint(self, epoch, steps_done, sums)
        if steps_done is not None:
            raise KeyboardInterrupt

    monkeypatch.setattr(distill.engine._Loop, "checkpoint", checkpoint_then_die)
    every_step = ["--set", "train.checkpoint_every_steps=1"]
    res = runner.invoke(app, ["run", str(recipe), "--out", str(mid), *every_step])
    assert res.exit_code != 0 and not (mid / "student.safetensors").exists()
    monkeypatch.undo()
    res = runner.invoke(app, ["run", str(recipe), "--out", str(mid), *every_step])
    assert res.exit_code == 0, res.output
    assert "[distill] continuing" in res.output and "student resumed from" in res.output.replace("\n", "")
    for k, v in load_file(full / "student.safetensors").items():
        assert torch.equal(v, load_file(mid / "student.safetensors")[k]), k

    # Killed during export: the rerun skips distillation and ends with the same artifacts.
    killed = tmp_path / "killed"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(toolkit.exporting, "guarded_quantize", interrupted)
    res = runner.invoke(app, ["run", str(recipe), "--out", str(killed)])
    assert res.exit_code != 0 and (killed / "model.onnx").is_file() and not (killed / "model.int8.onnx").exists()
    student_before = sha256_file(killed / "student.safetensors")
    monkeypatch.undo()
    res = runner.invoke(app, ["run", str(recipe), "--out", str(killed)])
    assert res.exit_code == 0, res.output
    assert "[distill] up to date" in res.output and "[export] running" in res.output
    assert sha256_file(killed / "student.safetensors") == student_before
    for name in ARTIFACTS[1:]:  # the same exports as the uninterrupted run
        assert sha256_file(killed / name) == sha256_file(full / name), name
    # (safetensors orders its metadata keys differently per write, so the student is compared by content)
    assert load_file(killed / "student.safetensors").keys() == load_file(full / "student.safetensors").keys()
    for k, v in load_file(full / "student.safetensors").items():
        assert torch.equal(v, load_file(killed / "student.safetensors")[k]), k

    # A changed bench section reruns bench and report only.
    res = runner.invoke(app, ["run", str(recipe), "--out", str(killed), "--set", "bench.min_queries=4"])
    assert res.exit_code == 0
    assert "[export] up to date" in res.output and "[bench] running" in res.output


@pytest.mark.slow
def test_prune_section_prunes_the_distilled_student_and_ships_the_pruned_run(recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    prune = ["--set", "prune.macs=0.5", "--set", "prune.epochs=1", "--set", "prune.bn_images=16"]
    res = runner.invoke(app, ["run", str(recipe), "--out", str(out), *prune])
    assert res.exit_code == 0, res.output + repr(res.exception)
    state = json.loads((out / "pipeline.json").read_text())
    assert list(state["steps"]) == ["distill", "prune", "export", "eval", "bench", "report"]
    pruned = out / "pruned"
    assert json.loads((pruned / "metrics.json").read_text())["prune"]["macs_ratio"] <= 0.5
    for name in (*ARTIFACTS, "report.json", "bench/ort-cpu-1t.json"):
        assert (pruned / name).is_file() and not (out / name).exists() or name == "student.safetensors", name
    assert f"Report: {pruned}" in res.output.replace("\n", "")
    ladder = json.loads((pruned / "report.json").read_text())["ladder"]
    assert [row["stage"] for row in ladder][:4] == ["teacher", "unpruned", "student", "onnx"]
    assert all(row["available"] for row in ladder[:4]), ladder[:4]
    assert ladder[2]["label"].endswith("(pruned)") and ladder[2]["versus"] == "unpruned"

    # A changed prune budget reruns pruning and what follows; distillation is kept.
    res = runner.invoke(app, ["run", str(recipe), "--out", str(out), *prune, "--set", "prune.macs=0.6"])
    assert res.exit_code == 0, res.output
    assert "[distill] up to date" in res.output and "[prune] running" in res.output
    assert json.loads((pruned / "metrics.json").read_text())["prune"]["macs_ratio"] > 0.5


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("bench.targets=[ort-cpu-1x]", "bench.targets[0]: unknown target 'ort-cpu-1x'. Did you mean"),
        ("bench.targets=[openvino-cpu]", "add 'openvino' to export.backends"),
        ("bench.targets=[executorch-xnnpack-cpu]", "add 'executorch' to export.formats"),
        ("data.test=null", "data.test: `toolkit run` evaluates every artifact"),
        (("export.recover=auto", "export.int8=false"), "export.recover: --recover auto: recovers INT8 accuracy"),
        (("prune.macs=0.5", "prune.keep=[layer9]"), "prune.keep[0]: no layer 'layer9' in resnet18. Did you mean"),
        (("prune.macs=0.5", "data.val_fraction=0"), "prune: recovery selects on the validation split"),
        ("prune.macs=0.02", "prune: --macs 0.02: reached only"),  # the per-layer cap (0.75) cannot get there
        ("export.opset=17", "export.opset: --opset 17: not supported; use 18-23"),
    ],
)
def test_run_checks_targets_and_test_data_before_training(recipe: Path, tmp_path: Path, override, expected) -> None:
    sets = [arg for o in ((override,) if isinstance(override, str) else override) for arg in ("--set", o)]
    res = runner.invoke(app, ["run", str(recipe), "--out", str(tmp_path / "r"), *sets])
    assert isinstance(res.exception, ToolkitError) and expected in str(res.exception)
    assert not (tmp_path / "r").exists()
