"""Mixed-precision choice: bf16 autocast only where the hardware computes bf16 natively.

Measured on a CPU without avx512_bf16/AMX (tests' machine): bf16 autocast trains ResNet-18 1.7x
*slower* than fp32, so "auto" picks fp32 there (benchmarks/train_precision.py measures it).
"""

from __future__ import annotations

import contextlib

import torch

from runtime.errors import ToolkitError


def cpu_has_native_bf16() -> bool:
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_precision(requested: str, device: torch.device) -> str:
    if requested == "fp32":
        return "fp32"
    if requested == "fp16":
        if device.type != "cuda":
            raise ToolkitError(f"train.precision fp16: needs a CUDA device (got {device}); use fp32 or bf16 on CPU")
        return "fp16"
    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_native_bf16()
    if requested == "bf16":
        if device.type == "cuda" and not native:
            raise ToolkitError(f"train.precision bf16: {torch.cuda.get_device_name(device)} has no bf16; use fp32")
        return "bf16"
    return "bf16" if native else "fp32"


def resolve_channels_last(requested: bool | str, precision: str, device: torch.device) -> bool:
    if requested == "auto":
        return precision == "bf16" or device.type == "cuda"
    return bool(requested)


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None
