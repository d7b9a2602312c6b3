"""Recipes: YAML (safe_load) -> typed, validated config. CLI overrides apply before validation.

Errors name the file and the dotted key, and suggest the closest known key for a typo.
"""

from __future__ import annotations

import copy
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from distill.config import DistillConfig, StrictModel, StudentConfig, TrainConfig
from distill.methods.plan import plan_distillation
from distill.students import student_input_stats
from runtime.datasets import Dataset
from runtime.errors import ToolkitError, did_you_mean
from runtime.fidelity import GuardCriteria
from runtime.preprocess import PreprocessContract
from runtime.sources import DataSource, align_classes
from toolkit import defaults
from toolkit.formats import INT8_BACKENDS, MOBILE


class DataSourceConfig(StrictModel):
    kind: Literal["fashion_mnist", "imagefolder", "csv"]
    path: str | None = Field(None, description="ImageFolder root or CSV file; Fashion-MNIST: folder of IDX files")
    split: Literal["train", "test"] = "train"
    download: bool = Field(False, description="Fashion-MNIST only: download when not found (needs internet)")

    def to_source(self, max_pixels: int, symlinks: str = "refuse") -> DataSource:
        return DataSource(self.kind, self.path, self.split, self.download, max_pixels, symlinks)


class DataConfig(StrictModel):
    train: DataSourceConfig
    test: DataSourceConfig | None = Field(None, description="reported at the end, never used to select a model")
    val_fraction: float = Field(0.1, ge=0.0, le=0.5, description="stratified validation split carved from train")
    on_bad_image: Literal["error", "skip"] = "error"
    max_pixels: PositiveInt = 64_000_000
    symlinks: Literal["refuse", "follow_once"] = Field(
        "refuse", description="ImageFolder symlinks that loop or leave the root: an error, or each folder read once"
    )

    def open_train(self) -> Dataset:
        return self.train.to_source(self.max_pixels, self.symlinks).open()

    def open_test(self, class_names: list[str]) -> Dataset | None:
        """The test set with its labels on the training classes (a class the model does not know is an error)."""
        if self.test is None:
            return None
        test = self.test.to_source(self.max_pixels, self.symlinks).open(class_names)
        return align_classes(test, class_names, f"the training set's classes ({self.train.path or self.train.kind})")


class PreprocessConfig(StrictModel):
    """The preprocessing contract minus class names (those come from the data)."""

    input_size: PositiveInt | tuple[PositiveInt, PositiveInt] = 224
    resize_size: PositiveInt | None = Field(None, description="default: input_size / 0.875 (timm's crop_pct)")
    resize_mode: Literal["shorter", "squash"] = "shorter"
    interpolation: Literal["nearest", "bilinear", "bicubic"] = "bilinear"
    mean: tuple[float, float, float] | None = Field(None, description="default: the student's pretrained stats")
    std: tuple[float, float, float] | None = None
    channel_order: Literal["RGB", "BGR"] = "RGB"


