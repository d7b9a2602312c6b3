"""Structured pruning: budgets met, channel counts rounded, per-layer cap, kept layers whole, the pruned shapes
loading back through the student registry; the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_image_folder, write_recipe
from torch import nn
from typer.testing import CliRunner

from distill.pruning import (
    apply_architecture,
    architecture,
    count,
    prune_channels,
    read_architecture,
    recalibrate_batchnorm,
)
from distill.students import create_student, list_students
from runtime.classifier import OnnxClassifier
from runtime.errors import ToolkitError
from toolkit.cli import app

SIZE = (32, 32)


def convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


@pytest.mark.parametrize("name", list_students())
def test_macs_budget_rounding_cap_and_reload(name: str) -> None:
    torch.manual_seed(0)
    model = create_student(name, 5)
    before = {n: m.out_channels for n, m in convs(model).items()}
    result = prune_channels(model, SIZE, macs=0.5, round_to=8, max_layer_ratio=0.6)
    assert result.macs_after <= 0.5 * result.macs_before and result.params_after < result.params_before
    assert count(model, SIZE) == (result.macs_after, result.params_after)
    for n, m in convs(model).items():
        if m.out_channels != before[n]:
            assert m.out_channels % 8 == 0, (n, m.out_channels)
            assert m.out_channels >= (1 - 0.6) * before[n] - 8, (n, before[n], m.out_channels)
    model.eval()
    x = torch.randn(2, 3, *SIZE)
    fresh = apply_architecture(create_student(name, 5), json.loads(json.dumps(architecture(model))))
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh.eval()(x), model(x))
    assert fresh.num_features == fresh.get_classifier().in_features


def test_params_budget_global_ranking_and_kept_layers() -> None:
    torch.manual_seed(0)
    model = create_student("resnet18", 5)
    result = prune_channels(model, SIZE, params=0.4, global_pruning=True, keep=("layer1.0.conv1",))
    assert result.params_after <= 0.4 * result.params_before
    assert model.layer1[0].conv1.out_channels == 64


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"macs": 0.0}, "strictly between 0 and 1"),
        ({"macs": 1.5}, "strictly between 0 and 1"),
        ({"macs": 0.5, "params": 0.5}, "exactly one budget"),
        ({}, "exactly one budget"),
        ({"macs": 0.5, "keep": ("layer1.0.convv",)}, 'no such layer in the student. Did you mean "layer1.0.conv'),
        ({"macs": 0.5, "max_layer_ratio": 1.0}, "--max-layer-ratio 1.0"),
        ({"macs": 0.02, "max_layer_ratio": 0.3, "steps": 6}, "reached only"),
    ],
)
def test_bad_pruning_requests_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ToolkitError, match=message.replace("(", r"\(").replace("?", r"\?").replace(".", r"\.")):
        prune_channels(create_student("resnet18", 5), SIZE, **kwargs)


def test_a_model_that_cannot_be_traced_is_named() -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8, 2)

        def get_classifier(self) -> nn.Module:
            return self.fc

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("data-dependent control flow")

    with pytest.raises(ToolkitError, match="cannot trace this student"):
        prune_channels(Broken(), SIZE, macs=0.5)


def test_batchnorm_statistics_are_re_estimated_on_the_pruned_model() -> None:
    torch.manual_seed(0)
    model = create_student("resnet18", 5)
    prune_channels(model, SIZE, macs=0.5)
    x = torch.randn(8, 3, *SIZE) * 2 + 1
    seen = recalibrate_batchnorm(model.eval(), [x[:4], x[4:]])
    assert seen == 8 and not model.training and model.bn1.momentum == 0.1
    with torch.no_grad():
        pre = model.conv1(x)
    torch.testing.assert_close(model.bn1.running_mean, pre.mean((0, 2, 3)), atol=1e-5, rtol=1e-4)
    assert int(model.bn1.num_batches_tracked) == 2


def test_architecture_file_errors_name_the_file(tmp_path: Path) -> None:
    assert read_architecture(tmp_path) is None
    (tmp_path / "architecture.json").write_text("{broken")
    with pytest.raises(ToolkitError, match="architecture.json: not valid JSON"):
        read_architecture(tmp_path)
    with pytest.raises(ToolkitError, match="does not fit this student"):
        apply_architecture(create_student("resnet18", 5), {"layer1.0.conv1": {"num_features": 3}})


@pytest.mark.slow
def test_prune_cli_end_to_end_then_export(tmp_path: Path) -> None:
    runner = CliRunner()
    data = write_image_folder(tmp_path / "data", per_class=10, size=20)
    recipe = write_recipe(tmp_path / "r.yaml", data, epochs=1)
    assert runner.invoke(app, ["train", str(recipe), "--out", str(tmp_path / "run")]).exit_code == 0
    res = runner.invoke(app, ["prune", str(tmp_path / "run"), "--macs", "0.5", "--epochs", "1"])
    assert res.exit_code == 0, res.output
    pruned = tmp_path / "run-pruned50"
    info = json.loads((pruned / "metrics.json").read_text())["prune"]
    assert info["macs_ratio"] <= 0.5 and info["recover"] == "kd" and "val_top1_recovered" in info
    assert info["bn_images"] == 1024 and {"val_top1_pruned_stale_bn", "val_top1_pruned"} <= set(info)
    assert len((pruned / "metrics.jsonl").read_text().splitlines()) == 1
    res = runner.invoke(app, ["export", str(pruned), "--held-out-images", "8"])
    assert res.exit_code == 0, res.output
    session = OnnxClassifier(pruned / "model.onnx")
    assert session.session.get_inputs()[0].shape[1:] == [3, 16, 16]
    arch = read_architecture(pruned)
    assert arch is not None and arch["layer4.1.conv2"]["out_channels"] < 512
    res = runner.invoke(app, ["prune", str(tmp_path / "run"), "--macs", "0.5", "--recover", "magic",
                              "--out", str(tmp_path / "bad")])  # fmt: skip
    assert isinstance(res.exception, ToolkitError) and "--recover 'magic'" in str(res.exception)
    assert not (tmp_path / "bad").exists()


def test_prune_under_torchrun_is_refused_before_anything_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from toolkit.pruning import run_prune

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ToolkitError, match="toolkit prune runs in one process"):
        run_prune(tmp_path / "run", tmp_path / "out", macs=0.5)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["train", "distill"])
def test_a_prune_section_is_refused_by_commands_that_do_not_prune(tmp_path: Path, command: str) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", write_image_folder(tmp_path / "data", per_class=2, size=8), epochs=1)
    res = CliRunner().invoke(app, [command, str(recipe), "--out", str(tmp_path / "run"), "--set", "prune.macs=0.5"])
    assert isinstance(res.exception, ToolkitError), res.output
    assert f"prune: `toolkit {command}` does not prune; run `toolkit run RECIPE`" in str(res.exception)
    assert not (tmp_path / "run").exists()
