"""The optimisation loop of one distillation stage: an objective over replayed crops, epoch by epoch.

Data order comes from a generator seeded by (seed, epoch) and crops from the cache's per-epoch choice, so a
stage is a pure function of its seed. Batches drop the last partial one (PAND's sample-neighbour NSD and RKD
need more than a handful of samples per batch).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from distill.config import TrainConfig
from distill.data import MODEL_STREAM, derive_seed
from distill.objectives import Objective
from distill.optim import build_optimizer
from distill.precision import autocast
from distill.schedule import lr_factor
from runtime.errors import ToolkitError

EpochHook = Callable[[int, dict[str, Any]], None]


def _loader(data: torch.utils.data.Dataset, cfg: TrainConfig, seed: int, epoch: int) -> DataLoader:
    gen = torch.Generator().manual_seed(derive_seed(seed, MODEL_STREAM, epoch, 7))
    batch = min(cfg.batch_size, len(data))  # type: ignore[arg-type]
    return DataLoader(data, batch_size=batch, sampler=RandomSampler(data, generator=gen),
                      num_workers=cfg.num_workers, drop_last=True)  # fmt: skip


def train_stage(
    objective: Objective,
    data: Any,
    cfg: TrainConfig,
    stage: str,
    seed: int,
    device: torch.device,
    precision: str,
    console: Console,
    on_epoch: EpochHook | None = None,
) -> list[dict[str, Any]]:
    """Train ``objective`` (its trainable parameters: net + training-only modules) for ``cfg.epochs``."""
    objective.to(device)
    optimizer = build_optimizer(objective, cfg.optimizer)
    base_lr = cfg.optimizer.lr
    history: list[dict[str, Any]] = []
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        data.set_epoch(epoch)
        loader = _loader(data, cfg, seed, epoch)
        steps = len(loader)
        torch.manual_seed(derive_seed(seed, MODEL_STREAM, epoch))
        objective.train()
        sums: dict[str, float] = {}
        correct = count = 0
        progress = Progress(
            TextColumn(f"{stage} epoch {epoch + 1}/{cfg.epochs}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(), console=console, transient=True,
        )  # fmt: skip
        with progress:
            task = progress.add_task(stage, total=steps, loss=float("nan"))
            for step, (x, y, emb) in enumerate(loader):
                for group in optimizer.param_groups:
                    group["lr"] = base_lr * lr_factor(cfg.schedule, epoch * steps + step, steps, cfg.epochs)
                x, y, emb = x.to(device), y.to(device), emb.to(device)
                with autocast(precision, device):
                    out = objective(x, y, emb, epoch)
                if not torch.isfinite(out.total):
                    raise ToolkitError(
                        f"stage {stage}: loss became {out.total.item()} at epoch {epoch + 1} step {step} "
                        f"({', '.join(f'{k}={v.item():.4g}' for k, v in out.terms.items())}); lower the learning "
                        "rate or set train.grad_clip"
                    )
                optimizer.zero_grad(set_to_none=True)
                out.total.backward()
                if cfg.grad_clip is not None:
                    nn.utils.clip_grad_norm_(objective.parameters(), cfg.grad_clip)
                optimizer.step()
                n = len(y)
                sums["loss"] = sums.get("loss", 0.0) + out.total.item() * n
                for k, v in out.terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
                correct += int((out.logits.argmax(1) == y).sum())
                count += n
                progress.update(task, advance=1, loss=out.total.item())
        if not count:
            raise ToolkitError(f"stage {stage}: no full batch of {cfg.batch_size} in {len(data)} images")
        seconds = time.perf_counter() - t0
        row: dict[str, Any] = {"stage": stage, "epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        row["train_loss"] = sums.pop("loss") / count
        row.update({f"loss_{k}": v / count for k, v in sums.items()})
        row["train_top1"] = correct / count
        row["time_s"] = round(seconds, 3)
        row["train_images_per_s"] = round(count / seconds, 1)
        if on_epoch is not None:
            on_epoch(epoch, row)
        history.append(row)
    return history
