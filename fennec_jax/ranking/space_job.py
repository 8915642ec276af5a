"""The ``rank_all --space`` job: rank every model for many tasks from a fitted transfer space.

A zoo of a million models x ten thousand tasks has no records table (10^10 cells); what can
exist is a fitted transfer space, where task ``t`` scores model ``m`` as ``task_vecs[t] @
model_vecs[m] + model_bias[m] + task_bias[t]`` (higher = better; the method's own units). The
fit is not part of this job: the space comes from it (`export_space` writes a fitted vector
method's space; any other source of vectors works).

Input folder (`load_space`; the arrays are memory-mapped)::

    model_vecs.npy   [M, d] float
    task_vecs.npy    [T, d] float
    model_bias.npy   [M]   optional (zeros)
    task_bias.npy    [T]   optional (zeros)
    models.txt       M names, one a line, optional (a model is then named by its row: 0, 1, ...)
    tasks.txt        T names, one a line, optional (likewise)

Layout under ``out``::

    rankings.parquet            task, rank, model, score (one row group per shard)
    rankings.csv                the same rows (``formats``)
    summary.json                models, tasks ranked, top_k, rows, shards
    parts/job.json              the arguments (and the space's digest) that made the parts
    parts/shard-NNNNN.parquet   the rows of one shard of tasks

Each task's models are ranked by :func:`fennec_jax.ranking.engine.top_k` (k = ``top_k``, or
M for a full ranking: the engine then sorts), best first, equal scores by lower row; rank 1
= best. Tasks go in shards of ``shard_size`` (by default even shards of at most
``_SHARD_ROWS`` rows and 1024 tasks), each written atomically, so memory is bounded by a
shard beside the space itself, and a killed run restarted with the same arguments and the
same space resumes from its finished shards and gives the same output; parts made with other
arguments or another space are cleared first. The final files are assembled from the shards,
streamed (:mod:`fennec_jax.ranking.outputs`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from jax.experimental import multihost_utils

import fennec_jax
from fennec_jax.core import atomic_io
from fennec_jax.core.digest import files_digest
from fennec_jax.core.records import Benchmark
from fennec_jax.methods.base import RankingMethod
from fennec_jax.ranking import distributed, engine, outputs
from fennec_jax.ranking.rank import task_evidence

__all__ = ["SpaceError", "Space", "SpaceJob", "load_space", "select_tasks", "run_space_job",
           "export_space", "SCHEMA"]

SCHEMA = pa.schema([("task", pa.string()), ("rank", pa.int32()), ("model", pa.string()),
                    ("score", pa.float32())])
_SHARD_ROWS = 1 << 22  # default rows per shard
_MAX_SHARD_TASKS = 1024
_CHECK_ROWS = 1 << 16  # rows per pass of the finiteness check over a memory-mapped array
_PARTS_FORMAT = 1


class SpaceError(ValueError):
    """A space folder or a task selection that cannot be used; the message names the file or
    argument and what was expected."""


@dataclasses.dataclass(frozen=True)
class Space:
    """A fitted transfer space: model_vecs[M, d], task_vecs[T, d], model_bias[M],
    task_bias[T] (NumPy, possibly memory-mapped), names of the models and tasks, and a digest
    of the folder's files."""

    model_vecs: np.ndarray
    task_vecs: np.ndarray
    model_bias: np.ndarray
    task_bias: np.ndarray
    models: pa.Array
    tasks: tuple[str, ...]
    digest: str


@dataclasses.dataclass(frozen=True)
class SpaceJob:
    """Arguments of one space ranking run (with the space's digest, they key the resume state).

    ``top_k``: models per task (None: all, a full ranking). ``tasks``: task names to rank, or
    ``task_range``: ``(start, stop)`` rows; neither: every task. ``shard_size``: tasks per
    shard (None: the module docstring's default)."""

    top_k: int | None = None
    tasks: tuple[str, ...] | None = None
    task_range: tuple[int, int] | None = None
    shard_size: int | None = None


# ------------------------------------------------------------------------------ inputs


