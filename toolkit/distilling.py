"""`toolkit distill RECIPE`: every stage of the recipe's method, end to end, into one run directory.

Everything that can be wrong with the recipe, the data, the anchors or the weights is checked before the run
directory is touched. The teacher-output cache is reused when one with the same key exists (by default under
``<runs>/.teacher_cache/``, shared by every method, student and seed on the same data) and built otherwise.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from distill.config import DistillConfig, TrainConfig
from distill.crops import CropRecipe
from distill.data import FreshCropDataset
from distill.evaluate import predict_logits
from distill.lavid.signatures import load_signatures
from distill.methods.plan import Plan, PlannedStage, plan_distillation
from distill.objectives import (
    BaseLossObjective,
    CrossEntropy,
    DaitStudent,
    HintonKD,
    Objective,
    RelationalKD,
    WithLaViD,
)
from distill.precision import resolve_precision
from distill.stage_loop import train_stage
from distill.students import create_student
from distill.teacher_cache import CachedCropDataset, TeacherCache, build_cache, cache_spec
from distill.teachers.base import Teacher, prompt_name
from distill.teachers.coop import CoOpConfig, calibrate, load_anchors, save_anchors
from distill.trainer import write_metrics
from distill.weights import load_state_dict, save_state_dict
from runtime.atomic import write_json, write_text
from runtime.datasets import Dataset
from runtime.errors import ToolkitError
from runtime.sources import align_classes
from toolkit.evaluation import evaluate_student
from toolkit.recipe import Recipe, recipe_to_yaml
from toolkit.rundir import prepare_run_dir, update_manifest
from toolkit.splits import recipe_splits
from toolkit.teaching import build_teacher
from toolkit.training import STUDENT_FORMAT

IT_FORMAT = "edge-distill-intermediate-teacher/1"


def _stage_train(train: TrainConfig, planned: PlannedStage, epochs: int | None = None) -> TrainConfig:
    o = planned.overrides
    updates = {k: getattr(o, k) for k in ("epochs", "optimizer", "schedule") if getattr(o, k) is not None}
    if epochs is not None and o.epochs is None:
        updates["epochs"] = epochs
    return train.model_copy(update=updates)


def _cache_dir(cfg: DistillConfig, run_dir: Path, key: dict[str, Any]) -> Path:
    if cfg.cache.dir:
        return Path(cfg.cache.dir)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return run_dir.parent / ".teacher_cache" / digest


def _open_cache(teacher: Teacher, data: Dataset, cfg: DistillConfig, run_dir: Path, console: Console) -> TeacherCache:
    c = cfg.cache
    recipe = CropRecipe(scale=c.scale, ratio=c.ratio, hflip=c.hflip)
    key = cache_spec(teacher, data, c.crops, recipe, c.seed, 0, None)
    root = _cache_dir(cfg, run_dir, key.to_dict())
    if (root / "manifest.json").is_file():
        try:
            cache = TeacherCache(root)
            if cache.spec == key:
                console.print(f"teacher cache: reusing {root}")
                return cache
        except ToolkitError as exc:
            console.print(f"teacher cache: {exc}")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    t0 = time.perf_counter()
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f"teacher cache: {c.crops} crops/image of {len(data)} images", total=len(data))
        build_cache(root, teacher, data, key, None, batch_size=c.batch_size,
                    progress=lambda n: progress.advance(task, n), log=console.print)  # fmt: skip
    console.print(f"teacher cache: built {root} in {time.perf_counter() - t0:.0f}s")
    return TeacherCache(root)


def _load_it(path: Path, num_classes: int) -> tuple[torch.nn.Module, str]:
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


class _Selector:
    """Per-epoch validation of the stage's network; keeps the best weights in memory."""

    def __init__(self, net: torch.nn.Module, val: Dataset | None, recipe: Recipe, contract: Any, device: torch.device):
        self.net, self.val, self.recipe, self.contract, self.device = net, val, recipe, contract, device
        self.best: tuple[float, int, dict[str, torch.Tensor]] | None = None

    def __call__(self, epoch: int, row: dict[str, Any]) -> None:
        if self.val is None or not len(self.val):
            return
        logits = predict_logits(self.net, self.val, self.contract, self.recipe.train.eval_batch_size, self.device)
        row["val_top1"] = float((logits.argmax(1) == self.val.labels).mean())
        if self.best is None or row["val_top1"] > self.best[0]:
            state = {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}
            self.best = (row["val_top1"], epoch + 1, state)


