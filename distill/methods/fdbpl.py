"""FDBPL: a prompt-learned vision-language student (positive and negative prompt contexts, frozen towers)
distilled from the teacher's cached top-K logits (methods-spec section 5).

Parameters the paper does not report are named and defaulted from the released trainer (coop_off.py):
lambda_neg 1 (its weight of the negative term), lambda_d1 0.001 (its logit-cosine stand-in for the first-order
term), lambda_d2 0.1 (its second-order weight). alpha and delta have no counterpart in the code: alpha 1 and
delta 0 (no margin) are this toolkit's choice. K = 20 is the paper's trade-off (Fig. 9).
"""

from __future__ import annotations

from distill.methods.registry import register_method
from distill.methods.spec import LossTerm, Method, Stage, StageInputs, const, param
from distill.objectives import FdbplObjective, Objective, check_fdbpl_params


def fdbpl_objective(i: StageInputs) -> Objective:
    return FdbplObjective(i.net, i.epochs, i.terms, i.params, i.prompts)


TERMS = (
    LossTerm("pos", const(1.0), "code: w (KL(t||p) + KL(p||t)) / 2; paper: w KL(t||p), t = MS/MR top-K soft label"),
    LossTerm("neg", param("fdbpl_lambda_neg"), "code: (1 - w)(-H(p_neg)); paper: (1 - w) KL(uniform || p_neg)"),
    LossTerm("diff1", param("fdbpl_lambda_d1"),
             "code: w cos(z_pos, z_neg) of the logits; paper: first-order prompt difference (alpha)"),
    LossTerm("diff2", param("fdbpl_lambda_d2"),
             "code: identically zero (not computed); paper: second-order hinge between teacher classes (delta)"),
)  # fmt: skip

register_method(
    Method(
        "fdbpl",
        "FDBPL: positive/negative prompt learning of a vision-language student from cached teacher top-K logits",
        "FDBPL (2025)",
        (
            Stage(
                "student", "student", "learn the two prompt contexts against the cached top-K soft labels",
                ("positive prompt context", "negative prompt context"),
                ("student image and text towers", "teacher (cached top-K logits + log-sum-exp per crop)"),
                TERMS, fdbpl_objective,
            ),
        ),
        {"fdbpl_variant": "code", "fdbpl_labels": "ms", "fdbpl_topk": 20, "fdbpl_lambda_neg": 1.0,
         "fdbpl_lambda_d1": 0.001, "fdbpl_lambda_d2": 0.1, "fdbpl_alpha": 1.0, "fdbpl_delta": 0.0},
        student_kind="vlm",
        teacher_outputs="topk",
        check=check_fdbpl_params,
    )
)  # fmt: skip
