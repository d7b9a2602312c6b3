"""The teacher's image encoder on OpenVINO / ONNX Runtime: same embeddings as PyTorch, chosen as configured,
kept apart in the cache key, refused when it disagrees."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_CLIP_SPEC, write_tiny_clip_config

from distill.teachers.image_backend import EngineImageEncoder, resolve_backend, use_image_backend
from runtime.errors import ToolkitError
from toolkit.teaching import build_teacher


@pytest.fixture(scope="module")
def clip_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_clip_config(tmp_path_factory.mktemp("clip"))


def _teacher(config: Path):
    from distill.teachers.registry import create_teacher

    torch.manual_seed(0)
    return create_teacher(TINY_CLIP_SPEC, config=config)


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_engine_embeddings_match_pytorch(clip_config: Path, backend: str) -> None:
    teacher = _teacher(clip_config)
    h, w = teacher.contract.input_size
    x = torch.randn(5, 3, h, w)
    with torch.no_grad():
        eager = teacher.encode_image(x)
    info = use_image_backend(teacher, backend)
    assert info == {"requested": backend, "backend": backend} and teacher.image_backend == backend
    got = teacher.encode_image(x)
    assert isinstance(teacher.encode_image, EngineImageEncoder) and got.shape == eager.shape
    torch.testing.assert_close(got, eager, atol=1e-5, rtol=1e-4)
    assert list(teacher.encode_image.parity) == [f"{h}x{w}"]
    assert teacher.encode_image.parity[f"{h}x{w}"] <= 1e-4


def test_auto_picks_an_engine_on_cpu_and_torch_elsewhere() -> None:
    assert resolve_backend("auto", "cpu") == "openvino"  # installed in the test environment
    assert resolve_backend("auto", "cuda") == "torch"
    with pytest.raises(ToolkitError, match="teacher backend must be one of"):
        resolve_backend("tensorrt")


def test_a_disagreeing_engine_is_refused(clip_config: Path) -> None:
    teacher = _teacher(clip_config)
    encoder = EngineImageEncoder(type(teacher).encode_image.__get__(teacher), "onnxruntime")
    broken = encoder._compile

    def compile_wrong(example: torch.Tensor):  # a real session, with the output perturbed past the tolerance
        run = broken(example)
        return lambda x: run(x) + 1e-3

    encoder._compile = compile_wrong  # type: ignore[method-assign]
    h, w = teacher.contract.input_size
    with pytest.raises(ToolkitError, match="differs from PyTorch by 1.00e-03"):
        encoder(torch.randn(2, 3, h, w))


def test_gradients_and_the_cache_key_keep_backends_apart(clip_config: Path) -> None:
    from distill.crops import CropRecipe
    from distill.teacher_cache import cache_spec
    from runtime.datasets import ArrayDataset

    teacher = build_teacher(TINY_CLIP_SPEC, clip_config, "openvino")
    h, w = teacher.contract.input_size
    x = torch.randn(2, 3, h, w, requires_grad=True)
    assert teacher.encode_image(x).requires_grad  # inputs that need gradients stay on PyTorch
    import numpy as np

    data = ArrayDataset("d", np.zeros((2, 8, 8), np.uint8), np.array([0, 1]), ["a", "b"])
    spec_ov = cache_spec(teacher, data, 1, CropRecipe(), 0, 0, None)
    plain = _teacher(clip_config)
    assert cache_spec(plain, data, 1, CropRecipe(), 0, 0, None).image_backend == "torch"
    assert spec_ov.image_backend == "openvino"
    assert build_teacher(TINY_CLIP_SPEC, clip_config, "openvino") is teacher  # built once per process
