"""Content hashes for artifacts and manifests."""

from __future__ import annotations

import hashlib
import os


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_tree(folder: str | os.PathLike[str]) -> str:
    """One hash of a folder artifact (a Core ML .mlpackage): every file's relative path and content hash."""
    root = os.fspath(folder)
    lines = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            full = os.path.join(dirpath, name)
            lines.append(f"{os.path.relpath(full, root)}\t{sha256_file(full)}")
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def sha256_path(path: str | os.PathLike[str]) -> str:
    """sha256_file for a file, sha256_tree for a folder."""
    return sha256_tree(path) if os.path.isdir(path) else sha256_file(path)
