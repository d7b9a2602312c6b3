"""toolkit/defaults.py: `toolkit export`/`toolkit bench` flags and the recipe's export/bench sections share their
defaults (they used to differ: calibration 512 vs 256 images, bench 5 s vs 3 s)."""

from __future__ import annotations

import inspect

from toolkit import cli
from toolkit.recipe import BenchStepConfig, ExportStepConfig

# recipe keys whose CLI flag has the same name
EXPORT = ("calib_size", "calib_method", "tolerance", "min_agreement", "max_class_drop", "max_kl", "held_out_images",
          "max_float_layers", "qad_epochs", "opset", "calib_seeds")  # fmt: skip
BENCH = ("min_duration", "min_queries", "warmup", "max_duration", "rounds")


def test_cli_flags_and_recipe_sections_default_alike() -> None:
    for command, model, keys in ((cli.export_, ExportStepConfig, EXPORT), (cli.bench, BenchStepConfig, BENCH)):
        flags = inspect.signature(command).parameters
        for key in keys:
            assert flags[key].default == model.model_fields[key].default, (command.__name__, key)


def test_the_default_opset_is_the_exporters() -> None:
    from export.onnx_export import OPSET
    from toolkit import defaults

    assert defaults.OPSET == OPSET
