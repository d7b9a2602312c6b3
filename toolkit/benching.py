"""`toolkit bench`: every artifact of a run (or one model file) on edge target profiles.

SingleStream latency and Offline throughput (runtime.latency), threads pinned as the profile says,
the environment recorded; one JSON per target in RUN/bench/ and a summary in the manifest (a single
model file: DIR/bench/files/<file>.<target>.json).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from runtime.artifacts import Artifact, artifacts_for, read_run_manifest
from runtime.atomic import write_json
from runtime.classifier import Classifier, open_classifier
from runtime.environment import describe_environment
from runtime.errors import ToolkitError
from runtime.latency import RunLimits, offline, pinned_cpus, single_stream
from runtime.targets import TargetProfile, get_target, load_targets
from toolkit.rundir import update_manifest


def _session(artifact: Artifact, target: TargetProfile) -> Classifier:
    return open_classifier(
        artifact.path,
        providers=[target.provider] if target.provider else None,
        threads=target.threads,
        provider_options=target.provider_options,
        device=target.device or "CPU",
    )


def _model_artifact(path: Path) -> Artifact:
    kind = {".onnx": "onnxruntime", ".xml": "openvino", ".engine": "tensorrt", ".plan": "tensorrt"}.get(path.suffix)
    if kind is None or not path.is_file():
        raise ToolkitError(f"{path}: not a run directory or a model file (.onnx, OpenVINO .xml, TensorRT .engine)")
    return Artifact(path.name, path.name, kind, "as exported", path, path.stat().st_size)


def bench_artifact(
    artifact: Artifact, target: TargetProfile, limits: RunLimits, progress: Progress | None = None
) -> dict[str, Any]:
    """SingleStream at batch 1 and Offline at each of the target's batch sizes, threads pinned."""
    session = _session(artifact, target)
    h, w = session.contract.input_size
    rng = np.random.default_rng(0)
    result: dict[str, Any] = {"artifact": artifact.key, "label": artifact.label, "file": artifact.path.name}
    result["bytes"] = artifact.bytes
    with pinned_cpus(target.threads) as cpus:
        result["pinned_cpus"] = cpus
        scenarios = [1, *target.batch_sizes]
        task = progress.add_task(f"{target.name} {artifact.label}", total=len(scenarios)) if progress else None

        def step(i: int) -> Any:
            return (lambda f: progress.update(task, completed=i + f)) if progress else None

        sample = rng.standard_normal((1, 3, h, w)).astype(np.float32)
        result["single_stream"] = single_stream(session.run, sample, limits, step(0))
        result["offline"] = []
        for i, bs in enumerate(target.batch_sizes, start=1):
            batch = rng.standard_normal((bs, 3, h, w)).astype(np.float32)
            result["offline"].append(offline(session.run, batch, limits, step(i)))
    return result


def run_bench(
    path: Path,
    target_names: list[str],
    limits: RunLimits,
    console: Console,
    targets_file: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """Bench ``path`` (a run directory or a model file) on each named target; returns results by target."""
    targets = load_targets(targets_file)
    profiles = [get_target(name, targets) for name in target_names]
    is_run = path.is_dir()
    if is_run:
        read_run_manifest(path)
    environment = describe_environment()
    results: dict[str, dict[str, Any]] = {}
    for profile in profiles:
        reason = profile.unavailable_reason()
        if reason:
            raise ToolkitError(f"target {profile.name} cannot run on this machine: {reason} (see `toolkit targets`)")
        arts = artifacts_for(path, profile.backend, profile.precisions) if is_run else [_model_artifact(path)]
        if not arts:
            raise ToolkitError(
                f"{path}: no {profile.backend} artifact in {'/'.join(profile.precisions)} for target {profile.name}; "
                f"run `toolkit export {path} --int8 --backend {profile.backend}` first"
            )
        entries = []
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console, transient=True
        ) as progress:
            for artifact in arts:
                entry = bench_artifact(artifact, profile, limits, progress)
                ss = entry["single_stream"]
                console.print(
                    f"{profile.name:<14} {artifact.label:<28} p50 {ss['p50_ms']:.2f} ms  p90 {ss['p90_ms']:.2f} ms  "
                    + "  ".join(f"b{o['batch_size']} {o['images_per_s']:.0f} img/s" for o in entry["offline"])
                )
                entries.append(entry)
        result = {
            "target": {"name": profile.name, **{k: v for k, v in vars(profile).items() if k != "name"}},
            "limits": vars(limits),
            "environment": environment,
            "input": "random normal tensors of the contract's shape (latency does not depend on pixel values)",
            "artifacts": entries,
        }
        # A lone model file's results stay out of its run's bench/ (the report reads that folder).
        out = (
            path / "bench" / f"{profile.name}.json"
            if is_run
            else path.parent / "bench" / "files" / f"{path.name}.{profile.name}.json"
        )
        write_json(out, result)
        results[profile.name] = result
    if is_run:
        summary = {
            name: {
                e["artifact"]: {"p50_ms": e["single_stream"]["p50_ms"], "p90_ms": e["single_stream"]["p90_ms"]}
                for e in r["artifacts"]
            }
            for name, r in results.items()
        }
        bench = read_run_manifest(path).get("bench", {})
        bench.update(summary)
        update_manifest(path, bench=bench)
    return results
