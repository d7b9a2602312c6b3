"""`toolkit export --format NAME`: phone and board formats beside the ONNX model, with the same checks: the
contract inside the file, parity with the PyTorch student, INT8 calibrated on the same images behind the guard.

Formats are data (MOBILE_FORMATS); each names its files, its manifest keys and the module that writes it.
"""

from __future__ import annotations

import importlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from rich.console import Console
from torch import nn

from export.guard import GuardReport
from export.parity import check_parity
from runtime.artifacts import KNOWN, backend_unavailable_reason, file_entry
from runtime.classifier import open_classifier
from runtime.datasets import Dataset
from runtime.errors import ToolkitError, did_you_mean
from runtime.fidelity import GuardCriteria
from runtime.preprocess import PreprocessContract
from toolkit.formats import FORMATS


@dataclass(frozen=True)
class MobileFormat:
    name: str
    fp32_file: str
    int8_file: str | None  # None: no calibrated INT8 path here (the exporter's int8_unavailable_reason says why)
    description: str
    int8_description: str
    exporter: str  # a module with unavailable_reason() and export_<name>(model, contract, path[, calibration])
    parity_tolerance: float = 1e-3  # max |logit diff| / max(1, |logit|) against the PyTorch student

    @property
    def fp32_key(self) -> str:
        return self.name

    @property
    def int8_key(self) -> str:
        return f"int8_{self.name}"


MOBILE_FORMATS = {
    "executorch": MobileFormat(
        "executorch", FORMATS["executorch"].file("fp32"), FORMATS["executorch"].file("int8"),
        "ExecuTorch program, XNNPACK delegate, FP32",
        "ExecuTorch program, XNNPACK delegate, INT8 (PT2E, XNNPACK quantizer: symmetric, per-channel weights)",
        "export.executorch_export",
    ),
    "ncnn": MobileFormat(
        "ncnn", FORMATS["ncnn"].file("fp32"), FORMATS["ncnn"].file("int8"), "NCNN param/bin through PNNX, FP32 weights",
        "NCNN INT8: convolutions and fully connected layers int8 (weights per channel, inputs per tensor, minmax)",
        "export.ncnn_export",
    ),
    "coreml": MobileFormat(
        "coreml", FORMATS["coreml"].file("fp16"), FORMATS["coreml"].file("int8"),
        "Core ML ML Program, FP16 compute (iOS 17 / macOS 14)",
        "Core ML W8A8: activations calibrated by linear_quantize_activations, weights int8 per channel (macOS)",
        "export.coreml_export", parity_tolerance=2e-2,
    ),
    "litert": MobileFormat(
        "litert", FORMATS["litert"].file("fp32"), FORMATS["litert"].file("int8"),
        "LiteRT (TFLite) flatbuffer through litert-torch, FP32",
        "LiteRT full-integer INT8 (PT2E, symmetric: weights per channel, activations per tensor; int8 I/O)",
        "export.litert_export",
    ),
}  # fmt: skip


def check_formats(formats: tuple[str, ...], int8: bool = False) -> None:
    """Unknown formats (with a did-you-mean), formats whose exporter is not installed, and INT8 asked of a
    format without a calibrated INT8 path: an error before anything is written."""
    for name in formats:
        if name not in MOBILE_FORMATS:
            raise ToolkitError(f"--format {name!r} is not one of {', '.join(MOBILE_FORMATS)}."
                               + did_you_mean(name, MOBILE_FORMATS))  # fmt: skip
        exporter = _exporter(name)
        reason = exporter.unavailable_reason()
        if reason:
            raise ToolkitError(f"--format {name}: {reason}")
        if int8 and (MOBILE_FORMATS[name].int8_file is None or _int8_unavailable(exporter)):
            raise ToolkitError(f"--int8 --format {name}: {_int8_unavailable(exporter)}")


def _int8_unavailable(exporter: ModuleType) -> str | None:
    """Why this machine cannot write the format's INT8 form (None: it can)."""
    reason = getattr(exporter, "int8_unavailable_reason", None)
    return reason() if reason else None


def _exporter(name: str) -> ModuleType:
    return importlib.import_module(MOBILE_FORMATS[name].exporter)


def export_format(
    name: str, model: nn.Module, contract: PreprocessContract, run_dir: Path, parity_images: Dataset,
    held_out: Dataset, fp32_logits: np.ndarray, batches: list[np.ndarray] | None, criteria: GuardCriteria,
    console: Console,
) -> tuple[dict[str, Any], list[str]]:  # fmt: skip
    """FP32 (parity-checked) and, with calibration ``batches``, INT8 (guarded) files of one format; their
    manifest entries and the INT8 file when its guard failed."""
    fmt = MOBILE_FORMATS[name]
    export = getattr(_exporter(name), f"export_{name}")
    section: dict[str, Any] = {}
    t0 = time.perf_counter()
    fp32_path = run_dir / fmt.fp32_file
    info = export(model, contract, fp32_path)
    cannot_run = runs_here(name)
    if cannot_run:  # Core ML off macOS: the exporter checked the spec; parity needs predictions
        parity_entry: dict[str, Any] = {"skipped": cannot_run}
        said = f"parity not checked: {cannot_run}"
    else:
        parity = check_parity(model, open_classifier(fp32_path), parity_images, tolerance=fmt.parity_tolerance)
        if not parity.passed:
            shutil.rmtree(fp32_path) if fp32_path.is_dir() else fp32_path.unlink()
            raise ToolkitError(f"{fmt.fp32_file}: parity check failed, file removed: {parity.describe()}")
        parity_entry, said = parity.to_dict(), f"parity: {parity.describe()}"
    section[fmt.fp32_key] = {**file_entry(fp32_path), "format": fmt.description, "parity": parity_entry,
                             **info, "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    console.print(f"{fmt.fp32_file} in {time.perf_counter() - t0:.1f}s; {said}" + _outside(info))
    if batches is None or fmt.int8_file is None:
        return section, []
    t0 = time.perf_counter()
    int8_path = run_dir / fmt.int8_file
    info = export(model, contract, int8_path, calibration=batches)
    predictions = open_classifier(int8_path).predict(held_out)
    report = GuardReport(criteria, fp32_logits, held_out.labels)
    report.record(predictions, method=fmt.int8_description)
    verdict = report.to_dict()
    verdict["fallback"] = "none: every quantizable layer is INT8 (no float fallback for this format yet)"
    section[fmt.int8_key] = {**file_entry(int8_path), "format": fmt.int8_description, "guard": verdict, **info,
                             "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    console.print(f"{fmt.int8_file}: {report.describe()}" + _outside(info))
    return section, ([] if report.passed else [fmt.int8_file])


def runs_here(name: str) -> str | None:
    """None when this machine can run the format's models (and so check them), else why not."""
    return backend_unavailable_reason(KNOWN[MOBILE_FORMATS[name].fp32_key][1])


def _outside(info: dict[str, Any]) -> str:
    ops = info.get("not_delegated") or {}
    return f"; outside the delegate (portable kernels): {', '.join(ops)}" if ops else ""
