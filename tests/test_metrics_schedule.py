"""Pure functions checked against hand-computed values: metrics and learning-rate schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill.config import ScheduleConfig
from distill.schedule import lr_factor
from runtime.metrics import classification_report, confusion_matrix


def test_confusion_and_per_class_by_hand() -> None:
    labels = np.array([0, 0, 1, 1, 1, 2])
    preds = np.array([0, 1, 1, 1, 0, 1])
    cm = confusion_matrix(labels, preds, 4)
    assert cm.tolist() == [[1, 1, 0, 0], [1, 2, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    rep = classification_report(labels, preds, ["a", "b", "c", "d"])
    assert rep["top1"] == pytest.approx(3 / 6)
    assert rep["per_class"] == {"a": 0.5, "b": pytest.approx(2 / 3), "c": 0.0, "d": None}
    assert rep["support"] == {"a": 2, "b": 3, "c": 1, "d": 0}


def test_cosine_with_warmup_by_hand() -> None:
    cfg = ScheduleConfig(name="cosine", warmup_epochs=1, min_lr_ratio=0.0)
    # 10 steps per epoch, 3 epochs: warm-up over steps 0..9, cosine over steps 10..30.
    assert lr_factor(cfg, 0, 10, 3) == pytest.approx(0.1)
    assert lr_factor(cfg, 9, 10, 3) == pytest.approx(1.0)
    assert lr_factor(cfg, 10, 10, 3) == pytest.approx(1.0)
    assert lr_factor(cfg, 20, 10, 3) == pytest.approx(0.5)  # halfway: 0.5 * (1 + cos(pi/2))
    assert lr_factor(cfg, 15, 10, 3) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    floor = ScheduleConfig(name="cosine", min_lr_ratio=0.1)
    assert lr_factor(floor, 30, 10, 3) == pytest.approx(0.1)


def test_step_and_constant_by_hand() -> None:
    step = ScheduleConfig(name="step", step_epochs=2, gamma=0.5)
    assert [lr_factor(step, s, 10, 6) for s in (0, 19, 20, 45)] == pytest.approx([1.0, 1.0, 0.5, 0.25])
    assert lr_factor(ScheduleConfig(name="constant"), 123, 10, 6) == 1.0


def test_multistep_by_hand_and_like_torch_multisteplr() -> None:
    # LaViD's schedule: divide by 10 at epochs 150, 180 and 210 (here 3, 5, 6 with 4 steps per epoch)
    cfg = ScheduleConfig(name="multistep", milestones=[3, 5, 6], gamma=0.1)
    by_epoch = [lr_factor(cfg, e * 4, 4, 8) for e in range(8)]
    assert by_epoch == pytest.approx([1, 1, 1, 0.1, 0.1, 0.01, 0.001, 0.001])
    assert lr_factor(cfg, 3 * 4 - 1, 4, 8) == 1.0  # the last step of epoch index 2 is still undecayed
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[3, 5, 6], gamma=0.1)
    torch_lrs = []
    for _ in range(8):
        torch_lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert by_epoch == pytest.approx(torch_lrs)


def test_cosine_epochs_is_torchs_cosineannealinglr_stepped_per_epoch_and_periodic() -> None:
    # PAND's code: CosineAnnealingLR(T_max = 100, eta_min = 1e-5 = 0.1 lr) over 300 epochs; here T_max 4 over 12.
    cfg = ScheduleConfig(name="cosine", cosine_epochs=4, min_lr_ratio=0.1)
    by_epoch = [lr_factor(cfg, e * 5, 5, 12) for e in range(12)]
    assert by_epoch[0] == 1.0 and by_epoch[4] == pytest.approx(0.1) and by_epoch[8] == pytest.approx(1.0)
    assert by_epoch[2] == pytest.approx(0.1 + 0.9 * 0.5)  # cos(pi/2) = 0: halfway between lr and the floor
    assert lr_factor(cfg, 5 * 1 + 4, 5, 12) == by_epoch[1]  # constant within an epoch (interval: epoch)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4, eta_min=0.1)
    torch_lrs = []
    for _ in range(12):
        torch_lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert by_epoch == pytest.approx(torch_lrs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "step", "cosine_epochs": 100}, "used only by schedule cosine"),
        ({"name": "multistep"}, "needs milestones"),
        ({"name": "cosine", "milestones": [3]}, "used only by schedule multistep"),
        ({"name": "multistep", "milestones": [5, 3]}, "must increase strictly"),
    ],
)
def test_bad_milestones_are_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScheduleConfig(**kwargs)


@pytest.mark.parametrize("decay_all", [False, True])
def test_decay_all_puts_biases_and_norms_under_weight_decay(decay_all: bool) -> None:
    from distill.config import OptimizerConfig
    from distill.optim import build_optimizer

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    opt = build_optimizer(model, OptimizerConfig(weight_decay=0.01, decay_all=decay_all))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.01 for p in g["params"]}
    conv_w, conv_b, bn_w, bn_b, fc_w, fc_b = model.parameters()
    assert {id(conv_w), id(fc_w)} <= decayed
    assert all((id(p) in decayed) == decay_all for p in (conv_b, bn_w, bn_b, fc_b))
    assert sum(len(g["params"]) for g in opt.param_groups) == 6
