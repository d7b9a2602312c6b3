"""`toolkit`: distil a large teacher into a small classifier, export it and measure it on the device."""

from __future__ import annotations

import contextlib
import sys
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from runtime.errors import ToolkitError
from toolkit import defaults

if TYPE_CHECKING:
    from toolkit.recipe import Recipe

app = typer.Typer(
    name="toolkit",
    help=__doc__,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True, markup=False)
out = Console(markup=False)

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a recipe value: --set train.epochs=5 (repeatable; YAML values)."),
]


def _overrides(sets: list[str] | None, **flags: object) -> list[str]:
    """Dedicated flags become --set overrides, so they are validated exactly like recipe keys."""
    extra = [f"{key}={value}" for key, value in flags.items() if value is not None]
    return list(sets or []) + extra


TargetsFile = Annotated[
    Path | None, typer.Option("--targets-file", help="YAML of extra or overriding target profiles (same shape).")
]


def _default_run_dir(name: str) -> Path:
    return Path("runs") / name


def _locked(run_dir: Path):  # noqa: ANN202 - a context manager
    """One writer per run directory: a second command on it exits naming the holder."""
    from runtime.locks import run_lock

    return run_lock(run_dir, "toolkit " + " ".join(sys.argv[1:3]), log=console.print)


def _refuse_prune_section(recipe: Recipe, command: str) -> None:
    """A recipe's prune section is `toolkit run`'s: another command would silently leave it unused."""
    if recipe.prune is not None:
        raise ToolkitError(
            f"prune: `toolkit {command}` does not prune; run `toolkit run RECIPE` (it prunes after {command}ing) "
            "or `toolkit prune RUN` afterwards, or remove the section"
        )


@app.command()
def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (see recipes/).")],
    set_: SetOption = None,
    epochs: Annotated[int | None, typer.Option(help="Override train.epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Override train.batch_size (global).")] = None,
    lr: Annotated[float | None, typer.Option(help="Override train.optimizer.lr.")] = None,
    device: Annotated[str | None, typer.Option(help="Override train.device: auto, cpu, cuda, cuda:N.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override seed.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run directory (default runs/<name>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its last checkpoint.")] = False,
    force: Annotated[bool, typer.Option(help="Overwrite an existing run directory.")] = False,
) -> None:
    """Train a student with cross-entropy only (the papers' "w/o KD" row). Works under torchrun for DDP."""
    from toolkit.recipe import load_recipe
    from toolkit.training import run_train

    overrides = _overrides(
        set_,
        **{
            "train.epochs": epochs,
            "train.batch_size": batch_size,
            "train.optimizer.lr": lr,
            "train.device": device,
            "seed": seed,
        },
    )
    r = load_recipe(recipe, overrides)
    _refuse_prune_section(r, "train")
    run_dir = out_dir or _default_run_dir(r.name)
    t0 = time.perf_counter()
    with _locked(run_dir):
        metrics = run_train(r, run_dir, resume=resume, force=force, console=console)
    if metrics:
        console.print(f"run directory: {run_dir}  ({time.perf_counter() - t0:.0f}s)")


@app.command()
def distill(
    recipe: Annotated[
        Path,
        typer.Argument(
            help="Recipe YAML with a distill section, or (with --resume) a run "
            "directory: its saved config.yaml is the recipe."
        ),
    ],  # fmt: skip
    set_: SetOption = None,
    method: Annotated[str | None, typer.Option(help="Override distill.method (toolkit methods).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Override train.epochs.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override seed.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run directory (default runs/<name>).")] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Skip finished stages, continue the interrupted one from its last "
            "checkpoint (bit-identical to an uninterrupted run)."
        ),
    ] = False,  # fmt: skip
    force: Annotated[bool, typer.Option(help="Overwrite an existing run directory.")] = False,
) -> None:
    """Run every stage of the recipe's distillation method; builds or reuses the teacher-output cache.
    Works under torchrun (DDP): each stage trains on every rank, rank 0 writes."""
    from toolkit.distilling import run_distill
    from toolkit.recipe import load_recipe

    overrides = _overrides(set_, **{"distill.method": method, "train.epochs": epochs, "seed": seed})
    if recipe.is_dir():
        if not resume:
            raise ToolkitError(f"{recipe}: a run directory; pass --resume to continue it, or give a recipe YAML")
        out_dir = out_dir or recipe
        recipe = recipe / "config.yaml"
        if not recipe.is_file():
            raise ToolkitError(f"{recipe}: missing; {recipe.parent} is not a run directory of `toolkit distill`")
    r = load_recipe(recipe, overrides)
    _refuse_prune_section(r, "distill")
    run_dir = out_dir or _default_run_dir(r.name)
    t0 = time.perf_counter()
    with _locked(run_dir):
        metrics = run_distill(r, run_dir, force=force, resume=resume, console=console)
    if metrics:
        test = f", test top-1 {metrics['test_top1']:.4f}" if "test_top1" in metrics else ""
        console.print(f"run directory: {run_dir}  ({time.perf_counter() - t0:.0f}s{test})")