def _load_array(folder: str, name: str, ndim: int, required: bool) -> np.ndarray | None:
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        if required:
            raise SpaceError(f"{path}: missing; a space folder holds model_vecs.npy [M, d] and "
                             f"task_vecs.npy [T, d]")
        return None
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        raise SpaceError(f"{path}: expected a NumPy .npy array, could not read it ({err})") from None
    if array.ndim != ndim or array.dtype.kind not in "fiu":
        raise SpaceError(f"{path}: expected a {ndim}-D array of real numbers, got shape "
                         f"{array.shape} and dtype {array.dtype}")
    for start in range(0, max(len(array), 1), _CHECK_ROWS):
        if not np.isfinite(array[start:start + _CHECK_ROWS]).all():
            raise SpaceError(f"{path}: expected finite numbers, found NaN or infinity")
    return array


def _load_names(folder: str, name: str, count: int, what: str) -> list[str] | None:
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        names = f.read().splitlines()
    if len(names) != count:
        raise SpaceError(f"{path}: expected {count} names (one a line, one per {what}), got "
                         f"{len(names)}")
    if len(set(names)) != count:
        raise SpaceError(f"{path}: expected distinct names, found repeats")
    return names


_FILES = ("model_vecs.npy", "task_vecs.npy", "model_bias.npy", "task_bias.npy", "models.txt", "tasks.txt")


def load_space(folder: str) -> Space:
    """The space in ``folder`` (module docstring), checked: shapes agree, numbers are finite,
    names are as many as rows and distinct. Raises SpaceError naming the file at fault."""
    if not os.path.isdir(folder):
        raise SpaceError(f"{folder}: no such folder (a space folder holds model_vecs.npy and "
                         f"task_vecs.npy)")
    model_vecs = _load_array(folder, "model_vecs.npy", 2, True)
    task_vecs = _load_array(folder, "task_vecs.npy", 2, True)
    num_models, num_tasks = len(model_vecs), len(task_vecs)
    if num_models == 0 or num_tasks == 0:
        raise SpaceError(f"{folder}: expected at least one model and one task, got "
                         f"model_vecs {model_vecs.shape}, task_vecs {task_vecs.shape}")
    if task_vecs.shape[1] != model_vecs.shape[1]:
        raise SpaceError(f"{os.path.join(folder, 'task_vecs.npy')}: expected {model_vecs.shape[1]} "
                         f"columns to match model_vecs.npy {model_vecs.shape}, got {task_vecs.shape}")
    biases = []
    for name, count in (("model_bias.npy", num_models), ("task_bias.npy", num_tasks)):
        bias = _load_array(folder, name, 1, False)
        if bias is not None and len(bias) != count:
            raise SpaceError(f"{os.path.join(folder, name)}: expected shape ({count},), one entry "
                             f"per row of {name.split('_')[0]}_vecs.npy, got {bias.shape}")
        biases.append(np.zeros(count, np.float32) if bias is None else bias)
    models = _load_names(folder, "models.txt", num_models, "row of model_vecs.npy")
    tasks = _load_names(folder, "tasks.txt", num_tasks, "row of task_vecs.npy")
    return Space(model_vecs=model_vecs, task_vecs=task_vecs, model_bias=biases[0], task_bias=biases[1],
                 models=pa.array(models if models is not None else np.arange(num_models).astype(str)),
                 tasks=tuple(tasks if tasks is not None else map(str, range(num_tasks))),
                 digest=files_digest(folder, [n for n in _FILES if os.path.exists(os.path.join(folder, n))]))


