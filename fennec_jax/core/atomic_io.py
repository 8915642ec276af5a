"""Atomic file output: write to a temporary file (or folder) in the same folder, then rename over.

A reader (or a crash) never sees a half-written file: the target is either the old file or the
complete new one. The file gets the mode ``open`` would give it (0o666 less the umask: 0o644
under umask 022), not ``tempfile.mkstemp``'s 0o600, so others can read what a job writes.

Temporaries are hidden names beside the target (``.NAME.RANDOM.tmp``; a replaced folder passes
through ``.NAME.RANDOM.old``). A writer killed mid-write leaves its temporary behind; the next
write of the same target removes it (one writer per target at a time).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence

__all__ = ["replacing", "write_bytes", "write_text", "write_json", "write_csv", "write_folder"]


def _sweep(folder: str, name: str) -> None:
    """Removes the temporaries an earlier, killed write of ``folder/name`` left behind."""
    stale = re.compile(rf"\.{re.escape(name)}\.[A-Za-z0-9_]{{6,16}}\.(tmp|old)")
    for entry in os.scandir(folder):
        if stale.fullmatch(entry.name):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


def _create_temp(folder: str, name: str) -> tuple[int, str]:
    """A new, empty file ``folder/.name.RANDOM.tmp`` opened for writing, created with mode
    0o666 less the umask (stale temporaries of ``name`` removed first); returns its descriptor
    and path."""
    _sweep(folder, name)
    while True:
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
    """A temporary file beside ``path`` (empty, the umask's mode) for a writer that takes a
    path (``with replacing(p) as tmp: writer(tmp)``); when the block ends without error it is
    synced and renamed over ``path`` (parent folders are created), otherwise removed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = _create_temp(folder, os.path.basename(path))
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (parent folders are created)."""
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj) -> None:
    """Writes ``obj`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def write_csv(path: str, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """Writes a CSV with ``header`` and ``rows`` to ``path`` atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def write_folder(path: str, fill: Callable[[str], None], *, overwrite: bool = False) -> None:
    """Creates the folder ``path`` atomically: ``fill(tmp)`` writes the contents into a new
    temporary folder beside it, which is then renamed to ``path`` (replacing an existing one only
    when ``overwrite``; the old folder is removed after the swap). If ``fill`` fails, nothing is
    left behind and an existing ``path`` is untouched. The folder gets mode 0o777 less the umask.

    Raises:
      FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = os.path.abspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path}: already exists")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    _sweep(parent, os.path.basename(path))
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        fill(tmp)
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".old", dir=parent)
            os.rename(path, os.path.join(old, "previous"))
            os.rename(tmp, path)
            shutil.rmtree(old)
        else:
            os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
