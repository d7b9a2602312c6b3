"""What a method is, as data: named stages, each naming what is frozen, what trains and which weighted loss
terms apply. ``toolkit methods`` prints this; the runner in ``distill/stages.py`` executes it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

StageKind = Literal["psc", "intermediate", "student"]


@dataclass(frozen=True)
class LossTerm:
    name: str
    weight: str  # how it is weighted, e.g. "alpha(e)", "(1 - alpha(e)) / 2", "nsd_lambda"
    description: str


@dataclass(frozen=True)
class Stage:
    """One stage. ``produces`` names what later stages consume; a recipe may skip a stage whose output it gives."""

    name: str
    kind: StageKind
    description: str
    trains: tuple[str, ...]
    frozen: tuple[str, ...]
    losses: tuple[LossTerm, ...]
    requires: tuple[str, ...] = ()
    produces: str | None = None


@dataclass(frozen=True)
class Method:
    """A registered method: its stages in order and the hyperparameters a recipe may override."""

    name: str
    summary: str
    paper: str
    stages: tuple[Stage, ...]
    params: dict[str, Any] = field(default_factory=dict)
    needs_teacher: bool = True

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]

    @property
    def objective(self) -> str:
        """Which student objective the final stage trains (the method's name selects it)."""
        return self.name

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "summary": self.summary,
            "paper": self.paper,
            "needs_teacher": self.needs_teacher,
            "params": dict(self.params),
            "stages": [
                {
                    "name": s.name,
                    "kind": s.kind,
                    "description": s.description,
                    "trains": list(s.trains),
                    "frozen": list(s.frozen),
                    "losses": [vars(t) for t in s.losses],
                    "requires": list(s.requires),
                    "produces": s.produces,
                }
                for s in self.stages
            ],
        }
