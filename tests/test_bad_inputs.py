"""Bad inputs a user hands us: each exits non-zero with one clear line naming the culprit, no traceback and
no run directory left behind. One case per bug found; the file grows with them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import TINY_CLIP_SPEC, write_image_folder, write_recipe
from typer.testing import CliRunner

from runtime.errors import ToolkitError
from toolkit.cli import app
from toolkit.recipe import load_recipe

runner = CliRunner()


def fails_cleanly(args: list[str], out: Path, *named: str) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code != 0
    assert isinstance(res.exception, ToolkitError), repr(res.exception)  # the CLI prints it as one line
    for text in named:
        assert text in str(res.exception), (text, str(res.exception))
    assert not out.exists(), "a run directory was left behind"


def train(recipe: Path, out: Path) -> list[str]:
    return ["train", str(recipe), "--out", str(out)]


def test_an_empty_class_folder_is_refused(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "d", per_class=4)
    (data / "zebra").mkdir()
    fails_cleanly(train(write_recipe(tmp_path / "r.yaml", data), tmp_path / "run"), tmp_path / "run",
                  "['zebra'] have no usable image", str(data))  # fmt: skip


def test_a_single_class_is_refused(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "d", per_class=4)
    for extra in sorted(p for p in data.iterdir())[1:]:
        shutil.rmtree(extra)
    fails_cleanly(train(write_recipe(tmp_path / "r.yaml", data), tmp_path / "run"), tmp_path / "run",
                  "1 class(es)", "needs at least two")  # fmt: skip


def test_a_class_too_small_for_the_validation_split_is_refused(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "d", per_class=4)
    first = sorted(p for p in data.iterdir())[0]
    for image in sorted(first.iterdir())[1:]:
        image.unlink()
    fails_cleanly(train(write_recipe(tmp_path / "r.yaml", data), tmp_path / "run"), tmp_path / "run",
                  f"{first.name} (1 of 2)", "data.val_fraction")  # fmt: skip


@pytest.mark.parametrize("target", ["loop", "outside"])
def test_symlinked_folders_that_loop_or_leave_the_root_are_refused(tmp_path: Path, target: str) -> None:
    data = write_image_folder(tmp_path / "d", per_class=4)
    first = sorted(p for p in data.iterdir())[0]
    if target == "loop":
        os.symlink(first, first / "again")
    else:
        elsewhere = write_image_folder(tmp_path / "elsewhere", per_class=1)
        os.symlink(elsewhere, first / "more")
    expected = "a symlink loop" if target == "loop" else "a symlink out of the dataset root"
    fails_cleanly(train(write_recipe(tmp_path / "r.yaml", data), tmp_path / "run"), tmp_path / "run", expected,
                  "data.symlinks: follow_once")  # fmt: skip
    # With the flag, each real folder is read once: the loop adds nothing, the outside folder its 4 images.
    recipe = yaml.safe_load((tmp_path / "r.yaml").read_text())
    recipe["data"]["symlinks"] = "follow_once"
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    loaded = load_recipe(tmp_path / "r.yaml").data.open_train()
    assert len(loaded) == 16 + (0 if target == "loop" else 4)
    assert len({p.resolve() for p in loaded.paths}) == len(loaded)


def test_test_classes_the_training_set_lacks_are_named_with_a_suggestion(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "d", per_class=4)
    test = write_image_folder(tmp_path / "t", per_class=1)
    (test / "green").rename(test / "gren")
    recipe = yaml.safe_load(write_recipe(tmp_path / "r.yaml", data).read_text())
    recipe["data"]["test"] = {"kind": "imagefolder", "path": str(test)}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    fails_cleanly(train(tmp_path / "r.yaml", tmp_path / "run"), tmp_path / "run",
                  str(test), "['gren']", 'Did you mean "green"?', "the training set's classes")  # fmt: skip


def test_too_few_images_for_the_few_shot_selection_are_refused(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "d", per_class=4)
    recipe = yaml.safe_load(write_recipe(tmp_path / "r.yaml", data).read_text())
    recipe["train"].pop("augment")
    recipe["distill"] = {"method": "ce", "teacher": TINY_CLIP_SPEC, "shots": 5}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    fails_cleanly(["distill", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run")], tmp_path / "run",
                  "distill.shots 5 needs (5 per class)", "(3 of 5)")  # fmt: skip
