"""MACs and bytes counted from graphs (ONNX FP32, Q/DQ INT8, OpenVINO IR) against hand counts; the peak table,
the measured GEMM ceiling and the clock they reconcile; % of peak per artifact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from export.onnx_export import export_onnx
from export.openvino_export import onnx_to_openvino
from export.quantize import quantize
from runtime.ceiling import measure_gemm_ceiling
from runtime.errors import ToolkitError
from runtime.layer_costs import graph_precision, layer_costs, summarize_costs
from runtime.peaks import UNKNOWN_HINT, reconcile_with_ceiling, target_peak
from runtime.preprocess import PreprocessContract
from runtime.roofline import roofline
from runtime.targets import TargetProfile, load_targets

CONTRACT = PreprocessContract(input_size=8, resize_size=8, class_names=("a", "b", "c"))
# (kind, MACs, input elements, weight elements, output elements) of TinyNet at 8x8, worked out by hand:
# conv 3->8 3x3 pad 1: out 8*8*8 = 512 elements x 3*9 MACs; depthwise 8 3x3 pad 1: 512 x 9; pointwise 8->16:
# 16*64 = 1024 x 8; linear 16->3 after global pooling: 3 x 16.
HAND = [
    ("conv", 512 * 27, 3 * 64, 8 * 3 * 9, 512),
    ("depthwise", 512 * 9, 512, 8 * 9, 512),
    ("pointwise", 1024 * 8, 512, 16 * 8, 1024),
    ("matmul", 3 * 16, 16, 16 * 3, 3),
]


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.pw = nn.Conv2d(8, 16, 1, bias=False)
        self.fc = nn.Linear(16, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pw(torch.relu(self.dw(torch.relu(self.conv(x)))))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("costs")
    torch.manual_seed(0)
    fp32 = export_onnx(TinyNet(), CONTRACT, tmp / "model.onnx")
    batches = [np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)]
    int8 = quantize(fp32, tmp / "model.int8.onnx", "onnxruntime", batches)
    xml = tmp / "ov" / "model.xml"
    onnx_to_openvino(fp32, xml, CONTRACT)
    return {"fp32": fp32, "int8": int8, "ir": xml}


@pytest.mark.parametrize("graph", ["fp32", "int8", "ir"])
def test_costs_match_hand_counts(graphs: dict[str, Path], graph: str) -> None:
    costs = layer_costs(graphs[graph])
    got = [(c.kind, c.macs, c.input_elements, c.weight_elements, c.output_elements) for c in costs]
    assert got == HAND


def test_bytes_scale_with_precision_and_depthwise_is_memory_heavy(graphs: dict[str, Path]) -> None:
    costs = layer_costs(graphs["fp32"])
    fp32, int8 = summarize_costs(costs, "fp32"), summarize_costs(costs, "int8")
    elements = sum(sum(h[2:]) for h in HAND)
    assert fp32["macs"] == sum(h[1] for h in HAND) and fp32["bytes_moved"] == 4 * elements
    assert int8["bytes_moved"] == elements and int8["macs_per_byte"] == pytest.approx(4 * fp32["macs_per_byte"], 0.01)
    dw = fp32["by_kind"]["depthwise"]
    assert dw["macs_per_byte"] < fp32["by_kind"]["conv"]["macs_per_byte"] / 2  # the memory-bound layer
    assert sum(k["macs_share"] for k in fp32["by_kind"].values()) == pytest.approx(1.0, abs=1e-3)


def test_graph_precision(graphs: dict[str, Path]) -> None:
    assert [graph_precision(graphs[k]) for k in ("fp32", "int8", "ir")] == ["fp32", "int8", "fp32"]


def test_unreadable_graph_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "junk.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(ToolkitError, match="junk.onnx"):
        layer_costs(bad)
    with pytest.raises(ToolkitError, match="not .engine files"):
        layer_costs(tmp_path / "m.engine")


def _env(vendor: str, family: int, flags: list[str], mhz: float = 2300.0, cores: int = 2) -> dict:
    cpu = {
        "architecture": "x86_64",
        "vendor": vendor,
        "family": family,
        "flags": flags,
        "usable_cores": cores,
        "threads_per_core": 1,
        "clock_mhz": {"current": None, "max": None, "cpuinfo": mhz},
        "model": "test cpu",
    }
    return {"cpu": cpu, "gpus": []}  # fmt: skip


CPU_TARGET = TargetProfile("cpu", "onnxruntime", ("fp32", "int8"), provider="CPUExecutionProvider")


def test_peak_from_the_table() -> None:
    # Cascade Lake class Xeon, 2 cores at 2.3 GHz: 128 INT8 MACs/cycle/core -> 588.8 GMAC/s (the figure)
    peak = target_peak(CPU_TARGET, _env("GenuineIntel", 6, ["avx2", "fma", "avx512f", "avx512_vnni"]))
    assert peak["gmacs"] == {"fp32": 147.2, "int8": 588.8} and peak["cores"] == 2
    one = TargetProfile("cpu1", "onnxruntime", ("int8",), threads=1, provider="CPUExecutionProvider")
    assert (
        target_peak(one, _env("GenuineIntel", 6, ["avx2", "fma", "avx512f", "avx512_vnni"]))["gmacs"]["int8"] == 294.4
    )
    zen4 = target_peak(CPU_TARGET, _env("AuthenticAMD", 25, ["avx2", "fma", "avx512f", "avx512_vnni"], 1000, 1))
    assert zen4["gmacs"]["int8"] == 64.0 and "Zen 4" in zen4["entry"]
    avx2 = target_peak(CPU_TARGET, _env("AuthenticAMD", 23, ["avx2", "fma"], 1000, 1))
    assert avx2["gmacs"] == {"fp32": 16.0, "int8": 21.3}


def test_unknown_peak_says_how_to_add_it() -> None:
    peak = target_peak(CPU_TARGET, _env("GenuineIntel", 6, ["sse4_2"]))
    assert "not in runtime/peaks.yaml" in peak["unknown"] and UNKNOWN_HINT in peak["unknown"]
    no_clock = _env("GenuineIntel", 6, ["avx2", "fma", "avx512f", "avx512_vnni"])
    no_clock["cpu"]["clock_mhz"] = {}
    assert "clock is not reported" in target_peak(CPU_TARGET, no_clock)["unknown"]
    gpu = load_targets()["trt-gpu-int8"]
    assert "no CUDA GPU name" in target_peak(gpu, no_clock)["unknown"]
    h100 = target_peak(gpu, {"gpus": [{"name": "NVIDIA H100 80GB HBM3", "sm_count": 132}]})
    assert h100["gmacs"]["int8"] == pytest.approx(989_400)
    entry = {"single_stream": {"p50_ms": 1.0}, "offline": []}
    out = roofline({"macs": 10**9}, entry, peak, "int8")
    assert out["batch_1"]["percent_of_peak"] is None and UNKNOWN_HINT in out["peak"]


def test_profile_peak_overrides_and_is_validated(tmp_path: Path) -> None:
    f = tmp_path / "t.yaml"
    f.write_text("mine:\n  backend: onnxruntime\n  provider: CPUExecutionProvider\n  precisions: [int8]\n"
                 "  peak_gmacs: {int8: 500}\n")  # fmt: skip
    peak = target_peak(load_targets(f)["mine"], _env("GenuineIntel", 6, []))
    assert peak["gmacs"] == {"int8": 500.0} and "peak_gmacs" in peak["basis"]
    f.write_text("mine:\n  backend: onnxruntime\n  provider: CPUExecutionProvider\n  precisions: [int8]\n"
                 "  peak_gmacs: {int4: 500}\n")  # fmt: skip
    with pytest.raises(ToolkitError, match="peak_gmacs must map"):
        load_targets(f)


def test_ceiling_above_the_table_raises_the_clock() -> None:
    peak = target_peak(CPU_TARGET, _env("GenuineIntel", 6, ["avx2", "fma", "avx512f", "avx512_vnni"]))
    below = reconcile_with_ceiling(peak, {"gmacs": {"fp32": 100.0, "int8": 400.0}, "method": "m"})
    assert below == peak
    # 2 cores x 32 FP32 MACs/cycle reaching 192 GMAC/s needs at least 3000 MHz
    above = reconcile_with_ceiling(peak, {"gmacs": {"fp32": 192.0, "int8": 400.0}, "method": "m"})
    assert above["clock_mhz"] == pytest.approx(3000.0) and above["gmacs"]["int8"] == pytest.approx(768.0, abs=0.1)
    assert "not the running clock" in above["basis"]


def test_roofline_percentages() -> None:
    entry = {"single_stream": {"p50_ms": 2.0}, "offline": [{"batch_size": 8, "images_per_s": 800.0}]}
    out = roofline({"macs": 2 * 10**9}, entry, {"gmacs": {"int8": 2000.0}}, "int8", {"gmacs": {"int8": 1000.0}})
    assert out["batch_1"] == {"batch_size": 1, "gmacs_per_s": 1000.0, "percent_of_peak": 50.0,
                              "percent_of_gemm_ceiling": 100.0}  # fmt: skip
    assert out["largest_batch"]["gmacs_per_s"] == 1600.0 and out["largest_batch"]["percent_of_peak"] == 80.0


def test_gemm_ceiling_is_measured() -> None:
    c = measure_gemm_ceiling(1, repeats=2, n=64)
    assert c["threads"] == 1 and all(v > 0 for v in c["gmacs"].values()) and set(c["gmacs"]) == {"fp32", "int8"}
