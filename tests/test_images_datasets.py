"""Data layer: ImageFolder, CSV manifests, IDX files, splits, and every kind of bad image."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import FASHION_DIR, HAVE_FASHION, write_image_folder
from PIL import Image

from runtime.errors import DataError
from runtime.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist, read_idx
from runtime.images import load_image
from runtime.manifests import load_csv_manifest, load_image_folder
from runtime.sources import DataSource, align_classes, check_images, parse_data_arg
from runtime.split import stratified_split


def make_bad_images(folder: Path) -> dict[str, Path]:
    """One file for each way an image can be unusable."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "good.png"
    Image.new("RGB", (20, 20), (10, 20, 30)).save(good)
    zero = folder / "zero.png"
    zero.write_bytes(b"")
    corrupt = folder / "corrupt.jpg"
    corrupt.write_bytes(b"this is not an image at all" * 10)
    truncated = folder / "truncated.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    wrong_mode = folder / "sixteen_bit.png"
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(wrong_mode)
    oversized = folder / "oversized.png"
    Image.new("L", (300, 300)).save(oversized)
    return {"zero": zero, "corrupt": corrupt, "truncated": truncated, "wrong_mode": wrong_mode, "oversized": oversized}


@pytest.mark.parametrize(
    "kind,pattern",
    [
        ("zero", "zero-byte"),
        ("corrupt", "not a readable image"),
        ("truncated", "corrupt or truncated"),
        ("wrong_mode", "unsupported image mode"),
        ("oversized", "oversized image 300x300"),
    ],
)
def test_bad_image_error_names_file_and_reason(tmp_path: Path, kind: str, pattern: str) -> None:
    bad = make_bad_images(tmp_path)[kind]
    with pytest.raises(DataError, match=pattern) as err:
        load_image(bad, max_pixels=50_000)
    assert str(bad) in str(err.value)


def test_modes_that_convert_cleanly_load_as_rgb(tmp_path: Path) -> None:
    for mode in ("L", "P", "RGBA", "CMYK", "1", "LA"):
        p = tmp_path / f"{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
        Image.new(mode, (5, 4)).save(p)
        img = load_image(p)
        assert img.mode == "RGB" and img.size == (5, 4)


def test_check_images_error_lists_every_bad_file(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "data", per_class=3)
    bad = make_bad_images(root / "red")
    ds = load_image_folder(root, max_pixels=50_000)
    with pytest.raises(DataError) as err:
        check_images(ds, "error")
    msg = str(err.value)
    assert "5 unusable image(s)" in msg and "on_bad_image: skip" in msg
    for path in bad.values():
        assert str(path) in msg


def test_check_images_skip_drops_and_counts(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "data", per_class=3)
    make_bad_images(root / "red")
    ds = load_image_folder(root, max_pixels=50_000)
    clean, report = check_images(ds, "skip")
    assert report["skipped"] == 5 and report["checked"] == len(ds) == 4 * 3 + 6
    assert len(clean) == 13
    assert all(clean.image(i).mode == "RGB" for i in range(len(clean)))  # every kept item decodes


def test_image_folder_classes_and_fingerprint(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "data", per_class=4)
    (root / "blue" / "notes.txt").write_text("ignored")
    ds = load_image_folder(root)
    assert ds.class_names == ["blue", "green", "red", "yellow"]
    assert len(ds) == 16 and ds.class_counts() == {c: 4 for c in ds.class_names}
    fp = ds.fingerprint()
    Image.new("RGB", (9, 9)).save(root / "blue" / "extra.png")
    assert load_image_folder(root).fingerprint() != fp


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a directory"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        load_image_folder(tmp_path / "empty")


def test_csv_manifest(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "data", per_class=2)
    csv = tmp_path / "data" / "list.csv"
    csv.write_text("path,label\nred/000.png,red\nblue/001.png,blue\n" + f"{root / 'green' / '000.png'},green\n")
    ds = load_csv_manifest(csv)
    assert ds.class_names == ["blue", "green", "red"] and ds.labels.tolist() == [2, 0, 1]
    assert ds.image(0).size == (24, 24)
    fixed = load_csv_manifest(csv, class_names=["red", "green", "blue", "yellow"])
    assert fixed.labels.tolist() == [0, 2, 1]


