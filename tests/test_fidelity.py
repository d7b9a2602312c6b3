"""The INT8 guard's criteria (runtime/fidelity.py) against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.errors import ToolkitError
from runtime.fidelity import DEFAULT_CRITERIA, Fidelity, GuardCriteria, class_changes, significant_loss


def test_measure_by_hand() -> None:
    labels = np.array([0, 0, 1, 1])
    reference = np.array([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])  # 3 of 4 right
    candidate = np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0], [0.0, 2.0]])  # image 1 lost, image 3 gained
    f = Fidelity.measure(reference, candidate, labels)
    assert (f.fp32_top1, f.int8_top1, f.agreement) == (0.75, 0.75, 0.5)
    assert f.classes == {0: (2, 1, 0), 1: (2, 0, 1)} == class_changes(reference, candidate, labels)
    assert f.class_drop_points(0) == 50.0 and f.class_drop_points(1) == -50.0 and f.worst_class == 0
    # two images whose softmax (e^2, 1)/(e^2 + 1) became (1, e^2)/(e^2 + 1): KL = (p - q) * log(p / q) summed
    p = math.exp(2) / (math.exp(2) + 1)
    kl_swapped = p * math.log(p / (1 - p)) + (1 - p) * math.log((1 - p) / p)
    assert f.kl == pytest.approx(2 * kl_swapped / 4)
    assert f.summary()["drop_points"] == 0.0 and f.worst_significant_class is None


def test_significance_is_mcnemars_two_sigma() -> None:
    assert not significant_loss(1, 0)  # one image of a small class: 1 - 0 <= 2 * sqrt(1)
    assert not significant_loss(4, 0)  # 4 <= 2 * sqrt(4)
    assert significant_loss(5, 0)  # 5 > 2 * sqrt(5) = 4.47
    assert not significant_loss(10, 3) and significant_loss(12, 2)  # 7 <= 7.2; 10 > 7.5


@pytest.mark.parametrize(
    ("swap", "failures"),
    [
        (0, []),
        (1, ["top-1 drop 1.00 > 0.5 points"]),
        (3, ["top-1 drop 3.00 > 0.5 points"]),  # class 1 loses 3 of 10 (30 points), not significantly
        (4, ["top-1 drop 4.00 > 0.5 points", "agreement with FP32 96.00% < 97%"]),
        (6, ["top-1 drop 6.00 > 0.5 points", "agreement with FP32 94.00% < 97%",
             "class 1 drops 60.00 > 5 points (6 of its 10 images lost, 0 gained)"]),
    ],
)  # fmt: skip
def test_default_criteria(swap: int, failures: list[str]) -> None:
    labels = np.repeat([0, 1], [90, 10])
    reference = 0.5 * np.eye(2)[labels]  # soft outputs: each swap adds 0.12 nats, 0.007 at most on the mean
    candidate = reference.copy()
    candidate[90 : 90 + swap] = 0.5 * np.eye(2)[0]
    f = Fidelity.measure(reference, candidate, labels)
    assert DEFAULT_CRITERIA.failures(f) == failures
    assert DEFAULT_CRITERIA.failures(f, top1=False) == [w for w in failures if not w.startswith("top-1")]


def test_kl_criterion_and_shortfall() -> None:
    labels = np.zeros(10, int)
    reference = np.tile([4.0, 0.0], (10, 1))
    candidate = np.tile([1.0, 0.0], (10, 1))  # same answers, flatter: KL only
    f = Fidelity.measure(reference, candidate, labels)
    p, q = 1 / (1 + math.exp(-4)), 1 / (1 + math.exp(-1))  # P(class 0) before and after
    assert f.agreement == 1.0 and f.kl == pytest.approx(p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q)))
    assert GuardCriteria(max_kl=0.2).failures(f) == ["KL 0.2412 > 0.2 nats"]
    assert GuardCriteria(max_kl=0.3).failures(f) == [] and GuardCriteria().shortfall(f) == 0.0
    swapped = Fidelity.measure(reference, candidate[:, ::-1], labels)  # every answer wrong: drop 100, agreement 0
    assert GuardCriteria().shortfall(swapped) == pytest.approx((99.5 + 97 + 95) / 100)


def test_criteria_round_trip_and_range_errors() -> None:
    c = GuardCriteria(1.0, 95.0, 10.0, 0.1)
    assert GuardCriteria.from_dict({**c.to_dict(), "verdict": "PASS"}) == c
    assert GuardCriteria.from_dict({"tolerance_points": 0.5}) == DEFAULT_CRITERIA  # a record from before them
    with pytest.raises(ToolkitError, match=r"--min-agreement 101.0: must be between 0 and 100"):
        GuardCriteria(min_agreement_pct=101.0)
    with pytest.raises(ToolkitError, match=r"--max-kl -1.0"):
        GuardCriteria(max_kl=-1.0)
