"""A run's report as data: fidelity ladder, latency per target, sizes, calibration and guard decisions,
training curves. Built from the files a run directory holds (manifest, eval/ logits, bench/ JSON); numpy
only, so a device can build it too. ``runtime.report_render`` turns it into Markdown, HTML and plots.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from runtime.artifacts import KNOWN, REFERENCE, UNPRUNED, eval_slug, read_run_manifest, run_artifacts
from runtime.errors import ToolkitError
from runtime.fidelity import compare_logits
from runtime.verdict import eval_fidelity, ship_verdicts

TEACHER_MISSING = "no teacher outputs for this dataset in the run (cross-entropy-only run, or teacher not cached)"


def _pick_dataset(run_dir: Path, evaluations: dict[str, Any], dataset: str | None) -> str | None:
    base = run_dir / "eval"
    names = [n for n in evaluations if any((base / eval_slug(n) / s / "logits.npy").is_file() for s in ("", "teacher"))]
    if dataset is not None:
        if dataset not in evaluations:
            raise ToolkitError(f"{run_dir}: no evaluation on '{dataset}'; have: {', '.join(evaluations) or 'none'}")
        return dataset
    tests = [n for n in names if "test" in n]
    return (tests or names or [None])[0]


def fidelity_ladder(run_dir: Path, dataset: str, teacher_name: str | None = None) -> list[dict[str, Any]]:
    """teacher -> PyTorch student (-> pruned student) -> ONNX FP32 -> each INT8 artifact: top-1, agreement and KL
    vs the stage before."""
    base = run_dir / "eval" / eval_slug(dataset)
    stages: list[dict[str, Any]] = []
    teacher = base / "teacher" / "logits.npy"
    label = f"Teacher {teacher_name}" if teacher_name else "Teacher"
    stages.append({"stage": "teacher", "label": label, "available": teacher.is_file()})
    if not teacher.is_file():
        stages[-1]["reason"] = TEACHER_MISSING
    logits: dict[str, np.ndarray] = {}
    files = {"teacher": teacher, UNPRUNED: base / UNPRUNED / "logits.npy", "student": base / "logits.npy"}
    files.update({key: base / "artifacts" / key / "logits.npy" for key in KNOWN})
    pruned = (base / UNPRUNED / "logits.npy").is_file()
    for key, path in files.items():
        if not path.is_file():
            continue
        logits[key] = np.load(path, allow_pickle=False)
        metrics = json.loads((path.parent / "metrics.json").read_text())
        if key == "teacher":
            stages[0].update(top1=metrics["top1"])
            if (path.parent / "indices.npy").is_file():
                stages[0]["label"] += f" (on {metrics['n']:,} of the images)"
            continue
        label = _LABELS[key] if key in _LABELS else KNOWN[key][0]
        if key == "student" and pruned:
            label += " (pruned)"
        previous = {"student": UNPRUNED if pruned else "teacher", UNPRUNED: "teacher"}.get(key)
        previous = previous or REFERENCE.get(key, "student")
        stage = {"stage": key, "label": label, "available": True, "top1": metrics["top1"]}
        if previous in logits and logits[previous].shape == logits[key].shape:
            stage.update(versus=previous, **compare_logits(logits[previous], logits[key]))
        elif previous == "teacher" and (same := _on_teacher_images(base / "teacher", logits[key])) is not None:
            subset, labels = same  # the teacher saw a subset (--limit): compare on exactly those images
            stage.update(versus=previous, **compare_logits(logits[previous], subset))
            top1_there = float((subset.argmax(1) == labels).mean())
            stage["same_images"] = {"n": len(labels), "of": len(logits[key]), "top1": top1_there}
        elif previous in logits:
            stage["note"] = f"not compared with {previous}: evaluated on different image sets"
        stages.append(stage)
    return stages


_LABELS = {"student": "PyTorch student FP32", UNPRUNED: "PyTorch student FP32 before pruning"}


def _on_teacher_images(folder: Path, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The rows of ``logits`` for the images the teacher was evaluated on, and their labels; None if not saved."""
    if not (folder / "indices.npy").is_file() or not (folder / "labels.npy").is_file():
        return None
    indices = np.load(folder / "indices.npy", allow_pickle=False)
    if len(indices) and int(indices.max()) >= len(logits):
        return None
    return logits[indices], np.load(folder / "labels.npy", allow_pickle=False)


def _iqr(samples: list[float]) -> float | None:
    """Spread of the batch-1 latencies (p75 - p25, ms): what a difference must exceed to be more than noise."""
    if len(samples) < 4:
        return None
    q25, q75 = np.percentile(samples, [25, 75])
    return float(q75 - q25)


def _imported(result: dict[str, Any], single_stream: dict[str, Any]) -> dict[str, Any] | None:
    """Where a result read back from a device (toolkit bench --import) was measured, and how it was checked."""
    imported, env = result.get("imported"), result["environment"]
    if not imported:
        return None
    device = next((env[k] for k in ("device", "board", "hostname") if env.get(k)), None)
    return {"from": imported.get("source"), "device": device, "verified": imported.get("verified"),
            "note": single_stream.get("note")}  # fmt: skip


