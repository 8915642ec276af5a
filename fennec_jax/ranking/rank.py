"""Ranking every model for every task of a benchmark with one fitted method.

The method is fitted once on all the benchmark's records; each target task is then scored
with all its observed cells (and its name and metadata) as evidence, so a known task is
ranked from what is known of it and its unobserved models are predicted.

Methods that place models and tasks in one vector space (they implement
:class:`fennec_jax.methods.base.VectorRankingMethod`: ``model_vectors(state)`` and
``task_vector(state, evidence)``) are ranked by the batch engine: every task vector of a shard
at once, streaming top-k over model chunks (:func:`fennec_jax.ranking.engine.top_k`). Other methods
are scored task by task and sorted.

Rows are ``(task, rank, model, score)``, rank 1 = predicted best; equal scores keep model order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fennec_jax.core.evidence import TaskEvidence
from fennec_jax.core.records import Benchmark
from fennec_jax.methods.base import RankingMethod
from fennec_jax.ranking import engine

__all__ = ["task_evidence", "task_shards", "rank_tasks"]

Row = tuple[str, int, str, float]


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


def rank_tasks(
    benchmark: Benchmark, method: RankingMethod, state, tasks: Sequence[int], top_k: int | None = None
) -> list[Row]:
    """Rows ``(task, rank, model, score)`` for task indices ``tasks``, best first.

    Args:
      benchmark: the benchmark whose records ``state`` was fitted on.
      method: the method that produced ``state``.
      state: ``method.fit(benchmark.records)``.
      tasks: task indices to rank.
      top_k: keep the best ``top_k`` models per task (all when None).
    """
    records = benchmark.records
    num_models = records.num_models
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    k = num_models if top_k is None else min(top_k, num_models)
    evidences = [task_evidence(benchmark, int(t)) for t in tasks]
    if hasattr(method, "task_vector") and hasattr(method, "model_vectors"):
        model_vecs, model_bias = method.model_vectors(state)
        task_vecs, task_bias = zip(*(method.task_vector(state, ev) for ev in evidences))
        values, indices = engine.top_k(model_vecs, np.stack(task_vecs), k, model_bias=model_bias,
                                       task_bias=np.asarray(task_bias))
        values, indices = np.asarray(values), np.asarray(indices)
    else:
        scores = np.asarray(method.score_batch(state, evidences), dtype=np.float64)
        indices = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        values = np.take_along_axis(scores, indices, axis=1)
    return [
        (records.tasks[t], rank, records.models[m], float(v))
        for t, row_v, row_i in zip(tasks, values, indices)
        for rank, (v, m) in enumerate(zip(row_v, row_i), start=1)
    ]
