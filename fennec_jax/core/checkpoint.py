"""Checkpoints: named arrays and JSON metadata in one versioned, checksummed orbax folder.

A checkpoint is one folder, an orbax composite checkpoint with two items:

* ``arrays``: a method state's arrays (e.g. a transfer space's vectors, a network's weights);
* ``meta``: JSON with the format tag, the ``fennec_jax`` version that wrote it, what the
  method stores besides arrays (names, config), every array's dtype and shape, and a SHA-256
  checksum over all of it.

orbax writes into a temporary folder and renames it when complete, so a crash leaves no
half-written checkpoint under its final name. Restoring checks, in order: the folder exists and orbax
can read it, the format tag, the package version (a checkpoint from another version is refused:
refit instead), the arrays' names, dtypes and shapes, and the checksum. Any failure raises
:class:`CheckpointError` naming the path and the problem, never a state that ranks wrongly.
"""

from __future__ import annotations

import hashlib
import json
import math
import os

import numpy as np
import orbax.checkpoint as ocp

import fennec_jax
from fennec_jax.core.errors import describe

__all__ = ["CheckpointError", "save_arrays", "restore_arrays", "stored_format", "arrays_checksum"]


_PLACEHOLDER = "__no_arrays__"


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored faithfully; the message names path and problem."""


def save_arrays(path: str, fmt: str, meta: dict, arrays: dict[str, np.ndarray], *, overwrite: bool = False) -> None:
    """Writes named ``arrays`` and JSON ``meta`` as one orbax checkpoint folder ``path``, tagged
    with the format ``fmt``, this package's version, every array's dtype and shape, and a
    SHA-256 checksum (the shared layout of every checkpoint this package writes)."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not overwrite:
        raise CheckpointError(f"{path}: already exists (pass overwrite=True to replace it)")
    meta = {"format": fmt, "package_version": fennec_jax.__version__, **meta,
            "arrays": {name: [a.dtype.str, list(a.shape)] for name, a in sorted(arrays.items())}}
    meta["checksum"] = arrays_checksum(meta, arrays)
    stored = {name: a for name, a in arrays.items() if a.size}  # orbax refuses zero-size arrays
    stored = stored or {_PLACEHOLDER: np.zeros(1)}  # and an empty item
    ocp.Checkpointer(ocp.CompositeCheckpointHandler()).save(
        path, args=ocp.args.Composite(arrays=ocp.args.StandardSave(stored), meta=ocp.args.JsonSave(meta)),
        force=overwrite)


def restore_arrays(path: str, fmt: str, kind: str) -> tuple[dict, dict[str, np.ndarray]]:
    """``(meta, arrays)`` of the checkpoint written by :func:`save_arrays` at ``path``, after
    checking, in order: the folder exists and orbax can read it, the format tag ``fmt`` (a
    ``kind`` checkpoint), the package version, the arrays' names, dtypes and shapes, and the
    checksum. Any failure raises :class:`CheckpointError` naming the path and the problem."""
    path = os.path.abspath(path)
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    meta = _read_meta(path, checkpointer)
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path}: not a {kind} checkpoint (format {found!r}, expected {fmt!r})")
    if meta.get("package_version") != fennec_jax.__version__:
        raise CheckpointError(
            f"{path}: written by fennec_jax {meta.get('package_version')}, this is {fennec_jax.__version__}; "
            f"refit with this version")
    try:
        expected = {name: (np.dtype(dtype), tuple(shape)) for name, (dtype, shape) in meta["arrays"].items()}
        stored = checkpointer.restore(path, args=ocp.args.Composite(arrays=ocp.args.StandardRestore()))["arrays"]
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: unreadable arrays, truncated or corrupted ({describe(e)})") from None
    missing = [name for name, (_, shape) in expected.items() if name not in stored and math.prod(shape)]
    if missing:  # only zero-size arrays are left out when saving (checked before allocating them)
        raise CheckpointError(f"{path}: array {missing[0]!r} is missing; the checkpoint is corrupted")
    arrays = {name: np.asarray(stored[name]) if name in stored else np.zeros(shape, dtype)
              for name, (dtype, shape) in expected.items()}
    stored.pop(_PLACEHOLDER, None)
    if set(stored) - set(expected):
        raise CheckpointError(f"{path}: unexpected arrays {sorted(set(stored) - set(expected))}")
    for name, (dtype, shape) in expected.items():
        if arrays[name].dtype != dtype or arrays[name].shape != shape:
            raise CheckpointError(f"{path}: array {name!r} is {arrays[name].dtype}{list(arrays[name].shape)}, "
                                  f"expected {dtype}{list(shape)}")
    if arrays_checksum({k: v for k, v in meta.items() if k != "checksum"}, arrays) != meta.get("checksum"):
        raise CheckpointError(f"{path}: checksum mismatch: the checkpoint is corrupted")
    return meta, arrays


def stored_format(path: str) -> str | None:
    """The format tag of the checkpoint folder ``path`` (e.g. :data:`FORMAT`), None if its
    metadata has none; :class:`CheckpointError` if there is no readable checkpoint."""
    path = os.path.abspath(path)
    meta = _read_meta(path, ocp.Checkpointer(ocp.CompositeCheckpointHandler()))
    return meta.get("format") if isinstance(meta, dict) else None


def _read_meta(path: str, checkpointer: ocp.Checkpointer):
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no checkpoint folder")
    try:
        return checkpointer.restore(path, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # noqa: BLE001 - any orbax/JSON failure means an unreadable checkpoint
        raise CheckpointError(f"{path}: unreadable checkpoint metadata ({describe(e)})") from None


def arrays_checksum(meta: dict, arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the metadata (canonical JSON) and every array's name, dtype, shape, bytes."""
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()
