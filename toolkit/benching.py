"""`toolkit bench`: every artifact of a run (or one model file) on edge target profiles.

SingleStream latency and Offline throughput (runtime.latency), threads pinned as the profile says,
the environment recorded; one JSON per target in RUN/bench/ and a summary in the manifest (a single
model file: DIR/bench/files/<file>.<target>.json).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from runtime.artifacts import Artifact, artifacts_for, read_run_manifest
from runtime.atomic import write_json
from runtime.ceiling import measure_gemm_ceiling
from runtime.classifier import Classifier, open_classifier
from runtime.cross_check import cross_check as engine_cross_check
from runtime.environment import describe_environment
from runtime.errors import ToolkitError
from runtime.hashing import sha256_file, sha256_path
from runtime.latency import RunLimits, offline, offline_from_single_stream, pinned_cpus, single_stream
from runtime.layer_costs import graph_precision
from runtime.peaks import reconcile_with_ceiling, target_peak
from runtime.resources import EnergyMeter, energy_per_query, peak_rss_mb, reset_peak_rss, rss_mb
from runtime.roofline import artifact_costs, roofline
from runtime.session_settings import describe_settings
from runtime.targets import TargetProfile, get_target, load_targets
from runtime.tuning import sweep_settings
from toolkit.rundir import update_manifest


def _session(artifact: Artifact, target: TargetProfile, settings: dict[str, Any] | None = None) -> Classifier:
    return open_classifier(
        artifact.path,
        providers=[target.provider] if target.provider else None,
        threads=target.threads,
        provider_options=target.provider_options,
        device=target.device or "CPU",
        settings=settings if settings is not None else target.session,
    )


def _model_artifact(path: Path) -> Artifact:
    kind = {".onnx": "onnxruntime", ".xml": "openvino", ".engine": "tensorrt", ".plan": "tensorrt",
            ".pte": "executorch", ".param": "ncnn", ".tflite": "litert"}.get(path.suffix)  # fmt: skip
    if kind is None or not path.is_file():
        raise ToolkitError(f"{path}: not a run directory or a model file (.onnx, OpenVINO .xml, TensorRT .engine, "
                           "ExecuTorch .pte, NCNN .param, LiteRT .tflite)")  # fmt: skip
    return Artifact(path.name, path.name, kind, graph_precision(path), path, path.stat().st_size)


def bench_artifact(
    artifact: Artifact,
    target: TargetProfile,
    limits: RunLimits,
    progress: Progress | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """SingleStream at batch 1 and Offline at each of the target's batch sizes, threads pinned (sessions are
    created pinned too: engines start their thread pools then). With a ``static_batch`` setting each batch
    size gets its own session compiled for that shape. Load time, memory and energy are recorded."""
    settings = dict(target.session if settings is None else settings)
    static = bool(settings.get("static_batch"))
    result: dict[str, Any] = {"artifact": artifact.key, "label": artifact.label, "file": artifact.path.name}
    result["bytes"] = artifact.bytes
    # What was measured, so that results brought back from a device are checked against the run (--import).
    result["sha256"] = sha256_path(artifact.path) if artifact.path.is_dir() else sha256_file(artifact.path)
    result["session"] = settings
    meter = EnergyMeter()
    rng = np.random.default_rng(0)
    with pinned_cpus(target.threads) as cpus:
        result["pinned_cpus"] = cpus
        rss_before = rss_mb()
        peak_reset = reset_peak_rss()
        t0 = time.perf_counter()
        sessions = {1: _session(artifact, target, {**settings, "static_batch": 1} if static else settings)}
        result["load_s"] = round(time.perf_counter() - t0, 4)

        def session_for(bs: int) -> Classifier:
            if static and bs not in sessions:
                sessions[bs] = _session(artifact, target, {**settings, "static_batch": bs})
            return sessions[bs if static else 1]

        h, w = sessions[1].contract.input_size
        result["input_size"] = [h, w]
        task = progress.add_task(f"{target.name} {artifact.label}", total=1 + len(target.batch_sizes)) if (
            progress) else None  # fmt: skip

        def step(i: int) -> Any:
            return (lambda f: progress.update(task, completed=i + f)) if progress else None

        sample = rng.standard_normal((1, 3, h, w)).astype(np.float32)
        sessions[1].run(sample)
        rss_loaded = rss_mb()
        energy_before = [] if meter.unavailable else meter.read()
        result["single_stream"] = single_stream(sessions[1].run, sample, limits, step(0))
        energy_after = [] if meter.unavailable else meter.read()
        result["energy"] = energy_per_query(meter, energy_before, energy_after, result["single_stream"]["count"])
        result["offline"] = []
        for i, bs in enumerate(target.batch_sizes, start=1):
            if bs == 1:  # back-to-back batch-1 queries: what SingleStream just timed, not run twice
                result["offline"].append(offline_from_single_stream(result["single_stream"]))
                continue
            batch = rng.standard_normal((bs, 3, h, w)).astype(np.float32)
            result["offline"].append(offline(session_for(bs).run, batch, limits, step(i)))
    result["memory"] = {
        "session_mb": None if rss_before is None or rss_loaded is None else round(rss_loaded - rss_before, 1),
        "peak_rss_mb": peak_rss_mb() if peak_reset else None,
        "note": "session_mb: resident memory the loaded session added, measured after its first batch-1 inference; "
        "peak_rss_mb: the bench process's peak while this artifact was loaded and measured",
    }
    return result


def tune_artifact(artifact: Artifact, target: TargetProfile) -> dict[str, Any]:
    """The session-settings sweep (runtime.tuning) for one artifact on one target, threads pinned."""
    probe = _session(artifact, target)
    h, w = probe.contract.input_size
    x = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
    with pinned_cpus(target.threads):
        result = sweep_settings(target.backend, lambda s: _session(artifact, target, s), x, dict(target.session))
    return {"file": artifact.path.name, "label": artifact.label, "sha256": sha256_file(artifact.path), **result}


def _tuning_file(path: Path, is_run: bool, target: str) -> Path:
    return path / "bench" / "tuning" / f"{target}.json" if is_run else (
        path.parent / "bench" / "files" / f"{path.name}.{target}.tuning.json")  # fmt: skip


def _tuned(tuning: dict[str, Any], artifact: Artifact, console: Console) -> dict[str, Any] | None:
    """The settings a recorded sweep chose for ``artifact``, unless the file changed since (then None)."""
    entry = tuning.get(artifact.key)
    if not entry:
        return None
    if entry.get("sha256") != sha256_file(artifact.path):
        console.print(f"{artifact.label}: re-exported since its tuning sweep; using the target's settings "
                      "(rerun with --tune)")  # fmt: skip
        return None
    return dict(entry["best"])


def _cross_check(artifact: Artifact, target: TargetProfile, limits: RunLimits, entry: dict[str, Any]) -> dict:
    """The engine's own benchmark tool on the same file, threads pinned alike; ratio ours / theirs."""
    size = tuple(entry["input_size"])
    with pinned_cpus(target.threads):
        result = engine_cross_check(
            artifact.backend, artifact.path, size, target.threads, max(limits.min_duration_s, 2)
        )
    if "p50_ms" in result:
        result["ours_p50_ms"] = entry["single_stream"]["p50_ms"]
        result["ours_over_tool"] = round(result["ours_p50_ms"] / result["p50_ms"], 3)
    return result


