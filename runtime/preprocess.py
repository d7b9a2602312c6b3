"""The preprocessing contract: the one definition of how an image becomes a model input.

Training's eval transform, the ONNX metadata written by export and every runtime session use
this object, so train/deploy preprocessing cannot drift apart. Implemented with PIL + numpy only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from typing import Any

import numpy as np
from PIL import Image

from runtime.errors import ToolkitError, did_you_mean

INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
RESIZE_MODES = ("shorter", "squash")
CHANNEL_ORDERS = ("RGB", "BGR")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessContract:
    """Resize -> center crop -> scale to [0, 1] -> normalise -> CHW float32, colour order as given.

    resize_mode "shorter" scales the shorter side to ``resize_size`` keeping the aspect ratio (timm,
    torchvision); "squash" resizes to ``resize_size`` x ``resize_size``. The crop then takes the
    central ``input_size`` (height, width).
    """

    input_size: tuple[int, int] = (224, 224)
    resize_size: int = 256
    resize_mode: str = "shorter"
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"
    class_names: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        size = self.input_size
        if isinstance(size, int):
            size = (size, size)
        object.__setattr__(self, "input_size", tuple(int(s) for s in size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        self._validate()

    def _validate(self) -> None:
        def bad(key: str, msg: str) -> ToolkitError:
            return ToolkitError(f"preprocess.{key}: {msg}")

        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise bad("input_size", f"{self.input_size!r} must be a positive int or [height, width]")
        if self.resize_size < max(self.input_size) and self.resize_mode == "squash":
            raise bad("resize_size", f"{self.resize_size} is smaller than input_size {self.input_size}")
        if self.resize_size < min(self.input_size):
            raise bad("resize_size", f"{self.resize_size} is smaller than input_size {self.input_size}")
        if self.interpolation not in INTERPOLATIONS:
            raise bad(
                "interpolation",
                f"{self.interpolation!r} is not one of {sorted(INTERPOLATIONS)}."
                + did_you_mean(self.interpolation, INTERPOLATIONS),
            )
        if self.resize_mode not in RESIZE_MODES:
            raise bad("resize_mode", f"{self.resize_mode!r} is not one of {RESIZE_MODES}.")
        if self.channel_order not in CHANNEL_ORDERS:
            raise bad("channel_order", f"{self.channel_order!r} is not one of {CHANNEL_ORDERS}.")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if len(values) != 3:
                raise bad(key, f"needs 3 values (one per colour channel), got {list(values)}")
        if min(self.std) <= 0:
            raise bad("std", f"values must be > 0, got {list(self.std)}")

    # ---- geometry and normalisation, usable separately by training transforms ----

    def resize_crop(self, image: Image.Image) -> Image.Image:
        """Resize and center-crop an RGB PIL image to ``input_size``."""
        h_out, w_out = self.input_size
        w, h = image.size
        resample = INTERPOLATIONS[self.interpolation]
        if self.resize_mode == "squash":
            new_w = new_h = self.resize_size
        elif w <= h:
            new_w, new_h = self.resize_size, max(1, int(self.resize_size * h / w))
        else:
            new_w, new_h = max(1, int(self.resize_size * w / h)), self.resize_size
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), resample=resample)
        # A crop larger than the image pads it with black, torchvision's way: floor(excess / 2) before.
        left = int(round((new_w - w_out) / 2.0)) if new_w >= w_out else -((w_out - new_w) // 2)
        top = int(round((new_h - h_out) / 2.0)) if new_h >= h_out else -((h_out - new_h) // 2)
        if (left, top, w_out, h_out) != (0, 0, new_w, new_h):
            image = image.crop((left, top, left + w_out, top + h_out))
        return image

    @cached_property
    def _lut(self) -> np.ndarray:
        """(3, 256) float32: (v / 255 - mean_c) / std_c for every uint8 v, in output channel order. The same
        float32 operations as normalising each pixel, so the result is bit-identical, at a table lookup's cost
        (224 px: 0.3 ms instead of 2.7 ms per image, measured)."""
        v = np.arange(256, dtype=np.float32)[None, :] / 255.0
        lut = (v - np.asarray(self.mean, np.float32)[:, None]) / np.asarray(self.std, np.float32)[:, None]
        return np.ascontiguousarray(lut[::-1] if self.channel_order == "BGR" else lut)

    def normalize(self, hwc_uint8: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """HWC uint8 RGB -> CHW float32, scaled, normalised and in ``channel_order`` (into ``out`` if given)."""
        h, w, _ = hwc_uint8.shape
        out = np.empty((3, h, w), np.float32) if out is None else out
        source = (2, 1, 0) if self.channel_order == "BGR" else (0, 1, 2)
        for c, src in enumerate(source):
            np.take(self._lut[c], hwc_uint8[:, :, src], out=out[c])
        return out

    def __call__(self, image: Image.Image | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """One image (PIL or HWC/HW uint8 array) -> CHW float32 model input (into ``out`` if given)."""
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        if image.mode != "RGB":
            image = image.convert("RGB")
        return self.normalize(np.asarray(self.resize_crop(image)), out)

    def batch(self, images: list[Image.Image | np.ndarray]) -> np.ndarray:
        """Several images -> NCHW float32 batch (written in place: no per-image arrays to stack)."""
        out = np.empty((len(images), 3, *self.input_size), np.float32)
        for i, image in enumerate(images):
            self(image, out=out[i])
        return out

    # ---- serialisation (run directory, ONNX metadata) ----

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["class_names"] = list(self.class_names)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessContract:
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise ToolkitError(
                    f"preprocess: unknown key {key!r}." + did_you_mean(key, known) + f" Known keys: {sorted(known)}"
                )
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> PreprocessContract:
        return cls.from_dict(json.loads(text))

    def with_classes(self, class_names: list[str] | tuple[str, ...]) -> PreprocessContract:
        return PreprocessContract.from_dict({**self.to_dict(), "class_names": list(class_names)})
