"""From a method's scores for a new task to predictions in the records' units, with intervals.

Methods score in their own units (latent, z-scores, estimator values: only the order is
promised). A user reads accuracies. A zoo turns scores ``s[M]`` for a new task into
``y_hat[M]`` in the units of its records, and an interval around each, by three steps, all
fitted on the zoo's own history:

1. **Shape**: ``z_hat = slope * (s - mean(s))``, per-task z-scores; ``slope`` is the least-squares
   fit of held-out history tasks' true z-scores on their centred predicted scores.
2. **Scale**: ``y_hat = mean + std * z_hat``, where ``(mean, log std)`` of the task's scores come
   from a ridge map of the task's proxy embedding (:func:`fennec_jax.core.ridge.fit_ridge`,
   penalty by leave-one-out) fitted on the history tasks; without a proxy, the median over
   history tasks. Probe results refine ``(mean, std)``: ridge of the probes' measured scores on
   their ``z_hat`` pulled toward the prior with the weight of one probe.
3. **Interval**: ``[y_hat + q_low * std, y_hat + q_high * std]``, clipped to the range of the
   records' measured scores and the task's own probe results (an interval reaching past every
   result measured says nothing more). ``q_low, q_high`` are the ``(1 - level) / 2`` and
   ``(1 + level) / 2`` quantiles of the error a new task's cell is predicted to have, learnt from the signed normalised errors
   ``e = (y - y_hat) / std`` of held-out history cells (each held-out task's scale predicted
   without it), so coverage is measured on held-out history tasks, not assumed. The errors of
   one task are not exchangeable with another's (a task better or worse than predicted moves
   all its models at once), so the quantiles' level is itself calibrated over tasks: quantiles
   from all held-out tasks but one must cover ``level`` of the left-out task's cells, on
   average over the tasks left out in turn (:func:`error_quantiles`). With few held-out tasks
   and errors dominated by per-task offsets this widens the interval the pooled cells would
   give; with exchangeable cells it leaves it about as it is. A task with probes uses the
   errors of held-out tasks given a few random probes (their cells left out), so its interval
   narrows as probes refine it.

:func:`held_out_predictions` produces the held-out scores for any method (the protocol of
:mod:`fennec_jax.methods.base`): a zoo calibrates with them (:func:`fennec_jax.zoo.zoo.fit_zoo`), and
the leave-one-task-out evaluation measures the intervals' coverage with them, calibrated on each
fold's history alone (:class:`fennec_jax.eval.protocol.TasksOut`, ``intervals``).

Conventions: standard deviations are population ones (divide by n); a task's z-scores are
over its observed models; ``level`` is two-sided (0.8: 10 % of errors above and 10 % below
expected).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from fennec_jax.core.evidence import TaskEvidence
from fennec_jax.core.records import Records, observed_moments, standardize
from fennec_jax.core.ridge import RidgeMap, fit_ridge, ridge_solve

__all__ = ["CALIBRATION_TASKS", "CALIBRATION_PROBES", "Calibration", "task_scales", "median_scale", "fit_scale_map",
           "fit_calibration", "error_quantiles", "held_out_tasks", "held_out_predictions"]

CALIBRATION_TASKS = 20  # history tasks a zoo holds out to calibrate (each costs one fit)
CALIBRATION_PROBES = 3  # probes given to each held-out task for the with-probes intervals
_MIN_STD_FRACTION = 0.05  # a refined std is at least this share of its prior
_GRID = 200  # nominal levels tried by error_quantiles: 0.005, 0.010, ..., 1


def error_quantiles(errors: np.ndarray, groups: np.ndarray, level: float) -> tuple[float, float]:
    """``(q_low, q_high)``: quantiles of the signed ``errors[R]`` of held-out tasks' cells
    (``groups[R]``: which held-out task each comes from) such that an interval
    ``[q_low, q_high]`` covers a share ``level`` of a new task's cells (module docstring, step 3).

    Each held-out task is left out in turn and the errors of the others give their
    ``(1 - l) / 2`` and ``(1 + l) / 2`` quantiles; ``l`` is the smallest nominal level (grid 0.005 ... 1) at which
    these cover ``level`` of the left-out task's cells on average over the tasks left out, and
    the result is the mean of those leave-one-out quantiles at ``l`` (the intervals whose
    coverage was measured, not the quantiles of all H tasks, which would cover more). Where the
    cells are exchangeable ``l`` is about ``level``; where a task's errors share an offset, so
    that a new task may lie beyond the tasks seen, ``l`` rises to cover it. When even ``l = 1``
    falls short, the widest errors seen. With one held-out task the errors' own
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles; NaN without errors."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: expected a coverage in (0, 1), got {level!r}")
    errors, groups = np.asarray(errors, np.float64), np.asarray(groups)
    if errors.shape != groups.shape:
        raise ValueError(f"errors and groups: expected the same shape, got {errors.shape} and {groups.shape}")
    if errors.size == 0:
        return float("nan"), float("nan")
    labels = np.unique(groups)
    if labels.size < 2:
        low, high = np.quantile(errors, [(1.0 - level) / 2, (1.0 + level) / 2])
        return float(low), float(high)
    levels = np.linspace(0.0, 1.0, _GRID + 1)[1:]
    tails = np.concatenate([(1.0 - levels) / 2, (1.0 + levels) / 2])
    covered = np.zeros(levels.size)
    bounds = np.zeros((labels.size, 2, levels.size))  # [task left out, low / high, nominal level]
    for i, label in enumerate(labels):
        left = groups == label
        bounds[i] = np.quantile(errors[~left], tails).reshape(2, -1)
        cells = errors[left][:, None]
        covered += np.mean((cells >= bounds[i, 0]) & (cells <= bounds[i, 1]), axis=0)
    enough = np.flatnonzero(covered / labels.size >= level)
    if enough.size == 0:  # even the widest errors seen fall short: the widest interval
        return float(errors.min()), float(errors.max())
    low, high = bounds[:, :, enough[0]].mean(0)
    return float(low), float(high)


