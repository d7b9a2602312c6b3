"""The one training loop. `toolkit train` and every stage of every method (PSC, VL2Lite, KD, RKD, PAND, DAIT
stages 1 and 2, LaViD) optimise an ``Objective`` here, on one process or as one rank of a torchrun DDP job.

Exact resume: every micro-batch is a pure function of (checkpoint, seed, epoch, position): data order from
``DistributedSampler(seed).set_epoch``, augmentation and cached crops from per-item seeds, dropout from a
seed per micro-batch, the learning rate from the optimizer step. A checkpoint (every epoch, or the first epoch
end ``train.checkpoint_min_interval_s`` after the last one, and every ``train.checkpoint_every_steps``
optimizer steps) holds the trainable state, EMA, optimizer, loss scaler and
the partial epoch sums, so a run killed at any moment and resumed ends with bit-identical weights.

DDP: frozen modules (teachers) are left out of DDP's parameter sync; buffers are not broadcast every step;
BatchNorm running statistics are averaged over ranks (timm's ``distribute_bn``) before every checkpoint and
validation, so each rank's statistics count and all ranks hold identical weights (checked every epoch).
Losses that depend on the rest of the batch (RKD, PAND's NSD) see each rank's share of the batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from timm.utils import ModelEmaV3, distribute_bn
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from distill.checkpoint import load_checkpoint, save_checkpoint
from distill.config import TrainConfig
from distill.data import MODEL_STREAM, derive_seed
from distill.distributed import DistContext
from distill.objectives import Objective
from distill.optim import build_optimizer
from distill.precision import autocast, grad_scaler, resolve_channels_last, resolve_precision
from distill.progress import Ticker
from distill.schedule import lr_factor
from distill.weights import load_state_dict, save_state_dict
from runtime.atomic import write_text
from runtime.errors import ToolkitError

LAST, BEST = "last", "best.safetensors"
Validator = Callable[[nn.Module], dict[str, float]]


@dataclass
class EngineResult:
    history: list[dict[str, Any]]
    selected_epoch: int
    best_epoch: int | None
    best_val_top1: float | None
    weights: dict[str, torch.Tensor] = field(repr=False)  # the selected weights of ``objective.net``
    precision: str = "fp32"
    channels_last: bool = False


def write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl is rewritten whole from the checkpointed history, so it never runs ahead of it."""
    write_text(path, "".join(json.dumps(row) + "\n" for row in history))


class _Trainable:
    """What a checkpoint saves of an objective: its trainable state, never a frozen teacher."""

    def __init__(self, objective: Objective) -> None:
        self.objective = objective

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.objective.trainable_state()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.objective.load_trainable_state(state)


class _SkipSampler(Sampler[int]):
    """The distributed sampler's order for the epoch without its first ``skip`` indices (mid-epoch resume)."""

    def __init__(self, inner: DistributedSampler) -> None:
        self.inner, self.skip = inner, 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.inner), self.skip, None)

    def __len__(self) -> int:
        return len(self.inner) - self.skip


def _digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _to_device(batch: Any, device: torch.device, memory_format: torch.memory_format) -> list[torch.Tensor]:
    out = []
    for t in batch:
        if t.ndim == 4 and t.is_floating_point():
            out.append(t.to(device, non_blocking=True, memory_format=memory_format))
        else:
            out.append(t.to(device, non_blocking=True))
    return out


