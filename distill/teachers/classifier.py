"""Checkpoint teachers: a trained image classifier as the teacher of KD and RKD, through the same teacher cache.

``run:<dir>`` is a run of this toolkit (`toolkit train` / `distill`: its student, classes and preprocessing);
``timm:<model>@<weights.safetensors>`` any timm architecture with a weights file (timm's own preprocessing), and
``timm:<model>`` timm's pretrained weights (ImageNet's 1000 classes, downloaded). The cache stores the
classifier's pooled feature per crop (RKD's teacher embedding); its head turns that feature into the KD logits.
Distilling one's own big fine-tuned model is the common case, and the one that runs offline with a strong teacher.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from distill.teachers.base import Teacher
from runtime.errors import ToolkitError, did_you_mean
from runtime.preprocess import PreprocessContract


class ClassifierTeacher(Teacher):
    """A frozen classifier: ``encode_image`` gives its pooled feature, ``logit_head`` its classification layer."""

    kind = "classifier"

    def __init__(self, net: nn.Module, spec: str, contract: PreprocessContract, class_names: list[str] | None,
                 num_classes: int) -> None:  # fmt: skip
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.spec = spec
        self.contract = contract
        self.class_names = class_names
        self.num_classes = num_classes
        self.embed_dim = int(net.num_features)
        self.logit_scale = 1.0

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(pixels), pre_logits=True).float()

    def logit_head(self, anchors: torch.Tensor | None = None) -> nn.Module:
        return copy.deepcopy(self.net.get_classifier()).float()

    def _no_text(self, *args: object) -> torch.Tensor:
        raise ToolkitError(
            f"teacher {self.spec} is an image classifier: it has no text tower (no prompts, anchors or CoOp); "
            "use it with methods kd or rkd, or a vision-language teacher (openclip:, conse:) for the others"
        )

    tokenize = token_embeddings = encode_embeddings = class_anchors = _no_text  # type: ignore[assignment]


def run_teacher(run_dir: str) -> ClassifierTeacher:
    """``run:<dir>``: the student of a finished toolkit run, with its classes and preprocessing."""
    from distill.run_student import load_student_dir

    path = Path(run_dir)
    if not run_dir or not path.is_dir():
        raise ToolkitError(f"teacher run:{run_dir}: no such run directory (expected run:<dir of a toolkit run>)")
    net, contract, recipe = load_student_dir(path)
    if not hasattr(net, "forward_head"):
        raise ToolkitError(f"teacher run:{run_dir}: its student {recipe['student']['name']!r} is not a classifier")
    names = list(contract.class_names)
    return ClassifierTeacher(net, f"run:{path}", contract, names, len(names))


def timm_teacher(arg: str, num_classes: int | None = None) -> ClassifierTeacher:
    """``timm:<model>[@<weights.safetensors>]``: ``num_classes`` (the dataset's) sizes the head for a weights file."""
    import timm

    from distill.weights import load_state_dict

    model, _, weights = arg.partition("@")
    if not timm.is_model(model):
        raise ToolkitError(f"teacher timm:{model}: not a timm model.{did_you_mean(model, timm.list_models())}")
    if weights:
        if not Path(weights).is_file():
            raise ToolkitError(f"teacher timm:{arg}: weights file {weights} not found")
        state = load_state_dict(weights)
        net = timm.create_model(model, pretrained=False, num_classes=num_classes or 1000)
        own = net.state_dict()
        misshaped = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if misshaped or missing or unexpected:
            shapes = {k: tuple(state[k].shape) for k in misshaped[:2]}
            raise ToolkitError(
                f"teacher timm:{arg}: {weights} does not fit {model} with {num_classes} classes (mis-shaped "
                f"{shapes}, missing {missing[:3]}, unexpected {unexpected[:3]}): the dataset's classes must be the "
                "ones the teacher was trained on, and the file the architecture's weights"
            )
        net.load_state_dict(state)
    else:
        try:
            net = timm.create_model(model, pretrained=True)
        except Exception as exc:
            raise ToolkitError(
                f"teacher timm:{model}: its pretrained weights must be downloaded and that failed "
                f"({type(exc).__name__}: {exc}); give a weights file: timm:{model}@weights.safetensors"
            ) from exc
    cfg = timm.data.resolve_data_config({}, model=net)
    size = int(cfg["input_size"][-1])
    interpolation = cfg.get("interpolation", "bilinear")
    contract = PreprocessContract(
        input_size=size, resize_size=int(round(size / float(cfg.get("crop_pct", 0.875)))),
        interpolation=interpolation if interpolation in ("nearest", "bilinear", "bicubic") else "bilinear",
        mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
    )  # fmt: skip
    classes = int(net.num_classes)
    return ClassifierTeacher(net, f"timm:{arg}", contract, None, classes)
