"""The method registry: ``register_method`` / ``list_methods`` / ``get_method`` (timm's model-registry shape).
The built-in methods register when the ``distill.methods`` package is imported (its ``__init__``), so this
module imports none of them: no import cycle."""

from __future__ import annotations

import fnmatch

from distill.methods.spec import Method
from runtime.errors import ToolkitError, did_you_mean

_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.name in _METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def list_methods(pattern: str = "*") -> list[str]:
    return sorted(n for n in _METHODS if fnmatch.fnmatch(n, pattern))


def get_method(name: str) -> Method:
    if name not in _METHODS:
        raise ToolkitError(
            f"unknown method {name!r}.{did_you_mean(name, _METHODS)} Known: {', '.join(sorted(_METHODS))}"
        )
    return _METHODS[name]
