"""`toolkit eval`: a run's student or any exported artifact on a dataset -> top-1, per-class accuracy,
confusion matrix, and the logits (which the report's fidelity ladder compares stage by stage)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.evaluate import predict_logits
from distill.run_student import load_student_dir
from runtime.artifacts import Artifact, eval_slug
from runtime.atomic import atomic_path, write_json, write_text
from runtime.classifier import contract_batches, open_classifier
from runtime.datasets import Dataset
from runtime.errors import ToolkitError
from runtime.hashing import sha256_file
from runtime.metrics import classification_report
from runtime.preprocess import PreprocessContract
from toolkit.rundir import read_manifest, update_manifest


def load_run_student(run_dir: Path) -> tuple[nn.Module, PreprocessContract, dict[str, Any]]:
    """Rebuild the student of a finished run from its config.yaml and student.safetensors, after checking the
    weights are the ones its manifest recorded."""
    weights = run_dir / "student.safetensors"
    recorded = read_manifest(run_dir).get("artifacts", {}).get(weights.name, {}).get("sha256")
    if recorded and weights.is_file() and sha256_file(weights) != recorded:
        raise ToolkitError(
            f"{weights}: its sha256 differs from the one in {run_dir / 'manifest.json'} (changed or corrupted since "
            "training); restore it, or train again (`toolkit distill RUN --resume` continues from checkpoints)"
        )
    return load_student_dir(run_dir)


def confusion_csv(report: dict[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    names = report["class_names"]
    writer.writerow(["true \\ predicted", *names])
    for name, row in zip(names, report["confusion"]):
        writer.writerow([name, *row])
    return buf.getvalue()


def evaluate_student(
    model: nn.Module,
    dataset: Dataset,
    contract: PreprocessContract,
    run_dir: Path,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Predict ``dataset``, write eval/<dataset>/{metrics.json,confusion.csv}, record it in the manifest with
    the hash of the run's student.safetensors it was computed from (so a later eval can reuse it)."""
    logits = predict_logits(model, dataset, contract, batch_size, device)
    report = write_eval(logits, dataset, contract, run_dir)
    evaluations = read_manifest(run_dir).get("evaluations", {})
    entry = evaluations.get(dataset.name, {})
    weights = run_dir / "student.safetensors"
    entry.update({"top1": report["top1"], "n": report["n"], **report["dataset"],
                  "student_sha256": sha256_file(weights) if weights.is_file() else None})  # fmt: skip
    evaluations[dataset.name] = entry
    update_manifest(run_dir, evaluations=evaluations)
    return report


def _agreements(base: Path, logits: np.ndarray, out: Path) -> dict[str, float]:
    """Top-1 agreement with the PyTorch student's and the teacher's logits on the same images, where saved."""
    found = {}
    for who, path in (("student", base / "logits.npy"), ("teacher", base / "teacher" / "logits.npy")):
        if path.is_file() and path.parent != out:
            reference = np.load(path, allow_pickle=False)
            if reference.shape == logits.shape:
                found[f"agreement_with_{who}"] = float((reference.argmax(1) == logits.argmax(1)).mean())
    return found


