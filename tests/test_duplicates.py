"""Byte-identical files: copies inside a training set (label noise when classes differ), test images copied
from the training set, and the warning and manifest entry a training run gets."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import write_image_folder
from rich.console import Console

from runtime.duplicates import duplicates, file_digests, overlap
from runtime.manifests import load_image_folder
from toolkit.datacheck import check_dataset, check_overlap


def test_copies_within_a_class_and_across_classes_are_counted(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "d", per_class=3)
    shutil.copy(data / "red" / "000.png", data / "red" / "copy.png")
    shutil.copy(data / "red" / "000.png", data / "blue" / "looks_blue.png")
    shutil.copy(data / "green" / "001.png", data / "green" / "again.png")
    found = duplicates(load_image_folder(data))
    assert (found["groups"], found["extra_copies"], found["conflicting_labels"]) == (2, 3, 1)
    assert "looks_blue.png (blue)" in " ".join(found["examples"][0])  # label noise listed first
    console = Console(record=True, width=400)
    clean, report = check_dataset(load_image_folder(data), "error", console)
    assert report["duplicates"]["extra_copies"] == 3
    said = console.export_text()
    assert "3 duplicate file(s)" in said and "1 of them under different classes" in said


def test_same_size_different_bytes_is_not_a_copy(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_bytes(b"x" * 100)
    b.write_bytes(b"x" * 99 + b"y")
    c.write_bytes(b"x" * 100)
    digests = file_digests([a, b, c, tmp_path / "missing"])
    assert digests[0] == digests[2] and digests[1] not in (None, digests[0]) and digests[3] is None


def test_test_images_copied_from_training_are_reported(tmp_path: Path) -> None:
    train = write_image_folder(tmp_path / "train", per_class=3)
    test = write_image_folder(tmp_path / "test", per_class=2, seed=9)
    shutil.copy(train / "yellow" / "002.png", test / "yellow" / "leak.png")
    assert overlap(load_image_folder(train), load_image_folder(test))["test_images_in_train"] == 1
    console = Console(record=True, width=400)
    found = check_overlap(load_image_folder(train), load_image_folder(test), console)
    assert found["examples"] == [f"{test / 'yellow' / 'leak.png'} = {train / 'yellow' / '002.png'}"]
    assert "1 test image(s) of test are copies of training images" in console.export_text()
    clean = write_image_folder(tmp_path / "clean", per_class=2, seed=9)
    assert overlap(load_image_folder(train), load_image_folder(clean))["test_images_in_train"] == 0
