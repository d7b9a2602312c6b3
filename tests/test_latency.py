"""MLPerf-style latency harness: nearest-rank percentiles, stop rules, throughput, thread pinning."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from runtime.errors import ToolkitError
from runtime.latency import LatencyStats, RunLimits, offline, pinned_cpus, single_stream


def test_percentiles_are_nearest_rank() -> None:
    s = LatencyStats.from_samples(list(range(100, 0, -1)), seconds=2.0)  # 1..100 ms, shuffled order
    assert (s.count, s.min_ms, s.max_ms) == (100, 1.0, 100.0)
    assert (s.p50_ms, s.p90_ms, s.p95_ms, s.p99_ms) == (50.0, 90.0, 95.0, 99.0)
    assert s.mean_ms == pytest.approx(50.5)
    odd = LatencyStats.from_samples([3.0, 1.0, 2.0], seconds=1.0)
    assert (odd.p50_ms, odd.p90_ms) == (2.0, 3.0)  # ceil(0.5*3)=2nd, ceil(0.9*3)=3rd smallest


def test_empty_samples_are_an_error() -> None:
    with pytest.raises(ToolkitError, match="no timed queries"):
        LatencyStats.from_samples([], 1.0)


def test_single_stream_runs_warmup_then_until_min_queries() -> None:
    calls: list[tuple[int, ...]] = []
    limits = RunLimits(warmup_queries=3, min_duration_s=0.0, min_queries=25, max_duration_s=60)
    progress: list[float] = []
    r = single_stream(lambda x: calls.append(x.shape), np.zeros((1, 3, 4, 4), np.float32), limits, progress.append)
    # 3 rounds of ceil(25 / 3) = 9 queries; warm-up only before the first
    assert len(calls) == 30 and r["count"] == 27 and len(r["samples_ms"]) == 27 and r["rounds"] == 3
    assert r["scenario"] == "SingleStream" and not r["hit_max_duration"]
    assert progress[-1] == 1.0 and all(0 <= p <= 1 for p in progress)
    assert r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]


def test_rounds_report_their_spread() -> None:
    calls = []

    def run(x: np.ndarray) -> None:  # the second round runs on a "busier machine"
        calls.append(1)
        time.sleep(0.004 if 5 < len(calls) <= 10 else 0.001)

    limits = RunLimits(warmup_queries=0, min_duration_s=0.0, min_queries=15, rounds=3)
    r = single_stream(run, np.zeros((1, 1), np.float32), limits)
    assert len(r["round_p50_ms"]) == 3 and r["round_p50_ms"][1] > 2 * r["round_p50_ms"][0]
    assert r["round_spread_ms"] == pytest.approx(max(r["round_p50_ms"]) - min(r["round_p50_ms"]), abs=1e-3)
    with pytest.raises(ToolkitError, match="rounds >= 1"):
        RunLimits(rounds=0)


def test_min_duration_and_max_duration_cap() -> None:
    limits = RunLimits(warmup_queries=0, min_duration_s=0.05, min_queries=1, max_duration_s=1.0)
    r = single_stream(lambda x: None, np.zeros((1, 1), np.float32), limits)
    assert r["seconds"] >= 0.05 and r["count"] > 1
    capped = RunLimits(warmup_queries=0, min_duration_s=0.0, min_queries=10**9, max_duration_s=0.05)
    r = single_stream(lambda x: None, np.zeros((1, 1), np.float32), capped)
    assert r["hit_max_duration"] and r["count"] < 10**9


def test_single_stream_needs_batch_one_and_limits_are_validated() -> None:
    with pytest.raises(ToolkitError, match="batch of 1"):
        single_stream(lambda x: None, np.zeros((2, 3)), RunLimits())
    with pytest.raises(ToolkitError, match="min_queries"):
        RunLimits(min_queries=0)
    with pytest.raises(ToolkitError, match="max_duration_s"):
        RunLimits(min_duration_s=10, max_duration_s=1)


def test_offline_throughput_counts_images() -> None:
    limits = RunLimits(warmup_queries=1, min_duration_s=0.0, min_queries=10)
    r = offline(lambda x: time.sleep(0.002), np.zeros((8, 3), np.float32), limits)
    assert r["batch_size"] == 8 and r["batches"] == 10
    assert r["images_per_s"] == pytest.approx(80 / r["seconds"], rel=1e-3)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux affinity API")
def test_pinned_cpus_restores_affinity() -> None:
    before = os.sched_getaffinity(0)
    with pinned_cpus(1) as cpus:
        assert cpus == [min(before)] and os.sched_getaffinity(0) == {min(before)}
    assert os.sched_getaffinity(0) == before
    with pytest.raises(ToolkitError, match="CPUs are usable"), pinned_cpus(len(before) + 1):
        pass
    assert os.sched_getaffinity(0) == before
