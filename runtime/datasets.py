"""Labelled image datasets: items with integer labels and class names, each decodable to an RGB image
on demand, plus a fingerprint that changes when the data does (recorded in run manifests).

Loaders: runtime.manifests (ImageFolder, CSV), runtime.fashion_mnist (IDX files).
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from runtime.errors import DataError
from runtime.images import DEFAULT_MAX_PIXELS, load_image


class Dataset(ABC):
    """Base: ``labels`` (int64, one per item), ``class_names``, ``image(i)`` and ``fingerprint()``."""

    name: str
    class_names: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @abstractmethod
    def image(self, index: int) -> Image.Image:
        """Item ``index`` decoded as an RGB image."""

    @abstractmethod
    def describe(self, index: int) -> str:
        """Where item ``index`` comes from, for error messages."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A hash that changes when the items, labels or classes change."""

    def subset(self, indices: np.ndarray | list[int]) -> SubsetDataset:
        return SubsetDataset(self, np.asarray(indices, dtype=np.int64))

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {c: int(n) for c, n in zip(self.class_names, counts)}


@dataclass
class FileDataset(Dataset):
    """Images stored as files (ImageFolder tree or CSV manifest)."""

    name: str
    paths: list[Path]
    labels: np.ndarray
    class_names: list[str]
    root: Path
    max_pixels: int = DEFAULT_MAX_PIXELS

    def image(self, index: int) -> Image.Image:
        return load_image(self.paths[index], self.max_pixels)

    def describe(self, index: int) -> str:
        return str(self.paths[index])

    def fingerprint(self) -> str:
        """sha256 over (relative path, class, byte size) of every item, and the class list."""
        h = hashlib.sha256("\n".join(self.class_names).encode())
        for path, label in zip(self.paths, self.labels):
            try:
                rel = os.path.relpath(path, self.root)
                size = path.stat().st_size
            except (OSError, ValueError):
                rel, size = str(path), -1
            h.update(f"\n{rel}\t{self.class_names[label]}\t{size}".encode())
        return h.hexdigest()

    def scan(self, workers: int = 4, on_item: Callable[[], None] | None = None) -> list[tuple[int, str]]:
        """Decode every image once; return (index, reason) for each one that fails.

        ``on_item`` is called after each image (for a progress bar; runtime has no UI of its own).
        """

        def check(i: int) -> tuple[int, str] | None:
            try:
                load_image(self.paths[i], self.max_pixels)
            except DataError as exc:
                return i, str(exc)
            finally:
                if on_item is not None:
                    on_item()
            return None

        with ThreadPoolExecutor(max_workers=workers) as pool:
            return [r for r in pool.map(check, range(len(self.paths))) if r is not None]


@dataclass
class ArrayDataset(Dataset):
    """Images held in memory as a uint8 array (N, H, W) greyscale or (N, H, W, 3) RGB."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index]).convert("RGB")

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}]"

    def fingerprint(self) -> str:
        h = hashlib.sha256("\n".join(self.class_names).encode())
        h.update(np.ascontiguousarray(self.images).tobytes())
        h.update(np.ascontiguousarray(self.labels.astype(np.int64)).tobytes())
        return h.hexdigest()


@dataclass
class SubsetDataset(Dataset):
    """A view of ``base`` restricted to ``indices`` (a split, or the images that passed a scan)."""

    base: Dataset
    indices: np.ndarray
    name: str = field(init=False)
    class_names: list[str] = field(init=False)
    labels: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.base.name
        self.class_names = self.base.class_names
        self.labels = self.base.labels[self.indices]

    def image(self, index: int) -> Image.Image:
        return self.base.image(int(self.indices[index]))

    def describe(self, index: int) -> str:
        return self.base.describe(int(self.indices[index]))

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.base.fingerprint().encode())
        h.update(np.ascontiguousarray(self.indices).tobytes())
        return h.hexdigest()


@dataclass
class ClassSubsetDataset(Dataset):
    """The items of ``base`` whose class is one of ``classes`` (indices into base.class_names), relabelled
    0..len(classes)-1 in that order: CoOp/FDBPL's base and new halves of a dataset."""

    base: Dataset
    classes: list[int]
    name: str = field(init=False)
    class_names: list[str] = field(init=False)
    labels: np.ndarray = field(init=False)
    indices: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        position = np.full(len(self.base.class_names), -1, np.int64)
        position[np.asarray(self.classes, np.int64)] = np.arange(len(self.classes))
        self.indices = np.flatnonzero(position[self.base.labels] >= 0)
        self.name = self.base.name
        self.class_names = [self.base.class_names[c] for c in self.classes]
        self.labels = position[self.base.labels[self.indices]]

    def image(self, index: int) -> Image.Image:
        return self.base.image(int(self.indices[index]))

    def describe(self, index: int) -> str:
        return self.base.describe(int(self.indices[index]))

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.base.fingerprint().encode())
        h.update(np.asarray(self.classes, np.int64).tobytes())
        return h.hexdigest()


def base_new_classes(num_classes: int) -> tuple[list[int], list[int]]:
    """CoOp's base-to-new split: the first ceil(C/2) classes are base, the rest new."""
    m = -(-num_classes // 2)
    return list(range(m)), list(range(m, num_classes))
