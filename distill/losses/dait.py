"""DAIT (methods-spec section 3, reconstructed): stage 1 VLM -> intermediate teacher reuses the base loss with
the batch-mean text KL (L_SIA) and L1 alignment (L_IRA); stage 2 matches feature maps through a 1x1 conv
adapter (L_SRA), or logits (DAIT-L)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.kd import kd_loss


def spatial_mse(adapted_student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """L_SRA = mean over B*C*H*W of (Conv1x1(F_S) - F_T)^2; the larger map is adaptive-average-pooled to the smaller."""
    s, t = adapted_student_map.float(), teacher_map.float()
    if s.shape[1] != t.shape[1]:
        raise ValueError(f"channels differ after the adapter: student {s.shape[1]}, teacher {t.shape[1]}")
    if s.shape[-2:] != t.shape[-2:]:
        size = min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1])
        s, t = F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size)
    return F.mse_loss(s, t)


def dait_stage2_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    adapted_student_map: torch.Tensor | None = None,
    teacher_map: torch.Tensor | None = None,
    teacher_logits: torch.Tensor | None = None,
    tau: float = 2.0,
) -> torch.Tensor:
    """L_S = alpha L_cls + (1 - alpha) L_SRA (DAIT-F), or with tau^2 KL on logits instead of L_SRA (DAIT-L)."""
    cls = F.cross_entropy(logits.float(), labels)
    if teacher_logits is not None:
        match = kd_loss(logits, teacher_logits, tau)
    elif adapted_student_map is not None and teacher_map is not None:
        match = spatial_mse(adapted_student_map, teacher_map)
    else:
        raise ValueError("DAIT stage 2 needs feature maps (DAIT-F) or teacher logits (DAIT-L)")
    return alpha * cls + (1 - alpha) * match
