"""What to ship per target: the fastest artifact whose checks pass, the runner-up and why, INT8 not worth it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.fidelity import Fidelity
from runtime.verdict import describe_verdict, eval_fidelity, ship_verdicts


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
        (
            {},
            {"int8_onnxruntime": "class"},
            "on the evaluation set: class 1 drops 20.00 > 5 points (20 of its 100 images lost, 0 gained)",
        ),
        ({}, {"int8_onnxruntime": "agreement"}, "on the evaluation set: agreement with FP32 96.00% < 97%"),
    ],
)
def test_a_faster_artifact_that_fails_a_check_loses_and_says_why(kwargs: dict, drops: dict, why: str) -> None:
    measured = {key: _measured(kind) for key, kind in drops.items()}
    (v,) = ship_verdicts(report({"onnx": 10.0, "int8_onnxruntime": 4.0}, **kwargs), measured)
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


def _measured(kind: str) -> Fidelity:
    """1,000 images (900 of class 0, 100 of class 1), all right in FP32 but 40 of class 0 (called class 2).
    "class": INT8 gets 20 of class 1 wrong (a 20-point class drop, 98% agreement); "agreement": INT8 calls the 40
    class 1 instead (as wrong as before: 96% agreement, no class drop)."""
    labels = np.repeat([0, 1], [900, 100])
    reference = np.eye(3)[labels]
    reference[:40] = np.eye(3)[2]
    candidate = reference.copy()
    if kind == "class":
        candidate[900:920] = np.eye(3)[0]
    else:
        candidate[:40] = np.eye(3)[1]
    return Fidelity.measure(reference, candidate, labels)


def test_eval_fidelity_pairs_each_artifact_with_its_reference(tmp_path: Path) -> None:
    base = tmp_path / "eval" / "test" / "artifacts"
    labels = np.array([0, 0, 1, 1])
    logits = {"onnx": np.eye(2)[[0, 0, 1, 1]], "int8_onnxruntime": np.eye(2)[[0, 1, 1, 1]]}
    for key, value in logits.items():
        (base / key).mkdir(parents=True)
        np.save(base / key / "logits.npy", value)
        np.save(base / key / "labels.npy", labels)
    measured = eval_fidelity(tmp_path, "test")
    assert set(measured) == {"int8_onnxruntime"}  # onnx's reference (the PyTorch student) was not evaluated
    f = measured["int8_onnxruntime"]
    assert f.agreement == 0.75 and f.classes == {0: (2, 1, 0), 1: (2, 0, 0)} and f.worst_class == 0
    (base / "int8_onnxruntime" / "labels.npy").unlink()  # an evaluation from before labels were saved
    assert eval_fidelity(tmp_path, "test") == {} and eval_fidelity(tmp_path, None) == {}


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