def task_scales(records: Records) -> tuple[np.ndarray, np.ndarray]:
    """``(mean[T], std[T])`` of each task's observed scores (population std; a task with fewer
    than two observed models or no spread gets the median std of the others, or 1)."""
    n, mean, std = (m[:, 0] for m in observed_moments(records.scores, records.mask))
    ok = (n >= 2) & (std > 0)
    std = np.where(ok, std, np.median(std[ok]) if ok.any() else 1.0)
    return mean, std


def median_scale(records: Records) -> tuple[float, float]:
    """``(mean, std)``: the medians over the history tasks of their scores' mean and std."""
    mean, std = task_scales(records)
    return float(np.median(mean)), float(np.median(std))


def fit_scale_map(records: Records, proxies: np.ndarray | None) -> RidgeMap | None:
    """A map from a task's ``proxy[P]`` to ``[mean, log std]`` of its scores, fitted on the
    history tasks (``proxies[T, P]``); None without proxies or with fewer than 3 tasks."""
    if proxies is None or records.num_tasks < 3:
        return None
    mean, std = task_scales(records)
    return fit_ridge(np.asarray(proxies, np.float64), np.stack([mean, np.log(std)], axis=1))


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Scores -> records' units (see the module docstring).

    Attributes:
      slope: ``z_hat = slope * (s - mean(s))``.
      scale_map: proxy ``[P]`` -> ``[mean, log std]``, or None (no proxies in the history).
      default_scale: ``(mean, std)`` for a task without a proxy (:func:`median_scale`).
      errors: signed normalised errors ``(y - y_hat) / std_hat`` of held-out history cells ``[R]``
        (empty: no interval can be given).
      groups: ``[R]`` int, the held-out task (its position in ``held_out``) of each error.
      bounds: ``(min, max)`` of the records' measured scores; intervals are clipped to it.
      held_out: the history tasks the errors come from.
      probe_errors, probe_groups: the same when the held-out tasks had a few probes (their
        scale then refined by the probes, the probes' own cells left out); used for a task with
        probes (empty: the k = 0 errors serve).
    """

    slope: float
    scale_map: RidgeMap | None
    default_scale: tuple[float, float]
    errors: np.ndarray
    groups: np.ndarray
    bounds: tuple[float, float] = (-np.inf, np.inf)
    held_out: tuple[str, ...] = ()
    probe_errors: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    probe_groups: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, int))
    _quantiles: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def quantiles(self, level: float, probed: bool = False) -> tuple[float, float]:
        """``(q_low, q_high)`` of a new task's normalised error (:func:`error_quantiles`; of the
        probed held-out tasks when ``probed`` and there are any; NaN without errors). Computed
        once per ``(level, probed)`` (about a second for 20 held-out tasks of 26,206 models)."""
        probed = bool(probed and self.probe_errors.size)
        if (level, probed) not in self._quantiles:
            errors, groups = (self.probe_errors, self.probe_groups) if probed else (self.errors, self.groups)
            self._quantiles[level, probed] = error_quantiles(errors, groups, level)
        return self._quantiles[level, probed]

    def prior_scale(self, proxy: np.ndarray | None) -> tuple[float, float]:
        """``(mean, std)`` of the new task's scores before any probe."""
        if self.scale_map is None or proxy is None:
            return self.default_scale
        mean, log_std = self.scale_map(np.asarray(proxy, np.float64))
        return float(mean), float(np.exp(log_std))

    def estimate(self, scores: np.ndarray, *, proxy: np.ndarray | None = None,
                 probe_models: Sequence[int] = (), probe_scores: Sequence[float] = ()) -> tuple[np.ndarray, float]:
        """``(y_hat[M], std)``: a method's ``scores[M]`` in the records' units, and the task's
        estimated score spread (steps 1-2 of the module docstring)."""
        scores = np.asarray(scores, np.float64)
        z_hat = self.slope * (scores - scores.mean())
        mean, std = self.prior_scale(proxy)
        probe_models = np.asarray(probe_models, int)
        if probe_models.size:
            design = np.stack([np.ones(probe_models.size), z_hat[probe_models]], axis=1)
            mean, std = ridge_solve(design, np.asarray(probe_scores, np.float64), 1.0, prior=np.array([mean, std]))
            std = max(float(std), _MIN_STD_FRACTION * self.prior_scale(proxy)[1])
        return mean + std * z_hat, float(std)

    def predict(self, scores: np.ndarray, *, proxy: np.ndarray | None = None,
                probe_models: Sequence[int] = (), probe_scores: Sequence[float] = (),
                level: float = 0.8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(y_hat[M], low[M], high[M])`` in the records' units for a method's ``scores[M]``."""
        y_hat, std = self.estimate(scores, proxy=proxy, probe_models=probe_models, probe_scores=probe_scores)
        below, above = self.quantiles(level, probed=len(probe_models) > 0)
        low, high = self.bounds
        if len(probe_scores):  # the task's own results widen the range it may reach
            low, high = min(low, float(np.min(probe_scores))), max(high, float(np.max(probe_scores)))
        return y_hat, np.clip(y_hat + below * std, low, high), np.clip(y_hat + above * std, low, high)


def fit_calibration(records: Records, proxies: np.ndarray | None, held_out: Sequence[int],
                    predictions: np.ndarray, probed: Sequence[tuple[np.ndarray, np.ndarray]] = ()) -> Calibration:
    """The calibration of a zoo from ``predictions[H, M]``: a method's scores for each
    ``held_out`` history task (indices into ``records.tasks``) by a fit without that task, given
    the evidence a new task has (its proxy, no probes); ``probed[h]`` (optional) is
    ``(probe_models[k], scores[M])``: the same fit's scores given also k probes' true scores."""
    held_out = [int(t) for t in held_out]
    predictions = np.asarray(predictions, np.float64)
    if predictions.shape != (len(held_out), records.num_models):
        raise ValueError(f"predictions: expected shape [{len(held_out)}, {records.num_models}], got {predictions.shape}")
    if probed and len(probed) != len(held_out):
        raise ValueError(f"probed: expected one entry per held-out task ({len(held_out)}), got {len(probed)}")
    centred = predictions - predictions.mean(1, keepdims=True)
    z = standardize(records.scores[held_out], records.mask[held_out])
    mask = records.mask[held_out]
    denominator = float((centred[mask] ** 2).sum())
    slope = float((centred[mask] * z[mask]).sum() / denominator) if denominator > 0 else 0.0
    errors, groups, probe_errors, probe_groups = [], [], [], []
    for row, t in enumerate(held_out):
        rest = [i for i in range(records.num_tasks) if i != t]
        rest_records, proxy = records.select_tasks(rest), None if proxies is None else proxies[t]
        part = Calibration(slope, fit_scale_map(rest_records, None if proxies is None else proxies[rest]),
                           median_scale(rest_records), np.zeros(0), np.zeros(0, int))
        y_hat, std = part.estimate(predictions[row], proxy=proxy)
        errors.append((records.scores[t, mask[row]] - y_hat[mask[row]]) / std)
        groups.append(np.full(errors[-1].size, row))
        if probed:
            probes, scores = probed[row]
            y_hat, std = part.estimate(scores, proxy=proxy, probe_models=probes, probe_scores=records.scores[t, probes])
            rest_cells = mask[row].copy()
            rest_cells[probes] = False
            probe_errors.append((records.scores[t, rest_cells] - y_hat[rest_cells]) / std)
            probe_groups.append(np.full(probe_errors[-1].size, row))
    observed = records.scores[records.mask]
    return Calibration(slope, fit_scale_map(records, proxies), median_scale(records), _concat(errors, float),
                       _concat(groups, int), (float(observed.min()), float(observed.max())),
                       tuple(records.tasks[t] for t in held_out), _concat(probe_errors, float),
                       _concat(probe_groups, int))


def _concat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


def held_out_tasks(records: Records, limit: int) -> list[int]:
    """Up to ``limit`` task indices of ``records`` to calibrate on: the tasks with at least two
    observed models, spread evenly over the list (all of them when there are few); none when
    ``records`` has fewer than 3 tasks."""
    if records.num_tasks < 3:
        return []
    eligible = [t for t in range(records.num_tasks) if records.mask[t].sum() >= 2]
    if len(eligible) <= limit:
        return eligible
    return [eligible[i] for i in np.linspace(0, len(eligible) - 1, limit).round().astype(int)]


def held_out_predictions(method, records: Records, held_out: Sequence[int], evidence: Callable[[int], dict], *,
                         seed: int = 0, probes: int = CALIBRATION_PROBES, log: Callable[[str], None] = lambda msg: None
                         ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """``(predictions[H, M], probed)``, the inputs of :func:`fit_calibration`, for any
    ``method`` (the protocol of :mod:`fennec_jax.methods.base`): for each ``held_out`` task t
    (indices into ``records.tasks``, e.g. :func:`held_out_tasks`), ``method`` fitted on the
    other tasks (``seed``) scores t given ``evidence(t)`` (``TaskEvidence`` keyword arguments:
    what a new task brings besides scores, e.g. ``proxy`` and ``metadata``), then given also the
    true scores of ``min(probes, n - 2)`` of t's n observed models drawn from ``(seed, t)``.
    ``probed`` is empty unless every held-out task got probes."""
    predictions, probed = [], []
    for i, t in enumerate(held_out):
        log(f"calibrating on held-out task {i + 1}/{len(held_out)}: {records.tasks[t]}")
        state = method.fit(records.without_task(t), seed=seed)
        inputs = evidence(t)
        predictions.append(np.asarray(method.score(state, TaskEvidence(**inputs)), np.float64))
        observed = np.flatnonzero(records.mask[t])
        k = min(probes, observed.size - 2)
        if k > 0:  # the same task with a few random probes: intervals for tasks with probes
            chosen = np.sort(np.random.default_rng([seed, t]).choice(observed, k, replace=False))
            scores = method.score(state, TaskEvidence(chosen, records.scores[t, chosen], **inputs))
            probed.append((chosen, np.asarray(scores, np.float64)))
    return (np.asarray(predictions, np.float64).reshape(len(held_out), records.num_models),
            probed if len(probed) == len(held_out) else [])
