"""Run directories: resolved config, manifest of hashes and versions, atomic writes.

runs/<name>/config.yaml        resolved recipe (what actually ran)
           preprocess.json     the preprocessing contract, with class names
           metrics.jsonl       one line per epoch
           metrics.json        final validation / test numbers
           student.safetensors weights of the selected epoch
           manifest.json       hashes, versions, data fingerprints, seeds, provenance
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from runtime.atomic import write_json
from runtime.errors import ToolkitError
from runtime.hashing import sha256_file
from runtime.locks import LOCK_NAME

PACKAGES = ("edge-distill-toolkit", "torch", "torchvision", "timm", "numpy", "pillow", "safetensors", "pydantic")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def code_version() -> dict[str, Any]:
    """The git commit of the source tree (and whether it had local changes), where it is a checkout."""
    here = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"git_commit": commit, "git_dirty": dirty}


def prepare_run_dir(path: Path, resume: bool, force: bool) -> Path:
    """Create ``path``; refuse to mix a new run into an old one unless told to resume or overwrite.
    Overwriting keeps ``pipeline.json``: `toolkit run` records there that its step is running (to continue it
    after a kill) before the step starts over in the directory."""
    if path.exists() and any(p.name != LOCK_NAME for p in path.iterdir()):
        if force and not resume:
            for child in path.iterdir():
                if child.name in ("pipeline.json", LOCK_NAME):
                    continue
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        elif not resume:
            raise ToolkitError(
                f"{path}: run directory already exists; pass --resume to continue it, --force to overwrite it, "
                "or --out to choose another"
            )
    elif resume:
        raise ToolkitError(f"{path}: no run to resume; run without --resume")
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "manifest.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ToolkitError(f"{path}: corrupt manifest ({exc})") from exc


def update_manifest(run_dir: Path, **sections: Any) -> dict[str, Any]:
    """Merge top-level ``sections`` into manifest.json, refresh artifact hashes, write atomically."""
    manifest = read_manifest(run_dir)
    manifest.update(sections)
    manifest.setdefault("created_utc", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    manifest["updated_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    manifest["environment"] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        **code_version(),
    }
    artifacts = {}
    for name in ("config.yaml", "preprocess.json", "student.safetensors", "metrics.jsonl", "metrics.json"):
        f = run_dir / name
        if f.is_file():
            artifacts[name] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
    manifest["artifacts"] = artifacts
    write_json(run_dir / "manifest.json", manifest)
    return manifest
