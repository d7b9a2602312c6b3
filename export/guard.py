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
    create_activation_matching,
    modify_model_output_intermediate_tensors,
)

from export.calibration import BatchReader
from export.quantize import quantize
from runtime.classifier import OnnxClassifier
from runtime.datasets import Dataset
from runtime.errors import ToolkitError, did_you_mean
from runtime.fidelity import DEFAULT_CRITERIA, Fidelity, GuardCriteria

QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
SENSITIVITY_IMAGES = 64  # calibration images the per-layer SQNR is measured on
SENSITIVITY_CHUNK = 16  # images per pass of the model that outputs every intermediate tensor


@dataclass
class GuardReport:
    """The guard's decision for one INT8 artifact: every try measured against the FP32 logits on the held-out
    images, the last one deciding."""

    criteria: GuardCriteria
    reference: np.ndarray  # FP32 logits on the held-out images
    labels: np.ndarray
    fidelity: Fidelity | None = None
    kept_in_float: list[str] = field(default_factory=list)
    attempts: list[dict] = field(default_factory=list)
    sensitivity: list[dict] = field(default_factory=list)  # sensitivity_table() of the first (all-INT8) try

    def record(self, logits: np.ndarray, **attempt) -> Fidelity:
        """Measure a try's held-out logits; it becomes the decision unless a later try replaces it."""
        self.fidelity = Fidelity.measure(self.reference, logits, self.labels)
        f = self.fidelity
        self.attempts.append({**attempt, **f.summary(), "failures": self.failures})
        return f

    @property
    def fp32_top1(self) -> float:
        return float((self.reference.argmax(1) == self.labels).mean())

    @property
    def int8_top1(self) -> float:
        return self.fidelity.int8_top1 if self.fidelity else float("nan")

    @property
    def drop_points(self) -> float:
        return self.fidelity.drop_points if self.fidelity else float("nan")

    @property
    def failures(self) -> list[str]:
        return self.criteria.failures(self.fidelity) if self.fidelity else ["not measured"]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        measured = self.fidelity.summary() if self.fidelity else {}
        return {
            "verdict": "PASS" if self.passed else "FAIL",
            **self.criteria.to_dict(),
            **measured,
            "fp32_top1": self.fp32_top1,
            "failures": self.failures,
            "kept_in_float": self.kept_in_float,
            "attempts": self.attempts,
        }

    def describe(self) -> str:
        """One line for the console: verdict, what was measured, on how many images."""
        f = self.fidelity
        if f is None:
            return "FAIL: not measured"
        worst = f.worst_class
        line = (f"{'PASS' if self.passed else 'FAIL'} top-1 {f.int8_top1:.4f} vs FP32 {f.fp32_top1:.4f} (drop "
                f"{f.drop_points:.2f} points), agreement {f.agreement:.2%}, worst class {worst} "
                f"{-f.class_drop_points(worst) if worst is not None else 0.0:+.2f} points, KL {f.kl:.5f} on {f.n} "
                "held-out images")  # fmt: skip
        return line + (f"; {'; '.join(self.failures)}" if self.failures else "")


def activation_sensitivity(
    int8_path: Path, batches: list[np.ndarray], chunk: int = SENSITIVITY_CHUNK
) -> list[tuple[str, float]]:
    """(activation tensor, SQNR dB) for every quantized activation of a Q/DQ model, worst first.

    SQNR = 10 log10(sum x^2 / sum (x - DQ(Q(x)))^2) over all images, with x the activation the Quantize reads
    (ONNX Runtime's qdq_loss_debug "qdq_err"); computed ``chunk`` images at a time, so memory holds one chunk's
    activations (every intermediate tensor of a 224 px ResNet-18 is ~40 MB per image)."""
    input_name = onnx.load(str(int8_path)).graph.input[0].name
    signal: dict[str, float] = {}
    noise: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        augmented = Path(tmp) / "q.onnx"
        modify_model_output_intermediate_tensors(str(int8_path), str(augmented))
        images = np.concatenate(batches) if batches else np.zeros((0,), np.float32)
        for i in range(0, len(images), chunk):
            acts = collect_activations(str(augmented), BatchReader(input_name, [images[i : i + chunk]]))
            for name, pair in create_activation_matching(acts).items():
                if pair.get("pre_qdq") is None or pair.get("post_qdq") is None:
                    continue
                # float64: ModelOpt's FP16 activations would overflow a float16 sum of squares
                x = np.concatenate(pair["pre_qdq"]).ravel().astype(np.float64)
                y = np.concatenate(pair["post_qdq"]).ravel().astype(np.float64)
                signal[name] = signal.get(name, 0.0) + float(np.dot(x, x))
                noise[name] = noise.get(name, 0.0) + float(np.dot(x - y, x - y))
    eps = float(np.finfo(np.float32).eps) ** 2
    ranked = [(n, 10.0 * float(np.log10(max(signal[n], eps) / max(noise[n], eps)))) for n in signal]
    return sorted(ranked, key=lambda item: item[1])


