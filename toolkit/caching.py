"""`toolkit cache build|verify`: the teacher-output cache over a training set (sharded, resumable)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from distill.crops import CropRecipe
from distill.teacher_cache import TeacherCache, build_cache, cache_spec
from distill.teachers.coop import load_anchors
from runtime.atomic import write_json
from toolkit.rundir import code_version, package_versions
from toolkit.teaching import TEACHER_PACKAGES, build_teacher, open_data


def run_cache_build(
    out: Path, spec: str, data: str, crops: int, recipe: CropRecipe, seed: int, shard_size: int, topk: int,
    template: str | None, anchors_file: Path | None, console: Console, openclip_config: Path | None = None,
    teacher_input_size: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Build (or finish, or rebuild if stale) the cache; rank and world size come from torchrun's env."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    teacher = build_teacher(spec, openclip_config)
    dataset = open_data(data, console)
    anchors = None
    if anchors_file:
        anchors, _ = load_anchors(anchors_file, teacher.spec, list(dataset.class_names))
    elif topk and template:
        with torch.no_grad():
            anchors = teacher.class_anchors(list(dataset.class_names), template)
    key = cache_spec(teacher, dataset, crops, recipe, seed, topk, anchors, teacher_input_size)
    t0 = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f"caching {crops} crops/image of {dataset.name}", total=len(dataset))
        built = build_cache(
            out, teacher, dataset, key, anchors, shard_size, rank, world,
            progress=lambda n: progress.advance(task, n), log=console.print,
        )  # fmt: skip
    seconds = time.perf_counter() - t0
    if rank == 0:
        provenance = {"key": key.to_dict(), "build_seconds": round(seconds, 1), "world_size": world,
                      "environment": {"packages": package_versions(TEACHER_PACKAGES), **code_version()}}  # fmt: skip
        write_json(out / "provenance.json", provenance)
    cache = TeacherCache(out) if world == 1 else None
    return {"built_shards": built, "seconds": seconds, "complete": cache is not None, "images": len(dataset)}
