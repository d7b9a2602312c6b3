"""`toolkit export --int8 --recover qad`: quantization-aware distillation of the run's student, then export to the
INT8 forms post-training quantization writes, all layers in INT8.

The student is made fake-quantized (export/qad.py), then fine-tuned on the training engine by KD from its own
FP32 self, whose logits for each training image and its flip are computed once (distill/recovery.py): recovery
never runs the FP32 model again. The result is guarded like PTQ (top-1 drop on the held-out images) and its
Q/DQ form is checked against PTQ's file for the same target.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from rich.console import Console
from torch import nn

from distill.config import EmaConfig
from distill.distributed import init_distributed, shutdown_distributed
from distill.engine import train, write_metrics
from distill.evaluate import classifier_validator, predict_logits
from distill.loss_terms import LossTerm, const
from distill.recovery import CachedLogitsKD, FlipViews, teacher_views
from distill.transforms import eval_transform
from export.calibration import stratified_sample
from export.guard import GuardReport, sensitivity_entry, sensitivity_table
from export.qad import QAD_FORMS, check_qad_targets, export_qat_onnx, prepare_qat
from export.qdq_form import form_differences, qdq_form
from export.tensorrt_engine import engine_or_reason
from runtime.artifacts import ENGINES, file_entry
from runtime.classifier import OnnxClassifier, OpenVinoClassifier
from runtime.datasets import Dataset
from runtime.errors import ToolkitError
from runtime.fidelity import DEFAULT_CRITERIA, GuardCriteria
from runtime.preprocess import PreprocessContract
from toolkit.recipe import Recipe

QAD_FILES = {"onnxruntime": "model.int8.qad.onnx", "tensorrt": "model.int8.qad.tensorrt.onnx",
             "openvino": "model.int8.qad.openvino/model.xml"}  # fmt: skip
QAD_KEYS = {"onnxruntime": "int8_onnxruntime_qad", "tensorrt": "int8_tensorrt_qad", "openvino": "int8_openvino_qad"}
QAD_FOLDERS = {"u8s8": "qad", "s8s8": "qad-tensorrt"}  # checkpoints and metrics.jsonl of each form's fine-tuning
RECOVER = ("none", "qad", "auto")
# Default QAD learning rate as a fraction of the recipe's: the fake-quantized student starts at FP32 accuracy (exact
# per-channel weight ranges) and has no BatchNorm left, so it takes only gentle steps. Measured on a Fashion-MNIST
# MobileNetV2 (SGD, recipe lr 0.05): lr / 10 diverged to chance, lr / 100 ended below its start, lr / 1000 recovered.
LR_FACTOR = 1e-3


def check_recover(recover: str, int8: bool, targets: tuple[str, ...], epochs: int, images: int | None) -> None:
    """Bad QAD settings: an error naming the value, before anything exports or trains."""
    if recover not in RECOVER:
        raise ToolkitError(f"--recover {recover!r} is not one of {RECOVER}")
    if recover == "none":
        return
    if not int8:
        raise ToolkitError(f"--recover {recover}: recovers INT8 accuracy; add --int8")
    check_qad_targets(targets)
    if epochs < 1:
        raise ToolkitError(f"--qad-epochs {epochs}: must be at least 1")
    if images is not None and images < 2:
        raise ToolkitError(f"--qad-images {images}: must be at least 2 (or omitted for the whole training split)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # toolkit export (PTQ, guard, files) is one process's work; so is a QAD fine-tuning of 1-2 epochs.
        raise ToolkitError(f"--recover {recover}: QAD runs in one process; run toolkit export without torchrun")


def run_qad(
    run_dir: Path, model: nn.Module, contract: PreprocessContract, recipe: Recipe, train_set: Dataset,
    val_set: Dataset, held_out: Dataset, batches: list[np.ndarray], fp32_logits: np.ndarray,
    targets: tuple[str, ...], *,
    epochs: int = 1, lr: float | None = None, images: int | None = None, temperature: float = 4.0,
    alpha: float = 0.9, criteria: GuardCriteria = DEFAULT_CRITERIA, resume: bool = False, console: Console,
) -> dict[str, Any]:  # fmt: skip
    """Fine-tune a fake-quantized copy of ``model`` per INT8 form the ``targets`` need and export it for each;
    returns the manifest entries. ``resume`` continues an interrupted fine-tuning from its checkpoints (the
    quantizers are initialised the same way again, then the checkpoint's weights, ranges and optimizer state load)."""
    t0 = time.perf_counter()
    base = recipe.train
    cfg = base.model_copy(update={
        "epochs": epochs, "precision": "fp32", "channels_last": False, "ema": EmaConfig(enabled=False),
        "optimizer": base.optimizer.model_copy(update={"lr": lr if lr is not None else base.optimizer.lr * LR_FACTOR}),
        "schedule": base.schedule.model_copy(update={"warmup_epochs": 0.0}),
        "checkpoint_every_steps": None,
    })  # fmt: skip
    data = train_set
    if images is not None and images < len(train_set):
        data = train_set.subset(stratified_sample(train_set.labels, images, recipe.seed))
    transform = eval_transform(contract)
    section: dict[str, Any] = {}
    ctx = init_distributed(cfg.device)
    try:
        model = model.eval()
        logits = teacher_views(model, data, transform, cfg.eval_batch_size)
        logits_s = time.perf_counter() - t0
        validate = classifier_validator(val_set, contract, cfg.eval_batch_size, ctx.device)
        for form in dict.fromkeys(QAD_FORMS[t] for t in targets):
            wanted = tuple(t for t in targets if QAD_FORMS[t] == form)
            t1 = time.perf_counter()
            qat, folded = prepare_qat(copy.deepcopy(model), batches, wanted[0])
            val_before = float(validate(qat)["val_top1"])
            start = copy.deepcopy(qat.state_dict())
            console.print(f"QAD ({form.upper()} form): fake-quantized student, val top-1 {val_before:.4f} before "
                          f"fine-tuning; {epochs} epoch(s) on {len(data)} images, lr {cfg.optimizer.lr:g}")  # fmt: skip
            terms = (LossTerm("cls", const(1 - alpha), "CE with the label"),
                     LossTerm("kd", const(alpha), "T^2 KL to the FP32 student (cached logits)"))  # fmt: skip
            objective = CachedLogitsKD(qat, epochs, terms, {"temperature": temperature})
            folder = run_dir / QAD_FOLDERS[form]
            engine = train(objective, FlipViews(data, transform, logits, recipe.seed), cfg, folder / "checkpoints",
                           recipe.seed, ctx, stage="qad", validate=validate, resume=resume, console=console,
                           on_epoch=lambda rows, f=folder: write_metrics(f / "metrics.jsonl", rows))  # fmt: skip
            # Fine-tuning that ends below where it started (a learning rate too high) keeps the start: the
            # quantizers initialised on calibration data, like PTQ. Selection among epochs is the engine's.
            kept_start = engine.best_val_top1 is not None and engine.best_val_top1 < val_before
            qat.load_state_dict(start if kept_start else engine.weights)
            if kept_start:
                console.print(f"QAD: fine-tuning ended at val top-1 {engine.best_val_top1:.4f}, below the start "
                              f"({val_before:.4f}): kept the start; try a lower --qad-lr")  # fmt: skip
            info = {"form": form, "epochs": epochs, "lr": cfg.optimizer.lr, "images": len(data),
                    "temperature": temperature, "alpha": alpha, "library": "nncf",
                    "teacher": "the FP32 student (logits cached per image and flip)",
                    "batchnorms_folded": folded.norms, "dead_channels_zeroed": folded.dead_channels,
                    "val_top1_before": val_before, "val_top1_after": engine.best_val_top1, "kept_start": kept_start,
                    "teacher_logits_s": round(logits_s, 1), "train_s": round(time.perf_counter() - t1, 1)}  # fmt: skip
            # The fine-tuned model's own predictions, once per form: each artifact's agreement is measured on them.
            trained = predict_logits(qat.eval(), held_out, contract, cfg.eval_batch_size).argmax(1)
            for target in wanted:
                section[QAD_KEYS[target]] = _export(qat, target, info, run_dir, contract, held_out, trained,
                                                    fp32_logits, criteria, batches, console)  # fmt: skip
    finally:
        shutdown_distributed()
    return section


def _export(
    qat: nn.Module, target: str, info: dict[str, Any], run_dir: Path, contract: PreprocessContract,
    held_out: Dataset, trained: np.ndarray, fp32_logits: np.ndarray, criteria: GuardCriteria,
    batches: list[np.ndarray], console: Console,
) -> dict[str, Any]:  # fmt: skip
    """Write ``target``'s QAD artifact, guard it, check its form against PTQ's file; its manifest entry."""
    path = run_dir / QAD_FILES[target]
    if target == "openvino":
        from export.openvino_export import onnx_to_openvino

        with tempfile.TemporaryDirectory() as tmp:  # float biases: OpenVINO adds them in float
            onnx_to_openvino(export_qat_onnx(qat, contract, Path(tmp) / "qad.onnx", int32_bias=False), path,
                             contract)  # fmt: skip
        classifier: OnnxClassifier | OpenVinoClassifier = OpenVinoClassifier(path)
    else:  # ONNX Runtime's kernels need int32 biases; TensorRT's form keeps them in float, as its PTQ does
        export_qat_onnx(qat, contract, path, int32_bias=target == "onnxruntime", target=target)
        classifier = OnnxClassifier(path)
    logits = classifier.predict(held_out)
    report = GuardReport(criteria, fp32_logits, held_out.labels)
    report.record(logits, method="quantization-aware distillation, every layer INT8")
    agreement = float((logits.argmax(1) == trained).mean())
    entry = {**file_entry(path), "format": f"{QAD_FORMATS[target]}, quantization-aware distillation (NNCF)",
             "guard": report.to_dict(), "agreement_with_trained_model": agreement, "qad": info}  # fmt: skip
    if target in PTQ_FILES:
        entry["sensitivity"] = sensitivity_entry(sensitivity_table(path, batches), batches)
        entry["form"] = form = qdq_form(onnx.load(str(path)))
        entry["form_differences_vs_ptq"] = _compare_with_ptq(path, form, run_dir / PTQ_FILES[target])
    if target == "tensorrt":  # its own engine (model.qad.<gpu>.engine), beside PTQ's
        _, _, precision, stem = ENGINES[QAD_KEYS[target]]
        entry["engine"] = engine_or_reason(path, run_dir, contract, console.print, stem=stem, precision=precision)
    console.print(f"{QAD_FILES[target]}: {report.describe()}; all layers INT8; agrees with the fine-tuned model "
                  f"on {100 * agreement:.1f}% of the images")  # fmt: skip
    return entry


QAD_FORMATS = {
    "onnxruntime": "QDQ U8S8, per-channel weights, int32 bias",
    "tensorrt": "QDQ S8S8 symmetric, per-channel weights, float bias (TensorRT explicit quantization)",
    "openvino": "OpenVINO IR from the QAD QDQ graph, float bias",
}
# The PTQ file of the same form, which a QAD file's Q/DQ form must match.
PTQ_FILES = {"onnxruntime": "model.int8.onnx", "tensorrt": "model.int8.tensorrt.onnx"}


def _compare_with_ptq(path: Path, form: dict[str, Any], ptq_path: Path) -> list[str]:
    """Differences from PTQ's file of the same target; an error, the QAD file removed, when there are any (it
    would not run through the INT8 kernels PTQ's file runs through)."""
    if not ptq_path.is_file():
        return []
    differences = form_differences(form, qdq_form(onnx.load(str(ptq_path))))
    if differences:
        path.unlink()
        raise ToolkitError(
            f"{path.name} removed: its INT8 form differs from {ptq_path.name}'s: {'; '.join(differences)}"
        )
    return differences
