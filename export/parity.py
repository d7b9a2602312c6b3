"""Self-verification of an export: PyTorch vs ONNX Runtime logits on real images."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from torch import nn

from distill.evaluate import predict_logits
from runtime.classifier import Classifier
from runtime.datasets import Dataset


@dataclass(frozen=True)
class Parity:
    n: int
    max_abs_diff: float
    logit_scale: float
    top1_agreement: float
    tolerance: float
    min_agreement: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance * max(1.0, self.logit_scale) and (
            self.top1_agreement >= self.min_agreement
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def describe(self) -> str:
        return (
            f"max |logit diff| {self.max_abs_diff:.2e} "
            f"(limit {self.tolerance:.0e} x max(1, |logit| {self.logit_scale:.1f})), "
            f"top-1 agreement {self.top1_agreement:.4f} (limit {self.min_agreement}) on {self.n} images"
        )


def compare_logits(reference: np.ndarray, candidate: np.ndarray, tolerance: float, min_agreement: float) -> Parity:
    return Parity(
        n=len(reference),
        max_abs_diff=float(np.abs(reference - candidate).max()) if len(reference) else 0.0,
        logit_scale=float(np.abs(reference).max()) if len(reference) else 0.0,
        top1_agreement=float((reference.argmax(1) == candidate.argmax(1)).mean()) if len(reference) else 1.0,
        tolerance=tolerance,
        min_agreement=min_agreement,
    )


def check_parity(
    model: nn.Module,
    onnx_model: Classifier,
    images: Dataset,
    tolerance: float = 1e-3,
    min_agreement: float = 0.99,
) -> Parity:
    """Torch (eval mode, fp32) and an exported model (ONNX Runtime, ExecuTorch) on the same images through the
    same contract."""
    reference = predict_logits(model, images, onnx_model.contract, batch_size=64)
    return compare_logits(reference, onnx_model.predict(images), tolerance, min_agreement)
