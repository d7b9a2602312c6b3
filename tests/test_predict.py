"""deploy/predict.py laid out as in the Docker images (predict.py + runtime/ only) with everything heavier blocked:
every preprocessing-contract variant against an independent torchvision pipeline, and one-line errors."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import REPO, torchvision_input
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from runtime.preprocess import PreprocessContract

CLASSES = ("ant", "bee", "cat", "dog", "eel")
# What the image would not have: the training stack, and onnx (onnxruntime does not need it).
HEAVY = {"torch", "torchvision", "timm", "open_clip", "transformers", "toolkit", "distill", "export", "typer", "rich",
         "pydantic", "onnx", "onnxscript"}  # fmt: skip
LAUNCH = """
import importlib.abc, runpy, sys
BLOCK = set(sys.argv[1].split(','))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCK:
            raise ImportError('No module named ' + repr(name) + ' (blocked: not in the deploy image)')
sys.meta_path.insert(0, Block())
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def app_dir(tmp_path: Path, with_runtime: bool = True) -> Path:
    """What deploy/Dockerfile.* COPY into /app."""
    app = tmp_path / "app"
    app.mkdir(parents=True)
    shutil.copy(REPO / "deploy" / "predict.py", app / "predict.py")
    if with_runtime:
        shutil.copytree(REPO / "runtime", app / "runtime", ignore=shutil.ignore_patterns("__pycache__"))
    return app


def predict(app: Path, *args: str, block: set[str] = HEAVY) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", LAUNCH, ",".join(sorted(block)), str(app / "predict.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=app.parent, timeout=120)


def linear_model(path: Path, contract: PreprocessContract, weight: np.ndarray, graph_hw: tuple[int, int] | None = None,
                 metadata: str | None = None) -> Path:  # fmt: skip
    """logits = flatten(x) @ weight: every pixel and channel moves the output, so any preprocessing slip shows."""
    h, w = graph_hw or contract.input_size
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "weight"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "linear", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, h, w])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(CLASSES)])],
        [numpy_helper.from_array(weight.astype(np.float32), "weight")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"toolkit.preprocess": metadata if metadata is not None else contract.to_json()})
    onnx.save(model, str(path))
    return path