class ExportStepConfig(StrictModel):
    """What `toolkit run` exports (the `toolkit export` options)."""

    int8: bool = True
    fp16: bool = Field(False, description="also model.fp16.onnx (toolkit export --fp16)")
    slim: bool = Field(False, description="clean model.onnx up with onnxslim (toolkit export --slim)")
    tensorrt_quantizer: Literal["onnxruntime", "modelopt"] = Field(
        "onnxruntime", description="who writes the TensorRT INT8 form (toolkit export --tensorrt-quantizer)"
    )
    backends: list[Literal[INT8_BACKENDS]] = ["onnxruntime"]  # type: ignore[valid-type]
    formats: list[Literal[MOBILE]] = Field(  # type: ignore[valid-type]
        [], description="phone/board formats (toolkit export --format)"
    )
    calib_size: PositiveInt = defaults.CALIB_SIZE
    calib_method: Literal["minmax", "entropy", "percentile"] = defaults.CALIB_METHOD  # type: ignore[assignment]
    calib_seeds: PositiveInt = Field(
        defaults.CALIB_SEEDS,
        description="calibration samples INT8 top-1 is reported over (toolkit export --calib-seeds)",
    )
    tolerance: float = Field(
        defaults.TOLERANCE_POINTS, ge=0.0, description="largest accepted INT8 top-1 drop, in points"
    )
    min_agreement: float = Field(
        defaults.MIN_AGREEMENT_PCT, ge=0.0, le=100.0, description="smallest accepted INT8 top-1 agreement with FP32, %"
    )
    max_class_drop: float = Field(
        defaults.MAX_CLASS_DROP_POINTS, ge=0.0, description="largest accepted INT8 accuracy drop of any class, points"
    )
    max_kl: float = Field(defaults.MAX_KL, ge=0.0, description="largest accepted mean KL(FP32 || INT8), nats")
    held_out_images: PositiveInt = defaults.HELD_OUT_IMAGES
    max_float_layers: int = Field(
        defaults.MAX_FLOAT_LAYERS, ge=0, description="activations the guard may keep in float"
    )
    keep_float: list[str] = Field([], description="nodes of model.onnx kept in float (toolkit export --keep-float)")
    opset: int = Field(defaults.OPSET, description="ONNX opset (toolkit export --opset; 18-23)")
    recover: Literal["none", "qad", "auto"] = Field(
        "none",
        description="qad: also quantization-aware distillation, every layer INT8; auto: QAD only where the "
        "PTQ guard failed (toolkit export --recover)",
    )
    qad_epochs: PositiveInt = defaults.QAD_EPOCHS
    qad_lr: PositiveFloat | None = Field(None, description="default: train.optimizer.lr / 1000")
    qad_images: PositiveInt | None = Field(None, description="class-stratified training images; default: all")

    def criteria(self) -> GuardCriteria:
        """The accuracy guard's criteria (runtime/fidelity.py)."""
        return GuardCriteria(self.tolerance, self.min_agreement, self.max_class_drop, self.max_kl)


class PruneStepConfig(StrictModel):
    """What `toolkit run` prunes after distillation (the `toolkit prune` options); export, eval, bench and report
    then take the pruned run (RUN/pruned)."""

    macs: float | None = Field(None, gt=0.0, lt=1.0, description="keep at most this fraction of the MACs")
    params: float | None = Field(None, gt=0.0, lt=1.0, description="keep at most this fraction of the parameters")
    round_to: PositiveInt = Field(8, description="channel counts become multiples of this (8 or 16 for INT8)")
    max_layer_ratio: float = Field(0.75, gt=0.0, lt=1.0, description="at most this fraction of a layer's channels")
    global_pruning: bool = Field(False, description="rank channel groups across layers (toolkit prune --global)")
    keep: list[str] = Field([], description="layer names left whole")
    recover: Literal["kd", "ce", "none"] = "kd"
    epochs: PositiveInt = 5
    lr: PositiveFloat | None = Field(None, description="default: train.optimizer.lr")
    temperature: PositiveFloat = 4.0
    alpha: float = Field(0.9, ge=0.0, le=1.0, description="KD weight; CE gets 1 - alpha")
    bn_images: int = Field(1024, ge=0, description="images to re-estimate BatchNorm statistics on (0: skip)")

    @model_validator(mode="after")
    def _one_budget(self) -> PruneStepConfig:
        if (self.macs is None) == (self.params is None):
            raise ValueError("give exactly one budget: prune.macs or prune.params (a fraction of today's, e.g. 0.5)")
        return self


class BenchStepConfig(StrictModel):
    """What `toolkit run` benchmarks (the `toolkit bench` options)."""

    targets: list[str] = ["ort-cpu-1t"]
    min_duration: float = Field(defaults.MIN_DURATION_S, gt=0.0)
    min_queries: PositiveInt = defaults.MIN_QUERIES
    warmup: int = Field(defaults.WARMUP_QUERIES, ge=0)
    max_duration: float = Field(defaults.MAX_DURATION_S, gt=0.0)
    rounds: PositiveInt = Field(
        defaults.ROUNDS, description="SingleStream rounds; the spread of their p50s is the noise"
    )
    tune: bool = Field(False, description="sweep session settings first (toolkit bench --tune)")
    cross_check: bool = Field(
        False, description="also run each engine's own benchmark tool (toolkit bench --cross-check)"
    )