def sensitivity_table(int8_path: Path, batches: list[np.ndarray]) -> list[dict]:
    """Every quantized activation, worst SQNR first, with the nodes that read it (what ``--keep-float`` names),
    on the first SENSITIVITY_IMAGES calibration images."""
    graph = onnx.load(str(int8_path)).graph
    ranking = activation_sensitivity(int8_path, _first_images(batches, SENSITIVITY_IMAGES))
    return [{"tensor": t, "sqnr_db": round(db, 2), "consumers": consumers(graph, t)} for t, db in ranking]


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
    fp32_logits: np.ndarray,
    method: str = "minmax",
    criteria: GuardCriteria = DEFAULT_CRITERIA,
    max_float_layers: int = 16,
    keep_float: tuple[str, ...] = (),
    producer: str = "onnxruntime",
) -> GuardReport:
    """Quantize, keeping the user's ``keep_float`` nodes in float; while the INT8 model misses a criterion against
    ``fp32_logits`` on ``held_out``, also keep 1, 2, 4, ... worst layers in float."""
    check_keep_float(onnx.load(str(fp32_path)).graph, keep_float)
    report = GuardReport(criteria, fp32_logits, held_out.labels)
    quantize(fp32_path, out_path, target, batches, method, nodes_to_exclude=list(keep_float), producer=producer)
    report.kept_in_float = list(keep_float)
    report.record(OnnxClassifier(out_path).predict(held_out), kept_in_float=list(keep_float))
    report.sensitivity = sensitivity_table(out_path, batches)
    if report.passed:
        return report
    ranking = [(row["tensor"], row["sqnr_db"]) for row in report.sensitivity]
    fully_quantized = onnx.load(str(out_path)).graph
    k = 1
    while not report.passed and k <= min(max_float_layers, len(ranking)):
        excluded: list[str] = list(keep_float)
        for tensor, _ in ranking[:k]:
            excluded += [n for n in consumers(fully_quantized, tensor) if n not in excluded]
        quantize(fp32_path, out_path, target, batches, method, nodes_to_exclude=excluded, producer=producer)
        report.kept_in_float = excluded
        report.record(OnnxClassifier(out_path).predict(held_out), kept_in_float=excluded,
                      worst_sqnr_db=[round(s, 2) for _, s in ranking[:k]])  # fmt: skip
        k *= 2
    return report


def calibration_spread(
    fp32_path: Path,
    target: str,
    shipped: Fidelity,
    more_samples: list[list[np.ndarray]],
    held_out: Dataset,
    fp32_logits: np.ndarray,
    method: str = "minmax",
    keep_float: list[str] | None = None,
    producer: str = "onnxruntime",
) -> dict:
    """How much INT8 accuracy depends on which images calibrate: the shipped model's held-out measurement, and
    the model quantized again from each of ``more_samples`` (same layers in float), measured the same way;
    mean +- std of top-1 over all of them."""
    rows = [shipped]
    with tempfile.TemporaryDirectory() as tmp:
        for i, batches in enumerate(more_samples):
            path = quantize(fp32_path, Path(tmp) / f"{i}.onnx", target, batches, method,
                            nodes_to_exclude=list(keep_float or []), producer=producer)  # fmt: skip
            rows.append(Fidelity.measure(fp32_logits, OnnxClassifier(path).predict(held_out), held_out.labels))
    top1 = np.array([f.int8_top1 for f in rows])
    return {"samples": len(rows), "int8_top1": top1.tolist(), "agreement": [f.agreement for f in rows],
            "mean_top1": float(top1.mean()), "std_top1": float(top1.std(ddof=1)) if len(rows) > 1 else 0.0,
            "fp32_top1": shipped.fp32_top1}  # fmt: skip


def sensitivity_entry(table: list[dict], batches: list[np.ndarray]) -> dict:
    """The manifest's record of a sensitivity_table()."""
    return {"metric": "SQNR dB of each quantized activation (higher is better), worst first",
            "images": min(SENSITIVITY_IMAGES, sum(len(b) for b in batches)), "source": "calibration images",
            "tensors": table}  # fmt: skip


def _first_images(batches: list[np.ndarray], n: int) -> list[np.ndarray]:
    """The first ``n`` images of the calibration batches, as batches."""
    out, left = [], n
    for b in batches:
        if left <= 0:
            break
        out.append(b[:left])
        left -= len(out[-1])
    return out
