"""The dense-GEMM rate this CPU actually reaches: a measured ceiling beside the table's peak.

A hypervisor's /proc/cpuinfo reports the nominal clock, not the turbo clock cores run at, so the table's
peak alone can come out below what a plain matrix multiply achieves. ONNX Runtime's MLAS GEMM
(FP32 MatMul and U8S8 MatMulInteger, 512 x 512 x 512, compute-bound) is timed on the target's threads;
its best rate bounds the running clock from below and is itself a practical ceiling to compare layers with.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

GEMM_N = 512


def _gemm_model(precision: str, n: int) -> tuple[bytes, np.ndarray]:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if precision == "fp32":
        a = rng.standard_normal((n, n)).astype(np.float32)
        w = rng.standard_normal((n, n)).astype(np.float32)
        op, elem, out = "MatMul", TensorProto.FLOAT, TensorProto.FLOAT
    else:
        a = rng.integers(0, 255, (n, n), dtype=np.uint8)
        w = rng.integers(-127, 127, (n, n), dtype=np.int8)
        op, elem, out = "MatMulInteger", TensorProto.UINT8, TensorProto.INT32
    graph = helper.make_graph(
        [helper.make_node(op, ["A", "W"], ["Y"])],
        "gemm",
        [helper.make_tensor_value_info("A", elem, [n, n])],
        [helper.make_tensor_value_info("Y", out, [n, n])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return model.SerializeToString(), a


def measure_gemm_ceiling(threads: int, repeats: int = 15, n: int = GEMM_N) -> dict[str, Any]:
    """GMAC/s of FP32 and INT8 (U8S8) GEMM on ``threads`` threads, the fastest of ``repeats`` (a ceiling is
    what the hardware can do; noise only slows it); {"unknown": why} without onnx or onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {"unknown": "measuring the GEMM ceiling needs onnx and onnxruntime"}
    try:
        import onnx  # noqa: F401
    except ImportError:
        return {"unknown": "measuring the GEMM ceiling needs onnx and onnxruntime"}
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    rates = {}
    for precision in ("fp32", "int8"):
        blob, a = _gemm_model(precision, n)
        session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
        for _ in range(3):
            session.run(None, {"A": a})
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            session.run(None, {"A": a})
            times.append(time.perf_counter() - t0)
        rates[precision] = round(n**3 / min(times) / 1e9, 1)
    return {"gmacs": rates, "method": f"ONNX Runtime MLAS GEMM {n}x{n}x{n} (FP32 MatMul, U8S8 MatMulInteger)",
            "threads": threads}  # fmt: skip
