"""deploy/: the standalone predict.py against `toolkit eval`, its HTTP mode, the Triton repository
generator against the model's real inputs/outputs, and the Dockerfiles through hadolint."""

from __future__ import annotations

import csv
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import REPO, write_image_folder, write_recipe
from typer.testing import CliRunner

from export.tensorrt_engine import engine_sidecar
from runtime.errors import ToolkitError
from runtime.manifests import load_image_folder
from runtime.preprocess import PreprocessContract
from toolkit.cli import app
from toolkit.triton import write_repository

runner = CliRunner()
PREDICT = REPO / "deploy" / "predict.py"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("deploy")
    data = write_image_folder(tmp / "train", per_class=10, size=20)
    recipe = write_recipe(tmp / "r.yaml", data, epochs=1)
    run = tmp / "run"
    assert runner.invoke(app, ["train", str(recipe), "--out", str(run)]).exit_code == 0
    res = runner.invoke(app, ["export", str(run), "--int8", "--calib-size", "16", "--held-out-images", "8"])
    assert res.exit_code == 0, res.output
    images = write_image_folder(tmp / "images", per_class=3, seed=5, size=26)
    for png in list(images.rglob("*.png"))[::2]:  # some JPEGs too
        from PIL import Image

        Image.open(png).convert("RGB").save(png.with_suffix(".jpg"), quality=90)
        png.unlink()
    return run, images


@pytest.mark.parametrize(("artifact", "file"), [("onnx", "model.onnx"), ("int8_onnxruntime", "model.int8.onnx")])
def test_predict_py_matches_toolkit_eval(exported, tmp_path: Path, artifact: str, file: str) -> None:
    run, images = exported
    out = tmp_path / "pred.csv"
    proc = subprocess.run([sys.executable, str(PREDICT), str(run / file), str(images), "--out", str(out),
                           "--top-k", "2"], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {r["path"]: r for r in csv.DictReader(out.open())}
    assert set(next(iter(rows.values()))) == {"path", "label", "score", "label_2", "score_2"}
    res = runner.invoke(app, ["eval", str(run), "--data", str(images), "--artifact", artifact])
    assert res.exit_code == 0, res.output
    logits = np.load(next((run / "eval").glob(f"*/artifacts/{artifact}/logits.npy")))
    dataset = load_image_folder(images)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert len(rows) == len(dataset) == 12
    for path, p in zip(dataset.paths, probs):
        row = rows[str(path)]
        assert row["label"] == dataset.class_names[int(p.argmax())]
        assert float(row["score"]) == pytest.approx(float(p.max()), abs=1e-5)


def test_predict_py_serves_http(exported) -> None:
    run, images = exported
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(PREDICT), str(run / "model.onnx"), "--serve", str(port)],
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        image = next(images.rglob("*.png")).read_bytes()
        reply = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/predict", data=image, timeout=10).read())
        assert reply["predictions"][0]["label"] in {"red", "green", "blue", "yellow"}
    finally:
        proc.terminate()
        proc.wait(10)


def _config_value(text: str, block: str, key: str) -> str:
    section = text[text.index(f"{block} [") :]
    return re.search(rf"{key}: (.+)", section).group(1).strip()  # type: ignore[union-attr]


def test_triton_repository_matches_the_model(exported, tmp_path: Path) -> None:
    run, _ = exported
    res = runner.invoke(app, ["deploy", "triton", str(run), "--out", str(tmp_path / "repo"), "--artifact",
                              "int8_onnxruntime", "--max-batch", "16"])  # fmt: skip
    assert res.exit_code == 0, res.output
    folder = tmp_path / "repo" / "tiny"
    config = (folder / "config.pbtxt").read_text()
    session = ort.InferenceSession(str(folder / "1" / "model.onnx"))
    inp, outp = session.get_inputs()[0], session.get_outputs()[0]
    assert _config_value(config, "input", "name") == f'"{inp.name}"'
    assert _config_value(config, "output", "name") == f'"{outp.name}"'
    assert _config_value(config, "input", "dims") == f"[ {', '.join(map(str, inp.shape[1:]))} ]"
    assert _config_value(config, "output", "dims") == f"[ {outp.shape[1]} ]"
    assert _config_value(config, "input", "data_type") == "TYPE_FP32"
    assert 'backend: "onnxruntime"' in config and "max_batch_size: 16" in config and "KIND_CPU" in config
    assert "preferred_batch_size: [ 4, 8, 16 ]" in config
    assert (folder / "labels.txt").read_text().split() == ["blue", "green", "red", "yellow"]
    assert config.count("{") == config.count("}") and config.count("[") == config.count("]")


def test_triton_tensorrt_plan_uses_the_engine_sidecar(tmp_path: Path) -> None:
    engine = tmp_path / "model.H100.engine"
    engine.write_bytes(b"plan")
    contract = PreprocessContract(input_size=(32, 32), resize_size=32, class_names=("a", "b", "c"))
    engine.with_name(engine.name + ".json").write_text(json.dumps(engine_sidecar(contract, "input", "logits", 64)))
    folder = write_repository(engine, ["a", "b", "c"], tmp_path / "repo", "m", max_batch=32)
    config = (folder / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in config and "KIND_GPU" in config and (folder / "1" / "model.plan").is_file()
    assert (
        _config_value(config, "input", "dims") == "[ 3, 32, 32 ]" and _config_value(config, "output", "dims") == "[ 3 ]"
    )
    with pytest.raises(ToolkitError, match="exceeds the engine's optimisation profile"):
        write_repository(engine, ["a", "b", "c"], tmp_path / "repo", "m", max_batch=128)


@pytest.mark.parametrize("dockerfile", sorted((REPO / "deploy").glob("Dockerfile.*")))
def test_dockerfiles_pass_hadolint(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    proc = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
