"""The preprocessing contract: matches torchvision's eval pipeline, serialises, and is training's eval transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from distill.config import AugmentConfig
from distill.transforms import TrainTransform, color_jitter, eval_transform, random_resized_crop_box
from runtime.errors import ToolkitError
from runtime.preprocess import PreprocessContract


@pytest.fixture
def photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))


@pytest.mark.parametrize("interp", ["bilinear", "bicubic", "nearest"])
def test_contract_matches_torchvision_eval_pipeline(photo: Image.Image, interp: str) -> None:
    c = PreprocessContract(input_size=32, resize_size=36, interpolation=interp)
    mode = T.InterpolationMode(interp)
    ref = T.Compose([T.Resize(36, interpolation=mode), T.CenterCrop(32), T.ToTensor(), T.Normalize(c.mean, c.std)])
    ours = c(photo)
    assert ours.shape == (3, 32, 32) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref(photo).numpy(), atol=1e-6)


def test_squash_mode_and_bgr(photo: Image.Image) -> None:
    rgb = PreprocessContract(input_size=(20, 30), resize_size=30, resize_mode="squash")
    bgr = PreprocessContract(input_size=(20, 30), resize_size=30, resize_mode="squash", channel_order="BGR")
    a, b = rgb(photo), bgr(photo)
    assert a.shape == (3, 20, 30)
    np.testing.assert_array_equal(a[::-1], b)


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_table_lookup_normalisation_is_bit_identical_to_the_formula(order: str) -> None:
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (9, 7, 3), dtype=np.uint8) for _ in range(3)]
    # 9x7 images, shorter side 7: neither resized nor cropped, so only the normalisation acts
    c = PreprocessContract(input_size=(9, 7), resize_size=7, mean=(0.1, 0.5, 0.9), std=(0.2, 0.3, 0.4),
                           channel_order=order)  # fmt: skip
    expected = []
    for hwc in images:
        x = (hwc.astype(np.float32) / 255.0 - np.asarray(c.mean, np.float32)) / np.asarray(c.std, np.float32)
        expected.append((x[..., ::-1] if order == "BGR" else x).transpose(2, 0, 1))
    batch = c.batch([Image.fromarray(h) for h in images])
    assert batch.dtype == np.float32
    np.testing.assert_array_equal(batch, np.stack(expected))


def test_greyscale_and_array_inputs_become_rgb() -> None:
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    c = PreprocessContract(input_size=8, resize_size=8, mean=(0, 0, 0), std=(1, 1, 1))
    out = c(grey)
    assert out.shape == (3, 8, 8)
    np.testing.assert_allclose(out[0], grey / 255.0, atol=1e-6)
    np.testing.assert_array_equal(out[0], out[2])


def test_json_round_trip() -> None:
    c = PreprocessContract(input_size=28, resize_size=32, class_names=("a", "b"), mean=(0.5, 0.5, 0.5))
    again = PreprocessContract.from_json(c.to_json())
    assert again == c


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"interpolation": "bilinaer"}, "interpolation"),
        ({"resize_size": 10, "input_size": 20}, "resize_size"),
        ({"std": (1.0, 0.0, 1.0)}, "std"),
        ({"mean": (0.5, 0.5)}, "mean"),
        ({"channel_order": "RGBA"}, "channel_order"),
    ],
)
def test_invalid_contract_names_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ToolkitError, match=f"preprocess.{key}"):
        PreprocessContract(**kwargs)


def test_unknown_key_in_serialised_contract_suggests_fix() -> None:
    with pytest.raises(ToolkitError, match='Did you mean "input_size"'):
        PreprocessContract.from_dict({"input_sise": 3})


def test_eval_transform_is_the_contract(photo: Image.Image) -> None:
    c = PreprocessContract(input_size=24, resize_size=28, mean=(0.2, 0.3, 0.4), std=(0.5, 0.6, 0.7))
    t = eval_transform(c)(photo)
    assert isinstance(t, torch.Tensor)
    assert torch.equal(t, torch.from_numpy(c(photo)))


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_train_transform_without_augmentation_equals_eval(photo: Image.Image) -> None:
    c = PreprocessContract(input_size=24, resize_size=28, channel_order="BGR")
    train = TrainTransform(c, AugmentConfig(hflip=0.0, pad_crop=0, random_resized_crop=None))
    assert torch.equal(train(photo, rng()), eval_transform(c)(photo))


def test_train_transform_flip_and_pad_crop(photo: Image.Image) -> None:
    c = PreprocessContract(input_size=24, resize_size=28)
    flipped = TrainTransform(c, AugmentConfig(hflip=1.0))(photo, rng())
    assert torch.equal(flipped, eval_transform(c)(photo).flip(-1))
    padded = TrainTransform(c, AugmentConfig(hflip=0.0, pad_crop=3))
    outs = [padded(photo, rng(s)) for s in range(6)]
    assert all(o.shape == (3, 24, 24) for o in outs)
    assert len({o.sum().item() for o in outs}) > 1  # different seeds, different crops
    assert torch.equal(padded(photo, rng(4)), outs[4])  # same seed, same crop


def test_train_transform_rrc_and_jitter_are_seeded(photo: Image.Image) -> None:
    c = PreprocessContract(input_size=16, resize_size=18)
    t = TrainTransform(c, AugmentConfig(random_resized_crop=(0.3, 1.0), color_jitter=0.4))
    a, b = t(photo, rng(1)), t(photo, rng(1))
    assert a.shape == (3, 16, 16) and torch.equal(a, b)
    assert not torch.equal(a, t(photo, rng(2)))


@pytest.mark.parametrize("seed", range(20))
def test_random_resized_crop_box_stays_inside(seed: int) -> None:
    left, top, w, h = random_resized_crop_box(70, 50, (0.08, 1.0), rng(seed))
    assert 0 <= left and 0 <= top and left + w <= 70 and top + h <= 50 and w > 0 and h > 0
    assert 0.08 * 3500 * 0.9 <= w * h or (w, h) in {(67, 50), (70, 50)}


def test_color_jitter_identity_at_zero_strength_factors() -> None:
    arr = rng().integers(0, 256, (4, 4, 3), dtype=np.uint8)
    out = color_jitter(arr, 1e-9, rng())
    assert np.abs(out.astype(int) - arr.astype(int)).max() <= 1


def test_a_crop_wider_than_the_resized_image_pads_like_torchvision() -> None:
    """Regression (found by tests/test_properties.py): an odd excess put the image 2 px from the left, not 1."""
    c = PreprocessContract(input_size=(1, 4), resize_size=1, interpolation="nearest", mean=(0, 0, 0), std=(1, 1, 1))
    x = c(Image.new("RGB", (1, 1), (255, 255, 255)))
    assert x[0, 0].tolist() == [0.0, 1.0, 0.0, 0.0]