@app.command("run")
def run_(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (distill or train, export, bench sections).")],
    set_: SetOption = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run directory (default runs/<name>).")] = None,
    force: Annotated[bool, typer.Option(help="Start over: delete the run directory first.")] = False,
) -> None:
    """Distill -> export (INT8, guarded) -> eval -> bench -> report in one run directory; a rerun skips every
    step whose inputs and outputs are unchanged (pipeline.json), so it continues where a crash stopped it."""
    from toolkit.pipeline import run_pipeline
    from toolkit.recipe import load_recipe

    r = load_recipe(recipe, set_)
    run_dir = out_dir or _default_run_dir(r.name)
    with _locked(run_dir):
        _print_headline(run_pipeline(r, run_dir, console, force=force))


def _print_headline(h: dict) -> None:
    parts = [f"finished in {h['seconds']:.0f}s"]
    if h["teacher_top1"] is not None:
        parts.append(f"teacher top-1 {h['teacher_top1']:.4f}")
    parts.append(f"student top-1 {h['student_top1']:.4f}")
    if h["int8"]:
        parts.append(f"{h['int8']['artifact']} top-1 {h['int8']['top1']:.4f}")
    if h["fastest_p90"]:
        p90, artifact, target = h["fastest_p90"]
        parts.append(f"fastest batch-1 p90 {p90:.2f} ms ({artifact} on {target})")
    out.print("; ".join(parts) + f". Report: {h['report']}")
    for line in h.get("ship", []):
        out.print(line)


@app.command()
def methods(
    name: Annotated[str | None, typer.Argument(help="A method: print its stages, losses and hyperparameters.")] = None,
) -> None:
    """List distillation methods, one line each; with a name, its stages (what trains, what is frozen, losses)."""
    from distill.methods.registry import get_method, list_methods

    if name is None:
        table = Table()
        for col in ("method", "stages", "summary"):
            table.add_column(col, no_wrap=col != "summary")
        for m in map(get_method, list_methods()):
            table.add_row(m.name, " -> ".join(m.stage_names), m.summary)
        out.print(table)
        return
    m = get_method(name)
    out.print(f"{m.name}: {m.summary} [{m.paper}]")
    if m.student_kind == "vlm":
        out.print("  student: a vision-language model (student.name: openclip:<model>/<pretrained> or conse:...)")
    if m.teacher_outputs == "topk":
        out.print("  teacher cache: top-K logits + log-sum-exp per crop (distill.params.fdbpl_topk)")
    for s in m.stages:
        out.print(f"  stage {s.name} ({s.kind}): {s.description}")
        out.print(f"    trains: {', '.join(s.trains)}")
        out.print(f"    frozen: {', '.join(s.frozen) or '-'}")
        for t in s.losses:
            out.print(f"    loss {t.name} x {t.weight}: {t.description}")
        if s.requires:
            out.print(f"    requires: {', '.join(s.requires)}")
    out.print(f"  params (override with distill.params.<name>): {m.params}")


@app.command("eval")
def eval_(
    run: Annotated[Path, typer.Argument(help="A training run directory.")],
    data: Annotated[
        str, typer.Option(help="ImageFolder dir, CSV manifest (path,label) or fashion_mnist:<train|test>[:DIR].")
    ],
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 256,
    on_bad_image: Annotated[
        str, typer.Option(help="error: stop naming the file; skip: leave it out and count it.")
    ] = "error",
    max_pixels: Annotated[int, typer.Option(help="Reject images larger than this many pixels.")] = 64_000_000,
    symlinks: Annotated[
        str, typer.Option(help="refuse: a symlink loop or a link out of the folder is an error; follow_once.")
    ] = "refuse",
    artifact: Annotated[
        list[str],
        typer.Option(
            help="student (the PyTorch model), an exported artifact of the run (onnx, int8_onnxruntime, "
            "int8_tensorrt, openvino, int8_openvino), or all. Repeatable."
        ),
    ] = ["student"],  # noqa: B006 - typer reads list defaults
) -> None:
    """Top-1, per-class accuracy, confusion matrix and logits of a run's student or exported artifacts,
    each through its own preprocessing, written to RUN/eval/<data>/ (artifacts under artifacts/<name>/)."""
    from toolkit.evaluation import evaluate_run

    with _locked(run):
        for line in evaluate_run(run, data, artifact, batch_size, console, max_pixels, on_bad_image, symlinks):
            out.print(line)


