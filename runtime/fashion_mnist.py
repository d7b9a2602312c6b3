"""Fashion-MNIST from its IDX files: Debian's dataset-fashion-mnist, a user folder, or a download."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from runtime.datasets import ArrayDataset
from runtime.errors import DataError

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
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
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
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
