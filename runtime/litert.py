"""A LiteRT (TFLite) flatbuffer run by the ``ai-edge-litert`` interpreter: no torch, the same file an Android
app or a microcontroller build loads.

``toolkit export --format litert`` stores the preprocessing contract, the file format and the precision in the
flatbuffer's own metadata table (``Model.metadata``: a name and a buffer each), so a .tflite is self-describing
like our ONNX files. The graph takes one image per call (the converter traces a static batch of 1); a full-integer
INT8 model takes and returns int8 tensors with their scale and zero point in the file, which this session applies
so that ``run`` stays float32 in, logits out.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from runtime.classifier import META_FORMAT, META_PREPROCESS, Classifier, check_input_shape, load_contract
from runtime.errors import ToolkitError

META_PRECISION = "toolkit.precision"


def read_metadata(raw: bytes, path: Path) -> dict[str, bytes]:
    """Every entry of a .tflite's metadata table, by name (flatbuffer schema of ``ai_edge_litert``)."""
    from ai_edge_litert import schema_py_generated as schema

    try:
        if not schema.Model.ModelBufferHasIdentifier(raw, 0):
            raise ValueError("no TFL3 identifier")
        model = schema.Model.GetRootAs(raw, 0)
        out = {}
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            buffer = model.Buffers(entry.Buffer())
            if buffer.Offset() > 1:  # data stored after the flatbuffer (models over 2 GB)
                data = raw[buffer.Offset() : buffer.Offset() + buffer.Size()]
            else:
                data = buffer.DataAsNumpy().tobytes() if buffer.DataLength() else b""
            out[entry.Name().decode()] = data
        return out
    except Exception as exc:  # noqa: BLE001 - a damaged flatbuffer raises whatever the generated reader hits
        raise ToolkitError(f"{path}: not a LiteRT flatbuffer ({type(exc).__name__}: {exc})") from exc


def litert_unavailable_reason() -> str | None:
    """None when the LiteRT interpreter is installed here, else what to install."""
    import importlib.util

    if importlib.util.find_spec("ai_edge_litert") is None:
        return "ai-edge-litert is not installed (pip install 'edge-distill-toolkit[litert]')"
    return None


class LiteRTClassifier(Classifier):
    """A .tflite run by LiteRT's interpreter (its XNNPACK delegate on CPU), one image per invoke."""

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise ToolkitError(f"{self.path}: LiteRT model not found (`toolkit export --format litert` writes it)")
        reason = litert_unavailable_reason()
        if reason:
            raise ToolkitError(f"{self.path}: running it needs {reason}")
        from ai_edge_litert.interpreter import Interpreter

        raw = self.path.read_bytes()
        meta = read_metadata(raw, self.path)
        if META_PREPROCESS not in meta:
            raise ToolkitError(f"{self.path}: no {META_PREPROCESS} metadata; export it with `toolkit export "
                               "--format litert`")  # fmt: skip
        self.contract = load_contract(self.path, meta[META_PREPROCESS].decode())
        self.format = meta.get(META_FORMAT, b"").decode()
        self.precision = meta.get(META_PRECISION, b"fp32").decode()
        try:
            self.interpreter = Interpreter(model_content=raw, num_threads=threads or os.cpu_count() or 1)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ToolkitError(f"{self.path}: LiteRT cannot load it ({exc})") from exc
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ToolkitError(f"{self.path}: expected one input and one output, got {len(inputs)} and "
                               f"{len(outputs)}")  # fmt: skip
        self.input, self.output = inputs[0], outputs[0]
        check_input_shape(self.path, [None, *(int(d) for d in self.input["shape"][1:])], self.contract)
        if int(self.input["shape"][0]) != 1:
            raise ToolkitError(f"{self.path}: input batch {int(self.input['shape'][0])}, expected 1")

    def io(self) -> dict[str, str]:
        """The input and output element types (float32, or int8 for a full-integer model)."""
        return {"input": np.dtype(self.input["dtype"]).name, "output": np.dtype(self.output["dtype"]).name}

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        rows = []
        for image in batch:
            self.interpreter.set_tensor(self.input["index"], _quantize(image[None], self.input))
            self.interpreter.invoke()
            rows.append(_dequantize(self.interpreter.get_tensor(self.output["index"]), self.output)[0])
        return np.stack(rows).astype(np.float32)


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return np.ascontiguousarray(x, np.float32)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if np.dtype(detail["dtype"]) == np.float32:
        return y
    scale, zero_point = detail["quantization"]
    return (y.astype(np.float32) - zero_point) * scale
