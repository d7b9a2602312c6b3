"""Byte-identical image files: copies inside a dataset (and copies filed under different classes, which are
label noise), and test images that are also training images (a leak that inflates test accuracy)."""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from runtime.datasets import Dataset, FileDataset, SubsetDataset

EXAMPLES = 5


def file_digests(paths: list[Path], workers: int = 8) -> list[str | None]:
    """sha256 of each file that shares its byte size with another one (only those can be copies); else None."""
    sizes: list[int] = []
    for p in paths:
        try:
            sizes.append(os.stat(p).st_size)
        except OSError:
            sizes.append(-1)
    count: dict[int, int] = defaultdict(int)
    for s in sizes:
        count[s] += 1

    def digest(i: int) -> str | None:
        if sizes[i] < 0 or count[sizes[i]] < 2:
            return None
        h = hashlib.sha256()
        with open(paths[i], "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return f"{sizes[i]}:{h.hexdigest()}"

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(digest, range(len(paths))))


def _files(dataset: Dataset) -> tuple[list[Path], list[int], list[str]] | None:
    """(paths, labels, class names) of a file-backed dataset or of a subset of one; None for in-memory data."""
    if isinstance(dataset, SubsetDataset) and isinstance(dataset.base, FileDataset):
        base = dataset.base
        return [base.paths[i] for i in dataset.indices], [int(x) for x in dataset.labels], list(base.class_names)
    if isinstance(dataset, FileDataset):
        return list(dataset.paths), [int(x) for x in dataset.labels], list(dataset.class_names)
    return None


def duplicates(dataset: Dataset) -> dict[str, Any]:
    """Groups of byte-identical files: how many, how many extra copies, how many span several classes."""
    files = _files(dataset)
    if files is None:
        return {"checked": False}
    paths, labels, names = files
    groups: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(file_digests(paths)):
        if d is not None:
            groups[d].append(i)
    found = [g for g in groups.values() if len(g) > 1]
    conflicting = [g for g in found if len({labels[i] for i in g}) > 1]
    return {
        "checked": True,
        "groups": len(found),
        "extra_copies": sum(len(g) - 1 for g in found),
        "conflicting_labels": len(conflicting),
        "examples": [[f"{paths[i]} ({names[labels[i]]})" for i in g] for g in (conflicting + found)[:EXAMPLES]],
    }


def overlap(train: Dataset, test: Dataset) -> dict[str, Any]:
    """Test images whose bytes equal a training image's."""
    a, b = _files(train), _files(test)
    if a is None or b is None:
        return {"checked": False}
    digests = file_digests(a[0] + b[0])
    seen = {d: p for d, p in zip(digests[: len(a[0])], a[0]) if d is not None}
    leaked = [(p, seen[d]) for d, p in zip(digests[len(a[0]) :], b[0]) if d is not None and d in seen]
    return {
        "checked": True,
        "test_images_in_train": len(leaked),
        "examples": [f"{t} = {s}" for t, s in leaked[:EXAMPLES]],
    }
