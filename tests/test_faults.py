"""Injected faults: no space for an export or a cache (refused up front, naming the path and the size), a write
that fails midway (the kernel's file-size limit; a real full tmpfs where this machine lets us mount one),
SIGKILL in the middle of export, eval, bench and report. Each leaves nothing half-written, and the rerun
completes."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest
from conftest import REPO, TINY_CLIP_SPEC, write_image_folder, write_recipe, write_tiny_clip_config
from typer.testing import CliRunner

from distill.teacher_cache import TeacherCache
from runtime.classifier import OnnxClassifier
from runtime.errors import ToolkitError
from runtime.hashing import sha256_file
from toolkit.cli import app

runner = CliRunner()
pytestmark = pytest.mark.slow
ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("faults")
    data = write_image_folder(tmp / "data", per_class=8, size=20)
    recipe = write_recipe(tmp / "r.yaml", data, epochs=1)
    res = runner.invoke(app, ["train", str(recipe), "--out", str(tmp / "run")])
    assert res.exit_code == 0, res.output
    return tmp / "run"


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("checkpoints"))
    return dest


def half_written(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.name]


def toolkit(*args: str, limit_bytes: int | None = None) -> subprocess.CompletedProcess[str]:
    def limit() -> None:  # writes past the limit fail with EFBIG (SIGXFSZ ignored), in C++ writers too
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", "toolkit", *args], capture_output=True, text=True, cwd=REPO, env=ENV,
                          preexec_fn=limit if limit_bytes else None, timeout=600)  # fmt: skip


def one_line_error(proc: subprocess.CompletedProcess[str], *named: str) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert all(n in errors[0] for n in named), (named, errors[0])
    return errors[0]


# ---------------------------------------------------------------- no space, checked before anything is written


def test_export_and_cache_refuse_to_start_without_the_space_they_need(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = copy_run(trained, tmp_path / "run")
    before = sorted(p.name for p in run.iterdir())
    monkeypatch.setattr("runtime.atomic.shutil.disk_usage", lambda p: namedtuple("U", "total used free")(1, 1, 5000))
    res = runner.invoke(app, ["export", str(run), "--int8"])
    assert isinstance(res.exception, ToolkitError), res.output
    message = str(res.exception)
    assert str(run) in message and "export (FP32 and INT8 for onnxruntime) needs about" in message
    assert "0.0 MB is free there" in message
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written, not even the lock
    config = write_tiny_clip_config(tmp_path)
    cache = tmp_path / "cache"
    args = ["cache", "build", "--out", str(cache), "--data", str(trained.parent / "data"), "--teacher",
            TINY_CLIP_SPEC, "--openclip-config", str(config), "--crops", "2"]  # fmt: skip
    res = runner.invoke(app, args)
    assert isinstance(res.exception, ToolkitError), res.output
    assert "the teacher cache (32 images x 2 crops) needs about" in str(res.exception)
    assert not cache.exists()


# ---------------------------------------------------------------- a write that fails midway


def test_export_whose_write_fails_midway_leaves_nothing_and_reruns(trained: Path, tmp_path: Path) -> None:
    run = copy_run(trained, tmp_path / "run")
    proc = toolkit("export", str(run), limit_bytes=1_000_000)  # the ResNet-18 ONNX file is ~45 MB
    one_line_error(proc, str(run / "model.onnx"), "ulimit -f", "nothing half-written")
    assert not (run / "model.onnx").exists() and not half_written(run)
    proc = toolkit("export", str(run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert OnnxClassifier(run / "model.onnx").contract.class_names


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A 64 KiB tmpfs (a real ENOSPC) where this machine allows mounting one (root with CAP_SYS_ADMIN)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN); the ulimit case covers the rest")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize("fault", ["ulimit", "tmpfs"])
def test_cache_build_whose_write_fails_midway_keeps_complete_shards_and_resumes(
    trained: Path, tmp_path: Path, fault: str, request: pytest.FixtureRequest
) -> None:
    config = write_tiny_clip_config(tmp_path)
    root = request.getfixturevalue("tmpfs") if fault == "tmpfs" else tmp_path
    cache = root / "cache"
    args = ["cache", "build", "--out", str(cache), "--data", str(trained.parent / "data"), "--teacher", TINY_CLIP_SPEC,
            "--openclip-config", str(config), "--crops", "2", "--shard-size", "1"]  # fmt: skip
    proc = toolkit(*args, limit_bytes=400 if fault == "ulimit" else None)
    one_line_error(proc, str(cache), "ulimit -f" if fault == "ulimit" else "no space left on the device")
    assert not half_written(cache)
    for done in cache.glob("shard-*.json"):  # every shard marked complete is intact
        files = json.loads(done.read_text())["files"]
        assert {n: sha256_file(cache / done.stem / n) for n in files} == files
    if fault == "tmpfs":
        subprocess.run(["mount", "-o", "remount,size=4m", str(root)], check=True)
    proc = toolkit(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    TeacherCache(cache, verify=True)


# ---------------------------------------------------------------- SIGKILL mid-command, then rerun


def kill_midway(args: list[str], folder: Path, latest_s: float) -> None:
    """Start ``toolkit args``; SIGKILL it when a temp file appears under ``folder`` (a write in progress) or after
    ``latest_s`` seconds of its work, whichever comes first."""
    proc = subprocess.Popen([sys.executable, "-m", "toolkit", *args], cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    lock = folder / ".lock"
    deadline = None
    while proc.poll() is None:
        if deadline is None and lock.is_file():  # started: imports done, its work begins
            deadline = time.monotonic() + latest_s
        if half_written(folder) or (deadline is not None and time.monotonic() > deadline):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "finished before it could be killed: make latest_s smaller"


@pytest.mark.parametrize(
    ("step", "args", "latest_s"),
    [
        ("export", ["export", "{run}", "--int8", "--calib-size", "16", "--held-out-images", "16"], 4.0),
        ("eval", ["eval", "{run}", "--data", "{data}", "--artifact", "all"], 1.0),
        ("bench", ["bench", "{run}", "--min-duration", "2", "--min-queries", "5", "--max-duration", "3"], 1.5),
        ("report", ["report", "{run}"], 0.3),
    ],
)
def test_sigkill_midway_then_rerun_completes(trained: Path, tmp_path: Path, step: str, args: list[str],
                                             latest_s: float) -> None:  # fmt: skip
    run = copy_run(trained, tmp_path / "run")
    data = str(trained.parent / "data")
    before = ["export", str(run), "--int8", "--calib-size", "16", "--held-out-images", "16"]
    steps = {"export": [], "eval": [before], "bench": [before],
             "report": [before, ["eval", str(run), "--data", data, "--artifact", "all"]]}  # fmt: skip
    for prior in steps[step]:
        assert runner.invoke(app, prior).exit_code == 0
    filled = [a.format(run=run, data=data) for a in args]
    kill_midway(filled, run, latest_s)
    assert (run / ".lock").is_file()  # the killed command's holder record stays behind, as stale
    proc = toolkit(*filled)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stale, taking over" in proc.stderr and not half_written(run) and not (run / ".lock").exists()
    if step in ("export", "eval", "bench"):  # what the rerun wrote is whole: the next steps read it
        for follow in (["eval", str(run), "--data", data, "--artifact", "all"], ["report", str(run)]):
            assert toolkit(*follow).returncode == 0


def test_files_changed_since_they_were_written_are_refused_at_load(trained: Path, tmp_path: Path) -> None:
    run = copy_run(trained, tmp_path / "run")
    assert runner.invoke(app, ["export", str(run)]).exit_code == 0
    with open(run / "model.onnx", "ab") as fh:  # e.g. a copy cut short, or edited by hand
        fh.write(b"\0")
    res = runner.invoke(app, ["eval", str(run), "--data", str(trained.parent / "data"), "--artifact", "onnx"])
    assert isinstance(res.exception, ToolkitError) and str(run / "model.onnx") in str(res.exception)
    assert "sha256 differs" in str(res.exception)
    weights = run / "student.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    weights.write_bytes(bytes(blob))
    res = runner.invoke(app, ["export", str(run)])
    assert isinstance(res.exception, ToolkitError) and str(weights) in str(res.exception)
    assert "sha256 differs" in str(res.exception)
