"""User-facing errors: the CLI prints their message and exits non-zero, without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ToolkitError(Exception):
    """An error caused by the user's input (a file, a key, a value), with a message saying how to fix it."""


class DataError(ToolkitError):
    """A dataset, manifest or image that cannot be used."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean "x"?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f' Did you mean "{close[0]}"?' if close else ""
