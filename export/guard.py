"""Accuracy guard: INT8 top-1 against FP32 on the held-out split; keep the most sensitive layers in float.

Sensitivity is each quantized activation's signal-to-quantization-noise ratio (SQNR, in dB) between its
values before and after its Quantize/Dequantize pair, measured with ONNX Runtime's QDQ debugging tools on
calibration batches: the lowest SQNR is the layer whose inputs INT8 represents worst.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization.qdq_loss_debug import (
    collect_activations,
    compute_activation_error,
    create_activation_matching,
    modify_model_output_intermediate_tensors,
)

from export.calibration import BatchReader
from export.quantize import quantize
from runtime.classifier import Classifier, OnnxClassifier
from runtime.datasets import Dataset
from runtime.errors import ToolkitError, did_you_mean

QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


@dataclass
class GuardReport:
    tolerance_points: float
    fp32_top1: float
    int8_top1: float = float("nan")
    kept_in_float: list[str] = field(default_factory=list)
    attempts: list[dict] = field(default_factory=list)

    @property
    def drop_points(self) -> float:
        return (self.fp32_top1 - self.int8_top1) * 100.0

    @property
    def passed(self) -> bool:
        return self.drop_points <= self.tolerance_points

    def to_dict(self) -> dict:
        return {
            "verdict": "PASS" if self.passed else "FAIL",
            "tolerance_points": self.tolerance_points,
            "fp32_top1": self.fp32_top1,
            "int8_top1": self.int8_top1,
            "drop_points": round(self.drop_points, 4),
            "kept_in_float": self.kept_in_float,
            "attempts": self.attempts,
        }


def top1(model: Classifier, dataset: Dataset) -> float:
    return float((model.predict(dataset).argmax(1) == dataset.labels).mean())


def activation_sensitivity(fp32_path: Path, int8_path: Path, batches: list[np.ndarray]) -> list[tuple[str, float]]:
    """(activation tensor, SQNR dB) for every quantized activation, worst first."""
    input_name = onnx.load(str(fp32_path)).graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp:
        aug_f, aug_q = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        modify_model_output_intermediate_tensors(str(fp32_path), str(aug_f))
        modify_model_output_intermediate_tensors(str(int8_path), str(aug_q))
        reader = BatchReader(input_name, batches)
        float_acts = collect_activations(str(aug_f), reader)
        reader.rewind()
        qdq_acts = collect_activations(str(aug_q), reader)
    errors = compute_activation_error(create_activation_matching(qdq_acts, float_acts))
    ranked = [(name, float(err["qdq_err"])) for name, err in errors.items() if "qdq_err" in err]
    return sorted(ranked, key=lambda item: item[1])


def consumers(graph: onnx.GraphProto, tensor: str) -> list[str]:
    """Non-QDQ nodes that read ``tensor`` (through its Dequantize output) in a quantized graph."""
    dq_name = tensor + "_DequantizeLinear_Output"  # ONNX Runtime's naming (plus "_<n>" for dedicated pairs)
    dq_outputs = {
        o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output if o.split(dq_name)[0] == ""
    }
    dq_outputs.add(tensor)
    return [n.name for n in graph.node if n.op_type not in QDQ_OPS and dq_outputs & set(n.input)]


def check_keep_float(graph: onnx.GraphProto, names: tuple[str, ...]) -> None:
    """``--keep-float`` names nodes of model.onnx: an unknown one is an error naming it (with a did-you-mean)."""
    nodes = [n.name for n in graph.node if n.op_type not in QDQ_OPS]
    for name in names:
        if name not in nodes:
            hint = did_you_mean(name, nodes)
            raise ToolkitError(f"--keep-float {name!r}: no such node in model.onnx.{hint} Node names: "
                               "manifest.json's kept_in_float lists, or an ONNX viewer (Netron).")  # fmt: skip


def guarded_quantize(
    fp32_path: Path,
    out_path: Path,
    target: str,
    batches: list[np.ndarray],
    held_out: Dataset,
    fp32_top1: float,
    method: str = "minmax",
    tolerance_points: float = 0.5,
    max_float_layers: int = 16,
    keep_float: tuple[str, ...] = (),
) -> GuardReport:
    """Quantize, keeping the user's ``keep_float`` nodes in float; while top-1 drops more than
    ``tolerance_points``, also keep 1, 2, 4, ... worst layers in float."""
    check_keep_float(onnx.load(str(fp32_path)).graph, keep_float)
    report = GuardReport(tolerance_points, fp32_top1)
    quantize(fp32_path, out_path, target, batches, method, nodes_to_exclude=list(keep_float))
    report.int8_top1 = top1(OnnxClassifier(out_path), held_out)
    report.kept_in_float = list(keep_float)
    report.attempts.append({"kept_in_float": list(keep_float), "int8_top1": report.int8_top1})
    if report.passed:
        return report
    ranking = activation_sensitivity(fp32_path, out_path, batches[:2])
    fully_quantized = onnx.load(str(out_path)).graph
    k = 1
    while not report.passed and k <= min(max_float_layers, len(ranking)):
        excluded: list[str] = list(keep_float)
        for tensor, _ in ranking[:k]:
            excluded += [n for n in consumers(fully_quantized, tensor) if n not in excluded]
        quantize(fp32_path, out_path, target, batches, method, nodes_to_exclude=excluded)
        report.int8_top1 = top1(OnnxClassifier(out_path), held_out)
        report.kept_in_float = excluded
        report.attempts.append(
            {
                "kept_in_float": excluded,
                "worst_sqnr_db": [round(s, 2) for _, s in ranking[:k]],
                "int8_top1": report.int8_top1,
            }
        )
        k *= 2
    return report
