"""runtime/ ships to devices without torch: importing every module with torch blocked must work."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

from conftest import REPO

import runtime

BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'torch', 'torchvision', 'timm'}:
            raise ImportError('blocked: runtime must not import ' + name)
sys.meta_path.insert(0, Block())
import importlib
for name in sys.argv[1:]:
    importlib.import_module(name)
assert 'torch' not in sys.modules
print('ok', len(sys.argv) - 1)
"""


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
