"""The method registry: ``register_method`` / ``list_methods`` / ``get_method`` (timm's model-registry shape)."""

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
    _load_catalog()
    return sorted(n for n in _METHODS if fnmatch.fnmatch(n, pattern))


def get_method(name: str) -> Method:
    _load_catalog()
    if name not in _METHODS:
        raise ToolkitError(
            f"unknown method {name!r}.{did_you_mean(name, _METHODS)} Known: {', '.join(sorted(_METHODS))}"
        )
    return _METHODS[name]


def _load_catalog() -> None:
    import distill.methods.catalog  # noqa: F401  (registers the built-in methods on first use)
