"""Training objectives: the loss terms of ``distill/losses`` wired to the modules one stage trains.

An objective owns the network the stage produces (``net``: the student, DAIT's intermediate teacher, or PSC's
prompt context) and the training-only modules (condensation MLPs, adapters, heads). It computes the value of
each loss term; the total is the stage's weighted sum, with the weights the method declares (functions of the
epoch). Frozen modules (teachers) stay in eval mode, get no gradients, are left out of DDP's parameter sync
and out of checkpoints; only ``net`` is ever saved as the stage's output.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.loss_terms import LossTerm, const, param
from distill.losses import fdbpl
from distill.losses.dait import spatial_mse
from distill.losses.kd import kd_loss
from distill.losses.lavid import lavid_loss
from distill.losses.nsd import nsd_class_margin, nsd_sample_neighbors
from distill.losses.rkd import rkd_angle, rkd_distance
from distill.losses.vl2lite import vl2lite_loss
from runtime.errors import ToolkitError

CE_TERM = LossTerm("cls", const(1.0), "cross-entropy with the label")
COOP_TERM = LossTerm("coop_ce", const(1.0), "CE of teacher-scale logits vs the prompted class embeddings")


@dataclass
class StepLoss:
    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    logits: torch.Tensor
    features: torch.Tensor | None = None  # the pooled feature of ``net`` (LaViD's head reads it)


@dataclass
class TermValues:
    """What ``Objective.compute`` returns: each term's value, the logits scored for train top-1, the feature."""

    values: dict[str, torch.Tensor]
    logits: torch.Tensor
    features: torch.Tensor | None = None


def split_forward(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(last feature map, pooled feature u, classifier logits) of a timm classifier, in one pass."""
    fmap = net.forward_features(x)
    pooled = net.forward_head(fmap, pre_logits=True)
    return fmap, pooled, net.get_classifier()(pooled)


def condensation_mlp(d_in: int, d_out: int) -> nn.Sequential:
    """VL2Lite's AlignNet: Linear(D -> d) -> ReLU -> Linear(d -> d)."""
    return nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU(inplace=True), nn.Linear(d_out, d_out))


