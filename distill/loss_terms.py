"""Loss terms as data: a name, a description and a weight that is a real function of the epoch.

A stage's total loss is the sum of its terms' values times their weights (``Objective.combine``); the same
objects print in ``toolkit methods``, so what is shown is what is computed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from distill.losses.vl2lite import dynamic_weight

WeightFn = Callable[[int, int, Mapping[str, Any]], float]


@dataclass(frozen=True)
class Weight:
    """A loss term's weight as a function of (0-based epoch, the stage's epochs, the method's params)."""

    label: str
    fn: WeightFn = field(compare=False)

    def __call__(self, epoch: int, epochs: int, params: Mapping[str, Any]) -> float:
        return float(self.fn(epoch, epochs, params))

    def __str__(self) -> str:
        return self.label


def const(value: float) -> Weight:
    return Weight(f"{value:g}", lambda e, n, p: value)


def param(name: str, factor: float = 1.0) -> Weight:
    label = name if factor == 1.0 else f"{factor:g} {name}"
    return Weight(label, lambda e, n, p: factor * float(p[name]))


def one_minus_param(name: str) -> Weight:
    return Weight(f"1 - {name}", lambda e, n, p: 1.0 - float(p[name]))


def _alpha(e: int, n: int, p: Mapping[str, Any]) -> float:
    """VL2Lite's dynamic weight alpha(e) = clip(slope e + offset, 0, 1); slope defaults to 1 / (8E)."""
    return dynamic_weight(e, n, p["slope"], float(p["offset"]))


ALPHA = Weight("alpha(e)", _alpha)
ONE_MINUS_ALPHA = Weight("1 - alpha(e)", lambda e, n, p: 1.0 - _alpha(e, n, p))
HALF_ONE_MINUS_ALPHA = Weight("(1 - alpha(e)) / 2", lambda e, n, p: (1.0 - _alpha(e, n, p)) / 2)


@dataclass(frozen=True)
class LossTerm:
    name: str
    weight: Weight
    description: str