def latency_table(run_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted((run_dir / "bench").glob("*.json")):
        result = json.loads(path.read_text())
        for entry in result["artifacts"]:
            ss = entry["single_stream"]
            keys = ("count", "min_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms")
            stats = {k: ss.get(k) for k in keys}
            if stats["p50_ms"] is None:  # a device tool that reports no percentiles (LiteRT's benchmark_model)
                stats["p50_ms"] = stats["mean_ms"]
            rows.append(
                {
                    "target": result["target"]["name"],
                    "artifact": entry["artifact"],
                    "label": entry["label"] + (" (mean: no percentiles)" if ss.get("p50_ms") is None else ""),
                    **stats,
                    "imported": _imported(result, ss),
                    "throughput": {str(o["batch_size"]): o["images_per_s"] for o in entry["offline"]},
                    "samples_ms": ss.get("samples_ms", []),
                    "iqr_ms": _iqr(ss.get("samples_ms", [])),
                    "round_spread_ms": ss.get("round_spread_ms"),
                    "rounds": ss.get("rounds", 1),
                    "load_s": entry.get("load_s"),
                    "memory": entry.get("memory", {}),
                    "energy": entry.get("energy", {}),
                    "cross_check": entry.get("cross_check", {}),
                    "session": entry.get("session", {}),
                    "costs": entry.get("costs", {}),
                    "roofline": entry.get("roofline", {}),
                }
            )
    return rows


def target_peaks(run_dir: Path) -> dict[str, Any]:
    """Per benchmarked target: its peak (or why unknown) and the measured GEMM ceiling."""
    out = {}
    for path in sorted((run_dir / "bench").glob("*.json")):
        result = json.loads(path.read_text())
        out[result["target"]["name"]] = {k: result.get(k) for k in ("peak", "gemm_ceiling")}
    return out


def tuning_sweeps(run_dir: Path) -> dict[str, Any]:
    """The session-settings sweeps recorded by `toolkit bench --tune`, by target then artifact."""
    return {p.stem: json.loads(p.read_text()) for p in sorted((run_dir / "bench" / "tuning").glob("*.json"))}


def _environments(run_dir: Path) -> dict[str, Any]:
    return {p.stem: json.loads(p.read_text())["environment"] for p in sorted((run_dir / "bench").glob("*.json"))}


def build_report(run_dir: Path, dataset: str | None = None) -> dict[str, Any]:
    """Everything the report shows, as JSON-ready data."""
    manifest = read_run_manifest(run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    history = []
    if (run_dir / "metrics.jsonl").is_file():
        history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    final = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    evaluations = manifest.get("evaluations", {})
    chosen = _pick_dataset(run_dir, evaluations, dataset)
    exports = manifest.get("exports", {})
    guards = {
        key: {"format": entry.get("format"), **entry["guard"]}
        for key, entry in exports.items()
        if isinstance(entry, dict) and "guard" in entry
    }
    engine = exports.get("int8_tensorrt", {}).get("engine")
    report = {
        "run": {
            "name": config.get("name", run_dir.name),
            "directory": str(run_dir),
            "student": (config.get("student") or {}).get("name"),
            "method": (config.get("distill") or {}).get("method") or "cross-entropy (no KD)",
            "input_size": (config.get("preprocess") or {}).get("input_size"),
        },
        "training": {"history": history, "final": final},
        "dataset": chosen,
        "ladder": fidelity_ladder(run_dir, chosen, evaluations.get(chosen, {}).get("teacher", {}).get("teacher"))
        if chosen
        else [],
        "latency": latency_table(run_dir),
        "peaks": target_peaks(run_dir),
        "tuning": tuning_sweeps(run_dir),
        "sizes": [{"artifact": a.key, "label": a.label, "bytes": a.bytes} for a in run_artifacts(run_dir, manifest)],
        "parity": exports.get("onnx", {}).get("parity"),
        "calibration": exports.get("calibration"),
        "guards": guards,
        "sensitivity": {
            key: entry["sensitivity"]
            for key, entry in exports.items()
            if isinstance(entry, dict) and "sensitivity" in entry
        },
        "tensorrt_engine": engine,
        "environments": _environments(run_dir),
        "code": {k: manifest.get("environment", {}).get(k) for k in ("git_commit", "git_dirty")},
    }
    measured = eval_fidelity(run_dir, chosen)
    for stage in report["ladder"]:
        if stage["stage"] in measured and stage.get("versus") == REFERENCE.get(stage["stage"]):
            f = measured[stage["stage"]].summary()
            stage.update({k: f[k] for k in ("worst_class", "worst_class_drop_points", "worst_significant_class")})
    report["verdicts"] = ship_verdicts(report, measured)
    return report
