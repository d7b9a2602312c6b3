"""% of the hardware peak per student and exported form, before and after the session-settings sweep.

For each student at one input size (random weights: latency only), the ONNX Runtime FP32 / INT8 U8S8 models
and the OpenVINO FP32 / INT8 (NNCF) IRs are counted (MACs, bytes moved, depthwise share; runtime.layer_costs)
and timed at batch 1 with the engine's default session and with the settings `toolkit bench --tune` picks
(runtime.tuning: greedy sweep, then defaults vs the choice head to head), threads pinned like a target
profile. The peak is the one `toolkit bench` reports for the target (runtime.peaks, reconciled with the GEMM
ceiling measured here on the same cores).

    python benchmarks/roofline_table.py --students resnet18,mobilenetv2_100 --size 224 \
        --out benchmarks/results/roofline_224.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from int8_latency import build_variants  # noqa: E402

from runtime.ceiling import measure_gemm_ceiling  # noqa: E402
from runtime.classifier import Classifier, OnnxClassifier, OpenVinoClassifier  # noqa: E402
from runtime.environment import describe_environment  # noqa: E402
from runtime.latency import pinned_cpus  # noqa: E402
from runtime.peaks import percent_of_peak, reconcile_with_ceiling, target_peak  # noqa: E402
from runtime.roofline import artifact_costs  # noqa: E402
from runtime.targets import get_target, load_targets  # noqa: E402
from runtime.tuning import sweep_settings  # noqa: E402

FORMS = [  # label, file under the work folder, backend, precision
    ("ONNX Runtime FP32", "model.onnx", "onnxruntime", "fp32"),
    ("ONNX Runtime INT8 U8S8", "u8s8.onnx", "onnxruntime", "int8"),
    ("OpenVINO FP32", "ov/model.xml", "openvino", "fp32"),
    ("OpenVINO INT8 (NNCF)", "ov8/model.xml", "openvino", "int8"),
]


def _opener(path: Path, backend: str, threads: int) -> Any:
    def open_session(settings: dict[str, Any]) -> Classifier:
        if backend == "openvino":
            return OpenVinoClassifier(path, threads=threads, settings=settings)
        return OnnxClassifier(path, threads=threads, settings=settings)

    return open_session


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--students", default="resnet18,mobilenetv2_100")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--target", default="openvino-cpu", help="the profile whose threads and peak are used")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    environment = describe_environment()
    profile = get_target(args.target, load_targets())
    threads = profile.threads or int(environment["cpu"]["usable_cores"])
    with pinned_cpus(profile.threads):
        ceiling = measure_gemm_ceiling(threads)
    peak = reconcile_with_ceiling(target_peak(profile, environment), ceiling)
    rows = []
    for student in args.students.split(","):
        with tempfile.TemporaryDirectory(prefix=f"roofline-{student}-") as tmp:
            work = Path(tmp)
            build_variants(student, args.size, work)
            x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size)).astype(np.float32)
            for label, rel, backend, precision in FORMS:
                costs = artifact_costs(work / rel, precision)
                with pinned_cpus(profile.threads):
                    sweep = sweep_settings(backend, _opener(work / rel, backend, threads), x, {}, args.rounds,
                                           args.queries)  # fmt: skip
                rates = [costs["macs"] / (ms / 1000) / 1e9 for ms in (sweep["default_p50_ms"], sweep["best_p50_ms"])]
                dw = costs["by_kind"].get("depthwise")
                rows.append([
                    student, label, f"{costs['macs'] / 1e9:.3f}", f"{costs['bytes_moved'] / 1e6:.1f}",
                    f"{costs['macs_per_byte']:.1f}",
                    "-" if not dw else f"{100 * dw['macs_share']:.0f}% / {100 * dw['bytes_share']:.0f}%",
                    f"{sweep['default_p50_ms']:.3f}", f"{rates[0]:.0f}",
                    _pct(percent_of_peak(rates[0], peak, precision)),
                    f"{sweep['best_p50_ms']:.3f}", f"{rates[1]:.0f}",
                    _pct(percent_of_peak(rates[1], peak, precision)),
                    _pct(percent_of_peak(rates[1], ceiling, precision)),
                    ", ".join(f"{k}={v}" for k, v in sweep["best"].items()) or "defaults",
                ])  # fmt: skip
                print(" | ".join(rows[-1]), file=sys.stderr)
    cpu = environment["cpu"]
    header = ["student", "form", "GMAC", "MB moved", "MAC/byte", "depthwise MACs / bytes", "default p50 ms",
              "GMAC/s", "% peak", "tuned p50 ms", "GMAC/s", "% peak", "% GEMM ceiling", "tuned settings"]  # fmt: skip
    lines = [
        f"# Roofline at {args.size} px, batch 1, {threads} thread(s) ({args.target})",
        "",
        f"{cpu['model']}, {cpu['usable_cores']} usable cores, flags {', '.join(cpu['flags'])}.",
        "",
        f"Peak: {', '.join(f'{k} {v:,.0f}' for k, v in peak.get('gmacs', {}).items())} GMAC/s "
        f"({peak.get('basis', peak.get('unknown'))}).",
        f"Measured GEMM ceiling: {', '.join(f'{k} {v:,.0f}' for k, v in ceiling.get('gmacs', {}).items())} GMAC/s "
        f"({ceiling.get('method', ceiling.get('unknown'))}).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
        "Default: the engine's session defaults with the profile's threads. Tuned: `toolkit bench --tune`'s greedy "
        f"sweep ({args.rounds} interleaved rounds x {args.queries} queries per candidate), p50s from the final "
        "head-to-head of defaults vs the choice. Bytes: what each layer reads and writes at the form's precision "
        "if nothing stayed in cache.",
        "",
        f"Reproduce: `python benchmarks/roofline_table.py --students {args.students} --size {args.size}`",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
