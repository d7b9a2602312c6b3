"""VL2Lite's training augmentation (methods-spec section 1; PAND and DAIT train with it too), replayable.

In order: resize to R x R (R = the contract's resize_size, 256), random crop S (input size, 224), a random
square crop with side drawn from {round(6/7 S) .. S} resized back to S, rotation by an angle in [-60, 60]
degrees (bilinear, black corners), Gaussian blur (kernel 5, sigma in [1e-5, 10]), colour jitter (brightness
0.3, contrast 0.1, saturation 0.1, hue 0.1, in a random order), horizontal flip. Each operation is
torchvision's, so the pixels are what the reference pipeline computes for the same parameters.

Drawing and applying are separate: ``draw`` returns every random choice as plain numbers (``AugmentParams``),
``apply`` replays them exactly. That is what lets a teacher cache store a crop's parameters and the student
see the very image the teacher encoded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

MAX_ANGLE = 60.0
BLUR_KERNEL = 5
BLUR_SIGMA = (1e-5, 10.0)
JITTER = {"brightness": 0.3, "contrast": 0.1, "saturation": 0.1, "hue": 0.1}


@dataclass(frozen=True)
class AugmentParams:
    """Every random choice of one draw: crop offsets in the R x R image, square crop, angle, blur, jitter, flip."""

    crop_top: int
    crop_left: int
    square_top: int
    square_left: int
    square_side: int
    angle: float
    sigma: float
    brightness: float
    contrast: float
    saturation: float
    hue: float
    order: tuple[int, int, int, int]  # 0 brightness, 1 contrast, 2 saturation, 3 hue
    flip: bool

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def draw(resize: int, size: int, rng: np.random.Generator, hflip: float = 0.5) -> AugmentParams:
    """One draw of every parameter, from ``rng`` only."""
    if resize < size:
        raise ValueError(f"vl2lite augmentation needs resize_size {resize} >= input size {size}")
    low = round(size * 6 / 7)  # 192 of 224
    side = int(rng.integers(low, size + 1))
    return AugmentParams(
        crop_top=int(rng.integers(0, resize - size + 1)),
        crop_left=int(rng.integers(0, resize - size + 1)),
        square_top=int(rng.integers(0, size - side + 1)),
        square_left=int(rng.integers(0, size - side + 1)),
        square_side=side,
        angle=float(rng.uniform(-MAX_ANGLE, MAX_ANGLE)),
        sigma=float(rng.uniform(*BLUR_SIGMA)),
        brightness=float(rng.uniform(1 - JITTER["brightness"], 1 + JITTER["brightness"])),
        contrast=float(rng.uniform(1 - JITTER["contrast"], 1 + JITTER["contrast"])),
        saturation=float(rng.uniform(1 - JITTER["saturation"], 1 + JITTER["saturation"])),
        hue=float(rng.uniform(-JITTER["hue"], JITTER["hue"])),
        order=tuple(int(i) for i in rng.permutation(4)),  # type: ignore[arg-type]
        flip=bool(rng.random() < hflip),
    )


def apply(image: Image.Image, p: AugmentParams, resize: int, size: int) -> Image.Image:
    """Replay ``p`` on an RGB PIL image: the augmented S x S image."""
    bilinear = InterpolationMode.BILINEAR
    x = TF.resize(image, [resize, resize], interpolation=bilinear)
    x = TF.crop(x, p.crop_top, p.crop_left, size, size)
    x = TF.resized_crop(x, p.square_top, p.square_left, p.square_side, p.square_side, [size, size],
                        interpolation=bilinear)  # fmt: skip
    x = TF.rotate(x, p.angle, interpolation=bilinear)
    x = TF.gaussian_blur(x, [BLUR_KERNEL, BLUR_KERNEL], [p.sigma, p.sigma])
    for op in p.order:
        if op == 0:
            x = TF.adjust_brightness(x, p.brightness)
        elif op == 1:
            x = TF.adjust_contrast(x, p.contrast)
        elif op == 2:
            x = TF.adjust_saturation(x, p.saturation)
        else:
            x = TF.adjust_hue(x, p.hue)
    return TF.hflip(x) if p.flip else x
