"""NCNN INT8 without ncnn's C++ tools: the calibration table (what ncnn2table writes) and the INT8 model (what
ncnn2int8 writes), computed in Python on the FP32 model PNNX made.

For every Convolution, ConvolutionDepthWise and InnerProduct layer: weights quantized symmetric per output
channel (per group for depthwise), scale = 127 / max|w|, stored as int8 data (ModelBin tag 0x000D4B38), then the
float bias, the weight scales and the input blob's scale = 127 / max|x| over the calibration images (minmax; ncnn2table
defaults to KL), with ``8=1`` (int8_scale_term) added to the layer's params, the layout ncnn's Convolution /
ConvolutionDepthWise / InnerProduct ``load_model`` reads (ncnn's src/layer/*.cpp). Each INT8 layer quantizes its
input and dequantizes its output (no requantize fusion). Other layers must carry no weights: one that does is
named and refused.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from export.ncnn_export import layer_params, param_layers
from runtime.errors import ToolkitError

QUANTIZED = ("Convolution", "ConvolutionDepthWise", "InnerProduct")
# Layer types that read nothing from model.bin (what PNNX writes for CNN classifiers, and their usual neighbours).
WEIGHTLESS = frozenset({
    "Input", "Split", "BinaryOp", "ReLU", "Clip", "Pooling", "Sigmoid", "HardSigmoid", "HardSwish", "Swish",
    "Flatten", "Reshape", "Concat", "Softmax", "Eltwise", "Noop", "Permute", "Dropout", "Crop", "Interp", "Mish",
    "GELU", "TanH", "ELU", "Slice", "Squeeze", "ExpandDims", "Reduction",
})  # fmt: skip
INT8_TAG = 0x000D4B38
FP32_TAG = 0x0002C056


def quantized_inputs(param_text: str) -> dict[str, str]:
    """Layer name -> its input blob, for every layer that becomes INT8 (what calibration must measure)."""
    out = {}
    for fields in param_layers(param_text):
        kind, name, ins, _, _ = layer_params(fields)
        if kind in QUANTIZED:
            out[name] = ins[0]
    return out


def quantize_model(param_text: str, weights: bytes, input_absmax: dict[str, float]) -> tuple[str, bytes, int]:
    """The INT8 param text and model.bin for ``input_absmax`` (input blob -> max |x| over the calibration images);
    returns them and how many layers became INT8."""
    lines = param_text.splitlines()
    head, body = lines[:2], [line for line in lines[2:] if line.strip()]
    out_lines, out_bin, pos, count = list(head), bytearray(), 0, 0
    for line in body:
        kind, name, ins, _, p = layer_params(line.split())
        if kind in WEIGHTLESS:
            out_lines.append(line)
            continue
        if kind not in QUANTIZED:
            raise ToolkitError(f"NCNN INT8: layer {name} ({kind}) carries weights the toolkit cannot re-pack; "
                               "export NCNN without --int8")  # fmt: skip
        if int(p.get("8", 0)) or int(p.get("19", 0)):
            raise ToolkitError(f"NCNN INT8: layer {name} is already INT8 or takes dynamic weights")
        num_output = int(p.get("0", 0))
        size = int(p.get("2" if kind == "InnerProduct" else "6", 0))
        bias = int(p.get("1" if kind == "InnerProduct" else "5", 0))
        groups = int(p.get("7", 1)) if kind == "ConvolutionDepthWise" else num_output
        weight, pos = _read_fp32(weights, pos, size, name)
        bias_data = weights[pos : pos + 4 * num_output] if bias else b""
        pos += len(bias_data)
        rows = weight.reshape(groups, -1)
        absmax = np.abs(rows).max(axis=1)
        scales = np.where(absmax > 0, 127.0 / np.maximum(absmax, 1e-30), 1.0).astype(np.float32)
        q = _round_away(rows * scales[:, None]).clip(-127, 127).astype(np.int8).reshape(-1)
        blob = ins[0]
        if blob not in input_absmax:
            raise ToolkitError(f"NCNN INT8: no calibration range for {blob}, the input of layer {name}")
        x_max = float(input_absmax[blob])
        x_scale = np.float32(127.0 / x_max if x_max > 0 else 1.0)
        out_bin += struct.pack("<I", INT8_TAG) + q.tobytes() + b"\0" * (-len(q) % 4)
        out_bin += bias_data + scales.tobytes() + np.array([x_scale], np.float32).tobytes()
        out_lines.append(f"{line} 8=1")
        count += 1
    if pos != len(weights):
        raise ToolkitError(f"NCNN INT8: model.bin has {len(weights) - pos} bytes no layer reads; re-export NCNN")
    return "\n".join(out_lines) + "\n", bytes(out_bin), count


def calibrate(param: Path, images: np.ndarray, blobs: list[str]) -> dict[str, float]:
    """max |x| of each blob over ``images`` (N, 3, H, W), run through the FP32 model by ncnn itself."""
    import ncnn

    net = ncnn.Net()
    for flag in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(net.opt, flag, False)
    net.opt.lightmode = False  # keep every intermediate blob: several are read from one extractor
    if net.load_param(str(param)) != 0 or net.load_model(str(param.with_suffix(".bin"))) != 0:
        raise ToolkitError(f"{param}: ncnn cannot load the FP32 model to calibrate it")
    first = next(fields for fields in param_layers(param.read_text()) if fields[0] == "Input")
    input_blob = layer_params(first)[3][0]
    absmax = dict.fromkeys(blobs, 0.0)
    for image in images:
        ex = net.create_extractor()
        ex.input(input_blob, ncnn.Mat(np.ascontiguousarray(image)).clone())
        for blob in blobs:
            status, mat = ex.extract(blob)
            if status != 0:
                raise ToolkitError(f"{param}: ncnn could not compute blob {blob} while calibrating")
            absmax[blob] = max(absmax[blob], float(np.abs(np.array(mat)).max()))
    return absmax


def _read_fp32(data: bytes, pos: int, count: int, name: str) -> tuple[np.ndarray, int]:
    """A ModelBin type-0 array of ``count`` float32 (a zero flag or the fp32 tag, then the raw values)."""
    (tag,) = struct.unpack_from("<I", data, pos)
    if tag != 0 and tag != FP32_TAG:
        raise ToolkitError(f"NCNN INT8: layer {name}'s weights are not float32 (tag {tag:#x}); export FP32 weights")
    start = pos + 4
    end = start + 4 * count
    if end > len(data):
        raise ToolkitError(f"NCNN INT8: model.bin ends inside layer {name}'s weights")
    return np.frombuffer(data[start:end], np.float32), end


def _round_away(x: np.ndarray) -> np.ndarray:
    """C's round(): halves away from zero (ncnn's float2int8), not numpy's halves to even."""
    return np.trunc(x + np.copysign(0.5, x))
