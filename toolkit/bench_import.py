"""`toolkit bench RUN --import FILE`: latency measured on a device (a phone, a board) read back into the run's
bench/ folder, so the report and its "what to ship" include it.

Three sources, each checked against the run before anything is written:
- a ``bench/<target>.json`` written by `toolkit bench` on the device itself (the torch-free runtime on a
  Raspberry Pi): every measured artifact's sha256 must equal this run's manifest entry;
- the text printed by LiteRT's ``benchmark_model`` (Android over adb, or its iOS app's console), for
  ``--target`` and ``--artifact``: the model it loaded must have the artifact's file name and size. It reports
  count, min, max, mean and std only: the mean stands in for p50 and says so wherever shown;
- a YAML written by hand from a tool with no machine-readable output (Xcode's Core ML performance report):
  ``artifact``, ``sha256`` (of the file that was measured), ``median_ms``, ``count``, ``tool``, ``device``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import yaml

from runtime.artifacts import Artifact, run_artifacts
from runtime.atomic import write_json
from runtime.errors import ToolkitError
from runtime.targets import TargetProfile, get_target, load_targets

MANUAL_KEYS = ("artifact", "sha256", "median_ms", "count", "tool", "device", "min_ms", "max_ms", "mean_ms", "load_ms")
# benchmark_model's statistics line, e.g. "count=50 first=2439 curr=2327 min=2251 max=3139 avg=2333.43 std=85" (us).
_STAT = re.compile(r"count=(\d+)(?: first=\S+)?(?: curr=\S+)? min=([\d.]+) max=([\d.]+) avg=([\d.]+) std=([\d.]+)")


def import_results(run_dir: Path, source: Path, target: str | None = None, artifact: str | None = None,
                   targets_file: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Check ``source`` against the run and write it as ``run_dir/bench/<target>.json``; returns that result."""
    if not source.is_file():
        raise ToolkitError(f"{source}: not found (the file the device wrote)")
    artifacts = {a.key: a for a in run_artifacts(run_dir)}
    targets = load_targets(targets_file)
    text = source.read_text(errors="replace")
    if source.suffix == ".json":
        if target or artifact:
            raise ToolkitError(f"{source}: a toolkit bench JSON names its own target and artifacts; drop --target "
                               "and --artifact")  # fmt: skip
        result = _from_bench_json(text, source, artifacts)
    else:
        if not target or not artifact:
            kind = "YAML" if source.suffix in (".yaml", ".yml") else "text"
            raise ToolkitError(f"{source}: importing a {kind} file needs --target (the device profile) and "
                               "--artifact (the run's artifact key)")  # fmt: skip
        profile = get_target(target, targets)
        if artifact not in artifacts:
            raise ToolkitError(f"--artifact {artifact!r}: not an exported artifact of {run_dir} (it has "
                               f"{', '.join(artifacts) or 'none'})")  # fmt: skip
        art = artifacts[artifact]
        if art.backend != profile.backend or art.precision not in profile.precisions:
            raise ToolkitError(f"--artifact {artifact} ({art.backend} {art.precision}) is not what target {target} "
                               f"runs ({profile.backend} {'/'.join(profile.precisions)})")  # fmt: skip
        if source.suffix in (".yaml", ".yml"):
            result = _from_manual(text, source, art, profile)
        else:
            result = _from_benchmark_model(text, source, art, profile)
    result["imported"] = {"from": str(source), "at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          **result.get("imported", {})}  # fmt: skip
    write_json(run_dir / "bench" / f"{result['target']['name']}.json", result)
    return result


def _from_bench_json(text: str, source: Path, artifacts: dict[str, Artifact]) -> dict[str, Any]:
    try:
        result = json.loads(text)
        name, entries, _ = result["target"]["name"], result["artifacts"], result["environment"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ToolkitError(f"{source}: not a `toolkit bench` result ({type(exc).__name__}: {exc})") from exc
    for entry in entries:
        key = entry.get("artifact")
        if key not in artifacts:
            raise ToolkitError(f"{source}: measured artifact {key!r}, which this run has not exported")
        if "sha256" not in entry:
            raise ToolkitError(f"{source}: artifact {key} has no sha256 (measured by an older toolkit); run "
                               "`toolkit bench` on the device again")  # fmt: skip
        want = _sha256(artifacts[key])
        if entry["sha256"] != want:
            raise ToolkitError(f"{source}: the {key} measured on the device ({entry['sha256'][:12]}) is not this "
                               f"run's ({want[:12]}); copy the run to the device again and bench it there")  # fmt: skip
    result["imported"] = {"source": "toolkit bench", "verified": "sha256 of every artifact equals this run's",
                          "target": name}  # fmt: skip
    return result


def _from_benchmark_model(text: str, source: Path, art: Artifact, profile: TargetProfile) -> dict[str, Any]:
    loaded = re.search(r"Loaded model (\S+)", text)
    size = re.search(r"The input model file size \(MB\): ([\d.]+)", text)
    stats = _STAT.findall(text)
    if not loaded or not stats:
        raise ToolkitError(f"{source}: not LiteRT benchmark_model output (no 'Loaded model' or 'count=... avg=...' "
                           "line)")  # fmt: skip
    if Path(loaded.group(1)).name != art.path.name:
        raise ToolkitError(f"{source}: benchmark_model loaded {Path(loaded.group(1)).name}, not {art.path.name} "
                           f"(--artifact {art.key})")  # fmt: skip
    if size and art.bytes and abs(float(size.group(1)) * 1e6 - art.bytes) > max(1e3, 1e-4 * art.bytes):
        raise ToolkitError(f"{source}: the model it loaded has {float(size.group(1)):.3f} MB, this run's "
                           f"{art.path.name} {art.bytes / 1e6:.3f} MB: another file")  # fmt: skip
    count, lo, hi, avg, std = stats[-1]  # the last line is the measured run (the first, the warm-up)
    init = re.search(r"Inference timings in us: Init: ([\d.]+)", text)
    threads = re.search(r"Num threads: \[(\d+)\]", text)
    memory = re.search(r"Peak memory footprint \(MB\): init=([\d.]+) overall=([\d.]+)", text)
    single = {"scenario": "SingleStream", "count": int(count), "min_ms": float(lo) / 1e3, "max_ms": float(hi) / 1e3,
              "mean_ms": float(avg) / 1e3, "std_ms": float(std) / 1e3, "p50_ms": None, "p90_ms": None,
              "p95_ms": None, "p99_ms": None,
              "note": "benchmark_model reports count, min, max, mean and std only (no percentiles)"}  # fmt: skip
    entry = _entry(art, single, None if not init else float(init.group(1)) / 1e6)
    if memory:
        entry["memory"] = {"peak_rss_mb": float(memory.group(2)), "note": "benchmark_model's peak memory footprint"}
    environment = {"device": profile.runs_on.get("device", profile.name), "tool": "LiteRT benchmark_model",
                   "threads": int(threads.group(1)) if threads else None}  # fmt: skip
    return _result(profile, environment, [entry], "the loaded model's file name and size match this run's")


def _from_manual(text: str, source: Path, art: Artifact, profile: TargetProfile) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ToolkitError(f"{source}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ToolkitError(f"{source}: expected a mapping of {', '.join(MANUAL_KEYS)}")
    for key in data:
        if key not in MANUAL_KEYS:
            from runtime.errors import did_you_mean

            raise ToolkitError(f"{source}: unknown key '{key}'.{did_you_mean(key, MANUAL_KEYS)}")
    for key in ("artifact", "sha256", "median_ms", "count", "tool", "device"):
        if key not in data:
            raise ToolkitError(f"{source}: missing '{key}' (needs {', '.join(MANUAL_KEYS[:6])})")
    if data["artifact"] != art.key:
        raise ToolkitError(f"{source}: artifact {data['artifact']!r} but --artifact {art.key}")
    want = _sha256(art)
    if str(data["sha256"]) != want:
        raise ToolkitError(f"{source}: sha256 {str(data['sha256'])[:12]} is not this run's {art.key} ({want[:12]}); "
                           "measure this run's file")  # fmt: skip
    numbers = {k: data[k] for k in ("median_ms", "min_ms", "max_ms", "mean_ms", "load_ms") if k in data}
    bad = [k for k, v in numbers.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0]
    if bad or not isinstance(data["count"], int) or isinstance(data["count"], bool) or data["count"] < 1:
        raise ToolkitError(f"{source}: {(bad or ['count'])[0]} must be a positive number")
    single = {"scenario": "SingleStream", "count": data["count"], "p50_ms": float(data["median_ms"]),
              "min_ms": numbers.get("min_ms"), "max_ms": numbers.get("max_ms"), "mean_ms": numbers.get("mean_ms"),
              "p90_ms": None, "p95_ms": None, "p99_ms": None,
              "note": f"entered by hand from {data['tool']}"}  # fmt: skip
    load = numbers.get("load_ms")
    entry = _entry(art, single, None if load is None else load / 1e3)
    environment = {"device": str(data["device"]), "tool": str(data["tool"])}
    return _result(profile, environment, [entry], "sha256 given by hand equals this run's")


def _entry(art: Artifact, single: dict[str, Any], load_s: float | None) -> dict[str, Any]:
    return {"artifact": art.key, "label": art.label, "file": art.path.name, "bytes": art.bytes,
            "sha256": _sha256(art), "single_stream": single, "offline": [], "load_s": load_s}  # fmt: skip


def _result(profile: TargetProfile, environment: dict[str, Any], entries: list[dict], verified: str) -> dict:
    return {"target": {"name": profile.name, **{k: v for k, v in vars(profile).items() if k != "name"}},
            "environment": environment, "artifacts": entries,
            "imported": {"source": environment["tool"], "verified": verified}}  # fmt: skip


def _sha256(art: Artifact) -> str:
    from runtime.hashing import sha256_file, sha256_path

    return sha256_path(art.path) if art.path.is_dir() else sha256_file(art.path)
