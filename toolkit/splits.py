"""A recipe's data splits, rebuilt identically by every step: train / held-out validation, and the few-shot
subset of train that distillation uses (so export calibrates on the images the student was trained on)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from export.calibration import stratified_sample
from runtime.datasets import ClassSubsetDataset, Dataset, base_new_classes
from runtime.split import stratified_split
from toolkit.datacheck import check_dataset, check_shots, check_trainable
from toolkit.recipe import Recipe


@dataclass
class Splits:
    full: Dataset
    bad_images: dict[str, Any]
    train: Dataset
    val: Dataset | None
    new_classes: list[str] = field(default_factory=list)  # distill.classes base: the held-back classes


def recipe_splits(recipe: Recipe, console: Console) -> Splits:
    data = recipe.data
    full, bad = check_dataset(data.open_train(), data.on_bad_image, console)
    new: list[str] = []
    if recipe.distill is not None and recipe.distill.classes == "base":
        base, rest = base_new_classes(len(full.class_names))
        new = [full.class_names[c] for c in rest]
        full = ClassSubsetDataset(full, base)
    check_trainable(full, data.val_fraction)
    train_idx, val_idx = stratified_split(full.labels, data.val_fraction, recipe.seed)
    train = full.subset(train_idx)
    shots = recipe.distill.shots if recipe.distill is not None else 0
    check_shots(train, shots)
    if shots:
        train = train.subset(stratified_sample(train.labels, shots * len(full.class_names), recipe.seed))
    return Splits(full, bad, train, full.subset(val_idx) if len(val_idx) else None, new)
