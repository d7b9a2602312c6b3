"""The exported models of a run directory, read from its manifest: which file, engine and precision.

``toolkit export`` records every artifact under ``exports`` in manifest.json; bench, eval and the report
find them here instead of guessing file names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import ToolkitError
from runtime.hashing import sha256_file, sha256_path

# RUN/eval/<data>/unpruned/: a pruned run's unpruned student, evaluated on the same images (toolkit prune).
UNPRUNED = "unpruned"


@dataclass(frozen=True)
class Artifact:
    """One exported model: ``key`` is its manifest entry, ``backend`` the engine that runs it."""

    key: str
    label: str
    backend: str
    precision: str
    path: Path
    bytes: int | None = None


# manifest key -> (label in tables, backend, precision); order is the fidelity ladder's.
KNOWN = {
    "onnx": ("ONNX Runtime FP32", "onnxruntime", "fp32"),
    "fp16": ("ONNX Runtime FP16 (FP32 I/O)", "onnxruntime", "fp16"),
    "int8_onnxruntime": ("ONNX Runtime INT8 U8S8", "onnxruntime", "int8"),
    "int8_tensorrt": ("TensorRT-form INT8 S8S8 (in ONNX Runtime)", "onnxruntime", "int8"),
    "openvino": ("OpenVINO FP32", "openvino", "fp32"),
    "int8_openvino": ("OpenVINO INT8 (NNCF)", "openvino", "int8"),
    "int8_onnxruntime_qad": ("ONNX Runtime INT8 U8S8, QAD", "onnxruntime", "int8"),
    "int8_tensorrt_qad": ("TensorRT-form INT8 S8S8, QAD (in ONNX Runtime)", "onnxruntime", "int8"),
    "int8_openvino_qad": ("OpenVINO INT8, QAD", "openvino", "int8"),
    "executorch": ("ExecuTorch FP32 (XNNPACK)", "executorch", "fp32"),
    "int8_executorch": ("ExecuTorch INT8 (XNNPACK)", "executorch", "int8"),
    "ncnn": ("NCNN FP32", "ncnn", "fp32"),
    "int8_ncnn": ("NCNN INT8", "ncnn", "int8"),
    "litert": ("LiteRT FP32 (XNNPACK)", "litert", "fp32"),
    "int8_litert": ("LiteRT INT8, full integer", "litert", "int8"),
    "coreml": ("Core ML FP16 (ML Program)", "coreml", "fp16"),
    "int8_coreml": ("Core ML INT8 W8A8 (ML Program)", "coreml", "int8"),
}
# The FP32 artifact each INT8 artifact is judged against in the ladder.
REFERENCE = {
    "fp16": "onnx",
    "int8_onnxruntime": "onnx",
    "int8_tensorrt": "onnx",
    "openvino": "onnx",
    "int8_openvino": "openvino",
    "int8_onnxruntime_qad": "onnx",
    "int8_openvino_qad": "openvino",
    "int8_tensorrt_qad": "onnx",
    "executorch": "student",
    "int8_executorch": "executorch",
    "ncnn": "student",
    "int8_ncnn": "ncnn",
    "int8_coreml": "coreml",
    "litert": "student",
    "int8_litert": "litert",
}
# TensorRT engines built from an exported ONNX file: the file's manifest key -> (the engine's key, label, precision,
# file stem: the engine is <stem>.<gpu>.engine).
ENGINES = {
    "fp16": ("trt_engine_fp16", "TensorRT engine FP16", "fp16", "model.fp16"),
    "int8_tensorrt": ("trt_engine_int8", "TensorRT engine INT8", "int8", "model"),
    "int8_tensorrt_qad": ("trt_engine_int8_qad", "TensorRT engine INT8, QAD", "int8", "model.qad"),
}


def file_entry(path: Path) -> dict[str, Any]:
    """The manifest entry of an exported file: name relative to the run, hashes, bytes (an OpenVINO IR is
    model.xml + model.bin in their own folder)."""
    if path.is_dir():  # a Core ML .mlpackage: one hash over its files
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        return {"file": path.name, "sha256": sha256_path(path), "bytes": size}
    entry: dict[str, Any] = {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}
    if path.suffix in (".xml", ".param"):  # OpenVINO IR, NCNN model: the graph file and its weights
        weights = path.with_suffix(".bin")
        entry |= {"file": f"{path.parent.name}/{path.name}", "bin_sha256": sha256_file(weights)}
        entry["bytes"] += weights.stat().st_size
    return entry


def eval_slug(dataset_name: str) -> str:
    """The folder name of a dataset's evaluation under RUN/eval/."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset_name).strip("_") or "data"


