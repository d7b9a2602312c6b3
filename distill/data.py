"""Torch views of runtime datasets, with augmentation seeded per (seed, epoch, item).

Seeding each item's augmentation from (seed, epoch, index) makes a batch's content independent of
worker count, DDP rank layout and of whether the run was resumed: the basis of exact resume.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset as TorchDataset

from distill.crops import CropRecipe, sample_view, view_input
from distill.transforms import TrainTransform
from runtime.datasets import Dataset
from runtime.preprocess import PreprocessContract

AUGMENT_STREAM, MODEL_STREAM, STAGE_INIT_STREAM = 0, 1, 2


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from non-negative integer keys (independent streams for distinct key tuples)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> 1)


class ImageTensorDataset(TorchDataset):
    """(image tensor, label) pairs from a runtime dataset: deterministic ``transform`` or seeded ``augment``."""

    def __init__(
        self,
        dataset: Dataset,
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        augment: TrainTransform | None = None,
        seed: int = 0,
    ) -> None:
        if (transform is None) == (augment is None):
            raise ValueError("give exactly one of transform (deterministic) or augment (seeded)")
        self.dataset = dataset
        self.transform = transform
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.dataset.image(index)
        label = int(self.dataset.labels[index])
        if self.augment is None:
            return self.transform(image), label  # type: ignore[misc]
        rng = np.random.default_rng([self.seed, AUGMENT_STREAM, self.epoch, index])
        return self.augment(image, rng), label


class FreshCropDataset(TorchDataset):
    """(student input, label, empty teacher embedding) with a crop drawn per (seed, epoch, item) from ``recipe``:
    the same augmentation as cached distillation, for methods that need no teacher."""

    def __init__(self, dataset: Dataset, recipe: CropRecipe, contract: PreprocessContract, seed: int = 0) -> None:
        self.dataset, self.recipe, self.contract, self.seed, self.epoch = dataset, recipe, contract, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        image = self.dataset.image(index)
        rng = np.random.default_rng([self.seed, AUGMENT_STREAM, self.epoch, index])
        box, flip, draw = sample_view(rng, *image.size, self.recipe)
        x = torch.from_numpy(view_input(image, box, flip, draw, self.recipe, self.contract))
        return x, int(self.dataset.labels[index]), torch.zeros(0)
