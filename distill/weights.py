"""Reading and writing weights safely: safetensors, or torch.load with weights_only=True. Never pickle."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from runtime.atomic import atomic_path
from runtime.errors import ToolkitError


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` (preferred) or a ``.pt``/``.pth`` read with weights_only=True."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ToolkitError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ToolkitError(f"{path}: not a readable safetensors file ({exc})") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ToolkitError(
            f"{path}: cannot be loaded as plain tensors ({type(exc).__name__}); convert it to .safetensors"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ToolkitError(f"{path}: expected a mapping of tensor names to tensors")
    return state


def save_state_dict(
    path: str | os.PathLike[str], state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Write ``state`` atomically as safetensors (tensors copied to CPU, contiguous, unshared)."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
