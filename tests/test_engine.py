"""The training engine: selection, accumulation, memory format, progress, and that every train.* knob
reaches a distillation stage (each changes the stage's result)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_CLIP_SPEC, write_image_folder, write_tiny_clip_config
from rich.console import Console
from torch import nn
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

from distill.config import TrainConfig
from distill.distributed import DistContext
from distill.engine import train
from distill.objectives import Objective, TermValues
from distill.weights import load_state_dict
from runtime.errors import ToolkitError
from toolkit.cli import app

CPU = DistContext(0, 1, 0, torch.device("cpu"))
runner = CliRunner()


class Linear(Objective):
    """CE of a linear classifier; records the memory format of the image batches it saw."""

    def __init__(self, epochs: int) -> None:
        torch.manual_seed(0)
        super().__init__(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), epochs)
        self.channels_last: list[bool] = []

    def compute(self, x: torch.Tensor, y: torch.Tensor) -> TermValues:
        self.channels_last.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        logits = self.net(x)
        return TermValues({"cls": self.ce(logits, y)}, logits)


def data(n: int = 24) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 3, 2, 2, generator=g), torch.randint(0, 3, (n,), generator=g))


def cfg(**kw: object) -> TrainConfig:
    base = {"epochs": 3, "batch_size": 8, "optimizer": {"name": "sgd", "lr": 0.5}, "precision": "fp32"}
    return TrainConfig.model_validate({**base, **kw})


def quiet() -> Console:
    return Console(file=open("/dev/null", "w"), force_terminal=False)


@pytest.mark.parametrize(("select", "expected"), [("best", 2), ("last", 3)])
def test_selection_returns_the_chosen_epochs_weights(tmp_path: Path, select: str, expected: int) -> None:
    scores, snapshots = iter([0.5, 0.9, 0.1]), []

    def validate(net: nn.Module) -> dict[str, float]:
        snapshots.append({k: v.clone() for k, v in net.state_dict().items()})
        return {"val_top1": next(scores)}

    result = train(Linear(3), data(), cfg(select=select), tmp_path, 0, CPU, validate=validate, console=quiet())
    assert result.selected_epoch == expected and result.best_epoch == 2
    for k, v in result.weights.items():
        assert torch.equal(v, snapshots[expected - 1][k]), k
    assert [r["val_top1"] for r in result.history] == [0.5, 0.9, 0.1]


def test_validation_every_n_epochs_and_the_last(tmp_path: Path) -> None:
    scores = iter([0.9, 0.5])
    result = train(Linear(3), data(), cfg(val_every_epochs=2, select="best"), tmp_path, 0, CPU, console=quiet(),
                   validate=lambda net: {"val_top1": next(scores)})  # fmt: skip
    assert [r.get("val_top1") for r in result.history] == [None, 0.9, 0.5]
    assert result.selected_epoch == result.best_epoch == 2


def test_select_by_lowest_validation_loss(tmp_path: Path) -> None:
    rows = iter([{"val_top1": 0.5, "val_loss": 1.0}, {"val_top1": 0.9, "val_loss": 2.0},
                 {"val_top1": 0.1, "val_loss": 0.5}])  # fmt: skip
    result = train(Linear(3), data(), cfg(select_metric="val_loss"), tmp_path, 0, CPU, console=quiet(),
                   validate=lambda net: next(rows))  # fmt: skip
    assert result.selected_epoch == result.best_epoch == 3 and result.best_val_top1 == 0.1


def test_rows_record_the_learning_rate_each_epoch_starts_and_ends_with(tmp_path: Path) -> None:
    # The report's training table showed 0 for PSC: the last scheduled value of a cosine that ends at 0.
    result = train(Linear(3), data(), cfg(), tmp_path, 0, CPU, console=quiet())
    lrs = [(r["lr"], r["lr_end"]) for r in result.history]
    assert lrs[0][0] == 0.5 and all(start > end > 0 for start, end in lrs)
    assert [r["lr"] for r in result.history] == sorted((r["lr"] for r in result.history), reverse=True)


def test_accumulation_matches_the_full_batch_step(tmp_path: Path) -> None:
    whole = train(Linear(2), data(), cfg(epochs=2), tmp_path / "a", 0, CPU, console=quiet())
    accumulated = train(Linear(2), data(), cfg(epochs=2, accumulate=4), tmp_path / "b", 0, CPU, console=quiet())
    for k in whole.weights:
        torch.testing.assert_close(accumulated.weights[k], whole.weights[k], rtol=1e-5, atol=1e-6)
    assert whole.history[-1]["train_images"] == accumulated.history[-1]["train_images"] == 24
    with pytest.raises(ToolkitError, match="not divisible by 1 rank"):
        train(Linear(1), data(), cfg(accumulate=3), tmp_path / "c", 0, CPU, console=quiet())


def test_checkpoint_interval_skips_epoch_ends_and_a_kill_resumes_from_the_older_one(tmp_path: Path) -> None:
    every = train(Linear(3), data(), cfg(), tmp_path / "every", 0, CPU, console=quiet())
    saved: list[int] = []
    sparse = cfg(checkpoint_min_interval_s=1e9)
    result = train(Linear(3), data(), sparse, tmp_path / "sparse", 0, CPU, console=quiet(),
                   on_epoch=lambda h: saved.append(len(h)))  # fmt: skip
    assert saved == [3]  # only the last epoch, which is always saved
    assert json.loads((tmp_path / "sparse" / "last.json").read_text())["epochs_done"] == 3

    def killed_in_epoch_3(net: nn.Module) -> dict[str, float]:
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return {}

    calls: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        train(Linear(3), data(), sparse, tmp_path / "killed", 0, CPU, console=quiet(), validate=killed_in_epoch_3)
    assert not (tmp_path / "killed" / "last.json").exists()
    resumed = train(Linear(3), data(), sparse, tmp_path / "killed", 0, CPU, console=quiet(), resume=True)
    for k, v in every.weights.items():
        assert torch.equal(result.weights[k], v) and torch.equal(resumed.weights[k], v), k


@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_reaches_the_batches(tmp_path: Path, channels_last: bool) -> None:
    objective = Linear(1)
    train(objective, data(), cfg(epochs=1, channels_last=channels_last), tmp_path, 0, CPU, console=quiet())
    assert objective.channels_last and all(v == channels_last for v in objective.channels_last)


def test_plain_progress_lines_without_a_terminal(tmp_path: Path) -> None:
    import io

    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    train(Linear(1), data(240), cfg(epochs=1, progress_every_s=1e-9), tmp_path, 0, CPU, console=console)
    lines = [line for line in out.getvalue().splitlines() if line.startswith("epoch 1/1: ") and "ETA" in line]
    assert len(lines) >= 10 and "img/s" in lines[0]


def test_non_finite_loss_stops_with_advice(tmp_path: Path) -> None:
    bad = TensorDataset(torch.full((8, 3, 2, 2), float("nan")), torch.zeros(8, dtype=torch.long))
    with pytest.raises(ToolkitError, match="loss became nan at epoch 1 step 0.*train.grad_clip"):
        train(Linear(1), bad, cfg(epochs=1), tmp_path, 0, CPU, console=quiet())


# ---- every train.* knob reaches a distillation stage


@pytest.fixture(scope="module")
def kd_recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("knobs")
    recipe = {
        "name": "knobs",
        "data": {"train": {"kind": "imagefolder", "path": str(write_image_folder(tmp / "d", per_class=6, size=20))},
                 "val_fraction": 0.25},
        "preprocess": {"input_size": 16, "resize_size": 16},
        "student": {"name": "resnet18"},
        "train": {"epochs": 2, "batch_size": 6, "eval_batch_size": 32, "precision": "fp32",
                  "optimizer": {"name": "sgd", "lr": 0.05}},
        "distill": {"method": "kd", "teacher": TINY_CLIP_SPEC, "teacher_config": str(write_tiny_clip_config(tmp)),
                    "cache": {"crops": 2, "dir": str(tmp / "cache")}},
    }  # fmt: skip
    path = tmp / "kd.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def distill(recipe: Path, out: Path, *sets: str) -> dict[str, torch.Tensor]:
    args = ["distill", str(recipe), "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    return load_state_dict(out / "student.safetensors")


@pytest.mark.slow
def test_each_train_setting_changes_a_distill_stage(kd_recipe: Path, tmp_path: Path) -> None:
    base = distill(kd_recipe, tmp_path / "base", "train.select=last")
    again = distill(kd_recipe, tmp_path / "again", "train.select=last")
    assert all(torch.equal(base[k], again[k]) for k in base)  # deterministic: a difference below is the knob's
    knobs = ("train.label_smoothing=0.3", "train.grad_clip=0.01", "train.ema.enabled=true", "train.accumulate=2",
             "train.channels_last=true")  # fmt: skip
    for knob in knobs:
        changed = distill(kd_recipe, tmp_path / knob, "train.select=last", knob)
        assert any(not torch.equal(base[k], changed[k]) for k in base if base[k].is_floating_point()), knob
    # select=best: the student is the epoch with the best validation top-1, recorded in the stage's marker
    distill(kd_recipe, tmp_path / "best")
    done = json.loads((tmp_path / "best" / "checkpoints" / "student" / "done.json").read_text())
    top1 = [r["val_top1"] for r in done["rows"]]
    assert done["summary"]["selected_epoch"] == top1.index(max(top1)) + 1


def test_unused_recipe_keys_are_errors(kd_recipe: Path, tmp_path: Path) -> None:
    args = ["distill", str(kd_recipe), "--out", str(tmp_path / "a"), "--set", "train.augment.hflip=0"]
    res = runner.invoke(app, args)
    assert res.exit_code != 0 and "train.augment.hflip" in str(res.exception)
    assert "distill.cache" in str(res.exception) and not (tmp_path / "a").exists()
    res = runner.invoke(app, ["train", str(kd_recipe), "--out", str(tmp_path / "b")])
    assert res.exit_code != 0 and "does not use the distill section" in str(res.exception)
    assert not (tmp_path / "b").exists()
