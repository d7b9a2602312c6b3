"""What a method is, as data: named stages, each naming what is frozen, what trains, which loss terms apply
with which weights (real functions of the epoch), and how to build the stage's objective.
``toolkit methods`` prints this; ``distill/stages.py`` executes it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from distill.loss_terms import (  # noqa: F401  (re-exported: methods declare terms from here)
    ALPHA,
    HALF_ONE_MINUS_ALPHA,
    ONE_MINUS_ALPHA,
    LossTerm,
    Weight,
    const,
    one_minus_param,
    param,
)

if TYPE_CHECKING:
    from distill.objectives import Objective
    from distill.teachers.base import Teacher

StageKind = Literal["psc", "intermediate", "student"]


@dataclass
class StageInputs:
    """Everything a stage's objective may be built from (what earlier stages produced included)."""

    net: torch.nn.Module  # the network the stage trains and outputs (student, intermediate teacher, prompt context)
    epochs: int
    params: dict[str, Any]
    terms: tuple[LossTerm, ...]
    label_smoothing: float = 0.0
    anchors: torch.Tensor | None = None
    teacher: Teacher | None = None
    intermediate: torch.nn.Module | None = None
    prompts: list[str] = field(default_factory=list)
    template: str = ""


ObjectiveFactory = Callable[[StageInputs], "Objective"]


@dataclass(frozen=True)
class Stage:
    """One stage. ``produces`` names what later stages consume; a recipe may skip a stage whose output it gives."""

    name: str
    kind: StageKind
    description: str
    trains: tuple[str, ...]
    frozen: tuple[str, ...]
    losses: tuple[LossTerm, ...]
    objective: ObjectiveFactory = field(compare=False, repr=False)
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
    student_kind: Literal["classifier", "vlm"] = "classifier"  # vlm: a vision-language student (openclip:...)
    teacher_kinds: tuple[str, ...] = ("vlm",)  # + "classifier": a checkpoint teacher (run:, timm:) serves it
    teacher_outputs: Literal["embeddings", "topk"] = "embeddings"  # topk: the cache stores top-K logits + LSE
    check: Callable[[dict[str, Any]], None] | None = field(default=None, compare=False, repr=False)
    # ^ raises ToolkitError for a combination of hyperparameters that cannot train (checked before any work)

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "summary": self.summary,
            "paper": self.paper,
            "needs_teacher": self.needs_teacher,
            "student_kind": self.student_kind,
            "teacher_outputs": self.teacher_outputs,
            "teacher_kinds": list(self.teacher_kinds),
            "params": dict(self.params),
            "stages": [
                {
                    "name": s.name,
                    "kind": s.kind,
                    "description": s.description,
                    "trains": list(s.trains),
                    "frozen": list(s.frozen),
                    "losses": [
                        {"name": t.name, "weight": str(t.weight), "description": t.description} for t in s.losses
                    ],  # fmt: skip
                    "requires": list(s.requires),
                    "produces": s.produces,
                }
                for s in self.stages
            ],
        }