def _student_objective(plan: Plan, net: torch.nn.Module, epochs: int, anchors: torch.Tensor | None,
                       teacher: Teacher | None, it: torch.nn.Module | None) -> Objective:  # fmt: skip
    name, p = plan.method.name, plan.params
    if name in ("ce", "lavid"):  # lavid = CE + the LaViD head, added around it
        return CrossEntropy(net, epochs)
    if name == "kd":
        return HintonKD(net, epochs, anchors, teacher.logit_scale, p)  # type: ignore[arg-type, union-attr]
    if name == "rkd":
        return RelationalKD(net, epochs, p)
    if name in ("vl2lite", "pand"):
        return BaseLossObjective(net, epochs, anchors, p)  # type: ignore[arg-type]
    if name in ("dait_f", "dait_l"):
        return DaitStudent(net, epochs, it, "features" if name == "dait_f" else "logits", p)  # type: ignore[arg-type]
    raise ToolkitError(f"method {name!r} has no student objective")


def lavid_targets(cfg: DistillConfig, names: list[str], prompts: list[str]) -> torch.Tensor | None:
    """The LaViD head's regression targets: concept signatures (C, Q, M) or, for the paper's ablation, MiniLM
    embeddings of the class names (C, 384)."""
    if cfg.lavid is None:
        return None
    if cfg.lavid.targets == "minilm":
        from distill.teachers.minilm import MiniLMText

        text = MiniLMText()
        with torch.no_grad():
            tokens = text.tokenize(prompts)
            return text.encode_embeddings(text.token_embeddings(tokens), tokens)
    return torch.from_numpy(load_signatures(cfg.lavid.targets, names).table)


