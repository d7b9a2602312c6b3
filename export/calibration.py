"""INT8 calibration data: a class-stratified sample of the run's training split, through the contract."""

from __future__ import annotations

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from runtime.classifier import contract_batches
from runtime.datasets import Dataset
from runtime.errors import DataError
from runtime.preprocess import PreprocessContract


def stratified_sample(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """ceil(size / classes) indices from every class (fewer where a class is smaller)."""
    classes = np.unique(labels)
    per_class = max(1, int(np.ceil(size / len(classes))))
    rng = np.random.default_rng([seed, 7])
    picked = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes]
    # Rounded up to a whole number per class: trimming the sorted indices would drop the last classes.
    return np.sort(np.concatenate(picked))


def calibration_batches(
    dataset: Dataset, contract: PreprocessContract, size: int, seed: int, batch_size: int = 32, min_per_class: int = 1
) -> list[np.ndarray]:
    """Preprocessed NCHW float32 batches; validated (shape, finite values, images per class)."""
    if size < 1:
        raise DataError(f"calibration size {size} must be at least 1")
    idx = stratified_sample(dataset.labels, size, seed)
    sample = dataset.subset(idx)
    counts = np.bincount(sample.labels, minlength=len(dataset.class_names))
    thin = [dataset.class_names[i] for i, n in enumerate(counts) if n < min_per_class]
    if thin:
        raise DataError(
            f"calibration set has fewer than {min_per_class} image(s) for classes {thin}; "
            "raise --calib-size or add training images"
        )
    batches = list(contract_batches(sample, contract, batch_size))
    validate_batches(batches, contract)
    return batches


def validate_batches(batches: list[np.ndarray], contract: PreprocessContract) -> None:
    h, w = contract.input_size
    for i, b in enumerate(batches):
        if b.dtype != np.float32 or b.ndim != 4 or b.shape[1:] != (3, h, w):
            raise DataError(f"calibration batch {i}: expected float32 (N, 3, {h}, {w}), got {b.dtype} {b.shape}")
        if not np.isfinite(b).all():
            raise DataError(f"calibration batch {i}: contains NaN or inf values")


class BatchReader(CalibrationDataReader):
    """Feeds prepared batches to ONNX Runtime's calibrator."""

    def __init__(self, input_name: str, batches: list[np.ndarray]) -> None:
        self.input_name = input_name
        self.batches = batches
        self._it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._it = iter(self.batches)
