"""Atomic file writes: write a temp file in the same folder, fsync, then rename over the target.

A reader (or a resumed run) therefore sees either the old file or the new one, never half of one. A write that
fails for want of space, permission or a writable filesystem becomes a ToolkitError naming the file and the
free space, with the temp file removed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runtime.errors import ToolkitError

WRITE_FAILURES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file larger than this process may write (ulimit -f)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Free space on the filesystem that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def megabytes(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def check_space(folder: str | os.PathLike[str], needed: int, what: str) -> None:
    """Refuse to start ``what`` when the filesystem of ``folder`` has less free space than it will write."""
    free = free_bytes(folder)
    if free < needed:
        raise ToolkitError(
            f"{folder}: {what} needs about {megabytes(needed)} but {megabytes(free)} is free there; free some "
            "space or write somewhere else"
        )


def write_failure(path: str | os.PathLike[str], exc: BaseException) -> ToolkitError | None:
    """The user-facing error for a failed write of ``path``, or None when ``exc`` is not about the disk."""
    code = getattr(exc, "errno", None)
    if code not in WRITE_FAILURES:
        return None
    try:
        free = f"; {megabytes(free_bytes(path))} free there"
    except OSError:
        free = ""
    return ToolkitError(
        f"{path}: cannot write it ({WRITE_FAILURES[code]}{free}); nothing half-written was kept. Free some space, "
        "make the folder writable, or choose another output folder"
    )


@contextlib.contextmanager
def write_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a disk-related OSError raised in the block into the ToolkitError of ``write_failure``."""
    try:
        yield
    except OSError as exc:
        failure = write_failure(path, exc)
        if failure is None:
            raise
        raise failure from exc


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside ``target``; on success rename it over ``target``, on error remove it."""
    target = Path(target)
    with write_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with write_errors(target):
            yield tmp_path
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; a finished artifact gets the usual mode
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike[str], text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | os.PathLike[str], obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")
