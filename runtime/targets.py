"""Edge target profiles as data: which engine, execution provider, precisions, threads and batch sizes.

The packaged profiles live in targets.yaml; users add or override profiles with a YAML file of the same
shape. Every field is validated when the file is read, so a typo fails before any measurement starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from runtime.errors import ToolkitError, did_you_mean

BACKENDS = ("onnxruntime", "openvino", "tensorrt", "executorch", "ncnn", "coreml", "litert")
# Backends whose Python runtime imports torch (on the device their C++ runtime does not): `toolkit targets` says so.
NEEDS_TORCH = ("executorch",)
PRECISIONS = ("fp32", "fp16", "int8")
FIELDS = (
    "description", "backend", "provider", "provider_options", "device", "precisions", "threads", "batch_sizes",
    "peak_gmacs", "session", "runs_on",
)  # fmt: skip
# A device profile's ``runs_on``: the device it is measured on, how to identify it, and how to run the bench there.
# via: toolkit (`toolkit bench` runs on the device: a board with Python) or tool (the engine's own benchmark, read
# back with `toolkit bench RUN --import`: phones).
RUNS_ON_FIELDS = ("device", "machine", "board", "via", "how")


@dataclass(frozen=True)
class TargetProfile:
    """One way of running a model; ``available()`` says whether this machine can."""

    name: str
    backend: str
    precisions: tuple[str, ...]
    batch_sizes: tuple[int, ...] = (1,)
    threads: int | None = None
    provider: str | None = None
    provider_options: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    description: str = ""
    peak_gmacs: dict[str, float] = field(default_factory=dict)
    session: dict[str, Any] = field(default_factory=dict)
    runs_on: dict[str, Any] = field(default_factory=dict)

    def unavailable_reason(self) -> str | None:
        """None when this machine can run the profile, else why not (missing package, provider or device; a
        device profile off its device says how to run it there and bring the results back)."""
        elsewhere = self.elsewhere()
        if elsewhere:
            return elsewhere
        if self.backend == "onnxruntime":
            try:
                import onnxruntime as ort
            except ImportError:
                return "onnxruntime is not installed (pip install onnxruntime)"
            have = ort.get_available_providers()
            if self.provider not in have:
                return f"execution provider {self.provider} is missing (this onnxruntime has {', '.join(have)})"
        elif self.backend == "openvino":
            try:
                import openvino as ov
            except ImportError:
                return "openvino is not installed (pip install openvino)"
            devices = ov.Core().available_devices
            if self.device not in devices:
                return f"OpenVINO device {self.device} is missing (available: {', '.join(devices) or 'none'})"
        elif self.backend == "coreml":
            from runtime.classifier import coreml_unavailable_reason

            reason = coreml_unavailable_reason()
            if reason:
                return reason
        elif self.backend == "litert":
            from runtime.litert import litert_unavailable_reason

            reason = litert_unavailable_reason()
            if reason:
                return reason
        elif self.backend in ("executorch", "ncnn"):
            import importlib.util

            if importlib.util.find_spec(self.backend) is None:
                return f"{self.backend} is not installed (pip install 'edge-distill-toolkit[mobile]')"
        else:
            try:
                import tensorrt  # noqa: F401
            except ImportError:
                return "the tensorrt package is not installed (it ships with JetPack / pip install tensorrt)"
            try:
                from cuda.bindings import runtime as cudart
            except ImportError:
                return "cuda-python is not installed (pip install cuda-python)"
            err, count = cudart.cudaGetDeviceCount()
            if int(err) != 0 or count == 0:
                return "no CUDA GPU is visible"
        if self.threads and hasattr(os, "sched_getaffinity") and self.threads > len(os.sched_getaffinity(0)):
            return f"needs {self.threads} CPU threads, {len(os.sched_getaffinity(0))} usable here"
        return None

    def elsewhere(self) -> str | None:
        """None unless this is a device profile and this machine is not that device: then how to measure there."""
        if not self.runs_on:
            return None
        import platform

        from runtime.environment import board_model

        board = board_model() or ""
        here = platform.machine() == self.runs_on["machine"] and self.runs_on.get("board", "") in board
        if here and self.runs_on.get("via", "toolkit") == "toolkit":
            return None
        return f"measured on {self.runs_on['device']}: `toolkit targets {self.name}` says how"

    def how_to_measure(self) -> list[str]:
        """A device profile's steps, ending with reading the result back; empty for a profile that runs here."""
        if not self.runs_on:
            return []
        steps = list(self.runs_on["how"])
        if self.runs_on.get("via", "toolkit") == "toolkit":
            steps.append(f"here: toolkit bench RUN --import {self.name}.json (the file copied back)")
        return steps