@app.command("export")
def export_(
    run: Annotated[Path, typer.Argument(help="A training run directory (with student.safetensors).")],
    int8: Annotated[bool, typer.Option("--int8", help="Also write calibrated INT8 models, one per --backend.")] = False,
    backend: Annotated[
        list[str],
        typer.Option(
            help="Target(s): onnxruntime (INT8: QDQ U8S8 for ORT CPU -> model.int8.onnx), tensorrt (INT8: "
            "symmetric S8S8 QDQ, TensorRT's explicit-quantization input -> model.int8.tensorrt.onnx), openvino "
            "(IR in model.openvino/; INT8 by NNCF in model.int8.openvino/), or all. Repeatable."
        ),
    ] = ["onnxruntime"],  # noqa: B006 - typer reads list defaults
    format_: Annotated[
        list[str] | None,
        typer.Option(
            "--format",
            help="Phone/board format(s) beside the ONNX model: executorch (model.pte, XNNPACK delegate; INT8 "
            "model.int8.pte with --int8). Repeatable.",
        ),
    ] = None,
    calib_size: Annotated[
        int, typer.Option(help="Calibration images, class-stratified from the run's training split.")
    ] = defaults.CALIB_SIZE,
    calib_method: Annotated[
        str,
        typer.Option(
            help="minmax (default; 2-4 GB), entropy or percentile. The histogram methods can need up to 16 GB "
            "for MobileNetV2 with 256 images; their intermediate outputs are processed 8 batches at a time to "
            "bound memory, and a smaller --calib-size bounds it further."
        ),
    ] = defaults.CALIB_METHOD,
    tolerance: Annotated[
        float, typer.Option(help="Largest accepted top-1 drop of INT8 vs FP32, in points, on held-out images.")
    ] = defaults.TOLERANCE_POINTS,
    min_agreement: Annotated[
        float, typer.Option(help="Smallest accepted top-1 agreement of INT8 with FP32, in %, on held-out images.")
    ] = defaults.MIN_AGREEMENT_PCT,
    max_class_drop: Annotated[
        float, typer.Option(help="Largest accepted accuracy drop of any one class, in points, on held-out images.")
    ] = defaults.MAX_CLASS_DROP_POINTS,
    max_kl: Annotated[
        float, typer.Option(help="Largest accepted mean KL(FP32 || INT8) of the softmax outputs, in nats.")
    ] = defaults.MAX_KL,
    max_float_layers: Annotated[
        int, typer.Option(help="How many of the most sensitive activations the guard may keep in float.")
    ] = defaults.MAX_FLOAT_LAYERS,
    held_out_images: Annotated[
        int, typer.Option(help="Validation-split images the accuracy guard measures on.")
    ] = defaults.HELD_OUT_IMAGES,
    allow_fail: Annotated[
        bool, typer.Option(help="Keep a FAIL verdict's artifact and exit 0 (it is marked FAIL in its metadata).")
    ] = False,
    target: Annotated[
        list[str] | None,
        typer.Option(
            help="Export only what this target profile runs (its backend; INT8 if it runs INT8). "
            "Repeatable; replaces --backend and --int8."
        ),
    ] = None,  # fmt: skip
    targets_file: TargetsFile = None,
    recover: Annotated[
        str,
        typer.Option(
            help="qad: also fine-tune a fake-quantized student by distillation from its FP32 self and export it "
            "with every layer INT8 (model.int8.qad.onnx, model.int8.qad.tensorrt.onnx, model.int8.qad.openvino/); "
            "auto: only for a target whose PTQ guard failed; none."
        ),
    ] = "none",
    qad_epochs: Annotated[int, typer.Option(help="QAD fine-tuning epochs.")] = defaults.QAD_EPOCHS,
    qad_lr: Annotated[
        float | None, typer.Option(help="QAD learning rate (default: the recipe's train.optimizer.lr / 1000).")
    ] = None,
    qad_images: Annotated[
        int | None,
        typer.Option(help="Fine-tune QAD on this many training images, class-stratified (default: all of them)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted QAD fine-tuning from RUN/qad/checkpoints.")
    ] = False,
    keep_float: Annotated[
        list[str] | None,
        typer.Option(help="A node of model.onnx the ONNX INT8 forms keep in float (repeatable, or NAME,NAME)."),
    ] = None,
    keep_float_from: Annotated[
        Path | None,
        typer.Option(
            help="Keep in float the nodes a JSON file names: a run's report.json or manifest.json (the nodes its "
            'ONNX INT8 guards kept in float), {"keep_float": [...]} or a list of node names. Adds to --keep-float.'
        ),
    ] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset of model.onnx and its INT8 forms (18-23).")] = defaults.OPSET,
    tensorrt_quantizer: Annotated[
        str,
        typer.Option(
            help="Who writes model.int8.tensorrt.onnx: onnxruntime (ONNX Runtime's quantizer, default) or modelopt "
            "(NVIDIA ModelOpt's ONNX PTQ: float weights behind Q/DQ, FP16 for layers left out of INT8; extra "
            "'modelopt')."
        ),
    ] = "onnxruntime",
    slim: Annotated[
        bool,
        typer.Option(
            help="Clean model.onnx up with onnxslim before everything made from it (changes nothing for the "
            "registered CNN students; fewer nodes for transformer-style timm students, see README)."
        ),
    ] = False,
    fp16: Annotated[
        bool,
        typer.Option(
            help="Also write model.fp16.onnx (FP16 compute, FP32 inputs and outputs), parity-checked against "
            "model.onnx, and its TensorRT FP16 engine where TensorRT and a GPU exist."
        ),
    ] = False,
    calib_seeds: Annotated[
        int,
        typer.Option(
            help="Also quantize the ONNX INT8 forms from this many class-stratified calibration samples (seeds "
            "seed, seed+1, ...) and report held-out top-1 mean +- std: how much INT8 depends on the sample."
        ),
    ] = defaults.CALIB_SEEDS,
) -> None:
    """ONNX export with a PyTorch-vs-ONNX Runtime parity check, then INT8 per target with an accuracy guard."""
    from runtime.fidelity import GuardCriteria
    from toolkit.exporting import keep_float_names, run_export
    from toolkit.formats import INT8_BACKENDS, MOBILE

    targets = INT8_BACKENDS if "all" in backend else tuple(dict.fromkeys(backend))
    formats = tuple(dict.fromkeys(format_ or ()))
    if target:
        from runtime.targets import get_target, load_targets

        profiles = [get_target(name, load_targets(targets_file)) for name in target]
        targets = tuple(dict.fromkeys(p.backend for p in profiles if p.backend not in MOBILE))
        formats = tuple(dict.fromkeys(p.backend for p in profiles if p.backend in MOBILE))
        int8 = any("int8" in p.precisions for p in profiles)
        fp16 = any("fp16" in p.precisions for p in profiles if p.backend in ("onnxruntime", "tensorrt"))
    with _locked(run):
        run_export(
            run,
            int8=int8,
            targets=targets,
            calib_size=calib_size,
            calib_method=calib_method,
            criteria=GuardCriteria(tolerance, min_agreement, max_class_drop, max_kl),
            max_float_layers=max_float_layers,
            held_out_images=held_out_images,
            allow_fail=allow_fail,
            recover=recover,
            qad_epochs=qad_epochs,
            qad_lr=qad_lr,
            qad_images=qad_images,
            resume=resume,
            formats=formats,
            keep_float=tuple(
                dict.fromkeys(
                    [
                        *(n for item in keep_float or () for n in item.split(",") if n),
                        *(keep_float_names(keep_float_from) if keep_float_from else ()),
                    ]
                )
            ),
            opset=opset,
            calib_seeds=calib_seeds,
            fp16=fp16,
            slim=slim,
            tensorrt_quantizer=tensorrt_quantizer,
            console=console,
        )


