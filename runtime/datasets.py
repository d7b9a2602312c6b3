"""Labelled image datasets as manifests: ImageFolder trees, CSV manifests, Fashion-MNIST IDX files.

A dataset here is a list of items with integer labels and class names, each item decodable to an RGB
PIL image on demand, plus a fingerprint that changes when the data does (recorded in run manifests).
"""

from __future__ import annotations

import csv
import gzip
from abc import ABC, abstractmethod
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from runtime.errors import DataError
from runtime.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, load_image


class Dataset(ABC):
    """Base: ``labels`` (int64, one per item), ``class_names``, ``image(i)`` and ``fingerprint()``."""

    name: str
    class_names: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return int(len(self.labels))

    @abstractmethod
    def image(self, index: int) -> Image.Image:
        """Item ``index`` decoded as an RGB image."""

    @abstractmethod
    def describe(self, index: int) -> str:
        """Where item ``index`` comes from, for error messages."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A hash that changes when the items, labels or classes change."""

    def subset(self, indices: np.ndarray | list[int]) -> "SubsetDataset":
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

    def scan(self, workers: int = 4) -> list[tuple[int, str]]:
        """Decode every image once; return (index, reason) for each one that fails."""
        def check(i: int) -> tuple[int, str] | None:
            try:
                load_image(self.paths[i], self.max_pixels)
            except DataError as exc:
                return i, str(exc)
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


# ---------------------------------------------------------------- ImageFolder


def load_image_folder(root: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> FileDataset:
    """``root/<class>/<image>``: classes are the sorted sub-folder names (torchvision's convention)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: ImageFolder root is not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class sub-folders; expected {root}/<class name>/<image files>")
    paths: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(root / cls, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fname in sorted(filenames):
                if not fname.startswith(".") and fname.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(Path(dirpath) / fname)
                    labels.append(label)
    if not paths:
        raise DataError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) under the class folders")
    return FileDataset(root.name, paths, np.asarray(labels, np.int64), classes, root, max_pixels)


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


# ---------------------------------------------------------------- Fashion-MNIST

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def _default_cache_dir() -> Path:
    return Path(os.environ.get("TOOLKIT_CACHE", Path.home() / ".cache" / "edge-distill-toolkit")) / "fashion-mnist"


def fashion_mnist_search_dirs(root: str | os.PathLike[str] | None) -> list[Path]:
    """Where Fashion-MNIST is looked for, in order: the given root, $TOOLKIT_FASHION_MNIST, Debian, cache."""
    if root is not None:
        return [Path(root)]
    dirs = [Path(d) for d in [os.environ.get("TOOLKIT_FASHION_MNIST")] if d]
    return dirs + [FASHION_MNIST_DEBIAN_DIR, _default_cache_dir()]


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (optionally gzipped) of unsigned bytes, as in MNIST / Fashion-MNIST."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc})") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    if data[2] != 0x08:
        raise DataError(f"{path}: IDX element type 0x{data[2]:02x} is not unsigned byte (0x08)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: IDX header truncated")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) if shape else 0
    if len(data) - header != expected:
        raise DataError(f"{path}: IDX payload has {len(data) - header} bytes, shape {shape} needs {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def download_fashion_mnist(directory: Path) -> None:
    """Fetch the four gzipped IDX files from the dataset's public mirror (needs internet)."""
    import urllib.request

    from runtime.atomic import atomic_path

    directory.mkdir(parents=True, exist_ok=True)
    for stems in FASHION_MNIST_FILES.values():
        for stem in stems:
            target = directory / f"{stem}.gz"
            if target.is_file():
                continue
            with atomic_path(target) as tmp:
                try:
                    urllib.request.urlretrieve(FASHION_MNIST_URL + target.name, tmp)
                except OSError as exc:
                    raise DataError(f"downloading Fashion-MNIST {target.name} failed: {exc}") from exc


def load_fashion_mnist(
    split: str = "train", root: str | os.PathLike[str] | None = None, download: bool = False
) -> ArrayDataset:
    """Fashion-MNIST ``train`` (60,000) or ``test`` (10,000) from its IDX files."""
    if split not in FASHION_MNIST_FILES:
        raise DataError(f"Fashion-MNIST split {split!r} must be 'train' or 'test'")
    img_stem, lbl_stem = FASHION_MNIST_FILES[split]
    searched = fashion_mnist_search_dirs(root)
    for directory in searched:
        img_path, lbl_path = _find_idx(directory, img_stem), _find_idx(directory, lbl_stem)
        if img_path and lbl_path:
            break
    else:
        if not download:
            raise DataError(
                f"Fashion-MNIST {split} files ({img_stem}[.gz], {lbl_stem}[.gz]) not found in "
                f"{', '.join(map(str, searched))}. Install them with 'apt-get install dataset-fashion-mnist', "
                "point data.<split>.path at a folder holding the IDX files, or set download: true (needs internet)."
            )
        directory = Path(root) if root is not None else _default_cache_dir()
        download_fashion_mnist(directory)
        img_path, lbl_path = _find_idx(directory, img_stem), _find_idx(directory, lbl_stem)
        if not (img_path and lbl_path):
            raise DataError(f"{directory}: Fashion-MNIST download finished but {img_stem}.gz is missing")
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{img_path} / {lbl_path}: shapes {images.shape} and {labels.shape} do not match")
    if labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{lbl_path}: label {labels.max()} out of range 0..9")
    return ArrayDataset(f"fashion_mnist-{split}", images, labels.astype(np.int64), list(FASHION_MNIST_CLASSES))


# ---------------------------------------------------------------- stratified split


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic class-stratified (train, val) index split of a training set.

    Each class keeps round(val_fraction * n) items for validation (at least one when it has two or more),
    drawn with a generator seeded by (seed, class), so adding a class never reshuffles the others.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction {val_fraction} must be in [0, 1)")
    labels = np.asarray(labels)
    train_idx: list[np.ndarray] = []
    val_idx: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        perm = np.random.default_rng([seed, int(cls)]).permutation(members)
        n_val = int(round(val_fraction * len(members)))
        if val_fraction > 0 and len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        val_idx.append(perm[:n_val])
        train_idx.append(perm[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))
