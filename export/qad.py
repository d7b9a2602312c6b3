"""Quantization-aware distillation's model side: a student made fake-quantized for training, and its export to
the Q/DQ ONNX form our post-training quantization writes.

Library: NNCF's PyTorch quantization. It is already how the OpenVINO INT8 artifact is made, its quantizers train
(scales and weights), and ``nncf.strip`` turns them into PyTorch's native fake-quantize ops, which the ONNX
exporter writes as QuantizeLinear/DequantizeLinear. ModelOpt targets TensorRT on NVIDIA GPUs and PyTorch's PT2E
QAT leaves torch for torchao with an experimental ONNX path; neither exports the ONNX Runtime U8S8 form here.

BatchNorm is folded into the convolutions before quantizers are inserted, so the weights trained are the ones
deployed (the exported graph has no BatchNormalization left to fold after quantization).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnx
import torch
from timm.layers import BatchNormAct2d
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from export.onnx_export import FORMAT, OPSET, set_metadata
from export.qdq_form import fold_weight_quantizers, quantize_biases
from runtime.atomic import atomic_path
from runtime.classifier import META_FORMAT, META_INT8_TARGET, META_PREPROCESS
from runtime.errors import ToolkitError
from runtime.preprocess import PreprocessContract

# The INT8 form QAD trains toward, by export target: "u8s8" = asymmetric unsigned activations (NNCF's MIXED
# preset: ONNX Runtime's fast CPU form, also what OpenVINO reads), "s8s8" = symmetric signed activations with zero
# points 0 (TensorRT's explicit quantization; NNCF's PERFORMANCE preset, activations then forced signed).
QAD_FORMS = {"onnxruntime": "u8s8", "openvino": "u8s8", "tensorrt": "s8s8"}
PRESETS = {"u8s8": "MIXED", "s8s8": "PERFORMANCE"}


def check_qad_targets(targets: tuple[str, ...]) -> None:
    """QAD asked for a backend without a form it can train toward: an error naming it, before anything trains."""
    for target in targets:
        if target not in QAD_FORMS:
            raise ToolkitError(f"--recover qad --backend {target}: no Q/DQ form to train toward; use --backend "
                               + ", ".join(QAD_FORMS))  # fmt: skip


class Folded(NamedTuple):
    norms: int  # BatchNorms folded into the convolution before them
    dead_channels: int  # of their channels, constant on the training data: weights zeroed, output in the bias


# A channel whose running variance, and variance on the example, are below this fraction of its norm's eps
# outputs a constant (the trained MobileNetV2s here: 12 channels below 1e-4 eps, most at 1e-9; the next at 1e-2).
DEAD_VARIANCE = 1e-4


def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> Folded:
    """Fold every BatchNorm that reads a convolution's output alone into that convolution, in place; the norm
    becomes identity (its activation, for timm's BatchNormAct2d, stays). Raises if the folded model's outputs on
    ``example`` differ.

    A dead channel (constant convolution output, running variance ~1e-14) would fold into weights of 1e3-1e4
    that multiply zeros: exact in float, but its per-channel weight scale then rounds its int32 bias to a step of
    input scale x weight scale (0.1-0.4 here), which changed 5.7% of a MobileNetV2's predictions. Its weights
    become zero and its bias the constant it outputs (measured on ``example``)."""
    model.eval()
    outputs: dict[int, nn.Conv2d] = {}
    produced: dict[nn.Module, torch.Tensor] = {}
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []

    def after_conv(module: nn.Module, _args: Any, out: torch.Tensor) -> None:
        outputs[id(out)] = module  # type: ignore[assignment]
        produced[module] = out  # also keeps the tensor alive so its id is not reused during the pass

    def before_norm(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        conv = outputs.get(id(args[0]))
        if conv is not None and type(module) in _NORMS:
            pairs.append((conv, module))  # type: ignore[arg-type]

    handles = [m.register_forward_hook(after_conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_pre_hook(before_norm) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        try:
            reference = model(example)
        finally:
            for h in handles:
                h.remove()
    parents = {id(m): name for name, m in model.named_modules()}
    dead_channels = 0
    for conv, norm in pairs:
        if norm.running_mean is None or norm.running_var is None:
            continue
        weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps,
                                            norm.weight, norm.bias)  # fmt: skip
        threshold = DEAD_VARIANCE * norm.eps
        dead = (norm.running_var < threshold) & (produced[conv].var((0, 2, 3), correction=0) < threshold)
        if dead.any():
            with torch.no_grad():
                constant = produced[conv].mean((0, 2, 3))
                gain = (norm.weight if norm.weight is not None else torch.ones_like(constant)) / torch.sqrt(
                    norm.running_var + norm.eps
                )
                shift = norm.bias if norm.bias is not None else torch.zeros_like(constant)
                weight[dead] = 0.0
                bias[dead] = (shift + gain * (constant - norm.running_mean))[dead]
            dead_channels += int(dead.sum())
        conv.weight, conv.bias = weight, bias
        _replace(model, parents[id(norm)], _NORMS[type(norm)](norm))
    with torch.no_grad():
        folded = model(example)
    if not torch.allclose(folded, reference, atol=1e-4, rtol=1e-3):
        error = float((folded - reference).abs().max())
        raise ToolkitError(
            f"folding BatchNorm into the convolutions changed the outputs (max |diff| {error:.2e}): a convolution's "
            "output also feeds another layer; this student cannot be trained by QAD"
        )
    return Folded(len(pairs), dead_channels)


def _after_norm(norm: nn.Module) -> nn.Module:
    """What stays of timm's BatchNormAct2d once its normalisation is folded away: dropout and activation."""
    return nn.Sequential(norm.drop, norm.act)  # type: ignore[arg-type]


# Norms folded away, and what stays of each: nothing, or the activation timm's BatchNormAct2d carries.
_NORMS: dict[type, Any] = {nn.BatchNorm2d: lambda _n: nn.Identity(), BatchNormAct2d: _after_norm}


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)


