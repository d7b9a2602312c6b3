"""Classification metrics from predictions, in numpy: top-1, per-class accuracy, confusion matrix."""

from __future__ import annotations

from typing import Any

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, stable for large logits."""
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    idx = np.asarray(labels, np.int64) * num_classes + np.asarray(preds, np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_report(labels: np.ndarray, preds: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Top-1, per-class accuracy (None for classes absent from ``labels``) and the confusion matrix."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    if labels.shape != preds.shape:
        raise ValueError(f"labels {labels.shape} and preds {preds.shape} differ in shape")
    cm = confusion_matrix(labels, preds, len(class_names))
    support = cm.sum(axis=1)
    per_class = {name: (float(cm[i, i] / support[i]) if support[i] else None) for i, name in enumerate(class_names)}
    return {
        "n": len(labels),
        "top1": float((labels == preds).mean()) if len(labels) else float("nan"),
        "per_class": per_class,
        "support": {name: int(s) for name, s in zip(class_names, support)},
        "confusion": cm.tolist(),
        "class_names": list(class_names),
    }
