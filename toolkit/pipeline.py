"""`toolkit run RECIPE`: distill (or train) -> export -> eval -> bench -> report in one run directory.

Each step records in ``pipeline.json`` the hash of its inputs (the recipe sections it reads, the files the
previous steps wrote) and of the files it wrote. A step whose inputs are unchanged and whose outputs are all
still there with the recorded hashes is skipped, so a rerun after a crash or a kill continues at the first
step that did not finish, and a changed export or bench section reruns only what depends on it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from runtime.artifacts import eval_slug, run_artifacts
from runtime.atomic import write_json
from runtime.errors import ToolkitError, did_you_mean
from runtime.hashing import sha256_file
from runtime.latency import RunLimits
from runtime.targets import get_target, load_targets
from runtime.verdict import describe_verdict
from toolkit.mobile_export import MOBILE_FORMATS
from toolkit.recipe import DataSourceConfig, Recipe

STATE = "pipeline.json"
STEPS = ("distill", "prune", "export", "eval", "bench", "report")
PRUNED = "pruned"  # RUN/pruned: the pruned run that export, eval, bench and report take when the recipe prunes


def data_arg(source: DataSourceConfig) -> str:
    """The `--data` form of a recipe's data source."""
    if source.kind == "fashion_mnist":
        return f"fashion_mnist:{source.split}" + (f":{source.path}" if source.path else "")
    if source.path is None:
        raise ToolkitError(f"data source of kind {source.kind} needs a path")
    return source.path


def check_run_recipe(recipe: Recipe) -> None:
    """Targets must exist, run here, and be exported for; checked before anything trains."""
    profiles = load_targets()
    for i, name in enumerate(recipe.bench.targets):
        if name not in profiles:
            raise ToolkitError(f"bench.targets[{i}]: unknown target {name!r}.{did_you_mean(name, profiles)}")
        profile = get_target(name, profiles)
        reason = profile.unavailable_reason()
        if reason:
            raise ToolkitError(f"bench.targets[{i}]: {name} cannot run on this machine: {reason} (toolkit targets)")
        needed = profile.backend
        if needed in MOBILE_FORMATS:
            if needed not in recipe.export.formats:
                raise ToolkitError(f"bench.targets[{i}]: {name} runs {needed} programs; add {needed!r} to "
                                   "export.formats")  # fmt: skip
        elif needed not in recipe.export.backends:
            raise ToolkitError(
                f"bench.targets[{i}]: {name} runs {needed} models but export.backends is {recipe.export.backends}; "
                f"add {needed!r} to export.backends"
            )
        if "int8" in profile.precisions and "fp32" not in profile.precisions and not recipe.export.int8:
            raise ToolkitError(f"bench.targets[{i}]: {name} runs INT8 models; set export.int8: true")
    if recipe.data.test is None:
        raise ToolkitError("data.test: `toolkit run` evaluates every artifact on a test set; add data.test")
    from toolkit.qad import check_recover

    e = recipe.export
    from export.onnx_export import check_opset

    try:
        check_opset(e.opset)
    except ToolkitError as exc:
        raise ToolkitError(f"export.opset: {exc}") from exc
    try:
        check_recover(e.recover, e.int8, tuple(e.backends), e.qad_epochs, e.qad_images)
    except ToolkitError as exc:
        raise ToolkitError(f"export.recover: {exc}") from exc
    if recipe.prune is not None:
        _check_prune(recipe)


def _check_prune(recipe: Recipe) -> None:
    """The prune section on an untrained copy of the student, before anything trains: layer names exist, the
    model traces and the budget is reachable (what `toolkit prune` would find only after distillation)."""
    p = recipe.prune
    if p is None:
        return
    if recipe.data.val_fraction == 0:
        raise ToolkitError("prune: recovery selects on the validation split; set data.val_fraction above 0")
    from distill.pruning import prune_channels
    from distill.students import create_student

    model = create_student(recipe.student.name, num_classes=2, pretrained=False)
    modules = dict(model.named_modules())
    for i, name in enumerate(p.keep):
        if name not in modules:
            hint = did_you_mean(name, modules)
            raise ToolkitError(f"prune.keep[{i}]: no layer {name!r} in {recipe.student.name}.{hint}")
    size = recipe.resolved().preprocess.input_size
    try:
        prune_channels(model, size, macs=p.macs, params=p.params, round_to=p.round_to,  # type: ignore[arg-type]
                       max_layer_ratio=p.max_layer_ratio, global_pruning=p.global_pruning,
                       keep=tuple(p.keep))  # fmt: skip
    except ToolkitError as exc:
        raise ToolkitError(f"prune: {exc}") from exc


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _files(run_dir: Path, paths: list[Path]) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): sha256_file(p) for p in sorted(paths) if p.is_file()}


