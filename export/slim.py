"""Graph clean-up of model.onnx with onnxslim (constant folding, dead-node removal, pattern fusions), opt-in.

Measured (benchmarks/onnxslim_effect.py -> benchmarks/results/onnxslim.md): torch's exporter already writes the
registered CNN students clean (onnxslim changes no node of ResNet-18, MobileNetV2, EfficientNet-Lite0); it
removes nodes from transformer- and ConvNeXt-style timm students with identical outputs, but ONNX Runtime's own
graph optimizer does the same fusions at load, and their latency changed within the noise. Hence a flag, not a
default; the parity check runs on the slimmed file.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from runtime.atomic import atomic_path
from runtime.errors import ToolkitError


def slim_onnx(path: Path) -> dict:
    """Slim ``path`` in place (atomically) when onnxslim changes it; what changed, for the manifest."""
    import onnxslim

    proto = onnx.load(str(path))
    before = len(proto.graph.node)
    try:
        slim = onnxslim.slim(proto)
    except Exception as exc:  # noqa: BLE001 - onnxslim raises many kinds on graphs it cannot handle
        raise ToolkitError(f"{path}: onnxslim failed ({type(exc).__name__}: {exc}); export without --slim") from exc
    inputs = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input]
    slim_inputs = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in slim.graph.input]
    if slim_inputs != inputs:
        raise ToolkitError(
            f"{path}: onnxslim changed the input shapes {inputs} -> {slim_inputs}; export without --slim"
        )
    after = len(slim.graph.node)
    if _computation(slim) != _computation(proto):  # onnxslim also rewrites shape annotations: those alone, no
        with atomic_path(path) as tmp:
            onnx.save(slim, str(tmp))
    return {"tool": f"onnxslim {onnxslim.__version__}", "nodes_before": before, "nodes_after": after}


def _computation(proto: onnx.ModelProto) -> tuple[bytes, ...]:
    """What the graph computes: its nodes and constants."""
    return (
        *(n.SerializeToString() for n in proto.graph.node),
        *(i.SerializeToString() for i in proto.graph.initializer),
    )
