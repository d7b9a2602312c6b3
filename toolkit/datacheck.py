"""The decode-every-image check before training or evaluation, with a progress bar."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress

from runtime.datasets import Dataset, FileDataset
from runtime.duplicates import duplicates, overlap
from runtime.errors import DataError
from runtime.sources import check_images


def check_dataset(dataset: Dataset, policy: str, console: Console, show: bool = True) -> tuple[Dataset, dict[str, Any]]:
    """``runtime.sources.check_images`` with progress; prints how many images were skipped and which files are
    byte-identical copies (the report records both)."""
    total = len(dataset) if isinstance(dataset, FileDataset) else 0
    with Progress(console=console, transient=True, disable=not (show and total)) as progress:
        task = progress.add_task(f"checking {total} images of {dataset.name}", total=total)
        clean, report = check_images(dataset, policy, on_item=lambda: progress.advance(task))
    report["duplicates"] = dup = duplicates(dataset)
    if dup.get("groups") and show:
        console.print(
            f"{dataset.name}: {dup['extra_copies']} duplicate file(s) (byte-identical) in {dup['groups']} group(s)"
            + (f", {dup['conflicting_labels']} of them under different classes (label noise)"
               if dup["conflicting_labels"] else "")
            + f"; e.g. {', '.join(dup['examples'][0])}",
            style="yellow", markup=False,
        )  # fmt: skip
    if report["skipped"] and show:
        console.print(
            f"skipped {report['skipped']} unusable image(s) of {report['checked']} in {dataset.name} "
            "(listed in manifest.json)",
            style="yellow",
            markup=False,
        )
    return clean, report


def check_overlap(train: Dataset, test: Dataset | None, console: Console, show: bool = True) -> dict[str, Any]:
    """Warn when test images are byte-identical to training images: the test accuracy would be inflated."""
    if test is None:
        return {"checked": False}
    found = overlap(train, test)
    if found.get("test_images_in_train") and show:
        console.print(
            f"{found['test_images_in_train']} test image(s) of {test.name} are copies of training images, so the "
            f"test top-1 overstates accuracy; e.g. {found['examples'][0]}",
            style="yellow", markup=False,
        )  # fmt: skip
    return found


def check_trainable(dataset: Dataset, val_fraction: float) -> None:
    """A training set a classifier can learn from, checked before anything trains: at least two classes, every
    class with a usable image, and two per class when ``val_fraction`` > 0 (one to train on, one to validate)."""
    names = list(dataset.class_names)
    if len(names) < 2:
        raise DataError(
            f"{_where(dataset)}: {len(names)} class(es) {names}: a classifier needs at least two; add images of the "
            "other classes (one folder per class for an ImageFolder)"
        )
    counts = np.bincount(np.asarray(dataset.labels, np.int64), minlength=len(names))
    empty = [n for n, c in zip(names, counts) if c == 0]
    if empty:
        raise DataError(
            f"{_where(dataset)}: class(es) {empty} have no usable image (an empty folder, or every image skipped "
            "as unreadable); add images or remove the class"
        )
    _enough(dataset, counts, 2 if val_fraction > 0 else 1, f"data.val_fraction {val_fraction}")


def check_shots(train: Dataset, shots: int) -> None:
    """Few-shot selection needs ``shots`` training images of every class (after the validation split)."""
    if shots:
        counts = np.bincount(np.asarray(train.labels, np.int64), minlength=len(train.class_names))
        _enough(train, counts, shots, f"distill.shots {shots}")


def _enough(dataset: Dataset, counts: np.ndarray, need: int, setting: str) -> None:
    short = [f"{n} ({c} of {need})" for n, c in zip(dataset.class_names, counts) if c < need]
    if short:
        raise DataError(
            f"{_where(dataset)}: {len(short)} class(es) have fewer images than {setting} needs ({need} per class): "
            f"{', '.join(short[:8])}{' ...' if len(short) > 8 else ''}; add images, or lower {setting.split()[0]}"
        )


def _where(dataset: Dataset) -> str:
    return str(getattr(dataset, "root", None) or dataset.name)
