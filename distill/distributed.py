"""Process-group setup for single-process and torchrun (DDP) training, via torch.distributed."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from runtime.errors import ToolkitError


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum floats over ranks (identity in a single process)."""
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return t.tolist()

    def broadcast_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rank 0's tensors on every rank (in place on rank 0's dict; keys must match on every rank)."""
        if not self.distributed:
            return state
        comm = self.device if self.device.type == "cuda" else torch.device("cpu")
        out = {}
        for key, value in sorted(state.items()):  # one order on every rank (a loaded file's differs)
            t = value.detach().to(comm).contiguous()
            dist.broadcast(t, 0)
            out[key] = t.cpu()
        return out


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ToolkitError(f"train.device {requested!r}: CUDA is not available on this machine; use cpu or auto")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def init_distributed(requested_device: str) -> DistContext:
    """Read torchrun's environment; start a process group (NCCL on GPU, gloo on CPU) when world_size > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(requested_device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, world_size, local_rank, device)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
