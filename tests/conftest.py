"""Shared fixtures: tiny real image datasets written to disk, and recipe files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
# The start of a `python -c` script that runs as on a device: torch (and timm, torchvision) cannot be imported.
TORCH_BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'torch', 'torchvision', 'timm'}:
            raise ImportError('blocked: no ' + name + ' on the device')
sys.meta_path.insert(0, Block())
"""


def tiny_conv_classifier():  # noqa: ANN201 - torch is imported here only (conftest serves torch-free tests too)
    """A 3-class conv -> BN -> ReLU -> pool -> linear classifier with fixed random weights, for format exporters."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 3)).eval()  # fmt: skip


FASHION_DIR = Path(os.environ.get("TOOLKIT_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
HAVE_FASHION = (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file() or (
    FASHION_DIR / "train-images-idx3-ubyte"
).is_file()

# `toolkit export` guard flags for tests about structure (any INT8 model passes) and about failing (no INT8 model
# reproduces its FP32 softmax exactly, so a KL limit of 0 fails every one).
LENIENT_GUARD = ["--tolerance", "100", "--min-agreement", "0", "--max-class-drop", "100", "--max-kl", "100"]
FAILING_GUARD = ["--max-kl", "0"]
CLASS_COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200), "yellow": (210, 200, 40)}


def make_image(colour: tuple[int, int, int], rng: np.random.Generator, size: int = 24) -> Image.Image:
    """A noisy solid-colour square with a random dark bar: learnable by colour, varied in layout."""
    arr = np.clip(np.asarray(colour)[None, None, :] + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    r = int(rng.integers(0, size - 4))
    arr[r : r + 3, :, :] //= 3
    return Image.fromarray(arr)


def write_image_folder(root: Path, per_class: int, seed: int = 0, size: int = 24) -> Path:
    rng = np.random.default_rng(seed)
    for name, colour in CLASS_COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            make_image(colour, rng, size).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images", per_class=10)


def torchvision_input(image: Image.Image, c: Any) -> np.ndarray:
    """A PreprocessContract ``c`` written out with torchvision, independently of runtime/preprocess.py."""
    import torch
    from torchvision.transforms import v2 as T

    interp = {"nearest": T.InterpolationMode.NEAREST, "bilinear": T.InterpolationMode.BILINEAR,
              "bicubic": T.InterpolationMode.BICUBIC}[c.interpolation]  # fmt: skip
    size = [c.resize_size, c.resize_size] if c.resize_mode == "squash" else c.resize_size
    x = T.Compose([
        T.Resize(size, interpolation=interp), T.CenterCrop(list(c.input_size)), T.PILToTensor(),
        T.ToDtype(torch.float32, scale=True), T.Normalize(list(c.mean), list(c.std)),
    ])(image.convert("RGB"))  # fmt: skip
    return (x.flip(0) if c.channel_order == "BGR" else x).numpy()


def write_recipe(path: Path, data_root: Path, **train: object) -> Path:
    recipe = {
        "name": "tiny",
        "seed": 0,
        "data": {"train": {"kind": "imagefolder", "path": str(data_root)}, "val_fraction": 0.2},
        "preprocess": {"input_size": 16, "resize_size": 16},
        "student": {"name": "resnet18"},
        "train": {
            "epochs": 2,
            "batch_size": 16,
            "eval_batch_size": 64,
            "optimizer": {"name": "sgd", "lr": 0.05},
            "augment": {"pad_crop": 2, "hflip": 0.5},
            # PyTorch 2.14.1's CPU bf16 conv backward returns garbage weight gradients for a 3x3 stride-2 conv
            # on a 1x1 input (ResNet-18's layer4 at 16 px; upstream oneDNN bug): keep the tests in fp32.
            "precision": "fp32",
            **train,
        },
    }
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


# A tiny OpenCLIP architecture (random weights): exercises the real OpenCLIP teacher path offline.
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_CLIP_SPEC = "openclip:toolkit-tiny-clip/none"


def write_tiny_clip_config(folder: Path) -> Path:
    path = folder / "toolkit-tiny-clip.json"
    path.write_text(json.dumps(TINY_CLIP))
    return path


# A second, wider tiny OpenCLIP architecture: FDBPL's vision-language student (its own widths, not the teacher's).
TINY_CLIP_STUDENT = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 48, "patch_size": 16, "head_width": 24},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 48, "heads": 2, "layers": 1},
}
TINY_CLIP_STUDENT_SPEC = "openclip:toolkit-tiny-clip-student/none"


def write_tiny_clip_student_config(folder: Path) -> Path:
    path = folder / "toolkit-tiny-clip-student.json"
    path.write_text(json.dumps(TINY_CLIP_STUDENT))
    return path
