"""Image -> tensor transforms. Eval IS the runtime preprocessing contract; train adds augmentation.

Both end in ``contract.normalize`` (scaling, mean/std, colour order), so the only difference between
train and eval inputs is the augmentation. Augmentation draws from an explicit numpy Generator, never
from global RNG state: each item's randomness is a function of its seed (see distill.data).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from distill import vl2lite_augment
from distill.config import AugmentConfig
from runtime.errors import ToolkitError
from runtime.preprocess import INTERPOLATIONS, PreprocessContract


def eval_transform(contract: PreprocessContract) -> Callable[[Image.Image], torch.Tensor]:
    """The runtime contract, returned as a torch tensor."""
    return lambda image: torch.from_numpy(contract(image))


def random_resized_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    rng: np.random.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(left, top, w, h) of a crop covering ``scale`` of the area at aspect ``ratio`` (Inception-style).

    Ten tries at a random box, then the largest central box within the ratio range (as torchvision).
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


class TrainTransform:
    """Random-resized-crop (or the contract's resize/crop), pad-and-crop, flip, colour jitter, normalise; or
    the VL2Lite pipeline (``augment.pipeline: vl2lite``)."""

    def __init__(self, contract: PreprocessContract, augment: AugmentConfig) -> None:
        self.contract = contract
        self.augment = augment

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        c, a = self.contract, self.augment
        if image.mode != "RGB":
            image = image.convert("RGB")
        h_out, w_out = c.input_size
        if a.pipeline == "vl2lite":
            if h_out != w_out:
                raise ToolkitError(f"augment.pipeline vl2lite needs a square input size, got {c.input_size}")
            params = vl2lite_augment.draw(c.resize_size, h_out, rng, a.hflip)
            out = vl2lite_augment.apply(image, params, c.resize_size, h_out)
            return torch.from_numpy(c.normalize(np.asarray(out)))
        if a.random_resized_crop is not None:
            left, top, w, h = random_resized_crop_box(image.width, image.height, a.random_resized_crop, rng)
            image = image.resize((w_out, h_out), INTERPOLATIONS[c.interpolation], box=(left, top, left + w, top + h))
        else:
            image = c.resize_crop(image)
        arr = np.asarray(image)
        if a.pad_crop:
            p = a.pad_crop
            padded = np.pad(arr, ((p, p), (p, p), (0, 0)))
            dy, dx = int(rng.integers(0, 2 * p + 1)), int(rng.integers(0, 2 * p + 1))
            arr = padded[dy : dy + h_out, dx : dx + w_out]
        if a.hflip and rng.random() < a.hflip:
            arr = arr[:, ::-1]
        if a.color_jitter:
            arr = color_jitter(arr, a.color_jitter, rng)
        return torch.from_numpy(c.normalize(np.ascontiguousarray(arr)))


def color_jitter(arr: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation factors drawn from [1 - s, 1 + s], applied in random order."""
    x = arr.astype(np.float32)
    ops = rng.permutation(3)
    factors = rng.uniform(max(0.0, 1 - strength), 1 + strength, size=3)
    for op in ops:
        f = float(factors[op])
        grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
        if op == 0:
            x = x * f
        elif op == 1:
            x = (x - grey.mean()) * f + grey.mean()
        else:
            x = (x - grey[..., None]) * f + grey[..., None]
        x = np.clip(x, 0, 255)
    return x.astype(np.uint8)
