"""What to ship per target: the fastest benchmarked artifact whose checks all pass, the runner-up and why it
lost, and whether INT8 is worth it on that target at all.

Checks of an artifact: FP32 forms must match their reference (ONNX parity; the other FP32 forms' top-1
agreement with their reference on the evaluation set, at least ``MIN_FP32_AGREEMENT``); INT8 forms must have
passed the export guard on the held-out split and meet the guard's other criteria (agreement, significant class
drop, KL: runtime/fidelity.py) against their FP32 reference on the evaluation set too; the top-1 drop there is
shown in the ladder, not re-judged. Speed is the SingleStream (batch-1) p50 measured by `toolkit bench` on that
target; a runner-up whose p50 is within the larger spread of the two (interquartile range of the samples, or the
spread of the p50s of repeated rounds) is flagged as within noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from runtime.artifacts import KNOWN, REFERENCE, eval_slug
from runtime.fidelity import Fidelity, GuardCriteria

MIN_FP32_AGREEMENT = 0.99  # an FP32 form's top-1 agreement with its FP32 reference on the evaluation set
NOT_FASTER = 0.95  # INT8 must take under 95% of the best FP32 latency to be worth shipping


def eval_fidelity(run_dir: Path, dataset: str | None) -> dict[str, Fidelity]:
    """Each evaluated artifact measured against its reference (runtime/artifacts.REFERENCE) on the evaluation
    set, from the logits and labels `toolkit eval` saved (an evaluation from before labels were saved: none)."""
    if dataset is None:
        return {}
    base = run_dir / "eval" / eval_slug(dataset)
    folders = {key: base / "artifacts" / key for key in KNOWN} | {"student": base}
    out = {}
    for key, reference in REFERENCE.items():
        cand, ref = folders.get(key), folders.get(reference)
        files = [cand / "logits.npy", ref / "logits.npy", cand / "labels.npy"] if cand and ref else []
        if files and all(f.is_file() for f in files):
            logits = [np.load(f, allow_pickle=False) for f in files]
            if logits[0].shape == logits[1].shape and len(logits[2]) == len(logits[0]):
                out[key] = Fidelity.measure(logits[1], logits[0], logits[2])
    return out


def _failures(key: str, report: dict[str, Any], measured: dict[str, Fidelity]) -> list[str]:
    """Why ``key`` may not ship (empty: every check passed)."""
    precision = KNOWN[key][2] if key in KNOWN else "int8"
    stage = {s["stage"]: s for s in report.get("ladder", [])}.get(key, {})
    agreement = measured[key].agreement if key in measured else stage.get("agreement")
    why = []
    if key == "onnx":
        parity = report.get("parity") or {}
        if not parity.get("passed"):
            why.append("ONNX parity check did not pass")
    elif precision == "int8":
        guard = report.get("guards", {}).get(key)
        if guard is None:
            why.append("no INT8 accuracy guard recorded")
            return why
        if guard.get("verdict") != "PASS":
            said = "; ".join(guard.get("failures") or [])
            said = said or f"top-1 drop {guard.get('drop_points')} > {guard.get('tolerance_points')} points"
            why.append(f"guard FAIL ({said})")
        criteria = GuardCriteria.from_dict(guard)
        if key in measured:
            why += [f"on the evaluation set: {w}" for w in criteria.failures(measured[key], top1=False)]
        elif agreement is not None and agreement * 100 < criteria.min_agreement_pct:
            why.append(f"agrees with {stage.get('versus')} on {agreement:.1%} (< {criteria.min_agreement_pct:g}%)")
        return why
    if agreement is not None and agreement < MIN_FP32_AGREEMENT:
        why.append(f"agrees with {stage.get('versus')} on {agreement:.1%} (< {MIN_FP32_AGREEMENT:.0%})")
    return why


def ship_verdicts(report: dict[str, Any], measured: dict[str, Fidelity]) -> list[dict[str, Any]]:
    """One verdict per benchmarked target, from the report's latency rows, guards, parity and ladder."""
    verdicts = []
    for target in dict.fromkeys(r["target"] for r in report.get("latency", [])):
        rows = sorted((r for r in report["latency"] if r["target"] == target), key=lambda r: r["p50_ms"])
        checked = [(r, _failures(r["artifact"], report, measured)) for r in rows]
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
