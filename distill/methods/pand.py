"""PAND: CoOp prompt calibration (PSC), then the base loss against the calibrated anchors + NSD."""

from __future__ import annotations

from distill.losses.vl2lite import LOGIT_SCALE
from distill.methods.common import ALIGN, BASE_PARAMS, BASE_TERMS, PSC_PARAMS, PSC_STAGE, STUDENT, TEACHER, base_loss
from distill.methods.registry import register_method
from distill.methods.spec import LossTerm, Method, Stage, param

register_method(
    Method(
        "pand",
        "PAND: CoOp prompt calibration (PSC), then the base loss + neighbourhood distillation (NSD)",
        "PAND (2026)",
        (
            PSC_STAGE,
            Stage(
                "student", "student", "base loss against calibrated anchors + NSD", STUDENT + ALIGN,
                TEACHER + ("calibrated anchors F_txt",),
                BASE_TERMS + (LossTerm("nsd", param("nsd_lambda"),
                                       "JS of neighbour logit differences (or class margins), per rank's batch"),),
                base_loss, requires=("psc",),
            ),
        ),
        {**BASE_PARAMS, "reduction": "pand", "nsd_mode": "sample_neighbors", "nsd_lambda": 1.0, "nsd_k": 3,
         "nsd_scale": round(LOGIT_SCALE, 6), "nsd_tau": 2.0, "nsd_group": None, **PSC_PARAMS},
    )
)  # fmt: skip
