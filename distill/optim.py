"""Optimizer construction: no weight decay on biases and normalisation parameters (timm's convention), or on
every parameter (``optimizer.decay_all``, the papers' released code)."""

from __future__ import annotations

import torch
from torch import nn

from distill.config import OptimizerConfig


def param_groups(model: nn.Module, weight_decay: float, decay_all: bool = False) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if not decay_all and (p.ndim <= 1 or name.endswith(".bias")) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.decay_all)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               foreach=True)  # fmt: skip
    # foreach: PyTorch picks the multi-tensor update only on CUDA by default; on CPU it is bit-identical and
    # 1.9x faster for a ResNet-18 (38.6 -> 20.6 ms per AdamW step, 2 cores, measured)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, foreach=True)
