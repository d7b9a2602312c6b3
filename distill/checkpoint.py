"""Resumable training state: tensors in safetensors, everything else in a JSON pointer file.

``<tag>-e<epoch>.safetensors`` holds model, EMA and optimizer tensors; ``<tag>.json`` holds epoch,
metric history, optimizer hyper-parameters and the tensor file's sha256. The JSON is renamed into
place last, so after a kill at any moment it names a complete, matching tensor file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from distill.weights import save_state_dict
from runtime.atomic import write_json
from runtime.errors import ToolkitError
from runtime.hashing import sha256_file


def _optimizer_split(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state -> (tensors keyed optim.<param>.<name>, JSON-able rest)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_join(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], current_groups: list[dict[str, Any]]
) -> dict[str, Any]:
    groups = [dict(g) for g in meta["param_groups"]]
    for group, current in zip(groups, current_groups):
        for key, value in group.items():
            if isinstance(current.get(key), tuple) and isinstance(value, list):
                group[key] = tuple(value)  # JSON turned e.g. AdamW's betas into a list
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for pid, entry in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(entry)
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    directory: Path,
    tag: str,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: nn.Module | None,
    state: dict[str, Any],
    step: int | None = None,
) -> Path:
    """Write the state after ``epoch`` (0-based, completed; or in progress, after optimizer ``step`` of it);
    remove this tag's older tensor files. ``model`` is anything with ``state_dict()``."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    optim_tensors, optim_meta = _optimizer_split(optimizer)
    tensors.update(optim_tensors)
    suffix = "" if step is None else f"-s{step:07d}"
    tensor_file = directory / f"{tag}-e{epoch:04d}{suffix}.safetensors"
    save_state_dict(tensor_file, tensors)
    pointer = {
        "epoch": epoch,
        "tensors": tensor_file.name,
        "sha256": sha256_file(tensor_file),
        "optimizer": optim_meta,
        **state,
    }
    write_json(directory / f"{tag}.json", pointer)
    for old in directory.glob(f"{tag}-e*.safetensors"):
        if old.name != tensor_file.name:
            old.unlink(missing_ok=True)
    return directory / f"{tag}.json"


def load_checkpoint(
    directory: Path, tag: str, model: nn.Module, optimizer: torch.optim.Optimizer, ema: nn.Module | None
) -> dict[str, Any]:
    """Restore model/EMA/optimizer from ``<tag>.json``; return the JSON state. Verifies the hash.
    ``model`` is anything with ``load_state_dict(dict)``."""
    pointer_path = directory / f"{tag}.json"
    if not pointer_path.is_file():
        raise ToolkitError(f"{pointer_path}: no checkpoint to resume from; run without --resume")
    try:
        pointer = json.loads(pointer_path.read_text())
    except json.JSONDecodeError as exc:
        raise ToolkitError(f"{pointer_path}: corrupt checkpoint pointer ({exc})") from exc
    tensor_file = directory / pointer["tensors"]
    if not tensor_file.is_file() or sha256_file(tensor_file) != pointer["sha256"]:
        raise ToolkitError(f"{tensor_file}: missing or does not match the hash in {pointer_path}; cannot resume")
    tensors = load_file(str(tensor_file))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    optimizer.load_state_dict(_optimizer_join(tensors, pointer["optimizer"], optimizer.state_dict()["param_groups"]))
    return pointer
