"""Quantization-aware distillation: BatchNorm folded exactly for every registered student, the fake-quantized
student exported in the very Q/DQ form PTQ writes, bad settings refused before anything trains, and
`toolkit export --recover qad|auto` end to end."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import FAILING_GUARD, LENIENT_GUARD, write_image_folder, write_recipe
from torch import nn
from typer.testing import CliRunner

from distill.students import create_student, list_students
from export.onnx_export import export_onnx
from export.qad import export_qat_onnx, fold_batchnorm, prepare_qat
from export.qdq_form import form_differences, qdq_form
from export.quantize import quantize
from runtime.artifacts import run_artifacts
from runtime.classifier import OnnxClassifier
from runtime.errors import ToolkitError
from runtime.preprocess import PreprocessContract
from toolkit.cli import app
from toolkit.qad import check_recover

SIZE = 16


def _randomise_norms(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics, so that a wrong fold shows in the outputs."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


@pytest.mark.parametrize("name", list_students())
def test_fold_batchnorm_keeps_outputs_for_every_student(name: str) -> None:
    torch.manual_seed(0)
    model = create_student(name, 5).eval()
    _randomise_norms(model)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert fold_batchnorm(model, x) == (norms, 0) and norms > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, atol=1e-4, rtol=1e-3)
    assert hasattr(model, "forward_features")  # the student's own class, not a traced copy


def test_a_dead_channel_folds_into_zero_weights_and_its_constant_bias() -> None:
    """A depthwise channel reading a dead input (all zeros) has running variance ~0: folded as is, its weights
    would be ~316x gamma; they become zero and its bias the constant the norm outputs for it."""
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False),
                          nn.BatchNorm2d(4)).eval()  # fmt: skip
    _randomise_norms(model)
    conv, norm = model[2], model[3]
    with torch.no_grad():
        model[0].weight[0], model[0].bias[0] = 0.0, -1.0  # channel 0 of the depthwise input: always 0
        norm.running_var[0], norm.running_mean[0] = 1e-14, 0.02
        expected_bias = float(norm.bias[0] + norm.weight[0] * (0.0 - 0.02) / torch.sqrt(norm.running_var[0] + norm.eps))
        live = conv.weight[1:] * (norm.weight[1:] / torch.sqrt(norm.running_var[1:] + norm.eps)).reshape(-1, 1, 1, 1)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        before = model(x)
    assert fold_batchnorm(model, x) == (1, 1)
    assert torch.all(conv.weight[0] == 0) and conv.bias is not None
    assert float(conv.bias[0]) == pytest.approx(expected_bias, rel=1e-5)
    torch.testing.assert_close(conv.weight[1:].detach(), live)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, atol=1e-4, rtol=1e-3)


def test_fold_batchnorm_refuses_a_convolution_read_twice() -> None:
    class Branch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.norm = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.norm(y) + y

    model = Branch().eval()
    _randomise_norms(model)
    with pytest.raises(ToolkitError, match="also feeds another layer"):
        fold_batchnorm(model, torch.randn(2, 3, 8, 8))


@pytest.mark.parametrize(
    ("recover", "int8", "targets", "epochs", "images", "message"),
    [
        ("qat", True, ("onnxruntime",), 1, None, "--recover 'qat' is not one of"),
        ("qad", False, ("onnxruntime",), 1, None, "add --int8"),
        ("auto", True, ("onnxruntime", "coreml"), 1, None, "--backend coreml: no Q/DQ form"),
        ("qad", True, ("onnxruntime",), 0, None, "--qad-epochs 0"),
        ("qad", True, ("openvino",), 1, 1, "--qad-images 1"),
    ],
)
def test_bad_qad_settings_are_refused_up_front(recover, int8, targets, epochs, images, message) -> None:
    with pytest.raises(ToolkitError, match=message):
        check_recover(recover, int8, targets, epochs, images)
    check_recover("none", False, ("tensorrt",), 0, 0)  # nothing asked: nothing checked


def test_qad_under_torchrun_is_refused_before_anything_exports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ToolkitError, match="QAD runs in one process; run toolkit export without torchrun"):
        check_recover("qad", True, ("onnxruntime",), 1, None)
    check_recover("none", True, ("onnxruntime",), 1, None)


# MobileNetV2's depthwise inputs are what NNCF would quantize per channel (ONNX Runtime cannot run that form).
@pytest.mark.parametrize(
    ("name", "target"),
    [("resnet18", "onnxruntime"), ("resnet18", "tensorrt"),
     pytest.param("mobilenetv2_100", "onnxruntime", marks=pytest.mark.slow)],
)  # fmt: skip
def test_qat_export_is_in_ptq_form_and_matches_the_trained_model(name: str, target: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_student(name, 4).eval()
    _randomise_norms(model)
    contract = PreprocessContract(input_size=(SIZE, SIZE), resize_size=SIZE, class_names=("a", "b", "c", "d"))
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((8, 3, SIZE, SIZE)).astype(np.float32) for _ in range(2)]
    export_onnx(model, contract, tmp_path / "fp32.onnx")
    quantize(tmp_path / "fp32.onnx", tmp_path / "ptq.onnx", target, batches, "minmax")
    qat, _ = prepare_qat(copy.deepcopy(model), batches, target)
    export_qat_onnx(qat, contract, tmp_path / "qad.onnx", int32_bias=target == "onnxruntime")
    form = qdq_form(onnx.load(str(tmp_path / "qad.onnx")))
    assert form_differences(form, qdq_form(onnx.load(str(tmp_path / "ptq.onnx")))) == []
    assert form["float_ops"] == [] and form["weights"] == "int8"
    expected = {"onnxruntime": ("uint8", "asymmetric", "int32"), "tensorrt": ("int8", "all zero", "float")}[target]
    assert (form["activations"], form["activation_zero_points"], form["bias"]) == expected
    assert (tmp_path / "qad.onnx").stat().st_size < 0.4 * (tmp_path / "fp32.onnx").stat().st_size
    export_qat_onnx(qat, contract, tmp_path / "float_bias.onnx", int32_bias=False)  # OpenVINO's input
    assert qdq_form(onnx.load(str(tmp_path / "float_bias.onnx")))["bias"] == "float"
    x = rng.standard_normal((32, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        trained = qat.eval()(torch.from_numpy(x)).numpy()
    exported = OnnxClassifier(tmp_path / "qad.onnx").run(x)
    assert (exported.argmax(1) == trained.argmax(1)).mean() >= 0.8  # random weights and inputs: near-ties
    assert np.abs(exported - trained).max() < 0.15 * np.abs(trained).max()


def test_weight_ranges_are_each_channels_own() -> None:
    """A channel whose output is constant (it reads a dead input) has running variance ~0 and folds into weights
    far larger than the others'; NNCF alone raises every channel's range to 1% of the largest, rounding the
    live channels to zero. Each channel keeps its own range, as in our PTQ."""
    torch.manual_seed(0)
    model = create_student("resnet18", 4).eval()
    _randomise_norms(model)
    with torch.no_grad():
        model.bn1.running_var[0] = 1e-14
        model.conv1.weight[0] *= 30
    rng = np.random.default_rng(0)
    qat, folded = prepare_qat(copy.deepcopy(model), [rng.standard_normal((8, 3, SIZE, SIZE)).astype(np.float32)])
    assert folded.dead_channels == 0  # its output is not constant: statistics alone do not make a channel dead
    weight = qat.conv1.weight.detach()
    amax = weight.abs().reshape(weight.shape[0], -1).amax(1)
    assert amax[0] > 1000 * amax[1:].max()
    quantizer = next(m for n, m in qat.named_modules() if n.endswith(".conv1/conv2d/0__1.0"))
    torch.testing.assert_close(quantizer.scale.detach().flatten(), amax)
    with torch.no_grad():
        error = (quantizer(weight) - weight).abs().reshape(weight.shape[0], -1).amax(1)
    assert bool((error <= amax / 127).all())  # within a step of each channel's own grid


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("qad")
    recipe = write_recipe(tmp / "r.yaml", write_image_folder(tmp / "data", per_class=20))
    res = CliRunner().invoke(app, ["train", str(recipe), "--out", str(tmp / "run")])
    assert res.exit_code == 0, res.output
    return tmp / "run"


@pytest.mark.slow
def test_export_recover_qad_end_to_end(tiny_run: Path) -> None:
    args = ["export", str(tiny_run), "--int8", "--backend", "all"]
    res = CliRunner().invoke(app, [*args, "--recover", "qad", "--qad-images", "24", *LENIENT_GUARD])
    assert res.exit_code == 0, res.output
    exports = json.loads((tiny_run / "manifest.json").read_text())["exports"]
    entry = exports["int8_onnxruntime_qad"]
    assert entry["guard"]["verdict"] == "PASS" and entry["guard"]["kept_in_float"] == []
    assert entry["form_differences_vs_ptq"] == [] and entry["form"]["float_ops"] == []
    assert entry["qad"]["images"] == 24 and entry["agreement_with_trained_model"] >= 0.9
    assert (tiny_run / "qad" / "metrics.jsonl").is_file()
    assert exports["int8_openvino_qad"]["file"] == "model.int8.qad.openvino/model.xml"
    trt = exports["int8_tensorrt_qad"]  # its own fine-tuning, toward the symmetric signed form
    assert trt["qad"]["form"] == "s8s8" and trt["form_differences_vs_ptq"] == [] and trt["form"]["bias"] == "float"
    assert (tiny_run / "qad-tensorrt" / "metrics.jsonl").is_file()
    from export.tensorrt_engine import unavailable_reason

    if unavailable_reason():  # its own engine is built where TensorRT and a GPU exist; here the reason is kept
        assert trt["engine"] == {"built": False, "reason": unavailable_reason()}
    keys = [a.key for a in run_artifacts(tiny_run)]
    assert {"int8_onnxruntime_qad", "int8_tensorrt_qad", "int8_openvino_qad"} <= set(keys)
    assert "model.int8.qad.onnx: PASS" in res.output


@pytest.mark.slow
def test_export_recover_auto_runs_qad_only_where_ptq_failed(tiny_run: Path) -> None:
    (tiny_run / "model.int8.qad.onnx").unlink(missing_ok=True)
    args = ["export", str(tiny_run), "--int8", "--recover", "auto", "--qad-images", "24"]
    res = CliRunner().invoke(app, [*args, *LENIENT_GUARD])
    assert res.exit_code == 0, res.output
    assert not (tiny_run / "model.int8.qad.onnx").exists()  # PTQ passed: nothing to recover
    res = CliRunner().invoke(app, [*args, *FAILING_GUARD, "--max-float-layers", "0"])
    assert res.exit_code != 0 and (tiny_run / "model.int8.qad.onnx").is_file()
    assert "model.int8.qad.onnx" in str(res.exception) and "accuracy guard FAILED" in str(res.exception)


@pytest.mark.slow
def test_qad_resumes_from_its_checkpoint(tiny_run: Path) -> None:
    args = ["export", str(tiny_run), "--int8", "--recover", "qad", "--qad-images", "24", *LENIENT_GUARD]
    assert CliRunner().invoke(app, [*args, "--qad-epochs", "1"]).exit_code == 0
    res = CliRunner().invoke(app, [*args, "--qad-epochs", "2", "--resume"])
    assert res.exit_code == 0, res.output
    assert "qad resumed from" in res.output and "after epoch 1 of 2" in res.output
    rows = [json.loads(line) for line in (tiny_run / "qad" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    res = CliRunner().invoke(app, ["export", str(tiny_run), "--resume"])
    assert res.exit_code != 0 and "add --recover qad" in str(res.exception)
