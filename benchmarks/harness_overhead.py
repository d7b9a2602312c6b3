"""Where `toolkit bench`'s batch-1 latency differs from the engine's own tool, measured side by side.

For one student at one input size (random weights: latency only), the OpenVINO FP32 and INT8 IRs and the
ONNX Runtime models are timed in interleaved rounds as:
  - benchmark_app with its defaults (-hint latency; float layers in bf16 on CPUs that have it),
  - benchmark_app with -infer_precision f32 (what `toolkit bench` runs),
  - Classifier.run as `toolkit bench` called it before tuning (dynamic batch),
  - Classifier.run on a static batch-1 session (the tuned setting),
  - the engine call alone on the static session (no input checks: what a deployed C++ program pays).
The table gives medians and each variant's ratio to benchmark_app f32.

    python benchmarks/harness_overhead.py --student resnet18 --size 32 --out benchmarks/results/harness_overhead.md
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from int8_latency import build_variants  # noqa: E402

from runtime.classifier import OnnxClassifier, OpenVinoClassifier  # noqa: E402
from runtime.cross_check import openvino_command, parse_median_ms  # noqa: E402
from runtime.environment import describe_environment  # noqa: E402


def _benchmark_app(xml: Path, size: int, pin_f32: bool, seconds: int) -> float:
    """benchmark_app as `toolkit bench --cross-check` runs it, or with its own float precision (no pin)."""
    cmd = openvino_command(xml, (size, size), None, seconds)
    if cmd is None:
        raise SystemExit("benchmark_app not found (it ships with the openvino wheel)")
    if not pin_f32:
        i = cmd.index("-infer_precision")
        del cmd[i : i + 2]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    value = parse_median_ms("benchmark_app", out.stdout)
    if value is None:
        raise RuntimeError(f"no median in benchmark_app output: {out.stdout[-500:]}")
    return value


def _median_ms(run: Callable[[np.ndarray], object], x: np.ndarray, seconds: float) -> float:
    for _ in range(20):
        run(x)
    samples = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        run(x)
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="resnet18")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=2, help="per variant per round")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="harness-") as tmp:
        _compare(args, Path(tmp))


def _compare(args: argparse.Namespace, work: Path) -> None:
    """Measure every variant over interleaved rounds; the models live in ``work``, removed afterwards."""
    build_variants(args.student, args.size, work)
    x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size)).astype(np.float32)
    models = {"OpenVINO FP32": work / "ov" / "model.xml", "OpenVINO INT8": work / "ov8" / "model.xml"}
    variants: dict[str, Callable[[], float]] = {}
    for name, xml in models.items():
        dynamic, static = OpenVinoClassifier(xml), OpenVinoClassifier(xml, settings={"static_batch": 1})
        variants[f"{name} | benchmark_app defaults"] = lambda xml=xml: _benchmark_app(
            xml, args.size, False, args.seconds
        )
        variants[f"{name} | benchmark_app f32"] = lambda xml=xml: _benchmark_app(xml, args.size, True, args.seconds)
        variants[f"{name} | toolkit, dynamic batch"] = lambda s=dynamic: _median_ms(s.run, x, args.seconds)
        variants[f"{name} | toolkit, static batch 1"] = lambda s=static: _median_ms(s.run, x, args.seconds)
        variants[f"{name} | engine call alone, static"] = lambda s=static: _median_ms(s._infer, x, args.seconds)
    for name, path in {"ONNX Runtime FP32": work / "model.onnx", "ONNX Runtime INT8": work / "u8s8.onnx"}.items():
        dynamic, static = OnnxClassifier(path), OnnxClassifier(path, settings={"static_batch": 1})
        variants[f"{name} | toolkit, dynamic batch"] = lambda s=dynamic: _median_ms(s.run, x, args.seconds)
        variants[f"{name} | toolkit, static batch 1"] = lambda s=static: _median_ms(s.run, x, args.seconds)
        variants[f"{name} | engine call alone, static"] = lambda s=static: _median_ms(s._infer, x, args.seconds)
    results: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for name, measure in variants.items():
            results[name].append(measure())
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    cpu = describe_environment()["cpu"]
    lines = [
        f"# Harness overhead: {args.student} at {args.size} px, batch 1",
        "",
        f"{cpu['model']}, {cpu['usable_cores']} cores, flags {', '.join(cpu['flags'])}; {args.rounds} interleaved "
        f"rounds of {args.seconds} s per variant; medians of the round medians (ms). Ratio: to benchmark_app f32 of "
        "the same model (ONNX Runtime rows: to its own engine call alone).",
        "",
        "| model | variant | p50 ms | ratio |",
        "|---|---|---|---|",
    ]
    for name, values in results.items():
        model, variant = name.split(" | ")
        base = results.get(f"{model} | benchmark_app f32") or results[f"{model} | engine call alone, static"]
        ratio = statistics.median(values) / statistics.median(base)
        lines.append(f"| {model} | {variant} | {statistics.median(values):.4f} | {ratio:.2f} |")
    lines += ["", f"Reproduce: `python benchmarks/harness_overhead.py --student {args.student} --size {args.size}`"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
