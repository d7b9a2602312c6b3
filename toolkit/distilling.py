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

from distill.config import AugmentConfig, DistillConfig
from distill.data import FreshCropDataset
from distill.distributed import DistContext, init_distributed, shutdown_distributed
from distill.engine import write_metrics
from distill.evaluate import predict_logits
from distill.lavid.signatures import load_signatures
from distill.methods.plan import plan_distillation
from distill.progress import Ticker
from distill.stages import StageEnv, run_stages
from distill.students import create_student
from distill.teacher_cache import CachedCropDataset, CachedTopKDataset, TeacherCache, build_cache, cache_spec
from distill.teachers.base import Teacher, prompt_name
from distill.teachers.coop import load_anchors
from distill.vlm_student import VLMStudent
from distill.weights import save_state_dict
from runtime.atomic import write_json, write_text
from runtime.datasets import ClassSubsetDataset, Dataset, base_new_classes
from runtime.errors import ToolkitError
from toolkit.base_to_new import base_to_new
from toolkit.datacheck import check_overlap
from toolkit.distill_checks import check_student_kind, check_teacher_kind, given_intermediate, vlm_contract
from toolkit.evaluation import evaluate_student
from toolkit.recipe import Recipe, recipe_to_yaml
from toolkit.rundir import prepare_run_dir, update_manifest
from toolkit.splits import recipe_splits
from toolkit.teaching import build_teacher
from toolkit.training import STUDENT_FORMAT, check_resume_config, role_of_test, selection_set


def _cache_dir(cfg: DistillConfig, run_dir: Path, key: dict[str, Any]) -> Path:
    if cfg.cache.dir:
        return Path(cfg.cache.dir)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return run_dir.parent / ".teacher_cache" / digest


