"""torch student -> ONNX: dynamic batch axis, contract and class names in the metadata, checked."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import torch
from torch import nn

from runtime.atomic import atomic_path, write_failure
from runtime.classifier import META_FORMAT, META_PREPROCESS
from runtime.errors import ToolkitError
from runtime.preprocess import PreprocessContract

# ONNX Runtime's static quantizer and TensorRT 10 both take opset 18; per-channel QDQ needs >= 13.
OPSET = 18
# What `--opset` may ask for: torch's ONNX exporter writes 18 and up (asked for less it silently writes 18), and
# ONNX Runtime 1.32 quantizes and runs each of these (checked for ResNet-18 and MobileNetV2, both INT8 forms).
SUPPORTED_OPSETS = tuple(range(18, 24))


def check_opset(opset: int) -> None:
    if opset not in SUPPORTED_OPSETS:
        raise ToolkitError(
            f"--opset {opset}: not supported; use {SUPPORTED_OPSETS[0]}-{SUPPORTED_OPSETS[-1]} "
            f"(default {OPSET}; TensorRT's ONNX parser may want a lower one than ONNX Runtime)"
        )


FORMAT = "edge-distill-classifier/1"


def export_onnx(
    model: nn.Module, contract: PreprocessContract, path: str | os.PathLike[str], opset: int = OPSET
) -> Path:
    """Export ``model`` (the student alone) to ``path`` atomically; input 'input' NCHW, output 'logits'."""
    check_opset(opset)
    path = Path(path)
    h, w = contract.input_size
    model = model.eval()
    example = (torch.zeros(2, 3, h, w),)
    with atomic_path(path) as tmp:
        try:
            torch.onnx.export(
                model,
                example,
                str(tmp),
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        except OSError:
            raise  # a full disk or an unwritable folder: atomic_path names the file
        except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds
            failure = write_failure(path, exc.__cause__ or exc.__context__ or exc)
            if failure is not None:
                raise failure from exc
            raise ToolkitError(f"ONNX export of the student failed: {type(exc).__name__}: {exc}") from exc
        proto = onnx.load(str(tmp))
        written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        if written != opset:
            raise ToolkitError(f"the ONNX exporter wrote opset {written}, not the {opset} asked for")
        set_metadata(proto, {META_PREPROCESS: contract.to_json(), META_FORMAT: FORMAT})
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
    return path


def set_metadata(proto: onnx.ModelProto, values: dict[str, str]) -> None:
    kept = [p for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in values.items():
        proto.metadata_props.add(key=key, value=value)
