"""What the INT8 accuracy guard's criteria measure on real models: top-1 drop, agreement with FP32, the worst
class's drop (and whether McNemar's test calls it significant) and mean KL, for INT8 forms users would ship
(ONNX Runtime's U8S8, TensorRT's S8S8 form written by ONNX Runtime and by NVIDIA ModelOpt, OpenVINO NNCF) and
for ones they would reject (calibrated on 4 images, or on noise instead of the training split).

Students trained by `toolkit train` on a class-balanced Fashion-MNIST subset; every INT8 form has every layer in
INT8 (no guard fallback) so the numbers are the raw PTQ forms'. Measured on the run's held-out validation split
(what the guard sees) and on the test images. The defaults in runtime/fidelity.py come from this table.

    python benchmarks/guard_criteria.py --out benchmarks/results/guard_criteria.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from prune_recovery import recipe_file, write_subset  # noqa: E402

from export.calibration import calibration_batches  # noqa: E402
from export.openvino_export import onnx_to_openvino  # noqa: E402
from export.quantize import quantize  # noqa: E402
from runtime.classifier import OnnxClassifier, OpenVinoClassifier  # noqa: E402
from runtime.environment import cpu_description  # noqa: E402
from runtime.fidelity import DEFAULT_CRITERIA, Fidelity  # noqa: E402
from runtime.manifests import load_image_folder  # noqa: E402
from toolkit.exporting import run_export  # noqa: E402
from toolkit.recipe import load_recipe  # noqa: E402
from toolkit.splits import recipe_splits  # noqa: E402
from toolkit.training import run_train  # noqa: E402

HEADER = ("| student | seed | INT8 form | split | n | drop (pts) | agreement (%) | worst class drop (pts) | "
          "significant | KL (nats) | guard with the defaults |")  # fmt: skip


FORMS = ("u8s8", "s8s8", "s8s8-modelopt", "u8s8-4-images", "u8s8-noise", "nncf")


def int8_forms(
    run: Path, batches: list[np.ndarray], calib_size: int, wanted: tuple[str, ...] = FORMS
) -> dict[str, Path]:
    """The INT8 forms ``wanted`` (FORMS), every layer INT8 (ModelOpt: as it chooses): ONNX Runtime U8S8, TensorRT's
    S8S8 form by ONNX Runtime and by ModelOpt, two poor calibrations, OpenVINO NNCF."""
    onnx_path = run / "model.onnx"
    rng = np.random.default_rng(0)
    noise = [rng.standard_normal(b.shape).astype(np.float32) for b in batches]
    makers = {
        "u8s8": (f"ONNX Runtime U8S8 ({calib_size} train images)",
                 lambda: quantize(onnx_path, run / "u8s8.onnx", "onnxruntime", batches)),
        "s8s8": (f"TensorRT S8S8 ({calib_size} train images)",
                 lambda: quantize(onnx_path, run / "s8s8.onnx", "tensorrt", batches)),
        "s8s8-modelopt": (f"TensorRT S8S8 by ModelOpt ({calib_size} train images)",
                          lambda: quantize(onnx_path, run / "s8s8.mo.onnx", "tensorrt", batches, producer="modelopt")),
        "u8s8-4-images": ("ONNX Runtime U8S8 (4 train images)",
                          lambda: quantize(onnx_path, run / "u8s8.few.onnx", "onnxruntime", [batches[0][:4]])),
        "u8s8-noise": ("ONNX Runtime U8S8 (noise, not images)",
                       lambda: quantize(onnx_path, run / "u8s8.noise.onnx", "onnxruntime", noise)),
        "nncf": (f"OpenVINO NNCF ({calib_size} train images)", lambda: _nncf(onnx_path, run, batches)),
    }  # fmt: skip
    return {makers[k][0]: makers[k][1]() for k in FORMS if k in wanted}


def _nncf(onnx_path: Path, run: Path, batches: list[np.ndarray]) -> Path:
    import nncf
    import openvino as ov

    model = onnx_to_openvino(onnx_path, run / "openvino" / "model.xml", OnnxClassifier(onnx_path).contract)
    xml = run / "nncf" / "model.xml"
    xml.parent.mkdir(exist_ok=True)
    ov.save_model(nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches)), str(xml))
    return xml


def rows_for(run: Path, test_root: Path, student: str, seed: int, args: argparse.Namespace) -> list[str]:
    quiet = Console(stderr=True, quiet=True)
    recipe = load_recipe(run / "config.yaml")
    run_export(run, int8=False, console=quiet)
    fp32 = OnnxClassifier(run / "model.onnx")
    splits = recipe_splits(recipe, quiet)
    batches = calibration_batches(splits.train, fp32.contract, args.calib_size, recipe.seed)
    test = load_image_folder(test_root)
    assert tuple(test.class_names) == tuple(fp32.contract.class_names)
    reference = {"held-out": fp32.predict(splits.val), "test": fp32.predict(test)}
    labels = {"held-out": splits.val.labels, "test": test.labels}
    data = {"held-out": splits.val, "test": test}
    rows = []
    for name, path in int8_forms(run, batches, args.calib_size, tuple(args.forms)).items():
        model = OnnxClassifier(path) if path.suffix == ".onnx" else OpenVinoClassifier(path)
        for split in ("held-out", "test"):
            f = Fidelity.measure(reference[split], model.predict(data[split]), labels[split])
            s = f.summary()
            failures = DEFAULT_CRITERIA.failures(f)
            rows.append(f"| {student} | {seed} | {name} | {split} | {f.n} | {f.drop_points:.2f} | "
                        f"{100 * f.agreement:.2f} | {s['worst_class_drop_points']:.1f} (class {s['worst_class']}) | "
                        f"{'yes' if s['worst_significant_class'] is not None else 'no'} | {f.kl:.5f} | "
                        + ("PASS" if not failures else "FAIL: " + "; ".join(failures)) + " |")  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--students", nargs="+", default=["mobilenetv2_100", "resnet18"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--per-class", type=int, default=300, help="training images per class")
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--size", type=int, default=32, help="training resolution")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--calib-size", type=int, default=256)
    ap.add_argument("--forms", nargs="+", choices=FORMS, default=list(FORMS), help="INT8 forms to measure")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    cpu = cpu_description()
    flags = ", ".join(f for f in cpu.get("flags", []) if f.startswith(("avx", "amx")))
    c = DEFAULT_CRITERIA
    lines = [f"# INT8 guard criteria on Fashion-MNIST ({args.per_class}/class train, {args.test_per_class}/class "
             "test)", "",
             f"Machine: {cpu.get('model')} ({platform.machine()}), ISA flags: {flags}. Students trained "
             f"{args.epochs} epochs at {args.size} px by `toolkit train` (10% of the training images held out); "
             "every INT8 form has every layer in INT8. Defaults: top-1 drop <= "
             f"{c.tolerance_points:g} points, agreement >= {c.min_agreement_pct:g}%, no class significantly "
             f"(McNemar, one-sided ~2.5%) losing more than {c.max_class_drop_points:g} points, KL <= {c.max_kl:g} "
             "nats.", "", HEADER, "|---" * (HEADER.count("|") - 1) + "|"]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train = write_subset("train", args.per_class, work / "train")
        test = write_subset("test", args.test_per_class, work / "test")
        for student in args.students:
            for seed in args.seeds:
                t0 = time.perf_counter()
                recipe = recipe_file(work / f"{student}-{seed}.yaml", student, train, test, args.epochs, args.size,
                                     seed)  # fmt: skip
                run = work / f"{student}-{seed}"
                run_train(load_recipe(recipe), run, resume=False, force=True, console=Console(stderr=True, quiet=True))
                lines += rows_for(run, test, student, seed, args)
                print(f"{student} seed {seed}: {time.perf_counter() - t0:.0f}s", flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
