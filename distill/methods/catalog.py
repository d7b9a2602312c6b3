"""The built-in methods (methods-spec sections 1-3): the papers' baselines, VL2Lite, PAND and DAIT."""

from __future__ import annotations

from distill.losses.vl2lite import LOGIT_SCALE
from distill.methods.registry import register_method
from distill.methods.spec import LossTerm, Method, Stage

STUDENT = ("student", "student classifier")
CE = LossTerm("cls", "1", "cross-entropy with the label")
ALIGN = ("phi_I (image condensation MLP)", "phi_T (text condensation MLP)")
BASE_TERMS = (
    LossTerm("cls", "alpha(e)", "cross-entropy of the classifier on the unnormalised pooled feature"),
    LossTerm("vis", "(1 - alpha(e)) / 2", "L1 between n(u) and n(phi_I(v))"),
    LossTerm("txt", "(1 - alpha(e)) / 2", "tau^2 KL of teacher vs student cosine logits against the class anchors"),
)
BASE_PARAMS = {"tau": 2.0, "scale": round(LOGIT_SCALE, 6), "slope": None, "offset": 0.0}
TEACHER = ("VLM teacher (cached image embeddings)",)

register_method(
    Method(
        "ce",
        "w/o KD: cross-entropy only (the papers' baseline)",
        "-",
        (Stage("student", "student", "train the student on labels", STUDENT, (), (CE,)),),
        needs_teacher=False,
    )
)
register_method(
    Method(
        "kd",
        "Hinton KD from the teacher's zero-shot logits (template or calibrated anchors)",
        "Hinton et al. 2015",
        (
            Stage(
                "student", "student", "match softened teacher logits", STUDENT, TEACHER,
                (LossTerm("cls", "1 - alpha", "cross-entropy"),
                 LossTerm("kd", "alpha", "T^2 KL(softmax(z_T / T) || softmax(z_S / T))")),
            ),
        ),
        {"temperature": 4.0, "alpha": 0.5},
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
                (CE, LossTerm("rkd_distance", "distance_weight", "Huber on normalised pairwise distances"),
                 LossTerm("rkd_angle", "angle_weight", "Huber on triplet angle cosines")),
            ),
        ),
        {"distance_weight": 25.0, "angle_weight": 50.0},
    )
)  # fmt: skip
register_method(
    Method(
        "vl2lite",
        "VL2Lite base loss: cls + L1 visual alignment + text KL, dynamic weight alpha(e)",
        "VL2Lite (CVPR 2025)",
        (Stage("student", "student", "base loss against template anchors", STUDENT + ALIGN, TEACHER, BASE_TERMS),),
        {**BASE_PARAMS, "reduction": "vl2lite"},
    )
)
register_method(
    Method(
        "pand",
        "PAND: CoOp prompt calibration (PSC), then the base loss + neighbourhood distillation (NSD)",
        "PAND (2026)",
        (
            Stage(
                "psc", "psc", "CoOp: learn a shared prompt context on cached teacher crops",
                ("prompt context (n_ctx x text width)",), ("VLM image and text towers",),
                (LossTerm("coop_ce", "1", "CE of teacher-scale logits vs the prompted class embeddings"),),
                produces="anchors",
            ),
            Stage(
                "student", "student", "base loss against calibrated anchors + NSD", STUDENT + ALIGN,
                TEACHER + ("calibrated anchors F_txt",),
                BASE_TERMS + (LossTerm("nsd", "nsd_lambda", "JS of neighbour logit differences (or class margins)"),),
                requires=("psc",),
            ),
        ),
        {**BASE_PARAMS, "reduction": "pand", "nsd_mode": "sample_neighbors", "nsd_lambda": 1.0, "nsd_k": 3,
         "nsd_scale": round(LOGIT_SCALE, 6), "nsd_tau": 2.0, "coop_n_ctx": 16, "coop_epochs": 50,
         "coop_lr": 0.002, "coop_batch_size": 32},
    )
)  # fmt: skip

_DAIT_PARAMS = {**BASE_PARAMS, "it_model": "efficientnet_lite0", "it_pretrained": True, "it_epochs": None}
_DAIT_STAGE1 = Stage(
    "intermediate", "intermediate", "VLM -> trainable intermediate teacher (SIA + IRA + cls)",
    ("intermediate teacher", "its classifier") + ALIGN, TEACHER,
    (LossTerm("cls", "alpha(e)", "cross-entropy of the IT classifier"),
     LossTerm("vis", "(1 - alpha(e)) / 2", "L_IRA: L1 between n(z) and n(phi_I(v))"),
     LossTerm("txt", "(1 - alpha(e)) / 2", "L_SIA: tau^2 KL, batch mean")),
    produces="intermediate_teacher",
)  # fmt: skip
register_method(
    Method(
        "dait_f",
        "DAIT-F: VLM -> intermediate teacher, then IT feature maps -> student through a 1x1 conv adapter",
        "DAIT (2025)",
        (
            _DAIT_STAGE1,
            Stage(
                "student", "student", "spatial feature distillation from the frozen IT",
                STUDENT + ("1x1 conv adapter",), ("intermediate teacher (eval mode)",),
                (LossTerm("cls", "alpha(e)", "cross-entropy"),
                 LossTerm("sra", "1 - alpha(e)", "MSE between Conv1x1(F_S) and F_IT")),
                requires=("intermediate",),
            ),
        ),
        _DAIT_PARAMS,
    )
)  # fmt: skip
register_method(
    Method(
        "dait_l",
        "DAIT-L: VLM -> intermediate teacher, then IT logits -> student (tau^2 KL)",
        "DAIT (2025)",
        (
            _DAIT_STAGE1,
            Stage(
                "student", "student", "logit distillation from the frozen IT", STUDENT,
                ("intermediate teacher (eval mode)",),
                (LossTerm("cls", "alpha(e)", "cross-entropy"),
                 LossTerm("kd", "1 - alpha(e)", "tau^2 KL(softmax(z_IT / tau) || softmax(z_S / tau))")),
                requires=("intermediate",),
            ),
        ),
        _DAIT_PARAMS,
    )
)  # fmt: skip
register_method(
    Method(
        "lavid",
        "LaViD: CE + an auxiliary head regressing language-model concept signatures (distill.lavid)",
        "LaViD (ICML 2026)",
        (
            Stage(
                "student", "student", "labels + the class's concept signature", STUDENT + ("LaViD head (d -> Q*M)",),
                ("signature table (from the LLM, offline)",),
                (CE, LossTerm("lavid", "distill.lavid.weight", "MSE between A f(x) and vec(T_y)")),
            ),
        ),
        needs_teacher=False,
    )
)  # fmt: skip
