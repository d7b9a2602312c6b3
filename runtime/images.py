"""Safe image decoding: every failure becomes a DataError that names the file and says why."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from runtime.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
# Modes PIL converts to 8-bit RGB without having to choose a scaling.
CONVERTIBLE_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})
DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000


def load_image(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``path`` fully and return it as an RGB image, or raise DataError naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"{path}: cannot read image ({exc.strerror or exc})") from exc
    if size == 0:
        raise DataError(f"{path}: zero-byte file, not an image; delete it or replace it with the real image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise DataError(
                        f"{path}: oversized image {w}x{h} ({w * h:,} pixels > limit {max_pixels:,}); "
                        "downscale it or raise data.max_pixels"
                    )
                if img.mode not in CONVERTIBLE_MODES:
                    raise DataError(
                        f"{path}: unsupported image mode {img.mode!r} (high bit depth or float); "
                        "convert it to 8-bit RGB or greyscale"
                    )
                img.load()
                return img.convert("RGB")
    except DataError:
        raise
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: oversized image ({exc}); downscale it or raise data.max_pixels") from exc
    except UnidentifiedImageError as exc:
        raise DataError(f"{path}: not a readable image (corrupt or unknown format)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: corrupt or truncated image ({exc})") from exc


def check_image(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Return None when ``path`` decodes cleanly, else the reason it does not."""
    try:
        load_image(path, max_pixels)
    except DataError as exc:
        return str(exc)
    return None
