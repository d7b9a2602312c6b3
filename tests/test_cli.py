"""The CLI surface: every command and every parameter documents itself."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from toolkit.cli import app

runner = CliRunner()
group = typer.main.get_command(app)
COMMANDS = sorted(group.commands)  # type: ignore[attr-defined]


def test_top_level_help_lists_every_command() -> None:
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for name in COMMANDS:
        assert name in res.output
    assert {"train", "eval", "students", "recipe", "demo"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_and_parameter_has_help(name: str) -> None:
    command = group.commands[name]  # type: ignore[attr-defined]
    assert command.help and len(command.help) > 20, f"{name} has no description"
    for param in command.params:
        if param.name != "help":
            assert getattr(param, "help", None), f"{name}: parameter {param.name} has no help text"
    res = runner.invoke(app, [name, "--help"])
    assert res.exit_code == 0 and "Usage" in res.output


def test_students_command_lists_registry() -> None:
    res = runner.invoke(app, ["students"])
    assert res.exit_code == 0
    for name in ("resnet18", "mobilenetv2_100", "efficientnet_lite0"):
        assert name in res.output


def test_recipe_command_prints_resolved_config(tmp_path) -> None:
    from conftest import write_recipe

    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "data")
    res = runner.invoke(app, ["recipe", str(recipe), "--set", "train.epochs=9"])
    assert res.exit_code == 0, res.output
    assert "epochs: 9" in res.output and "resize_size: 16" in res.output


def test_error_messages_with_brackets_print_intact(tmp_path) -> None:
    """Regression: rich markup swallowed bracketed text such as '[tensorrt]' or a run called 'x[demo]'."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    run = tmp_path / "run[demo]"
    run.mkdir()
    res = subprocess.run(
        [sys.executable, "-m", "toolkit", "eval", str(run), "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert res.returncode == 2
    assert f"error: {run}/student.safetensors: missing" in res.stderr
