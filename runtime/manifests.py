"""Datasets stored as image files: ImageFolder trees and CSV manifests (path,label)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from runtime.datasets import FileDataset
from runtime.errors import DataError
from runtime.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS

SYMLINK_POLICIES = ("refuse", "follow_once")


def load_image_folder(
    root: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS, symlinks: str = "refuse"
) -> FileDataset:
    """``root/<class>/<image>``: classes are the sorted sub-folder names (torchvision's convention).

    Symlinked folders inside the root are followed. ``symlinks`` "refuse" makes a loop or a link out of the root
    an error; "follow_once" reads every real folder once (a loop ends where it comes back) wherever it lies."""
    if symlinks not in SYMLINK_POLICIES:
        raise DataError(f"data.symlinks {symlinks!r} is not one of {SYMLINK_POLICIES}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: ImageFolder root is not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class sub-folders; expected {root}/<class name>/<image files>")
    paths: list[Path] = []
    labels: list[int] = []
    real_root = root.resolve()
    for label, cls in enumerate(classes):
        seen: set[Path] = set()
        for dirpath, dirnames, filenames in os.walk(root / cls, followlinks=True):
            if symlinks == "follow_once":
                real = Path(dirpath).resolve()
                if real in seen:
                    dirnames[:] = []
                    continue
                seen.add(real)
            else:
                _check_link(Path(dirpath), real_root, seen)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fname in sorted(filenames):
                if not fname.startswith(".") and fname.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(Path(dirpath) / fname)
                    labels.append(label)
    if not paths:
        raise DataError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) under the class folders")
    return FileDataset(root.name, paths, np.asarray(labels, np.int64), classes, root, max_pixels)


def _check_link(folder: Path, real_root: Path, seen: set[Path]) -> None:
    """Symlinked folders are followed once and only inside the dataset: a loop would read the same images
    again and again, a link out of the root would train on files the manifest's fingerprint does not name."""
    real = folder.resolve()
    if real in seen:
        raise DataError(
            f"{folder}: a symlink loop (back to {real}); remove the link, or set data.symlinks: follow_once"
        )
    if real != real_root and real_root not in real.parents:
        raise DataError(
            f"{folder}: a symlink out of the dataset root {real_root} (to {real}); copy the images in, or set "
            "data.symlinks: follow_once"
        )
    seen.add(real)


# ---------------------------------------------------------------- CSV manifest


def load_csv_manifest(
    csv_path: str | os.PathLike[str],
    class_names: list[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> FileDataset:
    """A CSV with a header holding ``path`` and ``label`` columns; relative paths are relative to the CSV.

    Labels are class names. Classes are ``class_names`` when given (fixing their order), otherwise the
    sorted distinct labels.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: CSV manifest not found")
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in ("path", "label") if c not in header]
        if missing:
            raise DataError(
                f"{csv_path}: header {header} lacks column(s) {missing}; the first line must be 'path,label'"
            )
        rows = [(n + 2, r["path"], r["label"]) for n, r in enumerate(reader)]
    if not rows:
        raise DataError(f"{csv_path}: no rows after the header")
    for line, path, label in rows:
        if not path or not label:
            raise DataError(f"{csv_path}:{line}: empty path or label")
    classes = list(class_names) if class_names else sorted({label for _, _, label in rows})
    index = {c: i for i, c in enumerate(classes)}
    paths: list[Path] = []
    labels: list[int] = []
    for line, path, label in rows:
        if label not in index:
            raise DataError(f"{csv_path}:{line}: label {label!r} is not one of the classes {classes}")
        p = Path(path)
        p = p if p.is_absolute() else csv_path.parent / p
        if not p.is_file():
            raise DataError(f"{csv_path}:{line}: image file {p} does not exist")
        paths.append(p)
        labels.append(index[label])
    return FileDataset(csv_path.stem, paths, np.asarray(labels, np.int64), classes, csv_path.parent, max_pixels)