@app.command()
def prune(
    run: Annotated[Path, typer.Argument(help="A training or distillation run directory (with student.safetensors).")],
    macs: Annotated[float | None, typer.Option(help="Keep at most this fraction of the MACs (e.g. 0.5).")] = None,
    params: Annotated[float | None, typer.Option(help="Keep at most this fraction of the parameters.")] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Pruned run directory (default RUN-pruned<NN>).")
    ] = None,
    recover: Annotated[
        str, typer.Option(help="kd: distil from the unpruned student (logits cached once); ce: labels only; none.")
    ] = "kd",
    epochs: Annotated[int, typer.Option(help="Recovery epochs.")] = 5,
    lr: Annotated[float | None, typer.Option(help="Recovery learning rate (default: the recipe's).")] = None,
    temperature: Annotated[float, typer.Option(help="KD temperature.")] = 4.0,
    alpha: Annotated[float, typer.Option(help="KD weight; CE gets 1 - alpha.")] = 0.9,
    bn_images: Annotated[
        int, typer.Option(help="Training images to re-estimate BatchNorm statistics on after pruning (0: skip).")
    ] = 1024,
    round_to: Annotated[int, typer.Option(help="Channel counts become multiples of this (8 or 16 for INT8).")] = 8,
    max_layer_ratio: Annotated[float, typer.Option(help="At most this fraction of any layer's channels goes.")] = 0.75,
    global_pruning: Annotated[
        bool, typer.Option("--global", help="Rank channel groups across layers (default: the same ratio per layer).")
    ] = False,
    keep: Annotated[list[str] | None, typer.Option(help="A layer name to leave whole (repeatable).")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite the output directory.")] = False,
) -> None:
    """Structured pruning (Torch-Pruning's dependency graph) toward a MACs or parameter budget, then accuracy
    recovery by distillation from the unpruned model, into a new run that export/eval/bench/report take."""
    from toolkit.pruning import run_prune

    budget = macs if macs is not None else params
    out_dir = out_dir or run.with_name(f"{run.name}-pruned{int(round((budget or 0) * 100)):02d}")
    with _locked(out_dir):
        info = run_prune(run, out_dir, macs=macs, params=params, round_to=round_to, max_layer_ratio=max_layer_ratio,
                         global_pruning=global_pruning, keep=tuple(keep or ()), recover=recover, epochs=epochs, lr=lr,
                         temperature=temperature, alpha=alpha, bn_images=bn_images, force=force,
                         console=console)  # fmt: skip
    test = (
        f", test top-1 {info['test_top1']:.4f} (unpruned {info['test_top1_unpruned']:.4f})"
        if "test_top1" in info
        else ""
    )
    console.print(f"pruned run: {out_dir} (MACs x{info['macs_ratio']:.2f}, params x{info['params_ratio']:.2f}{test})")


@app.command()
def classes(
    run: Annotated[Path, typer.Argument(help="A run whose student is a vision-language model (distill.method fdbpl).")],
    add: Annotated[str, typer.Option(help="Class names to add, comma-separated (e.g. 'Sneaker,Ankle boot').")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="New run directory (default RUN-classes).")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite the output directory.")] = False,
) -> None:
    """Add class names to a prompt-learned vision-language student without retraining: its learned prompt embeds
    them, into a new run directory that export, eval, bench and report take."""
    from toolkit.classes import run_add_classes

    out_dir = out_dir or run.with_name(f"{run.name}-classes")
    with _locked(out_dir):
        metrics = run_add_classes(run, add.split(","), out_dir, force, console)
    console.print(f"run with {len(metrics['classes']['classes'])} classes: {out_dir}")


@app.command()
def engine(
    run: Annotated[Path, typer.Argument(help="An exported run directory (model.int8.tensorrt.onnx, model.fp16.onnx).")],
) -> None:
    """Rebuild the run's TensorRT engines from its exported ONNX files for this machine's TensorRT and GPU."""
    from toolkit.engines import rebuild_engines

    with _locked(run):
        built = rebuild_engines(run, console)
    if not any(e.get("built") for e in built.values()):
        raise ToolkitError("no engine built: " + next(iter(built.values())).get("reason", "unknown"))


