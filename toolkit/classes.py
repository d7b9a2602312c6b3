"""`toolkit classes RUN --add NAMES --out NEW`: a prompt-learned vision-language student (FDBPL) takes new class
names without retraining. Its learned positive prompt embeds each name with the student's own text tower, and
the classifier gains one row of its class-embedding matrix per name, in a new run directory that export, eval,
bench and report take like any other (the shipped graph stays image -> logits)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console

from distill.teachers.base import prompt_name
from distill.vlm_student import VLMStudent
from distill.weights import save_state_dict
from runtime.atomic import write_json, write_text
from runtime.errors import ToolkitError
from toolkit.evaluation import evaluate_student, load_run_student
from toolkit.recipe import Recipe, recipe_to_yaml
from toolkit.rundir import prepare_run_dir, read_manifest, update_manifest
from toolkit.training import STUDENT_FORMAT


def run_add_classes(run_dir: Path, names: list[str], out_dir: Path, force: bool, console: Console) -> dict[str, Any]:
    """Append ``names`` to the classes of ``run_dir``'s vision-language student, into ``out_dir``."""
    names = [n.strip() for n in names]
    if not names or any(not n for n in names):
        raise ToolkitError(f"--add {','.join(names)!r}: give one or more non-empty class names, comma-separated")
    if out_dir.resolve() == run_dir.resolve():
        raise ToolkitError(f"--out {out_dir}: the run with added classes needs its own directory")
    model, contract, raw = load_run_student(run_dir)
    if not isinstance(model, VLMStudent):
        raise ToolkitError(
            f"{run_dir}: its student {raw['student']['name']!r} is a classifier with a fixed head; only a "
            "vision-language student (distill.method fdbpl) embeds new class names"
        )
    old = list(contract.class_names)
    repeated = sorted({n for n in names if n in old or names.count(n) > 1})
    if repeated:
        raise ToolkitError(f"--add: {repeated} already among the run's classes or given twice; the classes are {old}")
    recipe = Recipe.model_validate(raw)
    prompts = [prompt_name(n) for n in names] if recipe.distill and recipe.distill.prompt_names else names
    with torch.no_grad():
        added = F.normalize(model.encode_classes(model.pos_context, prompts).float(), dim=-1)
    state = model.state_dict()
    state["class_embeddings"] = torch.cat([model.class_embeddings, added])
    contract = dataclasses.replace(contract, class_names=tuple(old + names))
    prepare_run_dir(out_dir, resume=False, force=force)
    write_text(out_dir / "config.yaml", recipe_to_yaml(recipe))
    write_text(out_dir / "preprocess.json", contract.to_json() + "\n")
    meta = {"format": STUDENT_FORMAT, "student": recipe.student.name, "num_classes": str(len(contract.class_names)),
            "preprocess": contract.to_json(), "method": read_manifest(run_dir).get("method", {}).get("name", ""),
            "classes_added": ",".join(names)}  # fmt: skip
    save_state_dict(out_dir / "student.safetensors", state, meta)
    info: dict[str, Any] = {"source_run": str(run_dir), "added": names, "classes": list(contract.class_names)}
    metrics: dict[str, Any] = {"classes": info}
    test = recipe.data.open_test(list(contract.class_names))
    if test is not None:
        model.class_embeddings = state["class_embeddings"]
        model.prompts = None  # the embeddings are final: eval() must not re-embed the training classes
        report = evaluate_student(model, test, contract, out_dir, recipe.train.eval_batch_size)
        metrics.update(test_top1=report["top1"], test_name=test.name)
        console.print(f"test top-1 on {test.name} among {len(contract.class_names)} classes: {report['top1']:.4f}")
    write_json(out_dir / "metrics.json", metrics)
    update_manifest(out_dir, status="trained", classes=info, results=metrics,
                    method=read_manifest(run_dir).get("method"))  # fmt: skip
    return metrics
