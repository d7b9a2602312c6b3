"""`toolkit export`: a run's student -> model.onnx (parity-checked) -> INT8 per target (guarded)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from rich.console import Console

from distill.vlm_student import VLMStudent
from export.calibration import calibration_batches
from export.fp16_export import CONVERTER, to_fp16
from export.guard import calibration_spread, guarded_quantize, sensitivity_entry
from export.onnx_export import OPSET, check_opset, export_onnx, set_metadata
from export.parity import check_parity, compare_logits
from export.quantize import check_producer, get_target
from export.slim import slim_onnx
from export.tensorrt_engine import engine_or_reason
from runtime.artifacts import ENGINES, file_entry
from runtime.atomic import atomic_path, check_space
from runtime.classifier import OnnxClassifier, OpenVinoClassifier
from runtime.datasets import ClassSubsetDataset, Dataset
from runtime.errors import ToolkitError, did_you_mean
from runtime.fidelity import DEFAULT_CRITERIA, GuardCriteria
from runtime.preprocess import PreprocessContract
from toolkit.evaluation import load_run_student
from toolkit.formats import FORMATS, INT8_BACKENDS
from toolkit.mobile_export import check_formats, export_format
from toolkit.qad import QAD_FILES, QAD_KEYS, check_recover, run_qad
from toolkit.recipe import Recipe
from toolkit.rundir import read_manifest, update_manifest
from toolkit.splits import recipe_splits

BACKENDS = INT8_BACKENDS
INT8_FILES = {b: FORMATS[b].file("int8") for b in INT8_BACKENDS}
OPENVINO_FP32 = FORMATS["openvino"].file("fp32")
FP16_FILE = FORMATS["fp16"].file("fp16")
PRODUCER_NOTES = {"onnxruntime": "", "modelopt": "; written by NVIDIA ModelOpt: float weights behind Q/DQ, FP16 high "
                  "precision for the layers left out of INT8"}  # fmt: skip
FP16_TOLERANCE = 2e-2  # FP16 keeps ~3 significant digits: |logit diff| <= 2e-2 x max(1, |logit|), as for Core ML FP16


def run_splits(recipe: Recipe, console: Console) -> tuple[Dataset, Dataset]:
    """The run's own training split (few-shot subset for few-shot distillation) and held-out validation split."""
    splits = recipe_splits(recipe, console)
    if splits.val is None and recipe.train.select_on == "test" and recipe.data.test is not None:
        names = list(splits.full.class_names)
        test = recipe.data.open_test(names + splits.new_classes)
        console.print("no validation split: the export is checked on the test set (paper protocol: selected on test)")
        if splits.new_classes:
            test = ClassSubsetDataset(test, list(range(len(names))))
        return splits.train, test.subset(np.random.default_rng(recipe.seed).permutation(len(test)))  # classes mixed
    if splits.val is None:
        raise ToolkitError(
            "the run has no validation split (data.val_fraction: 0): nothing held out to check the export on; "
            "set data.val_fraction (e.g. 0.02) in the recipe (or train.select_on: test, the papers' protocol)"
        )
    return splits.train, splits.val


