"""What to ship per target: the fastest benchmarked artifact whose checks all pass, the runner-up and why it
lost, and whether INT8 is worth it on that target at all.

Checks of an artifact: FP32 forms must match their reference (ONNX parity; the other FP32 forms' top-1
agreement with ONNX Runtime FP32 on the evaluation set); INT8 forms must have passed the export guard (top-1
drop within its tolerance), agree with their FP32 reference on the evaluation set, and lose no class by more
than ``MAX_CLASS_DROP``. Speed is the SingleStream (batch-1) p50 measured by `toolkit bench` on that target;
a runner-up whose p50 is within the larger spread of the two (interquartile range of the samples, or the
spread of the p50s of repeated rounds) is flagged as within noise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runtime.artifacts import KNOWN, REFERENCE, eval_slug

MIN_AGREEMENT = {"fp32": 0.99, "int8": 0.97}  # top-1 agreement with the FP32 reference on the evaluation set
MAX_CLASS_DROP = 0.05  # a class's accuracy may fall at most 5 points below the FP32 reference's
NOT_FASTER = 0.95  # INT8 must take under 95% of the best FP32 latency to be worth shipping


def per_class_drops(run_dir: Path, dataset: str | None) -> dict[str, float]:
    """Each evaluated artifact's worst per-class accuracy drop against its FP32 reference (points as fractions)."""
    if dataset is None:
        return {}
    base = run_dir / "eval" / eval_slug(dataset) / "artifacts"
    per_class: dict[str, dict[str, float | None]] = {}
    for key in KNOWN:
        path = base / key / "metrics.json"
        if path.is_file():
            per_class[key] = json.loads(path.read_text()).get("per_class", {})
    drops = {}
    for key, reference in REFERENCE.items():
        if key in per_class and reference in per_class:
            pairs = [(per_class[reference][c], v) for c, v in per_class[key].items() if v is not None]
            drops[key] = max((r - v for r, v in pairs if r is not None), default=0.0)
    return drops


def _failures(key: str, report: dict[str, Any], drops: dict[str, float]) -> list[str]:
    """Why ``key`` may not ship (empty: every check passed)."""
    precision = KNOWN[key][2] if key in KNOWN else "int8"
    ladder = {s["stage"]: s for s in report.get("ladder", [])}
    why = []
    if key == "onnx":
        parity = report.get("parity") or {}
        if not parity.get("passed"):
            why.append("ONNX parity check did not pass")
    elif precision == "int8":
        guard = report.get("guards", {}).get(key)
        if guard is None:
            why.append("no INT8 accuracy guard recorded")
        elif guard.get("verdict") != "PASS":
            why.append(f"guard FAIL (top-1 drop {guard.get('drop_points')} > {guard.get('tolerance_points')} points)")
    stage = ladder.get(key, {})
    agreement = stage.get("agreement")
    if agreement is not None and agreement < MIN_AGREEMENT[precision]:
        why.append(f"agrees with {stage.get('versus')} on {agreement:.1%} (< {MIN_AGREEMENT[precision]:.0%})")
    if drops.get(key, 0.0) > MAX_CLASS_DROP:
        why.append(f"a class loses {drops[key]:.1%} (> {MAX_CLASS_DROP:.0%})")
    return why


def ship_verdicts(report: dict[str, Any], drops: dict[str, float]) -> list[dict[str, Any]]:
    """One verdict per benchmarked target, from the report's latency rows, guards, parity and ladder."""
    verdicts = []
    for target in dict.fromkeys(r["target"] for r in report.get("latency", [])):
        rows = sorted((r for r in report["latency"] if r["target"] == target), key=lambda r: r["p50_ms"])
        checked = [(r, _failures(r["artifact"], report, drops)) for r in rows]
        passing = [r for r, why in checked if not why]
        verdict: dict[str, Any] = {"target": target, "ship": None, "runner_up": None, "int8_worth_it": None,
                                   "within_noise": None}  # fmt: skip
        if not passing:
            verdict["reason"] = "no artifact passes its checks: " + "; ".join(
                f"{r['label']}: {', '.join(why)}" for r, why in checked
            )
            verdicts.append(verdict)
            continue
        best = passing[0]
        precision = {r["artifact"]: KNOWN.get(r["artifact"], ("", "", "int8"))[2] for r in rows}
        fp32 = [r for r in passing if precision[r["artifact"]] == "fp32"]
        int8 = [r for r in passing if precision[r["artifact"]] == "int8"]
        if fp32 and int8:
            verdict["int8_worth_it"] = int8[0]["p50_ms"] < NOT_FASTER * fp32[0]["p50_ms"]
            if not verdict["int8_worth_it"]:
                best = fp32[0]
                verdict["reason"] = (
                    f"INT8 not worth it here: {int8[0]['label']} {int8[0]['p50_ms']:.2f} ms vs "
                    f"{fp32[0]['label']} {fp32[0]['p50_ms']:.2f} ms"
                )
        verdict["ship"] = {"artifact": best["artifact"], "label": best["label"], "p50_ms": best["p50_ms"]}
        others = [(r, why) for r, why in checked if r is not best]
        if others:
            faster = [(r, why) for r, why in others if r["p50_ms"] < best["p50_ms"]]
            r, why = faster[0] if faster else others[0]
            if why:
                lost = f"{r['p50_ms']:.2f} ms, but {', '.join(why)}"
            elif r["p50_ms"] < best["p50_ms"]:
                lost = f"{r['p50_ms']:.2f} ms, under {1 - NOT_FASTER:.0%} faster than the FP32 form: not worth INT8"
            else:
                lost = f"{r['p50_ms'] / best['p50_ms']:.2f}x slower ({r['p50_ms']:.2f} ms)"
            verdict["runner_up"] = {"artifact": r["artifact"], "label": r["label"], "p50_ms": r["p50_ms"], "why": lost}
            spreads = {"IQR": max(best.get("iqr_ms") or 0.0, r.get("iqr_ms") or 0.0),
                       "spread of the rounds' p50s": max(best.get("round_spread_ms") or 0.0,
                                                         r.get("round_spread_ms") or 0.0)}  # fmt: skip
            name, spread = max(spreads.items(), key=lambda kv: kv[1])
            verdict["within_noise"] = bool(spread) and abs(r["p50_ms"] - best["p50_ms"]) <= spread
            if verdict["within_noise"] and not why:
                verdict["runner_up"]["why"] += f"; within noise (p50s differ by less than the {name} {spread:.2f} ms)"
        verdicts.append(verdict)
    return verdicts


def describe_verdict(v: dict[str, Any]) -> str:
    """One line: what to ship on the target, and why not the runner-up."""
    if v["ship"] is None:
        return f"{v['target']}: nothing to ship ({v['reason']})"
    line = f"{v['target']}: ship {v['ship']['label']} (p50 {v['ship']['p50_ms']:.2f} ms)"
    if v.get("reason"):
        line += f"; {v['reason']}"
    if v["runner_up"]:
        line += f"; runner-up {v['runner_up']['label']}: {v['runner_up']['why']}"
    return line
