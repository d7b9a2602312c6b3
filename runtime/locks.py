"""Advisory file locks (flock) that say who holds them: one writer per run directory, one builder per cache shard.

The kernel drops a flock when its process dies, even by SIGKILL, so a killed command never leaves a lock that
blocks the next one; the holder record it leaves (pid, host, command, start) is reported as stale and replaced.
Locks are re-entrant within a process (`toolkit run` holds the run directory's lock while its steps take it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runtime.errors import ToolkitError

LOCK_NAME = ".lock"
_held: dict[Path, tuple[int, int]] = {}  # resolved lock path -> (fd, depth)


def holder_record(command: str) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def read_holder(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process (no holder record)"
    return (
        f"`{holder.get('command', '?')}` (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
        f"since {holder.get('started_utc', '?')})"
    )


def try_flock(path: Path, exclusive: bool = True) -> int | None:
    """Open ``path`` (created if missing) and take the lock without waiting: the fd, or None when it is held."""
    return _flock(path, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)


def wait_flock(path: Path, exclusive: bool = True) -> int:
    """Open ``path`` and take the lock, waiting as long as another process holds it."""
    fd = _flock(path, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    assert fd is not None
    return fd


def _flock(path: Path, how: int) -> int | None:
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, how)
        except BlockingIOError:
            os.close(fd)
            return None
        try:  # the holder we waited for may have removed the file: our lock is then on a file nobody else sees
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def release(fd: int, path: Path | None = None) -> None:
    """Drop the lock; with ``path``, remove the lock file first (processes waiting on it then retry afresh)."""
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def sweep_temp_files(folder: Path) -> int:
    """Remove the temp files (``.*.tmp``) that writes killed midway left: only the lock holder may do this."""
    found = [p for p in folder.rglob(".*.tmp") if p.exists()]
    for p in found:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
    return len(found)


@contextlib.contextmanager
def run_lock(run_dir: Path, command: str | None = None, log: Any = None) -> Iterator[None]:
    """Hold ``run_dir``'s writer lock for the block, or raise ToolkitError naming who holds it.

    Under torchrun only rank 0 takes it (the other ranks of the same command read, rank 0 writes)."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    created = not Path(run_dir).exists()
    path = (Path(run_dir) / LOCK_NAME).resolve()
    if path in _held:
        fd, depth = _held[path]
        _held[path] = (fd, depth + 1)
        try:
            yield
        finally:
            _held[path] = (fd, depth)
        return
    fd = try_flock(path)
    if fd is None:
        holder = read_holder(path)
        elsewhere = holder.get("host") not in (None, socket.gethostname())
        raise ToolkitError(
            f"{run_dir}: in use by {describe(holder)}; wait for it to finish, or choose another --out"
            + (f" (if {holder.get('host')} is down, delete {path})" if elsewhere else "")
        )
    previous = read_holder(path)
    if previous and log is not None:
        log(f"{run_dir}: the lock of {describe(previous)} was not released (killed?); it is stale, taking over")
    leftovers = sweep_temp_files(Path(run_dir))
    if leftovers and log is not None:
        log(f"{run_dir}: removed {leftovers} temp file(s) of a write that was interrupted")
    command = command or "toolkit " + " ".join(sys.argv[1:3])
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder_record(command)).encode(), 0)
    _held[path] = (fd, 1)
    try:
        yield
    finally:
        del _held[path]
        release(fd, path)  # a clean exit leaves no lock file: only a killed holder's record is left, as stale
        if created and not any(path.parent.iterdir()):
            path.parent.rmdir()  # a command that failed before writing anything leaves no folder behind