class Objective(nn.Module, ABC):
    """Base: ``net`` trains; ``frozen`` modules never do. ``forward(*batch, epoch)`` -> the weighted total."""

    def __init__(self, net: nn.Module, epochs: int, terms: Sequence[LossTerm] = (CE_TERM,),
                 params: dict[str, Any] | None = None, label_smoothing: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        self.net = net
        self.epochs = epochs
        self.terms = tuple(terms)
        self.params = dict(params or {})
        self.label_smoothing = float(label_smoothing)
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

    def frozen_prefixes(self) -> list[str]:
        """Dotted names of the frozen submodules (``teacher.``): excluded from DDP sync and checkpoints."""
        ids = {id(m) for m in self.frozen}
        return [f"{name}." for name, m in self.named_modules() if name and id(m) in ids]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Everything a checkpoint needs: ``net``, training-only modules and buffers; no frozen teacher."""
        prefixes = tuple(self.frozen_prefixes())
        return {k: v for k, v in self.state_dict().items() if not prefixes or not k.startswith(prefixes)}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        prefixes = tuple(self.frozen_prefixes())
        missing = [k for k in missing if not prefixes or not k.startswith(prefixes)]
        if missing or unexpected:
            raise ToolkitError(
                f"checkpoint does not fit this stage: missing {missing[:4]}, unexpected {unexpected[:4]}"
            )

    def ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)

    def weights(self, epoch: int) -> dict[str, float]:
        return {t.name: t.weight(epoch, self.epochs, self.params) for t in self.terms}

    def combine(self, values: dict[str, torch.Tensor], epoch: int) -> torch.Tensor:
        weights = self.weights(epoch)
        if set(weights) != set(values):
            raise ToolkitError(f"{type(self).__name__}: computes terms {sorted(values)}, declares {sorted(weights)}")
        return sum(
            (weights[k] * v for k, v in values.items()), torch.zeros((), device=next(iter(values.values())).device)
        )

    @abstractmethod
    def compute(self, *batch: torch.Tensor) -> TermValues:
        """Each loss term's value on one batch (the weights are applied by ``forward``)."""

    def forward(self, *batch_and_epoch: Any) -> StepLoss:
        *batch, epoch = batch_and_epoch
        out = self.compute(*batch)
        return StepLoss(self.combine(out.values, int(epoch)), out.values, out.logits, out.features)


class CrossEntropy(Objective):
    """w/o KD (and ``toolkit train``): batches of (image, label[, unused teacher embedding])."""

    def compute(self, x: torch.Tensor, y: torch.Tensor, emb: torch.Tensor | None = None) -> TermValues:
        _, pooled, logits = split_forward(self.net, x)
        return TermValues({"cls": self.ce(logits, y)}, logits, pooled)


class HintonKD(Objective):
    """CE and T^2 KL against the teacher's logits from its cached embedding: ``head`` is scale * cos(v, anchors)
    for a vision-language teacher, the classification layer of a classifier teacher (frozen either way)."""

    def __init__(self, net: nn.Module, epochs: int, terms: Sequence[LossTerm], params: dict, head: nn.Module,
                 label_smoothing: float = 0.0) -> None:  # fmt: skip
        super().__init__(net, epochs, terms, params, label_smoothing)
        self.head = self.freeze(head)
        self.t = float(params["temperature"])

    def compute(self, x: torch.Tensor, y: torch.Tensor, emb: torch.Tensor) -> TermValues:
        _, pooled, logits = split_forward(self.net, x)
        with torch.no_grad():
            teacher = self.head(emb.float())
        return TermValues({"cls": self.ce(logits, y), "kd": kd_loss(logits, teacher, self.t)}, logits, pooled)


class RelationalKD(Objective):
    """CE, RKD-D and RKD-A between pooled features and teacher embeddings (per batch: per rank under DDP)."""

    def compute(self, x: torch.Tensor, y: torch.Tensor, emb: torch.Tensor) -> TermValues:
        _, pooled, logits = split_forward(self.net, x)
        values = {
            "cls": self.ce(logits, y),
            "rkd_distance": rkd_distance(pooled, emb),
            "rkd_angle": rkd_angle(pooled, emb),
        }
        return TermValues(values, logits, pooled)


class BaseLossObjective(Objective):
    """VL2Lite's base loss terms (PAND adds NSD; DAIT stage 1 applies them to the intermediate teacher)."""

    def __init__(self, net: nn.Module, epochs: int, terms: Sequence[LossTerm], params: dict[str, Any],
                 anchors: torch.Tensor, label_smoothing: float = 0.0) -> None:  # fmt: skip
        super().__init__(net, epochs, terms, params, label_smoothing)
        d_teacher, d_net = anchors.shape[1], int(net.num_features)
        self.register_buffer("anchors", F.normalize(anchors.float(), dim=-1))
        self.phi_image = condensation_mlp(d_teacher, d_net)
        self.phi_text = condensation_mlp(d_teacher, d_net)
        self.nsd_mode = self.params.get("nsd_mode") if any(t.name == "nsd" for t in self.terms) else None

    def compute(self, x: torch.Tensor, y: torch.Tensor, emb: torch.Tensor) -> TermValues:
        p = self.params
        _, pooled, logits = split_forward(self.net, x)
        v = emb.float()
        base = vl2lite_loss(
            pooled.float(),
            logits,
            y,
            v,
            self.anchors,
            self.phi_image(v),
            self.phi_text(self.anchors),
            0.0,
            float(p["tau"]),
            float(p["scale"]),
            p["reduction"],
            self.label_smoothing,
        )  # the weights are the stage's (alpha(e)); only the terms are used here
        values = {"cls": base.cls, "vis": base.vis, "txt": base.txt}
        if self.nsd_mode is not None:
            cos = F.normalize(v, dim=-1) @ self.anchors.T
            if self.nsd_mode == "sample_neighbors":
                group = None if p.get("nsd_group") is None else int(p["nsd_group"])
                values["nsd"] = nsd_sample_neighbors(float(p["nsd_scale"]) * cos, logits, int(p["nsd_k"]), group)
            else:
                values["nsd"] = nsd_class_margin(cos, logits, y, int(p["nsd_k"]), float(p["nsd_scale"]),
                                                 float(p["nsd_tau"]))  # fmt: skip
        return TermValues(values, logits, pooled)


class DaitStudent(Objective):
    """DAIT stage 2: CE and (spatial MSE through a 1x1 adapter | tau^2 KL on IT logits) from the frozen IT."""

    def __init__(self, net: nn.Module, epochs: int, terms: Sequence[LossTerm], params: dict, teacher: nn.Module,
                 variant: str, label_smoothing: float = 0.0) -> None:  # fmt: skip
        super().__init__(net, epochs, terms, params, label_smoothing)
        self.teacher = self.freeze(teacher)
        self.variant = variant
        if variant == "features":
            self.adapter = nn.Conv2d(int(net.num_features), int(teacher.num_features), kernel_size=1, bias=True)

    def compute(self, x: torch.Tensor, y: torch.Tensor, emb: torch.Tensor) -> TermValues:
        fmap, pooled, logits = split_forward(self.net, x)
        with torch.no_grad():
            t_map, _, t_logits = split_forward(self.teacher, x)
        if self.variant == "features":
            name, match = "sra", spatial_mse(self.adapter(fmap), t_map)
        else:
            name, match = "kd", kd_loss(logits, t_logits, float(self.params["tau"]))
        return TermValues({"cls": self.ce(logits, y), name: match}, logits, pooled)


class PromptContext(nn.Module):
    """PSC's trainable part: N_ctx shared context vectors (CoOp's generic context, N(0, std^2) init)."""

    def __init__(self, n_ctx: int, width: int, std: float = 0.02, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.context = nn.Parameter(torch.randn(n_ctx, width, generator=generator) * std)


class PromptObjective(Objective):
    """CoOp (PAND PSC): CE of teacher-scale logits between cached image embeddings and the prompted class
    embeddings; only the text tower runs. Batches are (teacher image embedding, label)."""

    def __init__(self, net: PromptContext, epochs: int, teacher: nn.Module, prompts: list[str], template: str,
                 terms: Sequence[LossTerm] = (COOP_TERM,)) -> None:  # fmt: skip
        super().__init__(net, epochs, terms)
        self.teacher = self.freeze(teacher)
        self.tokens = teacher.context_prompts(prompts, template, net.context.shape[0])

    def anchors(self) -> torch.Tensor:
        device = self.net.context.device
        tokens = {k: v.to(device) for k, v in self.tokens.items()}
        return self.teacher.encode_with_context(self.net.context, tokens)

    def compute(self, emb: torch.Tensor, y: torch.Tensor) -> TermValues:
        logits = self.teacher.logit_scale * emb.float() @ self.anchors().T
        return TermValues({"coop_ce": F.cross_entropy(logits, y)}, logits)


def check_fdbpl_params(params: dict[str, Any]) -> None:
    if params["fdbpl_variant"] == "code" and params["fdbpl_labels"] == "mr":
        raise ToolkitError(
            "distill.params.fdbpl_labels: 'mr' puts zero probability on every class outside the top-K, which makes "
            "the code variant's reverse KL(p || t) infinite; use fdbpl_labels ms, or fdbpl_variant paper"
        )


class FdbplObjective(Objective):
    """FDBPL: a vision-language student's positive and negative prompt contexts against the teacher's cached
    top-K logits (soft labels MS or MR, information weight w). Batches are (student input, label, top-K
    indices, top-K logits, log-sum-exp); only the contexts train (``net`` is a ``VLMStudent``)."""

    def __init__(self, net: nn.Module, epochs: int, terms: Sequence[LossTerm], params: dict[str, Any],
                 prompts: list[str]) -> None:  # fmt: skip
        super().__init__(net, epochs, terms, params)
        self.freeze(net.vlm)
        net.set_classes(prompts)
        self.variant, self.labels = str(params["fdbpl_variant"]), str(params["fdbpl_labels"])
        check_fdbpl_params(params)
        if self.variant == "code" and float(params.get("fdbpl_lambda_d2", 0.0)):
            warnings.warn(
                "fdbpl_variant code: the released trainer's second-order term sums D1_i - D1_j over ordered class "
                "pairs, which is identically zero; it is reported as 0 and trains nothing (fdbpl_variant paper has "
                "the paper's hinge term)",
                stacklevel=2,
            )

    def compute(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, val: torch.Tensor,
                lse: torch.Tensor) -> TermValues:  # fmt: skip
        net, p = self.net, self.params
        with torch.no_grad():
            image = net.image_features(x)
        text_pos = net.encode_classes(net.pos_context).float()
        text_neg = net.encode_classes(net.neg_context).float()
        logits_pos = net.logit_scale * image @ text_pos.T
        logits_neg = net.logit_scale * image @ text_neg.T
        t = fdbpl.soft_labels(idx, val, lse, net.num_classes, self.labels)
        if self.variant == "code":
            w = fdbpl.information_weight(t, fdbpl.CODE_ENTROPY_EPS)
            values = {"pos": fdbpl.code_positive(logits_pos, t, w), "neg": fdbpl.code_negative(logits_neg, w),
                      "diff1": fdbpl.code_logit_cosine(logits_pos, logits_neg, w),
                      "diff2": logits_pos.new_zeros(())}  # fmt: skip
        else:
            w = fdbpl.information_weight(t)
            d1 = fdbpl.first_order(text_pos, text_neg)
            top = t.argmax(-1)
            values = {"pos": fdbpl.paper_positive(logits_pos, t, w), "neg": fdbpl.paper_negative(logits_neg, w),
                      "diff1": fdbpl.paper_diff1(image, d1, top, w, float(p["fdbpl_alpha"])),
                      "diff2": fdbpl.paper_diff2(image, d1, top, w, float(p["fdbpl_delta"]))}  # fmt: skip
        return TermValues(values, logits_pos)


class WithLaViD(Objective):
    """Any student objective plus LaViD's auxiliary head: + weight * MSE(A f(x), T_y) (methods-spec 4.2).
    The head is training-only; ``targets`` are concept signatures (C, Q, M) or class-name embeddings (C, D)."""

    def __init__(self, inner: Objective, targets: torch.Tensor, weight: float) -> None:
        term = LossTerm("lavid", param("lavid_weight"), "MSE of the head's output to the class's signature")
        super().__init__(inner.net, inner.epochs, inner.terms + (term,), {**inner.params, "lavid_weight": weight},
                         inner.label_smoothing)  # fmt: skip
        self.inner = inner
        self.frozen = inner.frozen
        self.register_buffer("targets", targets.reshape(targets.shape[0], -1).float())
        self.head = nn.Linear(int(inner.net.num_features), self.targets.shape[1])

    def train(self, mode: bool = True) -> WithLaViD:
        super().train(mode)
        self.inner.train(mode)
        return self

    def compute(self, x: torch.Tensor, y: torch.Tensor, emb: torch.Tensor) -> TermValues:
        out = self.inner.compute(x, y, emb)
        assert out.features is not None
        values = {**out.values, "lavid": lavid_loss(self.head(out.features.float()), self.targets, y)}
        return TermValues(values, out.logits, out.features)
