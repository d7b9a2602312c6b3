"""Defaults shared by the CLI flags and the recipe's export/bench sections: one source, so `toolkit export` and
`toolkit run` export and measure alike. Plain values only (the CLI imports this before torch)."""

from __future__ import annotations

# the INT8 accuracy guard's criteria (runtime/fidelity.py says why these values)
from runtime.fidelity import MAX_CLASS_DROP_POINTS, MAX_KL, MIN_AGREEMENT_PCT, TOLERANCE_POINTS  # noqa: E402, F401

# export
OPSET = 18  # export/onnx_export.OPSET
CALIB_SIZE = 512  # class-stratified calibration images
CALIB_METHOD = "minmax"
CALIB_SEEDS = 1  # calibration samples INT8 accuracy is measured over (1: the shipped one only)
HELD_OUT_IMAGES = 2000  # validation images the guard measures on
MAX_FLOAT_LAYERS = 16  # activations the guard may keep in float
QAD_EPOCHS = 1

# bench
MIN_DURATION_S = 5.0
MIN_QUERIES = 100
WARMUP_QUERIES = 10
MAX_DURATION_S = 120.0
ROUNDS = 3
