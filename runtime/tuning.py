"""A short measured sweep of session settings per artifact and target, best batch-1 latency kept.

Greedy, one setting at a time (the order of ``SWEEP``): the best value so far is the base for the next
setting. Candidates of a step are timed in interleaved rounds, so machine noise hits them alike. A setting
that changes the outputs (beyond float round-off) is rejected; one the engine refuses is recorded with why,
and the sweep goes on. Threads stay the target's: they define the target. The chosen settings and the base
are finally timed head to head, and that gives the reported gain.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from runtime.classifier import Classifier
from runtime.errors import ToolkitError

# backend -> [(setting, values to try)]; the first value of each is the engine's default (None: unset)
SWEEP: dict[str, list[tuple[str, list[Any]]]] = {
    "onnxruntime": [
        ("static_batch", [None, 1]),
        ("graph_optimization", [None, "extended", "basic"]),
        ("io_binding", [None, True]),
        ("allow_spinning", [None, False]),
    ],
    "openvino": [
        ("static_batch", [None, 1]),
        ("performance_hint", [None, "LATENCY", "THROUGHPUT"]),
        ("num_streams", [None, 1]),
        ("cpu_pinning", [None, True, False]),
    ],
    # NCNN's Winograd convolutions cost a ResNet-18 ~15 ms per image at 28-56 px on this CPU (2.8 ms without).
    "ncnn": [("winograd", [None, False])],
}
OUTPUT_TOLERANCE = 1e-3  # relative to max(1, |logit|): what the ONNX parity check allows

Opener = Callable[[dict[str, Any]], Classifier]


def _time_round(run: Callable[[np.ndarray], object], x: np.ndarray, queries: int) -> list[float]:
    out = []
    for _ in range(queries):
        t0 = time.perf_counter()
        run(x)
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def _step(
    candidates: list[dict[str, Any]], opener: Opener, x: np.ndarray, reference: np.ndarray, rounds: int, queries: int
) -> list[dict[str, Any]]:
    """Time every candidate in interleaved rounds; one row each (p50/p90 or why it was not timed)."""
    rows: list[dict[str, Any]] = []
    sessions: list[Classifier | None] = []
    for settings in candidates:
        row: dict[str, Any] = {"settings": settings}
        try:
            session = opener(settings)
            out = session.run(x)
            scale = max(1.0, float(np.abs(reference).max()))
            diff = float(np.abs(out - reference).max())
            if diff > OUTPUT_TOLERANCE * scale:
                row["status"] = f"rejected: changes the logits by up to {diff:.3g}"
                session = None
            else:
                _time_round(session.run, x, queries)  # warm-up
        except (ToolkitError, RuntimeError, ValueError) as exc:
            row["status"] = f"failed: {str(exc).splitlines()[0][:200]}"
            session = None
        sessions.append(session)
        rows.append(row)
    samples: list[list[float]] = [[] for _ in candidates]
    for _ in range(rounds):
        for i, session in enumerate(sessions):
            if session is not None:
                samples[i] += _time_round(session.run, x, queries)
    for row, s in zip(rows, samples):
        if s:
            row.update(status="ok", p50_ms=round(float(np.median(s)), 4), p90_ms=round(float(np.percentile(s, 90)), 4))
    return rows


def sweep_settings(
    backend: str, opener: Opener, x: np.ndarray, base: dict[str, Any], rounds: int = 5, queries: int = 40
) -> dict[str, Any]:
    """Greedy sweep from ``base`` (the target's own settings); returns the best settings and every row."""
    if backend not in SWEEP:
        return {"best": dict(base), "rows": [], "note": f"no session settings to sweep for {backend}"}
    reference = opener(dict(base)).run(x)
    best = dict(base)
    rows: list[dict[str, Any]] = []
    default_p50 = None
    for key, values in SWEEP[backend]:
        if key in base:
            continue  # the target fixes it
        candidates = []
        for value in values:
            settings = {k: v for k, v in best.items() if k != key}
            if value is not None:
                settings[key] = value
            candidates.append(settings)
        step = _step(candidates, opener, x, reference, rounds, queries)
        for row in step:
            row["step"] = key
        rows += step
        timed = [r for r in step if r["status"] == "ok"]
        if default_p50 is None and timed and step[0]["status"] == "ok":
            default_p50 = step[0]["p50_ms"]
        if timed:
            best = dict(min(timed, key=lambda r: r["p50_ms"])["settings"])
    # The gain is measured head to head (interleaved, twice the rounds): steps ran at different moments of a
    # noisy machine, so comparing the first step's default with the last step's best would mix in drift.
    final = _step([dict(base), best], opener, x, reference, 2 * rounds, queries) if best != base else []
    for row in final:
        row["step"] = "final"
    rows += final
    default_p50 = final[0].get("p50_ms") if final else default_p50
    best_p50 = final[1].get("p50_ms") if final else default_p50
    return {
        "best": best,
        "base": dict(base),
        "default_p50_ms": default_p50,
        "best_p50_ms": best_p50,
        "speedup": round(default_p50 / best_p50, 3) if default_p50 and best_p50 else None,
        "rows": rows,
    }
