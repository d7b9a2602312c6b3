"""Relational KD (Park et al., CVPR 2019): match the distance and angle structure of a batch's embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _normalised_distances(e: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(e.float(), e.float())
    off_diagonal = d[~torch.eye(len(e), dtype=torch.bool, device=e.device)]
    return d / off_diagonal.mean().clamp(min=1e-12)


def rkd_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Huber loss between the pairwise distances of each batch, each divided by its mean off-diagonal distance."""
    with torch.no_grad():
        target = _normalised_distances(teacher)
    return F.smooth_l1_loss(_normalised_distances(student), target)


def _angles(e: torch.Tensor) -> torch.Tensor:
    """cos of the angle at j between i and k, for every (i, j, k): <n(e_i - e_j), n(e_k - e_j)>."""
    diff = e.float().unsqueeze(0) - e.float().unsqueeze(1)  # [j, i] = e_i - e_j
    length = diff.norm(dim=-1, keepdim=True)
    # Coinciding points (i == j, or duplicate samples) have no direction: zero, with zero gradient, instead of
    # normalising a ~0 vector (F.normalize's eps turns that into gradients of 1e11).
    unit = torch.where(length > 1e-6, diff / length.clamp(min=1e-6), torch.zeros_like(diff))
    return torch.bmm(unit, unit.transpose(1, 2)).flatten()


def rkd_angle(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        target = _angles(teacher)
    return F.smooth_l1_loss(_angles(student), target)


def rkd_loss(
    student: torch.Tensor, teacher: torch.Tensor, distance_weight: float = 25.0, angle_weight: float = 50.0
) -> torch.Tensor:
    """The paper's weighting (25 x distance + 50 x angle)."""
    return distance_weight * rkd_distance(student, teacher) + angle_weight * rkd_angle(student, teacher)