def write_eval(
    logits: np.ndarray, dataset: Dataset, contract: PreprocessContract, run_dir: Path, sub: str = ""
) -> dict[str, Any]:
    """RUN/eval/<data>/<sub>/: metrics.json (with agreements), confusion.csv, logits.npy."""
    base = run_dir / "eval" / eval_slug(dataset.name)
    out = base / sub if sub else base
    report = classification_report(dataset.labels, logits.argmax(1), list(contract.class_names))
    report["dataset"] = {"name": dataset.name, "fingerprint": dataset.fingerprint()}
    report.update(_agreements(base, logits, out))
    write_json(out / "metrics.json", report)
    write_text(out / "confusion.csv", confusion_csv(report))
    with atomic_path(out / "logits.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, logits.astype(np.float32))
    with atomic_path(out / "labels.npy") as tmp, open(tmp, "wb") as fh:  # per-class checks pair them with logits
        np.save(fh, np.asarray(dataset.labels, np.int64))
    return report


def write_teacher_eval(
    run_dir: Path, dataset: Dataset, logits: np.ndarray, contract: PreprocessContract, info: dict[str, Any],
    indices: np.ndarray | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The teacher's logits on ``dataset`` into RUN/eval/<data>/teacher/, where the report's ladder reads them.
    ``indices``: the teacher saw only these images of the evaluation set (--limit); they are saved with the
    labels so that the ladder compares the students with it on those very images."""
    contract_file = run_dir / "preprocess.json"
    if not contract_file.is_file():
        raise ToolkitError(f"{contract_file}: missing; is {run_dir} a training run?")
    run_classes = list(PreprocessContract.from_json(contract_file.read_text()).class_names)
    if run_classes != list(dataset.class_names):
        raise ToolkitError(f"{dataset.name}: classes {list(dataset.class_names)} differ from the run's {run_classes}")
    report = write_eval(logits, dataset, contract, run_dir, "teacher")
    folder = run_dir / "eval" / eval_slug(dataset.name) / "teacher"
    for name, array in (("indices", indices), ("labels", None if indices is None else dataset.labels)):
        if array is None:
            (folder / f"{name}.npy").unlink(missing_ok=True)
            continue
        with atomic_path(folder / f"{name}.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.asarray(array, np.int64))
    evaluations = read_manifest(run_dir).get("evaluations", {})
    entry = evaluations.setdefault(dataset.name, {"n": report["n"], **report["dataset"]})
    entry["teacher"] = {"top1": report["top1"], **{k: info[k] for k in ("teacher", "anchors")}}
    update_manifest(run_dir, evaluations=evaluations)
    return report


PREPARED_LIMIT_BYTES = 1 << 30


def evaluate_artifact(
    artifact: Artifact, dataset: Dataset, run_dir: Path, batch_size: int = 64, threads: int | None = None,
    prepared: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """An exported model through its own runtime and preprocessing; agreement with the PyTorch student's
    predictions on the same images where `toolkit eval` has produced them. ``prepared``: inputs already
    decoded and preprocessed, by contract, shared by the artifacts of one evaluation (up to 1 GiB)."""
    session = open_classifier(artifact.path, threads=threads)
    h, w = session.contract.input_size
    key = session.contract.to_json()
    if prepared is not None and key not in prepared and len(dataset) * 3 * h * w * 4 <= PREPARED_LIMIT_BYTES:
        prepared[key] = np.concatenate(list(contract_batches(dataset, session.contract, 256)))
    if prepared is not None and key in prepared:
        inputs = prepared[key]
        logits = np.concatenate([session.run(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])
    else:
        logits = session.predict(dataset, batch_size)
    report = write_eval(logits, dataset, session.contract, run_dir, f"artifacts/{artifact.key}")
    evaluations = read_manifest(run_dir).get("evaluations", {})
    entry = evaluations.setdefault(dataset.name, {"n": report["n"], **report["dataset"]})
    entry.setdefault("artifacts", {})[artifact.key] = {
        "top1": report["top1"],
        "agreement_with_student": report.get("agreement_with_student"),
        "agreement_with_teacher": report.get("agreement_with_teacher"),
    }
    update_manifest(run_dir, evaluations=evaluations)
    return report


def format_report(report: dict[str, Any], what: str = "student (PyTorch)") -> str:
    lines = [f"{what}: top-1 {report['top1']:.4f} on {report['n']} images of {report['dataset']['name']}"]
    for who in ("student", "teacher"):
        if report.get(f"agreement_with_{who}") is not None:
            lines[0] += f", top-1 agreement with the {who} {report[f'agreement_with_{who}']:.4f}"
    for name, acc in report["per_class"].items():
        lines.append(f"  {name:<20} {'-' if acc is None else f'{acc:.4f}'}  (n={report['support'][name]})")
    return "\n".join(lines)


def _reusable_student_eval(run: Path, dataset: Dataset) -> dict[str, Any] | None:
    """The student's saved evaluation on ``dataset`` when it was computed from the current weights."""
    entry = read_manifest(run).get("evaluations", {}).get(dataset.name, {})
    folder = run / "eval" / eval_slug(dataset.name)
    if not entry.get("student_sha256") or entry.get("fingerprint") != dataset.fingerprint():
        return None
    if not (folder / "logits.npy").is_file() or entry["student_sha256"] != sha256_file(run / "student.safetensors"):
        return None
    return json.loads((folder / "metrics.json").read_text())


def evaluate_run(
    run: Path, data: str, keys: list[str], batch_size: int, console: Any,
    max_pixels: int = 64_000_000, on_bad_image: str = "error", symlinks: str = "refuse", reuse_student: bool = False,
) -> list[str]:  # fmt: skip
    """`toolkit eval`: the student and/or artifacts (``keys``; "all" = every one) on ``data``; one summary each.
    ``reuse_student``: keep the student's evaluation from training when made from the same weights and data."""
    from runtime.artifacts import backend_unavailable_reason, find_artifact, run_artifacts
    from runtime.sources import align_classes, parse_data_arg
    from toolkit.datacheck import check_dataset

    model, contract, _ = load_run_student(run)
    lines = []
    if "all" in keys:  # every artifact this machine can run; the others are named with why not
        keys = ["student"]
        for a in run_artifacts(run):
            reason = backend_unavailable_reason(a.backend)
            if reason:
                lines.append(f"{a.label}: not evaluated here: {reason}")
            else:
                keys.append(a.key)
    keys = list(dict.fromkeys(keys))
    chosen = [None if k == "student" else find_artifact(run, k) for k in keys]
    names = list(contract.class_names)
    dataset = align_classes(parse_data_arg(data, max_pixels, symlinks).open(names), names)
    dataset, _ = check_dataset(dataset, on_bad_image, console)
    prepared: dict[str, np.ndarray] = {}
    for a in chosen:
        if a is None:
            saved = _reusable_student_eval(run, dataset) if reuse_student else None
            if saved is not None:
                lines.append(format_report(saved).split("\n")[0] + " (computed at training, same weights)")
                continue
            lines.append(format_report(evaluate_student(model, dataset, contract, run, batch_size)))
        else:
            report = evaluate_artifact(a, dataset, run, batch_size, prepared=prepared)
            lines.append(format_report(report, a.label).split("\n")[0])
    return lines
