"""A target's peak multiply-accumulate rate per precision, from the documented table in peaks.yaml.

Looked up from what the environment reports (ISA flags, vendor, family, cores, clock; GPU name) or given
by the target profile's ``peak_gmacs``. When neither applies the peak is unknown and says how to add it:
a made-up denominator would make "% of peak" a lie.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import yaml

from runtime.targets import TargetProfile

UNKNOWN_HINT = "peak unknown: add it with --targets-file (the target's peak_gmacs: {int8: ..., fp32: ...})"


@cache
def peak_table() -> dict[str, list[dict[str, Any]]]:
    return yaml.safe_load(resources.files("runtime").joinpath("peaks.yaml").read_text())


def _matches(rule: dict[str, Any], cpu: dict[str, Any]) -> bool:
    flags = set(cpu.get("flags") or [])
    return (
        rule.get("arch", cpu.get("architecture")) == cpu.get("architecture")
        and rule.get("vendor", cpu.get("vendor")) == cpu.get("vendor")
        and ("families" not in rule or cpu.get("family") in rule["families"])
        and set(rule.get("flags_all", [])) <= flags
        and not set(rule.get("flags_none", [])) & flags
    )


def cpu_entry(cpu: dict[str, Any]) -> dict[str, Any] | None:
    """The first table entry that fits this CPU, or None."""
    return next((e for e in peak_table()["cpu"] if _matches(e["match"], cpu)), None)


def _clock_mhz(cpu: dict[str, Any]) -> tuple[float | None, str]:
    clocks = cpu.get("clock_mhz") or {}
    for key, where in (("max", "cpufreq cpuinfo_max_freq"), ("cpuinfo", "/proc/cpuinfo cpu MHz")):
        if clocks.get(key):
            return float(clocks[key]), where
    return None, "no clock reported"


def _runs_on_gpu(profile: TargetProfile) -> bool:
    return profile.backend == "tensorrt" or (profile.provider or "").startswith(("CUDA", "Tensorrt"))


def target_peak(profile: TargetProfile, environment: dict[str, Any]) -> dict[str, Any]:
    """{"gmacs": {precision: GMAC/s}, "basis": how it was obtained} or {"unknown": why, with the fix}."""
    if profile.peak_gmacs:
        return {"gmacs": dict(profile.peak_gmacs), "basis": f"target {profile.name}'s peak_gmacs"}
    if _runs_on_gpu(profile):
        gpus = environment.get("gpus") or []
        if not gpus:
            return {"unknown": f"no CUDA GPU name reported; {UNKNOWN_HINT}"}
        name = gpus[0]["name"]
        entry = next((g for g in peak_table()["gpu"] if g["match"] in name), None)
        if entry is None:
            return {"unknown": f"GPU {name!r} is not in runtime/peaks.yaml; {UNKNOWN_HINT}"}
        return {
            "gmacs": {p: v * 1000 for p, v in entry["tmacs"].items()},
            "basis": f"{entry['name']} dense tensor-core rate (datasheet)",
            "entry": entry["name"],
        }
    cpu = environment.get("cpu") or {}
    entry = cpu_entry(cpu)
    if entry is None:
        flags = ", ".join(cpu.get("flags") or []) or "none"
        return {"unknown": f"CPU {cpu.get('model')!r} (flags: {flags}) is not in runtime/peaks.yaml; {UNKNOWN_HINT}"}
    mhz, clock_source = _clock_mhz(cpu)
    if mhz is None:
        return {"unknown": f"the CPU clock is not reported here; {UNKNOWN_HINT}"}
    physical = max(1, int(cpu.get("usable_cores") or 1) // int(cpu.get("threads_per_core") or 1))
    cores = min(profile.threads, physical) if profile.threads else physical
    gmacs = {p: round(rate * cores * mhz / 1000, 1) for p, rate in entry["macs_per_cycle"].items()}
    per_cycle = ", ".join(f"{p} {r}" for p, r in entry["macs_per_cycle"].items())
    return {
        "gmacs": gmacs,
        "basis": f"{entry['name']}: MACs/cycle/core ({per_cycle}) x {cores} core(s) x {mhz:.0f} MHz "
        f"({clock_source}); {entry['source']}",
        "entry": entry["name"],
        "cores": cores,
        "clock_mhz": mhz,
    }


def reconcile_with_ceiling(peak: dict[str, Any], ceiling: dict[str, Any]) -> dict[str, Any]:
    """When a measured GEMM beats the table's peak, the reported clock is below the running one (turbo under a
    hypervisor): raise the clock to the lowest one the measurement allows, and say so."""
    if "gmacs" not in ceiling or "clock_mhz" not in peak:
        return peak
    rates = next(e for e in peak_table()["cpu"] if e["name"] == peak["entry"])["macs_per_cycle"]
    implied = max(ceiling["gmacs"][p] * 1000 / (rates[p] * peak["cores"]) for p in ceiling["gmacs"] if p in rates)
    if implied <= peak["clock_mhz"]:
        return peak
    scale = implied / peak["clock_mhz"]
    return {
        **peak,
        "gmacs": {p: round(v * scale, 1) for p, v in peak["gmacs"].items()},
        "clock_mhz": round(implied, 1),
        "reported_clock_mhz": peak["clock_mhz"],
        "basis": peak["basis"] + f"; clock raised to {implied:.0f} MHz, the least that explains the measured "
        f"GEMM ceiling ({ceiling['method']}): the reported {peak['clock_mhz']:.0f} MHz is not the running clock",
    }


def percent_of_peak(gmacs: float, peak: dict[str, Any], precision: str) -> float | None:
    rate = (peak.get("gmacs") or {}).get(precision)
    return round(100.0 * gmacs / rate, 1) if rate else None
