"""Recipe loading: typed validation, errors that name file and key with "did you mean", CLI overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO, write_recipe

from runtime.errors import ToolkitError
from toolkit.recipe import Recipe, load_recipe, parse_override, recipe_to_yaml


def bad_recipe(tmp_path: Path, edit: dict) -> Path:
    path = write_recipe(tmp_path / "r.yaml", tmp_path / "data")
    raw = yaml.safe_load(path.read_text())
    for dotted, value in edit.items():
        node = raw
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    "edit,expected",
    [
        ({"train.epocs": 3}, 'train.epocs: unknown key. Did you mean "epochs"?'),
        ({"studnet": {"name": "resnet18"}}, 'studnet: unknown key. Did you mean "student"?'),
        ({"train.optimizer.momentun": 0.8}, 'train.optimizer.momentun: unknown key. Did you mean "momentum"?'),
        ({"data.train.kind": "imagefoldr"}, "data.train.kind: 'imagefoldr' is not one of"),
        ({"train.optimizer.name": "adamm"}, 'Did you mean "adamw"?'),
        ({"train.batch_size": "lots"}, "train.batch_size: Input should be a valid integer"),
        ({"train.epochs": -1}, "train.epochs: Input should be greater than 0"),
        ({"data.val_fraction": 0.9}, "data.val_fraction: Input should be less than or equal to 0.5"),
        ({"train.augment.random_resized_crop": [0.9, 0.1]}, "must satisfy 0 < min <= max <= 1"),
    ],
)
def test_bad_recipe_names_file_and_key(tmp_path: Path, edit: dict, expected: str) -> None:
    path = bad_recipe(tmp_path, edit)
    with pytest.raises(ToolkitError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert str(path) in msg and expected in msg


def test_missing_required_values(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("seed: 1\n")
    with pytest.raises(ToolkitError) as err:
        load_recipe(path)
    assert "name: required value is missing" in str(err.value)
    assert "data: required value is missing" in str(err.value)


@pytest.mark.parametrize("text,pattern", [("a: [1, 2\n", "not valid YAML"), ("- 1\n- 2\n", "must be a YAML mapping")])
def test_unparseable_recipe(tmp_path: Path, text: str, pattern: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ToolkitError, match=pattern):
        load_recipe(path)


def test_recipe_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ToolkitError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_overrides_take_precedence_and_are_validated(tmp_path: Path) -> None:
    path = write_recipe(tmp_path / "r.yaml", tmp_path / "data")
    r = load_recipe(path, ["train.epochs=7", "train.optimizer.lr=0.5", "train.ema.enabled=true", "seed=3"])
    assert (r.train.epochs, r.train.optimizer.lr, r.train.ema.enabled, r.seed) == (7, 0.5, True, 3)
    with pytest.raises(ToolkitError) as err:
        load_recipe(path, ["train.optimiser.lr=0.5"])
    assert "with overrides train.optimiser.lr=0.5" in str(err.value) and 'Did you mean "optimizer"?' in str(err.value)
    with pytest.raises(ToolkitError, match="expected KEY=VALUE"):
        parse_override("train.epochs")


def test_resolved_defaults_follow_student(tmp_path: Path) -> None:
    path = bad_recipe(tmp_path, {"student.name": "efficientnet_lite0", "preprocess": {"input_size": 224}})
    r = load_recipe(path)
    assert r.preprocess.mean == (0.5, 0.5, 0.5) and r.preprocess.resize_size == 256
    assert r.preprocess.input_size == (224, 224)
    again = Recipe.model_validate(yaml.safe_load(recipe_to_yaml(r)))
    assert again == r  # the saved resolved config reloads to the same recipe


@pytest.mark.parametrize("name", ["", "resnet_18"])
def test_an_unknown_student_names_the_recipe_file(tmp_path: Path, name: str) -> None:
    """Regression (found by the recipe-mutation property test): the student lookup's error lacked the file."""
    path = bad_recipe(tmp_path, {"student.name": name})
    with pytest.raises(ToolkitError, match=f"^{path}: student.name '{name}' is neither a registered student"):
        load_recipe(path)


@pytest.mark.parametrize(
    "recipe", sorted((REPO / "recipes").glob("*.yaml")) + [REPO / "toolkit" / "recipes" / "demo.yaml"]
)
def test_shipped_recipes_validate(recipe: Path) -> None:
    assert load_recipe(recipe).name


CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
# Every paper recipe's protocol against methods-spec's description of the released code (or, for DAIT, which
# released none, of the paper and VL2Lite's code): the switches of issue 15, each checked where it applies.
PAPER_PROTOCOL: dict[str, dict[str, object]] = {
    "cub200_vl2lite_paper": {
        "data.val_fraction": 0.0,
        "train.select_on": "test",
        "train.select": "best",
        "train.epochs": 300,
        "train.batch_size": 512,
        "train.optimizer.name": "adamw",
        "train.optimizer.lr": 1e-4,
        "train.optimizer.weight_decay": 0.0,
        "train.schedule.name": "step",
        "train.schedule.step_epochs": 30,
        "train.schedule.gamma": 0.5,
        "student.name": "resnet18.tv_in1k",
        "distill.cache.pipeline": "vl2lite",
        "distill.cache.resize": 256,
        "distill.cache.size": 224,
        "distill.cache.teacher_input_size": 224,
        "preprocess.mean": CLIP[0],
        "preprocess.std": CLIP[1],
        "preprocess.resize_mode": "squash",
        "distill.template": "a photo of {}, a type of bird",
    },
    "cub200_pand_paper": {
        "data.val_fraction": 0.0,
        "train.select_on": "test",
        "train.epochs": 300,
        "train.batch_size": 128,
        "train.optimizer.decay_all": True,
        "student.name": "resnet18.tv_in1k",
        "distill.cache.pipeline": "vl2lite",
        "distill.cache.teacher_input_size": 224,
        "preprocess.mean": CLIP[0],
        "preprocess.std": CLIP[1],
        "distill.params.nsd_group": 32,
        "distill.params.coop_features": "eval",
        "distill.params.coop_epochs": 200,
    },
    "cub200_dait_paper": {
        "data.val_fraction": 0.0,
        "train.select_on": "test",
        "train.epochs": 100,
        "train.batch_size": 32,
        "train.optimizer.name": "adamw",
        "train.optimizer.lr": 1e-4,
        "train.optimizer.weight_decay": 1e-4,
        "train.optimizer.decay_all": True,
        "train.schedule.name": "step",
        "train.schedule.step_epochs": 30,
        "student.name": "resnet18.tv_in1k",
        "distill.params.it_model": "regnety_016.tv2_in1k",
        "distill.params.tau": 2.0,
        "distill.cache.pipeline": "vl2lite",
        "distill.cache.teacher_input_size": 224,
        "preprocess.mean": CLIP[0],
        "preprocess.input_size": (224, 224),
    },
    "cub200_lavid_paper": {
        "data.val_fraction": 0.0,
        "train.select_on": "test",
        "train.select_metric": "val_loss",
        "train.val_every_epochs": 5,
        "train.epochs": 240,
        "train.batch_size": 16,
        "train.optimizer.name": "sgd",
        "train.optimizer.lr": 0.01,
        "train.optimizer.momentum": 0.9,
        "train.optimizer.weight_decay": 5e-4,
        "train.optimizer.decay_all": True,
        "train.schedule.name": "multistep",
        "train.schedule.milestones": [150, 180, 210],
        "train.schedule.gamma": 0.1,
        "train.precision": "bf16",
        "student.name": "resnet18",
        "student.pretrained": False,
        "distill.teacher": None,
        "distill.cache.scale": (0.08, 1.0),
        "distill.cache.hflip": 0.5,
        "preprocess.resize_size": 256,
        "preprocess.input_size": (224, 224),
        "distill.lavid.weight": 40.0,
    },
}


@pytest.mark.parametrize("name", sorted(PAPER_PROTOCOL))
def test_paper_recipes_set_the_released_codes_protocol(name: str) -> None:
    recipe = load_recipe(REPO / "recipes" / f"{name}.yaml")
    for dotted, expected in PAPER_PROTOCOL[name].items():
        node: object = recipe
        for part in dotted.split("."):
            node = node[part] if isinstance(node, dict) else getattr(node, part)
        value = list(node) if isinstance(node, list) else node
        assert value == expected, f"{name}: {dotted} is {node!r}, the paper protocol has {expected!r}"
