"""ONNX -> OpenVINO IR (FP32), and INT8 IR with NNCF post-training quantization, with the accuracy guard.

Past the tolerance the guard hands over to NNCF's accuracy-controlled quantization, which reverts the
most sensitive operations to float until the drop fits (NNCF's own per-layer ranking for OpenVINO).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from export.guard import GuardReport, top1
from runtime.atomic import free_bytes, megabytes, write_errors
from runtime.classifier import OV_PREPROCESS, OpenVinoClassifier, contract_batches
from runtime.datasets import Dataset
from runtime.errors import ToolkitError
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
    fp32_top1: float,
    tolerance_points: float = 0.5,
) -> GuardReport:
    """NNCF PTQ to INT8 IR; on a drop past tolerance, NNCF accuracy control keeps sensitive ops in float."""
    import nncf

    calibration = nncf.Dataset(batches)
    report = GuardReport(tolerance_points, fp32_top1)
    quantized = nncf.quantize(fp32_model, calibration, subset_size=len(batches))
    _save_ir_atomically(quantized, xml_path)
    report.int8_top1 = top1(OpenVinoClassifier(xml_path), held_out)
    report.attempts.append({"method": "nncf.quantize", "int8_top1": report.int8_top1})
    if report.passed:
        return report

    contract = PreprocessContract.from_json(fp32_model.get_rt_info(OV_PREPROCESS).astype(str))
    batch = 64
    labels = [held_out.labels[i : i + batch] for i in range(0, len(held_out), batch)]
    held_out_batches = nncf.Dataset(list(zip(contract_batches(held_out, contract, batch), labels)))

    def validate(compiled, items) -> float:
        correct = total = 0
        for batch, labels in items:
            correct += int((compiled(batch)[0].argmax(1) == labels).sum())
            total += len(labels)
        return correct / max(total, 1)

    controlled = nncf.quantize_with_accuracy_control(
        fp32_model,
        calibration,
        held_out_batches,
        validation_fn=validate,
        max_drop=max(tolerance_points, 0.0) / 100.0,
        drop_type=nncf.DropType.ABSOLUTE,
        subset_size=len(batches),
    )
    _save_ir_atomically(controlled, xml_path)
    report.int8_top1 = top1(OpenVinoClassifier(xml_path), held_out)
    report.kept_in_float = sorted(quantized_ops(quantized) - quantized_ops(controlled))
    report.attempts.append({"method": "nncf.quantize_with_accuracy_control", "int8_top1": report.int8_top1})
    return report


def quantized_ops(model) -> set[str]:
    """Names of convolutions/matmuls whose activation input comes through a FakeQuantize (i.e. run in INT8)."""
    compute = {"Convolution", "GroupConvolution", "MatMul"}
    return {
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() in compute and op.input_value(0).get_node().get_type_name() == "FakeQuantize"
    }
