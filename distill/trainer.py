"""The training loop: one process on CPU/GPU, or one rank of a torchrun DDP job.

Each epoch is a pure function of (checkpoint after the previous epoch, seed, epoch): data order comes
from DistributedSampler(seed).set_epoch, augmentation from per-item seeds, dropout from a per-epoch
seed, the learning rate from the global step. So a run killed at any point and resumed from its last
checkpoint ends with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from distill.checkpoint import load_checkpoint, save_checkpoint
from distill.config import TrainConfig
from distill.data import MODEL_STREAM, ImageTensorDataset, derive_seed
from distill.distributed import DistContext
from distill.evaluate import predict_logits
from distill.optim import build_optimizer
from distill.precision import autocast, resolve_channels_last, resolve_precision
from distill.schedule import lr_factor
from distill.transforms import TrainTransform
from distill.weights import load_state_dict, save_state_dict
from runtime.atomic import write_text
from runtime.datasets import Dataset
from runtime.errors import ToolkitError
from runtime.preprocess import PreprocessContract

CKPT_DIR = "checkpoints"


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    selected_epoch: int
    best_epoch: int | None
    best_val_top1: float | None
    weights: dict[str, torch.Tensor] = field(repr=False)
    precision: str = "fp32"
    channels_last: bool = False


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl is rewritten whole from the checkpointed history, so it never runs ahead of it."""
    write_text(run_dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))


def _val_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    t = torch.from_numpy(logits)
    return {
        "val_loss": float(F.cross_entropy(t, torch.from_numpy(labels)).item()),
        "val_top1": float((logits.argmax(1) == labels).mean()),
    }


@dataclass
class _Parts:
    """What one optimisation step needs."""

    model: nn.Module
    train_module: nn.Module  # the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    base_lrs: list[float]
    ema: ModelEmaV3 | None
    device: torch.device
    precision: str
    memory_format: torch.memory_format


