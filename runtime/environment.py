"""The machine a measurement ran on: CPU model and ISA flags, cores, clocks, runtime versions.

Latency means nothing without it (the same INT8 model is 3x faster with VNNI than without), so every
bench result carries this. Linux files are read where they exist; elsewhere fields are None.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

RUNTIME_PACKAGES = (
    "numpy",
    "pillow",
    "onnxruntime",
    "onnxruntime-gpu",
    "openvino",
    "tensorrt",
    "ai-edge-litert",
    "ncnn",
    "executorch",
    "coremltools",
)
# The ISA extensions that decide INT8/BF16 speed on x86 and Arm CPUs.
CPU_FLAGS = (
    "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
    "asimd", "asimddp", "i8mm", "bf16", "sve",
)  # fmt: skip


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _cpuinfo() -> dict[str, str]:
    text = _read("/proc/cpuinfo") or ""
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in info:
            info[key.strip()] = value.strip()
    return info


def _khz_to_mhz(value: str | None) -> float | None:
    return round(int(value) / 1000, 1) if value and value.isdigit() else None


def _mhz(value: str | None) -> float | None:
    try:
        return round(float(value), 1) if value else None
    except ValueError:
        return None


def cpu_description() -> dict[str, Any]:
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    freq = "/sys/devices/system/cpu/cpu0/cpufreq"
    siblings, cores = info.get("siblings", ""), info.get("cpu cores", "")
    return {
        "model": info.get("model name") or info.get("Model") or platform.processor() or None,
        "vendor": info.get("vendor_id") or info.get("CPU implementer"),
        "family": int(info["cpu family"]) if info.get("cpu family", "").isdigit() else None,
        "architecture": platform.machine(),
        "threads_per_core": int(siblings) // int(cores) if siblings.isdigit() and cores.isdigit() and int(cores) else 1,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "flags": sorted(f for f in CPU_FLAGS if f in flags),
        "clock_mhz": {
            "current": _khz_to_mhz(_read(f"{freq}/scaling_cur_freq")),
            "max": _khz_to_mhz(_read(f"{freq}/cpuinfo_max_freq")),
            "cpuinfo": _mhz(info.get("cpu MHz")),
        },
        "governor": _read(f"{freq}/scaling_governor"),
    }


def board_model() -> str | None:
    """The board's name where the firmware gives one (Raspberry Pi, Jetson: /proc/device-tree/model), else None."""
    text = _read("/proc/device-tree/model")
    return text.rstrip("\x00") if text else None


def runtime_versions(names: tuple[str, ...] = RUNTIME_PACKAGES) -> dict[str, str]:
    """Installed versions of the inference stacks (absent ones are left out)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def describe_environment() -> dict[str, Any]:
    """Everything a reader needs to compare two latency numbers."""
    return {
        "hostname": platform.node(),
        "board": board_model(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cpu": cpu_description(),
        "memory_gb": _memory_gb(),
        "packages": runtime_versions(),
        "power": _power(),
        "gpus": _gpus(),
    }


def _gpus() -> list[dict[str, Any]]:
    """CUDA devices by name and SM count, where cuda-python is installed (empty otherwise)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return []
    err, count = cudart.cudaGetDeviceCount()
    gpus = []
    for i in range(count if int(err) == 0 else 0):
        err, props = cudart.cudaGetDeviceProperties(i)
        if int(err) == 0:
            name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
            gpus.append({"name": name.strip("\x00 "), "sm_count": int(props.multiProcessorCount)})
    return gpus


def _memory_gb() -> float | None:
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return None


def _power() -> dict[str, Any] | None:
    """Jetson power mode (nvpmodel) or the battery/AC state, where the OS exposes it."""
    nvp = _read("/etc/nvpmodel.conf")
    mode = _read("/var/lib/nvpmodel/status")
    if nvp or mode:
        return {"nvpmodel": mode}
    supplies = Path("/sys/class/power_supply")
    if supplies.is_dir():
        online = {p.name: _read(str(p / "online")) for p in supplies.iterdir() if (p / "online").exists()}
        return {"ac_online": online} if online else None
    return None