class Recipe(StrictModel):
    name: str = Field(..., description="run name: the run directory is runs/<name> unless --out is given")
    seed: int = 0
    data: DataConfig
    preprocess: PreprocessConfig = PreprocessConfig()
    student: StudentConfig = StudentConfig()
    train: TrainConfig = TrainConfig()
    distill: DistillConfig | None = Field(None, description="distillation method, teacher and cache (toolkit distill)")
    prune: PruneStepConfig | None = Field(None, description="structured pruning + recovery (toolkit prune)")
    export: ExportStepConfig = ExportStepConfig()
    bench: BenchStepConfig = BenchStepConfig()
    _preprocess_given: set[str] | None = PrivateAttr(None)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError(f"{v!r} must be a plain folder name (no '/', not starting with '.')")
        return v

    def resolved(self) -> Recipe:
        """Fill defaults that depend on other values (resize size, normalisation stats)."""
        pre = self.preprocess
        size = pre.input_size if isinstance(pre.input_size, tuple) else (pre.input_size, pre.input_size)
        mean, std = student_input_stats(self.student.name)
        updates = {
            "input_size": size,
            "resize_size": pre.resize_size or int(round(max(size) / 0.875)),
            "mean": pre.mean or mean,
            "std": pre.std or std,
        }
        out = self.model_copy(update={"preprocess": pre.model_copy(update=updates)})
        out._preprocess_given = self.preprocess_given()
        return out

    def __eq__(self, other: object) -> bool:
        """Two recipes are equal when their settings are (which keys were given explicitly does not count)."""
        return isinstance(other, Recipe) and self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]

    def preprocess_given(self) -> set[str]:
        """The preprocess keys the recipe itself sets (not filled by ``resolved``)."""
        given = self._preprocess_given
        return set(self.preprocess.model_fields_set if given is None else given)

    def with_contract(self, contract: PreprocessContract) -> Recipe:
        """This recipe with its preprocess section set to ``contract`` (a vision-language student's own)."""
        c = contract.to_dict()
        pre = PreprocessConfig(**{k: c[k] for k in PreprocessConfig.model_fields})
        out = self.model_copy(update={"preprocess": pre})
        out._preprocess_given = self.preprocess_given()
        return out

    def contract(self, class_names: list[str]) -> PreprocessContract:
        r = self.resolved().preprocess
        return PreprocessContract(
            input_size=r.input_size,  # type: ignore[arg-type]
            resize_size=r.resize_size,  # type: ignore[arg-type]
            resize_mode=r.resize_mode,
            interpolation=r.interpolation,
            mean=r.mean,  # type: ignore[arg-type]
            std=r.std,  # type: ignore[arg-type]
            channel_order=r.channel_order,
            class_names=tuple(class_names),
        )


# ---------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], YAML-parsed value)."""
    if "=" not in text:
        raise ToolkitError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.epochs=5")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ToolkitError(f"--set {text!r}: empty key segment in {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ToolkitError(f"--set {text!r}: value is not valid YAML ({exc})") from exc
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[tuple[list[str], Any]]) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for parts, value in overrides:
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return out


# ---------------------------------------------------------------- errors


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found:
                return found
    return None


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the nested model that holds ``loc``'s last key."""
    for key in loc[:-1]:
        field = model.model_fields.get(str(key))
        nested = _model_in(field.annotation) if field else None
        if nested is None:
            return []
        model = nested
    return list(model.model_fields)


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid recipe ({exc.error_count()} problem(s)):"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            known = _fields_at(Recipe, loc)
            hint = did_you_mean(str(loc[-1]), known)
            lines.append(f"  {key}: unknown key.{hint} Known keys here: {', '.join(known)}")
        elif err["type"] == "literal_error":
            allowed = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
            hint = did_you_mean(str(err.get("input")), allowed)
            lines.append(f"  {key}: {err.get('input')!r} is not one of {allowed}.{hint}")
        elif err["type"] == "missing":
            lines.append(f"  {key}: required value is missing")
        else:
            lines.append(f"  {key}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ToolkitError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ToolkitError(f"{path}: the recipe must be a YAML mapping of keys to values, got {type(data).__name__}")
    return data


def load_recipe(path: str | os.PathLike[str], overrides: list[str] | None = None) -> Recipe:
    """Read, override (``--set a.b=v`` strings), validate and resolve a recipe."""
    raw = apply_overrides(read_yaml(path), [parse_override(o) for o in overrides or []])
    source = str(path) + (f" (with overrides {', '.join(overrides)})" if overrides else "")
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise ToolkitError(format_validation_error(exc, source)) from None
    try:
        if recipe.distill is not None:
            plan_distillation(recipe.distill)
        return recipe.resolved()  # looks the student up: an unknown name is an error naming the file too
    except ToolkitError as exc:
        raise ToolkitError(f"{source}: {exc}") from None


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
