"""`toolkit distill --resume`: SIGKILL at a random point of a PAND or DAIT stage, single process and 2-process
DDP (torchrun, gloo on CPU), and the resumed run ends bit-identical to an uninterrupted one. The DDP run also
builds the teacher cache sharded over both ranks, byte-identical to a single process's."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, TINY_CLIP_SPEC, write_image_folder, write_tiny_clip_config

from distill.weights import load_state_dict

pytestmark = pytest.mark.slow
TIMING = ("time_s", "train_images_per_s")
PARAMS = {"pand": {"coop_epochs": 3, "coop_n_ctx": 2, "coop_batch_size": 8},
          "dait_f": {"it_pretrained": False, "it_model": "resnet18", "it_epochs": 2}}  # fmt: skip


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("resume")
    return {
        "tmp": tmp,
        "config": write_tiny_clip_config(tmp),
        "data": write_image_folder(tmp / "train", per_class=16, size=20),
        "test": write_image_folder(tmp / "test", per_class=2, seed=1, size=20),
    }


def recipe_for(ws: dict[str, Path], method: str, cache: str = "cache") -> Path:
    recipe = {
        "name": f"resume_{method}",
        "seed": 3,
        "data": {"train": {"kind": "imagefolder", "path": str(ws["data"])},
                 "test": {"kind": "imagefolder", "path": str(ws["test"])}, "val_fraction": 0.25},
        "preprocess": {"input_size": 16, "resize_size": 16},
        "student": {"name": "resnet18", "drop_rate": 0.2},  # dropout: the per-step RNG must be restored too
        "train": {"epochs": 3, "batch_size": 8, "eval_batch_size": 32, "precision": "fp32",
                  "optimizer": {"name": "adamw", "lr": 1e-3}, "ema": {"enabled": True, "decay": 0.9},
                  "checkpoint_every_steps": 1},
        "distill": {"method": method, "teacher": TINY_CLIP_SPEC, "teacher_config": str(ws["config"]),
                    "params": PARAMS[method],
                    "cache": {"crops": 2, "dir": str(ws["tmp"] / cache), "shard_size": 4}},
    }  # fmt: skip
    path = ws["tmp"] / f"{method}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def distill_cmd(*args: object, ranks: int = 1) -> list[str]:
    head = [sys.executable, "-m", "toolkit"]
    if ranks > 1:
        head = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
                "-m", "toolkit"]  # fmt: skip
    return [*head, "distill", *map(str, args)]


def run_ok(cmd: list[str]) -> str:
    res = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    return res.stderr


def progress(run: Path, stage: str) -> int:
    """Optimizer steps of ``stage`` checkpointed so far (epochs x 1000 + steps into the epoch); a finished
    stage (its done.json written) counts as 10**6."""
    if (run / "checkpoints" / stage / "done.json").is_file():
        return 10**6
    pointer = run / "checkpoints" / stage / "last.json"
    if not pointer.is_file():
        return 0
    try:
        state = json.loads(pointer.read_text())
    except json.JSONDecodeError:
        return 0
    return state["epochs_done"] * 1000 + state["steps_done"]


def process_tree(pid: int) -> list[int]:
    """``pid`` and every descendant (torchrun starts its workers in sessions of their own: killpg misses them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def kill_during(cmd: list[str], run: Path, stage: str, target: int) -> None:
    proc = subprocess.Popen(cmd, env=env(), stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and progress(run, stage) < target:
        time.sleep(0.01)
    assert proc.poll() is None, f"finished before reaching {stage} step {target}; make the task bigger"
    for pid in process_tree(proc.pid):  # the whole job at once, as when the machine goes down
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)  # let the kernel reap the workers before the rerun reads their files
    assert not (run / "student.safetensors").exists()


def untimed_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def assert_same_run(a: Path, b: Path) -> None:
    for name in ("student.safetensors", "anchors.safetensors", "intermediate_teacher.safetensors"):
        if not (a / name).exists():
            continue
        x, y = load_state_dict(a / name), load_state_dict(b / name)
        assert x.keys() == y.keys(), name
        for k in x:
            assert torch.equal(x[k], y[k]), f"{name}: {k}"
    assert untimed_rows(a) == untimed_rows(b)


@pytest.fixture(scope="module")
def full_runs(ws: dict[str, Path]) -> dict[str, Path]:
    out = {}
    for method in PARAMS:
        out[method] = ws["tmp"] / f"full_{method}"
        run_ok(distill_cmd(recipe_for(ws, method), "--out", out[method]))
    return out


FIRST = {"pand": "psc", "dait_f": "intermediate"}


# One case per mechanism (each stage kind, and between stages): the suite's time budget. The student stage of
# DAIT and the gap after PAND's PSC exercise the same code paths as the cases kept.
@pytest.mark.parametrize(("method", "stage"), [("pand", "psc"), ("pand", "student"), ("dait_f", "intermediate"),
                                               ("dait_f", "between")])  # fmt: skip
def test_sigkill_at_a_random_step_then_resume_is_bit_identical(ws, full_runs, tmp_path: Path, method, stage) -> None:
    rng = random.Random(f"{method}/{stage}")
    epoch, step = rng.randrange(2), rng.randrange(1, 3)  # steps/epoch: 6 (student, IT), 6 (PSC, batch 8)
    run = tmp_path / "killed"
    cmd = distill_cmd(recipe_for(ws, method), "--out", run)
    if stage == "between":  # as soon as the first stage's done-marker is written
        kill_during(cmd, run, FIRST[method], 10**6)
    else:
        kill_during(cmd, run, stage, epoch * 1000 + step)
    log = run_ok(distill_cmd(run, "--resume"))  # the run directory's own config.yaml is the recipe
    if stage == "between":
        assert f"{FIRST[method]}: finished in an earlier run" in log
        stage = FIRST[method]
    else:
        assert f"{stage} resumed from" in log.replace("\n", "")
    assert_same_run(full_runs[method], run)
    done = json.loads((run / "checkpoints" / stage / "done.json").read_text())
    assert done["summary"]["selected_epoch"] >= 1


def test_resume_of_a_finished_run_skips_every_stage(ws, full_runs, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(full_runs["pand"], run)
    log = run_ok(distill_cmd(run, "--resume"))
    assert "psc: finished in an earlier run" in log and "student: finished in an earlier run" in log
    assert_same_run(full_runs["pand"], run)


@pytest.mark.parametrize(("method", "stage"), [("pand", "student"), ("dait_f", "intermediate")])
def test_ddp_two_ranks_shard_the_cache_and_resume_bit_identical(ws, full_runs, tmp_path: Path, method, stage) -> None:
    recipe = recipe_for(ws, method, cache=f"cache_ddp_{method}")
    ddp = tmp_path / "ddp"
    log = run_ok(distill_cmd(recipe, "--out", ddp, ranks=2))
    assert "2 rank(s) x 4/micro-batch" in log.replace("\n", "")
    # Each rank computed its own shards; together they are the single process's cache, byte for byte.
    single, sharded = ws["tmp"] / "cache", ws["tmp"] / f"cache_ddp_{method}"
    shard_files = sorted(p.relative_to(sharded) for p in sharded.rglob("*") if p.is_file())
    assert len([p for p in shard_files if p.suffix == ".npy"]) >= 6
    for rel in shard_files:
        assert (sharded / rel).read_bytes() == (single / rel).read_bytes(), rel
    # Metrics are reduced over ranks: every training image of the epoch is counted once.
    rows = [json.loads(line) for line in (ddp / "metrics.jsonl").read_text().splitlines()]
    assert all(r["train_images"] == 48 for r in rows)  # 6 steps x 8 (2 ranks x 4), every stage
    manifest = json.loads((ddp / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["status"] == "trained"

    killed = tmp_path / "ddp_killed"
    rng = random.Random(f"ddp/{method}")
    epoch, step = rng.randrange(2), rng.randrange(1, 4)
    kill_during(distill_cmd(recipe, "--out", killed, ranks=2), killed, stage, epoch * 1000 + step)
    log = run_ok(distill_cmd(killed, "--resume", ranks=2))
    assert f"{stage} resumed from" in log.replace("\n", "")
    assert_same_run(ddp, killed)