def read_run_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "manifest.json"
    if not path.is_file():
        raise ToolkitError(f"{path}: not found; is {run_dir} a run directory?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ToolkitError(f"{path}: corrupt manifest ({exc})") from exc


def run_artifacts(run_dir: Path, manifest: dict[str, Any] | None = None) -> list[Artifact]:
    """Every exported model of the run that exists on disk, in ladder order, plus built TensorRT engines."""
    exports = (manifest if manifest is not None else read_run_manifest(run_dir)).get("exports", {})
    found = []
    for key, (label, backend, precision) in KNOWN.items():
        entry = exports.get(key)
        if entry and (run_dir / entry["file"]).exists():
            _check_hashes(run_dir / entry["file"], entry)
            found.append(Artifact(key, label, backend, precision, run_dir / entry["file"], entry.get("bytes")))
    for source, (key, label, precision, _) in ENGINES.items():
        engine = exports.get(source, {}).get("engine", {})
        if engine.get("built") is not False and engine.get("file") and (run_dir / engine["file"]).is_file():
            path = run_dir / engine["file"]
            found.append(Artifact(key, label, "tensorrt", precision, path, path.stat().st_size))
    return found


_VERIFIED: set[tuple[str, int, int, str]] = set()


def _check_hashes(path: Path, entry: dict[str, Any]) -> None:
    """An artifact must be the bytes export wrote (a copy edited, truncated or half-replaced since is refused).
    A file already verified, unchanged since (same size and mtime), is not hashed again in this process."""
    if path.is_dir():
        if "sha256" in entry and sha256_path(path) != entry["sha256"]:
            raise ToolkitError(f"{path}: its content differs from what manifest.json recorded at export (changed or "
                               "corrupted since); export the run again (`toolkit export RUN`)")  # fmt: skip
        return
    for file, key in ((path, "sha256"), (path.with_suffix(".bin"), "bin_sha256")):
        if key not in entry:
            continue
        st = file.stat()
        stamp = (str(file.resolve()), st.st_size, st.st_mtime_ns, entry[key])
        if stamp in _VERIFIED:
            continue
        if sha256_file(file) != entry[key]:
            raise ToolkitError(
                f"{file}: its sha256 differs from the one manifest.json recorded at export (changed or corrupted "
                "since); export the run again (`toolkit export RUN`)"
            )
        _VERIFIED.add(stamp)


def backend_unavailable_reason(backend: str) -> str | None:
    """None when this machine can run a backend's models once exported, else why not (Core ML predicts on macOS
    only). The export-time backends (ONNX Runtime, OpenVINO, ExecuTorch, NCNN) run wherever they export."""
    if backend == "coreml":
        from runtime.classifier import coreml_unavailable_reason

        return coreml_unavailable_reason()
    if backend == "litert":  # the converter (litert-torch) installs the interpreter, but a device may lack it
        from runtime.litert import litert_unavailable_reason

        return litert_unavailable_reason()
    return None


def artifacts_for(run_dir: Path, backend: str, precisions: tuple[str, ...]) -> list[Artifact]:
    """The run's artifacts a target runs: same backend, one of its precisions (the TensorRT-form QDQ model
    is TensorRT's input, so ONNX Runtime targets measure the U8S8 model instead)."""
    return [
        a
        for a in run_artifacts(run_dir)
        if a.backend == backend and a.precision in precisions and a.key != "int8_tensorrt"
    ]


def find_artifact(run_dir: Path, key: str) -> Artifact:
    artifacts = {a.key: a for a in run_artifacts(run_dir)}
    if key not in artifacts:
        have = ", ".join(artifacts) or "none (run `toolkit export RUN --int8 --backend all`)"
        raise ToolkitError(f"{run_dir}: no exported artifact '{key}'; this run has: {have}")
    return artifacts[key]