def photos(folder: Path) -> list[Path]:
    """Images of several sizes, aspect ratios and modes (RGB, greyscale, palette, RGBA, CMYK JPEG)."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    out = []
    for i, ((w, h), mode, ext) in enumerate([((40, 30), "RGB", "png"), ((23, 57), "L", "png"), ((64, 64), "P", "png"),
                                             ((35, 35), "RGBA", "png"), ((50, 41), "CMYK", "jpg")]):  # fmt: skip
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
        out.append(folder / f"{i}.{ext}")
        im.save(out[-1], quality=95)
    return out


VARIANTS = {
    "rgb-shorter-bilinear": {},
    "bgr": {"channel_order": "BGR"},
    "squash-bicubic": {"resize_mode": "squash", "resize_size": 20, "interpolation": "bicubic"},
    "nearest-non-square": {"input_size": (12, 16), "resize_size": 18, "interpolation": "nearest"},
    "mean-std": {"mean": (0.1, 0.5, 0.9), "std": (0.5, 0.25, 0.125)},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_predict_follows_every_contract_variant(tmp_path: Path, variant: str) -> None:
    contract = PreprocessContract(**{"input_size": (16, 16), "resize_size": 18, "class_names": CLASSES,
                                     **VARIANTS[variant]})  # fmt: skip
    h, w = contract.input_size
    weight = np.random.default_rng(1).normal(0, 0.05, (3 * h * w, len(CLASSES)))
    model = linear_model(tmp_path / "m.onnx", contract, weight)
    files = photos(tmp_path / "images")
    app = app_dir(tmp_path)
    proc = predict(app, str(model), str(tmp_path / "images"), "--out", str(tmp_path / "p.csv"),
                   "--top-k", str(len(CLASSES)))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {Path(r[0]).name: r[1:] for r in list(csv.reader((tmp_path / "p.csv").open()))[1:]}
    assert sorted(rows) == sorted(f.name for f in files)
    for f in files:
        with Image.open(f) as im:
            logits = torchvision_input(im, contract).reshape(-1) @ weight
        p = np.exp(logits - logits.max())
        p /= p.sum()
        got = dict(zip(rows[f.name][::2], map(float, rows[f.name][1::2])))
        assert rows[f.name][0] == CLASSES[int(p.argmax())], (variant, f.name)
        np.testing.assert_allclose([got[c] for c in CLASSES], p, atol=2e-5, err_msg=f"{variant} {f.name}")


def one_line_error(proc: subprocess.CompletedProcess[str], *culprits: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr and all(c in lines[0] for c in culprits), (culprits, lines)


def test_predict_errors_are_one_line_naming_the_culprit(tmp_path: Path) -> None:
    contract = PreprocessContract(input_size=(8, 8), resize_size=8, class_names=CLASSES)
    weight = np.zeros((3 * 8 * 8, len(CLASSES)))
    good = linear_model(tmp_path / "good.onnx", contract, weight)
    images = tmp_path / "images"
    photos(images)
    app = app_dir(tmp_path)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07not a protobuf" * 50)
    wrong_size = linear_model(tmp_path / "wrong.onnx", contract, np.zeros((3 * 10 * 10, 5)), graph_hw=(10, 10))
    no_meta = linear_model(tmp_path / "nometa.onnx", contract, weight, metadata="")
    bad_meta = linear_model(tmp_path / "badmeta.onnx", contract, weight, metadata='{"input_size": [8, 8], "rezise": 8}')
    truncated = tmp_path / "broken" / "cut.png"
    truncated.parent.mkdir()
    truncated.write_bytes((images / "0.png").read_bytes()[:60])
    readonly = tmp_path / "ro"
    readonly.mkdir(mode=0o500)
    out = tmp_path / "out.csv"
    cases = [
        ([str(corrupt), str(images)], [str(corrupt), "cannot load"]),
        ([str(tmp_path / "missing.onnx"), str(images)], ["missing.onnx", "not found"]),
        ([str(tmp_path / "model.pt"), str(images)], ["model.pt"]),
        ([str(wrong_size), str(images)], [str(wrong_size), "Nx3x10x10", "Nx3x8x8"]),
        ([str(no_meta), str(images)], [str(no_meta), "toolkit export"]),
        ([str(bad_meta), str(images)], [str(bad_meta), "rezise", "resize_size"]),
        ([str(good), str(truncated.parent)], [str(truncated), "truncated"]),
        ([str(good), str(tmp_path / "nope")], ["nope", "no such file or folder"]),
        ([str(good), str(images), "--provider", "NopeExecutionProvider"], ["NopeExecutionProvider", "not available"]),
        ([str(good), str(images), "--top-k", "0"], ["--top-k (0)"]),
    ]
    (tmp_path / "model.pt").write_bytes(b"x")
    for args, culprits in cases:
        one_line_error(predict(app, *args, "--out", str(out)), *culprits)
        assert not out.exists() and not list(tmp_path.glob(".out.csv.*")), args
    if os.geteuid() != 0:  # root writes anywhere
        one_line_error(predict(app, str(good), str(images), "--out", str(readonly / "p.csv")), str(readonly))
    # A device without the runtime package: one line saying what to install.
    bare = app_dir(tmp_path / "bare", with_runtime=False)
    one_line_error(predict(bare, str(good), str(images), block=HEAVY | {"runtime"}), "runtime", "pip install")


def test_predict_reads_the_openvino_ir_contract(tmp_path: Path) -> None:
    ov = pytest.importorskip("openvino")
    contract = PreprocessContract(input_size=(16, 16), resize_size=18, channel_order="BGR", class_names=CLASSES)
    weight = np.random.default_rng(2).normal(0, 0.05, (3 * 16 * 16, len(CLASSES)))
    model = ov.convert_model(str(linear_model(tmp_path / "m.onnx", contract, weight)))
    model.set_rt_info(contract.to_json(), ["toolkit", "preprocess"])
    ov.save_model(model, str(tmp_path / "ir" / "model.xml"))
    files = photos(tmp_path / "images")
    app = app_dir(tmp_path)
    block = HEAVY - {"onnx"}  # openvino's frontend may import what it likes; the point is runtime/ reading rt_info
    proc = predict(app, str(tmp_path / "ir" / "model.xml"), *map(str, files), "--out", str(tmp_path / "p.csv"),
                   block=block)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    for f, row in zip(files, rows):
        with Image.open(f) as im:
            logits = torchvision_input(im, contract).reshape(-1) @ weight
        assert row["path"] == str(f) and row["label"] == CLASSES[int(logits.argmax())]
