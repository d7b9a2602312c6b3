"""Engine session settings a target may tune (validated up front, recorded with every measurement).

ONNX Runtime: graph optimisation level, thread spinning, static batch, I/O binding.
OpenVINO: performance hint, streams, CPU pinning, static batch. ``static_batch`` fixes the batch dimension
at compile time (engines plan memory and pick kernels for one shape); a session built so runs only that batch.
"""

from __future__ import annotations

from typing import Any

from runtime.errors import ToolkitError, did_you_mean

# backend -> setting -> allowed values (None: a positive integer)
ALLOWED: dict[str, dict[str, tuple[Any, ...] | None]] = {
    "onnxruntime": {
        "graph_optimization": ("disable", "basic", "extended", "all"),
        "allow_spinning": (True, False),
        "static_batch": None,
        "io_binding": (True, False),
    },
    "openvino": {
        "performance_hint": ("LATENCY", "THROUGHPUT", "none"),
        "num_streams": None,
        "cpu_pinning": (True, False),
        "static_batch": None,
    },
    "tensorrt": {},
    "ncnn": {"winograd": (True, False)},
}


def check_settings(backend: str, settings: dict[str, Any], where: str) -> dict[str, Any]:
    """``settings`` if every key and value is one ``backend`` takes, else an error naming the key."""
    allowed = ALLOWED.get(backend, {})
    for key, value in settings.items():
        if key not in allowed:
            known = ", ".join(allowed) or "none"
            raise ToolkitError(f"{where}: unknown {backend} session setting '{key}'.{did_you_mean(key, allowed)} "
                               f"Known: {known}")  # fmt: skip
        choices = allowed[key]
        ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 1) if choices is None else (
            value in choices and type(value) is type(choices[0]))  # fmt: skip
        if not ok:
            want = "a positive integer" if choices is None else " | ".join(map(str, choices))
            raise ToolkitError(f"{where}: session setting {key} must be {want}, got {value!r}")
    return dict(settings)


def describe_settings(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(settings.items())) or "engine defaults"
