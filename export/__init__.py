"""Export layer: torch student -> ONNX with a parity check, calibrated INT8 per target, TensorRT engines.

May import distill (to rebuild a student from a run) and runtime; never toolkit
(tests/test_layering.py enforces the direction of imports).
"""
