"""Imports point down the layers of DESIGN.md: toolkit -> export -> distill -> runtime."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

FORBIDDEN = {
    "runtime": {"toolkit", "distill", "export", "torch", "torchvision", "timm"},
    "distill": {"toolkit", "export"},
    "export": {"toolkit"},
}


def imported_top_levels(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_lower_layers(package: str) -> None:
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"{package}/ has no modules"
    for path in files:
        bad = imported_top_levels(path) & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


def test_checker_sees_imports(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("import torch.nn\nfrom toolkit.cli import app\nfrom . import x\n")
    assert imported_top_levels(f) == {"torch", "toolkit"}