def select_tasks(space: Space, tasks: Sequence[str] | None = None,
                 task_range: tuple[int, int] | None = None) -> np.ndarray:
    """Rows of the tasks to rank: those named in ``tasks`` (in that order), or rows
    ``start:stop`` of ``task_range``, or all. Raises SpaceError on an unknown name or a bad
    range."""
    num_tasks = len(space.tasks)
    if tasks is not None and task_range is not None:
        raise SpaceError("tasks, task_range: give one or the other, not both")
    if tasks is not None:
        row = {name: i for i, name in enumerate(space.tasks)}
        unknown = [name for name in tasks if name not in row]
        if unknown:
            raise SpaceError(f"tasks: no task named {', '.join(map(repr, unknown[:5]))} in the "
                             f"space's tasks.txt ({num_tasks} tasks)")
        if not tasks:
            raise SpaceError("tasks: expected at least one task name")
        return np.array([row[name] for name in tasks], dtype=np.int64)
    if task_range is not None:
        start, stop = task_range
        if not 0 <= start < stop <= num_tasks:
            raise SpaceError(f"task_range: expected start:stop with 0 <= start < stop <= "
                             f"{num_tasks} (the number of tasks), got {start}:{stop}")
        return np.arange(start, stop)
    return np.arange(num_tasks)


# ------------------------------------------------------------------------------ ranking


def _shard_table(space: Space, device_space, rows: np.ndarray, k: int, mesh) -> pa.Table:
    """The rankings of the tasks at ``rows``: k rows per task, best first."""
    model_vecs, model_bias = device_space
    values, indices = engine.top_k(model_vecs, space.task_vecs[rows], k, model_bias=model_bias,
                                   task_bias=space.task_bias[rows], mesh=mesh)
    names = pa.array([space.tasks[r] for r in rows])
    return pa.table({
        "task": names.take(np.repeat(np.arange(len(rows)), k)),
        "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), len(rows))),
        "model": space.models.take(np.asarray(indices).ravel()),
        "score": pa.array(np.asarray(values, dtype=np.float32).ravel()),
    }, schema=SCHEMA)


def _agreed(flag: bool) -> bool:
    """``flag`` as process 0 sees it, on every process (a shard every process skips or
    computes together: each shard's ranking is a collective over the mesh)."""
    if jax.process_count() == 1:
        return flag
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))


