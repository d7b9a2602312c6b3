"""runtime/ ships to devices without torch: importing every module with torch blocked must work."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

from conftest import REPO, TORCH_BLOCKER

import runtime

BLOCKER = (
    TORCH_BLOCKER
    + """
import importlib
for name in sys.argv[1:]:
    importlib.import_module(name)
assert 'torch' not in sys.modules
print('ok', len(sys.argv) - 1)
"""
)


def runtime_modules() -> list[str]:
    return ["runtime"] + [f"runtime.{m.name}" for m in pkgutil.iter_modules(runtime.__path__)]


def test_runtime_imports_without_torch() -> None:
    mods = runtime_modules()
    assert len(mods) >= 8
    res = subprocess.run([sys.executable, "-c", BLOCKER, *mods], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"ok {len(mods)}"


def test_blocker_really_blocks_torch() -> None:
    res = subprocess.run([sys.executable, "-c", BLOCKER, "distill.engine"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode != 0 and "blocked" in res.stderr
