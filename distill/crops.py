"""Crops that can be replayed exactly: sampled once (box in original-image coordinates + flip), then cut
from the image at any model's input size and normalisation, so a teacher output cached for a crop and
the student's view of that crop are the same pixels (FKD / FDBPL-style region lookup).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from distill import vl2lite_augment
from runtime.errors import ToolkitError
from runtime.preprocess import INTERPOLATIONS, PreprocessContract


@dataclass(frozen=True)
class CropRecipe:
    """``crop``: RandomResizedCrop (area ``scale``, aspect ``ratio``) then horizontal flip with probability
    ``hflip``. ``vl2lite``: the papers' pipeline (distill/vl2lite_augment.py) at ``resize`` -> ``size`` pixels,
    every draw stored so that teacher and student see the same augmented image."""

    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    pipeline: str = "crop"
    resize: int = 256
    size: int = 224

    def __post_init__(self) -> None:
        if not 0 < self.scale[0] <= self.scale[1] <= 1 or not 0 < self.ratio[0] <= self.ratio[1]:
            raise ToolkitError(f"crop recipe: need 0 < scale min <= max <= 1 and 0 < ratio min <= max, got {self}")
        if not 0 <= self.hflip <= 1:
            raise ToolkitError(f"crop recipe: hflip probability {self.hflip} not in [0, 1]")
        if self.pipeline not in ("crop", "vl2lite"):
            raise ToolkitError(f"crop recipe: pipeline {self.pipeline!r} is not one of ['crop', 'vl2lite']")
        if self.pipeline == "vl2lite" and not 0 < self.size <= self.resize:
            raise ToolkitError(f"crop recipe: vl2lite needs 0 < size {self.size} <= resize {self.resize}")

    def to_dict(self) -> dict[str, list[float] | float | str | int]:
        """The recipe as the cache key holds it (a ``crop`` recipe keeps the keys caches were built with)."""
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        if self.pipeline == "crop":
            for k in ("pipeline", "resize", "size"):
                del out[k]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CropRecipe:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


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


# One crop's vl2lite draw as 16 float32 numbers (what the teacher cache stores per crop).
AUGMENT_FIELDS = 16


def pack_augment(p: vl2lite_augment.AugmentParams) -> np.ndarray:
    return np.asarray([p.crop_top, p.crop_left, p.square_top, p.square_left, p.square_side, p.angle, p.sigma,
                       p.brightness, p.contrast, p.saturation, p.hue, *p.order, float(p.flip)], np.float32)  # fmt: skip


def unpack_augment(a: np.ndarray) -> vl2lite_augment.AugmentParams:
    v = [float(x) for x in a]
    return vl2lite_augment.AugmentParams(
        int(v[0]), int(v[1]), int(v[2]), int(v[3]), int(v[4]), v[5], v[6], v[7], v[8], v[9], v[10],
        (int(v[11]), int(v[12]), int(v[13]), int(v[14])), bool(v[15]),
    )  # fmt: skip


def augment_box(p: vl2lite_augment.AugmentParams, width: int, height: int, resize: int) -> np.ndarray:
    """The region of the original image a vl2lite draw shows (before rotation): [x0, y0, x1, y1]."""
    x0, y0 = p.crop_left + p.square_left, p.crop_top + p.square_top
    sx, sy = width / resize, height / resize
    return np.asarray([x0 * sx, y0 * sy, (x0 + p.square_side) * sx, (y0 + p.square_side) * sy], np.float32)


def sample_view(rng: np.random.Generator, width: int, height: int, recipe: CropRecipe
                ) -> tuple[np.ndarray, bool, np.ndarray | None]:  # fmt: skip
    """One replayable view: (box, flip, packed vl2lite draw or None)."""
    if recipe.pipeline == "vl2lite":
        p = vl2lite_augment.draw(recipe.resize, recipe.size, rng, recipe.hflip)
        return augment_box(p, width, height, recipe.resize), p.flip, pack_augment(p)
    box, flip = sample_crop(rng, width, height, recipe)
    return box, flip, None


def view_input(image: Image.Image, box: np.ndarray, flip: bool, augment: np.ndarray | None,
               recipe: CropRecipe, contract: PreprocessContract) -> np.ndarray:  # fmt: skip
    """A stored view of ``image`` as ``contract``'s input: the crop replayed, or the vl2lite draw replayed and
    the augmented image resized to the contract's input size (teacher and student see the same image)."""
    if augment is None:
        return crop_input(image, box, flip, contract)
    view = vl2lite_augment.apply(image.convert("RGB"), unpack_augment(augment), recipe.resize, recipe.size)
    h, w = contract.input_size
    if view.size != (w, h):
        view = view.resize((w, h), resample=INTERPOLATIONS[contract.interpolation])
    return contract.normalize(np.asarray(view))
