"""Device profiles and `toolkit bench RUN --import`: measurements taken on a device (toolkit bench there, LiteRT's
benchmark_model, or a hand-written YAML) read back into the run, checked against its artifacts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TORCH_BLOCKER, write_image_folder, write_recipe
from typer.testing import CliRunner

from runtime.artifacts import Artifact
from runtime.errors import ToolkitError
from runtime.report import build_report
from runtime.targets import load_targets
from toolkit.bench_import import _from_benchmark_model
from toolkit.cli import app

runner = CliRunner()
QUICK = ["--min-duration", "0.05", "--min-queries", "3", "--warmup", "1", "--rounds", "1"]
# What a device runs: `toolkit bench` with torch (and timm, torchvision) absent.
ON_DEVICE = (
    TORCH_BLOCKER
    + """
from toolkit.cli import app
app(sys.argv[1:])
"""
)
# LiteRT benchmark_model's output (its format: warm-up line, then the measured line, in microseconds).
BENCHMARK_MODEL = """STARTING!
Num threads: [4]
Graph: [/data/local/tmp/model.int8.tflite]
Loaded model /data/local/tmp/model.int8.tflite
The input model file size (MB): {mb}
Initialized session in 20.283ms.
Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=2 first=3393 curr=2663 min=2663 max=3393 avg=3028 std=365
Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=200 first=2666 curr=2669 min=2658 max=2881 avg=2664.7 std=41
Inference timings in us: Init: 20283, First inference: 3393, Warmup (avg): 3028, Inference (avg): 2664.7
Peak memory footprint (MB): init=3.1 overall=9.5
"""
DEVICE_TARGETS = {
    "jetson-ort": {
        "description": "ONNX Runtime on a Jetson, measured by its own tool", "backend": "onnxruntime",
        "provider": "CPUExecutionProvider", "precisions": ["fp32"], "threads": 4,
        "runs_on": {"device": "a Jetson Orin Nano", "machine": "aarch64", "via": "tool",
                    "how": ["run onnxruntime_perf_test there", "write the YAML"]},
    }
}  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("device")
    recipe = write_recipe(tmp / "r.yaml", write_image_folder(tmp / "data", per_class=6, size=16), epochs=1)
    assert runner.invoke(app, ["train", str(recipe), "--out", str(tmp / "run")]).exit_code == 0
    res = runner.invoke(app, ["export", str(tmp / "run"), "--held-out-images", "8"])
    assert res.exit_code == 0, res.output
    return tmp / "run"


def test_bench_on_the_device_is_torch_free_and_reads_back_checked(run: Path, tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-c", ON_DEVICE, "bench", str(run), "--target", "ort-cpu-1t", *QUICK],
                         cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stderr
    measured = json.loads((run / "bench" / "ort-cpu-1t.json").read_text())
    assert measured["artifacts"][0]["sha256"] == json.loads((run / "manifest.json").read_text())["exports"]["onnx"][
        "sha256"]  # fmt: skip
    device_file = tmp_path / "ort-cpu-1t.json"  # as copied back from the device
    shutil.move(run / "bench" / "ort-cpu-1t.json", device_file)
    tampered = json.loads(device_file.read_text())
    tampered["artifacts"][0]["sha256"] = "0" * 64
    (tmp_path / "other.json").write_text(json.dumps(tampered))
    res = runner.invoke(app, ["bench", str(run), "--import", str(tmp_path / "other.json")])
    assert isinstance(res.exception, ToolkitError) and "is not this run's" in str(res.exception)
    assert not (run / "bench" / "ort-cpu-1t.json").exists()
    res = runner.invoke(app, ["bench", str(run), "--import", str(device_file)])
    assert res.exit_code == 0, res.output
    stored = json.loads((run / "bench" / "ort-cpu-1t.json").read_text())
    assert stored["imported"]["verified"] == "sha256 of every artifact equals this run's"
    report = build_report(run)
    row = next(r for r in report["latency"] if r["target"] == "ort-cpu-1t")
    assert row["p50_ms"] == measured["artifacts"][0]["single_stream"]["p50_ms"] and row["imported"]["from"]
    assert json.loads((run / "manifest.json").read_text())["bench"]["ort-cpu-1t"]["onnx"]["p50_ms"] == row["p50_ms"]


def test_a_hand_written_yaml_from_a_device_tool(run: Path, tmp_path: Path) -> None:
    targets = tmp_path / "targets.yaml"
    targets.write_text(yaml.safe_dump(DEVICE_TARGETS))
    sha = json.loads((run / "manifest.json").read_text())["exports"]["onnx"]["sha256"]
    entry = {"artifact": "onnx", "sha256": sha, "median_ms": 4.25, "count": 100, "tool": "onnxruntime_perf_test",
             "device": "Jetson Orin Nano 8GB"}  # fmt: skip
    args = ["bench", str(run), "--target", "jetson-ort", "--artifact", "onnx", "--targets-file", str(targets)]
    for edit, message in [({"sha256": "f" * 64}, "is not this run's onnx"),
                          ({"medain_ms": 1}, 'Did you mean "median_ms"'),
                          ({"count": 0}, "count must be a positive number")]:  # fmt: skip
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump({**entry, **edit}))
        res = runner.invoke(app, [*args, "--import", str(bad)])
        assert isinstance(res.exception, ToolkitError) and message in str(res.exception), res.output
    assert not (run / "bench" / "jetson-ort.json").exists()
    good = tmp_path / "jetson.yaml"
    good.write_text(yaml.safe_dump(entry))
    res = runner.invoke(app, [*args, "--import", str(good)])
    assert res.exit_code == 0, res.output
    report = build_report(run)
    row = next(r for r in report["latency"] if r["target"] == "jetson-ort")
    assert row["p50_ms"] == 4.25 and row["imported"]["device"] == "Jetson Orin Nano 8GB" and row["p90_ms"] is None
    from runtime.report_render import sections

    text = dict(sections(report))["Latency per target"]
    assert "`jetson-ort` measured on Jetson Orin Nano 8GB by onnxruntime_perf_test and imported" in text
    res = runner.invoke(app, ["bench", str(run), "--import", str(good)])  # text/YAML needs --target and --artifact
    assert isinstance(res.exception, ToolkitError) and "needs --target" in str(res.exception)


def test_benchmark_model_output_is_parsed_and_checked_against_the_file(tmp_path: Path) -> None:
    profile = load_targets()["android-litert"]
    model = tmp_path / "model.int8.tflite"
    model.write_bytes(b"\0" * 123_456)
    art = Artifact("int8_litert", "LiteRT INT8, full integer", "litert", "int8", model, 123_456)
    result = _from_benchmark_model(BENCHMARK_MODEL.format(mb=0.123456), Path("android.txt"), art, profile)
    single = result["artifacts"][0]["single_stream"]
    assert single["count"] == 200 and single["mean_ms"] == pytest.approx(2.6647) and single["p50_ms"] is None
    assert single["min_ms"] == pytest.approx(2.658) and single["max_ms"] == pytest.approx(2.881)
    assert result["artifacts"][0]["load_s"] == pytest.approx(0.020283)
    assert result["artifacts"][0]["memory"]["peak_rss_mb"] == 9.5 and result["environment"]["threads"] == 4
    with pytest.raises(ToolkitError, match="has 0.200 MB, this run's model.int8.tflite 0.123 MB: another file"):
        _from_benchmark_model(BENCHMARK_MODEL.format(mb=0.2), Path("a.txt"), art, profile)
    other = Artifact("litert", "LiteRT FP32", "litert", "fp32", tmp_path / "model.tflite", 123_456)
    with pytest.raises(ToolkitError, match="loaded model.int8.tflite, not model.tflite"):
        _from_benchmark_model(BENCHMARK_MODEL.format(mb=0.123456), Path("a.txt"), other, profile)
    with pytest.raises(ToolkitError, match="not LiteRT benchmark_model output"):
        _from_benchmark_model("Segmentation fault", Path("a.txt"), art, profile)


def test_device_profiles_say_how_to_measure_and_bad_ones_are_named(tmp_path: Path) -> None:
    targets = load_targets()
    for name in ("pi5-litert", "pi5-ncnn", "pi5-onnxruntime", "android-litert", "iphone-coreml"):
        profile = targets[name]
        assert profile.runs_on and "toolkit bench RUN --import" in " ".join(profile.how_to_measure())
        assert f"`toolkit targets {name}` says how" in (profile.unavailable_reason() or "")  # not a Pi or a phone
    res = runner.invoke(app, ["targets", "pi5-litert"])
    assert res.exit_code == 0 and "~/tk/bin/toolkit bench RUN --target pi5-litert" in res.output.replace("\n", " ")
    with pytest.raises(ToolkitError, match="cannot run on this machine: measured on a Raspberry Pi 5"):
        from runtime.latency import RunLimits
        from toolkit.benching import run_bench

        run_bench(tmp_path / "m.param", ["pi5-ncnn"], RunLimits(1, 0.01, 1, 1.0, 1), None)  # type: ignore[arg-type]
    for edit, message in [({"runs_on": {"device": "x", "machine": "aarch64", "how": ["a"], "vai": "tool"}},
                           'runs_on: unknown key \'vai\'. Did you mean "via"'),
                          ({"runs_on": {"device": "x", "machine": "aarch64", "how": ["a"], "via": "adb"}},
                           "runs_on.via must be toolkit"),
                          ({"runs_on": {"device": "x", "machine": "aarch64", "how": []}}, "runs_on.how must be"),
                          ({"runs_on": {"machine": "aarch64", "how": ["a"]}}, "runs_on.device must be")]:  # fmt: skip
        bad = {"t": {**DEVICE_TARGETS["jetson-ort"], **edit}}
        (tmp_path / "t.yaml").write_text(yaml.safe_dump(bad))
        with pytest.raises(ToolkitError, match=message):
            load_targets(tmp_path / "t.yaml")
