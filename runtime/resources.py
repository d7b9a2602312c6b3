"""What a session costs besides time: resident memory, load time and, where the machine exposes a meter,
energy per inference (Intel/AMD RAPL under /sys/class/powercap). Never a made-up 0: absent meters say why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

POWERCAP = Path("/sys/class/powercap")


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb() -> float | None:
    """This process's resident memory now (Linux), MB."""
    kb = _status_kb("VmRSS")
    return None if kb is None else round(kb / 1024, 1)


def reset_peak_rss() -> bool:
    """Restart the process's peak-RSS high-water mark (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    """The process's peak resident memory since start or the last reset, MB."""
    kb = _status_kb("VmHWM")
    return None if kb is None else round(kb / 1024, 1)


class EnergyMeter:
    """Package energy from RAPL: ``read()`` in joules (all packages summed), wrap-around handled."""

    def __init__(self, root: Path = POWERCAP) -> None:
        self.domains: list[tuple[Path, int]] = []
        self.unavailable: str | None = None
        zones = sorted(root.glob("intel-rapl:[0-9]")) + sorted(root.glob("amd-rapl:[0-9]")) if root.is_dir() else []
        if not zones:
            self.unavailable = "not available here: no RAPL energy counters under /sys/class/powercap"
            return
        for zone in zones:
            try:
                (zone / "energy_uj").read_text()
                top = int((zone / "max_energy_range_uj").read_text())
            except PermissionError:
                self.unavailable = (f"not available here: {zone}/energy_uj is readable by root only "
                                    "(run as root or `chmod o+r` it)")  # fmt: skip
                self.domains = []
                return
            except (OSError, ValueError) as exc:
                self.unavailable = f"not available here: {zone} cannot be read ({exc})"
                self.domains = []
                return
            self.domains.append((zone / "energy_uj", top))

    def read(self) -> list[int]:
        return [int(path.read_text()) for path, _ in self.domains]

    def joules_between(self, before: list[int], after: list[int]) -> float:
        total = 0
        for (_, top), a, b in zip(self.domains, before, after):
            total += b - a if b >= a else b + top - a
        return total / 1e6


def energy_per_query(meter: EnergyMeter, before: list[int], after: list[int], queries: int) -> dict[str, Any]:
    """mJ per inference over a measured loop, or why there is no figure."""
    if meter.unavailable:
        return {"unavailable": meter.unavailable}
    joules = meter.joules_between(before, after)
    return {"mj_per_inference": round(1000 * joules / max(queries, 1), 4), "joules": round(joules, 4),
            "meter": "RAPL package energy (whole CPU package: includes other work on the machine)"}  # fmt: skip