@dataclass
class _Loop:
    """The state of one run of the loop (what a checkpoint saves, plus the live objects)."""

    objective: Objective
    train_module: nn.Module
    optimizer: torch.optim.Optimizer
    ema: ModelEmaV3 | None
    scaler: torch.amp.GradScaler | None
    cfg: TrainConfig
    ctx: DistContext
    ckpt_dir: Path
    seed: int
    precision: str
    history: list[dict[str, Any]] = field(default_factory=list)
    best_top1: float | None = None  # val top-1 of the best epoch
    best_epoch: int | None = None
    best_score: float | None = None  # train.select_metric, higher is better (a loss is negated)

    @property
    def eval_net(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.objective.net

    def sync_bn(self) -> None:
        if self.ctx.distributed:
            distribute_bn(self.objective.net, self.ctx.world_size, reduce=True)
            if self.ema is not None:
                distribute_bn(self.ema.module, self.ctx.world_size, reduce=True)

    def checkpoint(self, epoch: int, steps_done: int | None, sums: dict[str, float] | None) -> None:
        """``steps_done`` None: epoch ``epoch`` is complete; else that many of its optimizer steps are, and
        ``sums`` (this rank's running epoch sums) are saved for every rank."""
        self.sync_bn()
        per_rank = None
        if sums is not None:
            per_rank = [sums]
            if self.ctx.distributed:
                per_rank = [{}] * self.ctx.world_size
                dist.all_gather_object(per_rank, sums)
        if self.ctx.is_main:
            state = {"history": self.history, "best_val_top1": self.best_top1, "best_epoch": self.best_epoch,
                     "best_score": self.best_score,
                     "seed": self.seed, "epochs_done": epoch + 1 if steps_done is None else epoch,
                     "steps_done": steps_done or 0, "partial_sums": per_rank,
                     "scaler": self.scaler.state_dict() if self.scaler is not None else None}  # fmt: skip
            save_checkpoint(self.ckpt_dir, LAST, epoch, _Trainable(self.objective), self.optimizer,
                            self.ema.module if self.ema else None, state, steps_done)  # fmt: skip
        self.ctx.barrier()


def train(
    objective: Objective,
    data: torch.utils.data.Dataset,
    cfg: TrainConfig,
    ckpt_dir: Path,
    seed: int,
    ctx: DistContext,
    *,
    stage: str | None = None,
    validate: Validator | None = None,
    resume: bool = False,
    console: Console | None = None,
    on_epoch: Callable[[list[dict[str, Any]]], None] | None = None,
) -> EngineResult:
    """Optimise ``objective`` over ``data`` (batches are ``objective(*batch, epoch)``) for ``cfg.epochs``.

    ``validate(net)`` scores ``objective.net`` (or its EMA) on the validation split on rank 0 after each
    epoch; ``val_top1`` selects the best epoch. ``on_epoch(history)`` runs on rank 0 after each checkpoint.
    """
    console = console or Console(stderr=True, soft_wrap=True, markup=False)
    log = console.print if ctx.is_main else (lambda *a, **k: None)
    device = ctx.device
    precision = resolve_precision(cfg.precision, device)
    channels_last = resolve_channels_last(cfg.channels_last, precision, device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    name = f"{stage} " if stage else ""

    ranks_x_accum = ctx.world_size * cfg.accumulate
    if cfg.batch_size % ranks_x_accum:
        raise ToolkitError(
            f"train.batch_size {cfg.batch_size} is not divisible by {ctx.world_size} rank(s) x train.accumulate "
            f"{cfg.accumulate}"
        )
    sampler = DistributedSampler(data, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)  # type: ignore[arg-type]
    shard = len(sampler)
    if shard < 2:
        raise ToolkitError(f"{name}training set has {len(data)} items: too few for {ctx.world_size} rank(s)")  # type: ignore[arg-type]
    micro = min(cfg.batch_size // ranks_x_accum, shard)
    drop_last = shard >= cfg.batch_size // ranks_x_accum
    micro_per_epoch = shard // micro if drop_last else -(-shard // micro)
    steps_per_epoch = micro_per_epoch // cfg.accumulate
    if steps_per_epoch < 1:
        raise ToolkitError(
            f"{name}{micro_per_epoch} micro-batch(es) per epoch: fewer than train.accumulate {cfg.accumulate}"
        )
    skipper = _SkipSampler(sampler)
    loader = DataLoader(data, batch_size=micro, sampler=skipper, num_workers=cfg.num_workers, drop_last=drop_last)

    objective.to(device=device, memory_format=memory_format)
    optimizer = build_optimizer(objective, cfg.optimizer)
    ema = ModelEmaV3(objective.net, decay=cfg.ema.decay, use_warmup=cfg.ema.warmup) if cfg.ema.enabled else None
    scaler = grad_scaler(precision, device)
    train_module: nn.Module = objective
    if ctx.distributed:
        frozen = tuple(objective.frozen_prefixes())
        ignore = [n for n, _ in itertools.chain(objective.named_parameters(), objective.named_buffers())
                  if frozen and n.startswith(frozen)]  # fmt: skip
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(objective, ignore)
        train_module = DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False
        )
    loop = _Loop(objective, train_module, optimizer, ema, scaler, cfg, ctx, ckpt_dir, seed, precision)

    start_epoch, start_step, partial = 0, 0, None
    if resume and (ckpt_dir / f"{LAST}.json").is_file():
        state = load_checkpoint(ckpt_dir, LAST, _Trainable(objective), optimizer, ema.module if ema else None)
        loop.history, loop.best_top1, loop.best_epoch = state["history"], state["best_val_top1"], state["best_epoch"]
        loop.best_score = state.get("best_score", loop.best_top1)  # checkpoints before select_metric: top-1
        start_epoch, start_step = state["epochs_done"], state["steps_done"]
        partial = state["partial_sums"][ctx.rank] if state["partial_sums"] else None
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        where = f"epoch {start_epoch + 1} step {start_step}" if start_step else f"epoch {start_epoch}"
        log(f"{name}resumed from {ckpt_dir / (LAST + '.json')} after {where} of {cfg.epochs}")
    elif resume:
        log(f"{name}no checkpoint in {ckpt_dir} yet (killed during the first epoch): starting from epoch 1")

    log(
        f"{name}training {len(data)} items ({ctx.world_size} rank(s) x {micro}/micro-batch x {cfg.accumulate} "  # type: ignore[arg-type]
        f"accumulated, {steps_per_epoch} steps/epoch), device {device}, precision {precision}, "
        f"channels_last {channels_last}"
    )
    last_saved = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        if hasattr(data, "set_epoch"):
            data.set_epoch(epoch)
        first = start_step if epoch == start_epoch else 0
        skipper.skip = first * cfg.accumulate * micro
        sums = dict(partial) if (partial and epoch == start_epoch) else {"loss": 0.0, "correct": 0.0, "count": 0.0}
        sums = _run_epoch(loop, loader, epoch, first, steps_per_epoch, sums, memory_format, console, name)
        reduced = dict(zip(sums, ctx.all_reduce_sum(list(sums.values()))))
        train_time = time.perf_counter() - t0
        loop.sync_bn()
        if ctx.distributed:
            digests: list[str] = [""] * ctx.world_size
            dist.all_gather_object(digests, _digest(objective.net))
            if len(set(digests)) > 1:
                raise ToolkitError(f"{name}epoch {epoch + 1}: DDP ranks hold different weights ({digests})")
        count = reduced.pop("count")
        row: dict[str, Any] = ({"stage": stage} if stage else {}) | {
            "epoch": epoch + 1, "lr": cfg.optimizer.lr * lr_factor(cfg.schedule, epoch * steps_per_epoch,
                                                                 steps_per_epoch, cfg.epochs),
            "lr_end": optimizer.param_groups[0]["lr"], "train_loss": reduced.pop("loss") / count,
            "train_top1": reduced.pop("correct") / count,
        }  # fmt: skip
        row.update({f"loss_{k}": v / count for k, v in reduced.items()})
        improved = False
        due_val = (epoch + 1) % cfg.val_every_epochs == 0 or epoch == cfg.epochs - 1
        if ctx.is_main and validate is not None and due_val:
            row.update(validate(loop.eval_net))
            metric = cfg.select_metric
            if metric in row:
                score = row[metric] if metric == "val_top1" else -row[metric]
                if loop.best_score is None or score > loop.best_score:
                    loop.best_score, loop.best_top1, loop.best_epoch = score, row.get("val_top1"), epoch + 1
                    improved = True
        row["time_s"] = round(time.perf_counter() - t0, 3)
        row["train_images"] = int(count)
        row["train_images_per_s"] = round(count / train_time, 1)
        if ctx.is_main:
            if improved:
                save_state_dict(ckpt_dir / BEST, loop.eval_net.state_dict(), {"epoch": str(epoch + 1)})
            loop.history.append(row)
        due = epoch == cfg.epochs - 1 or time.perf_counter() - last_saved >= cfg.checkpoint_min_interval_s
        if ctx.distributed:  # clocks differ: rank 0 decides, or one rank would wait in the checkpoint's barrier
            box = [due]
            dist.broadcast_object_list(box, src=0)
            due = box[0]
        if due:
            loop.checkpoint(epoch, None, None)
            last_saved = time.perf_counter()
        if ctx.is_main:
            if on_epoch is not None and due:
                on_epoch(loop.history)
            terms = " ".join(f"{k[5:]} {v:.4f}" for k, v in row.items() if k.startswith("loss_"))
            val = f", val top-1 {row['val_top1']:.4f}" if "val_top1" in row else ""
            speed = f"{row['time_s']:.0f}s ({row['train_images_per_s']:.0f} img/s)"
            log(f"{name}epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.4f} ({terms}), train top-1 "
                f"{row['train_top1']:.4f}{val}, {speed}")  # fmt: skip

    final = {k: v.detach().cpu().clone() for k, v in loop.eval_net.state_dict().items()}
    selected = cfg.epochs
    best_epoch = loop.best_epoch
    if ctx.distributed:  # only rank 0 validates: it decides, the others follow
        box = [best_epoch]
        dist.broadcast_object_list(box, src=0)
        best_epoch = box[0]
    if cfg.select == "best" and best_epoch is not None:
        if ctx.is_main:
            final = load_state_dict(ckpt_dir / BEST)
        selected = best_epoch
        if ctx.distributed:
            final = ctx.broadcast_state(final)
    return EngineResult(loop.history, selected, best_epoch, loop.best_top1, final, precision, channels_last)


def _run_epoch(loop: _Loop, loader: DataLoader, epoch: int, first_step: int, steps: int, sums: dict[str, float],
               memory_format: torch.memory_format, console: Console, name: str) -> dict[str, float]:  # fmt: skip
    """Optimizer steps ``first_step`` .. ``steps`` - 1 of ``epoch``; returns this rank's sums for the epoch."""
    cfg, ctx, objective, optimizer = loop.cfg, loop.ctx, loop.objective, loop.optimizer
    accum, device = cfg.accumulate, ctx.device
    params = [p for p in objective.parameters() if p.requires_grad]
    loop.train_module.train()
    optimizer.zero_grad(set_to_none=True)
    ticker = Ticker(console, f"{name}epoch {epoch + 1}/{cfg.epochs}", steps, cfg.progress_every_s, ctx.is_main,
                    first_step)  # fmt: skip
    step_images, step = 0, first_step
    with ticker:
        for i, batch in enumerate(loader):
            m = first_step * accum + i  # micro-batch index within the epoch
            step = m // accum
            if step >= steps:
                break  # micro-batches that do not fill a last accumulation group are dropped, like drop_last
            if m % accum == 0:
                factor = lr_factor(cfg.schedule, epoch * steps + step, steps, cfg.epochs)
                for group in optimizer.param_groups:
                    group["lr"] = cfg.optimizer.lr * factor
            torch.manual_seed(derive_seed(loop.seed, MODEL_STREAM, epoch, m, ctx.rank))
            batch = _to_device(batch, device, memory_format)
            last_micro = m % accum == accum - 1
            sync = contextlib.nullcontext()
            if ctx.distributed and not last_micro:
                sync = loop.train_module.no_sync()  # type: ignore[operator]
            with sync:
                with autocast(loop.precision, device):
                    out = loop.train_module(*batch, epoch)
                if not torch.isfinite(out.total):
                    terms = ", ".join(f"{k}={v.item():.4g}" for k, v in out.terms.items())
                    raise ToolkitError(
                        f"{name}loss became {out.total.item()} at epoch {epoch + 1} step {step} ({terms}); lower "
                        "train.optimizer.lr or set train.grad_clip"
                    )
                loss = out.total / accum
                (loop.scaler.scale(loss) if loop.scaler is not None else loss).backward()
            n = int(batch[1].shape[0])
            sums["loss"] += float(out.total.detach()) * n
            for k, v in out.terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
            sums["correct"] += float((out.logits.detach().argmax(1) == batch[1]).sum())
            sums["count"] += n
            step_images += n
            if not last_micro:
                continue
            if loop.scaler is not None:
                loop.scaler.unscale_(optimizer)
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            if loop.scaler is not None:
                loop.scaler.step(optimizer)
                loop.scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            global_step = epoch * steps + step
            if loop.ema is not None:
                loop.ema.update(objective.net, step=global_step)
            ticker.advance(1, images=step_images * ctx.world_size, loss=float(out.total.detach()))
            step_images = 0
            done = step + 1
            every = cfg.checkpoint_every_steps
            if every and done % every == 0 and done < steps:
                loop.checkpoint(epoch, done, sums)
    return sums
