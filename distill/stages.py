"""The stage runner: executes a planned method, stage after stage, each through the one training engine.

Every stage trains in ``<run>/checkpoints/<stage>/`` (the engine's resumable checkpoints) and, when done,
writes its output file (anchors, intermediate teacher, student) and then ``done.json`` (the marker: the
output's hash, the stage's summary and metric rows). A rerun with ``resume`` skips every stage whose marker
matches its output, continues the interrupted stage from its last checkpoint, and runs the rest.

What a stage outputs is selected on the held-out validation split (``train.select``): the student and the
intermediate teacher by their classifier's top-1, PSC's prompt context by the teacher's zero-shot top-1 on
the validation images with the calibrated anchors.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch.utils.data import Dataset as TorchDataset

from distill.config import EmaConfig, OptimizerConfig, ScheduleConfig, TrainConfig
from distill.data import STAGE_INIT_STREAM, derive_seed
from distill.distributed import DistContext
from distill.engine import EngineResult, train
from distill.evaluate import classifier_validator, val_metrics
from distill.methods.plan import Plan, PlannedStage
from distill.methods.spec import StageInputs
from distill.objectives import Objective, PromptContext, PromptObjective, WithLaViD
from distill.precision import resolve_channels_last, resolve_precision
from distill.students import create_student
from distill.teacher_cache import TeacherCache
from distill.teachers.base import Teacher
from distill.teachers.coop import FeatureDataset, image_features, save_anchors
from distill.weights import load_state_dict, save_state_dict
from runtime.atomic import write_json
from runtime.datasets import Dataset
from runtime.errors import ToolkitError
from runtime.hashing import sha256_file
from runtime.preprocess import PreprocessContract

IT_FORMAT = "edge-distill-intermediate-teacher/1"
DONE = "done.json"


@dataclass
class StageEnv:
    """What the stages of one run share: data, teacher, the recipe's train section, where to write."""

    plan: Plan
    train_cfg: TrainConfig
    seed: int
    ctx: DistContext
    run_dir: Path
    console: Console
    names: list[str]
    prompts: list[str]
    template: str
    contract: PreprocessContract
    data: TorchDataset  # (crop, label, teacher embedding) per training image
    train_set: Dataset
    val_set: Dataset | None
    student: torch.nn.Module
    teacher: Teacher | None = None
    cache: TeacherCache | None = None
    anchors: torch.Tensor | None = None
    intermediate: torch.nn.Module | None = None
    lavid_targets: torch.Tensor | None = None
    lavid_weight: float = 0.0
    resume: bool = False
    on_rows: Callable[[list[dict[str, Any]]], None] | None = None  # every metric row so far (rank 0)


@dataclass
class StagesResult:
    summaries: dict[str, dict[str, Any]]
    history: list[dict[str, Any]]
    student: torch.nn.Module
    anchors: torch.Tensor | None
    intermediate: torch.nn.Module | None
    precision: str = "fp32"


def stage_train_config(train: TrainConfig, planned: PlannedStage, default_epochs: int | None = None) -> TrainConfig:
    """The recipe's train section with the stage's overrides (distill.stages[i].epochs/optimizer/schedule)."""
    o = planned.overrides
    updates: dict[str, Any] = {k: getattr(o, k) for k in ("epochs", "optimizer", "schedule") if getattr(o, k)}
    if default_epochs is not None and o.epochs is None:
        updates["epochs"] = int(default_epochs)
    return train.model_copy(update=updates)


def psc_train_config(train: TrainConfig, planned: PlannedStage, p: dict[str, Any]) -> TrainConfig:
    """CoOp's own schedule (methods-spec 2.1: SGD, momentum 0.9, cosine to 0, batch 32, clip 1.0), no EMA; the
    stage's overrides still apply. Device, workers, checkpointing and precision come from the recipe: PAND's
    code trains the prompt fp16-mixed, so ``train.precision: auto`` (bf16 autocast where the hardware computes
    bf16 natively: the text tower's step is 1.5x faster on an AVX512-BF16 CPU, measured) is the reference's
    choice and ``fp32`` the exact one."""
    o = planned.overrides
    return train.model_copy(
        update={
            "epochs": o.epochs or int(p["coop_epochs"]),
            "batch_size": int(p["coop_batch_size"]),
            "optimizer": o.optimizer or OptimizerConfig(name="sgd", lr=float(p["coop_lr"]), momentum=0.9,
                                                        weight_decay=0.0, nesterov=False),  # fmt: skip
            "schedule": o.schedule or ScheduleConfig(name="cosine", warmup_epochs=0),
            "grad_clip": 1.0, "label_smoothing": 0.0, "channels_last": False,
            "ema": EmaConfig(enabled=False), "accumulate": 1,
        }
    )  # fmt: skip


