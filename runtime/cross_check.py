"""The same model timed by its engine's own benchmark tool, beside `toolkit bench`'s figure.

OpenVINO ``benchmark_app`` (ships with the openvino wheel), ONNX Runtime's ``onnxruntime_perf_test`` (not in
the wheel: found only when built and put on PATH) and TensorRT's ``trtexec``. Each runs batch 1, synchronous,
on the same threads and, for OpenVINO, the same FP32 inference precision `toolkit bench` uses (benchmark_app
would otherwise run float layers in bf16 on CPUs that have it). A tool that is missing or fails is recorded
with why; the bench goes on.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

TIMEOUT_S = 300
_UNITS = {"s": 1000.0, "ms": 1.0, "us": 1e-3}


def find_tool(name: str) -> str | None:
    """``name`` on PATH, else beside the running Python (a venv used without activating it)."""
    found = shutil.which(name)
    if found:
        return found
    import sys

    beside = Path(sys.executable).with_name(name)  # console scripts of the running environment
    return str(beside) if beside.is_file() else None


def openvino_command(model: Path, size: tuple[int, int], threads: int | None, seconds: float) -> list[str] | None:
    tool = find_tool("benchmark_app")
    if tool is None:
        return None
    h, w = size
    cmd = [tool, "-m", str(model), "-d", "CPU", "-hint", "latency", "-api", "sync", "-shape", f"[1,3,{h},{w}]",
           "-t", str(max(1, round(seconds))), "-infer_precision", "f32"]  # fmt: skip
    return cmd + (["-nthreads", str(threads)] if threads else [])


def onnxruntime_command(model: Path, threads: int | None, seconds: float) -> list[str] | None:
    tool = find_tool("onnxruntime_perf_test")
    if tool is None:
        return None
    return [tool, "-e", "cpu", "-m", "duration", "-t", str(max(1, round(seconds))), "-x", str(threads or 0), "-I",
            str(model)]  # fmt: skip


def tensorrt_command(engine: Path, input_name: str, size: tuple[int, int], seconds: float) -> list[str] | None:
    tool = find_tool("trtexec")
    if tool is None:
        return None
    h, w = size
    return [
        tool,
        f"--loadEngine={engine}",
        f"--shapes={input_name}:1x3x{h}x{w}",
        f"--duration={max(1, round(seconds))}",
    ]


def parse_median_ms(tool: str, text: str) -> float | None:
    """The tool's median (or, for onnxruntime_perf_test, P50) batch-1 latency in ms from its output."""
    patterns = {
        "benchmark_app": r"Median:\s+([\d.]+)\s*(ms|us|s)\b",
        "onnxruntime_perf_test": r"P50 Latency:\s+([\d.]+)\s*(s|ms|us)\b",
        "trtexec": r"Latency:.*?median = ([\d.]+)\s*(ms|us|s)\b",
    }
    m = re.search(patterns[tool], text)
    return None if m is None else round(float(m.group(1)) * _UNITS[m.group(2)], 4)


def cross_check(
    backend: str,
    model: Path,
    size: tuple[int, int],
    threads: int | None,
    seconds: float,
    input_name: str = "input",
) -> dict[str, Any]:
    """Run the engine's own tool on ``model``; {"tool", "command", "p50_ms"} or {"tool", "unavailable"}."""
    if backend == "openvino":
        tool, cmd = "benchmark_app", openvino_command(model, size, threads, seconds)
    elif backend == "onnxruntime":
        tool, cmd = "onnxruntime_perf_test", onnxruntime_command(model, threads, seconds)
    elif backend == "tensorrt":
        tool, cmd = "trtexec", tensorrt_command(model, input_name, size, seconds)
    else:
        return {"tool": None, "unavailable": f"no benchmark tool known for {backend}"}
    if cmd is None:
        why = " (the onnxruntime wheel does not ship it: build it from source)" if tool.startswith("onnx") else ""
        return {"tool": tool, "unavailable": f"{tool} is not on PATH{why}"}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S + seconds)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"tool": tool, "command": cmd, "unavailable": f"{tool} did not finish ({exc})"}
    median = parse_median_ms(tool, done.stdout + done.stderr)
    if done.returncode != 0 or median is None:
        tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
        return {"tool": tool, "command": cmd, "unavailable": f"{tool} exited {done.returncode}: {tail[0][:200]}"}
    return {"tool": tool, "command": cmd, "p50_ms": median}
