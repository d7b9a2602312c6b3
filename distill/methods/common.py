"""Loss terms, parameters and stages shared by several methods (VL2Lite's base loss, PSC, DAIT stage 1)."""

from __future__ import annotations

from distill.losses.vl2lite import LOGIT_SCALE
from distill.methods.spec import ALPHA, HALF_ONE_MINUS_ALPHA, LossTerm, Stage, StageInputs, const
from distill.objectives import COOP_TERM, BaseLossObjective, Objective, PromptObjective

STUDENT = ("student", "student classifier")
CE = LossTerm("cls", const(1.0), "cross-entropy with the label")
ALIGN = ("phi_I (image condensation MLP)", "phi_T (text condensation MLP)")
BASE_TERMS = (
    LossTerm("cls", ALPHA, "cross-entropy of the classifier on the unnormalised pooled feature"),
    LossTerm("vis", HALF_ONE_MINUS_ALPHA, "L1 between n(u) and n(phi_I(v))"),
    LossTerm("txt", HALF_ONE_MINUS_ALPHA, "tau^2 KL of teacher vs student cosine logits against the class anchors"),
)
BASE_PARAMS = {"tau": 2.0, "scale": round(LOGIT_SCALE, 6), "slope": None, "offset": 0.0}
TEACHER = ("VLM teacher (cached image embeddings)",)


def base_loss(i: StageInputs) -> Objective:
    """VL2Lite's base loss (+ NSD where the stage declares it) on ``i.net`` against the stage's anchors."""
    assert i.anchors is not None, "the base loss needs class anchors"
    return BaseLossObjective(i.net, i.epochs, i.terms, i.params, i.anchors, i.label_smoothing)


def base_loss_pand_reduction(i: StageInputs) -> Objective:
    """DAIT stage 1: the base loss with the batch-mean text KL (DAIT's L_SIA)."""
    assert i.anchors is not None, "the base loss needs class anchors"
    return BaseLossObjective(i.net, i.epochs, i.terms, {**i.params, "reduction": "pand"}, i.anchors,
                             i.label_smoothing)  # fmt: skip


def prompt_learning(i: StageInputs) -> Objective:
    assert i.teacher is not None, "PSC needs the teacher's text tower"
    return PromptObjective(i.net, i.epochs, i.teacher, i.prompts, i.template, i.terms)  # type: ignore[arg-type]


PSC_STAGE = Stage(
    "psc", "psc", "CoOp: learn a shared prompt context on cached teacher crops",
    ("prompt context (n_ctx x text width)",), ("VLM image and text towers",),
    (COOP_TERM,),
    prompt_learning, produces="anchors",
)  # fmt: skip
# coop_features: "crops" trains on the teacher cache's augmented crops (one per image per epoch, the crops the
# student stage replays); "eval" on one eval-preprocessed feature per image, as PAND's released code does
PSC_PARAMS = {"coop_n_ctx": 16, "coop_epochs": 50, "coop_lr": 0.002, "coop_batch_size": 32, "coop_features": "crops"}
