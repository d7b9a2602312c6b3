"""FDBPL's loss terms (methods-spec section 5): the teacher's cached top-K logits as soft labels, the
information weight w = 1 - H(t) / log C, and the positive / negative prompt terms in two variants.

``code`` follows the released trainer (``trainers/coop_off.py``): symmetric KL (halves) weighted by w, the
negative prompt's negative entropy weighted by 1 - w, and a cosine between the positive and negative logit
vectors; its second-order term sums antisymmetric pairs and is identically zero, so it is not computed.
``paper`` follows the paper's equations: L_pos, L_neg with the uniform target, and the first- and
second-order prompt differences with alpha and delta. Every function returns the batch mean.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CODE_ENTROPY_EPS = 1e-6  # the released code's log(p + 1e-6) in the teacher entropy
MS_FLOOR = 1e-8  # smallest MS probability of a class outside the top-K


def soft_labels(indices: torch.Tensor, values: torch.Tensor, lse: torch.Tensor, num_classes: int,
                mode: str) -> torch.Tensor:  # fmt: skip
    """(B, C) teacher distribution from top-K logits: ``ms`` keeps the exact top-K probabilities
    exp(z_k - LSE) and spreads the exact tail mass evenly over the other classes (FKD's marginal smoothing);
    ``mr`` renormalises the top-K probabilities and puts zero elsewhere."""
    k = indices.shape[-1]
    if mode == "mr":
        out = torch.zeros(*indices.shape[:-1], num_classes, dtype=torch.float64, device=values.device)
        return out.scatter(-1, indices.long(), torch.softmax(values.double(), dim=-1)).float()
    top = torch.exp(values.double() - lse.double().unsqueeze(-1))
    tail = (1.0 - top.sum(-1)).clamp_min(0.0) / max(num_classes - k, 1)
    # fp16 top-K logits resolve the tail mass to ~1e-3 of the LSE only: a tail that rounds to zero would make
    # KL(p || t) infinite, so each tail class keeps at least MS_FLOOR (then the row is renormalised).
    tail = tail.clamp_min(MS_FLOOR)
    out = tail.unsqueeze(-1).expand(*indices.shape[:-1], num_classes).clone()
    out = out.scatter(-1, indices.long(), top)
    return (out / out.sum(-1, keepdim=True)).float()


def entropy(p: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """H(p) per row, natural log; ``eps`` > 0 is the released code's -sum p log(p + eps)."""
    if eps:
        return -(p * torch.log(p + eps)).sum(-1)
    return -torch.special.xlogy(p, p).sum(-1)


def information_weight(t: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """w = 1 - H(t) / log C: 1 for a one-hot teacher, 0 for a uniform one."""
    return 1.0 - entropy(t, eps) / math.log(t.shape[-1])


def kl_to(t: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(t || softmax(logits)) per row; classes where t is zero add nothing (0 log 0 = 0)."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    return (torch.special.xlogy(t, t) - t * log_p).sum(-1)


def kl_from(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """KL(softmax(logits) || t) per row (infinite where t is zero and the student is not)."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    return (log_p.exp() * (log_p - torch.log(t))).sum(-1)


# ---------------------------------------------------------------- released code


def code_positive(logits_pos: torch.Tensor, t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """mean(w (0.5 KL(t || p) + 0.5 KL(p || t)))."""
    return (w * (0.5 * kl_to(t, logits_pos) + 0.5 * kl_from(logits_pos, t))).mean()


def code_negative(logits_neg: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """mean((1 - w) (-H(p_bar))): the negative prompt's predictions are pushed towards high entropy."""
    return ((1.0 - w) * -entropy(torch.softmax(logits_neg.float(), dim=-1))).mean()


def code_logit_cosine(logits_pos: torch.Tensor, logits_neg: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """mean(w cos(z_pos, z_neg)) between the two logit vectors (the code's stand-in for the first-order term)."""
    return (w * F.cosine_similarity(logits_pos.float(), logits_neg.float(), dim=-1)).mean()


# ---------------------------------------------------------------- paper


def paper_positive(logits_pos: torch.Tensor, t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """L_pos = mean(w KL(t || p))."""
    return (w * kl_to(t, logits_pos)).mean()


def paper_negative(logits_neg: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """L_neg = mean((1 - w) KL(u || p_bar)), u uniform."""
    c = logits_neg.shape[-1]
    log_p = F.log_softmax(logits_neg.float(), dim=-1)
    kl = -math.log(c) - log_p.mean(-1)
    return ((1.0 - w) * kl).mean()


def first_order(text_pos: torch.Tensor, text_neg: torch.Tensor) -> torch.Tensor:
    """D1_c = n(g(V(l_c)) - g(V_bar(l_c))), (C, D)."""
    return F.normalize(text_pos.float() - text_neg.float(), dim=-1)


def paper_diff1(image: torch.Tensor, d1: torch.Tensor, teacher_top: torch.Tensor, w: torch.Tensor,
                alpha: float) -> torch.Tensor:  # fmt: skip
    """L_diff1 = -mean((1 - w) S1 + alpha w (1 - S1)), S1_i = cos(f(x_i), D1 of the teacher's top class)."""
    s1 = F.cosine_similarity(image.float(), d1[teacher_top], dim=-1)
    return -((1.0 - w) * s1 + alpha * w * (1.0 - s1)).mean()


def paper_diff2(image: torch.Tensor, d1: torch.Tensor, teacher_top: torch.Tensor, w: torch.Tensor,
                delta: float) -> torch.Tensor:  # fmt: skip
    """L_diff2 = 1/(N(N-1)) sum_{i,j: top_i != top_j} w_i w_j max(0, cos(f(x_i), n(D1_top_i - D1_top_j)) + delta)."""
    n = image.shape[0]
    if n < 2:
        return image.new_zeros(())
    d2 = F.normalize(d1[teacher_top].unsqueeze(1) - d1[teacher_top].unsqueeze(0), dim=-1)  # (N, N, D): i, j
    s2 = (F.normalize(image.float(), dim=-1).unsqueeze(1) * d2).sum(-1)
    mask = (teacher_top.unsqueeze(1) != teacher_top.unsqueeze(0)).float()
    pair = w.unsqueeze(1) * w.unsqueeze(0) * mask * torch.relu(s2 + delta)
    return pair.sum() / (n * (n - 1))
