"""LaViD's auxiliary loss (methods-spec 4.2): an auxiliary head's raw output regressed onto the class's concept
signature, L = (1 / (Q M)) ||A f(x) - vec(T_y)||^2 averaged over the batch = mean over B*Q*M."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lavid_loss(head_output: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``head_output`` (B, K); ``targets`` (C, ...) flattened to (C, K) (signatures Q*M, or word embeddings)."""
    table = targets.reshape(targets.shape[0], -1).to(head_output.dtype)
    return F.mse_loss(head_output.float(), table[labels].float())
