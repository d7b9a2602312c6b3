"""Latency and throughput the way MLPerf LoadGen and onnxruntime_perf_test report them.

SingleStream: batch 1, the next query issued when the previous one returns; warm-up first, then run
until both a minimum duration and a minimum query count are reached; report min/p50/p90/p95/p99/max/mean.
Offline: whole batches back to back; report images per second. Percentiles are nearest-rank
(the value below which that share of queries finished), as LoadGen computes them.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from runtime.errors import ToolkitError

Progress = Callable[[float], None]
PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class LatencyStats:
    """Per-query latency in milliseconds over ``count`` timed queries."""

    count: int
    seconds: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @classmethod
    def from_samples(cls, samples_ms: np.ndarray | list[float], seconds: float) -> LatencyStats:
        s = np.asarray(samples_ms, dtype=np.float64)
        if s.size == 0:
            raise ToolkitError("no timed queries: raise the minimum duration or query count")
        p = np.percentile(s, PERCENTILES, method="inverted_cdf")
        return cls(int(s.size), float(seconds), float(s.min()), *map(float, p), float(s.max()), float(s.mean()))

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class RunLimits:
    """When a scenario stops: after ``min_duration_s`` and ``min_queries``, whichever comes later, but never
    past ``max_duration_s`` (a safety cap for very slow models; hitting it is recorded)."""

    warmup_queries: int = 10
    min_duration_s: float = 5.0
    min_queries: int = 100
    max_duration_s: float = 120.0
    rounds: int = 3

    def __post_init__(self) -> None:
        if self.min_queries < 1 or self.warmup_queries < 0 or self.min_duration_s < 0 or self.rounds < 1:
            raise ToolkitError(f"bench limits: need min_queries >= 1, warmup_queries >= 0, rounds >= 1, got {self}")
        if self.max_duration_s < self.min_duration_s:
            raise ToolkitError(f"bench limits: max_duration_s ({self.max_duration_s}) < min ({self.min_duration_s})")


def _timed_loop(query: Callable[[], object], limits: RunLimits, progress: Progress | None) -> tuple[list[float], float]:
    for _ in range(limits.warmup_queries):
        query()
    samples: list[float] = []
    start = time.perf_counter()
    elapsed = 0.0
    while (elapsed < limits.min_duration_s or len(samples) < limits.min_queries) and elapsed < limits.max_duration_s:
        t0 = time.perf_counter()
        query()
        t1 = time.perf_counter()
        samples.append((t1 - t0) * 1000.0)
        elapsed = t1 - start
        if progress:
            by_time = elapsed / limits.min_duration_s if limits.min_duration_s else 1.0
            progress(min(by_time, len(samples) / limits.min_queries, 1.0))
    return samples, elapsed


def single_stream(
    run: Callable[[np.ndarray], object], sample: np.ndarray, limits: RunLimits, progress: Progress | None = None
) -> dict[str, Any]:
    """Batch-1 latency: ``sample`` is one preprocessed input of shape (1, ...). The minimum duration and
    query count are split over ``limits.rounds`` rounds; the spread of the rounds' p50s is how much the
    figure moves from one measurement to the next on this machine."""
    if sample.shape[0] != 1:
        raise ToolkitError(f"SingleStream takes a batch of 1, got shape {tuple(sample.shape)}")
    n = limits.rounds
    per_round = RunLimits(limits.warmup_queries, limits.min_duration_s / n, -(-limits.min_queries // n),
                          limits.max_duration_s / n, 1)  # fmt: skip
    samples: list[float] = []
    round_p50s: list[float] = []
    elapsed = 0.0
    for i in range(n):
        step = (lambda f, i=i: progress((i + f) / n)) if progress else None
        got, seconds = _timed_loop(lambda: run(sample), per_round if i == 0 else replace(per_round, warmup_queries=0),
                                   step)  # fmt: skip
        samples += got
        elapsed += seconds
        round_p50s.append(float(np.median(got)))
    stats = LatencyStats.from_samples(samples, elapsed)
    return {
        "scenario": "SingleStream",
        **stats.to_dict(),
        "rounds": n,
        "round_p50_ms": [round(x, 4) for x in round_p50s],
        "round_spread_ms": round(max(round_p50s) - min(round_p50s), 4),
        "hit_max_duration": elapsed >= limits.max_duration_s,
        "samples_ms": [round(x, 4) for x in samples],  # for the latency-distribution plot
    }


def offline(
    run: Callable[[np.ndarray], object], batch: np.ndarray, limits: RunLimits, progress: Progress | None = None
) -> dict[str, Any]:
    """Throughput with whole batches back to back: images/s = images processed / wall time."""
    samples, elapsed = _timed_loop(lambda: run(batch), limits, progress)
    stats = LatencyStats.from_samples(samples, elapsed)
    images = len(samples) * batch.shape[0]
    return {
        "scenario": "Offline",
        "batch_size": int(batch.shape[0]),
        "images_per_s": round(images / elapsed, 3),
        "batches": len(samples),
        "seconds": round(elapsed, 6),
        "batch_p50_ms": round(stats.p50_ms, 4),
        "batch_p90_ms": round(stats.p90_ms, 4),
        "hit_max_duration": elapsed >= limits.max_duration_s,
    }


def offline_from_single_stream(ss: dict[str, Any]) -> dict[str, Any]:
    """Offline at batch 1 is SingleStream's loop (queries back to back): its throughput, without a rerun."""
    return {
        "scenario": "Offline",
        "batch_size": 1,
        "images_per_s": round(ss["count"] / ss["seconds"], 3),
        "batches": ss["count"],
        "seconds": ss["seconds"],
        "batch_p50_ms": ss["p50_ms"],
        "batch_p90_ms": ss["p90_ms"],
        "hit_max_duration": ss["hit_max_duration"],
        "derived_from": "SingleStream",
    }


@contextlib.contextmanager
def pinned_cpus(threads: int | None) -> Iterator[list[int] | None]:
    """Pin this process to its first ``threads`` usable CPUs for the duration (Linux); yields the CPU ids."""
    if not threads or not hasattr(os, "sched_setaffinity"):
        yield None
        return
    before = os.sched_getaffinity(0)
    if threads > len(before):
        raise ToolkitError(f"{threads} threads asked for, but only {len(before)} CPUs are usable here")
    cpus = sorted(before)[:threads]
    os.sched_setaffinity(0, cpus)
    try:
        yield cpus
    finally:
        os.sched_setaffinity(0, before)
