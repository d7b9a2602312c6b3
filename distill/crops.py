"""Crops that can be replayed exactly: sampled once (box in original-image coordinates + flip), then cut
from the image at any model's input size and normalisation, so a teacher output cached for a crop and
the student's view of that crop are the same pixels (FKD / FDBPL-style region lookup).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from runtime.errors import ToolkitError
from runtime.preprocess import INTERPOLATIONS, PreprocessContract


@dataclass(frozen=True)
class CropRecipe:
    """RandomResizedCrop (area ``scale``, aspect ``ratio``) then horizontal flip with probability ``hflip``."""

    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.scale[0] <= self.scale[1] <= 1 or not 0 < self.ratio[0] <= self.ratio[1]:
            raise ToolkitError(f"crop recipe: need 0 < scale min <= max <= 1 and 0 < ratio min <= max, got {self}")
        if not 0 <= self.hflip <= 1:
            raise ToolkitError(f"crop recipe: hflip probability {self.hflip} not in [0, 1]")

    def to_dict(self) -> dict[str, list[float] | float]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def sample_crop(rng: np.random.Generator, width: int, height: int, recipe: CropRecipe) -> tuple[np.ndarray, bool]:
    """(box [x0, y0, x1, y1] as float32, flip): torchvision's RandomResizedCrop rule, 10 tries then centre."""
    area = width * height
    log_ratio = (math.log(recipe.ratio[0]), math.log(recipe.ratio[1]))
    box = None
    for _ in range(10):
        target = area * rng.uniform(*recipe.scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            x0 = int(rng.integers(0, width - w + 1))
            y0 = int(rng.integers(0, height - h + 1))
            box = (x0, y0, x0 + w, y0 + h)
            break
    if box is None:  # fall back to the whole image, clipped to the ratio range, centred
        in_ratio = width / height
        w, h = width, height
        if in_ratio < recipe.ratio[0]:
            h = round(width / recipe.ratio[0])
        elif in_ratio > recipe.ratio[1]:
            w = round(height * recipe.ratio[1])
        x0, y0 = (width - w) // 2, (height - h) // 2
        box = (x0, y0, x0 + w, y0 + h)
    flip = bool(rng.random() < recipe.hflip)
    return np.asarray(box, dtype=np.float32), flip


def crop_input(image: Image.Image, box: np.ndarray, flip: bool, contract: PreprocessContract) -> np.ndarray:
    """The crop ``box`` of ``image`` resized to the contract's input size, flipped, normalised: CHW float32."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    h, w = contract.input_size
    region = image.resize((w, h), resample=INTERPOLATIONS[contract.interpolation], box=tuple(float(v) for v in box))
    if flip:
        region = region.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return contract.normalize(np.asarray(region))
