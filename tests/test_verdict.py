"""What to ship per target: the fastest artifact whose checks pass, the runner-up and why, INT8 not worth it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.verdict import describe_verdict, per_class_drops, ship_verdicts


def report(p50: dict[str, float], guard: str = "PASS", agreement: float = 0.99, parity: bool = True,
           target: str = "ort-cpu-1t") -> dict:  # fmt: skip
    labels = {"onnx": "ONNX Runtime FP32", "int8_onnxruntime": "ONNX Runtime INT8 U8S8"}
    return {
        "latency": [{"target": target, "artifact": k, "label": labels[k], "p50_ms": v} for k, v in p50.items()],
        "guards": {"int8_onnxruntime": {"verdict": guard, "drop_points": 2.0, "tolerance_points": 0.5}},
        "parity": {"passed": parity},
        "ladder": [
            {"stage": "onnx", "agreement": 1.0, "versus": "student"},
            {"stage": "int8_onnxruntime", "agreement": agreement, "versus": "onnx"},
        ],  # fmt: skip
    }


def test_fastest_passing_artifact_ships_and_the_runner_up_is_explained() -> None:
    (v,) = ship_verdicts(report({"onnx": 10.0, "int8_onnxruntime": 4.0}), {})
    assert v["ship"]["artifact"] == "int8_onnxruntime" and v["int8_worth_it"] is True
    assert v["runner_up"]["artifact"] == "onnx" and v["runner_up"]["why"] == "2.50x slower (10.00 ms)"
    assert describe_verdict(v).startswith("ort-cpu-1t: ship ONNX Runtime INT8 U8S8 (p50 4.00 ms)")


@pytest.mark.parametrize(
    ("kwargs", "drops", "why"),
    [
        ({"guard": "FAIL"}, {}, "guard FAIL (top-1 drop 2.0 > 0.5 points)"),
        ({"agreement": 0.9}, {}, "agrees with onnx on 90.0% (< 97%)"),
        ({}, {"int8_onnxruntime": 0.08}, "a class loses 8.0% (> 5%)"),
    ],
)
def test_a_faster_artifact_that_fails_a_check_loses_and_says_why(kwargs: dict, drops: dict, why: str) -> None:
    (v,) = ship_verdicts(report({"onnx": 10.0, "int8_onnxruntime": 4.0}, **kwargs), drops)
    assert v["ship"]["artifact"] == "onnx"
    assert v["runner_up"]["artifact"] == "int8_onnxruntime" and v["runner_up"]["why"] == f"4.00 ms, but {why}"


def test_int8_that_is_not_faster_is_not_worth_shipping() -> None:
    (v,) = ship_verdicts(report({"onnx": 10.0, "int8_onnxruntime": 9.8}), {})
    assert v["ship"]["artifact"] == "onnx" and v["int8_worth_it"] is False
    assert v["reason"].startswith("INT8 not worth it here: ONNX Runtime INT8 U8S8 9.80 ms vs ONNX Runtime FP32 10.00")
    assert "not worth INT8" in v["runner_up"]["why"]
    (v,) = ship_verdicts(report({"onnx": 10.0, "int8_onnxruntime": 12.0}), {})  # slower: same verdict
    assert v["ship"]["artifact"] == "onnx" and v["runner_up"]["why"] == "1.20x slower (12.00 ms)"


def test_nothing_passes() -> None:
    (v,) = ship_verdicts(report({"onnx": 10.0, "int8_onnxruntime": 4.0}, guard="FAIL", parity=False), {})
    assert v["ship"] is None and "ONNX parity check did not pass" in v["reason"] and "guard FAIL" in v["reason"]
    assert describe_verdict(v).startswith("ort-cpu-1t: nothing to ship")


def test_per_class_drop_against_the_fp32_reference(tmp_path: Path) -> None:
    base = tmp_path / "eval" / "test" / "artifacts"
    for key, per_class in {"onnx": {"a": 0.9, "b": 0.8, "c": None},
                           "int8_onnxruntime": {"a": 0.92, "b": 0.71, "c": None}}.items():  # fmt: skip
        (base / key).mkdir(parents=True)
        (base / key / "metrics.json").write_text(json.dumps({"per_class": per_class}))
    assert per_class_drops(tmp_path, "test") == {"int8_onnxruntime": pytest.approx(0.09)}
    assert per_class_drops(tmp_path, None) == {}


def test_a_runner_up_within_the_spread_is_flagged_as_noise() -> None:
    r = report({"onnx": 10.0, "int8_onnxruntime": 4.0})
    r["latency"][0]["iqr_ms"], r["latency"][1]["iqr_ms"] = 0.5, 0.2
    (v,) = ship_verdicts(r, {})
    assert v["within_noise"] is False and "noise" not in v["runner_up"]["why"]
    r["latency"][0]["p50_ms"] = 4.3  # FP32 4.3 ms vs INT8 4.0: 0.3 ms apart, IQR 0.5 ms
    r["latency"][0]["iqr_ms"] = 0.5
    (v,) = ship_verdicts(r, {})
    assert v["within_noise"] is True and "within noise" in v["runner_up"]["why"]


def test_the_spread_of_repeated_rounds_also_counts_as_noise() -> None:
    r = report({"onnx": 4.3, "int8_onnxruntime": 4.0})  # INT8 0.3 ms faster; samples tight, rounds apart
    r["latency"][0].update(iqr_ms=0.05, round_spread_ms=0.4)
    r["latency"][1].update(iqr_ms=0.05, round_spread_ms=0.1)
    (v,) = ship_verdicts(r, {})
    assert v["within_noise"] is True and "spread of the rounds' p50s 0.40 ms" in v["runner_up"]["why"]
    r["latency"][0]["round_spread_ms"] = 0.2
    (v,) = ship_verdicts(r, {})
    assert v["within_noise"] is False
