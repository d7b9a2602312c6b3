"""`toolkit train`: recipe -> data -> student -> trainer -> run directory (config, weights, manifest)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console

from distill.data import ImageTensorDataset
from distill.distributed import DistContext, init_distributed, shutdown_distributed
from distill.engine import train, write_metrics
from distill.evaluate import classifier_validator
from distill.objectives import CrossEntropy
from distill.precision import resolve_channels_last, resolve_precision
from distill.students import create_student, is_vlm_student
from distill.transforms import TrainTransform
from distill.weights import save_state_dict
from runtime.atomic import write_json, write_text
from runtime.datasets import Dataset
from runtime.errors import ToolkitError
from runtime.split import stratified_split
from toolkit.datacheck import check_dataset, check_overlap, check_trainable
from toolkit.evaluation import evaluate_student
from toolkit.recipe import Recipe, recipe_to_yaml
from toolkit.rundir import prepare_run_dir, update_manifest

STUDENT_FORMAT = "edge-distill-student/1"


PAPER_PROTOCOL = "paper protocol: selected on test"


def selection_set(recipe: Recipe, val: Dataset | None, test: Dataset | None) -> Dataset | None:
    """The images epochs are selected on: the held-out split, or (``train.select_on: test``, the papers'
    protocol) the test set."""
    if recipe.train.select_on == "val":
        return val
    if test is None:
        raise ToolkitError("train.select_on: test selects epochs on the test set; the recipe has no data.test")
    return test


def role_of_test(recipe: Recipe) -> str:
    return PAPER_PROTOCOL if recipe.train.select_on == "test" else "not used for selection"


def check_resume_config(run_dir: Path, recipe: Recipe) -> None:
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise ToolkitError(f"{saved_path}: missing; this run cannot be resumed, start it again with --force")
    saved = yaml.safe_load(saved_path.read_text())
    now = recipe.model_dump(mode="json")
    if saved != now:
        diffs = _diff_keys(saved, now)
        raise ToolkitError(
            f"{saved_path}: --resume with a different configuration ({', '.join(diffs[:8])}); "
            "resume with the same recipe and overrides, or start a new run"
        )


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: {a!r} -> {b!r}"]


def run_train(
    recipe: Recipe, run_dir: Path, resume: bool = False, force: bool = False, console: Console | None = None
) -> dict[str, Any]:
    """Train the recipe's student with cross-entropy (the papers' "w/o KD" baseline) into ``run_dir``."""
    console = console or Console(stderr=True, soft_wrap=True, markup=False)
    ctx = init_distributed(recipe.train.device)
    try:
        return _train(recipe, run_dir, resume, force, console, ctx)
    finally:
        shutdown_distributed()


def _train(recipe: Recipe, run_dir: Path, resume: bool, force: bool, console: Console, ctx: DistContext) -> dict:
    if recipe.distill is not None:
        raise ToolkitError(
            "distill: `toolkit train` trains with cross-entropy only and does not use the distill section; run "
            "`toolkit distill` (or `toolkit run`), or remove the section"
        )
    data_cfg = recipe.data
    full = data_cfg.open_train()
    full, bad = check_dataset(full, data_cfg.on_bad_image, console, show=ctx.is_main)
    check_trainable(full, data_cfg.val_fraction)
    train_idx, val_idx = stratified_split(full.labels, data_cfg.val_fraction, recipe.seed)
    train_set, val_set = full.subset(train_idx), (full.subset(val_idx) if len(val_idx) else None)
    contract = recipe.contract(full.class_names)
    test = data_cfg.open_test(full.class_names)
    leak = check_overlap(full, test, console, show=ctx.is_main)
    val_set = selection_set(recipe, val_set, test)
    s = recipe.student
    if is_vlm_student(s.name):
        raise ToolkitError(
            f"student.name: {s.name!r} is a vision-language model; it trains with `toolkit distill` "
            "(distill.method: fdbpl), not with `toolkit train`"
        )
    torch.manual_seed(recipe.seed)  # the student's initial weights
    model = create_student(s.name, len(full.class_names), s.pretrained, s.weights, s.drop_rate)
    # Bad data or weights surface above, before anything is written: no half-made run directory.
    if ctx.is_main:
        prepare_run_dir(run_dir, resume, force)
        if resume:
            check_resume_config(run_dir, recipe)
    ctx.barrier()
    if ctx.is_main:
        write_text(run_dir / "config.yaml", recipe_to_yaml(recipe))
        write_text(run_dir / "preprocess.json", json.dumps(contract.to_dict(), indent=2) + "\n")
        data_section = {
            "train": {
                "name": full.name,
                "fingerprint": full.fingerprint(),
                "n": len(full),
                "classes": full.class_names,
            },
            "split": {
                "val_fraction": data_cfg.val_fraction,
                "seed": recipe.seed,
                "train_n": len(train_set),
                "val_n": len(val_idx),
                "train_fingerprint": train_set.fingerprint(),
                "val_fingerprint": val_set.fingerprint() if val_set is not None else None,
            },
            "bad_images": bad,
            "test_overlap": leak,
        }
        update_manifest(run_dir, data=data_section, seed=recipe.seed, world_size=ctx.world_size, status="training")

    cfg = recipe.train
    data = ImageTensorDataset(train_set, augment=TrainTransform(contract, cfg.augment), seed=recipe.seed)
    validate = None
    if val_set is not None and len(val_set):
        precision = resolve_precision(cfg.precision, ctx.device)
        channels_last = resolve_channels_last(cfg.channels_last, precision, ctx.device)
        validate = classifier_validator(val_set, contract, cfg.eval_batch_size, ctx.device, precision, channels_last)
    objective = CrossEntropy(model, cfg.epochs, label_smoothing=cfg.label_smoothing)

    def on_epoch(history: list[dict[str, Any]]) -> None:
        write_metrics(run_dir / "metrics.jsonl", history)

    result = train(objective, data, cfg, run_dir / "checkpoints", recipe.seed, ctx, validate=validate, resume=resume,
                   console=console, on_epoch=on_epoch)  # fmt: skip
    if not ctx.is_main:
        return {}

    meta = {
        "format": STUDENT_FORMAT,
        "student": s.name,
        "num_classes": str(len(full.class_names)),
        "epoch": str(result.selected_epoch),
        "preprocess": contract.to_json(),
    }
    save_state_dict(run_dir / "student.safetensors", result.weights, meta)
    metrics: dict[str, Any] = {
        "selected_epoch": result.selected_epoch,
        "selection": recipe.train.select,
        "best_val_top1": result.best_val_top1,
        "last": result.history[-1] if result.history else None,
        "precision": result.precision,
        "channels_last": result.channels_last,
        "train_time_s": round(sum(r["time_s"] for r in result.history), 1),
    }
    if test is not None:
        model.load_state_dict(result.weights)
        report = evaluate_student(model, test, contract, run_dir, recipe.train.eval_batch_size, ctx.device)
        metrics["test_top1"] = report["top1"]
        metrics["test_name"] = test.name
        console.print(f"test top-1 on {test.name} ({report['n']} images, {role_of_test(recipe)}): {report['top1']:.4f}")
    metrics["selected_on"] = recipe.train.select_on
    write_json(run_dir / "metrics.json", metrics)
    update_manifest(run_dir, status="trained", results=metrics)
    return metrics
