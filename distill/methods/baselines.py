"""The papers' baselines: w/o KD (cross-entropy), Hinton KD and relational KD."""

from __future__ import annotations

from distill.methods.common import CE, STUDENT, TEACHER
from distill.methods.registry import register_method
from distill.methods.spec import LossTerm, Method, Stage, StageInputs, one_minus_param, param
from distill.objectives import CrossEntropy, HintonKD, Objective, RelationalKD


def _ce(i: StageInputs) -> Objective:
    return CrossEntropy(i.net, i.epochs, i.terms, i.params, i.label_smoothing)


def _kd(i: StageInputs) -> Objective:
    assert i.teacher is not None
    return HintonKD(i.net, i.epochs, i.terms, i.params, i.teacher.logit_head(i.anchors), i.label_smoothing)


def _rkd(i: StageInputs) -> Objective:
    return RelationalKD(i.net, i.epochs, i.terms, i.params, i.label_smoothing)


register_method(
    Method(
        "ce",
        "w/o KD: cross-entropy only (the papers' baseline)",
        "-",
        (Stage("student", "student", "train the student on labels", STUDENT, (), (CE,), _ce),),
        needs_teacher=False,
        teacher_kinds=("vlm", "classifier"),  # a teacher given only builds the cache the other methods replay
    )
)
register_method(
    Method(
        "kd",
        "Hinton KD from the teacher's logits (a VLM's zero-shot logits, or a checkpoint classifier's)",
        "Hinton et al. 2015",
        (
            Stage(
                "student", "student", "match softened teacher logits", STUDENT, TEACHER,
                (LossTerm("cls", one_minus_param("alpha"), "cross-entropy"),
                 LossTerm("kd", param("alpha"), "T^2 KL(softmax(z_T / T) || softmax(z_S / T))")),
                _kd,
            ),
        ),
        {"temperature": 4.0, "alpha": 0.5},
        teacher_kinds=("vlm", "classifier"),
    )
)  # fmt: skip
register_method(
    Method(
        "rkd",
        "Relational KD: distance and angle structure of pooled features vs teacher embeddings",
        "Park et al. 2019",
        (
            Stage(
                "student", "student", "match the batch's distance/angle structure", STUDENT, TEACHER,
                (CE, LossTerm("rkd_distance", param("distance_weight"), "Huber on normalised pairwise distances"),
                 LossTerm("rkd_angle", param("angle_weight"), "Huber on triplet angle cosines")),
                _rkd,
            ),
        ),
        {"distance_weight": 25.0, "angle_weight": 50.0},
        teacher_kinds=("vlm", "classifier"),
    )
)  # fmt: skip
