"""Recovery by distillation from a model's own cached logits: what `toolkit prune` and quantization-aware
distillation train with.

Each training image is seen through the run's eval preprocessing, flipped or not by a per-(seed, epoch, image)
draw; the reference model's logits for both views are computed once before training, so recovery never runs the
reference model again and its targets are exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from distill.data import ImageTensorDataset
from distill.losses.kd import kd_loss
from distill.objectives import Objective, TermValues
from runtime.datasets import Dataset

FLIP_STREAM = 0x5EED_F11


class FlipViews(torch.utils.data.Dataset):
    """(eval-preprocessed image, label, teacher logits of that very view): the view is flipped or not by a seeded
    draw per (epoch, image), and the teacher's logits for both views were computed once."""

    def __init__(self, dataset: Dataset, transform: Any, logits: torch.Tensor, seed: int) -> None:
        self.dataset, self.transform, self.logits, self.seed, self.epoch = dataset, transform, logits, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        flip = int(np.random.default_rng([self.seed, FLIP_STREAM, self.epoch, i]).random() < 0.5)
        x = self.transform(self.dataset.image(i))
        return (x.flip(-1) if flip else x), int(self.dataset.labels[i]), self.logits[i, flip]


class CachedLogitsKD(Objective):
    """(1 - alpha) CE + alpha T^2 KL against cached teacher logits of the same view (Hinton KD, recovery form).

    The student runs whole (``net(x)``), not split into features and head: a fake-quantized model's quantizers
    hook its ``forward``."""

    def compute(self, x: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor) -> TermValues:
        logits = self.net(x)
        kd = kd_loss(logits, teacher, float(self.params["temperature"]))
        return TermValues({"cls": self.ce(logits, y), "kd": kd}, logits)


def teacher_views(model: nn.Module, dataset: Dataset, transform: Any, batch_size: int) -> torch.Tensor:
    """(N, 2, C) logits of ``model`` on each image as preprocessed and horizontally flipped."""
    loader = torch.utils.data.DataLoader(ImageTensorDataset(dataset, transform=transform), batch_size=batch_size)
    out = []
    with torch.no_grad():
        for x, _ in loader:
            out.append(torch.stack([model(x), model(x.flip(-1))], dim=1))
    return torch.cat(out)