def prepare_qat(model: nn.Module, batches: list[np.ndarray], target: str = "onnxruntime") -> tuple[nn.Module, Folded]:
    """BatchNorm folded, then NNCF quantizers inserted and initialised on ``batches`` (calibration): the model
    that QAD fine-tunes, and what folding did. Weights symmetric per channel; activations per tensor in
    ``target``'s form (QAD_FORMS)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    check_qad_targets((target,))
    # NNCF compiles its CPU quantizer kernels on first use and gives up after 60 s; that compile took 30-58 s on
    # a 2-core machine here, so a loaded machine would fail QAD for a timeout alone.
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "900")
    folded = fold_batchnorm(model, torch.from_numpy(batches[0][:2]))
    dataset = nncf.Dataset([torch.from_numpy(b) for b in batches])
    images = sum(len(b) for b in batches)
    # Per-tensor activations: NNCF's CPU configuration quantizes depthwise inputs per channel, a form ONNX
    # Runtime's integer convolution (one input scale) cannot run.
    advanced = AdvancedQuantizationParameters(activations_quantization_params=QuantizationParameters(per_channel=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qat = nncf.quantize(model, dataset, preset=getattr(nncf.QuantizationPreset, PRESETS[QAD_FORMS[target]]),
                            subset_size=images, fast_bias_correction=True, advanced_parameters=advanced)  # fmt: skip
    exact_weight_ranges(qat)
    if QAD_FORMS[target] == "s8s8":
        force_signed_activations(qat)
    return qat, folded


def force_signed_activations(qat: nn.Module) -> int:
    """Make every symmetric activation quantizer signed (int8, zero point 0), as TensorRT's form needs.

    NNCF makes a quantizer of non-negative values (after a ReLU) unsigned and refuses ``signedness_to_force`` on
    activations for every hardware configuration; switched after initialisation, the range [0, max] keeps its
    upper end and takes 127 positive steps, exactly what symmetric INT8 PTQ gives a ReLU output."""
    flipped = 0
    for name, quantizer in qat.named_modules():
        weight_port = name.rsplit("__", 1)[-1].startswith("1.")
        if hasattr(quantizer, "signed") and not weight_port and not quantizer.signed:
            quantizer.signed = True
            flipped += 1
    return flipped


def exact_weight_ranges(qat: nn.Module) -> int:
    """Set each per-channel weight quantizer's range to its channel's own absolute maximum, as our PTQ does.

    NNCF raises every channel's range to at least 1% of the layer's largest (``fix_zero_filters_symmetric``): after
    BatchNorm folding a dead channel (running variance ~1e-14) can hold weights of 1e4, which then rounds every
    live channel of that layer to zero (a trained MobileNetV2: 73.7% -> 24.7% top-1 from one depthwise layer).
    Returns how many quantizers were reset."""
    modules = dict(qat.named_modules())
    reset = 0
    for name, quantizer in modules.items():
        if (
            ".pre_hooks." not in name
            or not hasattr(quantizer, "scale")
            or not name.rsplit("__", 1)[-1].startswith("1.")
        ):
            continue
        op = name.split(".pre_hooks.", 1)[1].rsplit("__", 1)[0]  # e.g. blocks/0/0/conv_dw/conv2d/0
        owner = modules.get(op.rsplit("/", 2)[0].replace("/", "."))
        weight = getattr(owner, "weight", None)
        scale = quantizer.scale
        if not isinstance(weight, torch.Tensor) or scale.numel() != weight.shape[0] or scale.numel() == 1:
            continue
        with torch.no_grad():
            amax = weight.detach().abs().reshape(weight.shape[0], -1).amax(1).clamp_min(1e-8)
            scale.copy_(amax.reshape(scale.shape))
        reset += 1
    return reset


def export_qat_onnx(
    model: nn.Module, contract: PreprocessContract, path: str | os.PathLike[str], int32_bias: bool = True,
    target: str = "onnxruntime",
) -> Path:  # fmt: skip
    """The fake-quantized student -> Q/DQ ONNX at ``path`` (atomically): int8 weights (and int32 biases) stored as
    PTQ stores them, dynamic batch, the preprocessing contract in the metadata.

    ``int32_bias``: ONNX Runtime's integer kernels need it (and quantize a float bias at load anyway), but rounding
    a bias to input scale x weight scale costs accuracy where a channel's weights are large and its input is dead
    (MobileNetV2: 5.7% of predictions change). OpenVINO keeps biases in float: it converts the float-bias graph."""
    import nncf
    from nncf import StripFormat

    path = Path(path)
    h, w = contract.input_size
    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stripped = nncf.strip(model, do_copy=True, strip_format=StripFormat.NATIVE,
                              example_input=torch.zeros(1, 3, h, w))  # fmt: skip
    with atomic_path(path) as tmp, tempfile.TemporaryDirectory() as work:
        raw = Path(work) / "qat.onnx"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # The TorchScript exporter: the dynamo exporter does not take the native fake-quantize ops.
                torch.onnx.export(stripped, (torch.zeros(2, 3, h, w),), str(raw), dynamo=False, opset_version=OPSET,
                                  input_names=["input"], output_names=["logits"],
                                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds
            raise ToolkitError(
                f"ONNX export of the quantization-aware student failed: {type(exc).__name__}: {exc}"
            ) from exc
        proto = onnx.load(str(raw))
        fold_weight_quantizers(proto)
        if int32_bias:
            quantize_biases(proto)
        set_metadata(proto, {META_PREPROCESS: contract.to_json(), META_FORMAT: FORMAT, META_INT8_TARGET: target,
                             "toolkit.calibration": "quantization-aware distillation"})  # fmt: skip
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
    return path
