"""torch student -> LiteRT (TFLite) flatbuffer through litert-torch, FP32 or full-integer INT8.

Why litert-torch and not onnx2tf: it converts the PyTorch student directly (torch.export -> StableHLO -> TFLite),
so the same PT2E quantization flow as ExecuTorch's calibrates it, and it needs no TensorFlow. Installed size here:
~750 MB (jaxlib 349 MB, litert-converter 288 MB, ai-edge-litert 59 MB); onnx2tf 1.29 pins tensorflow==2.19.0
(not installed here, size not measured) and numpy==1.26.4, which this toolkit's numpy 2 stack cannot take.
litert-torch's own dependency list pins typing-extensions < 4.13 (through xdsl, a model-utils extra it does not
use for this), which would downgrade pydantic; scripts/install-litert.sh installs it with --no-deps and the
packages it imports.

INT8 is "full integer": PT2E with litert-torch's symmetric quantizer (weights per channel, activations per
tensor), calibrated on the same class-stratified images as the ONNX INT8 models; every op runs int8, and the
model's input and output are int8 with their scale and zero point in the file (what microcontrollers and NPUs
take; runtime/litert.py applies them). The contract, the format and the precision ride in the flatbuffer's
metadata table.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from runtime.atomic import write_bytes
from runtime.classifier import META_FORMAT, META_PREPROCESS
from runtime.errors import ToolkitError
from runtime.litert import META_PRECISION
from runtime.preprocess import PreprocessContract

FORMAT = "edge-distill-classifier/1"
INSTALL = "run scripts/install-litert.sh (litert-torch with --no-deps: its pins would downgrade pydantic)"


def unavailable_reason() -> str | None:
    """None when litert-torch can convert here, else how to install it. Looked up, not imported
    (export.packages.missing_package imports): importing litert-torch would bring jax into this process."""
    import importlib.util

    for name in ("litert_torch", "ai_edge_litert", "litert_converter", "jax"):
        if importlib.util.find_spec(name) is None:
            return f"the {name} package is not installed ({INSTALL})"
    return None


def export_litert(
    model: nn.Module, contract: PreprocessContract, path: str | os.PathLike[str],
    calibration: list[np.ndarray] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Write ``model`` as a .tflite at ``path`` (atomically); full-integer INT8 when ``calibration`` batches are
    given. Returns the op counts and the input/output types."""
    reason = unavailable_reason()
    if reason:
        raise ToolkitError(f"cannot export to LiteRT here: {reason}")
    path = Path(path)
    h, w = contract.input_size
    # litert-torch brings jax, whose threads make any later fork of this process unsafe (DataLoader workers,
    # NNCF): the conversion runs in a child interpreter, handed the traced program (torch.export's own format)
    # and the calibration images; only the flatbuffer comes back.
    with tempfile.TemporaryDirectory(prefix="litert-") as tmp:
        work = Path(tmp)
        try:
            with torch.no_grad():
                program = torch.export.export(model.eval(), (torch.zeros(1, 3, h, w),))
        except Exception as exc:  # noqa: BLE001 - torch.export raises many kinds
            raise ToolkitError(f"LiteRT export failed at torch.export: {type(exc).__name__}: {exc}") from exc
        torch.export.save(program, work / "model.pt2")
        args = [sys.executable, "-m", "export.litert_export", str(work / "model.pt2"), str(work / "model.tflite"),
                f"{h}x{w}"]  # fmt: skip
        if calibration is not None:
            np.save(work / "calibration.npy", np.concatenate(calibration).astype(np.float32))
            args.append(str(work / "calibration.npy"))
        res = subprocess.run(args, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
        if res.returncode != 0:
            said = [line for line in res.stderr.splitlines() if line.startswith(_FAILED)]
            tail = said[-1][len(_FAILED) :] if said else "\n".join(res.stderr.strip().splitlines()[-5:])
            raise ToolkitError(f"LiteRT export failed {tail}")
        raw = (work / "model.tflite").read_bytes()
    precision = "int8" if calibration is not None else "fp32"
    meta = {META_PREPROCESS: contract.to_json(), META_FORMAT: FORMAT, META_PRECISION: precision}
    buffer = with_metadata(raw, meta)
    write_bytes(path, buffer)
    return {"converter": "litert-torch", **describe(buffer)}


_FAILED = "toolkit-litert-failed: "


def _convert(program: Path, size: tuple[int, int], calibration: np.ndarray | None) -> bytes:
    """In the child interpreter: the traced program as a .tflite's bytes (FP32, or full-integer INT8 when
    calibration images are given)."""
    import litert_torch

    module = torch.export.load(program).module()
    example = (torch.zeros(1, 3, *size),)
    stage = "at conversion (litert-torch)"
    try:
        # The converter prints its MLIR passes and timings; the console says what matters.
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            if calibration is None:
                edge = litert_torch.convert(module, example)
            else:
                stage = "at INT8 quantization (PT2E, litert-torch's symmetric quantizer)"
                quantized, quantizer = _quantized(module, example, calibration)
                from litert_torch.quantize.quant_config import QuantConfig

                stage = "at conversion of the INT8 graph (litert-torch)"
                edge = litert_torch.convert(quantized, example, quant_config=QuantConfig(pt2e_quantizer=quantizer))
            return edge.model_content()
    except Exception as exc:  # noqa: BLE001 - export, quantization and conversion raise many kinds
        missing = re.search(r"Lowering not found: (\S+)", str(exc))
        if missing:  # an op of the student that LiteRT cannot express
            raise ToolkitError(f"{stage}: the student's op {missing.group(1)} has no LiteRT (TFLite) lowering in "
                               "litert-torch; export another format or replace the op") from None  # fmt: skip
        raise ToolkitError(f"{stage}: {type(exc).__name__}: {exc}") from None


def _quantized(model: nn.Module, example: tuple[torch.Tensor], calibration: np.ndarray) -> tuple[Any, Any]:
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    prepared = prepare_pt2e(torch.export.export(model, example).module(), quantizer)
    for image in calibration:  # the traced graph takes one image at a time, as the .tflite does
        prepared(torch.from_numpy(np.ascontiguousarray(image[None])))
    return convert_pt2e(prepared, fold_quantize=False), quantizer


def with_metadata(raw: bytes, entries: dict[str, str]) -> bytes:
    """``raw`` with ``entries`` added to its metadata table (one buffer each), re-serialised."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(raw, 0))
    model.metadata = [m for m in (model.metadata or []) if m.name.decode() not in entries]
    for name, text in entries.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(text.encode(), np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = name, len(model.buffers) - 1
        model.metadata.append(entry)
    builder = flatbuffers.Builder(len(raw) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def describe(raw: bytes) -> dict[str, Any]:
    """The model's op counts and its input/output element types."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=raw)
    ops = Counter(op["op_name"] for op in interpreter._get_ops_details())  # noqa: SLF001 - the one listing API
    io_types = {"input": np.dtype(interpreter.get_input_details()[0]["dtype"]).name,
                "output": np.dtype(interpreter.get_output_details()[0]["dtype"]).name}  # fmt: skip
    return {"ops": dict(sorted(ops.items())), "io": io_types}


def _main(argv: list[str]) -> int:
    """``python -m export.litert_export PROGRAM.pt2 OUT.tflite HxW [CALIBRATION.npy]`` (what export_litert runs)."""
    program, out, size, *rest = argv
    h, w = (int(v) for v in size.split("x"))
    try:
        raw = _convert(Path(program), (h, w), np.load(rest[0]) if rest else None)
    except ToolkitError as exc:
        print(f"{_FAILED}{exc}", file=sys.stderr)
        return 2
    Path(out).write_bytes(raw)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
