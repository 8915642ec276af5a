"""Ridge regression, the one implementation every part of the package uses.

* :func:`ridge_solve`: ``argmin_w ||y - x w||^2 + l2 ||w - prior||^2`` in closed form (a
  task vector refined by probes toward its prior; a map fitted with a fixed penalty).
* :func:`fit_ridge`: ridge of every column of ``y[M, D]`` on ``x[M, F]``, features scaled
  inside, with the penalty chosen per column by exact leave-one-out error (graph features ->
  scores, embeddings -> vectors).
* :class:`RidgeMap`: the fitted affine map ``y = x @ weights + bias`` (also from
  :meth:`RidgeMap.fit`, a fixed-penalty fit: task metadata or proxy embeddings -> task
  vectors).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

__all__ = ["DEFAULT_L2_GRID", "RidgeMap", "fit_ridge", "ridge_solve"]

# Penalties tried by `fit_ridge`, relative to the mean squared nonzero singular value of
# the standardised features (so the grid means the same at every n and width).
DEFAULT_L2_GRID = tuple(10.0 ** np.arange(-4.0, 2.5, 0.5))


def ridge_solve(x: np.ndarray, y: np.ndarray, l2: float, prior: np.ndarray | None = None) -> np.ndarray:
    """``w[F(, D)] = (x' x + l2 I)^-1 (x' y + l2 prior)``: ridge of ``y[n(, D)]`` on
    ``x[n, F]`` pulled toward ``prior`` (default 0), no intercept (centre x and y first)."""
    x = np.asarray(x, dtype=np.float64)
    rhs = x.T @ np.asarray(y, dtype=np.float64)
    if prior is not None:
        rhs = rhs + l2 * np.asarray(prior, dtype=np.float64)
    return np.linalg.solve(x.T @ x + l2 * np.eye(x.shape[1]), rhs)


@dataclasses.dataclass(frozen=True)
class RidgeMap:
    """Affine map ``y[G, D] = x[G, F] @ weights + bias``, fitted by `fit_ridge` or :meth:`fit`.

    Attributes:
      weights: [F, D].
      bias: [D].
      l2: [D] the penalty each output column was fitted with (relative for `fit_ridge`).
    """

    weights: np.ndarray
    bias: np.ndarray
    l2: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, l2: float = 1.0) -> "RidgeMap":
        """Ridge of ``y[T, D]`` on raw ``x[T, P]`` with the fixed absolute penalty ``l2``,
        intercept unpenalised (task features -> task vectors)."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(f"RidgeMap.fit: x must be [T, P] and y [T, D] with the same T, got {x.shape} and {y.shape}")
        if x.shape[0] < 1 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            raise ValueError("RidgeMap.fit: x and y must be finite, with at least one row")
        if not (math.isfinite(l2) and l2 > 0):
            raise ValueError(f"RidgeMap.fit: l2 must be finite and > 0, got {l2!r}")
        x_mean, y_mean = x.mean(0), y.mean(0)
        weights = ridge_solve(x - x_mean, y - y_mean, l2)
        return cls(weights, y_mean - x_mean @ weights, np.full(y.shape[1], float(l2)))

    @property
    def width(self) -> int:
        return self.weights.shape[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``y[D]`` for one feature vector ``x[F]``."""
        x = np.asarray(x, np.float64)
        if x.shape != (self.width,):
            raise ValueError(f"expected a vector of width {self.width}, got shape {x.shape}")
        return self.apply(x[None])[0]

    def apply(self, x: np.ndarray) -> np.ndarray:
        """y[G, D] for features x[G, F]."""
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.weights):
            raise ValueError(f"x: expected shape [G, {len(self.weights)}], got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("x: must be finite")
        return x @ self.weights + self.bias


def fit_ridge(
    x: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray | None = None,
    l2: float | Sequence[float] = DEFAULT_L2_GRID,
) -> RidgeMap:
    """Ridge regression of each column of ``y[M, D]`` on ``x[M, F]``, intercept unpenalised.

    Features are scaled to unit variance inside the fit (the returned map takes raw
    features). With several ``l2`` values, each output column gets the one with the
    lowest exact leave-one-out squared error (closed form from the SVD, no refits).
    ``l2`` is relative to the mean squared nonzero singular value of the centred, scaled
    features: 1.0 weighs the penalty like an average direction of the data.

    Args:
      x: [M, F] finite features, M >= 2.
      y: [M, D] targets; entries outside ``mask`` are ignored.
      mask: optional bool [M, D] observed targets (default all). Columns with different
        masks are fitted on their own observed rows.
      l2: one relative penalty > 0, or a grid of them.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) < 2:
        raise ValueError(f"x, y: expected [M, F] and [M, D] with the same M >= 2, got {x.shape} and {y.shape}")
    mask = np.ones(y.shape, bool) if mask is None else np.asarray(mask, bool)
    if mask.shape != y.shape:
        raise ValueError(f"mask: expected shape {y.shape}, got {mask.shape}")
    if not np.isfinite(x).all() or not np.isfinite(y[mask]).all():
        raise ValueError("x, y: must be finite (y inside mask)")
    grid = np.atleast_1d(np.asarray(l2, np.float64))
    if grid.ndim != 1 or not len(grid) or not (np.isfinite(grid) & (grid > 0)).all():
        raise ValueError(f"l2: expected positive finite penalties, got {l2!r}")
    weights = np.zeros((x.shape[1], y.shape[1]))
    bias, chosen = np.zeros(y.shape[1]), np.zeros(y.shape[1])
    # One SVD per distinct column mask (one in all when every target is observed).
    patterns, column_pattern = np.unique(mask.T, axis=0, return_inverse=True)
    for p, rows in enumerate(patterns):
        columns = np.flatnonzero(column_pattern.ravel() == p)
        if rows.sum() < 2:
            raise ValueError(f"y: columns {columns.tolist()} have fewer than 2 observed rows")
        weights[:, columns], bias[columns], chosen[columns] = _ridge_columns(x[rows], y[rows][:, columns], grid)
    return RidgeMap(weights, bias, chosen)


