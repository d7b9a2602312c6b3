"""LaViD (ICML 2026): CE plus an auxiliary head regressing the class's language-model concept signature.
The head itself (``WithLaViD``) is added by the stage runner from ``distill.lavid``, here or on any method."""

from __future__ import annotations

from distill.methods.common import CE, STUDENT
from distill.methods.registry import register_method
from distill.methods.spec import LossTerm, Method, Stage, StageInputs, param
from distill.objectives import CrossEntropy, Objective


def _ce_only(i: StageInputs) -> Objective:
    return CrossEntropy(i.net, i.epochs, (CE,), i.params, i.label_smoothing)


register_method(
    Method(
        "lavid",
        "LaViD: CE + an auxiliary head regressing language-model concept signatures (distill.lavid)",
        "LaViD (ICML 2026)",
        (
            Stage(
                "student", "student", "labels + the class's concept signature", STUDENT + ("LaViD head (d -> Q*M)",),
                ("signature table (from the LLM, offline)",),
                (CE, LossTerm("lavid", param("lavid_weight"),
                               "MSE between A f(x) and vec(T_y); beta = distill.lavid.weight")),
                _ce_only,
            ),
        ),
        needs_teacher=False,
    )
)  # fmt: skip
