"""Typed training configuration (validated by pydantic; recipes in toolkit compose these)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

from distill.crops import CropRecipe


class StrictModel(BaseModel):
    """Unknown keys are errors, so a typo in a recipe never passes silently."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StudentConfig(StrictModel):
    name: str = Field("resnet18", description="registered student (toolkit students) or any timm model name")
    pretrained: bool = Field(False, description="start from ImageNet weights (shipped offline where available)")
    weights: str | None = Field(None, description="initial weights file (.safetensors)")
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0)
    config: str | None = Field(
        None, description="OpenCLIP model config JSON for an openclip: student open_clip does not list"
    )


class OptimizerConfig(StrictModel):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: PositiveFloat = 0.1
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    decay_all: bool = Field(
        False,
        description="weight decay on every parameter, biases and normalisation layers too (the released code of "
        "PAND, VL2Lite and LaViD); false skips them (timm's convention)",
    )


class ScheduleConfig(StrictModel):
    name: Literal["cosine", "step", "multistep", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0.0)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="cosine floor as a fraction of lr")
    step_epochs: PositiveInt = Field(30, description="step schedule: decay every N epochs")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step and multistep schedules: decay factor")
    milestones: list[PositiveInt] = Field(
        default_factory=list,
        description="multistep schedule: multiply by gamma at the start of each of these epochs (torch's "
        "MultiStepLR; LaViD: [150, 180, 210])",
    )
    cosine_epochs: PositiveInt | None = Field(
        None,
        description="cosine schedule: torch's CosineAnnealingLR(T_max = N) stepped once per epoch, which keeps "
        "following the cosine past N (PAND's code: 100 over 300 epochs, so the lr falls, rises and falls again); "
        "null: one per-step cosine over the whole training (ours)",
    )

    @model_validator(mode="after")
    def _milestones(self) -> ScheduleConfig:
        if self.name == "multistep" and not self.milestones:
            raise ValueError("schedule multistep needs milestones, e.g. milestones: [150, 180, 210]")
        if self.milestones and self.name != "multistep":
            raise ValueError(f"milestones {self.milestones} are used only by schedule multistep, not {self.name!r}")
        if self.cosine_epochs is not None and self.name != "cosine":
            raise ValueError(f"cosine_epochs {self.cosine_epochs} is used only by schedule cosine, not {self.name!r}")
        if any(b <= a for a, b in zip(self.milestones, self.milestones[1:])):
            raise ValueError(f"milestones {self.milestones} must increase strictly")
        return self


class EmaConfig(StrictModel):
    enabled: bool = False
    decay: float = Field(0.999, gt=0.0, lt=1.0)
    warmup: bool = Field(True, description="ramp the decay up from 0 (timm's EMA warm-up), for short runs")


class AugmentConfig(StrictModel):
    """Train-time augmentation; geometry and normalisation otherwise follow the preprocessing contract."""

    random_resized_crop: tuple[float, float] | None = Field(
        None, description="scale range for RandomResizedCrop; null resizes and center-crops as at eval"
    )
    pad_crop: int = Field(0, ge=0, description="pad by N pixels then random-crop back (CIFAR style)")
    hflip: float = Field(0.5, ge=0.0, le=1.0)
    color_jitter: float = Field(0.0, ge=0.0, le=1.0)
    pipeline: Literal["standard", "vl2lite"] = Field(
        "standard",
        description="standard: the keys above; vl2lite: the papers' released pipeline (resize, crop, square crop, "
        "rotation 60, blur, jitter, flip with probability hflip; distill/vl2lite_augment.py)",
    )

    @model_validator(mode="after")
    def _scale_range(self) -> AugmentConfig:
        rrc = self.random_resized_crop
        if rrc is not None and not 0.0 < rrc[0] <= rrc[1] <= 1.0:
            raise ValueError(f"random_resized_crop scale {list(rrc)} must satisfy 0 < min <= max <= 1")
        if self.pipeline == "vl2lite":
            unused = [k for k in ("random_resized_crop", "pad_crop", "color_jitter") if getattr(self, k)]
            if unused:
                raise ValueError(f"{', '.join(unused)}: not used by pipeline vl2lite (it has its own crops and "
                                 "jitter); remove them")  # fmt: skip
        return self


class TrainConfig(StrictModel):
    epochs: PositiveInt = 10
    batch_size: PositiveInt = Field(128, description="global batch size (split across DDP ranks)")
    eval_batch_size: PositiveInt = 512
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    ema: EmaConfig = EmaConfig()
    augment: AugmentConfig = AugmentConfig()
    accumulate: PositiveInt = Field(
        1, description="micro-batches per optimizer step (gradient accumulation); batch_size stays the global batch"
    )
    grad_clip: PositiveFloat | None = Field(None, description="max gradient norm; null disables clipping")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto = bf16 autocast where the device computes bf16 natively, else fp32; fp16 = autocast with "
        "a GradScaler (CUDA only)",
    )
    channels_last: Literal["auto", True, False] = "auto"
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    select: Literal["best", "last"] = Field("best", description="which epoch's weights become the student")
    select_on: Literal["val", "test"] = Field(
        "val",
        description="val: the held-out split carved from train (our protocol); test: the papers' protocol, epochs "
        "(and PSC's prompt) selected on the test set, labelled 'paper protocol: selected on test' wherever reported",
    )
    select_metric: Literal["val_top1", "val_loss"] = Field(
        "val_top1", description="what select: best compares: highest val top-1, or lowest val loss (LaViD's code)"
    )
    val_every_epochs: PositiveInt = Field(
        1,
        description="validate after every N-th epoch and after the last (Lightning's check_val_every_n_epoch); "
        "select: best picks among the validated epochs",
    )
    checkpoint_every_steps: PositiveInt | None = Field(
        None, description="also checkpoint every N optimizer steps inside an epoch (null: at epoch ends only)"
    )
    checkpoint_min_interval_s: float = Field(
        0.0,
        ge=0.0,
        description="skip an epoch-end checkpoint when the last one is younger than this (the last epoch is always "
        "saved; a kill then resumes from the older one). 0: every epoch, like timm",
    )
    progress_every_s: PositiveFloat = Field(
        30.0, description="when stdout is not a terminal: a progress line at least this often during an epoch"
    )


