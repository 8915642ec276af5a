"""Saving and restoring a fitted :class:`~fennec_jax.transfer_space.TransferSpace` with orbax.

A checkpoint is one folder, an orbax composite checkpoint with two items:

* ``arrays``: the space's arrays (model and task vectors and biases, priors, fitted maps);
* ``meta``: JSON with the format tag, the ``fennec_jax`` version that wrote it, model, task and
  dataset names, the config, the task-metadata encoder, every array's dtype and shape, and a
  SHA-256 checksum over all of it.

orbax writes into a temporary folder and renames it when complete, so a crash leaves no
half-written checkpoint under ``path``. Restoring checks, in order: the folder exists and orbax
can read it, the format tag, the package version (a checkpoint from another version is refused:
refit instead), the arrays' names, dtypes and shapes, and the checksum. Any failure raises
:class:`CheckpointError` naming the path and the problem, never a space that ranks wrongly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np
import orbax.checkpoint as ocp

import fennec_jax
from fennec_jax.transfer_space import FeatureEncoder, ProxyMap, SpaceConfig, TransferSpace

__all__ = ["CheckpointError", "FORMAT", "save_space", "restore_space", "save_arrays", "restore_arrays", "stored_format"]

FORMAT = "fennec_jax.transfer_space/1"
_ARRAYS = ("model_vecs", "model_bias", "task_vecs", "task_bias", "prior_vec", "dataset_priors", "source_datasets",
           "source_profiles", "model_sources")
_MAPS = ("metadata_map", "proxy_map")
_MAP_ARRAYS = ("weights", "x_mean", "v_mean")


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored faithfully; the message names path and problem."""


def save_space(path: str, space: TransferSpace, *, overwrite: bool = False) -> None:
    """Writes ``space`` to the folder ``path`` (atomically; an existing one only if ``overwrite``)."""
    meta = {
        "models": list(space.models),
        "tasks": list(space.tasks),
        "datasets": list(space.datasets),
        "config": dataclasses.asdict(space.config),
        "validation": [[dataclasses.asdict(c), float(v)] for c, v in space.validation],
        "task_encoder": space.task_encoder.to_json(),
        "maps": [name for name in _MAPS if getattr(space, name) is not None],
    }
    save_arrays(path, FORMAT, meta, _space_arrays(space), overwrite=overwrite)


def restore_space(path: str) -> TransferSpace:
    """The space saved at ``path`` by :func:`save_space`.

    Raises:
      CheckpointError: missing or unreadable (truncated, corrupted) checkpoint, another format,
        another ``fennec_jax`` version, or arrays that do not match their checksum.
    """
    meta, arrays = restore_arrays(path, FORMAT, "transfer-space")
    try:
        return _space_from_parts(meta, arrays)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{os.path.abspath(path)}: inconsistent checkpoint ({type(e).__name__}: {e})") from None


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
        raise CheckpointError(f"{path}: unreadable arrays, truncated or corrupted ({type(e).__name__}: {e})") from None
    arrays = {name: np.asarray(stored[name]) if name in stored else np.zeros(shape, dtype)
              for name, (dtype, shape) in expected.items()}
    if set(stored) - set(expected):
        raise CheckpointError(f"{path}: unexpected arrays {sorted(set(stored) - set(expected))}")
    for name, (dtype, shape) in expected.items():
        if arrays[name].dtype != dtype or arrays[name].shape != shape:
            raise CheckpointError(f"{path}: array {name!r} is {arrays[name].dtype}{list(arrays[name].shape)}, "
                                  f"expected {dtype}{list(shape)}")
    if arrays_checksum({k: v for k, v in meta.items() if k != "checksum"}, arrays) != meta.get("checksum"):
        raise CheckpointError(f"{path}: checksum mismatch: the checkpoint is corrupted")
    return meta, arrays


def _space_arrays(space: TransferSpace) -> dict[str, np.ndarray]:
    arrays = {name: np.ascontiguousarray(getattr(space, name)) for name in _ARRAYS}
    for name in _MAPS:
        fitted = getattr(space, name)
        if fitted is not None:
            arrays.update({f"{name}.{part}": np.ascontiguousarray(getattr(fitted, part)) for part in _MAP_ARRAYS})
    return arrays


def _space_from_parts(meta: dict, arrays: dict[str, np.ndarray]) -> TransferSpace:
    maps = {name: ProxyMap(*(arrays[f"{name}.{part}"] for part in _MAP_ARRAYS)) if name in meta["maps"] else None
            for name in _MAPS}
    return TransferSpace(
        models=tuple(meta["models"]),
        tasks=tuple(meta["tasks"]),
        datasets=tuple(meta["datasets"]),
        config=SpaceConfig(**meta["config"]),
        validation=tuple((SpaceConfig(**c), float(v)) for c, v in meta["validation"]),
        task_encoder=FeatureEncoder.from_json(meta["task_encoder"]),
        **{name: arrays[name] for name in _ARRAYS},
        **maps,
    )


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
        raise CheckpointError(f"{path}: unreadable checkpoint metadata ({type(e).__name__}: {e})") from None


def arrays_checksum(meta: dict, arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the metadata (canonical JSON) and every array's name, dtype, shape, bytes."""
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()
