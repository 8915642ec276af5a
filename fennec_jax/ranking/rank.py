"""Ranking every model for every task of a benchmark with one fitted method.

The method is fitted once on all the benchmark's records; each target task is then scored
with all its observed cells (and its name and metadata) as evidence, so a known task is
ranked from what is known of it and its unobserved models are predicted.

Each task gives a :class:`~fennec_jax.ranking.table.RankingTable` in the records' units:

* Predicted scores. Methods learn from per-task z-scores (:func:`fennec_jax.core.records.
  standardize`) and score in those units; a task's scores are mapped back with the mean and
  standard deviation of its observed scores (:func:`task_units`): ``predicted = mean + std *
  score``. A task with fewer than two observed models, or equal scores, takes the mean and
  standard deviation pooled over every observed cell of the records.
* Measured scores. A model observed on the task keeps its measured score, which ranks it
  (:mod:`fennec_jax.ranking.table`: measured where observed, else predicted; ties by name).
* Direction. A benchmark with lower-is-better tasks is first *oriented* (:func:`oriented`:
  those tasks' scores negated, so every method sees higher = better); their tables report
  back in the tasks' own units with rank 1 = lowest.

Methods that place models and tasks in one vector space (they implement
:class:`fennec_jax.methods.base.VectorRankingMethod`: ``model_vectors(state)`` and
``task_vector(state, evidence)``) are scored by vector arithmetic. Given ``top_k``, the batch
engine (:func:`fennec_jax.ranking.engine.top_k`, streaming over model chunks) picks each
task's ``top_k + n`` best predicted models, ``n`` the most observed models of a task in the
shard, so the ``top_k`` by rank key are among them and the observed models; only those enter
the table (exact up to models with equal predicted scores at that cut, which the engine
takes in model order). Other methods are scored task by task over every model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence

import numpy as np

from fennec_jax.core.evidence import TaskEvidence
from fennec_jax.core.records import Benchmark, Records, observed_moments, standardize
from fennec_jax.methods.base import RankingMethod
from fennec_jax.ranking import engine
from fennec_jax.ranking.table import RankingTable

__all__ = ["task_evidence", "task_shards", "task_units", "oriented", "rank_tasks"]


def task_evidence(benchmark: Benchmark, task: int) -> TaskEvidence:
    """Everything known of task index ``task``: all its observed scores, its name and metadata."""
    records = benchmark.records
    observed = np.flatnonzero(records.mask[task])
    return TaskEvidence(observed, records.scores[task, observed], metadata=records.task_metadata(task))


def task_shards(benchmark: Benchmark, shard_size: int) -> list[np.ndarray]:
    """The benchmark's target task indices cut into consecutive shards of ``shard_size``."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    targets = benchmark.target_indices
    return [targets[i: i + shard_size] for i in range(0, len(targets), shard_size)]


def task_units(records: Records) -> tuple[np.ndarray, np.ndarray]:
    """``(mean[T], std[T])`` mapping a standardized score ``z`` of task ``t`` back to the
    records' units: ``mean[t] + std[t] * z``.

    Per task, the mean and (population) standard deviation of its observed scores, as
    :func:`~fennec_jax.core.records.standardize` uses them; a task that ``standardize``
    leaves at 0 (fewer than two observed models, or no spread) takes the mean and standard
    deviation of every observed cell of ``records`` pooled (std 1 if even those are equal).
    """
    _, mean, std = (m[:, 0] for m in observed_moments(records.scores, records.mask))
    ok = standardize(records.scores, records.mask).any(1)
    pooled = records.scores[records.mask]
    pooled_mean = float(pooled.mean()) if pooled.size else 0.0
    pooled_std = float(pooled.std()) if pooled.size else 0.0
    if pooled_std <= 1e-12 * max(1.0, abs(pooled_mean)):
        pooled_std = 1.0
    return np.where(ok, mean, pooled_mean), np.where(ok, std, pooled_std)


def oriented(benchmark: Benchmark, lower_is_better: Collection[str]) -> Benchmark:
    """``benchmark`` with the scores of the tasks named in ``lower_is_better`` negated (names
    it does not hold are ignored), so that higher = better on every task."""
    records = benchmark.records
    flip = np.array([task in lower_is_better for task in records.tasks])
    if not flip.any():
        return benchmark
    scores = np.where(flip[:, None], -records.scores, records.scores)
    return dataclasses.replace(benchmark, records=dataclasses.replace(records, scores=scores))


def _latent_scores(benchmark: Benchmark, method: RankingMethod, state, tasks: Sequence[int],
                   top_k: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per task: ``(candidates[C], scores[C])``, the models that can be in the task's top
    ``top_k`` by rank key (module docstring) and the method's scores of them."""
    records = benchmark.records
    evidences = [task_evidence(benchmark, int(t)) for t in tasks]
    if not (hasattr(method, "task_vector") and hasattr(method, "model_vectors")):
        everyone = np.arange(records.num_models)
        scores = np.asarray(method.score_batch(state, evidences), dtype=np.float64)
        return [(everyone, row) for row in scores]
    model_vecs, model_bias = (np.asarray(a, dtype=np.float64) for a in method.model_vectors(state))
    task_vecs, task_bias = zip(*(method.task_vector(state, ev) for ev in evidences))
    task_vecs, task_bias = np.stack(task_vecs).astype(np.float64), np.asarray(task_bias, dtype=np.float64)
    width = records.num_models
    if top_k is not None:
        width = min(width, top_k + int(records.mask[np.asarray(tasks)].sum(1).max()))
    if width < records.num_models:
        _, best = engine.top_k(model_vecs, task_vecs, width, model_bias=model_bias, task_bias=task_bias)
        candidates = [np.union1d(np.asarray(row), np.flatnonzero(records.mask[t])) for row, t in zip(best, tasks)]
    else:
        candidates = [np.arange(records.num_models)] * len(tasks)
    return [(c, model_vecs[c] @ vec + model_bias[c] + bias) for c, vec, bias in zip(candidates, task_vecs, task_bias)]


def rank_tasks(
    benchmark: Benchmark, method: RankingMethod, state, tasks: Sequence[int], top_k: int | None = None,
    lower_is_better: Collection[str] = (),
) -> list[tuple[str, RankingTable]]:
    """``(task name, table)`` for each task index of ``tasks``, in the records' units.

    Args:
      benchmark: the benchmark whose records ``state`` was fitted on, oriented
        (:func:`oriented`) by ``lower_is_better``.
      method: the method that produced ``state``.
      state: ``method.fit(benchmark.records)``.
      tasks: task indices to rank.
      top_k: the tables need only be right for their best ``top_k`` rows (all when None).
      lower_is_better: names of the tasks whose scores ``benchmark`` holds negated; their
        tables are in the tasks' own units, rank 1 = lowest.
    """
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    records = benchmark.records
    mean, std = task_units(records)
    tables = []
    for t, (candidates, scores) in zip(tasks, _latent_scores(benchmark, method, state, tasks, top_k)):
        name = records.tasks[t]
        sign = -1.0 if name in lower_is_better else 1.0
        measured = np.where(records.mask[t, candidates], records.scores[t, candidates], np.nan)
        tables.append((name, RankingTable(
            models=tuple(records.models[m] for m in candidates),
            predicted=sign * (mean[t] + std[t] * scores),
            measured=sign * measured,
            lower_is_better=sign < 0,
        )))
    return tables
