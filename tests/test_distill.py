"""`toolkit distill` and the method registry: every method end to end (2 steps, tiny teacher), the
objectives' wiring, and recipe errors caught before any training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import (
    TINY_CLIP_SPEC,
    TINY_CLIP_STUDENT_SPEC,
    write_image_folder,
    write_tiny_clip_config,
    write_tiny_clip_student_config,
)
from pydantic import ValidationError
from typer.testing import CliRunner

from distill.config import DistillConfig
from distill.losses.kd import kd_loss
from distill.losses.nsd import nsd_sample_neighbors
from distill.losses.vl2lite import vl2lite_loss
from distill.methods.plan import plan_distillation
from distill.methods.registry import get_method, list_methods
from distill.objectives import BaseLossObjective, DaitStudent, split_forward
from distill.students import create_student
from distill.weights import load_state_dict
from runtime.errors import ToolkitError
from toolkit.cli import app
from toolkit.recipe import Recipe, load_recipe, recipe_to_yaml

runner = CliRunner()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("distill")
    return {
        "tmp": tmp,
        "config": write_tiny_clip_config(tmp),
        "student_config": write_tiny_clip_student_config(tmp),
        "data": write_image_folder(tmp / "train", per_class=6, size=20),
        "test": write_image_folder(tmp / "test", per_class=2, seed=1, size=20),
    }


def distill_recipe(ws: dict[str, Path], path: Path, method: str, **distill: object) -> Path:
    recipe = {
        "name": "tiny_distill",
        "seed": 0,
        "data": {
            "train": {"kind": "imagefolder", "path": str(ws["data"])},
            "test": {"kind": "imagefolder", "path": str(ws["test"])},
            "val_fraction": 0.25,
        },
        "preprocess": {"input_size": 16, "resize_size": 16},
        "student": {"name": "resnet18"},
        "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 32, "optimizer": {"name": "adamw", "lr": 1e-3}},
        "distill": {
            "method": method,
            "teacher": TINY_CLIP_SPEC,
            "teacher_config": str(ws["config"]),
            "template": "a photo of a {} square.",
            "cache": {"crops": 2, "dir": str(ws["tmp"] / "cache")},
            **distill,
        },
    }
    if method in list_methods() and get_method(method).student_kind == "vlm":  # brings its own preprocessing
        recipe["student"] = {"name": TINY_CLIP_STUDENT_SPEC, "config": str(ws["student_config"])}
        del recipe["preprocess"]
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _student_for(ws: dict[str, Path], method: str) -> torch.nn.Module:
    if get_method(method).student_kind == "vlm":
        return create_student(TINY_CLIP_STUDENT_SPEC, 4, config=ws["student_config"])
    return create_student("resnet18", 4)


def _extra_for(method: str) -> dict:
    return {"lavid": {"targets": "minilm", "weight": 5.0}} if method == "lavid" else {}


def _params_for(method: str) -> dict:
    return {"pand": {"coop_epochs": 1, "coop_n_ctx": 2}, "dait_f": {"it_pretrained": False, "it_model": "resnet18"},
            "dait_l": {"it_pretrained": False, "it_model": "resnet18"},
            "fdbpl": {"fdbpl_topk": 3}}.get(method, {})  # fmt: skip


@pytest.mark.parametrize("method", list_methods())
def test_every_method_runs_end_to_end(workspace, tmp_path: Path, method: str) -> None:
    recipe = distill_recipe(workspace, tmp_path / "r.yaml", method, params=_params_for(method), **_extra_for(method))
    out = tmp_path / "run"
    res = runner.invoke(app, ["distill", str(recipe), "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == method and 0.0 <= metrics["test_top1"] <= 1.0
    assert list(metrics["stages"]) == get_method(method).stage_names
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in rows} == set(get_method(method).stage_names)
    student_rows = [r for r in rows if r["stage"] == "student"]
    assert all("val_top1" in r and r["train_loss"] == r["train_loss"] for r in student_rows)
    # Only the student is saved as the student: no alignment MLP, adapter or teacher tensor in it.
    state = load_state_dict(out / "student.safetensors")
    assert state.keys() == _student_for(workspace, method).state_dict().keys()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"]["name"] == method and manifest["status"] == "trained"
    if method == "pand":
        assert (out / "anchors.safetensors").is_file()
    if method.startswith("dait"):
        assert (out / "intermediate_teacher.safetensors").is_file()
    # `toolkit eval` and export read a distilled run like a trained one.
    assert runner.invoke(app, ["eval", str(out), "--data", str(workspace["test"])]).exit_code == 0


def test_the_papers_augmentation_through_the_cache(workspace, tmp_path: Path) -> None:
    cache = {"crops": 2, "dir": str(workspace["tmp"] / "cache_vl2lite"), "pipeline": "vl2lite", "resize": 24,
             "size": 20}  # fmt: skip
    recipe = distill_recipe(workspace, tmp_path / "r.yaml", "kd", cache=cache)
    res = runner.invoke(app, ["distill", str(recipe), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    key = json.loads((tmp_path / "run" / "manifest.json").read_text())["teacher"]["cache_key"]
    assert key["recipe"]["pipeline"] == "vl2lite" and key["recipe"]["size"] == 20
    # Regression: the saved config.yaml (every key, defaults too) must load again (export, eval, resume read it).
    for run in (tmp_path / "run",):
        Recipe.model_validate(yaml.safe_load((run / "config.yaml").read_text()))
    Recipe.model_validate(yaml.safe_load(recipe_to_yaml(load_recipe(distill_recipe(workspace, tmp_path / "c.yaml",
                                                                                   "kd")))))  # fmt: skip
    for bad, message in (
        ({"pipeline": "vl2lite", "scale": [0.5, 1.0]}, "scale is not used by pipeline 'vl2lite'"),
        ({"resize": 300}, "resize is not used by pipeline 'crop'"),
        ({"pipeline": "vl2lite", "resize": 20, "size": 24}, "size 24 must be <= resize 20"),
    ):
        with pytest.raises(ValidationError, match=message):
            DistillConfig(method="kd", cache=bad)


def test_paper_protocol_selects_every_stage_on_the_test_set(workspace, tmp_path: Path) -> None:
    import numpy as np

    recipe = distill_recipe(workspace, tmp_path / "r.yaml", "kd")
    raw = yaml.safe_load(recipe.read_text())
    raw["train"].update(select_on="test", select="last")
    recipe.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    res = runner.invoke(app, ["distill", str(recipe), "--out", str(run)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "paper protocol: selected on test" in res.output
    assert json.loads((run / "metrics.json").read_text())["selected_on"] == "test"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (logits,) = [np.load(p) for p in (run / "eval").glob("*/logits.npy")]
    (labels,) = [np.load(p) for p in (run / "eval").glob("*/labels.npy")]
    ce = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels).long()).item()
    assert rows[-1]["val_loss"] == pytest.approx(ce, rel=1e-4, abs=1e-5)  # scored on the test images


def test_psc_on_eval_features_as_pands_code(workspace, tmp_path: Path) -> None:
    from distill.teachers.coop import load_anchors

    runs = {}
    for features in ("crops", "eval"):
        params = {"coop_epochs": 2, "coop_n_ctx": 2, "coop_features": features}
        recipe = distill_recipe(workspace, tmp_path / f"{features}.yaml", "pand", params=params,
                                stages=[{"name": "psc"}, {"name": "student", "epochs": 1}])  # fmt: skip
        res = runner.invoke(app, ["distill", str(recipe), "--out", str(tmp_path / features)])
        assert res.exit_code == 0, res.output + repr(res.exception)
        runs[features] = load_anchors(tmp_path / features / "anchors.safetensors")
    assert runs["eval"][1]["coop"]["features"] == "eval" and "eval features" in runs["eval"][1]["source"]
    assert runs["crops"][1]["coop"]["features"] == "crops"
    assert not torch.allclose(runs["eval"][0], runs["crops"][0])  # other training data, other prompt


def test_a_later_run_reuses_the_cache_and_a_trained_intermediate_teacher(workspace, tmp_path: Path) -> None:
    first = tmp_path / "first"
    recipe = distill_recipe(workspace, tmp_path / "a.yaml", "dait_f", params=_params_for("dait_f"))
    assert runner.invoke(app, ["distill", str(recipe), "--out", str(first)]).exit_code == 0
    it = first / "intermediate_teacher.safetensors"
    recipe = distill_recipe(workspace, tmp_path / "b.yaml", "dait_l", params=_params_for("dait_l"),
                            intermediate_teacher=str(it), stages=[{"name": "student"}])  # fmt: skip
    res = runner.invoke(app, ["distill", str(recipe), "--out", str(tmp_path / "second")])
    assert res.exit_code == 0, res.output
    assert "teacher cache: reusing" in res.output
    assert list(json.loads((tmp_path / "second" / "metrics.json").read_text())["stages"]) == ["student"]
    # A toolkit run's student as DAIT's second-stage teacher (a checkpoint teacher: run:<dir>).
    recipe = distill_recipe(workspace, tmp_path / "c.yaml", "dait_l", params=_params_for("dait_l"),
                            intermediate_teacher=f"run:{first}", stages=[{"name": "student"}])  # fmt: skip
    res = runner.invoke(app, ["distill", str(recipe), "--out", str(tmp_path / "third")])
    assert res.exit_code == 0, res.output + repr(res.exception)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"method": "pnad"}, 'distill.method: unknown method \'pnad\'. Did you mean "pand"?'),
        ({"teacher": "openclp:ViT-B-32/openai"}, "distill.teacher: unknown teacher"),
        ({"params": {"nsd_lamda": 0.5}}, 'distill.params.nsd_lamda: not a hyperparameter of \'pand\'.'),
        ({"params": {"nsd_k": 2.5}}, "distill.params.nsd_k: expected a whole number"),
        ({"params": {"nsd_group": 0}}, "distill.params.nsd_group: expected a whole number >= 1 or null"),
        ({"params": {"nsd_group": 8.5}}, "distill.params.nsd_group: expected a whole number >= 1 or null"),
        ({"params": {"nsd_mode": "margin"}}, "distill.params.nsd_mode: 'margin' is not one of"),
        ({"params": {"coop_features": "val"}}, "distill.params.coop_features: 'val' is not one of"),
        ({"stages": [{"name": "student"}, {"name": "psc"}]}, "order ['student', 'psc'] is inconsistent"),
        ({"stages": [{"name": "student"}]}, "stage 'student' needs the output of stage 'psc'"),
        ({"stages": [{"name": "psk"}, {"name": "student"}]}, "distill.stages[0].name: 'pand' has no stage 'psk'"),
        ({"stages": [{"name": "psc"}]}, "must end with 'student'"),
    ],
)  # fmt: skip
def test_bad_recipes_fail_before_training_naming_the_key(workspace, tmp_path: Path, change, expected) -> None:
    change = dict(change)
    recipe = distill_recipe(workspace, tmp_path / "r.yaml", change.pop("method", "pand"), **change)
    out = tmp_path / "run"
    res = runner.invoke(app, ["distill", str(recipe), "--out", str(out)])
    assert res.exit_code != 0 and isinstance(res.exception, ToolkitError)
    assert expected in str(res.exception) and str(recipe) in str(res.exception)
    assert not out.exists()


@pytest.mark.parametrize(
    ("recipe_change", "expected"),
    [
        ({"class_names": ["red", "green", "blue", "purple"]}, "distill.class_names"),
        ({"class_names": ["red"]}, "1 vs 4 classes"),
    ],
)
def test_class_names_must_match_the_dataset(workspace, tmp_path: Path, recipe_change, expected) -> None:
    recipe = distill_recipe(workspace, tmp_path / "r.yaml", "kd", **recipe_change)
    out = tmp_path / "run"
    res = runner.invoke(app, ["distill", str(recipe), "--out", str(out)])
    assert isinstance(res.exception, ToolkitError) and expected in str(res.exception)
    assert not out.exists()


def test_unknown_student_fails_before_training(workspace, tmp_path: Path) -> None:
    recipe = distill_recipe(workspace, tmp_path / "r.yaml", "kd")
    res = runner.invoke(app, ["distill", str(recipe), "--out", str(tmp_path / "run"), "--set", "student.name=resnet1"])
    assert isinstance(res.exception, ToolkitError) and "student.name 'resnet1'" in str(res.exception)
    assert not (tmp_path / "run").exists()


def test_supplying_an_output_and_running_its_stage_is_refused() -> None:
    cfg = DistillConfig(method="pand", anchors="a.safetensors")
    with pytest.raises(ToolkitError, match="distill.anchors is given but stage 'psc'"):
        plan_distillation(cfg)
    assert plan_distillation(DistillConfig(method="pand", anchors="a.safetensors", stages=[{"name": "student"}]))


def test_methods_command_lists_every_method_and_describes_stages() -> None:
    res = runner.invoke(app, ["methods"])
    assert res.exit_code == 0
    for name in list_methods():
        assert name in res.output
    res = runner.invoke(app, ["methods", "dait_f"])
    assert res.exit_code == 0 and "stage intermediate" in res.output and "1x1 conv adapter" in res.output
    res = runner.invoke(app, ["methods", "dait"])
    assert isinstance(res.exception, ToolkitError) and "Did you mean" in str(res.exception)


@pytest.mark.parametrize("group", [None, 4])
def test_base_objective_is_the_base_loss_plus_weighted_nsd(group: int | None) -> None:
    torch.manual_seed(0)
    net = create_student("resnet18", 5)
    anchors = torch.nn.functional.normalize(torch.randn(5, 12), dim=-1)
    params = {**get_method("pand").params, "nsd_lambda": 0.5, "nsd_group": group}
    terms = get_method("pand").stage("student").losses
    obj = BaseLossObjective(net, 10, terms, params, anchors).eval()
    x, y, emb = torch.randn(8, 3, 16, 16), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2]), torch.randn(8, 12)
    out = obj(x, y, emb, 4)
    _, pooled, logits = split_forward(net, x)
    base = vl2lite_loss(pooled, logits, y, emb, anchors, obj.phi_image(emb), obj.phi_text(anchors), 4 / 80,
                        reduction="pand")  # fmt: skip
    cos = torch.nn.functional.normalize(emb, dim=-1) @ anchors.T
    nsd = nsd_sample_neighbors(params["nsd_scale"] * cos, logits, group=group)
    torch.testing.assert_close(out.total, base.total + 0.5 * nsd)
    if group is not None:  # the grouping reaches the loss: the whole-batch NSD is another value
        assert not torch.allclose(nsd, nsd_sample_neighbors(params["nsd_scale"] * cos, logits))


def test_dait_student_keeps_the_intermediate_teacher_frozen() -> None:
    torch.manual_seed(0)
    student, it = create_student("resnet18", 3), create_student("mobilenetv2_100", 3)
    before = {k: v.clone() for k, v in it.state_dict().items()}
    for variant in ("features", "logits"):
        method = get_method("dait_f" if variant == "features" else "dait_l")
        obj = DaitStudent(student, 4, method.stage("student").losses, method.params, it, variant).train()
        assert not it.training and not any(p.requires_grad for p in it.parameters())
        x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
        out = obj(x, y, torch.zeros(4, 0), 0)  # alpha(0) = 0: only the matching term
        if variant == "logits":
            with torch.no_grad():
                expected = kd_loss(student(x), it(x), 2.0)
            torch.testing.assert_close(out.terms["kd"], expected, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(out.total, out.terms["kd"])
        out.total.backward()
        torch.optim.SGD([p for p in obj.parameters() if p.requires_grad], lr=0.1).step()
    for k, v in it.state_dict().items():
        assert torch.equal(v, before[k]), k


# Hand-computed weights at epoch 4 of 10, default params: alpha(4) = 4 / (8 * 10) = 0.05 (VL2Lite's k = 1/(8E)).
EXPECTED_WEIGHTS = {
    ("ce", "student"): {"cls": 1.0},
    ("kd", "student"): {"cls": 0.5, "kd": 0.5},
    ("rkd", "student"): {"cls": 1.0, "rkd_distance": 25.0, "rkd_angle": 50.0},
    ("vl2lite", "student"): {"cls": 0.05, "vis": 0.475, "txt": 0.475},
    ("pand", "psc"): {"coop_ce": 1.0},
    ("pand", "student"): {"cls": 0.05, "vis": 0.475, "txt": 0.475, "nsd": 1.0},
    ("dait_f", "intermediate"): {"cls": 0.05, "vis": 0.475, "txt": 0.475},
    ("dait_f", "student"): {"cls": 0.05, "sra": 0.95},
    ("dait_l", "intermediate"): {"cls": 0.05, "vis": 0.475, "txt": 0.475},
    ("dait_l", "student"): {"cls": 0.05, "kd": 0.95},
    ("lavid", "student"): {"cls": 1.0, "lavid": 40.0},
    ("fdbpl", "student"): {"pos": 1.0, "neg": 1.0, "diff1": 0.001, "diff2": 0.1},
}


@pytest.mark.parametrize("method", list_methods())
def test_every_stage_declares_its_weights_as_functions_of_the_epoch(method: str) -> None:
    m = get_method(method)
    params = {**m.params, "lavid_weight": 40.0}
    for stage in m.stages:
        got = {t.name: t.weight(4, 10, params) for t in stage.losses}
        expected = EXPECTED_WEIGHTS[(method, stage.name)]
        assert got.keys() == expected.keys(), (method, stage.name)
        for name, value in expected.items():
            assert got[name] == pytest.approx(value), (method, stage.name, name)
