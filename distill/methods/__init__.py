"""Distillation methods: one file each, registered on import (``registry.py`` holds the query API).

A new method is one more module here: ``register_method(Method(...))`` with its stages, loss terms, weights
and objective factories, and one line below.
"""

from distill.methods import baselines, dait, fdbpl, lavid, pand, vl2lite  # noqa: F401  (register the built-in methods)
