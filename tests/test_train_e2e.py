"""End to end: `toolkit train` / `toolkit eval` on real image files, resume after kill, DDP on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, write_image_folder, write_recipe
from safetensors.torch import load_file
from test_images_datasets import make_bad_images
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.rundir import sha256_file

pytestmark = pytest.mark.slow
runner = CliRunner()


def toolkit_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "toolkit", *map(str, args)]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("e2e")
    data = write_image_folder(tmp / "data", per_class=20)
    recipe = write_recipe(tmp / "r.yaml", data, epochs=2)
    res = runner.invoke(app, ["train", str(recipe), "--out", str(tmp / "run"), "--set", "train.ema.enabled=true"])
    assert res.exit_code == 0, res.output
    return tmp / "run"


def test_run_directory_contents(trained_run: Path) -> None:
    for name in (
        "config.yaml",
        "preprocess.json",
        "metrics.jsonl",
        "metrics.json",
        "student.safetensors",
        "manifest.json",
    ):
        assert (trained_run / name).is_file(), name
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["train"]["ema"]["enabled"] is True  # the CLI override is in the resolved config
    assert config["preprocess"]["mean"] == [0.485, 0.456, 0.406]  # default filled in from the student
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all("val_top1" in r for r in rows)
    manifest = json.loads((trained_run / "manifest.json").read_text())
    assert manifest["status"] == "trained" and manifest["seed"] == 0
    assert manifest["data"]["split"]["train_n"] == 64 and manifest["data"]["split"]["val_n"] == 16
    assert len(manifest["data"]["train"]["fingerprint"]) == 64
    assert manifest["environment"]["packages"]["torch"] == torch.__version__.split("+")[0]
    student = manifest["artifacts"]["student.safetensors"]
    assert student["sha256"] == sha256_file(trained_run / "student.safetensors")
    assert not list(trained_run.rglob("*.tmp"))
    assert oct((trained_run / "student.safetensors").stat().st_mode & 0o777) != "0o600"


def test_student_learns_the_easy_task(trained_run: Path) -> None:
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["best_val_top1"] >= 0.75  # colours are trivially separable; chance is 0.25


def test_eval_command_on_folder_and_csv(trained_run: Path, tmp_path: Path) -> None:
    held_out = write_image_folder(tmp_path / "held_out", per_class=8, seed=99)
    res = runner.invoke(app, ["eval", str(trained_run), "--data", str(held_out)])
    assert res.exit_code == 0, res.output
    report = json.loads((trained_run / "eval" / "held_out" / "metrics.json").read_text())
    assert report["n"] == 32 and set(report["per_class"]) == {"blue", "green", "red", "yellow"}
    assert sum(map(sum, report["confusion"])) == 32
    assert (trained_run / "eval" / "held_out" / "confusion.csv").read_text().startswith("true \\ predicted,blue")
    assert f"top-1 {report['top1']:.4f}" in res.output
    csv = tmp_path / "subset.csv"
    csv.write_text("path,label\n" + "".join(f"held_out/red/{i:03d}.png,red\n" for i in range(4)))
    res = runner.invoke(app, ["eval", str(trained_run), "--data", str(csv)])
    assert res.exit_code == 0, res.output
    sub = json.loads((trained_run / "eval" / "subset" / "metrics.json").read_text())
    assert sub["n"] == 4 and sub["support"]["red"] == 4 and sub["per_class"]["blue"] is None
    manifest = json.loads((trained_run / "manifest.json").read_text())
    assert set(manifest["evaluations"]) >= {"held_out", "subset"}


def test_cli_errors_exit_non_zero_with_clear_message(trained_run: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "data", epocs=1)
    res = subprocess.run(toolkit_cmd("train", recipe), capture_output=True, text=True, env=subprocess_env())
    assert res.returncode == 2
    assert "train.epocs: unknown key" in res.stderr and 'Did you mean "epochs"?' in res.stderr
    assert "Traceback" not in res.stderr
    res = subprocess.run(
        toolkit_cmd("eval", tmp_path, "--data", tmp_path), capture_output=True, text=True, env=subprocess_env()
    )
    assert res.returncode == 2 and "student.safetensors: missing" in res.stderr


def test_paper_protocol_selects_on_the_test_set_and_says_so(tmp_path: Path) -> None:
    """train.select_on: test (the papers' protocol): every epoch is scored on the test set, the best one is the
    student, so its test top-1 is the best epoch's; metrics and the report label it."""
    data = write_image_folder(tmp_path / "data", per_class=8)
    test = write_image_folder(tmp_path / "test", per_class=3, seed=1)
    recipe = write_recipe(tmp_path / "r.yaml", data, epochs=2, select_on="test", select="last")
    raw = yaml.safe_load(recipe.read_text())
    res = runner.invoke(app, ["train", str(recipe), "--out", str(tmp_path / "missing")])
    assert res.exit_code != 0 and "train.select_on: test" in str(res.exception)
    assert not (tmp_path / "missing").exists()
    raw["data"]["test"] = {"kind": "imagefolder", "path": str(test)}
    raw["data"]["val_fraction"] = 0.0  # the papers train on all of train
    recipe.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", str(recipe), "--out", str(run)])
    assert res.exit_code == 0, res.output
    assert "paper protocol: selected on test" in res.output
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["selected_on"] == "test" and metrics["test_top1"] == rows[-1]["val_top1"]
    # The epochs were scored on the test images: the last row's loss is the student's cross-entropy there.
    (logits,) = [np.load(p) for p in (run / "eval").glob("*/logits.npy")]
    (labels,) = [np.load(p) for p in (run / "eval").glob("*/labels.npy")]
    ce = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels).long()).item()
    assert rows[-1]["val_loss"] == pytest.approx(ce, rel=1e-4, abs=1e-5)
    res = runner.invoke(app, ["report", str(run)])
    assert res.exit_code == 0, res.output
    assert "Paper protocol: selected on test" in (run / "report.md").read_text()
    # No validation split: the export checks parity (and would guard INT8) on the test set, and says so.
    res = runner.invoke(app, ["export", str(run)])
    assert res.exit_code == 0, res.output
    assert "checked on the test set (paper protocol" in res.output
    assert json.loads((run / "manifest.json").read_text())["exports"]["onnx"]["parity"]["n"] == 12


