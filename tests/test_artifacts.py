"""runtime/artifacts.py: a run's exported models from its manifest, TensorRT engines of the PTQ, QAD and FP16 files."""

from __future__ import annotations

import json
from pathlib import Path

from runtime.artifacts import run_artifacts


def test_engines_of_the_ptq_and_the_qad_file_are_both_listed(tmp_path: Path) -> None:
    for name in ("model.int8.tensorrt.onnx", "model.int8.qad.tensorrt.onnx", "model.h100.engine",
                 "model.qad.h100.engine", "model.fp16.onnx", "model.fp16.h100.engine"):  # fmt: skip
        (tmp_path / name).write_bytes(b"x")
    exports = {
        "int8_tensorrt": {"file": "model.int8.tensorrt.onnx", "engine": {"built": True, "file": "model.h100.engine"}},
        "int8_tensorrt_qad": {"file": "model.int8.qad.tensorrt.onnx",
                              "engine": {"built": True, "file": "model.qad.h100.engine"}},
        "fp16": {"file": "model.fp16.onnx", "engine": {"built": True, "file": "model.fp16.h100.engine"}},
    }  # fmt: skip
    (tmp_path / "manifest.json").write_text(json.dumps({"exports": exports}))
    found = {a.key: a for a in run_artifacts(tmp_path)}
    assert found["trt_engine_int8"].path.name == "model.h100.engine"
    assert found["trt_engine_int8_qad"].path.name == "model.qad.h100.engine"
    assert found["trt_engine_int8_qad"].backend == "tensorrt" and "QAD" in found["trt_engine_int8_qad"].label
    assert (found["trt_engine_int8"].precision, found["trt_engine_fp16"].precision) == ("int8", "fp16")
    assert found["fp16"].precision == "fp16" and found["fp16"].backend == "onnxruntime"
    exports["int8_tensorrt_qad"]["engine"] = {"built": False, "reason": "no CUDA GPU is visible"}
    (tmp_path / "manifest.json").write_text(json.dumps({"exports": exports}))
    assert "trt_engine_int8_qad" not in {a.key for a in run_artifacts(tmp_path)}
