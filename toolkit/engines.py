"""`toolkit engine RUN`: rebuild a run's TensorRT engines from the ONNX files its export wrote, on this machine's
TensorRT and GPU (engines do not move between TensorRT versions or GPU models), without exporting again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from export.tensorrt_engine import engine_or_reason
from runtime.artifacts import ENGINES, read_run_manifest
from runtime.classifier import OnnxClassifier
from runtime.errors import ToolkitError
from toolkit.rundir import update_manifest


def rebuild_engines(run_dir: Path, console: Console) -> dict[str, Any]:
    """Build (again) the engine of every exported file that has one; the manifest records each, or why not."""
    exports = read_run_manifest(run_dir).get("exports", {})
    sources = [key for key in ENGINES if key in exports and (run_dir / exports[key]["file"]).is_file()]
    if not sources:
        raise ToolkitError(f"{run_dir}: no file to build a TensorRT engine from; export one with `toolkit export RUN "
                           "--int8 --backend tensorrt` or `--fp16`")  # fmt: skip
    built = {}
    for key in sources:
        path = run_dir / exports[key]["file"]
        _, _, precision, stem = ENGINES[key]
        exports[key]["engine"] = engine_or_reason(path, run_dir, OnnxClassifier(path).contract, console.print,
                                                  stem=stem, precision=precision)  # fmt: skip
        built[key] = exports[key]["engine"]
        if built[key].get("built"):
            console.print(
                f"{path.name} -> {built[key]['file']} (TensorRT {built[key]['tensorrt']}, {built[key]['gpu']})"
            )
    update_manifest(run_dir, exports=exports)
    return built