class CacheConfig(StrictModel):
    """The teacher-output cache distillation trains from (built on first use, then reused by every run)."""

    dir: str | None = Field(None, description="cache folder; default: <runs>/.teacher_cache/<key hash>")
    crops: PositiveInt = Field(8, description="replayable crops per training image (M)")
    scale: tuple[float, float] = Field((0.35, 1.0), description="RandomResizedCrop area range of a crop")
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = Field(0.5, ge=0.0, le=1.0)
    pipeline: Literal["crop", "vl2lite"] = Field(
        "crop",
        description="crop: RandomResizedCrop (scale, ratio) + flip; vl2lite: the papers' augmentation (resize, crop, "
        "square crop, rotation, blur, jitter, flip), every draw stored and replayed for teacher and student",
    )
    resize: PositiveInt = Field(256, description="vl2lite: the image is first resized to resize x resize")
    size: PositiveInt = Field(224, description="vl2lite: the augmented view's side (then resized to each model's)")
    teacher_input_size: PositiveInt | None = Field(
        None,
        description="the side each view is resized to for the teacher: null = the teacher's own input (256 for "
        "convnext_xxlarge); 224 = the papers' code, which feeds the teacher the student's 224-px view",
    )
    seed: int = 0
    batch_size: PositiveInt = Field(64, description="teacher batch size while building")
    shard_size: PositiveInt = Field(
        1024, description="images per cache shard: the unit of a resumed build and of sharding it over DDP ranks"
    )

    @model_validator(mode="after")
    def _keys_of_the_pipeline(self) -> CacheConfig:
        unused = {"crop": ("resize", "size"), "vl2lite": ("scale", "ratio")}[self.pipeline]
        # A saved config.yaml holds every key at its default: only a changed value is a key set for nothing.
        given = [k for k in unused if getattr(self, k) != type(self).model_fields[k].default]
        if given:
            raise ValueError(
                f"{given[0]} is not used by pipeline {self.pipeline!r} "
                f"({'resize and size are vl2lite' if self.pipeline == 'crop' else 'vl2lite draws its own crops'}'s); "
                f"remove it"
            )
        if self.pipeline == "vl2lite" and self.size > self.resize:
            raise ValueError(f"size {self.size} must be <= resize {self.resize}")
        return self

    def recipe(self) -> CropRecipe:
        return CropRecipe(scale=self.scale, ratio=self.ratio, hflip=self.hflip, pipeline=self.pipeline,
                          resize=self.resize, size=self.size)  # fmt: skip


class StageConfig(StrictModel):
    """Per-stage overrides of the recipe's train section; stages run in the order listed."""

    name: str
    epochs: PositiveInt | None = None
    optimizer: OptimizerConfig | None = None
    schedule: ScheduleConfig | None = None


class LaViDConfig(StrictModel):
    """LaViD's auxiliary head (methods-spec 4.2), alone (method lavid) or stacked on any method's student stage."""

    targets: str = Field(..., description="signatures file (toolkit lavid signatures), or 'minilm' for the "
                         "ablation: MiniLM embeddings of the class names")  # fmt: skip
    weight: float = Field(40.0, gt=0.0, description="beta (the paper's lambda: 40 for R18 and MNV2 on CUB)")


class DistillConfig(StrictModel):
    method: str = Field(..., description="registered method (toolkit methods)")
    teacher: str | None = Field("conse:efficientnet_lite0+minilm", description="teacher spec (toolkit teachers)")
    teacher_config: str | None = Field(None, description="OpenCLIP model config JSON (random-init teachers)")
    teacher_backend: Literal["auto", "torch", "openvino", "onnxruntime"] = Field(
        "auto",
        description="what runs the frozen teacher's image encoder on CPU: auto = OpenVINO (else ONNX "
        "Runtime) when installed, PyTorch on GPU; checked against PyTorch on the first batch",
    )
    template: str = Field("a photo of a {}.", description="prompt template for the class anchors")
    class_names: list[str] | None = Field(None, description="if given, must equal the dataset's classes, in order")
    prompt_names: bool = Field(True, description="'001.Black_footed_Albatross' -> 'Black footed Albatross' in prompts")
    anchors: str | None = Field(None, description="calibrated anchors (.safetensors); replaces the template (PSC)")
    intermediate_teacher: str | None = Field(
        None,
        description="trained DAIT intermediate teacher (stage-1 file, or run:<dir> of a toolkit run); skips its stage",
    )
    shots: int = Field(0, ge=0, description="images per class kept from the training split (0 = all)")
    classes: Literal["all", "base"] = Field(
        "all",
        description="base: train on the first half of the classes only and report base, new and harmonic-mean "
        "top-1 (CoOp/FDBPL base-to-new protocol; vision-language students)",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="overrides of the method's hyperparameters")
    stages: list[StageConfig] | None = Field(None, description="default: every stage of the method, in its order")
    cache: CacheConfig = CacheConfig()
    lavid: LaViDConfig | None = Field(None, description="LaViD concept-signature head, stacked on the student stage")
    teacher_eval_images: int = Field(
        0, ge=0, description="toolkit run: the teacher's test top-1 on a class-stratified subset of N images (0 = all)"
    )
