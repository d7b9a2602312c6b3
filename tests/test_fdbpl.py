"""FDBPL: every loss term against values computed by hand (both variants), the objective's wiring (only the
two prompt contexts train), the vision-language student, and `toolkit distill` -> export -> INT8 on CPU with a
tiny OpenCLIP teacher and a wider tiny OpenCLIP student."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from conftest import (
    LENIENT_GUARD,
    TINY_CLIP_SPEC,
    TINY_CLIP_STUDENT_SPEC,
    write_image_folder,
    write_tiny_clip_config,
    write_tiny_clip_student_config,
)
from typer.testing import CliRunner

from distill.losses import fdbpl
from distill.methods.registry import get_method
from distill.objectives import FdbplObjective
from distill.students import create_student
from distill.teacher_cache import mr_labels, ms_labels
from distill.vlm_student import VLMStudent
from distill.weights import load_state_dict
from runtime.errors import ToolkitError
from toolkit.cli import app

runner = CliRunner()
LN = math.log

# Two samples, two classes. Teacher soft labels, student logits of the positive and negative prompts.
T = [[0.2, 0.8], [0.9, 0.1]]
Z_POS = [[0.0, LN(3)], [LN(2), 0.0]]  # p = [0.25, 0.75], [2/3, 1/3]
Z_NEG = [[LN(4), 1.0], [0.5, -0.5]]


def softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def h(p: list[float], eps: float = 0.0) -> float:
    return -sum(v * LN(v + eps) for v in p if v > 0 or eps)


def kl(a: list[float], b: list[float]) -> float:
    return sum(x * LN(x / y) for x, y in zip(a, b) if x > 0)


def w_of(t: list[float], eps: float = 0.0) -> float:
    return 1 - h(t, eps) / LN(len(t))


def cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.tensor(T), torch.tensor(Z_POS), torch.tensor(Z_NEG)


def test_information_weight_by_hand() -> None:
    t = torch.tensor([[1.0, 0, 0, 0], [0.25] * 4, [0.5, 0.5, 0, 0]])
    torch.testing.assert_close(fdbpl.information_weight(t), torch.tensor([1.0, 0.0, 0.5]))
    # The released code's -sum t log(t + 1e-6): not exactly the entropy.
    code = fdbpl.information_weight(torch.tensor(T), fdbpl.CODE_ENTROPY_EPS)
    torch.testing.assert_close(code, torch.tensor([w_of(t, 1e-6) for t in T]), rtol=1e-6, atol=1e-7)
    assert code[0] != fdbpl.information_weight(torch.tensor(T))[0]


@pytest.mark.parametrize("mode", ["ms", "mr"])
def test_soft_labels_from_top_k_and_log_sum_exp(mode: str) -> None:
    z = torch.tensor([[2.0, -1.0, 0.5, 0.0, 1.0], [0.0, 3.0, -2.0, 1.0, 1.5]])
    val, idx = z.topk(2, dim=-1)
    lse = torch.logsumexp(z, -1)
    got = fdbpl.soft_labels(idx, val, lse, 5, mode)
    p = torch.softmax(z.double(), -1)
    if mode == "ms":  # exact top-2 probabilities, the exact tail spread over the other 3
        top = p.gather(-1, idx)
        expected = ((1 - top.sum(-1, keepdim=True)) / 3).expand(2, 5).clone().scatter(-1, idx, top)
        numpy = ms_labels(idx.numpy(), val.numpy(), lse.numpy(), 5)
    else:
        expected = torch.zeros(2, 5, dtype=torch.float64).scatter(-1, idx, torch.softmax(val.double(), -1))
        numpy = mr_labels(idx.numpy(), val.numpy(), 5)
    torch.testing.assert_close(got, expected.float())
    np.testing.assert_allclose(got.numpy(), numpy, rtol=1e-6, atol=1e-7)  # the cache's numpy twin agrees
    torch.testing.assert_close(got.sum(-1), torch.ones(2))


def test_a_tail_that_rounds_to_zero_keeps_the_reverse_kl_finite() -> None:
    """Regression: fp16 top-K logits whose probabilities sum to 1 left an MS tail of exactly 0, and the code
    variant's KL(p || t) was infinite at the first step on Fashion-MNIST."""
    idx, val = torch.tensor([[0, 1]]), torch.tensor([[40.0, 10.0]], dtype=torch.float16).float()
    lse = torch.logsumexp(val, -1)  # as if the other classes had no mass at all
    t = fdbpl.soft_labels(idx, val, lse, 5, "ms")
    assert (t[0, 2:] >= fdbpl.MS_FLOOR * 0.99).all() and t.sum().item() == pytest.approx(1.0)
    loss = fdbpl.code_positive(torch.randn(1, 5), t, torch.ones(1))
    assert torch.isfinite(loss)