def test_existing_run_dir_needs_resume_or_force(trained_run: Path, tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "d", per_class=5)
    recipe = write_recipe(tmp_path / "r.yaml", data, epochs=1)
    out = tmp_path / "run"
    assert runner.invoke(app, ["train", str(recipe), "--out", str(out)]).exit_code == 0
    res = runner.invoke(app, ["train", str(recipe), "--out", str(out)])
    assert res.exit_code != 0 and "already exists" in str(res.exception)
    res = runner.invoke(app, ["train", str(recipe), "--out", str(out), "--resume", "--lr", "0.3"])
    assert "different configuration" in str(res.exception) and "train.optimizer.lr" in str(res.exception)


def test_resume_before_first_checkpoint_starts_over(tmp_path: Path) -> None:
    import shutil

    data = write_image_folder(tmp_path / "d", per_class=5)
    recipe = write_recipe(tmp_path / "r.yaml", data, epochs=1)
    out = tmp_path / "run"
    assert runner.invoke(app, ["train", str(recipe), "--out", str(out)]).exit_code == 0
    first = load_weights(out)
    shutil.rmtree(out / "checkpoints")  # as if killed before the first epoch ended
    (out / "student.safetensors").unlink()
    res = runner.invoke(app, ["train", str(recipe), "--out", str(out), "--resume"])
    assert res.exit_code == 0, res.output
    assert "starting from epoch 1" in res.output
    again = load_weights(out)
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_bad_images_error_or_skip(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "d", per_class=6)
    bad = make_bad_images(data / "blue")
    recipe = write_recipe(tmp_path / "r.yaml", data, epochs=1)
    res = subprocess.run(
        toolkit_cmd("train", recipe, "--out", tmp_path / "run", "--set", "data.max_pixels=50000"),
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    assert res.returncode == 2 and "5 unusable image(s)" in res.stderr
    assert str(bad["truncated"]) in res.stderr.replace("\n", "")
    assert not (tmp_path / "run").exists()  # nothing half-written
    res = runner.invoke(
        app,
        [
            "train",
            str(recipe),
            "--out",
            str(tmp_path / "run"),
            "--set",
            "data.on_bad_image=skip",
            "--set",
            "data.max_pixels=50000",
        ],
    )
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["data"]["bad_images"]["skipped"] == 5
    assert {Path(b["file"]).name for b in manifest["data"]["bad_images"]["bad"]} == {p.name for p in bad.values()}


def load_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "student.safetensors"))


def untimed_metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in ("time_s", "train_images_per_s")} for row in rows]


def test_resume_after_kill_matches_uninterrupted_run(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "d", per_class=60, size=32)
    recipe = write_recipe(tmp_path / "r.yaml", data, epochs=3, batch_size=16, ema={"enabled": True})
    env = subprocess_env()
    full = subprocess.run(
        toolkit_cmd("train", recipe, "--out", tmp_path / "full"), env=env, capture_output=True, text=True
    )
    assert full.returncode == 0, full.stderr

    run = tmp_path / "killed"
    proc = subprocess.Popen(toolkit_cmd("train", recipe, "--out", run), env=env, stderr=subprocess.PIPE, text=True)
    pointer = run / "checkpoints" / "last.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if pointer.is_file() and json.loads(pointer.read_text())["epoch"] == 0:
            time.sleep(0.3)  # into the second epoch
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed; make the task bigger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "student.safetensors").exists()
    killed_at = json.loads(pointer.read_text())["epoch"]
    assert killed_at < 2

    resumed = subprocess.run(
        toolkit_cmd("train", recipe, "--out", run, "--resume"), env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {pointer}"[:40] in resumed.stderr.replace("\n", "")
    a, b = load_weights(tmp_path / "full"), load_weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (run / "metrics.jsonl").read_text().count("\n") == 3
    assert untimed_metrics(run) == untimed_metrics(tmp_path / "full")


def test_ddp_two_processes_on_cpu(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "d", per_class=12)
    recipe = write_recipe(tmp_path / "r.yaml", data, epochs=2, batch_size=16)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "toolkit",
        "train",
        str(recipe),
        "--out",
        str(tmp_path / "ddp"),
    ]
    res = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 rank(s) x 8/micro-batch" in res.stderr.replace("\n", "")
    manifest = json.loads((tmp_path / "ddp" / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["status"] == "trained"
    rows = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(0 <= r["val_top1"] <= 1 for r in rows)
    assert load_weights(tmp_path / "ddp")["fc.weight"].shape == (4, 512)