def run_space_job(space: Space, job: SpaceJob, out: str, formats: Sequence[str] = ("parquet",),
                  log: Callable[[str], None] = lambda msg: None, mesh=None) -> dict:
    """Runs (or resumes) the job: ranks the selected tasks shard by shard, writes
    ``rankings.parquet`` and/or ``rankings.csv`` (``formats``) and ``summary.json``; returns
    the summary. Raises SpaceError on a bad argument.

    With a ``mesh`` (``engine.make_mesh()``; after :func:`fennec_jax.ranking.distributed.initialize`
    it spans every process), the models are split over its devices and every process ranks
    each shard with the others; process 0 alone writes the files (every process gets the
    whole rankings, so its files equal a one-process run's)."""
    outputs.check_formats(formats, SpaceError)
    num_models = len(space.model_vecs)
    if job.top_k is not None and not 1 <= job.top_k <= num_models:
        raise SpaceError(f"top_k: expected 1 to {num_models} (the number of models), got {job.top_k}")
    if job.shard_size is not None and job.shard_size < 1:
        raise SpaceError(f"shard_size: expected a positive number of tasks, got {job.shard_size}")
    rows = select_tasks(space, job.tasks, job.task_range)
    k = job.top_k or num_models
    shard_size = job.shard_size
    if shard_size is None:  # even shards: every engine call has one shape, compiled once
        most = int(np.clip(_SHARD_ROWS // k, 1, _MAX_SHARD_TASKS))
        shard_size = -(-len(rows) // -(-len(rows) // most))
    shards = [rows[i:i + shard_size] for i in range(0, len(rows), shard_size)]

    part_dir = os.path.join(out, "parts")
    key = {**dataclasses.asdict(job), "space": space.digest, "shard_tasks": shard_size,
           "package_version": fennec_jax.__version__, "parts_format": _PARTS_FORMAT}
    key = json.loads(json.dumps(key))
    job_path = os.path.join(part_dir, "job.json")
    writes = distributed.is_main()
    if writes and os.path.exists(job_path):
        with open(job_path) as f:
            if json.load(f) != key:
                log("earlier parts were made with other arguments or another space; starting afresh")
                shutil.rmtree(part_dir)
    if writes:
        atomic_io.write_json(job_path, key)

    device_space = None  # the models on the device, once for every shard
    paths = [os.path.join(part_dir, f"shard-{i:05d}.parquet") for i in range(len(shards))]
    for i, (path, shard) in enumerate(zip(paths, shards)):
        if _agreed(writes and os.path.exists(path)):
            log(f"shard {i + 1}/{len(shards)} already done")
            continue
        if device_space is None:  # on the device once; with a mesh, top_k places them on it
            to = np.asarray if mesh is not None else jnp.asarray
            device_space = (to(space.model_vecs, np.float32), to(space.model_bias, np.float32))
        table = _shard_table(space, device_space, shard, k, mesh)
        if writes:
            outputs.write_parquet(path, SCHEMA, [table])
        log(f"shard {i + 1}/{len(shards)} ranked ({len(shard)} tasks)")

    read = lambda: (pq.read_table(path, schema=SCHEMA) for path in paths)
    total = 0
    if not writes:
        return {"models": num_models, "tasks": len(space.tasks), "tasks_ranked": len(rows), "top_k": job.top_k,
                "rows": len(rows) * k, "shards": len(shards), "formats": list(formats),
                "note": "written by process 0"}
    if "parquet" in formats:
        total = outputs.write_parquet(os.path.join(out, "rankings.parquet"), SCHEMA, read())
    if "csv" in formats:
        total = outputs.write_csv(os.path.join(out, "rankings.csv"), SCHEMA, read())
    summary = {"models": num_models, "tasks": len(space.tasks), "tasks_ranked": len(rows),
               "top_k": job.top_k, "rows": total, "shards": len(shards), "shard_tasks": shard_size,
               "formats": list(formats), "job": key,
               "note": "scores in the space's own units; the fit that made the space is not part "
                       "of this job"}
    atomic_io.write_json(os.path.join(out, "summary.json"), summary)
    return summary


# ------------------------------------------------------------------------------ export


def export_space(benchmark: Benchmark, method: RankingMethod, state, folder: str) -> dict:
    """Writes the transfer space of a fitted vector method (``model_vectors`` /
    ``task_vector``) to ``folder``, in the layout `load_space` reads: every model, and every
    target task of ``benchmark`` with all its observed scores as evidence (as
    :func:`fennec_jax.ranking.rank.rank_tasks` ranks it). Scores are then the method's
    per-task standardized scores. Returns ``{"models": M, "tasks": T, "dim": d}``.

    An existing space folder is replaced; any other existing ``folder`` is left alone.
    Raises SpaceError when the method places no vectors or ``folder`` is not a space."""
    if not (hasattr(method, "model_vectors") and hasattr(method, "task_vector")):
        raise SpaceError(f"method {method.name!r} has no transfer space (model_vectors / "
                         f"task_vector); choose a vector method such as fennec")
    model_vecs, model_bias = (np.asarray(a, np.float32) for a in method.model_vectors(state))
    targets = benchmark.target_indices
    task_vecs, task_bias = zip(*(method.task_vector(state, task_evidence(benchmark, int(t)))
                                 for t in targets))
    records = benchmark.records

    def fill(tmp):
        arrays = {"model_vecs": model_vecs, "model_bias": model_bias,
                  "task_vecs": np.stack(task_vecs).astype(np.float32),
                  "task_bias": np.asarray(task_bias, np.float32)}
        for name, array in arrays.items():
            np.save(os.path.join(tmp, f"{name}.npy"), array)
        for name, names in (("models.txt", records.models),
                            ("tasks.txt", [records.tasks[t] for t in targets])):
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                f.write("".join(f"{n}\n" for n in names))

    if os.path.exists(folder) and not os.path.exists(os.path.join(folder, "model_vecs.npy")):
        raise SpaceError(f"{folder}: exists and holds no space (model_vecs.npy); give a new folder")
    atomic_io.write_folder(folder, fill, overwrite=True)
    return {"models": len(model_vecs), "tasks": len(targets), "dim": model_vecs.shape[1]}