def run_export(
    run_dir: Path,
    int8: bool = False,
    targets: tuple[str, ...] = ("onnxruntime",),
    calib_size: int = 512,
    calib_method: str = "minmax",
    criteria: GuardCriteria = DEFAULT_CRITERIA,
    max_float_layers: int = 16,
    held_out_images: int = 2000,
    parity_images: int = 256,
    allow_fail: bool = False,
    recover: str = "none",
    qad_epochs: int = 1,
    qad_lr: float | None = None,
    qad_images: int | None = None,
    resume: bool = False,
    formats: tuple[str, ...] = (),
    keep_float: tuple[str, ...] = (),
    opset: int = OPSET,
    calib_seeds: int = 1,
    fp16: bool = False,
    slim: bool = False,
    tensorrt_quantizer: str = "onnxruntime",
    console: Console | None = None,
) -> dict[str, Any]:
    """Export the run's student; with ``int8``, quantize per target behind the accuracy guard. ``recover``: qad
    fine-tunes a fake-quantized copy by distillation and exports it too (auto: only for targets whose PTQ failed).
    ``formats``: phone and board formats (toolkit/mobile_export.py), FP32 and with ``int8`` INT8 too.
    ``keep_float``: nodes of model.onnx the ONNX Q/DQ forms keep in float whatever the guard finds.
    ``tensorrt_quantizer``: who writes the TensorRT-form Q/DQ model, ONNX Runtime's quantizer or NVIDIA ModelOpt.
    ``slim``: clean model.onnx up with onnxslim before the parity check and everything made from it.
    ``fp16``: also model.fp16.onnx (FP16 compute, FP32 inputs and outputs), parity-checked against model.onnx.
    ``calib_seeds``: above 1, the ONNX INT8 forms are also quantized from that many calibration samples (the first is
    the shipped one's) to show how much their accuracy depends on the sample."""
    console = console or Console(stderr=True, soft_wrap=True, markup=False)
    for t in targets:
        if t not in BACKENDS:
            raise ToolkitError(f"--backend {t!r} is not one of {BACKENDS} or all." + did_you_mean(t, BACKENDS))
    check_recover(recover, int8, targets, qad_epochs, qad_images)
    check_formats(formats, int8)
    check_opset(opset)
    if keep_float and not (int8 and {"onnxruntime", "tensorrt"} & set(targets)):
        raise ToolkitError("--keep-float keeps nodes of the ONNX INT8 forms in float: add --int8 and --backend "
                           "onnxruntime or tensorrt (OpenVINO's NNCF names its nodes differently)")  # fmt: skip
    if calib_seeds < 1:
        raise ToolkitError(f"--calib-seeds {calib_seeds}: must be at least 1")
    if calib_seeds > 1 and not (int8 and {"onnxruntime", "tensorrt"} & set(targets)):
        raise ToolkitError("--calib-seeds re-quantizes the ONNX INT8 forms: add --int8 and --backend onnxruntime "
                           "or tensorrt")  # fmt: skip
    check_producer(tensorrt_quantizer)
    if tensorrt_quantizer == "modelopt":
        if not (int8 and "tensorrt" in targets):
            raise ToolkitError("--tensorrt-quantizer modelopt writes the TensorRT INT8 form: add --int8 and "
                               "--backend tensorrt")  # fmt: skip
        from export.modelopt_quantize import unavailable_reason

        if reason := unavailable_reason():
            raise ToolkitError(f"--tensorrt-quantizer modelopt: {reason}")
    if resume and recover == "none":
        raise ToolkitError("--resume continues an interrupted QAD fine-tuning; add --recover qad")
    model, contract, raw = load_run_student(run_dir)
    if recover != "none" and isinstance(model, VLMStudent):
        raise ToolkitError(
            f"--recover {recover}: {run_dir} holds a vision-language student ({model.spec}) whose towers are frozen; "
            "QAD fine-tunes classifiers. Export it with PTQ (--keep-float / --max-float-layers for accuracy)"
        )
    recipe = Recipe.model_validate(raw)
    train_set, val_set = run_splits(recipe, console)
    held_out = val_set.subset(range(min(held_out_images, len(val_set))))

    onnx_path = run_dir / "model.onnx"
    params = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    fp32_copies = 2 if "openvino" in targets else 1  # model.onnx, and the OpenVINO IR
    needed = params * fp32_copies + (params // 4 + 1_000_000) * len(targets) * int(int8) + params // 2 * int(fp16)
    needed += (params * 4 + (params // 4 + 1_000_000) * len(targets)) * int(recover != "none")  # QAD checkpoints
    check_space(run_dir, needed, "export (" + ("FP32 and INT8 for " + ", ".join(targets) if int8 else "FP32") + ")")
    t0 = time.perf_counter()
    export_onnx(model, contract, onnx_path, opset)
    slimmed = slim_onnx(onnx_path) if slim else None
    fp32 = OnnxClassifier(onnx_path)
    parity_set = val_set.subset(range(min(parity_images, len(val_set))))
    parity = check_parity(model, fp32, parity_set)
    if not parity.passed:
        onnx_path.unlink()
        raise ToolkitError(f"ONNX parity check failed, model.onnx removed: {parity.describe()}")
    console.print(f"model.onnx (opset {opset}) in {time.perf_counter() - t0:.1f}s; parity: {parity.describe()}")
    section: dict[str, Any] = {"onnx": {**file_entry(onnx_path), "opset": opset, "parity": parity.to_dict()}}
    if slimmed:
        section["onnx"]["slim"] = slimmed
        console.print(f"onnxslim: {slimmed['nodes_before']} -> {slimmed['nodes_after']} nodes")

    if fp16:
        section["fp16"] = _export_fp16(onnx_path, run_dir, contract, fp32, parity_set, console)
    fp32_held_out = fp32.predict(held_out)  # reused by every target's guard
    ov_fp32 = None
    if "openvino" in targets:
        from export.openvino_export import onnx_to_openvino

        ov_fp32 = onnx_to_openvino(onnx_path, run_dir / OPENVINO_FP32, contract)
        ov_agreement = compare_logits(
            fp32_held_out, OpenVinoClassifier(run_dir / OPENVINO_FP32).predict(held_out), 1e-3, 0.99
        )
        section["openvino"] = {**file_entry(run_dir / OPENVINO_FP32), "parity_vs_onnx": ov_agreement.to_dict()}
        console.print(f"{OPENVINO_FP32}: parity vs ONNX Runtime: {ov_agreement.describe()}")

    def producer(target: str) -> str:
        return tensorrt_quantizer if target == "tensorrt" else "onnxruntime"

    failed: list[str] = []
    batches = calibration_batches(train_set, contract, calib_size, recipe.seed) if int8 else None
    for name in formats:
        entries, format_failed = export_format(name, model, contract, run_dir, parity_set, held_out, fp32_held_out,
                                               batches, criteria, console)  # fmt: skip
        section.update(entries)
        failed += format_failed
    if batches is not None:
        section["calibration"] = {
            "images": sum(len(b) for b in batches),
            "method": calib_method,
            "source": "train split",
        }
        for target in targets:
            out = run_dir / INT8_FILES[target]
            t0 = time.perf_counter()
            if target == "openvino":
                from export.openvino_export import quantize_openvino

                report = quantize_openvino(ov_fp32, out, batches, held_out, fp32_held_out, criteria)
            else:
                report = guarded_quantize(
                    onnx_path,
                    out,
                    target,
                    batches,
                    held_out,
                    fp32_held_out,
                    calib_method,
                    criteria,
                    max_float_layers,
                    keep_float,
                    producer(target),
                )
            verdict = report.to_dict()
            if target != "openvino":
                _stamp_verdict(out, verdict["verdict"])
            section[f"int8_{target}"] = {
                **file_entry(out),
                "format": "OpenVINO IR, NNCF post-training INT8"
                if target == "openvino"
                else get_target(target).description + PRODUCER_NOTES[producer(target)],
                "guard": verdict,
                "seconds": round(time.perf_counter() - t0, 1),
            }
            if report.sensitivity:
                section[f"int8_{target}"]["sensitivity"] = sensitivity_entry(report.sensitivity, batches)
            if calib_seeds > 1 and target != "openvino":
                more = [calibration_batches(train_set, contract, calib_size, recipe.seed + i)
                        for i in range(1, calib_seeds)]  # fmt: skip
                spread = calibration_spread(onnx_path, target, report.fidelity, more, held_out, fp32_held_out,
                                            calib_method, report.kept_in_float, producer(target))  # fmt: skip
                section[f"int8_{target}"]["calibration_spread"] = spread
                console.print(f"{INT8_FILES[target]}: over {calib_seeds} calibration samples, held-out top-1 "
                              f"{spread['mean_top1']:.4f} +- {spread['std_top1']:.4f} (FP32 "
                              f"{spread['fp32_top1']:.4f})")  # fmt: skip
            console.print(f"{INT8_FILES[target]}: {report.describe()}; kept in float: {report.kept_in_float or 'none'}")
            if not report.passed:
                failed.append(INT8_FILES[target])
            if target == "tensorrt":
                section["int8_tensorrt"]["engine"] = engine_or_reason(out, run_dir, contract, console.print)
        wanted = tuple(t for t in targets if recover == "qad" or (recover == "auto" and INT8_FILES[t] in failed))
        if wanted:
            qad = run_qad(run_dir, model, contract, recipe, train_set, val_set, held_out, batches, fp32_held_out,
                          wanted, epochs=qad_epochs, lr=qad_lr, images=qad_images, criteria=criteria,
                          resume=resume, console=console)  # fmt: skip
            section.update(qad)
            recovered = {INT8_FILES[t] for t in wanted if qad[QAD_KEYS[t]]["guard"]["verdict"] == "PASS"}
            failed = [f for f in failed if f not in recovered]
            failed += [QAD_FILES[t] for t in wanted if qad[QAD_KEYS[t]]["guard"]["verdict"] != "PASS"]
    exports = drop_stale_exports(run_dir, read_manifest(run_dir).get("exports", {}), section, console)
    exports.update(section)
    update_manifest(run_dir, exports=exports)
    if failed and not allow_fail:
        raise ToolkitError(
            f"accuracy guard FAILED for {', '.join(failed)} (details in manifest.json 'exports'); "
            "relax the criterion it names (--tolerance, --min-agreement, --max-class-drop, --max-kl), raise "
            "--max-float-layers or --calib-size, try --recover qad, or pass --allow-fail to keep it anyway"
        )
    return section


def drop_stale_exports(run_dir: Path, old: dict[str, Any], section: dict[str, Any],
                       console: Console) -> dict[str, Any]:  # fmt: skip
    """The earlier export entries this export keeps. When model.onnx changed (another student, opset or slim),
    every artifact this export did not rewrite was made from the old one: its entry goes and its files are
    removed (eval and bench would otherwise still measure it; its guard compared it with another FP32 graph)."""
    previous = old.get("onnx", {}).get("sha256")
    if previous is None or previous == section["onnx"]["sha256"]:
        return dict(old)
    stale = [k for k in old if k not in section]
    removed = []
    for key in stale:
        entry = old[key] if isinstance(old[key], dict) else {}
        files = [entry.get("file"), (entry.get("engine") or {}).get("file")]
        for name in filter(None, files):
            path = run_dir / name
            targets = [path, path.with_suffix(".bin")] if path.suffix in (".xml", ".param") else [path]
            for target in targets:
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.is_file():
                    target.unlink()
                else:
                    continue
                removed.append(target.name)
    if stale:
        console.print(f"model.onnx changed: removed what an earlier export made from the old one "
                      f"({', '.join(removed) or 'manifest entries only'}; entries {', '.join(stale)}); "
                      "export again with the options that made them")  # fmt: skip
    return {k: v for k, v in old.items() if k not in stale}


def _export_fp16(
    onnx_path: Path,
    run_dir: Path,
    contract: PreprocessContract,
    fp32: OnnxClassifier,
    parity_set: Dataset,
    console: Console,
) -> dict[str, Any]:
    """model.fp16.onnx from model.onnx, its parity against model.onnx (removed on failure), its TensorRT engine
    where TensorRT and a GPU exist; the manifest entry."""
    t0 = time.perf_counter()
    path = to_fp16(onnx_path, run_dir / FP16_FILE)
    parity = compare_logits(fp32.predict(parity_set), OnnxClassifier(path).predict(parity_set), FP16_TOLERANCE, 0.99)
    if not parity.passed:
        path.unlink()
        raise ToolkitError(f"{FP16_FILE}: parity check against model.onnx failed, file removed: {parity.describe()}; "
                           "a value beyond FP16's range (65504) or precision; keep the model FP32")  # fmt: skip
    console.print(f"{FP16_FILE} in {time.perf_counter() - t0:.1f}s; parity vs model.onnx: {parity.describe()}")
    entry = {**file_entry(path), "format": f"ONNX FP16 compute, FP32 inputs and outputs ({CONVERTER})",
             "parity_vs_onnx": parity.to_dict(), "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    _, _, precision, stem = ENGINES["fp16"]
    entry["engine"] = engine_or_reason(path, run_dir, contract, console.print, stem=stem, precision=precision)
    return entry


def keep_float_names(path: Path) -> tuple[str, ...]:
    """Node names to keep in float from a JSON file: a report.json ("guards") or manifest.json ("exports") of a
    run (what its ONNX Runtime and TensorRT-form guards kept in float), {"keep_float": [...]}, or a list."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ToolkitError(f"--keep-float-from {path}: no such file") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ToolkitError(f"--keep-float-from {path}: not a readable JSON file ({exc})") from exc
    if isinstance(data, dict) and ("guards" in data or "exports" in data):
        records = data.get("guards") or {k: v.get("guard", {}) for k, v in data.get("exports", {}).items()
                                         if isinstance(v, dict)}  # fmt: skip
        data = [
            n for key in ("int8_onnxruntime", "int8_tensorrt") for n in records.get(key, {}).get("kept_in_float", [])
        ]
    elif isinstance(data, dict):
        data = data.get("keep_float")
    if not isinstance(data, list) or not all(isinstance(n, str) and n for n in data):
        raise ToolkitError(f"--keep-float-from {path}: expected a run's report.json or manifest.json, "
                           '{"keep_float": ["node", ...]} or a list of node names')  # fmt: skip
    return tuple(dict.fromkeys(data))


def _stamp_verdict(path: Path, verdict: str) -> None:
    proto = onnx.load(str(path))
    set_metadata(proto, {"toolkit.guard": verdict})
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