def _train_epoch(
    parts: _Parts, loader: DataLoader, epoch: int, cfg: TrainConfig, console: Console, show: bool
) -> list[float]:
    """One pass over ``loader``; returns this rank's [sum of loss * n, correct, n]."""
    p = parts
    steps_per_epoch = len(loader)
    p.train_module.train()
    sums = [0.0, 0.0, 0.0]
    progress = Progress(
        TextColumn(f"epoch {epoch + 1}/{cfg.epochs}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not show,
    )
    with progress:
        task = progress.add_task("train", total=steps_per_epoch, loss=float("nan"))
        for step, (images, labels) in enumerate(loader):
            global_step = epoch * steps_per_epoch + step
            factor = lr_factor(cfg.schedule, global_step, steps_per_epoch, cfg.epochs)
            for group, base in zip(p.optimizer.param_groups, p.base_lrs):
                group["lr"] = base * factor
            images = images.to(p.device, non_blocking=True, memory_format=p.memory_format)
            labels = labels.to(p.device, non_blocking=True)
            with autocast(p.precision, p.device):
                logits = p.train_module(images)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise ToolkitError(
                    f"loss became {loss.item()} at epoch {epoch + 1} step {step}; lower train.optimizer.lr "
                    "or set train.grad_clip"
                )
            p.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(p.model.parameters(), cfg.grad_clip)
            p.optimizer.step()
            if p.ema is not None:
                p.ema.update(p.model, step=global_step)
            n = labels.shape[0]
            sums[0] += loss.item() * n
            sums[1] += (logits.argmax(1) == labels).sum().item()
            sums[2] += n
            progress.update(task, advance=1, loss=loss.item())
    return sums


def fit(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset | None,
    contract: PreprocessContract,
    cfg: TrainConfig,
    run_dir: Path,
    seed: int,
    ctx: DistContext,
    resume: bool = False,
    console: Console | None = None,
) -> FitResult:
    """Train ``model`` with cross-entropy; checkpoint every epoch into ``run_dir/checkpoints``."""
    console = console or Console(stderr=True, soft_wrap=True, markup=False)
    log = console.print if ctx.is_main else (lambda *a, **k: None)
    device = ctx.device
    precision = resolve_precision(cfg.precision, device)
    channels_last = resolve_channels_last(cfg.channels_last, precision, device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    if cfg.batch_size % ctx.world_size:
        raise ToolkitError(f"train.batch_size {cfg.batch_size} is not divisible by the {ctx.world_size} DDP ranks")
    per_rank = cfg.batch_size // ctx.world_size
    tensors = ImageTensorDataset(train_set, augment=TrainTransform(contract, cfg.augment), seed=seed)
    sampler = DistributedSampler(tensors, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)
    shard = len(sampler)
    if shard < 2:
        raise ToolkitError(f"training set has {len(train_set)} images: too few for {ctx.world_size} rank(s)")
    loader = DataLoader(
        tensors,
        batch_size=min(per_rank, shard),
        sampler=sampler,
        num_workers=cfg.num_workers,
        drop_last=shard >= per_rank,
    )
    steps_per_epoch = len(loader)

    model.to(device=device, memory_format=memory_format)
    optimizer = build_optimizer(model, cfg.optimizer)
    base_lrs = [cfg.optimizer.lr for _ in optimizer.param_groups]
    ema = ModelEmaV3(model, decay=cfg.ema.decay, use_warmup=cfg.ema.warmup) if cfg.ema.enabled else None
    ckpt_dir = run_dir / CKPT_DIR

    history: list[dict[str, Any]] = []
    best_top1: float | None = None
    best_epoch: int | None = None
    start_epoch = 0
    if resume and (ckpt_dir / "last.json").is_file():
        state = load_checkpoint(ckpt_dir, "last", model, optimizer, ema.module if ema else None)
        history, best_top1, best_epoch = state["history"], state["best_val_top1"], state["best_epoch"]
        start_epoch = state["epoch"] + 1
        log(f"resumed from {ckpt_dir / 'last.json'} after epoch {start_epoch} of {cfg.epochs}")
    elif resume:
        log(f"no checkpoint in {ckpt_dir} yet (killed during the first epoch): starting from epoch 1")
    train_module: nn.Module = model
    if ctx.distributed:
        train_module = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    parts = _Parts(model, train_module, optimizer, base_lrs, ema, device, precision, memory_format)
    log(
        f"training {len(train_set)} images ({ctx.world_size} rank(s) x {per_rank}/step, "
        f"{steps_per_epoch} steps/epoch), "
        f"validating on {len(val_set) if val_set is not None else 0}; device {device}, precision {precision}, "
        f"channels_last {channels_last}"
    )
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        tensors.set_epoch(epoch)
        torch.manual_seed(derive_seed(seed, MODEL_STREAM, epoch, ctx.rank))
        sums = _train_epoch(parts, loader, epoch, cfg, console, ctx.is_main)
        loss_sum, correct, count = ctx.all_reduce_sum(sums)
        train_time = time.perf_counter() - t0

        eval_model = ema.module if ema is not None else model
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / count,
            "train_top1": correct / count,
        }
        improved = False
        if ctx.is_main and val_set is not None and len(val_set):
            logits = predict_logits(
                eval_model, val_set, contract, cfg.eval_batch_size, device, precision, channels_last
            )
            row.update(_val_metrics(logits, val_set.labels))
            if best_top1 is None or row["val_top1"] > best_top1:
                best_top1, best_epoch, improved = row["val_top1"], epoch + 1, True
        row["time_s"] = round(time.perf_counter() - t0, 3)
        row["train_images_per_s"] = round(count / train_time, 1)
        if ctx.is_main:
            if improved:
                save_state_dict(ckpt_dir / "best.safetensors", eval_model.state_dict(), {"epoch": str(epoch + 1)})
            history.append(row)
            save_checkpoint(
                ckpt_dir,
                "last",
                epoch,
                model,
                optimizer,
                ema.module if ema else None,
                {"history": history, "best_val_top1": best_top1, "best_epoch": best_epoch, "seed": seed},
            )
            write_metrics(run_dir, history)
            val = f"val top-1 {row['val_top1']:.4f} loss {row['val_loss']:.4f}" if "val_top1" in row else "no val"
            log(
                f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f} top-1 {row['train_top1']:.4f}, "
                f"{val}, {row['time_s']:.0f}s ({row['train_images_per_s']:.0f} img/s)"
            )
        ctx.barrier()

    final = (ema.module if ema is not None else model).state_dict()
    selected = cfg.epochs
    if cfg.select == "best" and best_epoch is not None:  # only the main rank validates
        final, selected = load_state_dict(ckpt_dir / "best.safetensors"), best_epoch
    weights = {k: v.detach().cpu() for k, v in final.items()}
    return FitResult(history, selected, best_epoch, best_top1, weights, precision, channels_last)
