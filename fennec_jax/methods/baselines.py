"""Simple ranking baselines: random, popularity, knn_task, family_popularity, and the fixed
rankings by a per-model number, size and source_score.

The history-based ones work on per-task z-scores of the history
(:func:`fennec_jax.core.records.standardize`), so tasks on different scales (accuracy %,
negative error, ranks) mix on equal terms. ``size`` and ``source_score`` rank every task the
same way, by one number per model (its parameter count; its score on the source task, e.g.
ImageNet top-1 or a linear probe): the baselines a transferability method has to beat.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from fennec_jax.core.evidence import MissingEvidenceError, TaskEvidence
from fennec_jax.core.records import Records, check_transform, standardize
from fennec_jax.methods.base import CompletionMethod, MethodBase, register

__all__ = ["Random", "Popularity", "KnnTask", "FamilyPopularity", "ColumnRanking", "Size", "SourceScore",
           "popularity_scores", "weighted_task_average", "family_popularity"]


def weighted_task_average(z: np.ndarray, mask: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``pred[M]``: per-model average of ``z[T, M]`` over observed tasks, task weights ``w[T]``.

    A model observed on no task with positive weight gets 0 (the mean z-score).
    """
    w = np.where(mask, weights[:, None], 0.0)
    total = w.sum(0)
    return np.where(total > 0, (w * z).sum(0) / np.where(total > 0, total, 1.0), 0.0)


def popularity_scores(history: Records, transform: str = "z") -> np.ndarray:
    """``pop[M]``: mean over history tasks of each model's per-task score under ``transform``
    (``'z'``: z-scores; ``'normal'``: rank-based normal scores, :meth:`Records.transformed`)."""
    return weighted_task_average(history.transformed(transform), history.mask, np.ones(history.num_tasks))


@register("random")
@dataclasses.dataclass(frozen=True)
class Random(MethodBase):
    """Uniformly random scores: the floor every method must clear."""

    name: str = "random"

    def fit(self, history: Records, seed: int = 0):
        return {"num_models": history.num_models, "seed": seed}

    def score(self, state, evidence: TaskEvidence) -> np.ndarray:
        rng = np.random.default_rng([state["seed"], evidence.seed, *evidence.probe_models.tolist()])
        return rng.standard_normal(state["num_models"])


@register("popularity")
@dataclasses.dataclass(frozen=True)
class Popularity(MethodBase):
    """Mean per-task history score per model (z-scores, or with ``transform='normal'``
    rank-based normal scores); ignores the task's evidence."""

    transform: str = "z"
    name: str = "popularity"

    def __post_init__(self):
        check_transform(self.transform)

    def fit(self, history: Records, seed: int = 0):
        return popularity_scores(history, self.transform)

    def score(self, state, evidence: TaskEvidence) -> np.ndarray:
        return np.asarray(state)


@register("knn_task")
@dataclasses.dataclass(frozen=True)
class KnnTask(MethodBase):
    """Historical tasks weighted by how well they agree with the probe scores.

    With k >= 2 probes, each history task t gets weight ``max(corr_t, 0) ** power``, where
    ``corr_t`` is the Pearson correlation between the probe scores and task t's z-scores on
    the probe models it observed (at least 2). A model's score is the weighted mean of its
    z-scores. With k < 2, or no positively correlated task, it is popularity.
    ``transform='normal'`` uses rank-based normal scores in place of z-scores.
    """

    power: float = 2.0
    transform: str = "z"
    name: str = "knn_task"

    def __post_init__(self):
        check_transform(self.transform)

    def fit(self, history: Records, seed: int = 0):
        return {"z": history.transformed(self.transform), "mask": history.mask}

    def score(self, state, evidence: TaskEvidence) -> np.ndarray:
        z, mask = state["z"], state["mask"]
        weights = np.ones(z.shape[0])
        if evidence.k >= 2:
            corr = _masked_correlation(evidence.probe_scores, z[:, evidence.probe_models], mask[:, evidence.probe_models])
            positive = np.maximum(corr, 0.0) ** self.power
            if positive.sum() > 0:
                weights = positive
        return weighted_task_average(z, mask, weights)