def test_code_variant_terms_by_hand() -> None:
    t, zp, zn = tensors()
    w = fdbpl.information_weight(t, fdbpl.CODE_ENTROPY_EPS)
    ws = [w_of(row, 1e-6) for row in T]
    pos = sum(ws[i] * (0.5 * kl(T[i], softmax(Z_POS[i])) + 0.5 * kl(softmax(Z_POS[i]), T[i])) for i in range(2)) / 2
    neg = sum((1 - ws[i]) * -h(softmax(Z_NEG[i])) for i in range(2)) / 2
    cosine = sum(ws[i] * cos(Z_POS[i], Z_NEG[i]) for i in range(2)) / 2
    assert fdbpl.code_positive(zp, t, w).item() == pytest.approx(pos, rel=1e-5)
    assert fdbpl.code_negative(zn, w).item() == pytest.approx(neg, rel=1e-5)
    assert fdbpl.code_logit_cosine(zp, zn, w).item() == pytest.approx(cosine, rel=1e-5)


def test_paper_variant_terms_by_hand() -> None:
    t, zp, zn = tensors()
    w = fdbpl.information_weight(t)
    ws = [w_of(row) for row in T]
    pos = sum(ws[i] * kl(T[i], softmax(Z_POS[i])) for i in range(2)) / 2
    neg = sum((1 - ws[i]) * kl([0.5, 0.5], softmax(Z_NEG[i])) for i in range(2)) / 2
    assert fdbpl.paper_positive(zp, t, w).item() == pytest.approx(pos, rel=1e-5)
    assert fdbpl.paper_negative(zn, w).item() == pytest.approx(neg, rel=1e-5)

    # Prompt differences in D = 2: class embeddings of both prompts, image features, teacher top classes 1, 0.
    text_pos, text_neg = [[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]
    image = [[0.6, 0.8], [1.0, 0.0]]
    top = [1, 0]
    d1 = [[a - b for a, b in zip(text_pos[c], text_neg[c])] for c in range(2)]
    d1 = [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in d1]
    alpha, delta = 0.7, 0.2
    s1 = [cos(image[i], d1[top[i]]) for i in range(2)]
    diff1 = -sum((1 - ws[i]) * s1[i] + alpha * ws[i] * (1 - s1[i]) for i in range(2)) / 2
    pairs = 0.0
    for i, j in ((0, 1), (1, 0)):
        d2 = [a - b for a, b in zip(d1[top[i]], d1[top[j]])]
        pairs += ws[i] * ws[j] * max(0.0, cos(image[i], d2) + delta)
    diff2 = pairs / (2 * 1)
    d1_t = fdbpl.first_order(torch.tensor(text_pos), torch.tensor(text_neg))
    got1 = fdbpl.paper_diff1(torch.tensor(image), d1_t, torch.tensor(top), w, alpha)
    got2 = fdbpl.paper_diff2(torch.tensor(image), d1_t, torch.tensor(top), w, delta)
    assert got1.item() == pytest.approx(diff1, rel=1e-5)
    assert got2.item() == pytest.approx(diff2, rel=1e-5) and diff2 > 0
    # Pairs with the same teacher class add nothing.
    same = fdbpl.paper_diff2(torch.tensor(image), d1_t, torch.tensor([1, 1]), w, delta)
    assert same.item() == 0.0


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("fdbpl")
    return {"tmp": tmp, "teacher": write_tiny_clip_config(tmp), "student": write_tiny_clip_student_config(tmp)}


def tiny_student(clips: dict[str, Path], classes: int = 3) -> VLMStudent:
    torch.manual_seed(0)
    student = create_student(TINY_CLIP_STUDENT_SPEC, classes, config=clips["student"])
    assert isinstance(student, VLMStudent)
    return student


@pytest.mark.parametrize("variant", ["code", "paper"])
def test_only_the_two_prompt_contexts_train(clips, variant: str) -> None:
    student = tiny_student(clips)
    method = get_method("fdbpl")
    params = {**method.params, "fdbpl_variant": variant, "fdbpl_lambda_d1": 0.5, "fdbpl_delta": 0.5}
    obj = FdbplObjective(student, 3, method.stage("student").losses, params, ["red", "green", "blue"]).train()
    x = torch.randn(4, 3, 32, 32)
    idx = torch.tensor([[0, 1], [1, 2], [2, 0], [1, 0]])
    val = torch.tensor([[3.0, 1.0], [2.0, 0.5], [4.0, 0.0], [1.0, 0.9]])
    lse = torch.logsumexp(torch.cat([val, torch.zeros(4, 1)], -1), -1)  # a third class at logit 0
    out = obj(x, torch.zeros(4, dtype=torch.long), idx, val, lse, 0)
    weights = obj.weights(0)
    torch.testing.assert_close(out.total, sum(weights[k] * v for k, v in out.terms.items()))
    out.total.backward()
    trained = {n for n, p in obj.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained == {"net.pos_context", "net.neg_context"}
    assert not any(p.requires_grad for p in student.vlm.parameters())
    if variant == "paper":
        assert out.terms["diff2"].item() > 0  # the hinge is a real term
    else:
        assert out.terms["diff2"].item() == 0.0


def test_class_embeddings_follow_the_positive_context(clips) -> None:
    student = tiny_student(clips)
    student.set_classes(["red", "green", "blue"])
    student.eval()
    first = student.class_embeddings.clone()
    torch.testing.assert_close(first, student.encode_classes(student.pos_context).detach())
    with torch.no_grad():
        student.pos_context.add_(0.5)
    student.train().eval()
    assert not torch.allclose(first, student.class_embeddings)
    x = torch.randn(2, 3, 32, 32)
    expected = student.logit_scale * student.image_features(x) @ student.class_embeddings.T
    torch.testing.assert_close(student(x), expected)
    # A context of another length (another initialisation text) loads into a fresh student.
    state = {**student.state_dict(), "neg_context": torch.randn(6, student.neg_context.shape[1])}
    fresh = tiny_student(clips)
    fresh.load_state_dict(state)
    assert fresh.neg_context.shape[0] == 6 and torch.equal(fresh.class_embeddings, student.class_embeddings)


def fdbpl_recipe(clips: dict[str, Path], path: Path, **changes: object) -> Path:
    tmp = clips["tmp"]
    if not (tmp / "train").is_dir():
        write_image_folder(tmp / "train", per_class=8, size=24)
        write_image_folder(tmp / "test", per_class=4, seed=1, size=24)
    recipe = {
        "name": "fdbpl",
        "seed": 0,
        "data": {"train": {"kind": "imagefolder", "path": str(tmp / "train")},
                 "test": {"kind": "imagefolder", "path": str(tmp / "test")}, "val_fraction": 0.25},
        "student": {"name": TINY_CLIP_STUDENT_SPEC, "config": str(clips["student"])},
        "train": {"epochs": 2, "batch_size": 8, "eval_batch_size": 32, "precision": "fp32", "ema": {"enabled": False},
                  "optimizer": {"name": "sgd", "lr": 0.002}},
        "distill": {"method": "fdbpl", "teacher": TINY_CLIP_SPEC, "teacher_config": str(clips["teacher"]),
                    "cache": {"crops": 2, "dir": str(tmp / "cache")}, "params": {"fdbpl_topk": 3}},
    }  # fmt: skip
    for dotted, value in changes.items():
        node = recipe
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.slow
def test_toolkit_run_distills_exports_int8_evaluates_benches_and_reports(clips, tmp_path: Path) -> None:
    run = tmp_path / "run"
    guard = {"tolerance": 100, "min_agreement": 0, "max_class_drop": 100, "max_kl": 100}
    recipe = fdbpl_recipe(clips, tmp_path / "r.yaml", export={"int8": True, **guard},
                          bench={"targets": ["ort-cpu-1t"], "rounds": 1, "max_duration": 5.0, "warmup": 2})  # fmt: skip
    res = runner.invoke(app, ["run", str(recipe), "--out", str(run)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    report = json.loads((run / "report.json").read_text())
    stages = [r["stage"] for r in report["ladder"] if r["available"]]
    assert stages == ["teacher", "student", "onnx", "int8_onnxruntime"]  # the fidelity ladder, like any student
    assert report["verdicts"][0]["target"] == "ort-cpu-1t" and report["verdicts"][0]["ship"]
    cache = json.loads((clips["tmp"] / "cache" / "manifest.json").read_text())["key"]
    assert cache["topk"] == 3 and cache["anchors_sha256"]  # the teacher's outputs come from the top-K cache
    pre = json.loads((run / "preprocess.json").read_text())
    assert pre["input_size"] == [32, 32] and pre["interpolation"] == "bicubic"  # the student's own preprocessing
    state = load_state_dict(run / "student.safetensors")
    assert {"pos_context", "neg_context", "class_embeddings"} <= state.keys()
    assert (run / "model.int8.onnx").is_file()
    # The exported graph is the classifier: image -> logits against the learned class embeddings.
    student = create_student(TINY_CLIP_STUDENT_SPEC, 4, config=clips["student"])
    student.load_state_dict(state)
    student.eval()
    x = torch.randn(3, 3, 32, 32)
    sess = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, student(x).numpy(), rtol=1e-4, atol=1e-4)
    assert not any("text" in i.name for i in sess.get_inputs())
    # Frozen towers: QAD and pruning, which fine-tune classifiers, refuse it by name.
    res = runner.invoke(app, ["export", str(run), "--int8", "--recover", "qad", *LENIENT_GUARD])
    assert isinstance(res.exception, ToolkitError) and "QAD fine-tunes classifiers" in str(res.exception)
    res = runner.invoke(app, ["prune", str(run), "--macs", "0.5", "--out", str(tmp_path / "pruned")])
    assert isinstance(res.exception, ToolkitError) and "is not pruned" in str(res.exception)
    res = runner.invoke(app, ["train", str(fdbpl_recipe(clips, tmp_path / "t.yaml", distill=None)),
                              "--out", str(tmp_path / "trained")])  # fmt: skip
    assert isinstance(res.exception, ToolkitError) and "trains with `toolkit distill`" in str(res.exception)


def test_base_to_new_trains_on_base_classes_and_scores_the_new_ones(clips, tmp_path: Path) -> None:
    from distill.evaluate import predict_logits
    from runtime.datasets import ClassSubsetDataset
    from runtime.preprocess import PreprocessContract
    from runtime.sources import DataSource

    run = tmp_path / "run"
    recipe = fdbpl_recipe(clips, tmp_path / "r.yaml", distill__classes="base", distill__params={"fdbpl_topk": 2})
    res = runner.invoke(app, ["distill", str(recipe), "--out", str(run)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    metrics = json.loads((run / "metrics.json").read_text())
    b2n = metrics["base_to_new"]
    assert b2n["new_classes"] == ["red", "yellow"] and b2n["base_n"] == 8 and b2n["new_n"] == 8
    pre = json.loads((run / "preprocess.json").read_text())
    assert pre["class_names"] == ["blue", "green"]  # the student knows the base half only
    assert metrics["test_top1"] == b2n["learned"]["base_top1"]
    # The new classes' top-1, recomputed here: the learned positive context embeds "red." and "yellow.".
    student = create_student(TINY_CLIP_STUDENT_SPEC, 2, config=clips["student"])
    student.load_state_dict(load_state_dict(run / "student.safetensors"))
    test = DataSource("imagefolder", str(clips["tmp"] / "test")).open()
    new = ClassSubsetDataset(test, [2, 3])
    with torch.no_grad():
        student.class_embeddings = torch.nn.functional.normalize(
            student.encode_classes(student.pos_context, ["red", "yellow"]), dim=-1)  # fmt: skip
    logits = predict_logits(student.eval(), new, PreprocessContract.from_dict(pre))
    assert b2n["learned"]["new_top1"] == pytest.approx(float((logits.argmax(1) == new.labels).mean()))
    a, b = b2n["learned"]["base_top1"], b2n["learned"]["new_top1"]
    assert b2n["learned"]["hm"] == pytest.approx(2 * a * b / (a + b) if a + b else 0.0)
    assert set(b2n["initial"]) == {"base_top1", "new_top1", "hm"}

    # `toolkit classes`: the held-back classes join the classifier without retraining, as rows embedded by the
    # learned prompt; the new run is evaluated on the whole test set and exports like any run.
    res = runner.invoke(app, ["classes", str(run), "--add", "red,yellow", "--out", str(tmp_path / "all")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    grown = load_state_dict(tmp_path / "all" / "student.safetensors")
    torch.testing.assert_close(
        grown["class_embeddings"][:2], load_state_dict(run / "student.safetensors")["class_embeddings"]
    )
    torch.testing.assert_close(grown["class_embeddings"][2:], student.class_embeddings)
    all_metrics = json.loads((tmp_path / "all" / "metrics.json").read_text())
    assert all_metrics["classes"]["classes"] == ["blue", "green", "red", "yellow"] and "test_top1" in all_metrics
    for add, message in (("red", "already among the run's classes"), ("pink,pink", "given twice"), (",", "non-empty")):
        res = runner.invoke(app, ["classes", str(tmp_path / "all"), "--add", add, "--out", str(tmp_path / "x")])
        assert isinstance(res.exception, ToolkitError) and message in str(res.exception), res.output
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"student": {"name": "resnet18"}}, "trains a vision-language student"),
        ({"distill__method": "kd", "distill__params": {}}, "is a vision-language model; method 'kd'"),
        ({"distill__params": {"fdbpl_topk": 9}}, "fdbpl_topk: 9 is more than the 4 classes"),
        ({"distill__params": {"fdbpl_topk": 0}}, "fdbpl_topk: expected a whole number >= 1"),
        ({"distill__params": {"fdbpl_labels": "mr"}}, "reverse KL"),
        ({"distill__params": {"fdbpl_variant": "papr"}}, "fdbpl_variant: 'papr' is not one of"),
        ({"preprocess": {"input_size": 64}}, "preprocess.input_size: .* trained with \\(32, 32\\)"),
        ({"student__pretrained": True}, "student.pretrained: .* vision-language model"),
        (
            {
                "student": {"name": "resnet18"},
                "distill__method": "kd",
                "distill__params": {},
                "distill__classes": "base",
                "preprocess": {"input_size": 16},
            },
            "distill.classes: 'base' holds half the classes back",
        ),
    ],
)
def test_bad_fdbpl_recipes_fail_before_training(clips, tmp_path: Path, changes: dict, message: str) -> None:
    run = tmp_path / "run"
    res = runner.invoke(app, ["distill", str(fdbpl_recipe(clips, tmp_path / "r.yaml", **changes)), "--out", str(run)])
    assert res.exit_code != 0
    assert isinstance(res.exception, ToolkitError), res.output + repr(res.exception)
    assert re.search(message, str(res.exception)), str(res.exception)
    assert not run.exists()  # nothing written: checked before the run directory is touched


def test_methods_command_describes_fdbpl() -> None:
    res = runner.invoke(app, ["methods", "fdbpl"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "student: a vision-language model" in text and "top-K logits + log-sum-exp" in text
    assert "loss diff2 x fdbpl_lambda_d2" in text
