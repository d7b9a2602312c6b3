"""DAIT (2025): VLM -> trainable intermediate teacher (stage 1) -> student from its features (F) or logits (L)."""

from __future__ import annotations

from distill.methods.common import ALIGN, BASE_PARAMS, STUDENT, TEACHER, base_loss_pand_reduction
from distill.methods.registry import register_method
from distill.methods.spec import (
    ALPHA,
    HALF_ONE_MINUS_ALPHA,
    ONE_MINUS_ALPHA,
    LossTerm,
    Method,
    Stage,
    StageInputs,
)
from distill.objectives import DaitStudent, Objective

_PARAMS = {**BASE_PARAMS, "it_model": "efficientnet_lite0", "it_pretrained": True, "it_epochs": None}
_STAGE1 = Stage(
    "intermediate", "intermediate", "VLM -> trainable intermediate teacher (SIA + IRA + cls)",
    ("intermediate teacher", "its classifier") + ALIGN, TEACHER,
    (LossTerm("cls", ALPHA, "cross-entropy of the IT classifier"),
     LossTerm("vis", HALF_ONE_MINUS_ALPHA, "L_IRA: L1 between n(z) and n(phi_I(v))"),
     LossTerm("txt", HALF_ONE_MINUS_ALPHA, "L_SIA: tau^2 KL, batch mean")),
    base_loss_pand_reduction, produces="intermediate_teacher",
)  # fmt: skip


def _student(variant: str):
    def build(i: StageInputs) -> Objective:
        assert i.intermediate is not None, "DAIT's student stage needs the intermediate teacher"
        return DaitStudent(i.net, i.epochs, i.terms, i.params, i.intermediate, variant, i.label_smoothing)

    return build


register_method(
    Method(
        "dait_f",
        "DAIT-F: VLM -> intermediate teacher, then IT feature maps -> student through a 1x1 conv adapter",
        "DAIT (2025)",
        (
            _STAGE1,
            Stage(
                "student", "student", "spatial feature distillation from the frozen IT",
                STUDENT + ("1x1 conv adapter",), ("intermediate teacher (eval mode)",),
                (LossTerm("cls", ALPHA, "cross-entropy"),
                 LossTerm("sra", ONE_MINUS_ALPHA, "MSE between Conv1x1(F_S) and F_IT")),
                _student("features"), requires=("intermediate",),
            ),
        ),
        _PARAMS,
    )
)  # fmt: skip
register_method(
    Method(
        "dait_l",
        "DAIT-L: VLM -> intermediate teacher, then IT logits -> student (tau^2 KL)",
        "DAIT (2025)",
        (
            _STAGE1,
            Stage(
                "student", "student", "logit distillation from the frozen IT", STUDENT,
                ("intermediate teacher (eval mode)",),
                (LossTerm("cls", ALPHA, "cross-entropy"),
                 LossTerm("kd", ONE_MINUS_ALPHA, "tau^2 KL(softmax(z_IT / tau) || softmax(z_S / tau))")),
                _student("logits"), requires=("intermediate",),
            ),
        ),
        _PARAMS,
    )
)  # fmt: skip