@app.command()
def formats(targets_file: TargetsFile = None) -> None:
    """List every export format: how to ask for it, its files, the targets that measure it, the extra that
    installs it, whether it is installed here and the options that apply to it."""
    from runtime.targets import load_targets
    from toolkit.formats import FORMATS

    profiles = load_targets(targets_file).values()
    table = Table()
    for col in ("format", "ask with", "files", "measured on", "extra", "installed here", "options"):
        table.add_column(col, no_wrap=col == "format")
    for f in FORMATS.values():
        missing = f.missing()
        measured = [t.name for t in profiles if t.backend in f.engines and set(t.precisions) & set(f.files)]
        table.add_row(f.name, f.ask, ", ".join(f"{p}: {file}" for p, file in f.files.items()),
                      ", ".join(measured) or "-", f.extra or "(base)",
                      "yes" if missing is None else f"no: {missing} missing", " ".join(f.options) or "-")  # fmt: skip
    out.print(table)


@app.command()
def targets(
    name: Annotated[
        str | None, typer.Argument(help="One profile: all its fields, and how to measure on its device.")
    ] = None,
    targets_file: TargetsFile = None,
) -> None:
    """List edge target profiles and whether this machine can run each (and why not)."""
    from runtime.targets import NEEDS_TORCH, get_target, load_targets

    if name is not None:
        t = get_target(name, load_targets(targets_file))
        out.print(f"{t.name}: {t.description}")
        engine = t.backend + (f" ({t.provider or t.device})" if t.provider or t.device else "")
        out.print(f"  {engine}; precisions {', '.join(t.precisions)}; threads {t.threads or 'all'}; batch sizes "
                  f"{', '.join(map(str, t.batch_sizes))}")  # fmt: skip
        reason = t.unavailable_reason()
        out.print(f"  available here: {'yes' if reason is None else 'no: ' + reason}")
        steps = t.how_to_measure()
        if steps:
            out.print(f"  how to measure on {t.runs_on['device']}:")
            for i, step in enumerate(steps, 1):
                out.print(f"    {i}. {step}")
        return
    table = Table()
    for col in ("name", "backend", "precisions", "threads", "batch sizes", "available here"):
        table.add_column(col, no_wrap=col == "name")
    for t in load_targets(targets_file).values():
        reason = t.unavailable_reason()
        engine = t.backend + (f" ({t.provider or t.device})" if t.provider or t.device else "")
        table.add_row(
            t.name,
            engine,
            ",".join(t.precisions),
            str(t.threads or "all"),
            ",".join(map(str, t.batch_sizes)),
            ("yes" if reason is None else f"no: {reason}")
            + ("; its Python runtime needs torch" if t.backend in NEEDS_TORCH else ""),
        )
    out.print(table)


@app.command()
def bench(
    path: Annotated[Path, typer.Argument(help="A run directory (every exported artifact) or one model file.")],
    target: Annotated[
        list[str] | None,
        typer.Option("--target", "-t", help="Target profile (see `toolkit targets`; default ort-cpu-1t). Repeatable."),
    ] = None,
    min_duration: Annotated[
        float, typer.Option(help="Seconds each scenario runs at least (MLPerf: 600).")
    ] = defaults.MIN_DURATION_S,
    min_queries: Annotated[int, typer.Option(help="Queries each scenario runs at least.")] = defaults.MIN_QUERIES,
    warmup: Annotated[int, typer.Option(help="Untimed queries before each scenario.")] = defaults.WARMUP_QUERIES,
    max_duration: Annotated[
        float, typer.Option(help="Cap per scenario, for very slow models.")
    ] = defaults.MAX_DURATION_S,
    targets_file: TargetsFile = None,
    tune: Annotated[
        bool,
        typer.Option(
            help="First sweep session settings per artifact (static shape, hints, streams, graph "
            "optimisation, ...), keep the fastest; recorded in RUN/bench/tuning/ and reused."
        ),
    ] = False,  # fmt: skip
    cross_check: Annotated[
        bool,
        typer.Option(
            help="Also time each artifact with its engine's own tool (benchmark_app, "
            "onnxruntime_perf_test, trtexec) and record both figures."
        ),
    ] = False,  # fmt: skip
    rounds: Annotated[
        int, typer.Option(help="SingleStream rounds; the spread of their p50s is the noise.")
    ] = defaults.ROUNDS,
    import_file: Annotated[
        Path | None,
        typer.Option(
            "--import",
            help="Read back what a device measured instead of measuring here: its `toolkit bench` JSON, LiteRT "
            "benchmark_model's output, or a hand-written YAML (with --target and --artifact for the last two).",
        ),
    ] = None,
    artifact: Annotated[
        str | None, typer.Option(help="--import of benchmark_model output or a YAML: the run's artifact key.")
    ] = None,
) -> None:
    """SingleStream latency (p50/p90/p95/p99) and Offline throughput per artifact and target -> RUN/bench/."""
    from runtime.latency import RunLimits
    from toolkit.benching import record_bench_summary, run_bench

    if import_file is not None:
        from toolkit.bench_import import import_results

        if not path.is_dir():
            raise ToolkitError(f"{path}: --import reads results back into a run directory")
        given = list(dict.fromkeys(target or []))
        if len(given) > 1:
            raise ToolkitError("--import takes one --target")
        with _locked(path):
            result = import_results(path, import_file, given[0] if given else None, artifact, targets_file)
            record_bench_summary(path, {result["target"]["name"]: result})
        out.print(f"{import_file}: {len(result['artifacts'])} measurement(s) of target {result['target']['name']} "
                  f"imported ({result['imported']['verified']})")  # fmt: skip
    elif artifact is not None:
        raise ToolkitError("--artifact is used with --import only")
    else:
        limits = RunLimits(warmup, min_duration, min_queries, max_duration, rounds)
        with _locked(path) if path.is_dir() else contextlib.nullcontext():
            run_bench(path, list(dict.fromkeys(target or ["ort-cpu-1t"])), limits, console, targets_file, tune,
                      cross_check)  # fmt: skip
    if path.is_dir():
        from runtime.report import build_report
        from runtime.verdict import describe_verdict

        for v in build_report(path)["verdicts"]:
            out.print(describe_verdict(v))


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="A run directory.")],
    dataset: Annotated[
        str | None, typer.Option(help="Which evaluation the ladder uses (default: the test set, else the first).")
    ] = None,
) -> None:
    """report.md, a self-contained report.html and report.json: fidelity ladder, latency per target, sizes,
    calibration and guard decisions, training curves, plots. Reads what eval, export and bench wrote."""
    from runtime.report import build_report
    from runtime.report_render import render

    with _locked(run):
        paths = render(build_report(run, dataset), run)
    out.print("\n".join(f"{kind}: {path}" for kind, path in paths.items()))


