"""VL2Lite (CVPR 2025): the base loss against the template's class anchors."""

from __future__ import annotations

from distill.methods.common import ALIGN, BASE_PARAMS, BASE_TERMS, STUDENT, TEACHER, base_loss
from distill.methods.registry import register_method
from distill.methods.spec import Method, Stage

register_method(
    Method(
        "vl2lite",
        "VL2Lite base loss: cls + L1 visual alignment + text KL, dynamic weight alpha(e)",
        "VL2Lite (CVPR 2025)",
        (
            Stage(
                "student",
                "student",
                "base loss against template anchors",
                STUDENT + ALIGN,
                TEACHER,
                BASE_TERMS,
                base_loss,
            ),
        ),  # fmt: skip
        {**BASE_PARAMS, "reduction": "vl2lite"},
    )
)