def run_distill(recipe: Recipe, run_dir: Path, force: bool = False, console: Console | None = None) -> dict[str, Any]:
    console = console or Console(stderr=True, soft_wrap=True, markup=False)
    cfg = recipe.distill
    if cfg is None:
        raise ToolkitError(
            "the recipe has no distill section: add distill.method (toolkit methods), or use `toolkit train`"
        )
    plan = plan_distillation(cfg)
    names_ran = plan.stage_names

    # ---- everything checked before the run directory is touched
    data_cfg = recipe.data
    splits = recipe_splits(recipe, console)
    full, bad, train_set, val_set = splits.full, splits.bad_images, splits.train, splits.val
    names = list(full.class_names)
    if cfg.class_names is not None and list(cfg.class_names) != names:
        diff = [f"#{i}: {a!r} vs {b!r}" for i, (a, b) in enumerate(zip(cfg.class_names, names)) if a != b]
        raise ToolkitError(
            f"distill.class_names {list(cfg.class_names)} do not match the dataset's classes {names}"
            + (f" ({len(cfg.class_names)} vs {len(names)} classes)" if len(cfg.class_names) != len(names) else "")
            + (f"; first differences {', '.join(diff[:4])}" if diff else "")
        )
    contract = recipe.contract(names)
    test = None
    if data_cfg.test is not None:
        test = align_classes(data_cfg.test.to_source(data_cfg.max_pixels).open(names), names)
    anchors = None
    if cfg.anchors:
        anchors, _ = load_anchors(cfg.anchors, None, names)
    it_given = None
    if cfg.intermediate_teacher and "intermediate" not in names_ran:
        it_given = _load_it(Path(cfg.intermediate_teacher), len(names))[0]
    prompts = [prompt_name(n) for n in names] if cfg.prompt_names else names
    lavid = lavid_targets(cfg, names, prompts)
    teacher = (
        build_teacher(cfg.teacher, Path(cfg.teacher_config) if cfg.teacher_config else None) if cfg.teacher else None
    )
    if cfg.anchors and teacher is not None:
        load_anchors(cfg.anchors, teacher.spec, names)
    s = recipe.student
    torch.manual_seed(recipe.seed)
    student = create_student(s.name, len(names), s.pretrained, s.weights, s.drop_rate)
    device = torch.device("cuda" if recipe.train.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if recipe.train.device == "auto" else recipe.train.device))  # fmt: skip
    precision = resolve_precision(recipe.train.precision, device)

    prepare_run_dir(run_dir, False, force)
    write_text(run_dir / "config.yaml", recipe_to_yaml(recipe))
    write_text(run_dir / "preprocess.json", json.dumps(contract.to_dict(), indent=2) + "\n")
    update_manifest(
        run_dir, status="distilling", seed=recipe.seed, bad_images=bad,
        method={"name": plan.method.name, "params": plan.params, "stages": names_ran},
        data={"train": {"name": full.name, "fingerprint": full.fingerprint(), "n": len(full), "classes": names},
              "distill_train": {"n": len(train_set), "shots_per_class": cfg.shots or None,
                                "fingerprint": train_set.fingerprint()},
              "val_n": len(val_set) if val_set is not None else 0},
    )  # fmt: skip

    cache = _open_cache(teacher, train_set, cfg, run_dir, console) if teacher is not None else None
    if cache is not None:
        data: Any = CachedCropDataset(train_set, cache, contract)
        update_manifest(
            run_dir, teacher={"spec": teacher.spec, "cache": str(cache.root), "cache_key": cache.spec.to_dict()}
        )
    else:
        c = cfg.cache
        data = FreshCropDataset(train_set, CropRecipe(scale=c.scale, ratio=c.ratio, hflip=c.hflip), contract, c.seed)
    if anchors is None and teacher is not None:
        with torch.no_grad():
            anchors = teacher.class_anchors(prompts, cfg.template)

    history: list[dict[str, Any]] = []
    stage_results: dict[str, Any] = {}
    it = it_given
    t_start = time.perf_counter()
    for planned in plan.stages:
        stage = planned.stage
        t0 = time.perf_counter()
        if stage.kind == "psc":
            anchors, info = _run_psc(plan, teacher, cache, train_set, names, prompts, cfg.template, anchors, planned,
                                     recipe, run_dir, console)  # fmt: skip
            history.extend(info.pop("rows"))
        elif stage.kind == "intermediate":
            it, info = _run_intermediate(plan, cache, anchors, planned, recipe, names, data, device, precision,
                                         run_dir, console, val_set, contract)  # fmt: skip
            if test is not None:  # how good the teacher the student will learn from is
                logits = predict_logits(it, test, contract, recipe.train.eval_batch_size, device)
                info["test_top1"] = float((logits.argmax(1) == test.labels).mean())
                console.print(f"intermediate teacher: test top-1 {info['test_top1']:.4f} on {test.name}")
            history.extend(info.pop("rows"))
        else:
            train_cfg = _stage_train(recipe.train, planned)
            objective = _student_objective(plan, student, train_cfg.epochs, anchors, teacher, it)
            if lavid is not None:
                objective = WithLaViD(objective, lavid, cfg.lavid.weight)  # type: ignore[union-attr]
            selector = _Selector(student, val_set, recipe, contract, device)
            rows = train_stage(objective, data, train_cfg, stage.name, recipe.seed, device, precision, console,
                               _logging(selector, console))  # fmt: skip
            history.extend(rows)
            info = {"epochs": train_cfg.epochs, "last_train_top1": rows[-1]["train_top1"]}
            select = recipe.train.select == "best" and selector.best is not None
            if select:
                info.update(best_val_top1=selector.best[0], selected_epoch=selector.best[1])
                student.load_state_dict(selector.best[2])
            else:
                info["selected_epoch"] = train_cfg.epochs
        info["seconds"] = round(time.perf_counter() - t0, 1)
        stage_results[stage.name] = info
        write_metrics(run_dir, history)

    student.cpu().eval()
    meta = {"format": STUDENT_FORMAT, "student": s.name, "num_classes": str(len(names)),
            "epoch": str(stage_results["student"]["selected_epoch"]), "preprocess": contract.to_json(),
            "method": plan.method.name}  # fmt: skip
    save_state_dict(run_dir / "student.safetensors", student.state_dict(), meta)
    metrics: dict[str, Any] = {"method": plan.method.name, "stages": stage_results,
                               "train_time_s": round(time.perf_counter() - t_start, 1),
                               "precision": precision}  # fmt: skip
    if test is not None:
        report = evaluate_student(student, test, contract, run_dir, recipe.train.eval_batch_size, torch.device("cpu"))
        metrics.update(test_top1=report["top1"], test_name=test.name)
        console.print(f"test top-1 on {test.name} ({report['n']} images, not used for selection): {report['top1']:.4f}")
    write_json(run_dir / "metrics.json", metrics)
    update_manifest(run_dir, status="trained", results=metrics)
    return metrics


