"""Training objectives: the loss terms of ``distill/losses`` wired to the modules one stage trains.

An objective owns the network the stage produces (``net``: the student, or DAIT's intermediate teacher) and
the training-only modules (condensation MLPs, adapters); only ``net`` is ever saved as the stage's output,
so nothing training-only reaches the exported student. Frozen modules stay in eval mode.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.losses.dait import spatial_mse
from distill.losses.kd import kd_loss
from distill.losses.lavid import lavid_loss
from distill.losses.nsd import nsd_class_margin, nsd_sample_neighbors
from distill.losses.rkd import rkd_angle, rkd_distance
from distill.losses.vl2lite import dynamic_weight, vl2lite_loss


@dataclass
class StepLoss:
    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    logits: torch.Tensor
    features: torch.Tensor | None = None  # the pooled feature of ``net`` (LaViD's head reads it)


def split_forward(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(last feature map, pooled feature u, classifier logits) of a timm classifier, in one pass."""
    fmap = net.forward_features(x)
    pooled = net.forward_head(fmap, pre_logits=True)
    return fmap, pooled, net.get_classifier()(pooled)


def condensation_mlp(d_in: int, d_out: int) -> nn.Sequential:
    """VL2Lite's AlignNet: Linear(D -> d) -> ReLU -> Linear(d -> d)."""
    return nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU(inplace=True), nn.Linear(d_out, d_out))


class Objective(nn.Module, ABC):
    """Base: ``net`` trains; ``frozen`` modules never do (eval mode, no gradients)."""

    def __init__(self, net: nn.Module, epochs: int) -> None:
        super().__init__()
        self.net = net
        self.epochs = epochs
        self.frozen: list[nn.Module] = []

    def freeze(self, module: nn.Module) -> nn.Module:
        module.requires_grad_(False)
        self.frozen.append(module)
        return module.eval()

    def train(self, mode: bool = True) -> Objective:
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self

    @abstractmethod
    def forward(self, x: torch.Tensor, y: torch.Tensor, emb: torch.Tensor, epoch: int) -> StepLoss:
        """One batch: student inputs, labels, teacher embeddings (empty when no teacher), 0-based epoch."""


class CrossEntropy(Objective):
    """w/o KD."""

    def forward(self, x: torch.Tensor, y: torch.Tensor, emb: torch.Tensor, epoch: int) -> StepLoss:
        _, pooled, logits = split_forward(self.net, x)
        cls = F.cross_entropy(logits.float(), y)
        return StepLoss(cls, {"cls": cls}, logits, pooled)


class HintonKD(Objective):
    """(1 - alpha) CE + alpha T^2 KL against the teacher's zero-shot logits scale * cos(v, anchors)."""

    def __init__(self, net: nn.Module, epochs: int, anchors: torch.Tensor, teacher_scale: float, params: dict) -> None:
        super().__init__(net, epochs)
        self.register_buffer("anchors", anchors.float())
        self.teacher_scale, self.t, self.alpha = teacher_scale, float(params["temperature"]), float(params["alpha"])

    def forward(self, x: torch.Tensor, y: torch.Tensor, emb: torch.Tensor, epoch: int) -> StepLoss:
        _, pooled, logits = split_forward(self.net, x)
        teacher = self.teacher_scale * F.normalize(emb, dim=-1) @ self.anchors.T
        cls = F.cross_entropy(logits.float(), y)
        kd = kd_loss(logits, teacher, self.t)
        return StepLoss((1 - self.alpha) * cls + self.alpha * kd, {"cls": cls, "kd": kd}, logits, pooled)


class RelationalKD(Objective):
    """CE + distance_weight * RKD-D + angle_weight * RKD-A between pooled features and teacher embeddings."""

    def __init__(self, net: nn.Module, epochs: int, params: dict) -> None:
        super().__init__(net, epochs)
        self.dw, self.aw = float(params["distance_weight"]), float(params["angle_weight"])

    def forward(self, x: torch.Tensor, y: torch.Tensor, emb: torch.Tensor, epoch: int) -> StepLoss:
        _, pooled, logits = split_forward(self.net, x)
        cls = F.cross_entropy(logits.float(), y)
        dist, angle = rkd_distance(pooled, emb), rkd_angle(pooled, emb)
        return StepLoss(cls + self.dw * dist + self.aw * angle, {"cls": cls, "rkd_distance": dist, "rkd_angle": angle},
                        logits, pooled)  # fmt: skip