def cached_embeddings(cache: TeacherCache, labels: np.ndarray) -> FeatureDataset:
    """PSC's training data: the teacher embedding of each image's crop of the epoch, on the cache's crop
    schedule (the student stage replays the same crops)."""
    return FeatureDataset(torch.from_numpy(cache.embeddings()), labels, crop_for=cache.crop_for_epoch)


def run_stages(env: StageEnv) -> StagesResult:
    """Run (or, on resume, skip or continue) every planned stage; returns what the last one produced."""
    history: list[dict[str, Any]] = []
    summaries: dict[str, dict[str, Any]] = {}
    precision = "fp32"
    for index, planned in enumerate(env.plan.stages):
        name = planned.stage.name
        folder = env.run_dir / "checkpoints" / name
        done = _finished(env, folder) if env.resume else None
        if done is not None:
            _load_output(env, planned, done)
            if env.ctx.is_main:
                env.console.print(f"{name}: finished in an earlier run ({folder / DONE}); skipped")
            summaries[name], rows = done["summary"], done["rows"]
            history.extend(rows)
            continue
        kind = planned.stage.kind
        runner = {"psc": _run_psc, "intermediate": _run_intermediate, "student": _run_student}[kind]
        # What a stage initialises (its network, condensation MLPs, adapters, heads) depends on the seed and
        # the stage alone, never on the RNG state the earlier stages left: a stage started after a resume
        # that skipped them begins exactly as in an uninterrupted run.
        torch.manual_seed(derive_seed(env.seed, STAGE_INIT_STREAM, index))
        before = list(history)

        def on_epoch(rows: list[dict[str, Any]], before: list[dict[str, Any]] = before) -> None:
            if env.on_rows is not None:
                env.on_rows(before + rows)

        result, summary, output = runner(env, planned, folder, on_epoch)
        precision = result.precision if kind != "psc" else precision
        last = result.history[-1] if result.history else {}
        summary.update(epochs=last.get("epoch", 0), selected_epoch=result.selected_epoch,
                       best_val_top1=result.best_val_top1, last_train_top1=last.get("train_top1"))  # fmt: skip
        summary["seconds"] = round(sum(r["time_s"] for r in result.history), 1)
        if env.ctx.is_main:
            marker = {"stage": name, "output": str(output.relative_to(env.run_dir)), "sha256": sha256_file(output),
                      "summary": summary, "rows": result.history}  # fmt: skip
            write_json(folder / DONE, marker)
        env.ctx.barrier()
        summaries[name] = summary
        history.extend(result.history)
    return StagesResult(summaries, history, env.student, env.anchors, env.intermediate, precision)


def _finished(env: StageEnv, folder: Path) -> dict[str, Any] | None:
    marker = folder / DONE
    if not marker.is_file():
        return None
    done = json.loads(marker.read_text())
    output = env.run_dir / done["output"]
    if not output.is_file() or sha256_file(output) != done["sha256"]:
        raise ToolkitError(f"{marker}: its output {output} is missing or changed; rerun with --force to start over")
    return done


def _load_output(env: StageEnv, planned: PlannedStage, done: dict[str, Any]) -> None:
    path = env.run_dir / done["output"]
    kind = planned.stage.kind
    if kind == "psc":
        env.anchors = load_state_dict(path)["anchors"]
    elif kind == "intermediate":
        env.intermediate = load_intermediate(path, len(env.names))[0].to(env.ctx.device)
    else:
        env.student.load_state_dict(load_state_dict(path))


