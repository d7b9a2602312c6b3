"""One writer per run directory (holder named, stale locks of killed commands taken over) and one builder per
teacher-cache shard (a second process waits for it and reuses it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_CLIP_SPEC, write_image_folder, write_tiny_clip_config
from typer.testing import CliRunner

from distill.crops import CropRecipe
from distill.teacher_cache import TeacherCache, build_cache, cache_spec
from distill.teachers.registry import create_teacher
from runtime.errors import ToolkitError
from runtime.locks import LOCK_NAME, release, run_lock, try_flock
from runtime.manifests import load_image_folder
from toolkit.cli import app

HOLD = """
import sys, time
from pathlib import Path
from runtime.locks import run_lock
with run_lock(Path(sys.argv[1]), "toolkit holder"):
    print("held", flush=True)
    time.sleep(120)
"""


def hold(run_dir: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_second_command_on_a_run_directory_names_the_holder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = hold(run)
    try:
        for args in (["report", str(run)], ["export", str(run)], ["eval", str(run), "--data", str(tmp_path)]):
            proc = subprocess.run([sys.executable, "-m", "toolkit", *args], capture_output=True, text=True, cwd=REPO)
            assert proc.returncode == 2, proc.stderr
            assert f"in use by `toolkit holder` (pid {holder.pid} on " in proc.stderr and "Traceback" not in proc.stderr
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_leaves_a_stale_lock_that_the_next_command_takes_over(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = hold(run)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == holder.pid  # its record survives the kill
    said: list[str] = []
    with run_lock(run, "toolkit next", log=said.append):
        record = json.loads((run / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["command"] == "toolkit next"
        with run_lock(run, "toolkit nested"):  # `toolkit run` holds it while its steps take it again
            pass
        assert try_flock(run / LOCK_NAME) is None  # still held after the nested block
    assert len(said) == 1 and "stale" in said[0] and f"pid {holder.pid}" in said[0]
    assert not (run / LOCK_NAME).exists()  # released cleanly: nothing stale for the next one


def test_only_rank_zero_takes_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    holder = hold(tmp_path / "run")
    try:
        monkeypatch.setenv("RANK", "1")
        with run_lock(tmp_path / "run"):  # the other ranks of the holder's own torchrun job read, never write
            pass
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(ToolkitError, match="in use by"), run_lock(tmp_path / "run"):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_a_command_that_fails_early_leaves_no_run_directory(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert res.exit_code != 0 and not (tmp_path / "nope").exists()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("locks")
    config = write_tiny_clip_config(tmp)
    data = write_image_folder(tmp / "data", per_class=3, size=20)
    return config, data


def _spec_and_teacher(config: Path, data: Path):
    torch.manual_seed(0)
    teacher = create_teacher(TINY_CLIP_SPEC, config=config)
    dataset = load_image_folder(data)
    return teacher, dataset, cache_spec(teacher, dataset, 2, CropRecipe(), 0, 0, None)


def test_a_shard_held_by_another_builder_is_waited_for(tiny, tmp_path: Path) -> None:
    teacher, dataset, spec = _spec_and_teacher(*tiny)
    root = tmp_path / "cache"
    other = try_flock(root / ".shard-00001.lock")  # another process is building shard 1
    said: list[str] = []
    result: list[int] = []
    worker = threading.Thread(
        target=lambda: result.append(build_cache(root, teacher, dataset, spec, shard_size=4, log=said.append))
    )
    worker.start()
    for _ in range(200):
        if any("shard 1 is being built by another process" in s for s in said):
            break
        time.sleep(0.05)
    assert worker.is_alive() and not (root / "shard-00001.json").exists()
    assert (root / "shard-00000.json").is_file() and (root / "shard-00002.json").is_file()
    release(other)  # that process died without finishing: the waiter builds the shard itself
    worker.join(60)
    assert result == [3]
    TeacherCache(root, verify=True)


CONCURRENT = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from test_locks import _spec_and_teacher
from distill.teacher_cache import build_cache
teacher, dataset, spec = _spec_and_teacher(Path(sys.argv[1]), Path(sys.argv[2]))
go = Path(sys.argv[3])
while not go.exists():
    time.sleep(0.01)
print(build_cache(Path(sys.argv[3]).parent / "cache", teacher, dataset, spec, shard_size=1, log=lambda s: None))
"""


def test_two_processes_building_one_cache_build_each_shard_once(tiny, tmp_path: Path) -> None:
    config, data = tiny
    go = tmp_path / "go"
    cmd = [sys.executable, "-c", CONCURRENT, str(config), str(data), str(go), str(REPO / "tests")]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for _ in range(2)]  # fmt: skip
    time.sleep(8)  # both have loaded torch, the teacher and the data
    go.touch()
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outputs]
    built = [int(o[0].strip()) for o in outputs]
    cache = TeacherCache(tmp_path / "cache", verify=True)
    assert sum(built) == cache.spec.num_images == 12, built  # shard size 1: every image built exactly once
