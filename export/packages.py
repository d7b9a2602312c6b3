"""Whether an optional exporter's packages are installed: the reason to print when not."""

from __future__ import annotations

import contextlib
import importlib
import io


def missing_package(names: tuple[str, ...], extra: str) -> str | None:
    """None when every package in ``names`` imports, else a sentence naming the first missing one and the extra
    that installs it. Imports quietly (coremltools prints that it cannot load its runtime off macOS)."""
    for name in names:
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                importlib.import_module(name)
        except ImportError:
            return f"the {name} package is not installed (pip install 'edge-distill-toolkit[{extra}]')"
    return None
