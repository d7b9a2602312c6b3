"""A finished run's student rebuilt from its directory (config.yaml + student.safetensors, and the pruned
shapes where it was pruned): what export, eval and a ``run:<dir>`` teacher load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from safetensors import safe_open
from torch import nn

from distill.pruning import apply_architecture, read_architecture
from distill.students import create_student
from distill.weights import load_state_dict
from runtime.errors import ToolkitError
from runtime.preprocess import PreprocessContract


def load_student_dir(run_dir: Path) -> tuple[nn.Module, PreprocessContract, dict[str, Any]]:
    """(student in eval mode, its preprocessing contract with the class names, the run's recipe as a dict)."""
    weights = run_dir / "student.safetensors"
    config = run_dir / "config.yaml"
    for f in (weights, config):
        if not f.is_file():
            raise ToolkitError(f"{f}: missing; is {run_dir} a finished training run?")
    with safe_open(str(weights), framework="pt") as fh:
        meta = fh.metadata() or {}
    if "preprocess" not in meta:
        raise ToolkitError(f"{weights}: no preprocessing contract in its metadata; it was not written by toolkit")
    contract = PreprocessContract.from_json(meta["preprocess"])
    recipe = yaml.safe_load(config.read_text())
    model = create_student(recipe["student"]["name"], len(contract.class_names),
                           config=recipe["student"].get("config"))  # fmt: skip
    arch = read_architecture(run_dir)
    if arch is not None:  # a pruned run: the registry's model, resized to the pruned shapes
        apply_architecture(model, arch)
    model.load_state_dict(load_state_dict(weights))
    return model.eval(), contract, recipe
