"""Teachers: OpenCLIP path (tiny random config), ConSE on shipped weights, CoOp, anchors files, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CLIP_SPEC, write_image_folder, write_tiny_clip_config
from typer.testing import CliRunner

from distill.teachers.base import fill_template
from distill.teachers.coop import CoOpConfig, calibrate, load_anchors, save_anchors
from distill.teachers.registry import create_teacher, list_teachers
from runtime.errors import ToolkitError
from runtime.manifests import load_image_folder
from runtime.preprocess import PreprocessContract
from runtime.report import build_report
from toolkit.cli import app


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_clip_config(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def tiny(tiny_config: Path):
    torch.manual_seed(0)
    return create_teacher(TINY_CLIP_SPEC, config=tiny_config)


def test_registry_lists_and_rejects() -> None:
    assert {b.scheme for b in list_teachers()} == {"openclip", "conse", "run", "timm"}
    with pytest.raises(ToolkitError, match='Did you mean "openclip"'):
        create_teacher("openclp:ViT-B-32/openai")
    with pytest.raises(ToolkitError, match="expected conse:<vision>"):
        create_teacher("conse:efficientnet_lite0")
    with pytest.raises(ToolkitError, match="unknown vision model"):
        create_teacher("conse:resnet999+minilm")


def test_template_needs_one_placeholder() -> None:
    assert fill_template("a photo of a {}.", "Sandal") == "a photo of a Sandal."
    with pytest.raises(ToolkitError, match="exactly one"):
        fill_template("a photo", "Sandal")


def test_openclip_text_path_matches_open_clip(tiny) -> None:
    assert tiny.spec == TINY_CLIP_SPEC and tiny.embed_dim == 32
    assert tiny.contract.input_size == (32, 32)
    texts = ["a photo of a Sandal.", "a photo of a Bag."]
    tokens = tiny.tokenize(texts)
    with torch.no_grad():
        ours = tiny.encode_text(texts)
        theirs = tiny.clip.encode_text(tokens["input_ids"], normalize=True)
        images = tiny.encode_image(torch.randn(3, 3, 32, 32))
    torch.testing.assert_close(ours, theirs)
    assert torch.allclose(images.norm(dim=-1), torch.ones(3))


def test_context_at_placeholder_values_reproduces_plain_prompt(tiny) -> None:
    names = ["Sandal", "Bag"]
    tokens = tiny.context_prompts(names, "a photo of a {}.", n_ctx=4)
    placeholder = tiny.token_embeddings(tokens)[0, 1:5]
    with torch.no_grad():
        via_context = tiny.encode_with_context(placeholder, tokens)
        plain = tiny.encode_text([f"X X X X a photo of a {n}." for n in names])
    torch.testing.assert_close(via_context, plain)


def test_coop_lowers_the_loss_and_moves_only_the_context(tiny) -> None:
    gen = torch.Generator().manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(3, 32, generator=gen), dim=-1)
    labels = np.repeat(np.arange(3), 20)
    feats = torch.nn.functional.normalize(directions[labels] + 0.1 * torch.randn(60, 32, generator=gen), dim=-1)
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    config = CoOpConfig(n_ctx=4, epochs=15, lr=0.05, batch_size=20)
    result = calibrate(tiny, feats, labels, ["a", "b", "c"], "a photo of a {}.", config)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.context.shape == (4, 32) and result.anchors.shape == (3, 32)
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())  # text tower frozen


def test_anchor_file_round_trip_and_checks(tmp_path: Path) -> None:
    anchors = torch.randn(3, 8)
    path = tmp_path / "a.safetensors"
    save_anchors(path, anchors, {"teacher": "conse:x+y", "template": "{}", "class_names": ["a", "b", "c"]})
    loaded, meta = load_anchors(path, "conse:x+y", ["a", "b", "c"])
    torch.testing.assert_close(loaded, torch.nn.functional.normalize(anchors, dim=-1))
    with pytest.raises(ToolkitError, match="not 'openclip"):
        load_anchors(path, "openclip:m/t")
    with pytest.raises(ToolkitError, match="the data has"):
        load_anchors(path, class_names=["a", "b"])
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(ToolkitError, match="not a class-anchor file"):
        load_anchors(tmp_path / "bad.safetensors")


def test_calibrate_and_zeroshot_commands(tiny_config: Path, tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", per_class=6, size=20)
    out = tmp_path / "anchors.safetensors"
    common = ["--teacher", TINY_CLIP_SPEC, "--openclip-config", str(tiny_config),
              "--template", "a photo of a {}."]  # fmt: skip
    res = CliRunner().invoke(app, ["teacher", "calibrate", "--out", str(out), "--data", str(data), "--eval-data",
                                   str(data), "--shots", "3", "--epochs", "2", "--n-ctx", "2", *common])  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads(out.with_suffix(".json").read_text())
    classes = len([d for d in data.iterdir() if d.is_dir()])
    assert report["train_data"]["n"] == 3 * classes and len(report["history"]) == 2
    assert 0 <= report["top1_zero_shot"] <= 1 and 0 <= report["top1_calibrated"] <= 1
    assert report["environment"]["packages"]["open_clip_torch"] and "git_commit" in report["environment"]
    run = tmp_path / "run"
    run.mkdir()
    classes = sorted(d.name for d in data.iterdir() if d.is_dir())
    (run / "preprocess.json").write_text(PreprocessContract(class_names=tuple(classes)).to_json())
    args = ["teacher", "zeroshot", "--data", str(data), "--anchors", str(out), "--run", str(run), *common]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert f"top-1 {report['top1_calibrated']:.4f}" in res.output
    ladder = build_report(run)["ladder"]
    assert ladder[0]["stage"] == "teacher" and ladder[0]["top1"] == pytest.approx(report["top1_calibrated"])
    teacher_dir = next((run / "eval").glob("*/teacher"))
    assert not (teacher_dir / "indices.npy").exists()
    res = CliRunner().invoke(app, [*args, "--limit", "8"])  # a subset: which images, and their labels, are kept
    assert res.exit_code == 0, res.output
    indices, labels = np.load(teacher_dir / "indices.npy"), np.load(teacher_dir / "labels.npy")
    dataset = load_image_folder(data)
    assert len(indices) == len(labels) == len(np.load(teacher_dir / "logits.npy")) == 8
    assert (dataset.labels[indices] == labels).all()
    (run / "preprocess.json").write_text(PreprocessContract(class_names=("x", "y")).to_json())
    res = CliRunner().invoke(app, args)
    assert res.exit_code != 0 and "differ from the run's" in str(res.exception)


@pytest.mark.slow
def test_conse_teacher_on_shipped_weights() -> None:
    from PIL import Image
    from skimage import data as skdata

    teacher = create_teacher("conse:efficientnet_lite0+minilm")
    assert teacher.embed_dim == 384 and teacher.contract.input_size == (224, 224)
    cat = Image.fromarray(skdata.chelsea())
    with torch.no_grad():
        feats = teacher.encode_image(torch.from_numpy(teacher.contract.batch([cat])))
        anchors = teacher.class_anchors(["cat", "car", "aeroplane", "shoe"], "a photo of a {}.")
    assert teacher.zero_shot_logits(feats, anchors).argmax().item() == 0
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(teacher.text.source, device="cpu").encode(
        ["a photo of a cat.", "a pair of trousers"], normalize_embeddings=True, convert_to_tensor=True
    )
    with torch.no_grad():
        ours = teacher.encode_text(["a photo of a cat.", "a pair of trousers"])
    assert torch.nn.functional.cosine_similarity(ours, reference).min() > 0.9999
