"""A ranking table: the candidate models of one task, best first, measured results kept.

One :class:`RankingTable` per task; ``rank_all`` (:mod:`fennec_jax.ranking.rank_job`) writes
one per target task, and the ``rank`` command one for a new task.

Conventions
-----------
Units
    ``predicted``, ``measured``, ``low`` and ``high`` are in the units of the records the
    table comes from (e.g. accuracy %), never in a method's standardized or latent units.
Direction
    Higher is better unless ``lower_is_better`` (e.g. an error); rank 1 is the best model
    either way.
Rank key
    A model's measured score where the records hold one, else its predicted score: a measured
    result is a fact and is never hidden behind a prediction. Equal keys are ordered by model
    name (ascending), so the order is deterministic. A re-ranker may fix the order instead
    (``fixed_order``: ``rank --rerank`` re-orders the top of the list with forward passes).

Columns of :meth:`RankingTable.rows` (:data:`COLUMNS`): ``rank`` (1 = best), ``model``,
``predicted_score`` (6 significant digits), ``interval_low`` and ``interval_high`` (the
predicted score's interval, empty where the method gives none), ``observed`` (``true`` where
the records hold a measured score) and ``measured_score`` (empty where not observed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from fennec_jax.core import atomic_io

__all__ = ["COLUMNS", "RankingTable"]

COLUMNS = ("rank", "model", "predicted_score", "interval_low", "interval_high", "observed", "measured_score")


def _significant(value: float) -> float:
    """``value`` rounded to 6 significant digits (predictions carry no more)."""
    return float(f"{value:.6g}")


@dataclasses.dataclass(frozen=True)
class RankingTable:
    """Models of one task ranked by measured score where known, else predicted score.

    Parameters
    ----------
    models : tuple of str, length M
        Model names, distinct.
    predicted : ndarray, shape (M,)
        Predicted score of each model, finite, in the records' units.
    measured : ndarray, shape (M,)
        Measured score of each model in the records' units; NaN where not observed.
    low, high : ndarray, shape (M,), optional
        An interval around ``predicted`` (both or neither).
    lower_is_better : bool
        True where a lower score is better (rank 1 = lowest key).
    fixed_order : ndarray of int, shape (M,), optional
        Model indices best first, overriding the rank key (a permutation of ``range(M)``).
    """

    models: tuple[str, ...]
    predicted: np.ndarray
    measured: np.ndarray
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    lower_is_better: bool = False
    fixed_order: np.ndarray | None = None

    def __post_init__(self):
        m = len(self.models)
        if len(set(self.models)) != m:
            raise ValueError("RankingTable.models has duplicate names")
        if (self.low is None) != (self.high is None):
            raise ValueError("RankingTable: give both interval bounds (low, high) or neither")
        for name in ("predicted", "measured", "low", "high"):
            arr = getattr(self, name)
            if arr is not None and np.shape(arr) != (m,):
                raise ValueError(f"RankingTable.{name} has shape {np.shape(arr)}, expected (M,) = ({m},)")
        if not np.all(np.isfinite(self.predicted)):
            raise ValueError("RankingTable.predicted has non-finite values")
        if self.fixed_order is not None and not np.array_equal(np.sort(self.fixed_order), np.arange(m)):
            raise ValueError("RankingTable.fixed_order is not a permutation of the models' indices")

    @property
    def observed(self) -> np.ndarray:
        """``observed[M]`` bool: the records hold a measured score."""
        return np.isfinite(self.measured)

    def order(self) -> np.ndarray:
        """``order[M]``: model indices best first (module docstring: rank key, direction, ties)."""
        if self.fixed_order is not None:
            return np.asarray(self.fixed_order)
        key = np.where(self.observed, self.measured, self.predicted)
        return np.lexsort((np.array(self.models), key if self.lower_is_better else -key))

    def order_scores(self) -> np.ndarray:
        """``scores[M]`` that rank the models as :meth:`order` does, higher = earlier (``M - 1``
        for the first, 0 for the last): a fixed order scored by the metrics like any prediction."""
        scores = np.empty(len(self.models))
        scores[self.order()] = np.arange(len(self.models))[::-1]
        return scores

    def rows(self, top_k: int | None = None, columns: Sequence[str] = COLUMNS) -> list[tuple]:
        """The best ``top_k`` models (all when None) as tuples of ``columns`` (a subset of
        :data:`COLUMNS`, in any order); absent values are empty strings."""
        unknown = [c for c in columns if c not in COLUMNS]
        if unknown:
            raise ValueError(f"unknown column(s) {unknown}; choose from {', '.join(COLUMNS)}")
        rows = []
        for rank, i in enumerate(self.order()[:top_k], start=1):
            observed = bool(np.isfinite(self.measured[i]))
            values = {
                "rank": rank,
                "model": self.models[i],
                "predicted_score": _significant(self.predicted[i]),
                "interval_low": "" if self.low is None else _significant(self.low[i]),
                "interval_high": "" if self.high is None else _significant(self.high[i]),
                "observed": "true" if observed else "false",
                "measured_score": float(self.measured[i]) if observed else "",
            }
            rows.append(tuple(values[c] for c in columns))
        return rows

    def write_csv(self, path: str, top_k: int | None = None, columns: Sequence[str] = COLUMNS) -> None:
        """Writes :meth:`rows` with a header line to ``path`` (atomically)."""
        atomic_io.write_csv(path, columns, self.rows(top_k, columns))
