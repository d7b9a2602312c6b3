"""Achieved multiply-accumulate rate and share of the target's peak, per benchmarked artifact.

Combines an artifact's counted MACs and bytes (runtime.layer_costs) with its measured latency and the
target's peak (runtime.peaks): at batch 1 (SingleStream p50) and at the largest Offline batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.errors import ToolkitError
from runtime.layer_costs import layer_costs, summarize_costs
from runtime.peaks import percent_of_peak


def artifact_costs(model_file: Path, precision: str) -> dict[str, Any]:
    """MACs and bytes of ``model_file`` (ONNX or OpenVINO IR) at ``precision``, or {"unknown": why}."""
    try:
        return summarize_costs(layer_costs(model_file), precision)
    except ToolkitError as exc:
        return {"unknown": str(exc)}


def roofline(
    costs: dict[str, Any],
    entry: dict[str, Any],
    peak: dict[str, Any],
    precision: str,
    ceiling: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """GMAC/s achieved, % of peak and % of the measured GEMM ceiling, at batch 1 and the largest batch."""
    if "unknown" in costs:
        return {"unknown": costs["unknown"]}
    macs = costs["macs"]
    points = [("batch_1", 1, macs / (entry["single_stream"]["p50_ms"] / 1000.0) / 1e9)]
    if entry.get("offline"):
        largest = max(entry["offline"], key=lambda o: o["batch_size"])
        points.append(("largest_batch", largest["batch_size"], macs * largest["images_per_s"] / 1e9))
    out: dict[str, Any] = {"gmacs_per_image": round(macs / 1e9, 4)}
    for key, batch, rate in points:
        out[key] = {
            "batch_size": batch,
            "gmacs_per_s": round(rate, 2),
            "percent_of_peak": percent_of_peak(rate, peak, precision),
            "percent_of_gemm_ceiling": percent_of_peak(rate, ceiling or {}, precision),
        }
    if "unknown" in peak:
        out["peak"] = peak["unknown"]
    elif precision not in peak.get("gmacs", {}):
        out["peak"] = f"no {precision} peak for this target in runtime/peaks.yaml or its peak_gmacs"
    return out