class BaseLossObjective(Objective):
    """VL2Lite's base loss (PAND adds NSD; DAIT stage 1 applies it to the intermediate teacher)."""

    def __init__(self, net: nn.Module, epochs: int, anchors: torch.Tensor, params: dict[str, Any]) -> None:
        super().__init__(net, epochs)
        d_teacher, d_net = anchors.shape[1], int(net.num_features)
        self.register_buffer("anchors", F.normalize(anchors.float(), dim=-1))
        self.phi_image = condensation_mlp(d_teacher, d_net)
        self.phi_text = condensation_mlp(d_teacher, d_net)
        self.p = dict(params)
        self.nsd_mode = self.p.get("nsd_mode") if "nsd_lambda" in self.p else None

    def weight(self, epoch: int) -> float:
        return dynamic_weight(epoch, self.epochs, self.p["slope"], float(self.p["offset"]))

    def forward(self, x: torch.Tensor, y: torch.Tensor, emb: torch.Tensor, epoch: int) -> StepLoss:
        p = self.p
        _, pooled, logits = split_forward(self.net, x)
        v = emb.float()
        base = vl2lite_loss(
            pooled.float(), logits, y, v, self.anchors, self.phi_image(v), self.phi_text(self.anchors),
            self.weight(epoch), float(p["tau"]), float(p["scale"]), p["reduction"],
        )  # fmt: skip
        terms = {"cls": base.cls, "vis": base.vis, "txt": base.txt}
        total = base.total
        if self.nsd_mode is not None:
            cos = F.normalize(v, dim=-1) @ self.anchors.T
            if self.nsd_mode == "sample_neighbors":
                nsd = nsd_sample_neighbors(float(p["nsd_scale"]) * cos, logits, int(p["nsd_k"]))
            else:
                nsd = nsd_class_margin(cos, logits, y, int(p["nsd_k"]), float(p["nsd_scale"]), float(p["nsd_tau"]))
            terms["nsd"] = nsd
            total = total + float(p["nsd_lambda"]) * nsd
        return StepLoss(total, terms, logits, pooled)


class DaitStudent(Objective):
    """DAIT stage 2: alpha(e) CE + (1 - alpha(e)) (spatial MSE through a 1x1 adapter | tau^2 KL on IT logits)."""

    def __init__(self, net: nn.Module, epochs: int, teacher: nn.Module, variant: str, params: dict) -> None:
        super().__init__(net, epochs)
        self.teacher = self.freeze(teacher)
        self.variant, self.p = variant, dict(params)
        if variant == "features":
            self.adapter = nn.Conv2d(int(net.num_features), int(teacher.num_features), kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor, y: torch.Tensor, emb: torch.Tensor, epoch: int) -> StepLoss:
        alpha = dynamic_weight(epoch, self.epochs, self.p["slope"], float(self.p["offset"]))
        fmap, pooled, logits = split_forward(self.net, x)
        with torch.no_grad():
            t_map, _, t_logits = split_forward(self.teacher, x)
        cls = F.cross_entropy(logits.float(), y)
        if self.variant == "features":
            name, match = "sra", spatial_mse(self.adapter(fmap), t_map)
        else:
            name, match = "kd", kd_loss(logits, t_logits, float(self.p["tau"]))
        total = alpha * cls + (1 - alpha) * match
        return StepLoss(total, {"cls": cls, name: match}, logits, pooled)


class WithLaViD(Objective):
    """Any student objective plus LaViD's auxiliary head: + weight * MSE(A f(x), T_y) (methods-spec 4.2).
    The head is training-only; ``targets`` are concept signatures (C, Q, M) or class-name embeddings (C, D)."""

    def __init__(self, inner: Objective, targets: torch.Tensor, weight: float) -> None:
        super().__init__(inner.net, inner.epochs)
        self.inner, self.weight = inner, float(weight)
        self.register_buffer("targets", targets.reshape(targets.shape[0], -1).float())
        self.head = nn.Linear(int(inner.net.num_features), self.targets.shape[1])

    def train(self, mode: bool = True) -> WithLaViD:
        super().train(mode)
        self.inner.train(mode)
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor, emb: torch.Tensor, epoch: int) -> StepLoss:
        out = self.inner(x, y, emb, epoch)
        assert out.features is not None
        term = lavid_loss(self.head(out.features.float()), self.targets, y)
        return StepLoss(out.total + self.weight * term, {**out.terms, "lavid": term}, out.logits, out.features)
