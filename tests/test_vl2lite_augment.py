"""VL2Lite's augmentation: draws stay in the reference's ranges, replay is exact, each step checked by hand."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from distill import vl2lite_augment as aug
from distill.config import AugmentConfig
from distill.transforms import TrainTransform
from runtime.preprocess import PreprocessContract

IDENTITY = aug.AugmentParams(crop_top=0, crop_left=0, square_top=0, square_left=0, square_side=224, angle=0.0,
                             sigma=1e-5, brightness=1.0, contrast=1.0, saturation=1.0, hue=0.0, order=(0, 1, 2, 3),
                             flip=False)  # fmt: skip


def constant(value: tuple[int, int, int], size: int = 256) -> Image.Image:
    return Image.new("RGB", (size, size), value)


def ramp() -> Image.Image:
    """256 x 256, red channel = column index: a crop's offset is visible in its pixel values."""
    x = np.zeros((256, 256, 3), np.uint8)
    x[..., 0] = np.arange(256, dtype=np.uint8)[None, :]
    return Image.fromarray(x)


def test_draws_stay_in_the_reference_ranges_and_follow_the_seed() -> None:
    draws = [aug.draw(256, 224, np.random.default_rng(s)) for s in range(300)]
    assert aug.draw(256, 224, np.random.default_rng(7)) == draws[7]
    assert all(0 <= d.crop_top <= 32 and 0 <= d.crop_left <= 32 for d in draws)
    assert {d.square_side for d in draws} <= set(range(192, 225)) and min(d.square_side for d in draws) < 200
    assert all(d.square_top + d.square_side <= 224 and d.square_left + d.square_side <= 224 for d in draws)
    assert all(abs(d.angle) <= 60 and 1e-5 <= d.sigma <= 10 for d in draws)
    assert all(0.7 <= d.brightness <= 1.3 and 0.9 <= d.contrast <= 1.1 and abs(d.hue) <= 0.1 for d in draws)
    assert all(sorted(d.order) == [0, 1, 2, 3] for d in draws)
    assert 0.35 < np.mean([d.flip for d in draws]) < 0.65 and max(abs(d.angle) for d in draws) > 50


def test_crop_offsets_compose_as_computed_by_hand() -> None:
    out = np.asarray(aug.apply(ramp(), replace(IDENTITY, crop_left=10, crop_top=3), 256, 224))
    assert out.shape == (224, 224, 3)
    np.testing.assert_array_equal(out[0, :, 0], np.arange(10, 10 + 224))  # column j shows x = 10 + j
    # a 112-pixel square from column 10 + 5, stretched 2x: column j samples x = 15 + (j + 0.5) / 2 - 0.5
    p = replace(IDENTITY, crop_left=10, square_left=5, square_side=112)
    row = np.asarray(aug.apply(ramp(), p, 256, 224))[0, 2:222, 0].astype(float)
    np.testing.assert_allclose(row, 15 + np.arange(2, 222) / 2 - 0.25, atol=0.8)


def test_rotation_blur_jitter_and_flip_each_act() -> None:
    grey = constant((200, 200, 200))
    assert np.all(np.asarray(aug.apply(grey, IDENTITY, 256, 224)) == 200)  # blur and identity jitter keep it
    rotated = np.asarray(aug.apply(grey, replace(IDENTITY, angle=45.0), 256, 224))
    assert rotated[0, 0].tolist() == [0, 0, 0] and rotated[112, 112].tolist() == [200, 200, 200]
    darker = np.asarray(aug.apply(grey, replace(IDENTITY, brightness=0.5), 256, 224))
    assert np.all(darker == 100)
    blurred = np.asarray(aug.apply(ramp(), replace(IDENTITY, sigma=5.0, angle=30.0), 256, 224)).astype(int)
    sharp = np.asarray(aug.apply(ramp(), replace(IDENTITY, angle=30.0), 256, 224)).astype(int)
    assert np.abs(np.diff(blurred[..., 0], axis=1)).sum() < np.abs(np.diff(sharp[..., 0], axis=1)).sum()
    red = constant((255, 0, 0))
    shifted = np.asarray(aug.apply(red, replace(IDENTITY, hue=0.1), 256, 224))[100, 100]
    assert shifted[1] > 100 and shifted[0] == 255  # 36 degrees towards yellow
    plain = np.asarray(aug.apply(ramp(), replace(IDENTITY, crop_left=7), 256, 224))
    flipped = np.asarray(aug.apply(ramp(), replace(IDENTITY, crop_left=7, flip=True), 256, 224))
    np.testing.assert_array_equal(flipped, plain[:, ::-1])


def test_train_transform_is_the_replay_of_its_draw() -> None:
    contract = PreprocessContract(input_size=224, resize_size=256)
    transform = TrainTransform(contract, AugmentConfig(pipeline="vl2lite"))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8))
    x = transform(image, np.random.default_rng(3))
    replayed = aug.apply(image, aug.draw(256, 224, np.random.default_rng(3)), 256, 224)
    torch.testing.assert_close(x, torch.from_numpy(contract.normalize(np.asarray(replayed))), rtol=0, atol=0)
    assert not torch.equal(x, transform(image, np.random.default_rng(4)))


def test_standard_keys_are_refused_with_the_vl2lite_pipeline() -> None:
    with pytest.raises(ValueError, match="color_jitter: not used by pipeline vl2lite"):
        AugmentConfig(pipeline="vl2lite", color_jitter=0.2)
