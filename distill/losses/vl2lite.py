"""VL2Lite's base loss (methods-spec section 1), shared by PAND stage NSD and DAIT stage 1.

Inputs are the tensors of one step: the student's pooled feature u and classifier logits, the teacher's
image embedding v and class anchors t, and the condensation MLPs' outputs phi_I(v) and phi_T(t) (the
MLPs train with the student; they are arguments so this stays a pure function).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distill.losses.kd import kl_rows

LOGIT_SCALE = 1 / 0.07
TXT_REDUCTIONS = ("vl2lite", "pand")


def dynamic_weight(epoch: int, epochs: int, slope: float | None = None, offset: float = 0.0) -> float:
    """alpha(e) = clip(k * e + b, 0, 1) with the 0-based epoch; VL2Lite's k = 1 / (8E), b = 0 (paper: b = 0.01)."""
    k = 1.0 / (8 * epochs) if slope is None else slope
    return float(min(max(k * epoch + offset, 0.0), 1.0))


@dataclass
class BaseLoss:
    total: torch.Tensor
    cls: torch.Tensor
    vis: torch.Tensor
    txt: torch.Tensor
    weight: float


def text_kl(
    student_feat: torch.Tensor,
    teacher_img: torch.Tensor,
    anchors: torch.Tensor,
    anchors_proj: torch.Tensor,
    tau: float = 2.0,
    scale: float = LOGIT_SCALE,
    reduction: str = "vl2lite",
) -> torch.Tensor:
    """tau^2 KL(softmax(s v t^T / tau) || softmax(s n(u) n(phi_T(t))^T / tau)).

    ``reduction`` "vl2lite": KLDivLoss 'mean' over B*C times C/2 = (tau^2 / 2B) sum_i KL_i; "pand": 'batchmean'
    = (tau^2 / B) sum_i KL_i (twice VL2Lite's). DAIT's L_SIA is the "pand" form.
    """
    if reduction not in TXT_REDUCTIONS:
        raise ValueError(f"reduction must be one of {TXT_REDUCTIONS}, got {reduction!r}")
    z_s = scale * F.normalize(student_feat, dim=-1) @ F.normalize(anchors_proj, dim=-1).T / tau
    z_t = scale * F.normalize(teacher_img, dim=-1) @ F.normalize(anchors, dim=-1).T / tau
    per_row = kl_rows(z_t, z_s)
    factor = 0.5 if reduction == "vl2lite" else 1.0
    return tau * tau * factor * per_row.mean()


def vl2lite_loss(
    student_feat: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_img: torch.Tensor,
    anchors: torch.Tensor,
    teacher_img_proj: torch.Tensor,
    anchors_proj: torch.Tensor,
    weight: float,
    tau: float = 2.0,
    scale: float = LOGIT_SCALE,
    reduction: str = "vl2lite",
    label_smoothing: float = 0.0,
) -> BaseLoss:
    """L = w L_cls + (1 - w) (L_vis + L_txt) / 2, with L_vis = mean |n(u) - n(phi_I(v))| (not detached)."""
    cls = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
    vis = (F.normalize(student_feat.float(), dim=-1) - F.normalize(teacher_img_proj.float(), dim=-1)).abs().mean()
    txt = text_kl(student_feat, teacher_img, anchors, anchors_proj, tau, scale, reduction)
    total = weight * cls + (1 - weight) * (vis + txt) / 2
    return BaseLoss(total, cls, vis, txt, weight)
