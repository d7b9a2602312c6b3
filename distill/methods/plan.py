"""A recipe's distill section checked against the registry before anything trains: method, teacher,
hyperparameters and stage order, each error naming its key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distill.config import DistillConfig, StageConfig
from distill.methods.registry import get_method, list_methods
from distill.methods.spec import Method, Stage
from distill.teachers.registry import list_teachers
from runtime.errors import ToolkitError, did_you_mean

# What a recipe may give instead of running the stage that would produce it.
SUPPLIED_BY = {"anchors": "distill.anchors", "intermediate_teacher": "distill.intermediate_teacher"}
CHOICES = {"reduction": ("vl2lite", "pand"), "nsd_mode": ("sample_neighbors", "class_margin"),
           "coop_features": ("crops", "eval"), "fdbpl_variant": ("code", "paper"),
           "fdbpl_labels": ("ms", "mr")}  # fmt: skip
WHOLE_POSITIVE = {"nsd_group"}  # null (the default) or a count
AT_LEAST_ONE = {"fdbpl_topk"}


@dataclass(frozen=True)
class PlannedStage:
    stage: Stage
    overrides: StageConfig


@dataclass(frozen=True)
class Plan:
    method: Method
    params: dict[str, Any]
    stages: tuple[PlannedStage, ...]

    @property
    def stage_names(self) -> list[str]:
        return [s.stage.name for s in self.stages]


def _check_teacher(spec: str | None, method: Method) -> None:
    if spec is None:
        if method.needs_teacher:
            raise ToolkitError(
                f"distill.teacher: method {method.name!r} needs a teacher (e.g. conse:efficientnet_lite0+minilm)"
            )
        return
    schemes = [b.scheme for b in list_teachers()]
    scheme, colon, _ = spec.partition(":")
    if not colon or scheme not in schemes:
        examples = ", ".join(b.example for b in list_teachers())
        raise ToolkitError(
            f"distill.teacher: unknown teacher {spec!r}.{did_you_mean(scheme, schemes)} Examples: {examples}"
        )


def _params(method: Method, overrides: dict[str, Any]) -> dict[str, Any]:
    params = dict(method.params)
    for key, value in overrides.items():
        if key not in params:
            known = ", ".join(sorted(params)) or "none"
            raise ToolkitError(
                f"distill.params.{key}: not a hyperparameter of {method.name!r}.{did_you_mean(key, params)} "
                f"Known: {known}"
            )
        default = params[key]
        if key in CHOICES and value not in CHOICES[key]:
            raise ToolkitError(f"distill.params.{key}: {value!r} is not one of {list(CHOICES[key])}")
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ToolkitError(f"distill.params.{key}: expected true or false, got {value!r}")
        numeric = default is None or (isinstance(default, (int, float)) and not isinstance(default, bool))
        if numeric and value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ToolkitError(f"distill.params.{key}: expected a number, got {value!r}")
            if isinstance(default, int) and not float(value).is_integer():
                raise ToolkitError(f"distill.params.{key}: expected a whole number, got {value!r}")
            value = int(value) if isinstance(default, int) else float(value)
        if key in WHOLE_POSITIVE and value is not None and (value < 1 or not float(value).is_integer()):
            raise ToolkitError(f"distill.params.{key}: expected a whole number >= 1 or null, got {value!r}")
        if key in WHOLE_POSITIVE and value is not None:
            value = int(value)
        if key in AT_LEAST_ONE and (value is None or value < 1):
            raise ToolkitError(f"distill.params.{key}: expected a whole number >= 1, got {value!r}")
        if isinstance(default, str) and not isinstance(value, str):
            raise ToolkitError(f"distill.params.{key}: expected a string, got {value!r}")
        params[key] = value
    return params


def _stages(method: Method, cfg: DistillConfig) -> tuple[PlannedStage, ...]:
    wanted = cfg.stages if cfg.stages is not None else [StageConfig(name=n) for n in method.stage_names]
    names = [s.name for s in wanted]
    for i, name in enumerate(names):
        if name not in method.stage_names:
            raise ToolkitError(
                f"distill.stages[{i}].name: {method.name!r} has no stage {name!r}."
                f"{did_you_mean(name, method.stage_names)}"
                f" Its stages, in order: {', '.join(method.stage_names)}"
            )
        if names.count(name) > 1:
            raise ToolkitError(f"distill.stages: stage {name!r} is listed {names.count(name)} times")
    order = [method.stage_names.index(n) for n in names]
    if order != sorted(order):
        raise ToolkitError(
            f"distill.stages: order {names} is inconsistent with {method.name!r}, whose stages run "
            f"{' -> '.join(method.stage_names)} (each consumes what the one before produces)"
        )
    for name in names:
        for needed in method.stage(name).requires:
            if needed in names:
                continue
            output = method.stage(needed).produces
            given = output is not None and getattr(cfg, output, None)
            if not given:
                raise ToolkitError(
                    f"distill.stages: stage {name!r} needs the output of stage {needed!r}, which is not listed; "
                    f"list it before {name!r} or give {SUPPLIED_BY.get(output or '', 'its output')}"
                )
    for s in method.stages:
        if s.produces and s.name in names and getattr(cfg, s.produces, None):
            raise ToolkitError(
                f"{SUPPLIED_BY[s.produces]} is given but stage {s.name!r} would compute it again: "
                f"drop one (e.g. list only the later stages in distill.stages)"
            )
    if not names or method.stages[-1].name not in names:
        raise ToolkitError(
            f"distill.stages: must end with {method.stages[-1].name!r}, the stage that trains the student"
        )
    return tuple(PlannedStage(method.stage(s.name), s) for s in wanted)


def plan_distillation(cfg: DistillConfig) -> Plan:
    """Resolve the method, its hyperparameters and the stages to run; a bad key raises ToolkitError."""
    if cfg.method not in list_methods():
        raise ToolkitError(
            f"distill.method: unknown method {cfg.method!r}.{did_you_mean(cfg.method, list_methods())} "
            f"Known: {', '.join(list_methods())} (toolkit methods)"
        )
    method = get_method(cfg.method)
    _check_teacher(cfg.teacher, method)
    if method.name == "lavid" and cfg.lavid is None:
        raise ToolkitError("distill.lavid: method 'lavid' needs distill.lavid.targets (toolkit lavid signatures)")
    if cfg.cache.scale[0] <= 0 or cfg.cache.scale[0] > cfg.cache.scale[1] or cfg.cache.scale[1] > 1:
        raise ToolkitError(f"distill.cache.scale: {list(cfg.cache.scale)} must satisfy 0 < min <= max <= 1")
    params = _params(method, cfg.params)
    if method.check is not None:
        method.check(params)
    return Plan(method, params, _stages(method, cfg))
