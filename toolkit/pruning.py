"""`toolkit prune RUN`: remove channels toward a MACs/parameter budget, then recover accuracy by distilling from
the unpruned student (its logits cached once per image and per horizontal flip), into a new run directory that
`toolkit export`, `eval`, `bench` and `report` take like any other.

Recovery (distill/recovery.py) sees each training image through the run's eval preprocessing, flipped or not,
against the unpruned model's logits for both views computed once before training.
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from distill.data import ImageTensorDataset
from distill.distributed import init_distributed, shutdown_distributed
from distill.engine import train, write_metrics
from distill.evaluate import classifier_validator, predict_logits
from distill.loss_terms import LossTerm, const
from distill.objectives import CE_TERM, CrossEntropy, Objective
from distill.pruning import ARCHITECTURE, architecture, prune_channels, recalibrate_batchnorm
from distill.recovery import CachedLogitsKD, FlipViews, teacher_views
from distill.transforms import eval_transform
from distill.vlm_student import VLMStudent
from distill.weights import save_state_dict
from runtime.artifacts import UNPRUNED
from runtime.atomic import write_json, write_text
from runtime.errors import ToolkitError
from toolkit.evaluation import evaluate_student, load_run_student, write_eval
from toolkit.recipe import Recipe, recipe_to_yaml
from toolkit.rundir import prepare_run_dir, update_manifest
from toolkit.splits import recipe_splits
from toolkit.training import STUDENT_FORMAT

RECOVERY = ("kd", "ce", "none")


def run_prune(
    run_dir: Path, out_dir: Path, *, macs: float | None = None, params: float | None = None, round_to: int = 8,
    max_layer_ratio: float = 0.75, global_pruning: bool = False, keep: tuple[str, ...] = (), recover: str = "kd",
    epochs: int = 5, lr: float | None = None, temperature: float = 4.0, alpha: float = 0.9, bn_images: int = 1024,
    force: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Prune the run's student, recover it, write a run directory at ``out_dir``; returns its metrics."""
    console = console or Console(stderr=True, soft_wrap=True, markup=False)
    if recover not in RECOVERY:
        raise ToolkitError(f"--recover {recover!r} is not one of {RECOVERY}")
    if bn_images < 0:
        raise ToolkitError(f"--bn-images {bn_images}: must be >= 0 (0 skips the BatchNorm re-estimation)")
    if not 0.0 <= alpha <= 1.0 or temperature <= 0:
        raise ToolkitError(f"--alpha {alpha} must be in [0, 1] and --temperature {temperature} > 0")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ToolkitError("toolkit prune runs in one process (its recovery is short); run it without torchrun")
    if out_dir.resolve() == run_dir.resolve():
        raise ToolkitError(f"--out {out_dir}: the pruned run needs its own directory, not the run it prunes")
    model, contract, raw = load_run_student(run_dir)
    if isinstance(model, VLMStudent):
        raise ToolkitError(f"{run_dir}: a vision-language student ({model.spec}) is not pruned; prune classifiers")
    recipe = Recipe.model_validate(raw)
    splits = recipe_splits(recipe, console)
    if splits.val is None:
        raise ToolkitError(f"{run_dir}: no validation split (data.val_fraction 0): nothing to select recovery on")
    unpruned = copy.deepcopy(model).eval()
    pruned = model
    t0 = time.perf_counter()
    result = prune_channels(pruned, contract.input_size, macs=macs, params=params, round_to=round_to,
                            max_layer_ratio=max_layer_ratio, global_pruning=global_pruning, keep=keep)  # fmt: skip
    prune_s = time.perf_counter() - t0
    cfg = recipe.train.model_copy(update={"epochs": epochs})
    if lr is not None:
        cfg = cfg.model_copy(update={"optimizer": cfg.optimizer.model_copy(update={"lr": lr})})
    ctx = init_distributed(cfg.device)
    try:
        validate = classifier_validator(splits.val, contract, cfg.eval_batch_size, ctx.device)
        val_raw = float(validate(pruned)["val_top1"])
        transform = eval_transform(contract)
        if bn_images:
            subset = splits.train.subset(range(min(bn_images, len(splits.train))))
            loader = torch.utils.data.DataLoader(ImageTensorDataset(subset, transform=transform), batch_size=64)
            recalibrate_batchnorm(pruned, (x for x, _ in loader))
        val_before = float(validate(pruned)["val_top1"])
        prepare_run_dir(out_dir, resume=False, force=force)
        shutil.copy(run_dir / "preprocess.json", out_dir / "preprocess.json")
        write_text(out_dir / "config.yaml", recipe_to_yaml(recipe))
        write_json(out_dir / ARCHITECTURE, architecture(pruned))
        info = {"source_run": str(run_dir), **result.to_dict(), "round_to": round_to,
                "max_layer_ratio": max_layer_ratio, "global": global_pruning, "keep": list(keep), "recover": recover,
                "epochs": epochs, "val_top1_pruned_stale_bn": val_raw, "bn_images": bn_images,
                "val_top1_pruned": val_before, "prune_s": round(prune_s, 1)}  # fmt: skip
        console.print(
            f"pruned: MACs {result.macs_before / 1e6:.1f}M -> {result.macs_after / 1e6:.1f}M "
            f"({result.macs_after / result.macs_before:.2f}), params {result.params_before / 1e6:.2f}M -> "
            f"{result.params_after / 1e6:.2f}M; val top-1 right after pruning {val_raw:.4f}"
            + (f", {val_before:.4f} with BatchNorm statistics re-estimated on {bn_images} images" if bn_images else "")
        )
        history: list[dict[str, Any]] = []
        weights = pruned.state_dict()
        if recover != "none":
            t1 = time.perf_counter()
            if recover == "kd":
                logits = teacher_views(unpruned, splits.train, transform, cfg.eval_batch_size)
                info["teacher_logits_s"] = round(time.perf_counter() - t1, 1)
                terms = (LossTerm("cls", const(1 - alpha), "CE with the label"),
                         LossTerm("kd", const(alpha), "T^2 KL to the unpruned student (cached logits)"))  # fmt: skip
                objective: Objective = CachedLogitsKD(pruned, epochs, terms, {"temperature": temperature})
            else:
                logits = torch.zeros(len(splits.train), 2, len(contract.class_names))
                objective = CrossEntropy(pruned, epochs, (CE_TERM,))
            data = FlipViews(splits.train, transform, logits, recipe.seed)
            engine = train(objective, data, cfg, out_dir / "checkpoints", recipe.seed, ctx, stage="recover",
                           validate=validate, console=console,
                           on_epoch=lambda rows: write_metrics(out_dir / "metrics.jsonl", rows))  # fmt: skip
            history, weights = engine.history, engine.weights
            info["val_top1_recovered"] = engine.best_val_top1
            info["recover_s"] = round(time.perf_counter() - t1, 1)
        meta = {"format": STUDENT_FORMAT, "student": recipe.student.name, "pruned": "1",
                "num_classes": str(len(contract.class_names)), "preprocess": contract.to_json()}  # fmt: skip
        save_state_dict(out_dir / "student.safetensors", weights, meta)
        pruned.load_state_dict(weights)
        test = recipe.data.open_test(list(contract.class_names))
        metrics: dict[str, Any] = {"prune": info}
        if test is not None:
            info["test_top1"] = evaluate_student(pruned, test, contract, out_dir, cfg.eval_batch_size)["top1"]
            # The unpruned student's logits beside the pruned one's: the report's ladder shows what pruning cost.
            before = predict_logits(unpruned, test, contract, cfg.eval_batch_size)
            info["test_top1_unpruned"] = write_eval(before, test, contract, out_dir, sub=UNPRUNED)["top1"]
            metrics.update(test_top1=info["test_top1"], test_name=test.name)
        if history:
            write_metrics(out_dir / "metrics.jsonl", history)
        write_json(out_dir / "metrics.json", metrics)
        update_manifest(out_dir, status="pruned", prune=info, results={"prune": info})
        return info
    finally:
        shutdown_distributed()