@pytest.mark.parametrize(
    "content,pattern",
    [
        ("file,class\nred/000.png,red\n", "lacks column"),
        ("path,label\n", "no rows"),
        ("path,label\nred/000.png,\n", r"list.csv:2: empty path or label"),
        ("path,label\nred/404.png,red\n", r"list.csv:2: image file .*404.png does not exist"),
    ],
)
def test_csv_manifest_errors(tmp_path: Path, content: str, pattern: str) -> None:
    write_image_folder(tmp_path / "data", per_class=1)
    csv = tmp_path / "data" / "list.csv"
    csv.write_text(content)
    with pytest.raises(DataError, match=pattern):
        load_csv_manifest(csv)


def test_csv_unknown_label_with_fixed_classes(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "data", per_class=1)
    csv = tmp_path / "data" / "list.csv"
    csv.write_text("path,label\nred/000.png,crimson\n")
    with pytest.raises(DataError, match="list.csv:2: label 'crimson'"):
        load_csv_manifest(csv, class_names=["red"])


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_user_directory(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    labels = np.arange(12) % 10
    sfx = ".gz" if gz else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{sfx}", images, gz)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{sfx}", labels, gz)
    ds = load_fashion_mnist("test", tmp_path)
    assert len(ds) == 12 and ds.class_names == FASHION_MNIST_CLASSES
    np.testing.assert_array_equal(np.asarray(ds.image(3))[..., 0], images[3])
    assert ds.image(3).mode == "RGB"
    assert parse_data_arg(f"fashion_mnist:test:{tmp_path}").open().fingerprint() == ds.fingerprint()


def test_idx_errors(tmp_path: Path) -> None:
    p = tmp_path / "bad-idx"
    p.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="bad magic"):
        read_idx(p)
    write_idx(p, np.zeros((4, 5), np.uint8), gz=False)
    p.write_bytes(p.read_bytes()[:-3])
    with pytest.raises(DataError, match="payload has 17 bytes"):
        read_idx(p)


def test_fashion_mnist_missing_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path)


@pytest.mark.skipif(not HAVE_FASHION, reason=f"real Fashion-MNIST not installed in {FASHION_DIR}")
def test_real_fashion_mnist() -> None:
    train = DataSource("fashion_mnist", str(FASHION_DIR), "train").open()
    test = DataSource("fashion_mnist", str(FASHION_DIR), "test").open()
    assert (len(train), len(test)) == (60000, 10000)
    assert set(train.class_counts().values()) == {6000} and set(test.class_counts().values()) == {1000}
    assert train.image(0).size == (28, 28)


def test_stratified_split_is_deterministic_and_stratified() -> None:
    labels = np.repeat(np.arange(5), [100, 50, 20, 7, 2])
    tr, va = stratified_split(labels, 0.1, seed=3)
    tr2, va2 = stratified_split(labels, 0.1, seed=3)
    np.testing.assert_array_equal(va, va2)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(labels)
    assert np.bincount(labels[va], minlength=5).tolist() == [10, 5, 2, 1, 1]
    assert not np.array_equal(stratified_split(labels, 0.1, seed=4)[1], va)
    assert len(stratified_split(labels, 0.0, seed=0)[1]) == 0


def test_align_classes_maps_by_name(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "data", per_class=1)
    ds = load_image_folder(root)  # blue, green, red, yellow
    model_classes = ["yellow", "red", "green", "blue", "purple"]
    aligned = align_classes(ds, model_classes)
    assert [model_classes[i] for i in aligned.labels] == ["blue", "green", "red", "yellow"]
    with pytest.raises(DataError, match="class\\(es\\) \\['yellow'\\] are not among the model's classes") as err:
        align_classes(ds, ["blue", "green", "red", "yelow"])
    assert str(root) in str(err.value) and 'Did you mean "yelow"?' in str(err.value)


def test_parse_data_arg(tmp_path: Path) -> None:
    assert parse_data_arg("fashion_mnist:train").split == "train"
    assert parse_data_arg(str(tmp_path)).kind == "imagefolder"
    assert parse_data_arg("x/list.csv").kind == "csv"
    with pytest.raises(DataError, match="not an ImageFolder"):
        parse_data_arg(str(tmp_path / "nope"))
