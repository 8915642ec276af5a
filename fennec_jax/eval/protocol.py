"""One evaluation loop for every ranking method, with pluggable splits.

:func:`evaluate` runs a set of methods (the one protocol of :mod:`fennec_jax.methods.base`)
on a benchmark under one split:

* :class:`TasksOut` (leave-one-task-out, the new-task setting): each target task t in turn is
  hidden entirely; the method is fitted on the history tasks other than t (``history=
  'targets'``: the other targets only; ``'all'``: every other task, history-only tasks
  included). For each k in ``probes`` and each seed, the true scores on t of k probe models
  drawn at random (:func:`probe_draw`: the draw depends only on (seed, t, k), so every method
  sees the same probes) are revealed, with t's name and metadata, its proxy embedding
  (``task_side["proxy"]``) and the models' forward-pass features when the benchmark carries
  them, never t's other scores. Metrics (``metrics.ranking_metrics``: weighted tau, Kendall
  tau-b, Spearman, Pearson, top-1 regret in the task's units and as a fraction of the range
  of t's true scores over the same models) are computed on t's evaluated models that are not
  probes, plus ``final_regret``: the regret of the pick a user makes after the probes, the
  best measured of the probes and the top predicted non-probe model (one more fine-tune), in
  the task's units and as a fraction of the range over t's evaluated models
  (``final_regret_normalized``), and ``weighted_tau_k0``: the weighted tau of the method's
  prediction without the probes (k = 0 evidence) over the same non-probe models
  (``weighted_tau`` minus it is what the probes' results added; the rest of a change between
  settings comes from which models are left to rank); mean over seeds per task, then over
  tasks.
  ``probe_policy`` names how the probes are chosen: ``'random'`` (:func:`probe_draw`; setting
  ``"k"``) and/or ``'suggest:NAME'`` (a policy of :mod:`fennec_jax.methods.suggest`, setting
  ``"k suggest:NAME"``): the policy picks each probe among t's evaluated models from the
  method's state fitted on the history, t's true score of each pick revealed before the next
  (all at once for a policy configured ``batch=true``); seed s seeds the policy's randomness.
  With ``intervals`` (a two-sided level, e.g. 0.8), each prediction also gets an interval in
  t's units, calibrated on the fold's history alone (:mod:`fennec_jax.zoo.calibration`, as a
  zoo calibrates: up to ``calibration_tasks`` history tasks (:func:`~fennec_jax.zoo.calibration.held_out_tasks`)
  are held out in turn, the method fitted without each scores it from its name, metadata and
  proxy, then also given 3 random probes; quantiles of their errors whose level is calibrated
  over those tasks, :func:`~fennec_jax.zoo.calibration.error_quantiles`), and two more
  metrics are reported: ``coverage``, the share of t's evaluated non-probe models whose true
  score lies in their interval (:meth:`Calibration.predict <fennec_jax.zoo.calibration.Calibration.predict>`
  given t's proxy when the benchmark carries one, else the history's median scale, and the
  draw's probes), and ``interval_width``, the intervals' mean width over those models.
* :class:`ModelsOut` (cold-start models): ``folds`` partition the models; for each fold every
  cell of its models is hidden (``Records.hide_models``: names, metadata and side
  information stay) and the method, fitted on the rest, predicts them on every task
  (``method.complete(state) -> scores[T, M]`` where the method has it, else one ``score`` per
  task from the task's visible cells). The folds' predictions are assembled and scored per
  task over all observed models: Kendall tau-b and weighted tau, mean over tasks.
* :class:`ArchitecturesOut` (cold-start architectures): for each train size n and seed s, the
  same random n models (``numpy.random.default_rng(s)``) keep their records and every other
  model is hidden; each method predicts the hidden ones from their side information (e.g.
  their graphs); Kendall tau-b and Spearman per task over the hidden observed models, mean
  over seeds, then tasks.

Inner validation inside ``fennec`` and ``spider`` scores held-out history tasks the same way
(:func:`validation_draws`, :func:`validation_tau`).

Every report has one shape, rendered by :mod:`fennec_jax.eval.reports`::

    {"benchmark", "protocol": {..., "se": "..."}, "settings": [...], "metrics": [...],
     "results": {METHOD: {SETTING: {"mean": {metric: v}, "se": {metric: v},
                                    "per_task": {TASK: {metric: v}},
                                    "per_task_se": {TASK: {metric: v}}}}},
     "seconds": {METHOD: s},
     "predictions": {"method", "seed", "by_setting": {SETTING: {TASK: {"true": [N], "pred": [N]}}}}}

``se`` is the standard error of ``mean`` (sample standard deviation, ``ddof=1``, over sqrt
of the count; NaN with fewer than two values), ``protocol["se"]`` says over what:
tasks-out and models-out, over tasks (tasks-out: of the per-task means over seeds, so the
seeds' spread is part of it); architectures-out, over seeds (of each seed's mean over tasks).
``per_task_se`` (tasks-out and architectures-out) is each task's standard error over seeds.
``predictions`` (only with ``keep_predictions``) holds one method's seed-0 predictions and the
true scores of the N models each task's metrics were computed on (N <= :data:`KEPT_MODELS`: a
random subset of them where there are more).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from fennec_jax.core.evidence import TaskEvidence
from fennec_jax.core.records import Benchmark, Records
from fennec_jax.eval import metrics
from fennec_jax.methods import suggest
from fennec_jax.zoo.calibration import (CALIBRATION_TASKS, Calibration, fit_calibration, held_out_predictions,
                                        held_out_tasks)

__all__ = [
    "METRIC_KEYS",
    "INTERVAL_KEYS",
    "KEPT_MODELS",
    "standard_error",
    "TasksOut",
    "ModelsOut",
    "ArchitecturesOut",
    "evaluate",
    "probe_draw",
    "final_regret",
    "validation_draws",
    "validation_tau",
    "model_folds",
    "history_predictions",
]

KEPT_MODELS = 2000  # most models per task whose predictions a report keeps (keep_predictions)
METRIC_KEYS = ("weighted_tau", "kendall", "spearman", "pearson", "top1_regret", "top1_regret_normalized",
               "final_regret", "final_regret_normalized", "weighted_tau_k0")
INTERVAL_KEYS = ("coverage", "interval_width")  # TasksOut(intervals=level) adds these


# ----------------------------------------------------------------------------- probes


def probe_draw(candidates: np.ndarray, k: int, seed: int, task: int) -> np.ndarray:
    """``probes[k]``: k distinct entries of ``candidates`` drawn from (seed, task, k) alone."""
    if k > len(candidates):
        raise ValueError(f"k = {k} probes requested but the task has only {len(candidates)} evaluated models")
    rng = np.random.default_rng([seed, task, k])
    return np.sort(rng.choice(candidates, size=k, replace=False)) if k else np.zeros(0, dtype=int)


def validation_draws(rng: np.random.Generator, observed: np.ndarray, probes: Sequence[int],
                     draws: int) -> list[tuple[int, np.ndarray]]:
    """Probe draws for one held-out history task in a method's inner validation: for each k
    in ``probes``, one empty draw when k = 0, else ``draws`` sorted draws of k of the
    ``observed`` models from ``rng`` (in that order: the draws a method's validation sees
    depend only on its rng)."""
    out = []
    for k in probes:
        for _ in range(draws if k else 1):
            out.append((int(k), np.sort(rng.choice(observed, size=k, replace=False)) if k else np.zeros(0, int)))
    return out


def validation_tau(trues: Sequence[np.ndarray], preds: Sequence[np.ndarray], valids: Sequence[np.ndarray],
                   groups: Sequence[int], weights: Sequence[float] | None = None, *,
                   skip_undefined: bool = False) -> np.ndarray:
    """``tau[G]``: for each group (a candidate configuration), the weighted mean over its
    held-out draws of the weighted tau of ``preds[i]`` against ``trues[i]`` over ``valids[i]``;
    a draw with an undefined tau (fewer than 2 valid models, constant scores) counts 0, or is
    left out with ``skip_undefined``. ``weights`` default 1 (a plain mean)."""
    taus = np.asarray(metrics.weighted_tau(np.stack(trues), np.stack(preds), np.stack(valids)), dtype=np.float64)
    groups = np.asarray(groups, dtype=int)
    weights = np.ones(len(taus)) if weights is None else np.asarray(weights, dtype=np.float64)
    if skip_undefined:
        weights = np.where(np.isfinite(taus), weights, 0.0)
    taus = np.nan_to_num(taus)
    size = int(groups.max()) + 1
    return np.bincount(groups, weights * taus, size) / np.bincount(groups, weights, size)


# ----------------------------------------------------------------------------- splits


@dataclasses.dataclass(frozen=True)
class TasksOut:
    """Leave-one-task-out with k probes (module docstring); ``probe_policy``: one spec or a
    tuple of them (``'random'``, ``'suggest:NAME'``), each checked here; ``intervals``: None
    (no intervals) or the two-sided level of the measured intervals, calibrated on up to
    ``calibration_tasks`` held-out history tasks of each fold (each one more fit)."""

    probes: tuple[int, ...] = (0, 1, 3, 5)
    seeds: int = 10
    history: str = "targets"
    probe_policy: str | tuple[str, ...] = "random"
    held_out: tuple[str, ...] | None = None  # targets held out in turn (default: all); history unchanged
    intervals: float | None = None
    calibration_tasks: int = CALIBRATION_TASKS  # as a zoo calibrates itself, so the figures are the zoo's
    kind = "tasks_out"

    def __post_init__(self):
        specs = (self.probe_policy,) if isinstance(self.probe_policy, str) else tuple(self.probe_policy)
        if not specs or len(set(specs)) != len(specs):
            raise ValueError(f"probe_policy: expected distinct specs, got {list(specs)}")
        for spec in specs:
            if spec != "random" and not spec.startswith("suggest:"):
                raise ValueError(f"probe_policy {spec!r}: expected 'random' or 'suggest:NAME' "
                                 f"(NAME one of {', '.join(suggest.POLICIES.names())})")
            if spec != "random":
                suggest.policy_from_spec(spec.removeprefix("suggest:"))
        object.__setattr__(self, "probe_policy", specs)
        if self.intervals is not None and not 0.0 < self.intervals < 1.0:
            raise ValueError(f"intervals: expected a two-sided level in (0, 1) such as 0.8, got {self.intervals!r}")
        if not isinstance(self.calibration_tasks, int) or self.calibration_tasks < 1:
            raise ValueError(f"calibration_tasks: expected an int >= 1, got {self.calibration_tasks!r}")

    def settings(self) -> list[tuple[int, str]]:
        """``(k, policy)`` per reported setting: k = 0 once (no probe to choose), then each
        policy for each k > 0."""
        return [(int(k), policy) for k in self.probes for policy in (("random",) if k == 0 else self.probe_policy)]

    def describe(self, benchmark: Benchmark) -> dict:
        described = {"kind": "leave-one-task-out", "probes": [int(k) for k in self.probes], "seeds": int(self.seeds),
                     "history": self.history, "probe_policy": list(self.probe_policy),
                     "targets": list(benchmark.targets),
                     "weighted_tau": "scipy.stats.weightedtau(true, pred, rank=None)",
                     "aggregation": "mean over seeds per task, then over tasks",
                     "se": "standard error over tasks of the per-task means over seeds (seed spread included); "
                           "per task: over seeds"}
        if self.intervals is not None:
            described["intervals"] = (f"{self.intervals:g} two-sided, error quantiles calibrated over up to "
                                      f"{self.calibration_tasks} held-out history tasks of each fold")
        return described


@dataclasses.dataclass(frozen=True)
class ModelsOut:
    """Cold-start models: ``folds`` (index arrays partitioning the models) hidden in turn
    (``hide=False``: nothing hidden, the reference a method reaches with every record)."""

    folds: tuple[np.ndarray, ...]
    label: str = "models_out"
    hide: bool = True
    kind = "models_out"

    def describe(self, benchmark: Benchmark) -> dict:
        return {"kind": self.label, "folds": [np.asarray(f).tolist() for f in self.folds],
                "aggregation": "folds' predictions assembled, metrics per task over observed models, "
                               "mean over tasks with >= 2 observed models",
                "se": "standard error over tasks"}


@dataclasses.dataclass(frozen=True)
class ArchitecturesOut:
    """Cold-start architectures: n random models keep their records, the rest are predicted."""

    train_sizes: tuple[int, ...] = (100, 1000)
    seeds: int = 3
    kind = "architectures_out"

    def describe(self, benchmark: Benchmark) -> dict:
        return {"kind": "architectures-out", "train_sizes": [int(n) for n in self.train_sizes],
                "seeds": int(self.seeds),
                "aggregation": "per task over the held-out models, mean over seeds, then tasks",
                "se": "standard error over seeds of each seed's mean over tasks; per task: over seeds"}


def model_folds(num_models: int, num_folds: int, seed: int, groups: Sequence[str] | None = None) -> list[np.ndarray]:
    """Index arrays partitioning range(num_models): ``num_folds`` random folds of near-equal
    size, or with ``groups[M]`` one fold per distinct group (e.g. per architecture family)."""
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (num_models,):
            raise ValueError(f"groups: expected {num_models} labels, got shape {groups.shape}")
        return [np.flatnonzero(groups == g) for g in dict.fromkeys(groups.tolist())]
    if not 2 <= num_folds <= num_models:
        raise ValueError(f"num_folds: expected 2..{num_models}, got {num_folds}")
    order = np.random.default_rng(seed).permutation(num_models)
    return [np.sort(fold) for fold in np.array_split(order, num_folds)]


# ----------------------------------------------------------------------------- the loop


def evaluate(benchmark: Benchmark, methods: Mapping[str, object], split, *,
             progress: Callable[[str], None] | None = None, keep_predictions: str | None = None) -> dict:
    """Runs ``split`` (:class:`TasksOut`, :class:`ModelsOut` or :class:`ArchitecturesOut`) for
    every method of ``methods`` (name -> method) on ``benchmark``; returns the report (module
    docstring). ``progress`` is called with a short message after each fit.
    ``keep_predictions``: the name of one method whose seed-0 predictions the report keeps
    (``report["predictions"]``; nothing is computed again, they only take room)."""
    if keep_predictions is not None and keep_predictions not in methods:
        raise ValueError(f"keep_predictions: {keep_predictions!r} is not one of the methods {list(methods)}")
    run = {"tasks_out": _tasks_out, "models_out": _models_out, "architectures_out": _architectures_out}[split.kind]
    kept = {}
    results, seconds, settings, metric_keys = run(benchmark, methods, split, progress or (lambda msg: None),
                                                  _Keeper(keep_predictions, kept))
    for by_setting in results.values():
        for entry in by_setting.values():
            _summarise(entry, metric_keys)
    report = {"benchmark": benchmark.name, "protocol": split.describe(benchmark), "settings": settings,
              "metrics": list(metric_keys), "results": results, "seconds": seconds}
    if keep_predictions is not None:
        report["predictions"] = {"method": keep_predictions, "seed": 0, "by_setting": kept}
    return report


@dataclasses.dataclass(frozen=True)
class _Keeper:
    """Collects ``method``'s seed-0 predictions into ``kept[setting][task]`` (nothing when
    ``method`` is None): those of the models the metrics saw, at most :data:`KEPT_MODELS`
    of them (a random subset drawn from seed 0 alone), so a report stays small."""

    method: str | None
    kept: dict

    def __call__(self, name: str, setting: str, task: str, true: np.ndarray, pred: np.ndarray,
                 scored: np.ndarray) -> None:
        """``true[M]``, ``pred[M]``: seed 0's scores; ``scored[M]``: the models the metrics saw."""
        if name != self.method:
            return
        chosen = np.flatnonzero(scored)
        if chosen.size > KEPT_MODELS:
            chosen = np.sort(np.random.default_rng(0).choice(chosen, KEPT_MODELS, replace=False))
        self.kept.setdefault(setting, {})[task] = {"true": np.asarray(true)[chosen].tolist(),
                                                   "pred": np.asarray(pred)[chosen].tolist()}


