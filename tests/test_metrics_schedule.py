"""Pure functions checked against hand-computed values: metrics and learning-rate schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest

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
