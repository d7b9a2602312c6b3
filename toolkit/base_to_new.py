"""The base-to-new protocol's numbers (CoOp / FDBPL): a vision-language student trained on the base half of the
classes, scored on the base test images among the base classes and on the new ones among the new classes."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from distill.evaluate import predict_logits
from distill.teachers.base import prompt_name
from distill.vlm_student import VLMStudent
from runtime.datasets import Dataset
from runtime.preprocess import PreprocessContract
from toolkit.recipe import Recipe


def base_to_new(student: VLMStudent, base: Dataset, new: Dataset, initial: torch.Tensor | None,
                contract: PreprocessContract, recipe: Recipe, console: Console) -> dict[str, Any]:  # fmt: skip
    """Top-1 on the base classes (among base) and on the held-back new classes (among new, embedded with the
    learned prompt), their harmonic mean, and the same with the initial hand-written prompt for reference.
    The image tower runs once per test image; each prompt only re-embeds the class names."""

    class Features(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.student = student

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.student.image_features(x)

    def prompts_of(dataset: Dataset) -> list[str]:
        names = list(dataset.class_names)
        return [prompt_name(n) for n in names] if recipe.distill and recipe.distill.prompt_names else names

    def hm(a: float, b: float) -> float:
        return 2 * a * b / (a + b) if a + b else 0.0

    batch, cpu = recipe.train.eval_batch_size, torch.device("cpu")
    features = {part: torch.from_numpy(predict_logits(Features(), d, contract, batch, cpu))
                for part, d in (("base", base), ("new", new))}  # fmt: skip
    out: dict[str, Any] = {"new_classes": list(new.class_names), "base_n": len(base), "new_n": len(new)}
    for label, context in (("learned", student.pos_context), ("initial", initial)):
        if context is None:
            continue
        top1 = {}
        for part, dataset in (("base", base), ("new", new)):
            with torch.no_grad():
                emb = F.normalize(student.encode_classes(context.detach(), prompts_of(dataset)).float(), dim=-1)
            pred = (features[part] @ emb.T).argmax(1).numpy()
            top1[part] = float((pred == dataset.labels).mean())
        b, n = top1["base"], top1["new"]
        out[label] = {"base_top1": b, "new_top1": n, "hm": hm(b, n)}
        console.print(f"base-to-new ({label} prompt): base {b:.4f}, new {n:.4f}, harmonic mean {hm(b, n):.4f} "
                      f"({len(base)} / {len(new)} test images)")  # fmt: skip
    return out
