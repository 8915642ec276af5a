"""Input checks, the label layout and the float64 scope shared by every estimator.

The public estimator functions check their inputs on the host (NumPy), then run a jitted
pure-JAX core inside :func:`float64`, a *local* ``jax.enable_x64`` scope: the caller's
program keeps its own precision setting. Cores see

- ``features[N, W]`` float64 (cast inside the jitted call), possibly zero-padded from the
  model's true width ``dim <= W``
  (so many models of different widths can be stacked and vmapped);
- a :class:`Task` (labels as one-hot columns plus a per-class gather index);
- ``probs[N, Cs]`` source-head probabilities in the caller's dtype, for the estimators
  that use them (they cast to float64 where they accumulate).

Classes are ``0 .. num_classes - 1``; a class with no sample is ignored by every estimator
(as if it were not in the label space), so passing a larger ``num_classes`` never changes a
score.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Row sums of probs may differ from 1 by this much (float32 softmax output passes).
_PROBS_SUM_ATOL = 1e-3
# Candidate-set components closer than this, relative to their size, count as equal (minmax).
_MINMAX_RTOL = 1e-6


def float64():
    """A local float64 scope: ``with float64(): ...`` (does not change the global flag)."""
    return jax.enable_x64(True)


class Task(NamedTuple):
    """The labels of one task in the layouts the cores need.

    labels: ``[N]`` int32 in ``[0, C)``.
    onehot: ``[N, C]`` float64, ``onehot[i, labels[i]] = 1``.
    class_index: ``[C, n_max]`` int32, the sample indices of each class, padded with 0
      (None unless requested: see :func:`make_task`).
    class_valid: ``[C, n_max]`` bool, which entries of ``class_index`` are real.
    """

    labels: jax.Array
    onehot: jax.Array
    class_index: jax.Array
    class_valid: jax.Array


def check_features(features, name="features"):
    """``features`` as a NumPy array ``[N, D]`` (dtype kept; no copy when possible);
    ValueError naming ``name`` unless it is 2-D, numeric, with at least 2 rows and 1 column.
    Finiteness is checked inside the jitted computation (see :func:`value_errors`)."""
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [N, D], got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {x.dtype}")
    if x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"{name} needs at least 2 samples and 1 dimension, got shape "
                         f"{x.shape}")
    return x


def check_labels(labels, num_samples, num_classes=None):
    """``(labels[N] int32, C)``; ValueError naming ``labels`` if they are not integers in
    ``[0, C)`` with ``C = num_classes`` (default ``max(labels) + 1``)."""
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != num_samples:
        raise ValueError(f"labels must have shape [N] = [{num_samples}], got {y.shape}")
    if np.issubdtype(y.dtype, np.floating):
        if not (np.isfinite(y).all() and np.array_equal(y, np.round(y))):
            raise ValueError("labels must be whole numbers (class indices), got non-integer "
                             "or non-finite values")
    elif not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if num_classes is None:
        num_classes = max(int(y.max()) + 1, 1)
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}), got values in "
                         f"[{y.min()}, {y.max()}]")
    return y.astype(np.int32), int(num_classes)


def check_probs(probs, num_samples, name="probs"):
    """``probs`` as a NumPy array ``[N, Cs]``; ValueError naming ``name`` unless it has that
    shape and is numeric. Its values (finite, non-negative, rows summing to 1 within 1e-3)
    are checked inside the jitted computation (see :func:`value_errors`)."""
    p = np.asarray(probs)
    if p.ndim != 2 or p.shape[0] != num_samples or p.shape[1] < 1:
        raise ValueError(f"{name} must have shape [N, Cs] with N = {num_samples}, got "
                         f"{p.shape}")
    if not (np.issubdtype(p.dtype, np.floating) or np.issubdtype(p.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {p.dtype}")
    return p


def value_checks(features, probs):
    """In-jit value checks of one model: ``[features finite, probs finite, probs are
    probability rows]`` (True when fine or absent), as few passes over the data as
    possible: a sum of ``x * 0`` is NaN exactly when ``x`` has a NaN or an infinity, and
    float32 probs are finite exactly when their float64 row sums are (which cannot
    overflow), so they take two passes (row sums, minimum)."""
    def finite(x):
        return jnp.isfinite(jnp.sum(x * 0))

    ok_features = finite(features) if features is not None else jnp.array(True)
    if probs is None:
        return jnp.stack([ok_features, True, True])
    row_sums = probs.sum(1, dtype=jnp.float64)
    narrow = jnp.finfo(probs.dtype).bits < 64 if jnp.issubdtype(probs.dtype, jnp.floating) \
        else True
    ok_probs = jnp.isfinite(row_sums).all() if narrow else finite(probs)
    rows = (probs.min() >= 0) & (jnp.abs(row_sums - 1).max() <= _PROBS_SUM_ATOL)
    return jnp.stack([ok_features, ok_probs, rows])


def value_errors(checks, features_name, probs_name):
    """Raise the ValueError for the first failed :func:`value_checks` row (``checks[M, 3]``);
    ``*_name(m)`` names model m's argument."""
    checks = np.asarray(checks)
    for m in range(checks.shape[0]):
        if not checks[m, 0]:
            raise ValueError(f"{features_name(m)} contains NaN or infinite values")
        if not checks[m, 1]:
            raise ValueError(f"{probs_name(m)} contains NaN or infinite values")
        if not checks[m, 2]:
            raise ValueError(f"{probs_name(m)} rows must be probability vectors "
                             "(non-negative, summing to 1): pass the source head's softmax, "
                             "not its logits")