def open_cache(teacher: Teacher, data: Dataset, cfg: DistillConfig, run_dir: Path, console: Console,
               ctx: DistContext, every_s: float = 30.0, topk: int = 0,
               anchors: torch.Tensor | None = None) -> TeacherCache:  # fmt: skip
    """Reuse the cache with this key, or build it: under DDP each rank computes every world_size-th shard
    (the same bytes a single process writes), then every rank opens the whole cache. ``topk`` > 0 also stores
    each crop's top-K logits against ``anchors`` and their log-sum-exp (FDBPL)."""
    c = cfg.cache
    recipe = c.recipe()
    key = cache_spec(teacher, data, c.crops, recipe, c.seed, topk, anchors, c.teacher_input_size)
    root = _cache_dir(cfg, run_dir, key.to_dict())
    say = console.print if ctx.is_main else (lambda *a, **k: None)
    if (root / "manifest.json").is_file():
        try:
            cache = TeacherCache(root)
            if cache.spec == key:
                say(f"teacher cache: reusing {root}")
                ctx.barrier()
                return cache
        except ToolkitError as exc:
            say(f"teacher cache: {exc}")
    t0 = time.perf_counter()
    shards = range(ctx.rank, max(1, -(-len(data) // c.shard_size)), ctx.world_size)
    mine = sum(min((s + 1) * c.shard_size, len(data)) - s * c.shard_size for s in shards)
    label = f"teacher cache: {c.crops} crops/image, {len(shards)} shard(s) on rank {ctx.rank}"
    with Ticker(console, label, mine, every_s, enabled=ctx.is_main) as ticker:
        build_cache(root, teacher, data, key, anchors, shard_size=c.shard_size, rank=ctx.rank,
                    world_size=ctx.world_size, batch_size=c.batch_size,
                    progress=lambda n: ticker.advance(n, images=n), log=say)  # fmt: skip
    ctx.barrier()
    say(f"teacher cache: built {root} in {time.perf_counter() - t0:.0f}s ({ctx.world_size} rank(s))")
    return TeacherCache(root)


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


def run_distill(recipe: Recipe, run_dir: Path, force: bool = False, resume: bool = False,
                console: Console | None = None) -> dict[str, Any]:  # fmt: skip
    """Every stage of the recipe's method into ``run_dir`` (works under torchrun: one DDP job per stage).
    ``resume`` skips finished stages and continues the interrupted one from its last checkpoint."""
    console = console or Console(stderr=True, soft_wrap=True, markup=False)
    ctx = init_distributed(recipe.train.device)
    try:
        return _distill(recipe, run_dir, force, resume, console, ctx)
    finally:
        shutdown_distributed()


def check_distill_recipe(recipe: Recipe) -> None:
    """Recipe keys `toolkit distill` would not use are errors, not silently ignored."""
    if recipe.distill is None:
        raise ToolkitError(
            "the recipe has no distill section: add distill.method (toolkit methods), or use `toolkit train`"
        )
    used = recipe.train.augment.model_dump()
    if used != AugmentConfig().model_dump():
        changed = sorted(k for k, v in used.items() if AugmentConfig().model_dump()[k] != v)
        raise ToolkitError(
            f"train.augment.{changed[0]}: `toolkit distill` trains on the teacher cache's crops and does not use "
            "train.augment; set the crops with distill.cache.scale / distill.cache.ratio / distill.cache.hflip, "
            "or remove train.augment"
        )


def _distill(recipe: Recipe, run_dir: Path, force: bool, resume: bool, console: Console, ctx: DistContext) -> dict:
    check_distill_recipe(recipe)
    cfg = recipe.distill
    assert cfg is not None
    plan = plan_distillation(cfg)
    quiet = Console(stderr=True, quiet=True) if not ctx.is_main else console

    # ---- everything checked before the run directory is touched
    data_cfg = recipe.data
    splits = recipe_splits(recipe, quiet)
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
    test = data_cfg.open_test(names + splits.new_classes)
    leak = check_overlap(full, test, console, show=ctx.is_main)
    new_test = None
    if splits.new_classes and test is not None:  # base-to-new: the test set's base and new halves
        base, rest = base_new_classes(len(test.class_names))
        test, new_test = ClassSubsetDataset(test, base), ClassSubsetDataset(test, rest)
    val_set = selection_set(recipe, val_set, test)
    anchors = None
    if cfg.anchors:
        anchors, _ = load_anchors(cfg.anchors, None, names)
    it_given = None
    if cfg.intermediate_teacher and "intermediate" not in plan.stage_names:
        it_given = given_intermediate(cfg.intermediate_teacher, names)
    prompts = [prompt_name(n) for n in names] if cfg.prompt_names else names
    lavid = lavid_targets(cfg, names, prompts)
    teacher = (
        build_teacher(
            cfg.teacher,
            Path(cfg.teacher_config) if cfg.teacher_config else None,
            cfg.teacher_backend,
            str(ctx.device),
            num_classes=len(names),
        )  # fmt: skip
        if cfg.teacher
        else None
    )
    if teacher is not None:
        check_teacher_kind(teacher, plan.method, cfg, names)
    if cfg.anchors and teacher is not None:
        load_anchors(cfg.anchors, teacher.spec, names)
    s = recipe.student
    check_student_kind(plan.method, s.name, cfg)
    torch.manual_seed(recipe.seed)
    student = create_student(s.name, len(names), s.pretrained, s.weights, s.drop_rate, s.config)
    topk = 0
    if plan.method.teacher_outputs == "topk":
        topk = int(plan.params["fdbpl_topk"])
        if topk > len(names):
            raise ToolkitError(
                f"distill.params.fdbpl_topk: {topk} is more than the {len(names)} classes of {full.name}; "
                f"set it to at most {len(names)}"
            )
    if isinstance(student, VLMStudent):
        contract = vlm_contract(student, recipe, names)
        recipe = recipe.with_contract(contract)

    if ctx.is_main:
        prepare_run_dir(run_dir, resume, force)
        if resume:
            check_resume_config(run_dir, recipe)
        write_text(run_dir / "config.yaml", recipe_to_yaml(recipe))
        write_text(run_dir / "preprocess.json", json.dumps(contract.to_dict(), indent=2) + "\n")
        update_manifest(
            run_dir, status="distilling", seed=recipe.seed, bad_images=bad, world_size=ctx.world_size,
            method={"name": plan.method.name, "params": plan.params, "stages": plan.stage_names},
            teacher_image_backend=None if teacher is None else {
                "backend": teacher.image_backend, "parity_max_abs_diff": getattr(teacher.encode_image, "parity", None)},
            data={"train": {"name": full.name, "fingerprint": full.fingerprint(), "n": len(full), "classes": names},
                  "distill_train": {"n": len(train_set), "shots_per_class": cfg.shots or None,
                                    "fingerprint": train_set.fingerprint()},
                  "val_n": len(val_set) if val_set is not None else 0, "test_overlap": leak},
        )  # fmt: skip
    ctx.barrier()

    if anchors is None and teacher is not None and teacher.kind == "vlm":
        with torch.no_grad():
            anchors = teacher.class_anchors(prompts, cfg.template)
    cache = None
    if teacher is not None:
        cache = open_cache(teacher, train_set, cfg, run_dir, console, ctx, recipe.train.progress_every_s, topk,
                           anchors if topk else None)  # fmt: skip
    if cache is not None:
        data: Any = (CachedTopKDataset if topk else CachedCropDataset)(train_set, cache, contract)
        if ctx.is_main:
            update_manifest(run_dir, teacher={"spec": teacher.spec, "cache": str(cache.root),  # type: ignore[union-attr]
                                              "cache_key": cache.spec.to_dict()})  # fmt: skip
    else:
        c = cfg.cache
        data = FreshCropDataset(train_set, c.recipe(), contract, c.seed)

    env = StageEnv(
        plan, recipe.train, recipe.seed, ctx, run_dir, console, names, prompts, cfg.template, contract, data,
        train_set, val_set, student, teacher, cache, anchors, it_given, lavid,
        cfg.lavid.weight if cfg.lavid else 0.0, resume,
        (lambda rows: write_metrics(run_dir / "metrics.jsonl", rows)) if ctx.is_main else None,
    )  # fmt: skip
    initial_context = student.pos_context.detach().clone() if isinstance(student, VLMStudent) else None
    result = run_stages(env)
    if not ctx.is_main:
        return {}
    write_metrics(run_dir / "metrics.jsonl", result.history)
    stages = result.summaries
    if result.intermediate is not None and test is not None and "intermediate" in stages:
        logits = predict_logits(result.intermediate, test, contract, recipe.train.eval_batch_size, ctx.device)
        stages["intermediate"]["test_top1"] = float((logits.argmax(1) == test.labels).mean())
        console.print(f"intermediate teacher: test top-1 {stages['intermediate']['test_top1']:.4f} on {test.name}")

    student.cpu().eval()
    meta = {"format": STUDENT_FORMAT, "student": s.name, "num_classes": str(len(names)),
            "epoch": str(stages["student"]["selected_epoch"]), "preprocess": contract.to_json(),
            "method": plan.method.name}  # fmt: skip
    save_state_dict(run_dir / "student.safetensors", student.state_dict(), meta)
    metrics: dict[str, Any] = {"method": plan.method.name, "stages": stages, "selection": recipe.train.select,
                               "train_time_s": round(sum(st.get("seconds", 0.0) for st in stages.values()), 1),
                               "precision": result.precision, "world_size": ctx.world_size,
                               "selected_on": recipe.train.select_on}  # fmt: skip
    if test is not None:
        report = evaluate_student(student, test, contract, run_dir, recipe.train.eval_batch_size, torch.device("cpu"))
        metrics.update(test_top1=report["top1"], test_name=test.name)
        console.print(f"test top-1 on {test.name} ({report['n']} images, {role_of_test(recipe)}): {report['top1']:.4f}")
    if new_test is not None and isinstance(student, VLMStudent):
        metrics["base_to_new"] = base_to_new(student, test, new_test, initial_context, contract, recipe, console)
    write_json(run_dir / "metrics.json", metrics)
    update_manifest(run_dir, status="trained", results=metrics)
    return metrics