teacher_app = typer.Typer(help="Vision-language teachers: zero-shot top-1, CoOp prompt calibration (PAND PSC).")
app.add_typer(teacher_app, name="teacher")
TeacherBackend = Annotated[
    str,
    typer.Option(help="What runs the teacher's image encoder: auto (OpenVINO, else ONNX Runtime, on CPU), torch, "
                 "openvino, onnxruntime."),
]  # fmt: skip
TeacherSpec = Annotated[str, typer.Option("--teacher", help="Teacher spec (see `toolkit teachers`).")]
OpenClipConfig = Annotated[
    Path | None, typer.Option(help="An OpenCLIP model-config JSON to register first (custom architectures).")
]
Template = Annotated[str, typer.Option(help="Prompt template with one {} for the class name.")]


@app.command()
def teachers() -> None:
    """List teacher backends and their spec strings."""
    from distill.teachers.registry import list_teachers

    table = Table()
    for col in ("scheme", "example spec", "offline", "description"):
        table.add_column(col, no_wrap=col != "description")
    for b in list_teachers():
        table.add_row(b.scheme, b.example, "yes" if b.offline else "no", b.description)
    out.print(table)


@teacher_app.command("zeroshot")
def teacher_zeroshot(
    data: Annotated[
        str, typer.Option(help="ImageFolder, CSV manifest or fashion_mnist:<split>.")
    ] = "fashion_mnist:test",
    teacher: TeacherSpec = "conse:efficientnet_lite0+minilm",
    template: Template = "a photo of a {}, a type of clothing.",
    anchors: Annotated[Path | None, typer.Option(help="Calibrated anchors from `toolkit teacher calibrate`.")] = None,
    limit: Annotated[int, typer.Option(help="Evaluate a class-stratified subset of about this many images.")] = 0,
    openclip_config: OpenClipConfig = None,
    run: Annotated[
        Path | None, typer.Option(help="Also save the teacher's logits in this run (the report's ladder starts there).")
    ] = None,
    backend: TeacherBackend = "auto",
) -> None:
    """The teacher's zero-shot top-1 on a dataset (template prompts, or calibrated anchors)."""
    from toolkit.teaching import run_zeroshot

    with _locked(run) if run is not None else contextlib.nullcontext():
        r = run_zeroshot(teacher, data, template, anchors, console, openclip_config, limit, run, backend)
    out.print(f"{r['teacher']}: top-1 {r['top1']:.4f} on {r['n']} images of {r['data']} ({r['anchors']})")


