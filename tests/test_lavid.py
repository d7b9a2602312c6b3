"""LaViD: MCQ validation, question generation parsing, signature extraction through a tiny random causal LM
built and loaded through the same code path, statistics, the loss, and the method through `toolkit distill`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, write_image_folder
from typer.testing import CliRunner

from distill.lavid.generate import generate_mcq, parse_questions
from distill.lavid.llm import load_language_model
from distill.lavid.mcq import FORMAT, load_mcq, validate
from distill.lavid.signatures import (
    Signatures,
    compute_signatures,
    label_scores,
    load_signatures,
    save_signatures,
    signature_stats,
    to_probabilities,
)
from distill.losses.lavid import lavid_loss
from distill.teachers.minilm import packaged_minilm_path
from runtime.errors import ToolkitError
from toolkit.cli import app

runner = CliRunner()
SHIPPED = REPO / "recipes" / "lavid" / "fashion_mnist_mcq.yaml"
CLASSES = ["blue", "green", "red", "yellow"]


def mcq_dict(**change) -> dict:
    data = {
        "format": FORMAT,
        "dataset": "squares",
        "description": "coloured squares",
        "class_names": CLASSES,
        "questions": [
            {"question": "What shade is the class?", "options": ["light", "dark", "medium"]},
            {"question": "Does the class look warm?", "options": ["warm", "cold", "neutral"]},
        ],
    }
    data.update(change)
    return data


def test_shipped_fashion_mnist_set_is_valid() -> None:
    mcq = load_mcq(SHIPPED)
    assert len(mcq.questions) >= 30 and mcq.num_options == 5
    mcq.check_classes(["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                       "Ankle boot"])  # fmt: skip


def test_placeholder_as_the_reference_code_fills_it() -> None:
    # Ours: "the class" -> the name. LaViD's code: every substring "class", then its dataset's extra phrase.
    questions = [{"question": "Which subclass of the class is the object?", "options": ["a", "b"]}]
    ours = validate(mcq_dict(questions=[{"question": "Is the class big?", "options": ["a", "b"]}]), "s.yaml")
    assert ours.questions[0].filled("red", ours.placeholder) == "Is red big?"
    ref = validate(mcq_dict(questions=questions, placeholder=["class", "the object"]), "s.yaml")
    assert ref.questions[0].filled("red", ref.placeholder) == "Which subred of the red is red?"
    assert ref.to_dict()["placeholder"] == ["class", "the object"] and ours.to_dict()["placeholder"] == "the class"
    with pytest.raises(ToolkitError, match="placeholder must be a non-empty string or a list"):
        validate(mcq_dict(placeholder=[]), "s.yaml")
    with pytest.raises(ToolkitError, match="does not contain the placeholder"):
        validate(mcq_dict(questions=[{"question": "Is it big?", "options": ["a", "b"]}], placeholder=["class"]), "s")


@pytest.mark.parametrize(
    ("questions", "message"),
    [
        ([{"question": "What shade is it?", "options": ["a", "b", "c"]}], "question 1: 'What shade is it?' does not "
         "contain the placeholder"),
        ([{"question": "Is the class big?", "options": ["a", "b", "c"]},
          {"question": "Is the class small?", "options": ["a", "b"]}], "question 2: has 2 options"),
        ([{"question": "Is the class bright?", "options": ["like red paint", "b", "c"]}], "names the class 'red'"),
        ([{"question": "Is the class big?", "options": ["a", "b", "c"]}] * 2, "question 2: repeats"),
        ([{"question": "Is the class big?", "options": [True, False, "maybe"]}], "quote them"),
        ([{"question": "Is the class big?", "options": ["a", "b", "c"], "answer": 1}], "exactly the keys"),
    ],
)  # fmt: skip
def test_malformed_mcq_sets_name_the_question(questions, message) -> None:
    with pytest.raises(ToolkitError, match="set.yaml: question") as err:
        validate(mcq_dict(questions=questions), "set.yaml")
    assert message in str(err.value)


def test_mcq_file_errors_and_class_mismatch(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("format: edge-distill-mcq/1\nclass_names: [a, b]\nquestions: [")
    with pytest.raises(ToolkitError, match="bad.yaml: not valid YAML"):
        load_mcq(bad)
    bad.write_text(yaml.safe_dump(mcq_dict(format="mcq/0")))
    with pytest.raises(ToolkitError, match="format must be 'edge-distill-mcq/1'"):
        load_mcq(bad)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(mcq_dict()))
    with pytest.raises(ToolkitError, match=r"missing \['purple'\], not in the data \['yellow'\]"):
        load_mcq(good).check_classes(["blue", "green", "red", "purple"])
    with pytest.raises(ToolkitError, match="same names, other order"):
        load_mcq(good).check_classes(list(reversed(CLASSES)))


def test_generated_questions_are_parsed_validated_and_retried() -> None:
    replies = iter([
        "Sure! Here are questions:\nWhat shade is the class?\n1. light\n2. dark\n3. medium\n\n"
        "Which colour is it?\n1. red\n2. blue\n3. other\n\n"  # no placeholder, names classes: rejected
        "Is the class glossy?\n1. yes\n2. no\n",  # 2 options: rejected
        "Is the class glossy?\n1) very\n2) somewhat\n3) not at all\n",
    ])  # fmt: skip
    assert parse_questions("Q the class?\n1. a\n2. b\n\nnoise line\n") == [("Q the class?", ["a", "b"])]
    logs: list[str] = []
    mcq = generate_mcq(lambda prompt: next(replies), CLASSES, "squares", "coloured squares", n_questions=2,
                       n_options=3, log=logs.append)  # fmt: skip
    assert [q.question for q in mcq.questions] == ["What shade is the class?", "Is the class glossy?"]
    assert logs[0].startswith("round 1: kept 1 question(s), rejected 2")
    with pytest.raises(ToolkitError, match="no valid question"):
        generate_mcq(lambda prompt: "nothing useful", CLASSES, "s", "d", 2, 3, max_rounds=2, log=logs.append)


def test_lavid_loss_by_hand() -> None:
    targets = torch.tensor([[[0.5, 0.5]], [[1.0, 0.0]]])  # 2 classes, Q = 1, M = 2
    out = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    expected = ((0.0 - 1.0) ** 2 + (1.0 - 0.0) ** 2 + (1.0 - 0.5) ** 2 + (1.0 - 0.5) ** 2) / 4
    assert lavid_loss(out, targets, torch.tensor([1, 0])).item() == pytest.approx(expected)


def test_signature_stats_flag_questions_that_do_not_separate_classes() -> None:
    same = np.tile([[0.7, 0.2, 0.1]], (3, 1))
    varied = np.eye(3) * 0.8 + 0.2 / 3
    table = np.stack([same, varied], axis=1)  # (C=3, Q=2, M=3)
    stats = signature_stats(table)
    assert stats["flat_questions"] == [1] and stats["questions"][1]["answers"] == [0, 1, 2]
    p = np.array([0.7, 0.2, 0.1])
    assert stats["questions"][0]["entropy"] == pytest.approx(float(-(p * np.log(p)).sum()))
    np.testing.assert_allclose(to_probabilities(np.array([[0.0, np.log(3.0)]])), [[0.25, 0.75]], rtol=1e-6)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 1-layer Llama with MiniLM's (shipped) tokenizer and a chat template, saved like a hub model."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny_lm")
    tok = AutoTokenizer.from_pretrained(str(packaged_minilm_path()))
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}<assistant>"
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_signatures_through_the_loading_path(tiny_lm: Path, tmp_path: Path) -> None:
    lm = load_language_model(str(tiny_lm))
    mcq = validate(mcq_dict(), "set.yaml")
    for mode in ("label", "cloze"):
        sig = compute_signatures(lm, mcq, mode, batch_size=3)
        assert sig.table.shape == (4, 2, 3)
        np.testing.assert_allclose(sig.table.sum(-1), 1.0, rtol=1e-5)
        assert sig.provenance["mcq_sha256"] == mcq.sha256() and sig.provenance["mode"] == mode
    # Left padding does not change a prompt's answer: batched == one at a time.
    np.testing.assert_allclose(label_scores(lm, mcq, batch_size=8), label_scores(lm, mcq, batch_size=1), atol=1e-4)
    path = tmp_path / "sig.safetensors"
    save_signatures(path, sig)
    assert load_signatures(path, CLASSES).provenance == sig.provenance
    with pytest.raises(ToolkitError, match="signatures for classes"):
        load_signatures(path, ["a", "b", "c", "d"])


def test_lavid_signatures_command(tiny_lm: Path, tmp_path: Path) -> None:
    mcq = tmp_path / "set.yaml"
    mcq.write_text(yaml.safe_dump(mcq_dict()))
    data = write_image_folder(tmp_path / "data", per_class=1)
    out = tmp_path / "sig.safetensors"
    res = runner.invoke(app, ["lavid", "signatures", str(mcq), "--out", str(out), "--model", str(tiny_lm),
                              "--mode", "label", "--data", str(data)])  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads(out.with_suffix(".json").read_text())
    assert len(report["questions"]) == 2 and "mean_pairwise_js" in report and report["provenance"]["mode"] == "label"
    wrong = write_image_folder(tmp_path / "other", per_class=1)
    (wrong / "red").rename(wrong / "purple")
    res = runner.invoke(app, ["lavid", "signatures", str(mcq), "--out", str(out), "--model", str(tiny_lm),
                              "--data", str(wrong)])  # fmt: skip
    assert isinstance(res.exception, ToolkitError) and "class_names do not match" in str(res.exception)


def test_lavid_questions_command_runs_a_real_generation_loop(tiny_lm: Path, tmp_path: Path) -> None:
    """A random model writes nothing valid: the loop generates, parses, rejects, retries, then says so."""
    data = write_image_folder(tmp_path / "data", per_class=1)
    args = ["--data", str(data), "--model", str(tiny_lm), "--questions", "2", "--rounds", "2", "--max-new-tokens", "40"]
    res = runner.invoke(app, ["lavid", "questions", "--out", str(tmp_path / "q.yaml"), *args])
    assert isinstance(res.exception, ToolkitError) and "no valid question" in str(res.exception)
    assert res.output.count("round ") == 2 and not (tmp_path / "q.yaml").exists()


def test_lavid_stacks_on_another_method(tmp_path: Path) -> None:
    """kd + the LaViD head through `toolkit distill`, targets from a signature file."""
    from conftest import TINY_CLIP_SPEC, write_tiny_clip_config

    data = write_image_folder(tmp_path / "data", per_class=6, size=20)
    sig = tmp_path / "sig.safetensors"
    save_signatures(sig, Signatures(np.full((4, 3, 5), 0.2, np.float32), {"class_names": CLASSES}))
    recipe = {
        "name": "stacked", "data": {"train": {"kind": "imagefolder", "path": str(data)}, "val_fraction": 0.25},
        "preprocess": {"input_size": 16, "resize_size": 16},
        "train": {"epochs": 1, "batch_size": 8, "optimizer": {"name": "adamw", "lr": 1e-3}},
        "distill": {"method": "kd", "teacher": TINY_CLIP_SPEC, "teacher_config": str(write_tiny_clip_config(tmp_path)),
                    "cache": {"crops": 1}, "lavid": {"targets": str(sig), "weight": 10}},
    }  # fmt: skip
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    res = runner.invoke(app, ["distill", str(path), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"loss_cls", "loss_kd", "loss_lavid"} <= set(row)
    res = runner.invoke(app, ["distill", str(path), "--out", str(tmp_path / "r2"), "--method", "lavid",
                              "--set", "distill.lavid=null"])  # fmt: skip
    assert isinstance(res.exception, ToolkitError) and "distill.lavid" in str(res.exception)


def test_shipped_signatures_match_the_shipped_question_set() -> None:
    """recipes/lavid/fashion_mnist_smollm2_cloze.safetensors was made from the shipped set with real SmolLM2."""
    mcq = load_mcq(SHIPPED)
    sig = load_signatures(SHIPPED.with_name("fashion_mnist_smollm2_cloze.safetensors"), list(mcq.class_names))
    assert sig.provenance["mcq_sha256"] == mcq.sha256() and sig.provenance["model"] == "smollm2"
    assert sig.table.shape == (10, len(mcq.questions), 5)
    np.testing.assert_allclose(sig.table.sum(-1), 1.0, rtol=1e-5)
    assert signature_stats(sig.table)["mean_pairwise_js"] > 0.001  # classes get different answers
