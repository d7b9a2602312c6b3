"""What `toolkit distill` checks before the run directory is touched, beyond the recipe's own validation:
student and teacher kinds against the method, a checkpoint teacher's classes, a vision-language student's
preprocessing, DAIT's given second-stage teacher."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from distill.config import DistillConfig
from distill.methods.spec import Method
from distill.stages import load_intermediate
from distill.students import is_vlm_student
from distill.teachers.base import Teacher
from distill.vlm_student import VLMStudent
from runtime.errors import ToolkitError
from runtime.preprocess import PreprocessContract
from toolkit.recipe import Recipe


def check_student_kind(method: Method, student: str, cfg: DistillConfig) -> None:
    """A vision-language student trains only with a method made for one (FDBPL), and vice versa."""
    if method.student_kind == "vlm" and not is_vlm_student(student):
        raise ToolkitError(
            f"student.name: method {method.name!r} trains a vision-language student (openclip:<model>/<pretrained>, "
            f"e.g. openclip:ViT-B-32/openai), not the classifier {student!r}"
        )
    if method.student_kind != "vlm" and is_vlm_student(student):
        raise ToolkitError(
            f"student.name: {student!r} is a vision-language model; method {method.name!r} trains classifiers "
            "(resnet18, mobilenetv2_100, any timm model); use distill.method: fdbpl for a prompt-learned student"
        )
    if method.student_kind != "vlm" and cfg.classes == "base":
        raise ToolkitError(
            f"distill.classes: 'base' holds half the classes back for zero-shot evaluation, which only a "
            f"vision-language student can do (method fdbpl); method {method.name!r} trains a classifier of the "
            "classes it sees: remove distill.classes"
        )
    if method.student_kind == "vlm" and cfg.lavid is not None:
        raise ToolkitError(f"distill.lavid: method {method.name!r} has no LaViD auxiliary head; remove distill.lavid")


def given_intermediate(spec: str, names: list[str]) -> torch.nn.Module:
    """DAIT's second-stage teacher given instead of trained: a stage-1 output file, or ``run:<dir>``, the
    student of another toolkit run (e.g. a big fine-tuned classifier), which must know the dataset's classes."""
    if not spec.startswith("run:"):
        return load_intermediate(Path(spec), len(names))[0]
    from distill.teachers.classifier import run_teacher

    teacher = run_teacher(spec.removeprefix("run:"))
    if teacher.class_names != names:
        raise ToolkitError(
            f"distill.intermediate_teacher: {spec} was trained on {teacher.class_names}, the dataset has {names}; "
            "it must know exactly the dataset's classes, in the same order"
        )
    return teacher.net


def check_teacher_kind(teacher: Teacher, method: Method, cfg: DistillConfig, names: list[str]) -> None:
    """A classifier teacher (run:, timm:) serves the methods that only need its outputs, and must know exactly
    the dataset's classes."""
    if teacher.kind not in method.teacher_kinds:
        raise ToolkitError(
            f"distill.teacher: {teacher.spec} is an image classifier; method {method.name!r} needs a vision-language "
            "teacher (openclip:, conse:). Classifier teachers serve the methods kd and rkd"
        )
    if teacher.kind != "classifier":
        return
    known = getattr(teacher, "class_names", None)
    count = int(getattr(teacher, "num_classes", len(names)))
    if (known is not None and list(known) != list(names)) or count != len(names):
        theirs = list(known) if known is not None else f"{count} classes"
        raise ToolkitError(
            f"distill.teacher: {teacher.spec} was trained on {theirs}, the dataset has {names}; a checkpoint teacher "
            "must know exactly the dataset's classes, in the same order"
        )
    if cfg.anchors:
        raise ToolkitError(
            f"distill.anchors: teacher {teacher.spec} is a classifier and uses no text anchors; remove it"
        )


def vlm_contract(student: VLMStudent, recipe: Recipe, names: list[str]) -> PreprocessContract:
    """A vision-language student sees images as its own towers were trained to: its preprocessing is the
    contract. A preprocess key the recipe sets to something else is an error naming it."""
    own = student.vlm.contract
    given = recipe.preprocess
    for key in sorted(recipe.preprocess_given()):
        value = getattr(given, key)
        mine = getattr(own, key)
        if key == "input_size" and isinstance(value, int):
            value = (value, value)
        if key == "resize_size" and isinstance(mine, tuple):
            mine = mine[0]
        if value is not None and (tuple(value) if isinstance(value, (list, tuple)) else value) != mine:
            raise ToolkitError(
                f"preprocess.{key}: {value!r}, but the vision-language student {student.spec} was trained with "
                f"{mine!r}; remove preprocess.{key} (its own preprocessing is used)"
            )
    return dataclasses.replace(own, class_names=tuple(names))