@teacher_app.command("calibrate")
def teacher_calibrate(
    out_file: Annotated[
        Path, typer.Option("--out", help="Anchors file to write (.safetensors; a .json report beside).")
    ],
    data: Annotated[str, typer.Option(help="Training images for CoOp.")] = "fashion_mnist:train",
    eval_data: Annotated[
        str | None, typer.Option(help="Held-out images: top-1 before and after calibration.")
    ] = "fashion_mnist:test",
    shots: Annotated[int, typer.Option(help="Images per class from --data (0: all).")] = 30,
    teacher: TeacherSpec = "conse:efficientnet_lite0+minilm",
    template: Template = "a photo of a {}, a type of clothing.",
    n_ctx: Annotated[int, typer.Option(help="Learned context vectors (CoOp N_ctx).")] = 16,
    epochs: Annotated[int, typer.Option(help="CoOp epochs (PAND: 200).")] = 50,
    lr: Annotated[float, typer.Option(help="SGD learning rate (PAND: 0.002).")] = 0.002,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 32,
    seed: Annotated[int, typer.Option(help="Seed for the few-shot sample, context init and order.")] = 0,
    openclip_config: OpenClipConfig = None,
    backend: TeacherBackend = "auto",
) -> None:
    """PAND stage PSC: learn a shared prompt context on the frozen teacher; save the class anchors F_txt."""
    from distill.teachers.coop import CoOpConfig
    from toolkit.teaching import run_calibrate

    config = CoOpConfig(n_ctx=n_ctx, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    r = run_calibrate(teacher, data, eval_data, template, shots, config, out_file, console, openclip_config, backend)
    line = f"{r['teacher']}: CoOp on {r['train_data']['n']} images"
    if r["eval_data"]:
        line += (
            f"; top-1 on {r['eval_data']['n']} images of {r['eval_data']['name']}: "
            f"{r['top1_zero_shot']:.4f} zero-shot -> {r['top1_calibrated']:.4f} calibrated"
        )
    out.print(f"{line}. Anchors: {out_file}")


cache_app = typer.Typer(help="Teacher-output cache: M replayable crops per image with the teacher's outputs.")
app.add_typer(cache_app, name="cache")


@cache_app.command("build")
def cache_build(
    out_dir: Annotated[Path, typer.Option("--out", help="Cache directory.")],
    data: Annotated[str, typer.Option(help="Training images.")] = "fashion_mnist:train",
    teacher: TeacherSpec = "conse:efficientnet_lite0+minilm",
    crops: Annotated[int, typer.Option(help="Crops per image (M).")] = 8,
    scale: Annotated[tuple[float, float], typer.Option(help="RandomResizedCrop area range.")] = (0.35, 1.0),
    hflip: Annotated[float, typer.Option(help="Horizontal flip probability.")] = 0.5,
    pipeline: Annotated[
        str, typer.Option(help="crop: RandomResizedCrop + flip; vl2lite: the papers' augmentation, every draw stored.")
    ] = "crop",
    resize: Annotated[int, typer.Option(help="vl2lite: first resize to resize x resize.")] = 256,
    size: Annotated[int, typer.Option(help="vl2lite: the augmented view's side.")] = 224,
    teacher_input_size: Annotated[
        int | None, typer.Option(min=1, help="Side the teacher sees each view at (default: its own input size).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Crop sampling seed.")] = 0,
    shard_size: Annotated[int, typer.Option(help="Images per shard (the unit of resume and of sharding).")] = 1024,
    topk: Annotated[
        int, typer.Option(help="Also store top-K zero-shot logits + log-sum-exp (0: embeddings only).")
    ] = 0,
    template: Template = "a photo of a {}, a type of clothing.",
    anchors: Annotated[Path | None, typer.Option(help="Calibrated anchors for the top-K logits.")] = None,
    openclip_config: OpenClipConfig = None,
) -> None:
    """Build the cache (resumes a killed build, rebuilds a stale one). Under torchrun each rank builds its shards."""
    from distill.crops import CropRecipe
    from toolkit.caching import run_cache_build

    if pipeline == "vl2lite" and scale != (0.35, 1.0):
        raise ToolkitError("--scale is not used by --pipeline vl2lite (it draws its own crops); remove it")
    if pipeline == "crop" and (resize, size) != (256, 224):
        raise ToolkitError("--resize and --size are used by --pipeline vl2lite only; remove them")
    recipe = CropRecipe(scale=scale, hflip=hflip, pipeline=pipeline, resize=resize, size=size)
    r = run_cache_build(
        out_dir,
        teacher,
        data,
        crops,
        recipe,
        seed,
        shard_size,
        topk,
        template,
        anchors,
        console,
        openclip_config,
        teacher_input_size,
    )
    out.print(f"{out_dir}: {r['built_shards']} shard(s) built in {r['seconds']:.1f}s for {r['images']} images"
              + ("" if r["complete"] else " (this rank's part)"))  # fmt: skip


@cache_app.command("verify")
def cache_verify(path: Annotated[Path, typer.Argument(help="Cache directory.")]) -> None:
    """Check every shard against its checksum; say what the cache holds."""
    from distill.teacher_cache import TeacherCache

    cache = TeacherCache(path, verify=True)
    s = cache.spec
    side = "x".join(str(v) for v in s.teacher_input["input_size"])
    out.print(
        f"{path}: OK, {s.num_images} images x {s.crops} crops of {s.dataset} ({s.recipe.get('pipeline', 'crop')}), "
        f"teacher {s.teacher} at {side} px, top-K {s.topk}"
    )


@app.command()
def students(pattern: Annotated[str, typer.Argument(help="Glob over registered names.")] = "*") -> None:
    """List registered students (any other timm model name works too)."""
    from distill.students import get_student, list_students

    table = Table()
    table.add_column("name", no_wrap=True)
    table.add_column("timm architecture", no_wrap=True)
    table.add_column("offline weights")
    table.add_column("description")
    for name in list_students(pattern):
        spec = get_student(name)
        table.add_row(name, spec.timm_name, "yes" if spec.offline_weights else "no", spec.description)
    out.print(table)


@app.command()
def recipe(
    path: Annotated[Path, typer.Argument(help="Recipe YAML.")],
    set_: SetOption = None,
) -> None:
    """Validate a recipe and print it resolved (defaults filled, overrides applied)."""
    from toolkit.recipe import load_recipe, recipe_to_yaml

    out.print(recipe_to_yaml(load_recipe(path, set_)), end="", highlight=False)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory.")] = Path("runs/demo"),
    set_: SetOption = None,
    force: Annotated[bool, typer.Option(help="Start the demo over instead of continuing an earlier one.")] = False,
) -> None:
    """Offline demo on this CPU: the ConSE teacher calibrated with PSC, PAND into a ResNet-18 on real
    Fashion-MNIST (30 images per class), INT8 for this CPU, bench, report (toolkit run on the embedded recipe)."""
    from toolkit.pipeline import run_pipeline
    from toolkit.recipe import load_recipe

    with resources.as_file(resources.files("toolkit") / "recipes" / "demo.yaml") as path:
        r = load_recipe(path, set_)
    with _locked(out_dir):
        _print_headline(run_pipeline(r, out_dir, console, force=force))


