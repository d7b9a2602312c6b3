"""Checkpoint teachers (issue 15): a toolkit run (`run:<dir>`) or a timm model with a weights file
(`timm:<model>@<file>`) as the teacher of KD and RKD, through the teacher cache; their errors before training."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import write_image_folder, write_recipe
from typer.testing import CliRunner

from distill.students import create_student
from distill.teachers.classifier import run_teacher
from distill.weights import save_state_dict
from runtime.errors import ToolkitError
from toolkit.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("ckpt_teacher")
    data = write_image_folder(tmp / "train", per_class=8)
    test = write_image_folder(tmp / "test", per_class=3, seed=1)
    recipe = write_recipe(tmp / "t.yaml", data, epochs=2)
    raw = yaml.safe_load(recipe.read_text())
    raw["data"]["test"] = {"kind": "imagefolder", "path": str(test)}
    recipe.write_text(yaml.safe_dump(raw))
    res = runner.invoke(app, ["train", str(recipe), "--out", str(tmp / "teacher")])
    assert res.exit_code == 0, res.output
    return {"tmp": tmp, "data": data, "test": test, "run": tmp / "teacher", "recipe": recipe}


def kd_recipe(ws: dict[str, Path], path: Path, method: str, teacher: str, data: Path | None = None) -> Path:
    raw = yaml.safe_load(ws["recipe"].read_text())
    raw["name"] = "student"
    del raw["train"]["augment"]  # distillation trains on the cache's crops
    if data is not None:
        raw["data"]["train"]["path"] = str(data)
        del raw["data"]["test"]
    raw["distill"] = {"method": method, "teacher": teacher, "cache": {"crops": 2, "dir": str(path.parent / "cache")}}
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_classifier_teachers_head_on_its_feature_is_its_forward(teacher_run) -> None:
    teacher = run_teacher(str(teacher_run["run"]))
    assert teacher.kind == "classifier" and teacher.class_names == ["blue", "green", "red", "yellow"]
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        emb = teacher.encode_image(x)
        torch.testing.assert_close(teacher.logit_head(None)(emb), teacher.net(x))
    assert emb.shape == (3, teacher.embed_dim)


@pytest.mark.parametrize("method", ["kd", "rkd"])
def test_kd_and_rkd_from_a_toolkit_run(teacher_run, tmp_path: Path, method: str) -> None:
    recipe = kd_recipe(teacher_run, tmp_path / "r.yaml", method, f"run:{teacher_run['run']}")
    run = tmp_path / "run"
    res = runner.invoke(app, ["distill", str(recipe), "--out", str(run)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["teacher"]["spec"] == f"run:{teacher_run['run']}"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["train_loss"]) for r in rows)
    if method == "kd":  # the KD target is the teacher run's own logits on the crop the student sees
        from rich.console import Console

        from distill.teacher_cache import TeacherCache
        from toolkit.recipe import Recipe
        from toolkit.splits import recipe_splits

        cache = TeacherCache(Path(manifest["teacher"]["cache"]))
        teacher = run_teacher(str(teacher_run["run"]))
        train = recipe_splits(Recipe.model_validate(yaml.safe_load((run / "config.yaml").read_text())),
                              Console(quiet=True)).train  # fmt: skip
        for i, c in ((0, 1), (len(train) - 1, 0)):
            x = torch.from_numpy(cache.view(train.image(i), i, c, teacher.contract))[None]
            stored = torch.from_numpy(cache.record(i, c)[2].astype(np.float32))[None]
            with torch.no_grad():
                torch.testing.assert_close(teacher.logit_head(None)(stored), teacher.net(x), rtol=2e-2, atol=2e-2)


def test_the_teachers_top1_for_the_ladder(teacher_run) -> None:
    res = runner.invoke(app, ["teacher", "zeroshot", "--teacher", f"run:{teacher_run['run']}",
                              "--data", str(teacher_run["test"]), "--backend", "torch"])  # fmt: skip
    assert res.exit_code == 0, res.output + repr(res.exception)
    expected = json.loads((teacher_run["run"] / "metrics.json").read_text())["test_top1"]
    text = " ".join(res.output.split())
    assert f"top-1 {expected:.4f} on 12 images" in text and "classification layer" in text


def test_timm_model_with_a_weights_file(teacher_run, tmp_path: Path) -> None:
    weights = tmp_path / "teacher.safetensors"
    shutil.copy(teacher_run["run"] / "student.safetensors", weights)
    recipe = kd_recipe(teacher_run, tmp_path / "r.yaml", "kd", f"timm:resnet18@{weights}")
    res = runner.invoke(app, ["distill", str(recipe), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    key = json.loads((tmp_path / "run" / "manifest.json").read_text())["teacher"]["cache_key"]
    assert key["teacher_input"]["input_size"] == [224, 224]  # timm's own preprocessing for resnet18


def test_bad_checkpoint_teachers_fail_before_training(teacher_run, tmp_path: Path) -> None:
    three = tmp_path / "three"
    shutil.copytree(teacher_run["data"], three)
    shutil.rmtree(three / "yellow")
    other = create_student("resnet18", 5)
    save_state_dict(tmp_path / "five.safetensors", other.state_dict(), {})
    cases = [
        (kd_recipe(teacher_run, tmp_path / "a.yaml", "kd", f"run:{teacher_run['run']}", data=three),
         r"trained on \['blue', 'green', 'red', 'yellow'\], the dataset has \['blue', 'green', 'red'\]"),
        (kd_recipe(teacher_run, tmp_path / "b.yaml", "vl2lite", f"run:{teacher_run['run']}"),
         "is an image classifier; method 'vl2lite' needs a vision-language teacher"),
        (kd_recipe(teacher_run, tmp_path / "c.yaml", "kd", f"run:{tmp_path / 'nowhere'}"), "no such run directory"),
        (kd_recipe(teacher_run, tmp_path / "d.yaml", "kd", "timm:resnt18@x.safetensors"), 'Did you mean "resnet18"'),
        (kd_recipe(teacher_run, tmp_path / "e.yaml", "kd", f"timm:resnet18@{tmp_path / 'no.safetensors'}"),
         "weights file .* not found"),
        (kd_recipe(teacher_run, tmp_path / "f.yaml", "kd", f"timm:resnet18@{tmp_path / 'five.safetensors'}"),
         "does not fit resnet18 with 4 classes"),
    ]  # fmt: skip
    for recipe, message in cases:
        run = tmp_path / f"run_{recipe.stem}"
        res = runner.invoke(app, ["distill", str(recipe), "--out", str(run)])
        assert isinstance(res.exception, ToolkitError), res.output + repr(res.exception)
        assert re.search(message, str(res.exception)), str(res.exception)
        assert not run.exists()
