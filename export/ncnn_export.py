"""torch student -> NCNN model (model.param + model.bin) through PNNX, FP32 weights, with a contract sidecar.

NCNN's param file holds no metadata, so the preprocessing contract, the format and the blob names ride in
``model.json`` beside it (as for TensorRT engines). NCNN runs one image at a time (its Mat has no batch axis):
the session loops over a batch. INT8 (``calibration`` given) is written by export/ncnn_int8.py, in Python, since
the pip packages do not ship ncnn's ncnn2table / ncnn2int8 tools.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from export.packages import missing_package
from runtime.atomic import write_bytes, write_json
from runtime.classifier import NCNN_SIDECAR
from runtime.errors import ToolkitError
from runtime.preprocess import PreprocessContract

FORMAT = "edge-distill-classifier/1"


def unavailable_reason() -> str | None:
    """None when PNNX and ncnn are installed, else what to install."""
    return missing_package(("pnnx", "ncnn"), "mobile")


def export_ncnn(
    model: nn.Module, contract: PreprocessContract, param_path: str | os.PathLike[str],
    calibration: list[np.ndarray] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Write ``param_path`` (NCNN graph), its .bin (FP32 weights, or INT8 for the quantized layers when
    ``calibration`` batches are given) and the contract sidecar; returns what was written."""
    reason = unavailable_reason()
    if reason:
        raise ToolkitError(f"cannot export to NCNN here: {reason}")
    import pnnx

    param_path = Path(param_path)
    h, w = contract.input_size
    model = model.eval()
    with tempfile.TemporaryDirectory() as work:
        traced = Path(work) / "student.pt"
        param, weights = Path(work) / "student.ncnn.param", Path(work) / "student.ncnn.bin"
        log = Path(work) / "pnnx.log"
        try:
            with torch.no_grad(), _stderr_to(log), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace's deprecation: PNNX traces
                pnnx.export(model, str(traced), (torch.zeros(1, 3, h, w),), ncnnparam=str(param),
                            ncnnbin=str(weights), fp16=False)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - tracing and conversion raise many kinds
            raise ToolkitError(f"NCNN export (PNNX) failed: {type(exc).__name__}: {exc}") from exc
        if not param.is_file() or not weights.is_file():
            tail = log.read_text(errors="replace").strip().splitlines()[-5:] if log.is_file() else []
            raise ToolkitError("NCNN export (PNNX) wrote no model: the student has an op PNNX cannot convert; "
                               "PNNX said: " + " | ".join(tail))  # fmt: skip
        inputs, outputs = blob_names(param.read_text())
        if len(inputs) != 1 or len(outputs) != 1:
            raise ToolkitError(f"NCNN export: expected one input and one output blob, got {inputs} -> {outputs}")
        info: dict[str, Any] = {}
        param_text, weight_bytes = param.read_text(), weights.read_bytes()
        if calibration is not None:
            from export.ncnn_int8 import calibrate, quantize_model, quantized_inputs

            images = np.concatenate(calibration)
            ranges = calibrate(param, images, sorted(set(quantized_inputs(param_text).values())))
            param_text, weight_bytes, count = quantize_model(param_text, weight_bytes, ranges)
            info = {"int8_layers": count, "calibration": f"minmax input ranges over {len(images)} images"}
        param_path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(param_path.with_suffix(".bin"), weight_bytes)
        write_json(param_path.with_name(NCNN_SIDECAR), {
            "preprocess": contract.to_dict(), "format": FORMAT, "input": inputs[0], "output": outputs[0],
            "precision": "int8" if calibration is not None else "fp32"})  # fmt: skip
        write_bytes(param_path, param_text.encode())  # last: a half-written export has no .param to load
    return {"input": inputs[0], "output": outputs[0], "layers": len(param_layers(param_text)), **info}


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Send this process's stderr (file descriptor 2, which the pnnx binary inherits) to ``path`` meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "wb") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def param_layers(text: str) -> list[list[str]]:
    """The layer lines of an NCNN param file (after the magic number and the counts line), split in fields."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    return lines[2:]


def layer_params(fields: list[str]) -> tuple[str, str, list[str], list[str], dict[str, str]]:
    """(type, name, input blobs, output blobs, params by key) of one param-file layer line."""
    kind, name, n_in, n_out = fields[0], fields[1], int(fields[2]), int(fields[3])
    ins, outs = fields[4 : 4 + n_in], fields[4 + n_in : 4 + n_in + n_out]
    params = dict(f.split("=", 1) for f in fields[4 + n_in + n_out :])
    return kind, name, ins, outs, params


def blob_names(text: str) -> tuple[list[str], list[str]]:
    """The graph's input blobs (Input layers) and its output blobs (produced, never consumed)."""
    produced, consumed, inputs = [], set(), []
    for fields in param_layers(text):
        kind, _, ins, outs, _ = layer_params(fields)
        consumed.update(ins)
        produced += outs
        if kind == "Input":
            inputs += outs
    return inputs, [b for b in produced if b not in consumed and b not in inputs]
