"""benchmarks/int8_table.py: the table's last line is the machine-read summary."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import statistics

import pytest
from conftest import HAVE_FASHION, REPO


def load_script():
    spec = importlib.util.spec_from_file_location("int8_table", REPO / "benchmarks" / "int8_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(size: str, variant: str, p50: float, top1: float | None, drop: float, speedup: float) -> dict:
    fixed = {"model": "resnet18", "p90": p50 * 1.1, "throughput": 100.0, "mb": 11.0, "calib_s": 3.0, "guard": None}
    return {**fixed, "size": size, "variant": variant, "top1": top1, "drop": drop, "p50": p50, "speedup": speedup}


def test_last_line_names_best_int8_speedup_at_224_and_its_drop() -> None:
    script = load_script()
    rows = [
        row("28x28", "PyTorch eager FP32", 2.0, 0.91, 0.0, 1.0),
        row("28x28", "ONNX Runtime INT8 U8S8", 0.2, 0.905, 0.5, 10.0),  # fastest at 28: not the headline
        row("224x224", "PyTorch eager FP32", 40.0, None, 0.0, 1.0),
        row("224x224", "ONNX Runtime INT8 U8S8", 10.0, None, 0.5, 4.0),
        row("224x224", "OpenVINO INT8 (NNCF)", 5.0, None, 0.1, 8.0),
        row("224x224", "OpenVINO FP32", 4.0, None, 0.0, 10.0),  # FP32: never the INT8 headline
    ]
    args = argparse.Namespace(argv=["--run", "x"], rounds=1, queries=2, batch=32)
    text = script.table(rows, args)
    assert text.splitlines()[-1] == "best int8 speedup vs torch fp32: 8.0x, top-1 drop: 0.10"
    assert re.search(r"\| resnet18 \| 224x224 \| OpenVINO INT8 \(NNCF\) \| - \| - \| 5\.00 \|", text)
    assert "| resnet18 | 28x28 | ONNX Runtime INT8 U8S8 | 90.50 | 0.50 |" in text


def test_trainer_overhead_prints_every_ratio(monkeypatch, capsys) -> None:
    spec = importlib.util.spec_from_file_location("trainer_overhead", REPO / "benchmarks" / "trainer_overhead.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["trainer_overhead.py", "--size", "16", "--batch", "4", "--steps", "2", "--rounds", "1"]
    monkeypatch.setattr("sys.argv", argv)
    module.main()
    out = capsys.readouterr().out
    assert re.search(r"engine CE vs bare loop: \d+\.\d{3}x \(goal >= 0\.95\)", out)
    for method in ("kd", "vl2lite", "pand"):
        assert re.search(rf"{method} from cache vs CE: \d+\.\d{{3}}x \(goal >= 0\.9\)", out), method


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_FASHION, reason="Fashion-MNIST not installed (scripts/get-fashion-mnist.sh)")
def test_prune_recovery_writes_a_row_per_budget(monkeypatch, capsys, tmp_path) -> None:
    spec = importlib.util.spec_from_file_location("prune_recovery", REPO / "benchmarks" / "prune_recovery.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "prune.md"
    argv = ["prune_recovery.py", "--students", "resnet18", "--macs", "0.5", "--per-class", "8", "--test-per-class", "4",
            "--epochs", "1", "--recover-epochs", "1", "--latency-size", "32", "--rounds", "1", "--queries", "1",
            "--out", str(out)]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    module.main()
    rows = [line for line in out.read_text().splitlines() if line.startswith("| resnet18 |")]
    assert len(rows) == 2 and rows[0].split("|")[2].strip() == "1.00"
    kept = float(rows[1].split("|")[2].split()[0])
    assert kept <= 0.5 and rows[1].count("|") == rows[0].count("|")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_roofline_table_gives_each_form_its_share_of_the_peak(monkeypatch, tmp_path) -> None:
    out = tmp_path / "roofline.md"
    argv = ["roofline_table.py", "--students", "mobilenetv2_100", "--size", "32", "--rounds", "1", "--queries", "3",
            "--out", str(out)]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    _load("roofline_table").main()
    rows = [line.strip("| ").split(" | ") for line in out.read_text().splitlines() if line.startswith("| mobilenetv2")]
    assert [r[1] for r in rows] == ["ONNX Runtime FP32", "ONNX Runtime INT8 U8S8", "OpenVINO FP32",
                                    "OpenVINO INT8 (NNCF)"]  # fmt: skip
    for r in rows:
        macs, p50, rate, pct = float(r[2]), float(r[6]), float(r[7]), r[8]
        assert rate == pytest.approx(macs / (p50 / 1000), rel=0.01, abs=1)  # GMAC/s = GMAC / p50
        assert re.fullmatch(r"\d+%", pct), pct  # this CPU is in runtime/peaks.yaml
        assert re.fullmatch(r"\d+% / \d+%", r[5])  # MobileNetV2 has depthwise layers
    fp32, int8 = rows[0], rows[1]
    assert float(int8[3]) < float(fp32[3])  # INT8 moves fewer bytes


@pytest.mark.slow
def test_harness_overhead_compares_with_benchmark_app(monkeypatch, tmp_path) -> None:
    from runtime.cross_check import find_tool

    if find_tool("benchmark_app") is None:
        pytest.skip("benchmark_app (OpenVINO) not on PATH")
    out = tmp_path / "harness.md"
    argv = ["harness_overhead.py", "--size", "16", "--rounds", "1", "--seconds", "1", "--out", str(out)]
    monkeypatch.setattr("sys.argv", argv)
    _load("harness_overhead").main()
    rows = [line.strip("| ").split(" | ") for line in out.read_text().splitlines() if line.startswith("| OpenVINO")]
    assert len(rows) == 10
    base = {r[0]: float(r[2]) for r in rows if r[1] == "benchmark_app f32"}
    for r in rows:
        assert float(r[3]) == pytest.approx(float(r[2]) / base[r[0]], abs=0.011)


def test_qad_seed_table_by_hand() -> None:
    """benchmarks/qad_recovery.py: drops over seeds as mean +- std, the share of PTQ's mean drop QAD recovers."""
    module = _load("qad_recovery")
    ort, trt, ov = (module.FORMS[k] for k in ("ONNX Runtime U8S8", "TensorRT S8S8", "OpenVINO"))
    runs = [{ort[0]: 0.70, ort[1]: 0.67, ort[2]: 0.70, trt[1]: 0.69, trt[2]: 0.695, ov[0]: 0.70, ov[1]: 0.698,
             ov[2]: 0.70},
            {ort[0]: 0.72, ort[1]: 0.70, ort[2]: 0.715, trt[1]: 0.70, trt[2]: 0.72, ov[0]: 0.72, ov[1]: 0.72,
             ov[2]: 0.72}]  # fmt: skip
    rows = {line.split("|")[2].strip(): line for line in module.seed_table({"m": runs})[2:]}
    # ORT: PTQ drops 3 and 2 points (2.50 +- 0.50), QAD 0 and 0.5 (0.25 +- 0.25): (2.5 - 0.25) / 2.5 = 90%
    assert rows["ONNX Runtime U8S8"] == "| m | ONNX Runtime U8S8 | 2 | 2.50 +- 0.50 | 0.25 +- 0.25 | 90% |"
    # TensorRT: PTQ 1 and 2 (1.50), QAD 0.5 and 0 (0.25): 83%
    assert rows["TensorRT S8S8"].endswith("| 1.50 +- 0.50 | 0.25 +- 0.25 | 83% |")
    assert rows["OpenVINO"].endswith("| PTQ drop < 1 pt |")  # nothing to recover


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_FASHION, reason="Fashion-MNIST not installed (scripts/get-fashion-mnist.sh)")
def test_guard_criteria_measures_every_form_on_both_splits(monkeypatch, tmp_path) -> None:
    module = _load("guard_criteria")
    out = tmp_path / "guard.md"
    argv = ["guard_criteria.py", "--students", "resnet18", "--seeds", "0", "--per-class", "10", "--test-per-class",
            "4", "--epochs", "1", "--calib-size", "8", "--forms", "u8s8", "u8s8-noise", "--out", str(out)]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    module.main()
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| resnet18 |")]
    assert len(rows) == 4 and {r[3].strip() for r in rows} == {"held-out", "test"}  # 2 INT8 forms x 2 splits
    assert {r[2].strip() for r in rows} == {
        "ONNX Runtime U8S8 (8 train images)",
        "ONNX Runtime U8S8 (noise, not images)",
    }
    for r in rows:
        assert 0.0 <= float(r[6]) <= 100.0 and float(r[9]) >= 0.0
        assert r[10].strip() == "PASS" or r[10].strip().startswith("FAIL: ")


