"""Learning-rate schedules as pure functions of the global step (nothing to checkpoint)."""

from __future__ import annotations

import math

from distill.config import ScheduleConfig


def lr_factor(cfg: ScheduleConfig, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Multiplier on the base learning rate at optimizer step ``step`` (0-based).

    Linear warm-up over ``warmup_epochs``, then cosine to ``min_lr_ratio`` at the end of training (or, with
    ``cosine_epochs``, torch's CosineAnnealingLR stepped per epoch),
    step decay by ``gamma`` every ``step_epochs`` epochs or at each of ``milestones``, or constant.
    """
    warmup_steps = cfg.warmup_epochs * steps_per_epoch
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    epoch = step / steps_per_epoch
    if cfg.name == "cosine" and cfg.cosine_epochs:  # torch's closed form: periodic past T_max
        t = math.floor((step - warmup_steps) / steps_per_epoch)
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t / cfg.cosine_epochs))
    if cfg.name == "cosine":
        total = epochs * steps_per_epoch - warmup_steps
        progress = min(1.0, (step - warmup_steps) / total) if total > 0 else 1.0
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.name == "step":
        return cfg.gamma ** math.floor(epoch / cfg.step_epochs)
    if cfg.name == "multistep":
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    return 1.0
