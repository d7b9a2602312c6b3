"""torch student -> ExecuTorch program (.pte) lowered to the XNNPACK delegate, FP32 or INT8.

INT8 is PyTorch's PT2E flow with XNNPACK's quantizer (symmetric int8, weights per channel, activations per
tensor), calibrated on the same class-stratified images as the ONNX INT8 models. The preprocessing contract,
the file format and the precision ride inside the program as constant methods (``toolkit_preprocess``,
``toolkit_format``, ``toolkit_precision``), so a .pte is self-describing like our ONNX files. Ops XNNPACK does
not take stay on ExecuTorch's portable kernels: they are listed, not refused (the program still runs, slower).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from export.packages import missing_package
from runtime.atomic import write_bytes
from runtime.classifier import EXECUTORCH_FORMAT_METHOD, EXECUTORCH_PRECISION_METHOD, EXECUTORCH_PREPROCESS_METHOD
from runtime.errors import ToolkitError
from runtime.preprocess import PreprocessContract

FORMAT = "edge-distill-classifier/1"
# The batch axis's upper bound given to torch.export. ExecuTorch's memory plan came out smaller (15 for 64 with
# both of its shape-evaluation passes, torch 2.14 / executorch 1.5): the session runs bigger batches in chunks.
MAX_BATCH = 64


def unavailable_reason() -> str | None:
    """None when ExecuTorch can export here, else what to install."""
    return missing_package(("executorch",), "mobile")


def export_executorch(
    model: nn.Module, contract: PreprocessContract, path: str | os.PathLike[str],
    calibration: list[np.ndarray] | None = None, max_batch: int = MAX_BATCH,
) -> dict[str, Any]:  # fmt: skip
    """Write ``model`` as an XNNPACK-delegated ExecuTorch program at ``path`` (atomically); INT8 when
    ``calibration`` batches are given. Returns what was delegated and what was not."""
    reason = unavailable_reason()
    if reason:
        raise ToolkitError(f"cannot export to ExecuTorch here: {reason}")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    path = Path(path)
    h, w = contract.input_size
    model = model.eval()
    example = (torch.zeros(2, 3, h, w),)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=max_batch)},)
    stage = "torch.export"
    try:
        with torch.no_grad():
            program = torch.export.export(model, example, dynamic_shapes=dynamic)
            if calibration is not None:
                stage = "INT8 quantization (PT2E, XNNPACK quantizer)"
                program = torch.export.export(_quantized(program.module(), calibration), example,
                                              dynamic_shapes=dynamic)  # fmt: skip
            stage = "lowering to XNNPACK"
            constants = {EXECUTORCH_PREPROCESS_METHOD: contract.to_json(), EXECUTORCH_FORMAT_METHOD: FORMAT,
                         EXECUTORCH_PRECISION_METHOD: "int8" if calibration is not None else "fp32"}  # fmt: skip
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                               constant_methods=constants)  # fmt: skip
            lowered = edge.exported_program()
            buffer = edge.to_executorch().buffer
    except Exception as exc:  # noqa: BLE001 - export and lowering raise many kinds
        raise ToolkitError(f"ExecuTorch export failed at {stage}: {type(exc).__name__}: {exc}") from exc
    write_bytes(path, buffer)
    return {"delegate": "XnnpackBackend", **delegation(lowered.graph_module)}


def _quantized(module: torch.fx.GraphModule, calibration: list[np.ndarray]) -> torch.fx.GraphModule:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(module, quantizer)
    for batch in calibration:
        prepared(torch.from_numpy(batch))
    return convert_pt2e(prepared)


def delegation(graph_module: torch.fx.GraphModule) -> dict[str, Any]:
    """How many XNNPACK delegate calls the lowered graph makes, and every op left outside them (with counts)."""
    calls, outside = 0, Counter()
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if name == "executorch_call_delegate":
            calls += 1
        elif name != "getitem":
            outside[name] += 1
    return {"delegate_calls": calls, "not_delegated": dict(sorted(outside.items()))}