def _runs_on(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ToolkitError(f"{where}: runs_on must be a mapping of {', '.join(RUNS_ON_FIELDS)}")
    for key in raw:
        if key not in RUNS_ON_FIELDS:
            raise ToolkitError(f"{where}: runs_on: unknown key '{key}'.{did_you_mean(key, RUNS_ON_FIELDS)}")
    for key in ("device", "machine"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ToolkitError(f"{where}: runs_on.{key} must be a non-empty string (e.g. device: Raspberry Pi 5, "
                               "machine: aarch64)")  # fmt: skip
    how = raw.get("how")
    if not isinstance(how, list) or not how or not all(isinstance(s, str) and s for s in how):
        raise ToolkitError(f"{where}: runs_on.how must be a non-empty list of steps (strings)")
    if raw.get("via", "toolkit") not in ("toolkit", "tool"):
        raise ToolkitError(f"{where}: runs_on.via must be toolkit (bench runs on the device) or tool (its own "
                           f"benchmark, imported), got {raw.get('via')!r}")  # fmt: skip
    if not isinstance(raw.get("board", ""), str):
        raise ToolkitError(f"{where}: runs_on.board must be a string (part of /proc/device-tree/model)")
    return dict(raw)


def _parse(name: str, raw: Any, source: str) -> TargetProfile:
    where = f"{source}: target '{name}'"
    if not isinstance(raw, dict):
        raise ToolkitError(f"{where}: expected a mapping of {', '.join(FIELDS)}")
    for key in raw:
        if key not in FIELDS:
            raise ToolkitError(f"{where}: unknown key '{key}'.{did_you_mean(key, FIELDS)}")
    backend = raw.get("backend")
    if backend not in BACKENDS:
        raise ToolkitError(f"{where}: backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    precisions = raw.get("precisions") or []
    bad = [p for p in precisions if p not in PRECISIONS]
    if not precisions or bad:
        raise ToolkitError(f"{where}: precisions must be a non-empty list of {', '.join(PRECISIONS)}, got {precisions}")
    batches = raw.get("batch_sizes", [1])
    if not batches or not all(isinstance(b, int) and b >= 1 for b in batches):
        raise ToolkitError(f"{where}: batch_sizes must be positive integers, got {batches}")
    threads = raw.get("threads")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ToolkitError(f"{where}: threads must be a positive integer or null, got {threads!r}")
    provider = raw.get("provider")
    if backend == "onnxruntime" and not provider:
        raise ToolkitError(f"{where}: an onnxruntime target needs provider (e.g. CPUExecutionProvider)")
    device = raw.get("device")
    if backend == "openvino" and not device:
        raise ToolkitError(f"{where}: an openvino target needs device (e.g. CPU)")
    options = raw.get("provider_options") or {}
    if not isinstance(options, dict):
        raise ToolkitError(f"{where}: provider_options must be a mapping")
    peak = raw.get("peak_gmacs") or {}
    if not isinstance(peak, dict) or any(
        p not in PRECISIONS or isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for p, v in peak.items()
    ):
        raise ToolkitError(f"{where}: peak_gmacs must map {', '.join(PRECISIONS)} to positive GMAC/s, got {peak!r}")
    session = raw.get("session") or {}
    if not isinstance(session, dict):
        raise ToolkitError(f"{where}: session must be a mapping of session settings (see `toolkit bench --tune`)")
    return TargetProfile(
        name=name,
        backend=backend,
        precisions=tuple(precisions),
        batch_sizes=tuple(batches),
        threads=threads,
        provider=provider,
        provider_options=dict(options),
        device=device,
        description=str(raw.get("description", "")),
        peak_gmacs={str(p): float(v) for p, v in peak.items()},
        session=dict(session),
        runs_on=_runs_on(raw.get("runs_on"), where),
    )


def _read(text: str, source: str) -> dict[str, TargetProfile]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ToolkitError(f"{source}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ToolkitError(f"{source}: expected a mapping of target name -> profile")
    return {str(name): _parse(str(name), raw, source) for name, raw in data.items()}


def load_targets(extra: str | os.PathLike[str] | None = None) -> dict[str, TargetProfile]:
    """Packaged profiles, then those of ``extra`` (a user YAML file) added or overriding by name."""
    targets = _read(resources.files("runtime").joinpath("targets.yaml").read_text(), "runtime/targets.yaml")
    if extra is not None:
        path = Path(extra)
        if not path.is_file():
            raise ToolkitError(f"{path}: targets file not found")
        targets.update(_read(path.read_text(), str(path)))
    return targets


def get_target(name: str, targets: dict[str, TargetProfile]) -> TargetProfile:
    if name not in targets:
        raise ToolkitError(f"unknown target '{name}'.{did_you_mean(name, targets)} Known: {', '.join(targets)}")
    return targets[name]
