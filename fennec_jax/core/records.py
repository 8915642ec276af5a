"""Performance records: models x tasks with a mask of observed cells.

The one in-memory form every method consumes is :class:`Records`::

    scores[T, M]   float64, the observed score of model m on task t (NaN where unobserved)
    mask[T, M]     bool, True where observed
    counts[T, M]   int, how many repeats (seeds) were averaged into the cell

Models are on the last axis, like every score matrix in the package. Higher score = better.

Records are built from a table (CSV in UTF-8, or Parquet when pyarrow is installed) by
:func:`load_records`, which validates every row and names file, line and problem on bad input.
The table is long, ``model,task,score`` with optional columns ``seed`` (repeats of a (model,
task) pair are averaged and the count kept) and ``split`` (kept per cell), or wide, as results
are published: the first column names the models, one column per task, empty = missing.
Model and task metadata (``model,family,params,...`` or ``task,num_classes,...``) attach by
name with :func:`attach_metadata`.

A :class:`Benchmark` wraps records with what the evaluation protocol needs: which tasks are
evaluated (``targets``), which cells of them are scored (``eval_mask``), and which tasks are
history only (for example tasks that come as ranks).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from fennec_jax.core.errors import describe

__all__ = [
    "RecordsError",
    "Records",
    "Benchmark",
    "load_records",
    "load_metadata",
    "attach_metadata",
    "records_from_matrix",
    "standardize",
    "observed_moments",
    "normal_scores",
]

REQUIRED_COLUMNS = ("model", "task", "score")


class RecordsError(ValueError):
    """Bad records or metadata input; the message names the file, line and problem."""


@dataclasses.dataclass(frozen=True)
class Records:
    """Observed performance of M models on T tasks.

    Attributes:
      models: model names, length M.
      tasks: task names, length T.
      scores: ``scores[T, M]`` float64; NaN where ``mask`` is False.
      mask: ``mask[T, M]`` bool, observed cells.
      counts: ``counts[T, M]`` int, number of repeats averaged into each cell (0 = unobserved).
      model_meta: column name -> array of length M (float64 with NaN, or str with '').
      task_meta: column name -> array of length T.
      dropped: reason -> number of input rows dropped on purpose (reported, never silent).
      splits: optional ``splits[T, M]`` str array from a ``split`` column ('' where absent).
      model_side: per-model side information that is not a metadata column, name -> a
        sequence of length M (e.g. ``"graph"``: each model's architecture graph).
      task_side: per-task side information, name -> ``[T, ...]`` array (e.g. ``"proxy"``:
        each task's proxy embedding ``[T, P]``).
    """

    models: tuple[str, ...]
    tasks: tuple[str, ...]
    scores: np.ndarray
    mask: np.ndarray
    counts: np.ndarray
    model_meta: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    task_meta: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    dropped: Mapping[str, int] = dataclasses.field(default_factory=dict)
    splits: np.ndarray | None = None
    model_side: Mapping[str, Sequence] = dataclasses.field(default_factory=dict)
    task_side: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        t, m = len(self.tasks), len(self.models)
        for name in ("scores", "mask", "counts"):
            arr = getattr(self, name)
            if arr.shape != (t, m):
                raise ValueError(f"Records.{name} has shape {arr.shape}, expected (T, M) = {(t, m)}")
        if len(set(self.models)) != m:
            raise ValueError("Records.models has duplicate names")
        if len(set(self.tasks)) != t:
            raise ValueError("Records.tasks has duplicate names")
        if not np.all(np.isfinite(self.scores[self.mask])):
            raise ValueError("Records.scores has non-finite values in observed cells")
        for key, col in self.model_meta.items():
            if len(col) != m:
                raise ValueError(f"model_meta[{key!r}] has length {len(col)}, expected M = {m}")
        for field, n, size in (("task_meta", "T", t), ("model_side", "M", m), ("task_side", "T", t)):
            for key, col in getattr(self, field).items():
                if len(col) != size:
                    raise ValueError(f"{field}[{key!r}] has length {len(col)}, expected {n} = {size}")

    @property
    def num_models(self) -> int:
        return len(self.models)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def task_index(self, task: str) -> int:
        try:
            return self.tasks.index(task)
        except ValueError:
            raise KeyError(f"unknown task {task!r}; known: {', '.join(self.tasks)}") from None

    def select_tasks(self, keep: Sequence[int] | np.ndarray) -> "Records":
        """Records restricted to the task indices ``keep`` (models unchanged)."""
        keep = np.asarray(keep, dtype=int)
        return dataclasses.replace(
            self,
            tasks=tuple(self.tasks[i] for i in keep),
            scores=self.scores[keep],
            mask=self.mask[keep],
            counts=self.counts[keep],
            task_meta={k: v[keep] for k, v in self.task_meta.items()},
            task_side={k: np.asarray(v)[keep] for k, v in self.task_side.items()},
            splits=None if self.splits is None else self.splits[keep],
        )

    def select_models(self, keep: Sequence[int] | np.ndarray) -> "Records":
        """Records restricted to the model indices ``keep`` (tasks unchanged)."""
        keep = np.asarray(keep, dtype=int)
        return dataclasses.replace(
            self,
            models=tuple(self.models[i] for i in keep),
            scores=self.scores[:, keep],
            mask=self.mask[:, keep],
            counts=self.counts[:, keep],
            model_meta={k: np.asarray(v)[keep] for k, v in self.model_meta.items()},
            model_side={k: [v[i] for i in keep] for k, v in self.model_side.items()},
            splits=None if self.splits is None else self.splits[:, keep],
        )

    def hide_models(self, hidden: Sequence[int] | np.ndarray) -> "Records":
        """Records with every cell of the models ``hidden`` (indices) unobserved; the models
        stay (names, metadata, side information), so a method can still place them."""
        hidden = np.asarray(hidden, dtype=int)
        mask, scores, counts = self.mask.copy(), self.scores.copy(), self.counts.copy()
        mask[:, hidden], scores[:, hidden], counts[:, hidden] = False, np.nan, 0
        return dataclasses.replace(self, scores=scores, mask=mask, counts=counts)

    def task_metadata(self, task: int) -> dict:
        """What a user knows of task index ``task`` besides scores: its name and metadata
        columns. The name matters where the task is also some models' source dataset (PARC,
        Model Spider multi-source): a user knows which dataset the new task is."""
        return {"task": self.tasks[task], **{key: col[task] for key, col in self.task_meta.items()}}

    def without_task(self, task: int) -> "Records":
        """Records with task index ``task`` removed entirely (leave-one-task-out history)."""
        return self.select_tasks([i for i in range(self.num_tasks) if i != task])

    def standardized(self) -> np.ndarray:
        """``z[T, M]``: per-task z-scores over observed models (0 where unobserved).

        A task with one observed model, or constant scores, gets z = 0 for its models.
        """
        return standardize(self.scores, self.mask)

    def transformed(self, transform: str = "z") -> np.ndarray:
        """``[T, M]`` per-task scores under ``transform`` (:data:`TRANSFORMS`: ``'z'``
        :func:`standardize`, ``'normal'`` :func:`normal_scores`); 0 where unobserved."""
        return TRANSFORMS[check_transform(transform)](self.scores, self.mask)


def normal_scores(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``z[T, M]``: per task, the standard normal quantiles of the observed models' ranks.

    ``z = Phi^-1((rank - 0.5) / n)`` with average ranks for ties, over the n observed
    models of the task; 0 outside ``mask``. Robust to the long lower tails of accuracy
    tables (a few failed architectures no longer dominate a squared loss).
    """
    import scipy.stats  # on use: scipy.stats is slow to import

    z = np.zeros(scores.shape)
    for t, observed in enumerate(mask):
        ranks = scipy.stats.rankdata(scores[t, observed])
        z[t, observed] = scipy.stats.norm.ppf((ranks - 0.5) / len(ranks))
    return z


def observed_moments(scores: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(count, mean, std)`` of each row of ``scores[..., M]`` over ``mask[..., M]``, each of
    shape ``[..., 1]``: the number of observed entries, their mean and their population
    standard deviation (0 for a row with none)."""
    n = mask.sum(-1, keepdims=True)
    x = np.where(mask, scores, 0.0)
    mean = x.sum(-1, keepdims=True) / np.maximum(n, 1)
    var = (np.where(mask, x - mean, 0.0) ** 2).sum(-1, keepdims=True) / np.maximum(n, 1)
    return n, mean, np.sqrt(var)


def standardize(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-row z-scores of ``scores[..., M]`` over ``mask[..., M]``; 0 outside the mask.

    Rows with fewer than two observed entries or zero spread give 0.
    """
    n, mean, std = observed_moments(scores, mask)
    ok = (n >= 2) & (std > 1e-12 * np.maximum(1.0, np.abs(mean)))
    return np.where(mask & ok, (np.where(mask, scores, 0.0) - mean) / np.where(ok, std, 1.0), 0.0)


TRANSFORMS = {"z": standardize, "normal": normal_scores}


def check_transform(transform: str) -> str:
    """``transform`` if it names one of :data:`TRANSFORMS`, else a ValueError saying which do."""
    if transform not in TRANSFORMS:
        raise ValueError(f"transform: expected one of {', '.join(TRANSFORMS)}, got {transform!r}")
    return transform


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """Records plus the evaluation set-up of a benchmark.

    Attributes:
      name: benchmark name.
      records: all tasks (targets and history-only tasks).
      targets: names of the evaluated tasks (a subset of ``records.tasks``).
      eval_mask: ``eval_mask[T, M]`` bool, the cells that are scored when their task is a
        target (observed, and not excluded by the benchmark's rules, e.g. PARC's oracle <= 0).
      task_kind: ``task_kind[T]`` str, 'score' or 'rank' (a task that comes as ranks only).
      description: one line on origin and protocol.
      features: optional ``features(task) -> {"model_features": [M arrays [N, D_m]],
        "labels": [N], "model_probs": [M arrays [N, Cs_m] or None]}``: every model's
        forward-pass features on the task's examples, loaded on demand (what forward-pass
        estimators read as evidence).
    """

    name: str
    records: Records
    targets: tuple[str, ...]
    eval_mask: np.ndarray
    task_kind: np.ndarray
    description: str = ""
    features: Callable[[str], Mapping[str, Any]] | None = None

    def __post_init__(self):
        r = self.records
        missing = [t for t in self.targets if t not in r.tasks]
        if missing:
            raise ValueError(f"benchmark {self.name!r}: targets not in records: {missing}")
        if self.eval_mask.shape != r.mask.shape:
            raise ValueError(f"benchmark {self.name!r}: eval_mask shape {self.eval_mask.shape} != {r.mask.shape}")
        if np.any(self.eval_mask & ~r.mask):
            raise ValueError(f"benchmark {self.name!r}: eval_mask marks unobserved cells")
        if len(self.task_kind) != r.num_tasks:
            raise ValueError(f"benchmark {self.name!r}: task_kind has length {len(self.task_kind)}")

    @property
    def target_indices(self) -> np.ndarray:
        return np.array([self.records.task_index(t) for t in self.targets], dtype=int)

    def history_tasks(self, history: str) -> np.ndarray:
        """Task indices usable as history: 'targets' (the other targets only) or 'all'."""
        if history == "all":
            return np.arange(self.records.num_tasks)
        if history == "targets":
            return self.target_indices
        raise ValueError(f"history must be 'targets' or 'all', got {history!r}")


def records_from_matrix(
    models: Sequence[str],
    tasks: Sequence[str],
    scores: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    model_meta: Mapping[str, np.ndarray] | None = None,
    task_meta: Mapping[str, np.ndarray] | None = None,
    dropped: Mapping[str, int] | None = None,
) -> Records:
    """Records from a dense ``scores[T, M]`` (NaN = unobserved unless ``mask`` is given)."""
    scores = np.asarray(scores, dtype=np.float64)
    if mask is None:
        mask = np.isfinite(scores)
    mask = np.asarray(mask, dtype=bool)
    return Records(
        models=tuple(models),
        tasks=tuple(tasks),
        scores=np.where(mask, scores, np.nan),
        mask=mask,
        counts=mask.astype(np.int64),
        model_meta=dict(model_meta or {}),
        task_meta=dict(task_meta or {}),
        dropped=dict(dropped or {}),
    )


# ----------------------------------------------------------------------------- reading tables


def _read_table(path: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, row) pairs of a CSV or Parquet file, as strings."""
    if not os.path.exists(path):
        raise RecordsError(f"{path}: no such file")
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError as e:  # pragma: no cover - pyarrow ships with tensorflow-datasets
            raise RecordsError(f"{path}: reading Parquet needs pyarrow ({e})") from None
        try:
            table = pq.read_table(path)
            header = [str(c) for c in table.column_names]
            columns = [table.column(i).to_pylist() for i in range(len(header))]
        except Exception as e:  # noqa: BLE001 - any pyarrow failure is a bad file
            raise RecordsError(f"{path}: not a readable Parquet file ({describe(e)}); expected a table with "
                               f"columns model,task,score (or a wide table)") from None
        rows = [(i + 1, ["" if v is None else str(v) for v in row]) for i, row in enumerate(zip(*columns))]
        if not header:
            raise RecordsError(f"{path}: empty file (no columns)")
        return header, rows
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark (Excel's "CSV UTF-8") is dropped
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise RecordsError(f"{path}: line {line}: byte 0x{data[e.start]:02x} is not UTF-8; expected a UTF-8 "
                           f"CSV file (or a .parquet file)") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise RecordsError(f"{path}: empty file (expected a header line)") from None
    except csv.Error as e:
        raise RecordsError(f"{path}: line 1: not valid CSV ({e})") from None
    header = [h.strip() for h in header]
    rows = []
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue  # blank line
            if len(row) != len(header):
                raise RecordsError(
                    f"{path}: line {reader.line_num}: {len(row)} fields, header has {len(header)}"
                )
            rows.append((reader.line_num, [cell.strip() for cell in row]))
    except csv.Error as e:
        raise RecordsError(f"{path}: line {reader.line_num}: not valid CSV ({e})") from None
    return header, rows


def _parse_score(path: str, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise RecordsError(f"{path}: line {line}: {column} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise RecordsError(f"{path}: line {line}: {column} {text!r} is not finite")
    return value


class _Cells(NamedTuple):
    """A records table as read: names in order of appearance, the scores of each cell
    ``(task index, model index)`` (repeats to average) and splits per cell (None without a
    split column)."""

    models: tuple[str, ...]
    tasks: tuple[str, ...]
    cells: dict[tuple[int, int], list[float]]
    splits: dict[tuple[int, int], str] | None


def _long_cells(path: str, header: list[str], rows: list[tuple[int, list[str]]]) -> _Cells:
    """The cells of a long table ``model,task,score[,seed][,split]`` (see :func:`load_records`)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise RecordsError(
            f"{path}: missing column(s) {', '.join(missing)}; header is {','.join(header)} "
            f"(expected model,task,score[,seed][,split], or a wide table: model, then one column per task)"
        )
    col = {name: header.index(name) for name in header}
    has_seed, has_split = "seed" in col, "split" in col
    models: dict[str, int] = {}
    tasks: dict[str, int] = {}
    seen: dict[tuple, int] = {}
    cells: dict[tuple[int, int], list[float]] = {}
    cell_split: dict[tuple[int, int], str] = {}
    for line, row in rows:
        model, task = row[col["model"]], row[col["task"]]
        if not model:
            raise RecordsError(f"{path}: line {line}: empty model name")
        if not task:
            raise RecordsError(f"{path}: line {line}: empty task name")
        score = _parse_score(path, line, "score", row[col["score"]])
        key: tuple = (model, task)
        if has_seed:
            seed = row[col["seed"]]
            if not seed:
                raise RecordsError(f"{path}: line {line}: empty seed")
            key = (model, task, seed)
        if key in seen:
            what = "(model, task, seed)" if has_seed else "(model, task)"
            hint = "" if has_seed else "; add a 'seed' column if these are repeats to average"
            raise RecordsError(
                f"{path}: line {line}: duplicate {what} = {key}, first at line {seen[key]}{hint}"
            )
        seen[key] = line
        m = models.setdefault(model, len(models))
        t = tasks.setdefault(task, len(tasks))
        cells.setdefault((t, m), []).append(score)
        if has_split:
            split = row[col["split"]]
            previous = cell_split.setdefault((t, m), split)
            if previous != split:
                raise RecordsError(
                    f"{path}: line {line}: split {split!r} differs from {previous!r} given earlier "
                    f"for ({model}, {task})"
                )
    return _Cells(tuple(models), tuple(tasks), cells, cell_split if has_split else None)


def _wide_cells(path: str, header: list[str], rows: list[tuple[int, list[str]]]) -> _Cells:
    """The cells of a wide table: the first column names the models (whatever its header), every
    other column is a task named by its header, an empty cell is a missing result. Every model
    and task is kept, also one without scores (metadata or a method's prior can still place it)."""
    tasks = header[1:]
    if not tasks:
        raise RecordsError(f"{path}: line 1: one column only; expected model,task,score (long) or a model "
                           f"column followed by one column per task (wide)")
    for i, task in enumerate(tasks, start=2):
        if not task:
            raise RecordsError(f"{path}: line 1: column {i} has no task name")
        if task in tasks[: i - 2]:
            raise RecordsError(f"{path}: line 1: task column {task!r} appears twice")
    first: dict[str, int] = {}  # model -> its line
    values: list[list[float]] = []
    for line, row in rows:
        model = row[0]
        if not model:
            raise RecordsError(f"{path}: line {line}: empty model name")
        if model in first:
            raise RecordsError(f"{path}: line {line}: duplicate model {model!r}, first at line {first[model]}")
        first[model] = line
        values.append([_parse_score(path, line, task, text) if text else math.nan
                       for task, text in zip(tasks, row[1:])])
    scores = np.array(values, dtype=np.float64).reshape(len(rows), len(tasks))
    cells = {(t, m): [float(scores[m, t])] for m, t in zip(*np.nonzero(np.isfinite(scores)))}
    return _Cells(tuple(first), tuple(tasks), cells, None)


def load_records(
    path: str,
    *,
    model_meta: str | None = None,
    task_meta: str | None = None,
) -> Records:
    """Reads a records table, long or wide, into :class:`Records`.

    The form is told by the header. A header with a ``task`` or a ``score`` column is a *long*
    table, one row per result: ``model,task,score`` and optionally ``seed``
    (repeats of a (model, task) pair are averaged and their count kept) and ``split``. Any
    other header is a *wide* table, as results are usually published: the first column names
    the models (its header is free, e.g. ``model``), every other column is a task named by its
    header, one row per model, an empty cell is a missing result; every model row and task
    column is kept, also one without scores.

    CSV files are read as UTF-8 (a leading byte-order mark is ignored); ``.parquet`` files
    need pyarrow.

    Args:
      path: CSV (or ``.parquet``) file.
      model_meta: optional metadata file with a ``model`` column (see :func:`load_metadata`).
      task_meta: optional metadata file with a ``task`` column.

    Returns:
      Records with tasks and models in order of first appearance. A task whose scores look
      like fractions and percentages mixed (all in [0, 100], some in [0, 1], the others well
      above 1 and in the range of the first times 100) loads with a UserWarning naming the file
      and the task.

    Raises:
      RecordsError: naming file, line and problem for: a missing file, a file that is not
        UTF-8, a long table missing one of model, task, score, an empty file, a row with the
        wrong number of fields, an empty model or task name, a non-numeric or non-finite
        score, a duplicate (model, task) without a ``seed`` column (or a duplicate (model,
        task, seed) with one), repeats of one cell with different splits, a duplicate model
        row or task column of a wide table, and metadata rows naming a model or task that
        is not in the records.
    """
    header, rows = _read_table(path)
    if not rows:
        raise RecordsError(f"{path}: no data rows after the header")
    long = any(c in header for c in REQUIRED_COLUMNS[1:])
    table = (_long_cells if long else _wide_cells)(path, header, rows)
    shape = (len(table.tasks), len(table.models))
    scores = np.full(shape, np.nan)
    counts = np.zeros(shape, dtype=np.int64)
    for (t, m), values in table.cells.items():
        scores[t, m] = float(np.mean(values))
        counts[t, m] = len(values)
    splits = None
    if table.splits is not None:
        splits = np.full(shape, "", dtype=object)
        for (t, m), split in table.splits.items():
            splits[t, m] = split
    records = Records(
        models=table.models,
        tasks=table.tasks,
        scores=scores,
        mask=counts > 0,
        counts=counts,
        splits=splits,
    )
    _warn_mixed_units(path, records)
    if model_meta is not None:
        records = attach_metadata(records, load_metadata(model_meta, "model", records.models), "model")
    if task_meta is not None:
        records = attach_metadata(records, load_metadata(task_meta, "task", records.tasks), "task")
    return records


def _warn_mixed_units(path: str, records: Records) -> None:
    """A UserWarning naming each task whose scores look like fractions and percentages mixed:
    all in [0, 100], some in [0, 1] and the others above 10 times the largest of those, and the
    fractions times 100 reach the others' range. A real spread does not leave that gap (a model
    at 0.8 % top-1 beside others from 1.2 %), and ranks 1, 2, ... neither."""
    for t, task in enumerate(records.tasks):
        values = records.scores[t, records.mask[t]]
        small, large = values[values <= 1], values[values > 1]
        if (small.size and large.size and values.min() >= 0 and values.max() <= 100
                and large.min() > 10 * small.max() and 100 * small.max() >= large.min()):
            warnings.warn(f"{path}: task {task!r} has {small.size} score(s) in [0, 1] and {large.size} in "
                          f"[{large.min():g}, {large.max():g}], as if fractions and percentages were mixed; "
                          f"expected one unit per task (e.g. multiply the fractions by 100)", UserWarning, stacklevel=3)


def load_metadata(path: str, key: str, known: Sequence[str] | None = None) -> dict[str, dict[str, str]]:
    """Reads a metadata table keyed by column ``key`` ('model' or 'task').

    Returns ``{name: {column: text}}``. With ``known`` given, a row naming something not in
    ``known`` is an error (file, line, name), as is a duplicate name or a missing key column.
    """
    header, rows = _read_table(path)
    if key not in header:
        raise RecordsError(f"{path}: missing column {key!r}; header is {','.join(header)}")
    k = header.index(key)
    known_set = None if known is None else set(known)
    out: dict[str, dict[str, str]] = {}
    first: dict[str, int] = {}
    for line, row in rows:
        name = row[k]
        if not name:
            raise RecordsError(f"{path}: line {line}: empty {key} name")
        if known_set is not None and name not in known_set:
            raise RecordsError(f"{path}: line {line}: unknown {key} {name!r} (not in the records)")
        if name in first:
            raise RecordsError(f"{path}: line {line}: duplicate {key} {name!r}, first at line {first[name]}")
        first[name] = line
        out[name] = {h: v for h, v in zip(header, row) if h != key}
    return out


def _metadata_column(values: list[str]) -> np.ndarray:
    """Numeric column (float64, NaN for blanks) when every non-blank value parses, else str."""
    try:
        return np.array([float(v) if v != "" else np.nan for v in values], dtype=np.float64)
    except ValueError:
        return np.array(values, dtype=object)


def attach_metadata(records: Records, table: Mapping[str, Mapping[str, str]], key: str) -> Records:
    """Returns records with ``table`` (from :func:`load_metadata`) attached by name.

    Names absent from ``table`` get NaN (numeric columns) or '' (text columns).
    """
    if key not in ("model", "task"):
        raise ValueError(f"key must be 'model' or 'task', got {key!r}")
    names = records.models if key == "model" else records.tasks
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise RecordsError(f"metadata names unknown {key}(s): {unknown[:5]}")
    columns = sorted({c for row in table.values() for c in row})
    meta = {c: _metadata_column([table.get(n, {}).get(c, "") for n in names]) for c in columns}
    field = "model_meta" if key == "model" else "task_meta"
    merged = {**getattr(records, field), **meta}
    return dataclasses.replace(records, **{field: merged})