def make_task(labels, num_classes, class_blocks=False):
    """:class:`Task` (NumPy arrays) for checked ``labels[N]`` in ``[0, num_classes)``; the
    per-class gather index only with ``class_blocks`` (its shape depends on the largest
    class, so estimators that do not need it do not recompile for it)."""
    n = labels.shape[0]
    onehot = np.zeros((n, num_classes))
    onehot[np.arange(n), labels] = 1.0
    if not class_blocks:
        return Task(labels, onehot, None, None)
    counts = np.bincount(labels, minlength=num_classes)
    class_index = np.zeros((num_classes, int(counts.max())), np.int32)
    class_valid = np.zeros(class_index.shape, bool)
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        class_index[c, : members.size] = members
        class_valid[c, : members.size] = True
    return Task(labels, onehot, class_index, class_valid)


def class_sums(values, task):
    """``[C, ...]`` sums of ``values[N, ...]`` over each class's samples (one pass)."""
    return jax.ops.segment_sum(values, task.labels, num_segments=task.onehot.shape[1])


def class_stats(features, task):
    """``(counts[C], present[C] bool, means[C, W])`` of ``features[N, W]``; absent classes
    get mean 0."""
    counts = task.onehot.sum(0)
    present = counts > 0
    means = class_sums(features, task) / jnp.maximum(counts, 1.0)[:, None]
    return counts, present, means


def dim_mask(width, dim):
    """``[W]`` float 1.0 on the model's ``dim`` real columns, 0.0 on padding."""
    return (jnp.arange(width) < dim).astype(jnp.float64)


def minmax(values):
    """``values[M]`` rescaled to [0, 1] over the candidate set; all 0 when they are equal to
    within :data:`_MINMAX_RTOL` of their magnitude (a set of one model included): a smaller
    spread, e.g. between two models whose features differ by 1e-9, is below what float32
    features resolve, and stretching it to the whole [0, 1] would rank them by rounding."""
    low, high = values.min(), values.max()
    span = high - low
    spread = span > _MINMAX_RTOL * jnp.maximum(jnp.abs(low), jnp.abs(high))
    return jnp.where(spread, (values - low) / jnp.where(spread, span, 1.0), 0.0)
