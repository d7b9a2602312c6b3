"""PAND stage PSC: CoOp prompt learning on a frozen teacher -> calibrated class anchors F_txt.

N_ctx shared context vectors (not class-specific, N(0, 0.02^2) init) replace the placeholders before the
template sentence; the text tower stays frozen; cross-entropy of teacher-scale logits between cached image
features and the C prompt embeddings (methods-spec 2.1: SGD 0.002, momentum 0.9, cosine to 0, no warm-up,
batch 32, gradient clipping 1.0). Image features are computed once per image with the teacher's own eval
preprocessing; only the text tower runs while training.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from distill.config import EmaConfig, OptimizerConfig, ScheduleConfig, TrainConfig
from distill.distributed import DistContext
from distill.engine import train
from distill.objectives import PromptContext, PromptObjective
from distill.teachers.base import Teacher
from runtime.atomic import atomic_path
from runtime.classifier import contract_batches
from runtime.datasets import Dataset
from runtime.errors import ToolkitError

Progress = Callable[[int, int], None]


@torch.no_grad()
def image_features(
    teacher: Teacher, dataset: Dataset, batch_size: int = 64, progress: Progress | None = None
) -> torch.Tensor:
    """(N, D) normalised teacher embeddings of every image, through the teacher's own preprocessing."""
    feats = []
    for i, batch in enumerate(contract_batches(dataset, teacher.contract, batch_size)):
        feats.append(teacher.encode_image(torch.from_numpy(batch)).float())
        if progress:
            progress(min((i + 1) * batch_size, len(dataset)), len(dataset))
    return torch.cat(feats) if feats else torch.empty(0, teacher.embed_dim)


def top1(teacher: Teacher, feats: torch.Tensor, labels: np.ndarray, anchors: torch.Tensor) -> float:
    with torch.no_grad():
        preds = teacher.zero_shot_logits(feats, anchors).argmax(1).numpy()
    return float((preds == labels).mean())


@dataclass
class CoOpConfig:
    n_ctx: int = 16
    epochs: int = 50
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    clip_grad: float = 1.0
    init_std: float = 0.02
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_ctx < 1 or self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ToolkitError(f"CoOp settings must be positive: {self}")


@dataclass
class CoOpResult:
    context: torch.Tensor
    anchors: torch.Tensor
    history: list[dict[str, float]] = field(default_factory=list)


class FeatureDataset(torch.utils.data.Dataset):
    """CoOp's training items: (image feature, label). With M crops per image (N, M, D), epoch e uses crop
    ``crop_for(i, e)`` of image i: by default one drawn from (seed, image, epoch); PAND's PSC stage passes the
    teacher cache's schedule, so it sees the same views as the student stage."""

    def __init__(self, feats: torch.Tensor, labels: np.ndarray, seed: int = 0,
                 crop_for: Callable[[int, int], int] | None = None) -> None:  # fmt: skip
        self.feats, self.labels, self.seed, self.epoch = feats.float(), labels, seed, 0
        self.crop_for = crop_for or self._drawn

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self.feats.ndim == 2:
            return self.feats[i], int(self.labels[i])
        return self.feats[i, self.crop_for(i, self.epoch)], int(self.labels[i])

    def _drawn(self, i: int, epoch: int) -> int:
        return int(np.random.default_rng([self.seed, i, epoch]).integers(self.feats.shape[1]))


def calibrate(
    teacher: Teacher,
    feats: torch.Tensor,
    labels: np.ndarray,
    class_names: list[str],
    template: str,
    config: CoOpConfig,
    progress: Progress | None = None,
) -> CoOpResult:
    """Learn the shared context on (feats, labels) in the training engine; returns the context and the
    calibrated anchors.

    ``feats`` is (N, D), one feature per image, or (N, M, D), M cached crops per image: each epoch then uses
    one crop of every image (training on augmented crops costs only text-tower passes).
    """
    if len(feats) != len(labels) or not len(feats):
        raise ToolkitError(f"CoOp needs one label per image feature, got {len(feats)} features, {len(labels)} labels")
    context = PromptContext(config.n_ctx, teacher.text_width, config.init_std,
                            torch.Generator().manual_seed(config.seed))  # fmt: skip
    objective = PromptObjective(context, config.epochs, teacher=teacher, prompts=class_names, template=template)
    cfg = TrainConfig(
        epochs=config.epochs, batch_size=min(config.batch_size, len(feats)), grad_clip=config.clip_grad,
        optimizer=OptimizerConfig(name="sgd", lr=config.lr, momentum=config.momentum,
                                  weight_decay=config.weight_decay, nesterov=False),
        schedule=ScheduleConfig(name="cosine", warmup_epochs=0, min_lr_ratio=0.0), ema=EmaConfig(enabled=False),
        precision="fp32", channels_last=False, device="cpu", select="last",
    )  # fmt: skip
    ctx = DistContext(0, 1, 0, torch.device("cpu"))
    quiet = Console(stderr=True, quiet=True)

    def on_epoch(history: list[dict[str, Any]]) -> None:
        if progress:
            progress(len(history), config.epochs)

    with tempfile.TemporaryDirectory(prefix="coop-") as tmp:
        result = train(objective, FeatureDataset(feats, labels, config.seed), cfg, Path(tmp), config.seed, ctx,
                       stage="coop", console=quiet, on_epoch=on_epoch)  # fmt: skip
    context.load_state_dict(result.weights)
    with torch.no_grad():
        anchors = objective.anchors()
    history = [{"epoch": r["epoch"], "loss": r["train_loss"], "train_top1": r["train_top1"]} for r in result.history]
    return CoOpResult(context.context.detach().clone(), anchors.detach(), history)


def save_anchors(
    path: str | os.PathLike[str], anchors: torch.Tensor, provenance: dict[str, Any], context: torch.Tensor | None = None
) -> None:
    """F_txt (C, D) fp32, L2-normalised, with provenance (teacher, template, class names, data hash) in metadata."""
    tensors = {"anchors": F.normalize(anchors.float(), dim=-1).contiguous()}
    if context is not None:
        tensors["context"] = context.float().contiguous()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"toolkit.anchors": json.dumps(provenance)})


def load_anchors(path: str | os.PathLike[str], teacher_spec: str | None = None, class_names: list[str] | None = None):
    """(anchors, provenance); checks they were made for this teacher and these classes."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("toolkit.anchors", "null"))
            anchors = fh.get_tensor("anchors")
    except (OSError, ValueError, SafetensorError) as exc:
        raise ToolkitError(f"{path}: not a class-anchor file written by `toolkit teacher calibrate` ({exc})") from exc
    if meta is None:
        raise ToolkitError(f"{path}: no provenance metadata; write anchors with `toolkit teacher calibrate`")
    if teacher_spec and meta.get("teacher") != teacher_spec:
        raise ToolkitError(f"{path}: anchors of teacher {meta.get('teacher')!r}, not {teacher_spec!r}")
    if class_names is not None and meta.get("class_names") != list(class_names):
        raise ToolkitError(f"{path}: anchors for classes {meta.get('class_names')}, the data has {list(class_names)}")
    return anchors, meta