def _cost_source(artifact: Artifact, run_dir: Path | None) -> Path | None:
    """The graph MACs are counted from: the artifact itself, or for an engine the Q/DQ ONNX it was built from."""
    if artifact.path.suffix in (".onnx", ".xml"):
        return artifact.path
    if artifact.path.suffix in (".pte", ".param"):  # the run's ONNX model is the same network (its MACs)
        onnx_model = (run_dir or artifact.path.parent) / "model.onnx"
        return onnx_model if onnx_model.is_file() else None
    if run_dir is not None:
        entry = read_run_manifest(run_dir).get("exports", {}).get("int8_tensorrt", {})
        if entry.get("file") and (run_dir / entry["file"]).is_file():
            return run_dir / entry["file"]
    return None


def _peak_and_ceiling(profile: TargetProfile, environment: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The target's peak (table or profile) and, on CPU targets, the measured GEMM ceiling it is checked with."""
    peak = target_peak(profile, environment)
    if profile.backend == "tensorrt" or (profile.provider or "CPU").upper()[:3] != "CPU":
        return peak, {"unknown": "the GEMM ceiling is measured on CPU targets only"}
    threads = profile.threads or int(peak.get("cores") or environment["cpu"].get("usable_cores") or 1)
    with pinned_cpus(profile.threads):
        ceiling = measure_gemm_ceiling(threads)
    return (peak if profile.peak_gmacs else reconcile_with_ceiling(peak, ceiling)), ceiling


def _roofline_text(entry: dict[str, Any]) -> str:
    r = entry.get("roofline", {})
    if "batch_1" not in r:
        return ""
    pct = r["batch_1"]["percent_of_peak"]
    return f"  {r['batch_1']['gmacs_per_s']:.0f} GMAC/s" + (f" ({pct:.0f}% of peak)" if pct is not None else "")


def run_bench(
    path: Path,
    target_names: list[str],
    limits: RunLimits,
    console: Console,
    targets_file: Path | None = None,
    tune: bool = False,
    cross_check: bool = False,
) -> dict[str, dict[str, Any]]:
    """Bench ``path`` (a run directory or a model file) on each named target; returns results by target.
    ``tune`` first sweeps session settings per artifact (RUN/bench/tuning/<target>.json); a recorded sweep
    is used by later benches until the artifact changes."""
    targets = load_targets(targets_file)
    profiles = [get_target(name, targets) for name in target_names]
    is_run = path.is_dir()
    if is_run:
        read_run_manifest(path)
    environment = describe_environment()
    results: dict[str, dict[str, Any]] = {}
    costs: dict[tuple[Path, str], dict[str, Any]] = {}
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
        peak, ceiling = _peak_and_ceiling(profile, environment)
        tuning_path = _tuning_file(path, is_run, profile.name)
        tuning = json.loads(tuning_path.read_text()) if tuning_path.is_file() and not tune else {}
        if tune:
            for artifact in arts:
                console.print(f"{profile.name:<14} {artifact.label:<28} sweeping session settings ...")
                tuning[artifact.key] = entry = tune_artifact(artifact, profile)
                gain = f" ({entry['speedup']:.2f}x vs defaults)" if entry.get("speedup") else ""
                console.print(f"{'':<14} {'':<28} best: {describe_settings(entry['best'])}{gain}")
            write_json(tuning_path, tuning)
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console, transient=True
        ) as progress:
            for artifact in arts:
                entry = bench_artifact(artifact, profile, limits, progress, _tuned(tuning, artifact, console))
                source = _cost_source(artifact, path if is_run else None)
                if source is None:
                    entry["costs"] = {"unknown": f"{artifact.path.name}: no ONNX or OpenVINO graph to count MACs from"}
                else:
                    if (source, artifact.precision) not in costs:
                        costs[source, artifact.precision] = artifact_costs(source, artifact.precision)
                    entry["costs"] = costs[source, artifact.precision]
                entry["roofline"] = roofline(entry["costs"], entry, peak, artifact.precision, ceiling)
                if cross_check:
                    entry["cross_check"] = _cross_check(artifact, profile, limits, entry)
                ss = entry["single_stream"]
                console.print(
                    f"{profile.name:<14} {artifact.label:<28} p50 {ss['p50_ms']:.2f} ms  p90 {ss['p90_ms']:.2f} ms  "
                    + "  ".join(f"b{o['batch_size']} {o['images_per_s']:.0f} img/s" for o in entry["offline"])
                    + _roofline_text(entry)
                )
                entries.append(entry)
        result = {
            "target": {"name": profile.name, **{k: v for k, v in vars(profile).items() if k != "name"}},
            "limits": vars(limits),
            "peak": peak,
            "gemm_ceiling": ceiling,
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
        record_bench_summary(path, results)
    return results


def record_bench_summary(run_dir: Path, results: dict[str, dict[str, Any]]) -> None:
    """Each target's p50/p90 per artifact into the manifest's ``bench`` section (measured here or imported)."""
    summary = {
        name: {
            e["artifact"]: {"p50_ms": e["single_stream"]["p50_ms"], "p90_ms": e["single_stream"]["p90_ms"]}
            for e in r["artifacts"]
        }
        for name, r in results.items()
    }
    bench = read_run_manifest(run_dir).get("bench", {})
    bench.update(summary)
    update_manifest(run_dir, bench=bench)