def _masked_correlation(y: np.ndarray, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``corr[T]``: Pearson correlation of ``y[k]`` with each row of ``x[T, k]`` over ``mask``.

    Rows with fewer than 2 observed entries or zero variance get 0.
    """
    n = mask.sum(1)
    yb = np.broadcast_to(y, x.shape)
    n_safe = np.maximum(n, 1)
    my = np.where(mask, yb, 0).sum(1) / n_safe
    mx = np.where(mask, x, 0).sum(1) / n_safe
    dy = np.where(mask, yb - my[:, None], 0)
    dx = np.where(mask, x - mx[:, None], 0)
    cov = (dx * dy).sum(1)
    denom = np.sqrt((dx**2).sum(1) * (dy**2).sum(1))
    ok = (n >= 2) & (denom > 1e-12)
    return np.where(ok, cov / np.where(ok, denom, 1.0), 0.0)


def family_popularity(history: Records, family: Sequence[str], embeddings: np.ndarray | None = None) -> np.ndarray:
    """``pred[T, M]``: each model's score on each task predicted as the mean z-score
    (`core.records.standardize`) of the observed models of its family on that task; for a family
    with no observed model, the family whose mean embedding (``embeddings[M, E]``, e.g. of
    the architecture graph) is nearest (Euclidean), or without embeddings the mean over all
    observed models."""
    family = np.asarray(family)
    if family.shape != (history.num_models,):
        raise ValueError(f"family: expected {history.num_models} labels, got shape {family.shape}")
    z = np.where(history.mask, standardize(history.scores, history.mask), 0.0)
    seen = history.mask.any(0)
    names = list(dict.fromkeys(family.tolist()))
    means, centres = {}, {}
    for name in names:
        members = (family == name) & seen
        if members.any():
            means[name] = z[:, members].sum(1) / np.maximum(history.mask[:, members].sum(1), 1)
            if embeddings is not None:
                centres[name] = np.asarray(embeddings)[members].mean(0)
    overall = z.sum(1) / np.maximum(history.mask.sum(1), 1)
    pred = np.zeros(history.scores.shape)
    for m, name in enumerate(family):
        if name not in means and centres:
            name = min(centres, key=lambda f: np.linalg.norm(centres[f] - np.asarray(embeddings)[m]))
        pred[:, m] = means.get(name, overall)
    return pred


@register("family_popularity")
@dataclasses.dataclass(frozen=True)
class FamilyPopularity(CompletionMethod):
    """Each model scored by the mean z-score of its architecture family (model metadata
    ``family``) on the task (:func:`family_popularity`): a cold-start baseline for models
    without records. A family with no visible model takes the family nearest in
    ``history.model_side["embedding"]`` when given. A new task gets the mean over tasks."""

    name: str = "family_popularity"

    def fit(self, history: Records, seed: int = 0):
        if "family" not in history.model_meta:
            raise ValueError("family_popularity: the records have no model metadata column 'family'")
        embeddings = history.model_side.get("embedding")
        pred = family_popularity(history, np.asarray(history.model_meta["family"]).astype(str),
                                 None if embeddings is None else np.stack(embeddings))
        return {"pred": pred, "tasks": np.asarray(history.tasks)}


@dataclasses.dataclass(frozen=True)
class ColumnRanking(MethodBase):
    """Every task ranked the same way: by one number per model, higher first.

    The number is the model metadata column ``column`` (numeric), or, where no such column
    exists, the scores of the history task of that name; with ``column`` empty, the first of
    :attr:`DEFAULT_COLUMNS` the history has. A model without a value (NaN, an unobserved cell)
    ranks below every model with one; such models tie. The probes and the task are ignored.
    MissingEvidenceError when the history has none of the columns, or no value in it.

    State: ``{"scores": scores[M], "column": the column read}``.
    """

    DEFAULT_COLUMNS: ClassVar[tuple[str, ...]] = ()
    column: str = ""
    name: str = ""

    def fit(self, history: Records, seed: int = 0):
        candidates = (self.column,) if self.column else self.DEFAULT_COLUMNS
        column = next((c for c in candidates if c in history.model_meta or c in history.tasks), None)
        if column is None:
            raise MissingEvidenceError(
                f"{self.name}: needs a per-model number: a numeric model metadata column or a history task "
                f"named {' or '.join(map(repr, candidates))}; the records have model metadata "
                f"{sorted(history.model_meta) or 'none'}. Attach one (--model_meta=FILE with a 'model' column) "
                f"or name another with {self.name}:column=NAME")
        if column in history.model_meta:
            raw = np.asarray(history.model_meta[column])
            if raw.dtype.kind not in "fiub":
                raise MissingEvidenceError(f"{self.name}: model metadata column {column!r} is not numeric "
                                           f"(e.g. {raw[:3].tolist()}); name a numeric one with {self.name}:column=NAME")
            values = raw.astype(np.float64)
        else:
            values = history.scores[history.task_index(column)]
        known = np.isfinite(values)
        if not known.any():
            raise MissingEvidenceError(f"{self.name}: column {column!r} has no value for any model")
        lo, hi = values[known].min(), values[known].max()
        return {"scores": np.where(known, values, lo - max(hi - lo, 1.0)), "column": column}

    def score(self, state, evidence: TaskEvidence) -> np.ndarray:
        return np.asarray(state["scores"], dtype=np.float64)


@register("size")
@dataclasses.dataclass(frozen=True)
class Size(ColumnRanking):
    """Larger models first: model metadata ``params`` (model_recycling, nas_bench_graph) or
    ``params_m`` (timm_imagenet) by default (:class:`ColumnRanking`)."""

    DEFAULT_COLUMNS: ClassVar[tuple[str, ...]] = ("params", "params_m", "param_count", "num_params")
    name: str = "size"


@register("source_score")
@dataclasses.dataclass(frozen=True)
class SourceScore(ColumnRanking):
    """Models with the better source score first (:class:`ColumnRanking`). By default the
    first of: model metadata ``source_score`` (a user's own column), ``mnli_linear_probe``
    (model_recycling), ``imagenet_top1``, or the history task ``imagenet`` (timm_imagenet:
    ImageNet top-1; when ``imagenet`` is itself the new task the history lacks it and fit
    raises MissingEvidenceError: there is no source score apart from the answer)."""

    DEFAULT_COLUMNS: ClassVar[tuple[str, ...]] = ("source_score", "mnli_linear_probe", "imagenet_top1", "imagenet")
    name: str = "source_score"
