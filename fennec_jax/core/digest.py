"""SHA-256 digests of files and folders, read in blocks (what identifies a job's inputs across
restarts, and a saved folder's parts)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

__all__ = ["file_digest", "files_digest", "folder_digest"]

_BLOCK = 1 << 22


def _update(digest, path: str) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)


def file_digest(path: str) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    _update(digest, path)
    return digest.hexdigest()


def files_digest(folder: str, names: Iterable[str]) -> str:
    """SHA-256 over the files ``names`` (paths relative to ``folder``), in the given order:
    each one's name, size and bytes."""
    digest = hashlib.sha256()
    for name in names:
        path = os.path.join(folder, name)
        digest.update(f"{name}|{os.path.getsize(path)}|".encode())
        _update(digest, path)
    return digest.hexdigest()


def folder_digest(folder: str) -> str:
    """:func:`files_digest` of every file under ``folder`` (folders and files in name order)."""
    names = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        names += [os.path.relpath(os.path.join(root, name), folder) for name in sorted(files)]
    return files_digest(folder, names)
