"""Memory, energy meters and the engines' own benchmark tools: real readings where this machine has them,
the parsers and meters checked on recorded outputs and a RAPL tree laid out as Linux lays it out."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from runtime.cross_check import cross_check, parse_median_ms
from runtime.resources import EnergyMeter, energy_per_query, peak_rss_mb, reset_peak_rss, rss_mb


def _rapl(root: Path, zones: dict[str, tuple[int, int]]) -> Path:
    for name, (energy, top) in zones.items():
        (root / name).mkdir(parents=True)
        (root / name / "energy_uj").write_text(f"{energy}\n")
        (root / name / "max_energy_range_uj").write_text(f"{top}\n")
    return root


def test_rapl_energy_per_inference_with_wraparound(tmp_path: Path) -> None:
    root = _rapl(
        tmp_path / "powercap", {"intel-rapl:0": (1_000_000, 10_000_000), "intel-rapl:1": (9_900_000, 10_000_000)}
    )
    (root / "intel-rapl:0:0").mkdir()  # a sub-domain (core) of package 0: not added twice
    meter = EnergyMeter(root)
    assert meter.unavailable is None and len(meter.domains) == 2
    before = meter.read()
    (root / "intel-rapl:0" / "energy_uj").write_text("3000000\n")  # +2 J
    (root / "intel-rapl:1" / "energy_uj").write_text("400000\n")  # wrapped: +0.1 J + 0.4 J
    e = energy_per_query(meter, before, meter.read(), queries=1000)
    assert e["joules"] == pytest.approx(2.5) and e["mj_per_inference"] == pytest.approx(2.5)


def test_no_meter_is_said_never_zero(tmp_path: Path) -> None:
    meter = EnergyMeter(tmp_path / "absent")
    assert energy_per_query(meter, [], [], 10) == {
        "unavailable": "not available here: no RAPL energy counters under /sys/class/powercap"
    }


def test_memory_readings() -> None:
    if not Path("/proc/self/status").is_file():
        pytest.skip("Linux /proc")
    assert rss_mb() > 10 and reset_peak_rss()
    block = bytearray(64 * 2**20)  # touch 64 MB: the peak must see it
    block[::4096] = b"x" * len(block[::4096])
    assert peak_rss_mb() >= rss_mb() - 1 and peak_rss_mb() > 64


@pytest.mark.parametrize(
    ("tool", "text", "ms"),
    [
        ("benchmark_app", "[ INFO ] Latency:\n[ INFO ]    Median:    129.48 us\n[ INFO ]   Average: 1 us", 0.1295),
        ("benchmark_app", "[ INFO ]    Median:        2.55 ms", 2.55),
        ("onnxruntime_perf_test", "Average inference time cost: 0.3 ms\nP50 Latency: 0.000265 s\nP90", 0.265),
        ("trtexec", "[I] Latency: min = 0.51 ms, max = 0.9 ms, mean = 0.55 ms, median = 0.54 ms, p", 0.54),
        ("benchmark_app", "no numbers here", None),
    ],
)  # fmt: skip
def test_tool_outputs_are_parsed(tool: str, text: str, ms: float | None) -> None:
    assert parse_median_ms(tool, text) == ms


def test_missing_tool_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    r = cross_check("onnxruntime", tmp_path / "m.onnx", (8, 8), 1, 1.0)
    if shutil.which("onnxruntime_perf_test") is None:
        assert r["tool"] == "onnxruntime_perf_test" and "not on PATH" in r["unavailable"]
    assert "no benchmark tool known" in cross_check("coreml", tmp_path / "m", (8, 8), 1, 1.0)["unavailable"]