def _logging(selector: _Selector, console: Console):
    def hook(epoch: int, row: dict[str, Any]) -> None:
        selector(epoch, row)
        terms = " ".join(f"{k[5:]} {v:.4f}" for k, v in row.items() if k.startswith("loss_"))
        val = f", val top-1 {row['val_top1']:.4f}" if "val_top1" in row else ""
        console.print(f"{row['stage']} epoch {row['epoch']}: loss {row['train_loss']:.4f} ({terms}), "
                      f"train top-1 {row['train_top1']:.4f}{val}, {row['time_s']:.0f}s")  # fmt: skip

    return hook


def _run_psc(plan, teacher, cache, train_set, names, prompts, template, anchors, planned, recipe, run_dir, console):
    p = plan.params
    epochs = planned.overrides.epochs or int(p["coop_epochs"])
    coop = CoOpConfig(n_ctx=int(p["coop_n_ctx"]), epochs=epochs, lr=float(p["coop_lr"]),
                      batch_size=int(p["coop_batch_size"]), seed=recipe.seed)  # fmt: skip
    feats = torch.from_numpy(cache.embeddings())
    from distill.teachers.coop import top1

    center = feats.mean(1)
    before = top1(teacher, center, train_set.labels, anchors)
    with Progress(TextColumn("psc (CoOp)"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                  transient=True) as progress:  # fmt: skip
        task = progress.add_task("epochs", total=coop.epochs)
        result = calibrate(teacher, feats, train_set.labels, prompts, template, coop,
                           lambda done, _: progress.update(task, completed=done))  # fmt: skip
    after = top1(teacher, center, train_set.labels, result.anchors)
    provenance = {"teacher": teacher.spec, "template": template, "class_names": names,
                  "train_data": {"name": train_set.name, "n": len(train_set), "fingerprint": train_set.fingerprint()},
                  "coop": vars(coop), "source": "toolkit distill stage psc (cached crops)"}  # fmt: skip
    save_anchors(run_dir / "anchors.safetensors", result.anchors, provenance, result.context)
    console.print(f"psc: teacher top-1 on the training crops (mean embedding) {before:.4f} -> {after:.4f}")
    rows = [{"stage": "psc", "epoch": h["epoch"], "train_loss": h["loss"], "train_top1": h["train_top1"]}
            for h in result.history]  # fmt: skip
    return result.anchors, {"teacher_train_top1_before": before, "teacher_train_top1_after": after, "rows": rows}


def _run_intermediate(plan, cache, anchors, planned, recipe, names, data, device, precision, run_dir, console,
                      val_set, contract):  # fmt: skip
    p = plan.params
    train_cfg = _stage_train(recipe.train, planned, p["it_epochs"])
    torch.manual_seed(recipe.seed + 1)
    it = create_student(p["it_model"], len(names), bool(p["it_pretrained"]))
    objective = BaseLossObjective(it, train_cfg.epochs, anchors, {**p, "reduction": "pand"})
    selector = _Selector(it, val_set, recipe, contract, device)
    rows = train_stage(objective, data, train_cfg, "intermediate", recipe.seed, device, precision, console,
                       _logging(selector, console))  # fmt: skip
    if selector.best is not None and recipe.train.select == "best":
        it.load_state_dict(selector.best[2])
    it.cpu().eval()
    save_state_dict(run_dir / "intermediate_teacher.safetensors", it.state_dict(),
                    {"format": IT_FORMAT, "model": p["it_model"], "num_classes": str(len(names))})  # fmt: skip
    info = {"epochs": train_cfg.epochs, "model": p["it_model"], "last_train_top1": rows[-1]["train_top1"], "rows": rows}
    if selector.best is not None:
        info["best_val_top1"] = selector.best[0]
    return it.to(device), info
