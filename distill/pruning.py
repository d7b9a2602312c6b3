"""Structured (channel) pruning with Torch-Pruning's dependency graph, toward a MACs or parameter budget.

Channels are removed a little at a time (``steps`` uniform steps, each layer at most ``max_layer_ratio`` of its
channels, L2 magnitude of each coupled group) until the budget is met; counts are rounded to multiples of
``round_to`` so INT8 kernels keep their fast paths. The pruned shapes are recorded as data
(``architecture``) so a pruned student loads back by rebuilding the registry's model and resizing it, never
by unpickling a module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from runtime.errors import ToolkitError, did_you_mean

ARCHITECTURE = "architecture.json"  # beside a pruned run's student.safetensors
SHAPE_ATTRS: dict[type[nn.Module], tuple[str, ...]] = {
    nn.Conv2d: ("in_channels", "out_channels", "groups"),
    nn.BatchNorm2d: ("num_features",),
    nn.Linear: ("in_features", "out_features"),
}


@dataclass(frozen=True)
class PruneResult:
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    steps: int

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "macs_ratio": self.macs_after / self.macs_before,
                "params_ratio": self.params_after / self.params_before}  # fmt: skip


def count(model: nn.Module, input_size: tuple[int, int]) -> tuple[int, int]:
    """(MACs, parameters) of one image at ``input_size``."""
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, 3, *input_size))
    return int(macs), int(params)


def prune_channels(
    model: nn.Module,
    input_size: tuple[int, int],
    macs: float | None = None,
    params: float | None = None,
    round_to: int = 8,
    max_layer_ratio: float = 0.75,
    global_pruning: bool = False,
    keep: tuple[str, ...] = (),
    steps: int = 40,
) -> PruneResult:
    """Prune ``model`` in place until its MACs (or parameters) are at most the given fraction of today's."""
    import torch_pruning as tp

    which = [(name, v) for name, v in (("macs", macs), ("params", params)) if v is not None]
    if len(which) != 1:
        raise ToolkitError("give exactly one budget: --macs or --params (a fraction of today's, e.g. 0.5)")
    kind, ratio = which[0]
    if not 0.0 < ratio < 1.0:
        raise ToolkitError(f"--{kind} {ratio}: the budget is a fraction of today's {kind}, strictly between 0 and 1")
    if not 0.0 < max_layer_ratio < 1.0:
        raise ToolkitError(f"--max-layer-ratio {max_layer_ratio}: must be strictly between 0 and 1")
    if round_to < 1:
        raise ToolkitError(f"--round-to {round_to}: must be at least 1")
    modules = dict(model.named_modules())
    for name in keep:
        if name not in modules:
            raise ToolkitError(f"--keep {name!r}: no such layer in the student.{did_you_mean(name, modules)}")
    ignored = [model.get_classifier(), *(modules[n] for n in keep)]
    model.eval()
    example = torch.zeros(1, 3, *input_size)
    try:
        macs_before, params_before = count(model, input_size)
        pruner = tp.pruner.MetaPruner(
            model, example, importance=tp.importance.GroupMagnitudeImportance(p=2), global_pruning=global_pruning,
            pruning_ratio=max_layer_ratio, max_pruning_ratio=max_layer_ratio, iterative_steps=steps,
            ignored_layers=ignored, round_to=round_to,
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - tracing raises whatever the model's forward raises
        raise ToolkitError(f"Torch-Pruning cannot trace this student ({type(exc).__name__}: {exc})") from exc
    target = ratio * (macs_before if kind == "macs" else params_before)
    done = 0
    with torch.no_grad():
        while done < steps:
            pruner.step()
            done += 1
            m, p = count(model, input_size)
            if (m if kind == "macs" else p) <= target:
                break
    macs_after, params_after = count(model, input_size)
    reached = macs_after / macs_before if kind == "macs" else params_after / params_before
    if reached > ratio:
        raise ToolkitError(
            f"--{kind} {ratio}: reached only {reached:.2f} "
            f"with at most {max_layer_ratio:.0%} of each layer removed; raise --max-layer-ratio, use --global, "
            "or keep fewer layers"
        )
    _sync_num_features(model)
    return PruneResult(macs_before, macs_after, params_before, params_after, done)


def architecture(model: nn.Module) -> dict[str, dict[str, int]]:
    """The shape attributes of every conv, batch norm and linear layer (what pruning changes)."""
    arch = {}
    for name, module in model.named_modules():
        for kind, attrs in SHAPE_ATTRS.items():
            if isinstance(module, kind):
                arch[name] = {a: int(getattr(module, a)) for a in attrs}
    return arch


def apply_architecture(model: nn.Module, arch: dict[str, dict[str, int]]) -> nn.Module:
    """Resize the layers of a freshly built ``model`` to a pruned ``architecture`` (weights to be loaded next)."""
    modules = dict(model.named_modules())
    for name, attrs in arch.items():
        module = modules.get(name)
        kind = next((k for k in SHAPE_ATTRS if isinstance(module, k)), None)
        if kind is None or set(attrs) != set(SHAPE_ATTRS[kind]):
            raise ToolkitError(f"architecture layer {name!r} does not fit this student ({type(module).__name__})")
        for a, v in attrs.items():
            setattr(module, a, int(v))
        if isinstance(module, nn.Conv2d):
            shape = (module.out_channels, module.in_channels // module.groups, *module.kernel_size)
            _resize(module, {"weight": shape, "bias": (module.out_channels,)})
        elif isinstance(module, nn.BatchNorm2d):
            n = (module.num_features,)
            _resize(module, {"weight": n, "bias": n, "running_mean": n, "running_var": n})
        else:
            _resize(module, {"weight": (module.out_features, module.in_features), "bias": (module.out_features,)})
    _sync_num_features(model)
    return model


def _resize(module: nn.Module, shapes: dict[str, tuple[int, ...]]) -> None:
    for attr, shape in shapes.items():
        current = getattr(module, attr, None)
        if current is None or tuple(current.shape) == tuple(shape):
            continue
        fresh = torch.zeros(shape, dtype=current.dtype)
        if isinstance(current, nn.Parameter):
            setattr(module, attr, nn.Parameter(fresh, requires_grad=current.requires_grad))
        else:
            setattr(module, attr, fresh)


def _sync_num_features(model: nn.Module) -> None:
    """timm reads ``num_features`` (the pooled width) in heads and distillation modules: keep it true."""
    head = model.get_classifier()
    if isinstance(head, nn.Linear) and hasattr(model, "num_features"):
        model.num_features = head.in_features


def read_architecture(run_dir: Path) -> dict[str, dict[str, int]] | None:
    """A pruned run's layer shapes (``architecture.json``), or None for a run that was not pruned."""
    path = Path(run_dir) / ARCHITECTURE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ToolkitError(f"{path}: not valid JSON ({exc}); prune the run again") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ToolkitError(f"{path}: expected a mapping of layer names to shapes; prune the run again")
    return data


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Any) -> int:
    """Re-estimate every BatchNorm's running statistics on ``batches`` of inputs (cumulative average): pruning
    changes what each layer sees, and stale statistics alone can drop a pruned model to chance. Returns images."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    seen = 0
    try:
        for x in batches:
            model(x)
            seen += len(x)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.train(was_training)
    return seen