def load_intermediate(path: Path, num_classes: int) -> tuple[torch.nn.Module, str]:
    """A DAIT intermediate teacher written by stage 1 (checked by its format tag)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:
        raise ToolkitError(f"{path}: not a safetensors file ({exc})") from exc
    if meta.get("format") != IT_FORMAT:
        raise ToolkitError(f"{path}: not an intermediate teacher written by `toolkit distill` (DAIT stage 1)")
    net = create_student(meta["model"], num_classes)
    net.load_state_dict(load_state_dict(path))
    return net, meta["model"]


def _classifier_validator(env: StageEnv, cfg: TrainConfig):
    if env.val_set is None or not len(env.val_set):
        return None
    precision = resolve_precision(cfg.precision, env.ctx.device)
    channels_last = resolve_channels_last(cfg.channels_last, precision, env.ctx.device)
    return classifier_validator(env.val_set, env.contract, cfg.eval_batch_size, env.ctx.device, precision,
                                channels_last)  # fmt: skip


def _engine(env: StageEnv, name: str, objective: Objective, data: TorchDataset, cfg: TrainConfig, folder: Path,
            validate, on_epoch) -> EngineResult:  # fmt: skip
    result = train(objective, data, cfg, folder, env.seed, env.ctx, stage=name, validate=validate,
                   resume=env.resume, console=env.console, on_epoch=on_epoch)  # fmt: skip
    objective.net.load_state_dict(result.weights)  # the selected epoch's weights (every rank: same)
    return result


def _run_psc(env: StageEnv, planned: PlannedStage, folder: Path, on_epoch):
    teacher, cache, p = env.teacher, env.cache, env.plan.params
    if teacher is None or cache is None:
        raise ToolkitError("stage psc needs the teacher and its cached crops (distill.teacher)")
    cfg = psc_train_config(env.train_cfg, planned, p)
    gen = torch.Generator().manual_seed(env.seed)
    context = PromptContext(int(p["coop_n_ctx"]), teacher.text_width, generator=gen)
    inputs = StageInputs(context, cfg.epochs, p, planned.stage.losses, prompts=env.prompts, template=env.template,
                         teacher=teacher)  # fmt: skip
    objective = planned.stage.objective(inputs)
    assert isinstance(objective, PromptObjective)
    validate = None
    if env.val_set is not None and len(env.val_set) and env.ctx.is_main:
        val_feats = image_features(teacher, env.val_set).to(env.ctx.device)
        labels = env.val_set.labels

        def validate(net: torch.nn.Module) -> dict[str, float]:
            with torch.no_grad():
                tokens = {k: v.to(env.ctx.device) for k, v in objective.tokens.items()}
                anchors = teacher.encode_with_context(net.context, tokens)
                logits = teacher.zero_shot_logits(val_feats, anchors).float().cpu().numpy()
            return val_metrics(logits, labels)

    if p["coop_features"] == "eval":
        data: torch.utils.data.Dataset = FeatureDataset(image_features(teacher, env.train_set).cpu(),
                                                        env.train_set.labels)  # fmt: skip
    else:
        data = cached_embeddings(cache, env.train_set.labels)
    result = _engine(env, "psc", objective, data, cfg, folder, validate, on_epoch)
    with torch.no_grad():
        anchors = objective.anchors().detach().cpu()
    out = env.run_dir / "anchors.safetensors"
    features = "eval features" if p["coop_features"] == "eval" else "cached crops"
    if env.ctx.is_main:
        provenance = {"teacher": teacher.spec, "template": env.template, "class_names": env.names,
                      "train_data": {"name": env.train_set.name, "n": len(env.train_set),
                                     "fingerprint": env.train_set.fingerprint()},
                      "coop": {"n_ctx": int(p["coop_n_ctx"]), "epochs": cfg.epochs, "lr": cfg.optimizer.lr,
                               "batch_size": cfg.batch_size, "seed": env.seed, "features": p["coop_features"]},
                      "source": f"toolkit distill stage psc ({features})"}  # fmt: skip
        save_anchors(out, anchors, provenance, context.context.detach().cpu())
    env.ctx.barrier()
    env.anchors = load_state_dict(out)["anchors"]  # every rank: the file's (normalised) anchors
    return result, {}, out


def _run_intermediate(env: StageEnv, planned: PlannedStage, folder: Path, on_epoch):
    p = env.plan.params
    cfg = stage_train_config(env.train_cfg, planned, p["it_epochs"])
    it = create_student(p["it_model"], len(env.names), bool(p["it_pretrained"]))
    objective = planned.stage.objective(
        StageInputs(it, cfg.epochs, p, planned.stage.losses, cfg.label_smoothing, anchors=env.anchors)
    )
    result = _engine(env, "intermediate", objective, env.data, cfg, folder, _classifier_validator(env, cfg), on_epoch)
    out = env.run_dir / "intermediate_teacher.safetensors"
    if env.ctx.is_main:
        save_state_dict(out, it.state_dict(), {"format": IT_FORMAT, "model": p["it_model"],
                                               "num_classes": str(len(env.names))})  # fmt: skip
    env.ctx.barrier()
    env.intermediate = it.eval()
    return result, {"model": p["it_model"]}, out


def _run_student(env: StageEnv, planned: PlannedStage, folder: Path, on_epoch):
    p = env.plan.params
    cfg = stage_train_config(env.train_cfg, planned)
    inputs = StageInputs(env.student, cfg.epochs, p, planned.stage.losses, cfg.label_smoothing, env.anchors,
                         env.teacher, env.intermediate, env.prompts, env.template)  # fmt: skip
    objective = planned.stage.objective(inputs)
    if env.lavid_targets is not None:
        objective = WithLaViD(objective, env.lavid_targets, env.lavid_weight)
    result = _engine(env, "student", objective, env.data, cfg, folder, _classifier_validator(env, cfg), on_epoch)
    out = folder / "selected.safetensors"
    if env.ctx.is_main:
        save_state_dict(out, env.student.state_dict(), {"epoch": str(result.selected_epoch)})
    env.ctx.barrier()
    return result, {}, out