def standard_error(sample: np.ndarray) -> float:
    """Standard error of the mean of the finite values of ``sample[N]`` (``ddof=1``); NaN
    with fewer than two."""
    sample = np.asarray(sample, dtype=np.float64)
    sample = sample[np.isfinite(sample)]
    return float(sample.std(ddof=1) / np.sqrt(sample.size)) if sample.size > 1 else float("nan")


def _summarise(entry: dict, keys: Sequence[str]) -> None:
    """Adds ``mean`` and ``se`` over the per-task values (or the per-seed means, if given)."""
    entry["mean"], entry["se"] = {}, {}
    for key in keys:
        values = np.array([v[key] for v in entry["per_task"].values()], dtype=np.float64)
        spread = entry.get("seed_means", {}).get(key)
        entry["mean"][key] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        entry["se"][key] = standard_error(np.asarray(spread, dtype=np.float64) if spread is not None else values)


def _check(name: str, pred: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    pred = np.asarray(pred, dtype=np.float64)
    if pred.shape != shape or not np.all(np.isfinite(pred)):
        raise ValueError(f"method {name!r} returned scores of shape {pred.shape} (expected {shape}) "
                         f"or non-finite scores")
    return pred


def _task_inputs(benchmark: Benchmark, task: int) -> dict:
    """What a user brings of task index ``task`` besides its scores: name and metadata, proxy
    embedding, per-model forward-pass features."""
    records = benchmark.records
    extra = {"metadata": records.task_metadata(task)}
    if "proxy" in records.task_side:
        extra["proxy"] = np.asarray(records.task_side["proxy"][task])
    if benchmark.features is not None:
        extra.update(benchmark.features(records.tasks[task]))
    return extra


def _setting_label(k: int, policy: str) -> str:
    return str(k) if policy == "random" else f"{k} {policy}"


def final_regret(true: np.ndarray, pred: np.ndarray, probes: Sequence[np.ndarray], valid: np.ndarray) -> np.ndarray:
    """``regret[S]`` of a user's final pick per draw: the best true score over ``valid[M]``
    minus the best of the probes' true scores and the true score of the top prediction among
    the valid non-probes (``true[M]``, ``pred[S, M]``, ``probes[s]`` indices; prediction ties
    to the lowest index, as ``metrics.top1_regret``)."""
    best = true[valid].max()
    out = np.empty(len(pred))
    for s, (row, chosen) in enumerate(zip(pred, probes)):
        rest = valid.copy()
        rest[chosen] = False
        measured = [true[chosen].max()] if len(chosen) else []
        top = [true[np.argmax(np.where(rest, row, -np.inf))]] if rest.any() else []
        out[s] = best - max(measured + top)
    return out


def _interval_metrics(calibration: Calibration, level: float, true: np.ndarray, pred: np.ndarray,
                      probes: Sequence[np.ndarray], scored: np.ndarray, proxy: np.ndarray | None) -> dict:
    """``{"coverage": [S], "interval_width": [S]}``: per draw s, the share of the models of
    ``scored[s]`` (``[S, M]``) whose ``true[M]`` score lies in the ``level`` interval that
    ``calibration`` gives ``pred[s]`` (``[S, M]``) with the draw's ``probes[s]`` and the task's
    ``proxy``, and those intervals' mean width."""
    coverage, width = np.empty(len(pred)), np.empty(len(pred))
    for s, (row, chosen, mask) in enumerate(zip(pred, probes, scored)):
        _, low, high = calibration.predict(row, proxy=proxy, probe_models=chosen, probe_scores=true[chosen],
                                           level=level)
        coverage[s] = np.mean((low[mask] <= true[mask]) & (true[mask] <= high[mask]))
        width[s] = np.mean(high[mask] - low[mask])
    return {"coverage": coverage, "interval_width": width}


def _choose(method, state, policy: str, policies: dict, k: int, seed: int, task: int, draws: dict,
            candidates: np.ndarray, true: np.ndarray, inputs: dict) -> np.ndarray:
    """``probes[k]`` of one draw: the shared random draw, or the policy's picks among
    ``candidates``, each one's true score revealed before the next."""
    if policy == "random":
        return draws[(k, seed)]
    evidence, _ = suggest.choose_probes(method, state, TaskEvidence(seed=seed, **inputs), k, policies[policy],
                                        reveal=lambda m: true[m], candidates=candidates, seed=[seed, task, k])
    return evidence.probe_models


def _tasks_out(benchmark, methods, split: TasksOut, progress, keep: _Keeper):
    records = benchmark.records
    history_pool = benchmark.history_tasks(split.history)
    settings = split.settings()
    results = {name: {_setting_label(k, p): {"per_task": {}, "per_task_se": {}} for k, p in settings}
               for name in methods}
    seconds = {name: 0.0 for name in methods}
    policies = {p: suggest.policy_from_spec(p.removeprefix("suggest:")) for p in split.probe_policy if p != "random"}
    for method in methods.values():
        for policy in policies.values():
            suggest.check_supported(method, policy)
    targets = benchmark.target_indices
    if split.held_out is not None:
        unknown = sorted(set(split.held_out) - {records.tasks[t] for t in targets})
        if unknown:
            raise ValueError(f"held_out: not target tasks of {benchmark.name}: {unknown[:5]}")
        targets = [t for t in targets if records.tasks[t] in split.held_out]
    keys = METRIC_KEYS + (INTERVAL_KEYS if split.intervals is not None else ())
    for ti in targets:
        task = records.tasks[ti]
        hist_tasks = history_pool[history_pool != ti]
        hist = records.select_tasks(hist_tasks)
        calibrated = held_out_tasks(hist, split.calibration_tasks)
        true = records.scores[ti]
        candidates = np.flatnonzero(benchmark.eval_mask[ti])
        spread = np.ptp(true[candidates])
        draws = {(k, s): probe_draw(candidates, k, s, int(ti)) for k in split.probes for s in range(split.seeds)}
        inputs = _task_inputs(benchmark, ti)
        for name, method in methods.items():
            start = time.perf_counter()
            state = method.fit(hist, seed=0)
            # Intervals from the fold's history alone (t is not in hist).
            calibration = None if split.intervals is None else fit_calibration(
                hist, hist.task_side.get("proxy"), calibrated,
                *held_out_predictions(method, hist, calibrated, lambda t: _task_inputs(benchmark, hist_tasks[t])))
            # The k = 0 prediction: the k = 0 setting itself, and the reference of weighted_tau_k0.
            no_probes = _check(name, method.score_batch(state, [TaskEvidence(seed=s, **inputs) for s in range(split.seeds)]),
                               (split.seeds, records.num_models))
            for k, policy in settings:
                chosen = [_choose(method, state, policy, policies, k, s, ti, draws, candidates, true, inputs)
                          for s in range(split.seeds)] if k else [np.zeros(0, int)] * split.seeds
                masks = np.repeat(benchmark.eval_mask[ti][None], split.seeds, 0)
                for mask, probes in zip(masks, chosen):
                    mask[probes] = False
                pred = no_probes if k == 0 else _check(name, method.score_batch(state, [
                    TaskEvidence(probes, true[probes], seed=s, **inputs) for s, probes in enumerate(chosen)]),
                    (split.seeds, records.num_models))
                values = dict(metrics.ranking_metrics(np.broadcast_to(true, pred.shape), pred, masks))
                values["final_regret"] = final_regret(true, pred, chosen, benchmark.eval_mask[ti])
                values["final_regret_normalized"] = values["final_regret"] / spread if spread > 0 else \
                    np.zeros(split.seeds)
                values["weighted_tau_k0"] = metrics.weighted_tau(np.broadcast_to(true, pred.shape), no_probes, masks)
                if split.intervals is not None:
                    values.update(_interval_metrics(calibration, split.intervals, true, pred, chosen, masks,
                                                    inputs.get("proxy")))
                # [S] each, in the metrics' dtype (float32: the means as they have always been computed)
                per_seed = {key: np.asarray(values[key]) for key in keys}
                entry = results[name][_setting_label(k, policy)]
                entry["per_task"][task] = {key: float(np.nanmean(v)) for key, v in per_seed.items()}
                entry["per_task_se"][task] = {key: standard_error(v) for key, v in per_seed.items()}
                keep(name, _setting_label(k, policy), task, true, pred[0], masks[0])
            seconds[name] += time.perf_counter() - start
            progress(f"{benchmark.name}: {name} on {task}")
    return results, seconds, [_setting_label(k, p) for k, p in settings], keys


def history_predictions(method, state, history: Records) -> np.ndarray:
    """``scores[T, M]``: the method's predictions for every model on every history task:
    ``method.complete(state)`` where the method has it, else one ``score`` per task from the
    task's visible cells as probes, with its name and metadata."""
    if hasattr(method, "complete"):
        return np.asarray(method.complete(state), dtype=np.float64)
    evidences = []
    for t in range(history.num_tasks):
        observed = np.flatnonzero(history.mask[t])
        evidences.append(TaskEvidence(observed, history.scores[t, observed], metadata=history.task_metadata(t)))
    return np.asarray(method.score_batch(state, evidences), dtype=np.float64)


def _models_out(benchmark, methods, split: ModelsOut, progress, keep: _Keeper):
    records = benchmark.records
    folds = [np.asarray(f, dtype=int) for f in split.folds]
    if not folds or np.sort(np.concatenate(folds)).tolist() != list(range(records.num_models)):
        raise ValueError(f"folds: expected a partition of the {records.num_models} models")
    keys = ("kendall", "weighted_tau")
    results, seconds = {}, {}
    true = np.where(records.mask, records.scores, 0.0)
    scored = records.mask.sum(1) >= 2
    for name, method in methods.items():
        pred, spent = np.zeros(records.scores.shape), 0.0
        for i, fold in enumerate(folds):
            start = time.perf_counter()
            history = records.hide_models(fold) if split.hide else records
            fold_pred = history_predictions(method, method.fit(history, seed=0), history)
            spent += time.perf_counter() - start
            pred[:, fold] = _check(name, fold_pred[:, fold], (records.num_tasks, fold.size))
            progress(f"{name} fold {i}")
        kendall = np.asarray(metrics.kendall_tau(true, pred, records.mask), np.float64)
        weighted = np.asarray(metrics.weighted_tau(true, pred, records.mask), np.float64)
        results[name] = {"all": {"per_task": {task: {"kendall": float(kendall[t]), "weighted_tau": float(weighted[t])}
                                              for t, task in enumerate(records.tasks) if scored[t]}}}
        for t in np.flatnonzero(scored):
            keep(name, "all", records.tasks[t], true[t], pred[t], records.mask[t])
        seconds[name] = spent
    return results, seconds, ["all"], keys


def _architectures_out(benchmark, methods, split: ArchitecturesOut, progress, keep: _Keeper):
    records = benchmark.records
    num_models = records.num_models
    sizes = [int(n) for n in split.train_sizes]
    if not sizes or any(not 2 <= n <= num_models - 2 for n in sizes):
        raise ValueError(f"train_sizes: expected sizes in [2, {num_models - 2}], got {list(split.train_sizes)}")
    if not isinstance(split.seeds, int) or split.seeds < 1:
        raise ValueError(f"seeds: expected an int >= 1, got {split.seeds!r}")
    keys = ("kendall", "spearman")
    tasks = records.tasks
    results = {name: {} for name in methods}
    seconds = dict.fromkeys(methods, 0.0)
    for n in sizes:
        values = {name: np.zeros((split.seeds, 2, len(tasks))) for name in methods}  # [S, kendall|spearman, T]
        for seed in range(split.seeds):
            order = np.random.default_rng(seed).permutation(num_models)
            test = order[n:]
            history = records.hide_models(test)
            true = np.where(records.mask[:, test], records.scores[:, test], 0.0)
            test_mask = records.mask[:, test]
            for name, method in methods.items():
                start = time.perf_counter()
                pred = history_predictions(method, method.fit(history, seed), history)
                seconds[name] += time.perf_counter() - start
                pred = _check(name, pred[:, test], true.shape)
                values[name][seed, 0] = metrics.kendall_tau(true, pred, test_mask)
                values[name][seed, 1] = metrics.spearman(true, pred, test_mask)
                if seed == 0:
                    for t, task in enumerate(tasks):
                        keep(name, str(n), task, true[t], pred[t], test_mask[t])
                progress(f"{name} n={n} seed={seed}")
        for name in methods:
            by_task = values[name].mean(0)  # [2, T]
            results[name][str(n)] = {
                "per_task": {task: {"kendall": float(by_task[0, t]), "spearman": float(by_task[1, t])}
                             for t, task in enumerate(tasks)},
                "per_task_se": {task: {"kendall": standard_error(values[name][:, 0, t]),
                                       "spearman": standard_error(values[name][:, 1, t])}
                                for t, task in enumerate(tasks)},
                "seed_means": {"kendall": values[name][:, 0].mean(1).tolist(),
                               "spearman": values[name][:, 1].mean(1).tolist()},
            }
    return results, seconds, [str(n) for n in sizes], keys