lavid_app = typer.Typer(help="LaViD: MCQ sets and language-model concept signatures.", no_args_is_help=True)
app.add_typer(lavid_app, name="lavid")
LanguageModelOption = Annotated[
    str, typer.Option("--model", help="smollm2 (offline, shipped), a local folder, or a Hugging Face causal LM id.")
]


@lavid_app.command("signatures")
def lavid_signatures(
    mcq: Annotated[Path, typer.Argument(help="MCQ set (YAML/JSON; e.g. recipes/lavid/fashion_mnist_mcq.yaml).")],
    out_file: Annotated[Path, typer.Option("--out", help="Signatures file (.safetensors); a .json report beside it.")],
    model: LanguageModelOption = "smollm2",
    mode: Annotated[
        str,
        typer.Option(
            help="label (next-token logits of the option numbers, the paper's) or cloze "
            "(option-text likelihood; for small models)."
        ),
    ] = "cloze",  # fmt: skip
    temperature: Annotated[float, typer.Option(help="Softmax temperature over the options.")] = 1.0,
    letters: Annotated[bool, typer.Option(help="Label mode: options A-E instead of 1-5.")] = False,
    batch_size: Annotated[int, typer.Option(help="Prompts per forward pass.")] = 25,
    data: Annotated[str | None, typer.Option(help="Check the set's classes against this dataset.")] = None,
) -> None:
    """Per class and question, the language model's distribution over the options (class x Q x M)."""
    from toolkit.lavid import run_signatures

    r = run_signatures(mcq, model, mode, temperature, letters, batch_size, out_file, data, console)
    flat = r["flat_questions"]
    out.print(f"{out_file}: {len(r['questions'])} questions, mean entropy {r['mean_entropy']:.3f} nats, mean max "
              f"probability {r['mean_max_probability']:.3f}, mean pairwise JS between classes "
              f"{r['mean_pairwise_js']:.4f}; same for every class: {flat or 'none'} ({r['seconds']:.0f}s)")  # fmt: skip


@lavid_app.command("questions")
def lavid_questions(
    out_file: Annotated[Path, typer.Option("--out", help="MCQ set to write (YAML).")],
    data: Annotated[str, typer.Option(help="Dataset whose classes the questions are for.")] = "fashion_mnist:train",
    description: Annotated[str, typer.Option(help="What the images show, for the prompt.")] = "photos",
    model: LanguageModelOption = "smollm2",
    questions: Annotated[int, typer.Option(help="Questions wanted (the paper: 50).")] = 50,
    options: Annotated[int, typer.Option(help="Options per question (the paper: 5).")] = 5,
    rounds: Annotated[int, typer.Option(help="Prompts at most (malformed questions are dropped and re-asked).")] = 5,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens the model may write per prompt.")] = 4096,
) -> None:
    """Write an MCQ set with a chat LLM (the paper's generation prompt); hand-written sets work the same."""
    from toolkit.lavid import run_questions

    r = run_questions(model, data, description, questions, options, rounds, out_file, console, max_new_tokens)
    out.print(f"{r['out']}: {r['questions']} questions")


deploy_app = typer.Typer(help="Deployment bundles for an exported run.", no_args_is_help=True)
app.add_typer(deploy_app, name="deploy")


@deploy_app.command("triton")
def deploy_triton(
    run: Annotated[Path, typer.Argument(help="A run directory with exported artifacts (toolkit export).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Model repository folder to write into.")] = Path(
        "model_repository"
    ),
    artifact: Annotated[
        str,
        typer.Option(help="Which export: onnx, int8_onnxruntime, int8_tensorrt, trt_engine_int8 (QAD ones: *_qad)."),
    ] = "onnx",
    name: Annotated[str | None, typer.Option(help="Model name in the repository (default: the run's name).")] = None,
    max_batch: Annotated[int, typer.Option(help="Triton max_batch_size (dynamic batching up to it).")] = 32,
    gpu: Annotated[bool, typer.Option(help="Instances on GPU (KIND_GPU) instead of CPU.")] = False,
    trt_accelerator: Annotated[
        bool, typer.Option(help="onnxruntime backend on GPU: run it through TensorRT (INT8) as Triton's accelerator.")
    ] = False,
) -> None:
    """Write a Triton Inference Server model repository (config.pbtxt, labels, model file) for one artifact."""
    from runtime.artifacts import find_artifact
    from toolkit.evaluation import load_run_student
    from toolkit.triton import write_repository

    chosen = find_artifact(run, artifact)
    _, contract, recipe = load_run_student(run)
    model_name = name or str(recipe.get("name", run.name))
    folder = write_repository(chosen.path, list(contract.class_names), out_dir, model_name, max_batch, gpu,
                              trt_accelerator)  # fmt: skip
    out.print(f"{folder}: config.pbtxt, labels.txt, 1/{next((folder / '1').iterdir()).name}")


@app.command()
def version() -> None:
    """Print the toolkit version."""
    from toolkit import __version__

    out.print(__version__)


def main() -> None:
    """Console entry point: user errors print one clear message and exit with status 2."""
    try:
        app()
    except ToolkitError as exc:
        console.print(Text.assemble(("error: ", "bold red"), str(exc)), highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
