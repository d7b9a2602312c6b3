"""Dataset specs (what a recipe or ``--data`` names) -> opened, validated datasets."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.datasets import ArrayDataset, Dataset, FileDataset
from runtime.errors import DataError, did_you_mean
from runtime.fashion_mnist import load_fashion_mnist
from runtime.images import DEFAULT_MAX_PIXELS
from runtime.manifests import load_csv_manifest, load_image_folder

KINDS = ("fashion_mnist", "imagefolder", "csv")
BAD_IMAGE_POLICIES = ("error", "skip")


@dataclass(frozen=True)
class DataSource:
    """One dataset: ``kind`` with a ``path`` (folder or CSV) and, for Fashion-MNIST, a ``split``."""

    kind: str
    path: str | None = None
    split: str = "train"
    download: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    symlinks: str = "refuse"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"data kind {self.kind!r} is not one of {KINDS}." + did_you_mean(self.kind, KINDS))
        if self.kind != "fashion_mnist" and not self.path:
            raise DataError(f"data kind {self.kind!r} needs a path")

    def open(self, class_names: list[str] | None = None) -> Dataset:
        if self.kind == "fashion_mnist":
            return load_fashion_mnist(self.split, self.path, self.download)
        if self.kind == "imagefolder":
            return load_image_folder(self.path, self.max_pixels, self.symlinks)  # type: ignore[arg-type]
        return load_csv_manifest(self.path, class_names, self.max_pixels)  # type: ignore[arg-type]


def parse_data_arg(arg: str, max_pixels: int = DEFAULT_MAX_PIXELS, symlinks: str = "refuse") -> DataSource:
    """CLI form: ``fashion_mnist:test`` / ``fashion_mnist:train[:DIR]``, a ``.csv`` file, or an ImageFolder dir."""
    if arg.startswith("fashion_mnist"):
        parts = arg.split(":", 2)
        split = parts[1] if len(parts) > 1 and parts[1] else "test"
        return DataSource("fashion_mnist", parts[2] if len(parts) > 2 else None, split)
    path = Path(arg)
    if path.suffix.lower() == ".csv":
        return DataSource("csv", str(path), max_pixels=max_pixels)
    if path.is_dir():
        return DataSource("imagefolder", str(path), max_pixels=max_pixels, symlinks=symlinks)
    raise DataError(
        f"--data {arg!r}: not an ImageFolder directory, a .csv manifest or fashion_mnist:<train|test>[:DIR]"
    )


def check_images(
    dataset: Dataset, policy: str, workers: int | None = None, on_item: Callable[[], None] | None = None
) -> tuple[Dataset, dict[str, Any]]:
    """Decode every file-backed image once, before training, so no epoch can crash halfway.

    ``policy`` "error" raises a DataError listing the bad files; "skip" drops them and reports them.
    Returns the usable dataset and a report {checked, skipped, bad: [{file, reason}]}.
    """
    if policy not in BAD_IMAGE_POLICIES:
        raise DataError(f"on_bad_image {policy!r} must be one of {BAD_IMAGE_POLICIES}")
    base = dataset
    if not isinstance(base, FileDataset):
        return dataset, {"checked": len(dataset), "skipped": 0, "bad": []}
    bad = base.scan(workers or min(8, (os.cpu_count() or 2) * 2), on_item)
    report = {"checked": len(base), "skipped": 0, "bad": [{"file": str(base.paths[i]), "reason": r} for i, r in bad]}
    if not bad:
        return dataset, report
    if policy == "error":
        shown = "\n  ".join(r for _, r in bad[:10])
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise DataError(
            f"{len(bad)} unusable image(s) in {base.root}:\n  {shown}{more}\n"
            "Fix or remove them, or set data.on_bad_image: skip (--set data.on_bad_image=skip) to skip and count them."
        )
    bad_set = {i for i, _ in bad}
    keep = [i for i in range(len(base)) if i not in bad_set]
    if not keep:
        raise DataError(f"{base.root}: every image is unusable; first: {bad[0][1]}")
    report["skipped"] = len(bad)
    return base.subset(keep), report


def align_classes(dataset: Dataset, class_names: list[str], whose: str = "the model's classes") -> Dataset:
    """Re-index ``dataset``'s labels onto ``class_names`` (a model's classes), matching by name.

    An evaluation folder may hold a subset of the classes, in any order; a class the model does not
    know is an error naming it.
    """
    if list(dataset.class_names) == list(class_names):
        return dataset
    index = {c: i for i, c in enumerate(class_names)}
    unknown = [c for c in dataset.class_names if c not in index]
    if unknown:
        hints = "".join(f" {c!r}:{did_you_mean(c, class_names) or ' no close match.'}" for c in unknown[:5])
        where = getattr(dataset, "root", None) or dataset.name
        raise DataError(
            f"{where}: class(es) {unknown} are not among {whose} {list(class_names)};{hints} Rename the folders "
            "(or labels) to match, or remove them"
        )
    mapping = [index[c] for c in dataset.class_names]
    if not isinstance(dataset, (FileDataset, ArrayDataset)):
        raise DataError(f"dataset {dataset.name!r} cannot be re-labelled; open it from its source")
    return dataclasses.replace(
        dataset, labels=np.asarray(mapping, np.int64)[dataset.labels], class_names=list(class_names)
    )
