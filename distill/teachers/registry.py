"""Teachers by spec string, as recipes name them: ``openclip:<model>/<pretrained>``, ``conse:<vision>+<text>``
(vision-language) or ``run:<dir>``, ``timm:<model>[@weights]`` (classifiers). ``list_teachers`` is the query API
(`toolkit teachers`)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from distill.teachers.base import Teacher
from runtime.errors import ToolkitError, did_you_mean


@dataclass(frozen=True)
class TeacherBackend:
    scheme: str
    description: str
    example: str
    offline: bool
    build: Callable[..., Teacher]


_BACKENDS: dict[str, TeacherBackend] = {}


def register_teacher(backend: TeacherBackend) -> TeacherBackend:
    _BACKENDS[backend.scheme] = backend
    return backend


def list_teachers(pattern: str = "*") -> list[TeacherBackend]:
    return [b for name, b in sorted(_BACKENDS.items()) if fnmatch.fnmatch(name, pattern)]


def _openclip(arg: str, **options: Any) -> Teacher:
    from distill.teachers.openclip import OpenCLIPTeacher

    model, _, pretrained = arg.partition("/")
    if not model:
        raise ToolkitError("openclip teacher: expected openclip:<model>/<pretrained>, e.g. openclip:ViT-B-32/openai")
    return OpenCLIPTeacher(model, pretrained or None, config=options.get("config"))


def _conse(arg: str, **options: Any) -> Teacher:
    from distill.teachers.conse import ConSETeacher

    vision, plus, text = arg.partition("+")
    if not plus:
        raise ToolkitError("conse teacher: expected conse:<vision>+<text>, e.g. conse:efficientnet_lite0+minilm")
    return ConSETeacher(vision, text, top_t=int(options.get("top_t", 10)))


register_teacher(
    TeacherBackend(
        "openclip",
        "Any OpenCLIP model and pretrained tag (downloads weights; 'none' = random init)",
        "openclip:convnext_xxlarge/laion2b_s34b_b82k_augreg_soup",
        offline=False,
        build=_openclip,
    )
)
register_teacher(
    TeacherBackend(
        "conse",
        "ConSE: ImageNet EfficientNet-Lite0 + MiniLM text tower, shipped weights (runs offline)",
        "conse:efficientnet_lite0+minilm",
        offline=True,
        build=_conse,
    )
)


def _run(arg: str, **options: Any) -> Teacher:
    from distill.teachers.classifier import run_teacher

    return run_teacher(arg)


def _timm(arg: str, **options: Any) -> Teacher:
    from distill.teachers.classifier import timm_teacher

    return timm_teacher(arg, options.get("num_classes"))


register_teacher(
    TeacherBackend(
        "run",
        "The student of a finished toolkit run (toolkit train / distill) as a classifier teacher (KD, RKD)",
        "run:runs/fashion_mnist_resnet50",
        offline=True,
        build=_run,
    )
)
register_teacher(
    TeacherBackend(
        "timm",
        "Any timm classifier with a weights file (model@weights.safetensors; without it, timm's downloaded "
        "ImageNet weights) as a classifier teacher (KD, RKD)",
        "timm:resnet50@teacher.safetensors",
        offline=True,
        build=_timm,
    )
)


def create_teacher(spec: str, **options: Any) -> Teacher:
    """Build the teacher a spec string names; options go to the backend (config=, top_t=, num_classes=)."""
    scheme, colon, arg = spec.partition(":")
    if not colon or scheme not in _BACKENDS:
        examples = ", ".join(b.example for b in _BACKENDS.values())
        raise ToolkitError(f"unknown teacher {spec!r}.{did_you_mean(scheme, _BACKENDS)} Examples: {examples}")
    return _BACKENDS[scheme].build(arg, **options).eval()
