"""ONNX -> OpenVINO IR (FP32), and INT8 IR with NNCF post-training quantization, with the accuracy guard.

Past the tolerance the guard hands over to NNCF's accuracy-controlled quantization, which reverts the
most sensitive operations to float until the drop fits (NNCF's own per-layer ranking for OpenVINO).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from export.guard import GuardReport
from runtime.atomic import free_bytes, megabytes, write_errors
from runtime.classifier import OV_PREPROCESS, OpenVinoClassifier, contract_batches
from runtime.datasets import Dataset
from runtime.errors import ToolkitError
from runtime.fidelity import DEFAULT_CRITERIA, Fidelity, GuardCriteria
from runtime.preprocess import PreprocessContract


def _save_ir_atomically(model, xml_path: Path, compress_to_fp16: bool = False) -> Path:
    """Write model.xml/model.bin into a fresh folder, then swap it in for ``xml_path.parent``."""
    import openvino as ov

    folder = xml_path.parent
    with write_errors(folder):
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        try:
            ov.save_model(model, str(tmp / xml_path.name), compress_to_fp16=compress_to_fp16)
        except RuntimeError as exc:  # OpenVINO reports a failed write as a RuntimeError without an errno
            raise ToolkitError(
                f"{folder}: OpenVINO could not write the IR ({str(exc).strip().splitlines()[-1]}); "
                f"{megabytes(free_bytes(folder.parent))} free there. Free some space or choose another folder"
            ) from exc
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return xml_path


def onnx_to_openvino(onnx_path: Path, xml_path: Path, contract: PreprocessContract):
    """Convert, attach the contract as rt_info, save FP32 IR. Returns the in-memory ov.Model."""
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    model.set_rt_info(contract.to_json(), OV_PREPROCESS)
    _save_ir_atomically(model, xml_path)
    return model


def quantize_openvino(
    fp32_model,
    xml_path: Path,
    batches: list[np.ndarray],
    held_out: Dataset,
    fp32_logits: np.ndarray,
    criteria: GuardCriteria = DEFAULT_CRITERIA,
) -> GuardReport:
    """NNCF PTQ to INT8 IR; when it misses a guard criterion, NNCF accuracy control keeps sensitive ops in float.

    Accuracy control drives one metric: top-1 less the agreement and per-class shortfalls (GuardCriteria.shortfall
    without its top-1 term), so a model that keeps its accuracy but swaps answers is reworked too."""
    import nncf

    calibration = nncf.Dataset(batches)
    report = GuardReport(criteria, fp32_logits, held_out.labels)
    quantized = nncf.quantize(fp32_model, calibration, subset_size=len(batches))
    _save_ir_atomically(quantized, xml_path)
    report.record(OpenVinoClassifier(xml_path).predict(held_out), method="nncf.quantize")
    if report.passed:
        return report

    contract = PreprocessContract.from_json(fp32_model.get_rt_info(OV_PREPROCESS).astype(str))
    batch = 64
    starts = range(0, len(held_out), batch)
    items = [(b, held_out.labels[i : i + batch], fp32_logits[i : i + batch])
             for i, b in zip(starts, contract_batches(held_out, contract, batch))]  # fmt: skip
    lenient = GuardCriteria(tolerance_points=100.0, min_agreement_pct=criteria.min_agreement_pct,
                            max_class_drop_points=criteria.max_class_drop_points, max_kl=criteria.max_kl)  # fmt: skip

    def validate(compiled, subset) -> float:
        subset = list(subset)
        logits = np.concatenate([compiled(b)[0] for b, _, _ in subset])
        labels = np.concatenate([y for _, y, _ in subset])
        f = Fidelity.measure(np.concatenate([r for _, _, r in subset]), logits, labels)
        return f.int8_top1 - lenient.shortfall(f)

    controlled = nncf.quantize_with_accuracy_control(
        fp32_model,
        calibration,
        nncf.Dataset(items),
        validation_fn=validate,
        max_drop=criteria.tolerance_points / 100.0,
        drop_type=nncf.DropType.ABSOLUTE,
        subset_size=len(batches),
    )
    _save_ir_atomically(controlled, xml_path)
    report.kept_in_float = sorted(quantized_ops(quantized) - quantized_ops(controlled))
    report.record(OpenVinoClassifier(xml_path).predict(held_out), method="nncf.quantize_with_accuracy_control",
                  kept_in_float=report.kept_in_float)  # fmt: skip
    return report


def quantized_ops(model) -> set[str]:
    """Names of convolutions/matmuls whose activation input comes through a FakeQuantize (i.e. run in INT8)."""
    compute = {"Convolution", "GroupConvolution", "MatMul"}
    return {
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() in compute and op.input_value(0).get_node().get_type_name() == "FakeQuantize"
    }