def _ridge_columns(x, y, grid):
    """(weights[F, D], bias[D], l2[D]) of ridge fits with leave-one-out choice of l2."""
    x_mean, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    xs = (x - x_mean) / scale
    y_mean = y.mean(0)
    yc = y - y_mean
    u, s, vt = _thin_svd(xs)
    alphas = grid * max((s**2).mean(), 1e-12)  # [A]
    shrink = s**2 / (s**2 + alphas[:, None])  # [A, K]
    uty = u.T @ yc  # [K, D]
    fitted = np.einsum("ik,ak,kd->aid", u, shrink, uty)  # [A, M, D]
    # Leave-one-out residual of a linear smoother: r_i / (1 - H_ii), with the intercept's 1/M.
    hat = (u**2) @ shrink.T + 1.0 / len(x)  # [M, A]
    loo = ((yc[None] - fitted) / (1.0 - hat.T[:, :, None])) ** 2
    best = loo.mean(1).argmin(0)  # [D]
    coef = vt.T @ ((s / (s**2 + alphas[best][:, None])).T * uty) / scale[:, None]  # [F, D]
    return coef, y_mean - x_mean @ coef, grid[best]


def _thin_svd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u[M, K], s[K], vt[K, F]) of x[M, F], from the eigendecomposition of the smaller
    Gram matrix (much faster than an SVD when F >> M or M >> F); directions with
    negligible singular values are dropped (ridge shrinks them to zero anyway)."""
    wide = x.shape[1] > x.shape[0]
    evals, evecs = np.linalg.eigh(x @ x.T if wide else x.T @ x)
    keep = evals > 1e-10 * max(evals.max(), 1e-300)
    s, evecs = np.sqrt(evals[keep]), evecs[:, keep]
    if wide:
        return evecs, s, (evecs.T @ x) / s[:, None]
    return (x @ evecs) / s, s, evecs.T