@pytest.mark.slow
def test_onnxslim_effect_prints_a_row_per_model(monkeypatch, tmp_path) -> None:
    module = _load("onnxslim_effect")
    out = tmp_path / "slim.md"
    monkeypatch.setattr("sys.argv", ["onnxslim_effect.py", "--models", "resnet10t", "--size", "32", "--rounds", "1",
                                     "--queries", "1", "--out", str(out)])  # fmt: skip
    module.main()
    (row,) = [line for line in out.read_text().splitlines() if line.startswith("| resnet10t |")]
    assert re.search(r"\| (\d+) -> \1 \(INT8 (\d+) -> \2\) \| 0\.0e\+00 \| [\d.]+ / [\d.]+ \([\d.]+\) \|", row), row


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_FASHION, reason="Fashion-MNIST not installed (scripts/get-fashion-mnist.sh)")
def test_kd_gain_trains_a_teacher_then_every_method_and_ends_with_the_gain(monkeypatch, tmp_path, capsys) -> None:
    module = _load("kd_gain")
    out = tmp_path / "kd.md"
    argv = ["kd_gain.py", "--teacher-model", "resnet18", "--student", "resnet10t", "--per-class", "6",
            "--test-per-class", "3", "--few-shot", "3", "--epochs", "1", "--teacher-epochs", "1", "--crops", "2",
            "--seeds", "0", "1", "--work", str(tmp_path / "work"), "--out", str(out)]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    module.main()
    text = out.read_text()
    rows = {r.split("|")[1].strip(): r.split("|")[2:-1] for r in text.splitlines() if r.startswith("| ")}
    few = rows["3 labels/class (KD: the teacher's outputs on every image, no labels)"]
    assert len(rows["all labels"]) == 3 and len(few) == 3 and few[2].strip() == "-"
    # the last line is the per-seed KD minus w/o KD difference, from the runs' own metrics
    tops = {}
    for method in ("ce", "kd"):
        tops[method] = [json.loads((tmp_path / "work" / f"full-{method}-{s}" / "metrics.json").read_text())["test_top1"]
                        for s in (0, 1)]  # fmt: skip
    gains = [100 * (k - c) for k, c in zip(tops["kd"], tops["ce"])]
    mean, std = statistics.mean(gains), statistics.stdev(gains)
    assert text.strip().splitlines()[-1] == f"kd gain vs w/o KD: {mean:.2f} +- {std:.2f}"
    assert (tmp_path / "work" / "fewkd-kd-0" / "config.yaml").is_file()  # few-shot KD ran on the whole subset