def _artifact_files(run_dir: Path) -> list[Path]:
    out = []
    for a in run_artifacts(run_dir):
        out.append(a.path)
        if a.path.suffix == ".xml":
            out.append(a.path.with_suffix(".bin"))
    return out


class Pipeline:
    def __init__(self, recipe: Recipe, run_dir: Path, console: Console) -> None:
        self.recipe, self.run_dir, self.console = recipe, run_dir, console
        path = run_dir / STATE
        self.state: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"steps": {}}
        self.resuming = False

    def up_to_date(self, step: str, inputs: str) -> bool:
        record = self.state["steps"].get(step)
        if not record or record["inputs"] != inputs:
            return False
        return all(
            (self.run_dir / name).is_file() and sha256_file(self.run_dir / name) == digest
            for name, digest in record["outputs"].items()
        )

    def run_step(self, step: str, inputs: str, work: Callable[[], list[Path]], resumable: bool = False) -> None:
        """Run ``work`` unless the step is up to date. A ``resumable`` step killed while running with these
        same inputs continues from its checkpoints (``self.resuming`` is true while it runs)."""
        if self.up_to_date(step, inputs):
            self.console.print(f"[{step}] up to date (inputs and outputs unchanged): skipped")
            return
        # Anything recorded after this step depends on its outputs: forget it.
        for later in STEPS[STEPS.index(step) :]:
            self.state["steps"].pop(later, None)
        running = self.state.get("running")
        self.resuming = resumable and running == {"step": step, "inputs": inputs} and self.run_dir.is_dir()
        self.state["running"] = {"step": step, "inputs": inputs}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._save()
        self.console.print(f"[{step}] {'continuing (interrupted earlier)' if self.resuming else 'running'}")
        t0 = time.perf_counter()
        outputs = work()
        self.state["steps"][step] = {
            "inputs": inputs,
            "outputs": _files(self.run_dir, outputs),
            "seconds": round(time.perf_counter() - t0, 1),
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.state.pop("running", None)
        self.resuming = False
        self._save()

    def output_digest(self, step: str) -> str:
        return _digest(self.state["steps"][step]["outputs"])

    def _save(self) -> None:
        if self.run_dir.is_dir():
            write_json(self.run_dir / STATE, self.state)


def run_pipeline(recipe: Recipe, run_dir: Path, console: Console, force: bool = False) -> dict[str, Any]:
    """Every step of the recipe, skipping those already done; returns the headline numbers."""
    from toolkit.benching import run_bench
    from toolkit.distilling import run_distill
    from toolkit.evaluation import evaluate_run
    from toolkit.exporting import run_export
    from toolkit.training import run_train

    check_run_recipe(recipe)
    if force and run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    pipe = Pipeline(recipe, run_dir, console)
    r = recipe.model_dump(mode="json")
    t0 = time.perf_counter()

    def distill() -> list[Path]:
        resume = pipe.resuming and (run_dir / "config.yaml").is_file()
        if recipe.distill is not None:
            run_distill(recipe, run_dir, force=not resume, resume=resume, console=console)
        else:
            run_train(recipe, run_dir, force=not resume, resume=resume, console=console)
        return [run_dir / "student.safetensors", run_dir / "metrics.json"]

    core = {k: v for k, v in r.items() if k not in ("prune", "export", "bench")}
    pipe.run_step("distill", _digest(core), distill, resumable=True)
    source, last = run_dir, "distill"
    if recipe.prune is not None:
        source, last = run_dir / PRUNED, "prune"

        def prune() -> list[Path]:
            from toolkit.pruning import run_prune

            p = recipe.prune
            assert p is not None
            run_prune(run_dir, source, macs=p.macs, params=p.params, round_to=p.round_to,
                      max_layer_ratio=p.max_layer_ratio, global_pruning=p.global_pruning, keep=tuple(p.keep),
                      recover=p.recover, epochs=p.epochs, lr=p.lr, temperature=p.temperature, alpha=p.alpha,
                      bn_images=p.bn_images, force=True, console=console)  # fmt: skip
            return [source / "student.safetensors", source / "metrics.json"]

        pipe.run_step("prune", _digest(pipe.output_digest("distill"), r["prune"]), prune)
    teacher_run, run_dir = run_dir, source

    def export() -> list[Path]:
        e = recipe.export
        run_export(run_dir, int8=e.int8, targets=tuple(e.backends), calib_size=e.calib_size,
                   calib_method=e.calib_method, criteria=e.criteria(), held_out_images=e.held_out_images,
                   max_float_layers=e.max_float_layers, keep_float=tuple(e.keep_float), opset=e.opset,
                   recover=e.recover, qad_epochs=e.qad_epochs, qad_lr=e.qad_lr, qad_images=e.qad_images,
                   formats=tuple(e.formats), calib_seeds=e.calib_seeds, fp16=e.fp16, slim=e.slim,
                   tensorrt_quantizer=e.tensorrt_quantizer,
                   console=console)  # fmt: skip
        return _artifact_files(run_dir)

    pipe.run_step("export", _digest(pipe.output_digest(last), r["export"]), export)

    test = data_arg(recipe.data.test)  # type: ignore[arg-type]

    def evaluate() -> list[Path]:
        for line in evaluate_run(run_dir, test, ["all"], recipe.train.eval_batch_size, console,
                                 recipe.data.max_pixels, recipe.data.on_bad_image, recipe.data.symlinks,
                                 reuse_student=True):  # fmt: skip
            console.print(line.split("\n")[0])
        if recipe.distill is not None and recipe.distill.teacher:
            _teacher_eval(recipe, teacher_run, run_dir, test, console)
        folder = run_dir / "eval" / eval_slug(_test_name(run_dir))
        return [p for p in folder.rglob("*") if p.is_file()]

    pipe.run_step("eval", _digest(pipe.output_digest("export"), test), evaluate)

    def bench() -> list[Path]:
        b = recipe.bench
        limits = RunLimits(b.warmup, b.min_duration, b.min_queries, b.max_duration, b.rounds)
        run_bench(run_dir, list(dict.fromkeys(b.targets)), limits, console, tune=b.tune, cross_check=b.cross_check)
        return [run_dir / "bench" / f"{t}.json" for t in b.targets]

    pipe.run_step("bench", _digest(pipe.output_digest("export"), r["bench"]), bench)

    def report() -> list[Path]:
        from runtime.report import build_report
        from runtime.report_render import render

        render(build_report(run_dir), run_dir)
        return [run_dir / "report.md", run_dir / "report.json", run_dir / "report.html"]

    pipe.run_step("report", _digest(*(pipe.output_digest(s) for s in ("eval", "bench"))), report)
    return headline(run_dir, time.perf_counter() - t0)


def _teacher_eval(recipe: Recipe, teacher_run: Path, run_dir: Path, test: str, console: Console) -> None:
    """The teacher's logits on the test set into ``run_dir``'s eval (with ``teacher_run``'s calibrated anchors
    where it made or was given them), so the report's fidelity ladder starts at the teacher."""
    from toolkit.teaching import run_zeroshot

    cfg = recipe.distill
    assert cfg is not None and cfg.teacher
    anchors = teacher_run / "anchors.safetensors"
    anchors_file = anchors if anchors.is_file() else (Path(cfg.anchors) if cfg.anchors else None)
    config = Path(cfg.teacher_config) if cfg.teacher_config else None
    result = run_zeroshot(cfg.teacher, test, cfg.template, anchors_file, console, config, cfg.teacher_eval_images,
                          run_dir, cfg.teacher_backend)  # fmt: skip
    console.print(f"teacher {result['teacher']} ({result['anchors']}): top-1 {result['top1']:.4f} on {result['n']}")


def _test_name(run_dir: Path) -> str:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if "test_name" not in metrics:
        raise ToolkitError(f"{run_dir / 'metrics.json'}: no test evaluation recorded")
    return metrics["test_name"]


def headline(run_dir: Path, seconds: float) -> dict[str, Any]:
    """Teacher / student / best INT8 top-1 and batch-1 p90 latency, from the report."""
    report = json.loads((run_dir / "report.json").read_text())
    ladder = {row["stage"]: row for row in report.get("ladder", []) if "top1" in row}
    int8 = [row for key, row in ladder.items() if key.startswith("int8")]
    best = max(int8, key=lambda row: row["top1"]) if int8 else None
    rows = [row for row in report.get("latency", []) if row["p90_ms"] is not None]  # imported: may have none
    p90 = [(row["p90_ms"], row["label"], row["target"]) for row in rows]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "seconds": round(seconds, 1),
        "teacher_top1": ladder.get("teacher", {}).get("top1"),
        "student_top1": metrics.get("test_top1"),
        "int8": best and {"artifact": best["label"], "top1": best["top1"]},
        "fastest_p90": min(p90) if p90 else None,
        "ship": [describe_verdict(v) for v in report.get("verdicts", [])],
        "report": str(run_dir / "report.html"),
    }
