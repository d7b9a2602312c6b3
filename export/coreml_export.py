"""torch student -> Core ML ML Program (.mlpackage), FP16, with the contract in its user-defined metadata.

coremltools converts on any OS; predicting needs macOS (Core ML itself). So here the check after conversion is
of the spec: input (N in 1..64, 3, H, W) float32, output (N, classes), the contract read back from the
metadata. On macOS the session predicts and the export is parity-checked like every other format.

INT8 is W8A8 with coremltools' own tools: activation ranges calibrated by ``linear_quantize_activations`` on the
same class-stratified images (it runs Core ML predictions, so macOS only: refused elsewhere before anything is
written), then weights symmetric int8 per channel (``linear_quantize_weights``); the guard judges it on macOS's
predictions like any INT8 artifact.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from export.packages import missing_package
from runtime.classifier import COREML_META_FORMAT, COREML_META_PREPROCESS, coreml_spec_problems
from runtime.errors import ToolkitError
from runtime.preprocess import PreprocessContract

FORMAT = "edge-distill-classifier/1"
MAX_BATCH = 64


def unavailable_reason() -> str | None:
    """None when coremltools can convert here, else what to install."""
    return missing_package(("coremltools",), "mobile")


def int8_unavailable_reason() -> str | None:
    """None on macOS; elsewhere why Core ML INT8 is not written: its activation calibration runs Core ML."""
    if platform.system() == "Darwin":
        return None
    return ("Core ML INT8 (weights and activations) calibrates by running Core ML predictions (macOS only); "
            "export FP16 with --format coreml and without --int8, or run the INT8 export on a Mac")  # fmt: skip


def w8a8_configs() -> tuple[Any, Any]:
    """(activation config, weight config): symmetric int8 activations (per tensor, as Core ML takes them) and
    symmetric int8 weights per output channel, for every op coremltools quantizes."""
    import coremltools.optimize as cto

    activations = cto.coreml.OptimizationConfig(
        global_config=cto.coreml.experimental.OpActivationLinearQuantizerConfig(mode="linear_symmetric")
    )
    weights = cto.coreml.OptimizationConfig(
        global_config=cto.coreml.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=0
        )  # fmt: skip
    )
    return activations, weights


def sample_data(input_name: str, calibration: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The calibration images as coremltools' sample data: one single-image input dict each."""
    return [{input_name: np.ascontiguousarray(image[None], np.float32)} for batch in calibration for image in batch]


def export_coreml(
    model: nn.Module, contract: PreprocessContract, path: str | os.PathLike[str],
    calibration: list[np.ndarray] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Write ``model`` as an FP16 ML Program at ``path`` (a .mlpackage folder, replaced whole) and check its spec;
    W8A8 INT8 when ``calibration`` batches are given (macOS: the calibration runs Core ML)."""
    if calibration is not None and int8_unavailable_reason():
        raise ToolkitError(f"--int8 --format coreml: {int8_unavailable_reason()}")
    reason = unavailable_reason()
    if reason:
        raise ToolkitError(f"cannot export to Core ML here: {reason}")
    path = Path(path)
    h, w = contract.input_size
    dynamic = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)
    quiet = io.StringIO()  # coremltools prints progress bars and, off macOS, that it cannot load its runtime
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet), torch.no_grad():
            import coremltools as ct

            program = torch.export.export(model.eval(), (torch.zeros(2, 3, h, w),), dynamic_shapes=dynamic)
            mlmodel = ct.convert(program.run_decompositions({}), convert_to="mlprogram",
                                 compute_precision=ct.precision.FLOAT16,
                                 minimum_deployment_target=ct.target.iOS17)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - export and conversion raise many kinds
        raise ToolkitError(f"Core ML conversion failed: {type(exc).__name__}: {exc}") from exc
    info: dict[str, Any] = {"compute_precision": "fp16"}
    if calibration is not None:
        import coremltools.optimize as cto

        activations, weights = w8a8_configs()
        name = mlmodel.get_spec().description.input[0].name
        try:
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                mlmodel = cto.coreml.experimental.linear_quantize_activations(
                    mlmodel, activations, sample_data(name, calibration)
                )
                mlmodel = cto.coreml.linear_quantize_weights(mlmodel, weights)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - coremltools' calibration raises many kinds
            raise ToolkitError(f"Core ML INT8 calibration failed: {type(exc).__name__}: {exc}") from exc
        info = {"compute_precision": "int8 weights and activations (W8A8)",
                "calibration": f"linear_quantize_activations on {sum(len(b) for b in calibration)} images"}  # fmt: skip
    mlmodel.user_defined_metadata[COREML_META_PREPROCESS] = contract.to_json()
    mlmodel.user_defined_metadata[COREML_META_FORMAT] = FORMAT
    mlmodel.short_description = f"{len(contract.class_names)}-class image classifier (edge-distill-toolkit)"
    problems = coreml_spec_problems(mlmodel.get_spec(), contract)
    if problems:
        raise ToolkitError(f"Core ML conversion wrote an unexpected model: {'; '.join(problems)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as work:
        staged = Path(work) / path.name
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            mlmodel.save(str(staged))
        if path.exists():
            shutil.rmtree(path)
        os.replace(staged, path)
    spec = mlmodel.get_spec()
    return {"input": spec.description.input[0].name, "output": spec.description.output[0].name,
            "spec_check": "passed", "max_batch": MAX_BATCH, **info}  # fmt: skip
