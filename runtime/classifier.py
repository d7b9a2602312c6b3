"""Exported classifiers that carry their preprocessing contract: ONNX (ONNX Runtime) and OpenVINO IR.

No torch: this is what runs on the device. ``toolkit export`` writes the metadata read here (ONNX
metadata_props; OpenVINO rt_info under toolkit/preprocess). Engines are imported when first used.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from runtime.datasets import Dataset
from runtime.errors import ToolkitError
from runtime.preprocess import PreprocessContract

META_PREPROCESS = "toolkit.preprocess"
META_FORMAT = "toolkit.format"
OV_PREPROCESS = ["toolkit", "preprocess"]


class Classifier(ABC):
    """A model file with its contract: ``run`` a preprocessed batch, or ``predict`` a whole dataset."""

    path: Path
    contract: PreprocessContract

    @abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """Engine call on a validated batch."""

    def run(self, batch: np.ndarray) -> np.ndarray:
        """NCHW float32 batch -> logits."""
        h, w = self.contract.input_size
        if batch.dtype != np.float32 or batch.ndim != 4 or batch.shape[1:] != (3, h, w):
            raise ToolkitError(
                f"{self.path}: input must be float32 (N, 3, {h}, {w}), got {batch.dtype} {tuple(batch.shape)}"
            )
        return self._infer(batch)

    def predict(self, dataset: Dataset, batch_size: int = 64) -> np.ndarray:
        """Logits for every item of ``dataset`` through this model's own preprocessing."""
        return np.concatenate([self.run(b) for b in contract_batches(dataset, self.contract, batch_size)])


class OnnxClassifier(Classifier):
    """An ONNX model run with ONNX Runtime (CPU execution provider unless told otherwise)."""

    def __init__(self, path: str | os.PathLike[str], providers: list[str] | None = None, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ToolkitError(f"{self.path}: ONNX model not found")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types for corrupt files
            raise ToolkitError(f"{self.path}: ONNX Runtime cannot load it ({type(exc).__name__}: {exc})") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        if META_PREPROCESS not in meta:
            raise ToolkitError(f"{self.path}: no '{META_PREPROCESS}' metadata; export it with `toolkit export`")
        self.contract = PreprocessContract.from_dict(json.loads(meta[META_PREPROCESS]))
        self.input_name = self.session.get_inputs()[0].name

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


class OpenVinoClassifier(Classifier):
    """An OpenVINO IR (model.xml + model.bin) compiled for a device (CPU by default)."""

    def __init__(self, path: str | os.PathLike[str], device: str = "CPU", threads: int | None = None):
        import openvino as ov

        self.path = Path(path)
        if not self.path.is_file():
            raise ToolkitError(f"{self.path}: OpenVINO IR not found")
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses for bad IR
            raise ToolkitError(f"{self.path}: OpenVINO cannot read it ({type(exc).__name__}: {exc})") from exc
        if not model.has_rt_info(OV_PREPROCESS):
            raise ToolkitError(f"{self.path}: no toolkit/preprocess rt_info; export it with `toolkit export`")
        self.contract = PreprocessContract.from_dict(json.loads(model.get_rt_info(OV_PREPROCESS).astype(str)))
        config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
        self.compiled = core.compile_model(model, device, config)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.compiled(batch)[0]


def contract_batches(dataset: Dataset, contract: PreprocessContract, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(dataset), batch_size):
        yield contract.batch([dataset.image(i) for i in range(start, min(start + batch_size, len(dataset)))])
