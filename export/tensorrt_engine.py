"""TensorRT engine from the explicit-quantization (QDQ) ONNX model, with a persistent timing cache.

Runs only where the ``tensorrt`` package and an NVIDIA GPU exist; elsewhere ``unavailable_reason`` says
why and the QDQ model stays the deliverable (build it on the device, e.g. trtexec --onnx=...).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.atomic import write_bytes, write_json
from runtime.errors import ToolkitError
from runtime.preprocess import PreprocessContract


def unavailable_reason() -> str | None:
    """None when an engine can be built here, else a sentence saying what is missing."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt package is not installed (pip install 'edge-distill-toolkit[tensorrt]')"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return None


def engine_filename(gpu_name: str, stem: str = "model") -> str:
    """<stem>.<gpu>.engine: an engine only runs on the GPU model (and TensorRT version) it was built for; the
    stem tells engines of different Q/DQ files apart (model: PTQ's, model.qad: QAD's)."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-") or "gpu"
    return f"{stem}.{slug}.engine"


# TensorRT majors this module builds for: 10 (weak typing: INT8/FP16 builder flags) and 11 (strongly typed only:
# the flags and the INT8 calibrator API are gone; precisions come from the Q/DQ graph).
SUPPORTED_MAJORS = (10, 11)


def typing_mode(version: str) -> str:
    """ "weak" (TensorRT 10: INT8 + FP16 builder flags, float layers may run in FP16) or "strong" (TensorRT 11:
    every tensor's type is the ONNX graph's, so layers kept out of INT8 run in FP32)."""
    try:
        major = int(version.split(".")[0])
    except ValueError as exc:
        raise ToolkitError(f"TensorRT version {version!r}: cannot read its major version") from exc
    if major not in SUPPORTED_MAJORS:
        majors = " and ".join(map(str, SUPPORTED_MAJORS))
        raise ToolkitError(f"TensorRT {version}: engines are built for TensorRT {majors} (pip install "
                           "'tensorrt>=10.1,<12'; JetPack 6 ships 10.x)")  # fmt: skip
    return "weak" if major == 10 else "strong"


def builder_flags(mode: str, precision: str) -> tuple[str, ...]:
    """The BuilderFlag names to set: none when strongly typed (TensorRT 11 removed them; the ONNX file's types
    decide); weakly typed (10), FP16, plus INT8 for a Q/DQ model (its float layers may then run in FP16)."""
    if precision not in ("int8", "fp16"):
        raise ToolkitError(f"TensorRT engine precision {precision!r} is not int8 or fp16")
    if mode == "strong":
        return ()
    return ("INT8", "FP16") if precision == "int8" else ("FP16",)


def profile_shapes(contract: PreprocessContract, opt_batch: int, max_batch: int) -> tuple[tuple, tuple, tuple]:
    if not 1 <= opt_batch <= max_batch:
        raise ToolkitError(f"engine batch sizes: need 1 <= opt ({opt_batch}) <= max ({max_batch})")
    h, w = contract.input_size
    return (1, 3, h, w), (opt_batch, 3, h, w), (max_batch, 3, h, w)


def engine_sidecar(contract: PreprocessContract, input_name: str, output_name: str, max_batch: int) -> dict[str, Any]:
    """What an engine does not say about itself: preprocessing, class names, I/O names and shapes (-1 = batch),
    and the largest batch of its optimisation profile (the runtime session and `toolkit deploy triton` read it)."""
    h, w = contract.input_size
    return {
        "preprocess": contract.to_dict(),
        "input": {"name": input_name, "dtype": "float32", "shape": [-1, 3, h, w]},
        "output": {"name": output_name, "dtype": "float32", "shape": [-1, len(contract.class_names)]},
        "max_batch": max_batch,
    }


def build_engine(
    onnx_path: Path,
    out_dir: Path,
    contract: PreprocessContract,
    timing_cache: Path,
    opt_batch: int = 8,
    max_batch: int = 64,
    workspace_bytes: int = 1 << 30,
    stem: str = "model",
    precision: str = "int8",
) -> dict[str, Any]:
    """Parse the model, build its engine, save it, its sidecar (contract, TensorRT version, GPU) and the timing
    cache. ``int8``: a Q/DQ model (TensorRT 10: INT8 + FP16 flags, FP16 fallback for float layers); ``fp16``: a
    mixed-precision FP16 model (TensorRT 10: the FP16 flag). TensorRT 11 is strongly typed: the file's types."""
    reason = unavailable_reason()
    if reason:
        raise ToolkitError(f"cannot build a TensorRT engine here: {reason}")
    import tensorrt as trt
    import torch

    mode = typing_mode(trt.__version__)
    builder_flags(mode, precision)  # a bad precision fails before any work
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # 11.x: every network is strongly typed (the creation flag is accepted and ignored, or absent).
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(1 << int(flag) if mode == "strong" and flag is not None else 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ToolkitError(f"{onnx_path}: TensorRT's ONNX parser rejected it: {errors}")
    config = builder.create_builder_config()
    for name in builder_flags(mode, precision):
        config.set_flag(getattr(trt.BuilderFlag, name))
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    profile.set_shape(network.get_input(0).name, *profile_shapes(contract, opt_batch, max_batch))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ToolkitError(f"{onnx_path}: TensorRT failed to build an engine (see its log above)")
    gpu = torch.cuda.get_device_name()
    engine = out_dir / engine_filename(gpu, stem)
    write_bytes(engine, bytes(serialized))
    # Engines hold no metadata: the runtime reads the contract and class names from this sidecar.
    sidecar = engine_sidecar(contract, network.get_input(0).name, network.get_output(0).name, max_batch)
    sidecar.update(tensorrt=trt.__version__, gpu=gpu, typing=mode, precision=precision)
    write_json(engine.with_name(engine.name + ".json"), sidecar)
    write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return {
        "file": engine.name,
        "tensorrt": trt.__version__,
        "cuda": torch.version.cuda,
        "gpu": gpu,
        "typing": mode,
        "precision": precision,
        "batch": {"min": 1, "opt": opt_batch, "max": max_batch},
        "timing_cache": timing_cache.name,
    }


def engine_or_reason(
    source: Path, run_dir: Path, contract: PreprocessContract, say: Callable[[str], None], stem: str = "model",
    precision: str = "int8",
) -> dict[str, Any]:  # fmt: skip
    """Build ``source``'s engine (<stem>.<gpu>.engine) where TensorRT and a GPU exist; otherwise record why not."""
    reason = unavailable_reason()
    if reason:
        say(f"TensorRT engine not built: {reason}; {source.name} is the engine's input on the device")
        return {"built": False, "reason": reason}
    cache = run_dir / "tensorrt.timing-cache"
    return {"built": True, **build_engine(source, run_dir, contract, cache, stem=stem, precision=precision)}
