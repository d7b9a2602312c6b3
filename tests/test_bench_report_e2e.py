"""End to end on a tiny real run: export every artifact, eval them all, bench on the CPU targets, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_image_folder, write_recipe
from typer.testing import CliRunner

from toolkit.cli import app

runner = CliRunner()
FAST = ["--min-duration", "0", "--min-queries", "5", "--warmup", "1"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("bench")
    data = write_image_folder(tmp / "data", per_class=20)
    recipe = write_recipe(tmp / "r.yaml", data, epochs=1)
    run = tmp / "run"
    for args in (["train", str(recipe), "--out", str(run)], ["export", str(run), "--int8", "--backend", "all",
                 "--calib-size", "30", "--held-out-images", "40"]):  # fmt: skip
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
    return run, data


@pytest.mark.slow
def test_eval_bench_report_of_every_artifact(exported: tuple[Path, Path]) -> None:
    run, data = exported
    res = runner.invoke(app, ["eval", str(run), "--data", str(data), "--artifact", "all"])
    assert res.exit_code == 0, res.output
    keys = ["onnx", "int8_onnxruntime", "int8_tensorrt", "openvino", "int8_openvino"]
    arts = json.loads((run / "manifest.json").read_text())["evaluations"]["data"]["artifacts"]
    assert list(arts) == keys
    assert arts["onnx"]["agreement_with_student"] == 1.0  # FP32 ONNX predicts what PyTorch predicts
    res = runner.invoke(
        app, ["bench", str(run), "-t", "ort-cpu-1t", "-t", "openvino-cpu", "--tune", "--cross-check", *FAST]
    )
    assert res.exit_code == 0, res.output
    ort = json.loads((run / "bench" / "ort-cpu-1t.json").read_text())
    for target in ("ort-cpu-1t", "openvino-cpu"):  # the sweep's choice is what was measured
        tuned = json.loads((run / "bench" / "tuning" / f"{target}.json").read_text())
        measured = json.loads((run / "bench" / f"{target}.json").read_text())["artifacts"]
        assert [a["session"] for a in measured] == [tuned[a["artifact"]]["best"] for a in measured]
        assert all(len(tuned[a["artifact"]]["rows"]) >= 8 for a in measured)
    assert ort["artifacts"][1]["costs"]["precision"] == "int8" and ort["artifacts"][1]["costs"]["macs"] > 0
    assert ort["artifacts"][0]["costs"]["macs"] == ort["artifacts"][1]["costs"]["macs"]
    assert ort["artifacts"][1]["roofline"]["batch_1"]["gmacs_per_s"] > 0
    assert "gmacs" in ort["gemm_ceiling"] and ("gmacs" in ort["peak"] or "unknown" in ort["peak"])
    assert all(a["load_s"] > 0 and a["memory"]["peak_rss_mb"] > 0 and a["energy"] for a in ort["artifacts"])
    ov_check = json.loads((run / "bench" / "openvino-cpu.json").read_text())["artifacts"][1]["cross_check"]
    assert ov_check["tool"] == "benchmark_app" and ov_check["p50_ms"] > 0 and ov_check["ours_over_tool"] > 0
    assert [a["artifact"] for a in ort["artifacts"]] == ["onnx", "int8_onnxruntime"]
    assert ort["artifacts"][0]["pinned_cpus"] == [min(ort["artifacts"][0]["pinned_cpus"])]
    assert [o["batch_size"] for o in ort["artifacts"][0]["offline"]] == [1, 8, 32]
    assert ort["environment"]["cpu"]["logical_cores"] >= 1 and "onnxruntime" in ort["environment"]["packages"]
    ov = json.loads((run / "bench" / "openvino-cpu.json").read_text())
    assert [a["artifact"] for a in ov["artifacts"]] == ["openvino", "int8_openvino"]
    res = runner.invoke(app, ["report", str(run)])
    assert res.exit_code == 0, res.output
    report = json.loads((run / "report.json").read_text())
    assert [s["stage"] for s in report["ladder"]] == ["teacher", "student", *keys]
    assert all(0.0 <= s["agreement"] <= 1.0 for s in report["ladder"][2:])
    assert len(report["latency"]) == 4
    md = (run / "report.md").read_text()
    assert (
        "## Compute efficiency" in md
        and "## Session tuning" in md
        and "## Cross-check" in md
        and md.count("| chosen |") == 4
    )
    # accuracy vs latency, latency distribution, training curves, and each ONNX INT8 form's sensitivity
    assert (run / "report.html").read_text().count("data:image/png") == 5


@pytest.mark.slow
def test_bench_errors_are_clear(exported: tuple[Path, Path], tmp_path: Path) -> None:
    run, _ = exported
    res = runner.invoke(app, ["bench", str(run), "-t", "ort-cpu-1", *FAST])
    assert res.exit_code != 0 and 'Did you mean "ort-cpu-1t"' in str(res.exception)
    res = runner.invoke(app, ["bench", str(run), "-t", "trt-jetson-orin-int8", *FAST])
    assert res.exit_code != 0 and "cannot run on this machine" in str(res.exception)
    res = runner.invoke(app, ["bench", str(tmp_path / "nothing.onnx"), *FAST])
    assert res.exit_code != 0 and "not a run directory or a model file" in str(res.exception)
    res = runner.invoke(app, ["bench", str(run / "model.int8.onnx"), *FAST])  # one model file
    assert res.exit_code == 0, res.output
    single = json.loads((run / "bench" / "files" / "model.int8.onnx.ort-cpu-1t.json").read_text())
    assert [a["artifact"] for a in single["artifacts"]] == ["model.int8.onnx"]
    assert len(json.loads((run / "bench" / "ort-cpu-1t.json").read_text())["artifacts"]) == 2  # run's untouched
