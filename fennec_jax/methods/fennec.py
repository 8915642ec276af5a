"""The Fennec transfer space: models and tasks as vectors in one latent space.

Fennec (arXiv 2403.06382) factorises the model x task performance matrix so that a model's
score on a task is the dot product of their vectors; a new task gets its vector from a
little evidence and every model is ranked by one matrix-vector product. Here::

    z[t, m] ~= task_vecs[t] @ model_vecs[m] + model_bias[m] + task_bias[t]

is fitted to the per-task z-scores of the observed history (:func:`fennec_jax.core.records.standardize`)
with optax, full batch under ``jit``; the loss is the masked squared error, plus optionally a
listwise ranking loss (ListMLE), plus L2 penalties. The latent space has two blocks:

* the model/task block (``d`` dims): ``model_vecs = free[m] + side_m[m] @ W_m`` and
  ``task_vecs = free[t] + side_t[t] @ W_t``, where ``side_m`` / ``side_t`` encode model and task
  metadata (architecture family, parameter count, ...; see :class:`FeatureEncoder`), so a
  model or task with few records still gets a sensible vector from the ones that share its
  metadata;
* the dataset block (``d_data`` dims): one embedding per *dataset* name, used both as the
  model's vector (through the dataset it was pre-trained on, model metadata ``source``) and as
  the task's vector (through the task's own name), matched case-insensitively. A target task
  that is also some models' source dataset thus has an informed vector before any probe: it is
  learned from how the models pre-trained on it transfer to the other tasks.

``model_bias`` is popularity (the mean z-score over history tasks) plus a learned, penalised
correction (free per model, and linear in all model metadata, the source dataset included), so
a new task with no evidence starts from the popularity ranking.

A new task's vector (:class:`TransferSpace`):

1. prior, k = 0: the mean history task vector, its dataset block replaced by the tied dataset
   embedding when the task's name is some models' source (:meth:`TransferSpace.prior_task_vector`);
   or predicted from task metadata or a proxy embedding by a ridge map (:class:`~fennec_jax.core.ridge.RidgeMap`);
2. from k probe scores: ridge regression toward the prior, in closed form
   (:func:`probe_task_vector`); probe scores in any units (offset free, scale matched), and
   k = 0 or 1 gives the prior itself.

Hyper-parameters come from a small grid by validation inside the history
(:func:`fit_space`): whole history tasks are held out in turn and scored from k probes exactly
as a new task would be; the winner is refitted on the full history. All fits of a grid (every
configuration x every held-out fold, plus the full fit) run as one vmapped, jitted
``lax.scan``, compiled once per shape.

A non-negative mode (``SpaceConfig(nonneg=True)``) reproduces Fennec's published choice: NMF
with d = 5 of the per-task min-max scaled performance matrix, no biases, no side information
(method ``fennec_nmf``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from fennec_jax.eval.protocol import validation_draws, validation_tau
from fennec_jax.core.encoding import FeatureEncoder, normalise_names, one_hot
from fennec_jax.core.checkpoint import CheckpointError, restore_arrays, save_arrays
from fennec_jax.core.evidence import TaskEvidence
from fennec_jax.core.records import Records, standardize
from fennec_jax.core.ridge import RidgeMap, ridge_solve
from fennec_jax.methods.base import MethodBase, register
from fennec_jax.methods.suggest import LinearPosterior, probe_precision

__all__ = [
    "SpaceConfig",
    "DEFAULT_GRID",
    "NMF_CONFIG",
    "MF_CONFIG",
    "TransferSpace",
    "fit_space",
    "probe_task_vector",
    "source_profiles",
    "source_affinity",
    "Fennec",
    "PRESETS",
    "FORMAT",
    "save_space",
    "restore_space",
]

_NEG_LARGE = -1e9  # stands for log(0) in ListMLE: finite, so gradients stay finite


@dataclasses.dataclass(frozen=True)
class SpaceConfig:
    """Hyper-parameters of one transfer space.

    Attributes:
      d: dims of the model/task block.
      d_data: dims of the tied dataset block (0 = no dataset embeddings).
      l2_free: L2 weight on free per-model / per-task vectors and the bias corrections.
      l2_side: L2 weight on the maps from metadata features to vectors and biases.
      l2_data: L2 weight on dataset embeddings.
      rank_weight: weight of the ListMLE ranking loss (0 = squared error only).
      probe_l2: ridge weight pulling a probed task's vector toward its prior.
      affinity_weight: weight of the source-affinity term added at score time to the space's
        standardised scores (:func:`source_affinity`; 0 = off).
      nonneg: non-negative factors (NMF; no biases, no side information, no dataset block).
      steps: Adam steps.
      learning_rate: Adam learning rate.
    """

    d: int = 4
    d_data: int = 3
    l2_free: float = 1.0
    l2_side: float = 0.1
    l2_data: float = 0.3
    rank_weight: float = 0.0
    probe_l2: float = 1.0
    affinity_weight: float = 0.0
    nonneg: bool = False
    steps: int = 600
    learning_rate: float = 0.03

    def __post_init__(self):
        for name in ("d", "d_data", "steps"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 0:
                raise ValueError(f"SpaceConfig.{name} must be a non-negative integer, got {getattr(self, name)!r}")
        for name in ("l2_free", "l2_side", "l2_data", "rank_weight", "affinity_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"SpaceConfig.{name} must be finite and >= 0, got {value!r}")
        for name in ("probe_l2", "learning_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"SpaceConfig.{name} must be finite and > 0, got {value!r}")
        if self.nonneg and self.d_data:
            raise ValueError("SpaceConfig: nonneg=True fits plain NMF; set d_data=0")

    def fit_key(self) -> tuple:
        """What the fit depends on (all but the score-time ``probe_l2``, ``affinity_weight``):
        configs with equal keys share one fit."""
        return (self.d, self.d_data, self.l2_free, self.l2_side, self.l2_data, self.rank_weight, self.nonneg,
                self.steps, self.learning_rate)


# Chosen by validation inside each history (never on an evaluated task): popularity plus
# metadata (no latent dims), low-rank, low-rank + tied dataset block; two probe ridges; four
# source-affinity weights. Ties go to the first entry: when no held-out history task is named
# after a source dataset the affinity term cannot be validated and its weight is 0.4, a value
# chosen by looking at leave-one-task-out numbers (notes/transfer_space.md, Round 2).
AFFINITY_WEIGHTS = (0.4, 0.0, 0.2, 0.8)
DEFAULT_GRID: tuple[SpaceConfig, ...] = tuple(
    SpaceConfig(d=d, d_data=d_data, probe_l2=probe_l2, affinity_weight=affinity_weight)
    for d, d_data in ((0, 0), (4, 0), (4, 3))
    for probe_l2 in (1.0, 4.0)
    for affinity_weight in AFFINITY_WEIGHTS
)

# Fennec's published choice (method fennec_nmf) and a plain low-rank baseline (fennec_mf).
NMF_CONFIG = SpaceConfig(d=5, d_data=0, l2_free=0.01, l2_side=0.0, l2_data=0.0, nonneg=True, steps=1000)
MF_CONFIG = SpaceConfig(d=4, d_data=0)


# ----------------------------------------------------------------------------- side information



@dataclasses.dataclass(frozen=True)
class _Design:
    """Everything the fit needs from the history, as arrays (shapes in names).

    ``source[M, N]`` one-hot of each model's source dataset, ``task_dataset[T, N]`` one-hot of
    each task's own name, both over the dataset vocabulary ``datasets[N]``.
    """

    target: np.ndarray  # [T, M] float32: z-scores (min-max scaled scores in NMF mode)
    mask: np.ndarray  # [T, M] bool
    order: np.ndarray  # [T, M] int32: models by decreasing target, observed first (ListMLE)
    model_side: np.ndarray  # [M, P]: metadata features of the model block (all but 'source')
    bias_side: np.ndarray  # [M, B]: metadata features of the model bias (all columns)
    task_side: np.ndarray  # [T, Q]
    source: np.ndarray  # [M, N]
    task_dataset: np.ndarray  # [T, N]
    family: np.ndarray  # [M] int: index of each model's architecture family (0 for all without one)
    z: np.ndarray  # [T, M] float64: per-task z-scores (for the source profiles)
    datasets: tuple[str, ...]
    task_encoder: FeatureEncoder


def _design(history: Records, nonneg: bool, side_info: bool, model_features: np.ndarray | None = None) -> _Design:
    if history.num_tasks == 0 or history.num_models == 0:
        raise ValueError(f"history: expected at least one task and one model, got shape {history.scores.shape}")
    extra = _standardised_columns(model_features, history.num_models, nonneg, side_info)
    if nonneg:
        target = _minmax(history.scores, history.mask)
    else:
        target = standardize(history.scores, history.mask)
    target = target.astype(np.float32)
    order = np.argsort(np.where(history.mask, -target, np.inf), axis=1, kind="stable").astype(np.int32)
    use_side = side_info and not nonneg
    # The source dataset enters the vectors through the dataset block only, and the bias as a
    # main effect like every other metadata column.
    vector_meta = {k: v for k, v in history.model_meta.items() if k != "source"}
    model_encoder = FeatureEncoder.fit(vector_meta) if use_side else FeatureEncoder()
    bias_encoder = FeatureEncoder.fit(history.model_meta) if use_side else FeatureEncoder()
    task_encoder = FeatureEncoder.fit(history.task_meta) if use_side else FeatureEncoder()
    task_names = normalise_names(history.tasks)
    sources = normalise_names(history.model_meta.get("source", [""] * history.num_models))
    datasets = tuple(sorted(set(task_names) | (set(sources) - {""}))) if use_side else ()
    index = {name: i for i, name in enumerate(datasets)}
    families = normalise_names(history.model_meta.get("family", [""] * history.num_models))
    return _Design(
        target=target,
        mask=history.mask.copy(),
        order=order,
        model_side=np.concatenate([model_encoder.transform(history.model_meta, history.num_models), extra], 1),
        bias_side=np.concatenate([bias_encoder.transform(history.model_meta, history.num_models), extra], 1),
        task_side=task_encoder.transform(history.task_meta, history.num_tasks),
        source=one_hot([index.get(s, -1) for s in sources], len(datasets)),
        task_dataset=one_hot([index.get(t, -1) for t in task_names], len(datasets)),
        family=np.unique(families, return_inverse=True)[1].reshape(-1),
        z=standardize(history.scores, history.mask),
        datasets=datasets,
        task_encoder=task_encoder,
    )


def _standardised_columns(model_features: np.ndarray | None, num_models: int, nonneg: bool,
                          side_info: bool) -> np.ndarray:
    """``x[M, E]`` float32: model_features with every column centred and scaled to unit
    variance over the models (constant columns only centred); ``[M, 0]`` when None."""
    if model_features is None:
        return np.zeros((num_models, 0), np.float32)
    if nonneg or not side_info:
        raise ValueError("model_features: need side_info=True and a config with nonneg=False")
    x = np.asarray(model_features, np.float64)
    if x.ndim != 2 or x.shape[0] != num_models or not np.isfinite(x).all():
        raise ValueError(f"model_features: expected finite values of shape [M={num_models}, E], got {x.shape}")
    spread = x.std(0)
    return ((x - x.mean(0)) / np.where(spread > 1e-8, spread, 1.0)).astype(np.float32)


def _minmax(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-task scores scaled to [0, 1] over observed models (0 outside the mask)."""
    x = np.where(mask, scores, np.nan)
    with np.errstate(all="ignore"):
        lo, hi = np.nanmin(x, 1, keepdims=True), np.nanmax(x, 1, keepdims=True)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    return np.where(mask, (np.nan_to_num(x) - np.nan_to_num(lo)) / np.nan_to_num(span, nan=1.0), 0.0)



# ----------------------------------------------------------------------------- source affinity


def source_profiles(z: np.ndarray, mask: np.ndarray, family: np.ndarray, source: np.ndarray) -> np.ndarray:
    """``profiles[N, T]``: how the models pre-trained on each dataset fare on each history task.

    ``profiles[n, t]`` is the mean, over models pre-trained on dataset n (``source[M, N]``
    one-hot) observed on task t, of their z-score ``z[T, M]`` minus the mean z-score of their
    architecture family (``family[M]`` int) on t; NaN where no such model is observed
    (``mask[T, M]``). Subtracting the family mean leaves what the source dataset adds.
    """
    mask = np.asarray(mask, dtype=bool)
    if not np.asarray(source).any():  # no model has a source dataset: every profile is undefined
        return np.full((source.shape[1], mask.shape[0]), np.nan)
    observed = mask.astype(np.float64)
    z = np.where(mask, z, 0.0)
    families = one_hot(family, int(family.max()) + 1 if family.size else 0)  # [M, K]
    with np.errstate(invalid="ignore", divide="ignore"):
        family_mean = (z @ families) / (observed @ families)  # [T, K]
        effect = np.where(mask, z - np.nan_to_num(family_mean)[:, family], 0.0)  # [T, M]
        return ((effect @ source) / (observed @ source)).T


def source_affinity(profiles: np.ndarray, model_sources: np.ndarray, dataset: int, min_tasks: int = 3) -> np.ndarray:
    """``affinity[M]``: how close each model's source dataset is to ``dataset``, from the history.

    The affinity of dataset n to ``dataset`` is the Pearson correlation of their rows of
    ``profiles[N, T]`` (:func:`source_profiles`) over the tasks where both are defined (at least
    ``min_tasks``, else 0): datasets whose pre-trained models succeed and fail on the same tasks
    are taken to be alike. It is 1 for ``dataset`` itself (models pre-trained on the task's own
    data) and 0 for models with no source (``model_sources[m] = -1``).
    """
    profiles = np.asarray(profiles, dtype=np.float64)
    if not 0 <= dataset < profiles.shape[0]:
        raise ValueError(f"dataset: expected an index in [0, {profiles.shape[0]}), got {dataset}")
    both = np.isfinite(profiles) & np.isfinite(profiles[dataset])[None, :]  # [N, T]
    count = both.sum(1)
    x = np.where(both, profiles, 0.0)
    y = np.where(both, profiles[dataset][None, :], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        xc = np.where(both, x - x.sum(1, keepdims=True) / np.maximum(count, 1)[:, None], 0.0)
        yc = np.where(both, y - y.sum(1, keepdims=True) / np.maximum(count, 1)[:, None], 0.0)
        corr = (xc * yc).sum(1) / np.sqrt((xc**2).sum(1) * (yc**2).sum(1))
    corr = np.where((count >= min_tasks) & np.isfinite(corr), corr, 0.0)
    corr[dataset] = 1.0
    model_sources = np.asarray(model_sources, dtype=int)
    return np.where(model_sources >= 0, corr[np.maximum(model_sources, 0)], 0.0)


# ----------------------------------------------------------------------------- fitting (jax)

_FACTORS = ("model_free", "task_free", "model_map", "task_map", "dataset")


def _init_params(key, data, d, d_data):
    (t, m), n = data["target"].shape, data["source"].shape[1]
    shapes = {
        "model_free": (m, d), "task_free": (t, d), "dataset": (n, d_data),
        "model_map": (data["model_side"].shape[1], d), "task_map": (data["task_side"].shape[1], d),
        "model_bias": (m,), "task_bias": (t,), "bias_map": (data["bias_side"].shape[1],),
    }
    keys = dict(zip(sorted(shapes), jax.random.split(key, len(shapes))))
    return {name: 0.1 * jax.random.normal(keys[name], shape) if name in _FACTORS else jnp.zeros(shape)
            for name, shape in shapes.items()}


def _vectors(params, data, base, dims, data_dims, nonneg):
    """``(model_vecs[M, D], task_vecs[T, D], model_bias[M], task_bias[T])`` with D = d + d_data."""
    dataset = params["dataset"] * data_dims
    model_vecs = jnp.concatenate(
        [(params["model_free"] + data["model_side"] @ params["model_map"]) * dims, data["source"] @ dataset], 1)
    task_vecs = jnp.concatenate(
        [(params["task_free"] + data["task_side"] @ params["task_map"]) * dims, data["task_dataset"] @ dataset], 1)
    if nonneg:
        return model_vecs, task_vecs, jnp.zeros(model_vecs.shape[0]), jnp.zeros(task_vecs.shape[0])
    model_bias = base + params["model_bias"] + data["bias_side"] @ params["bias_map"]
    return model_vecs, task_vecs, model_bias, params["task_bias"]


def listmle(pred, order, mask):
    """ListMLE loss summed over tasks: ``pred[T, M]`` against the true order ``order[T, M]``."""
    s = jnp.take_along_axis(pred, order, 1)
    observed = jnp.take_along_axis(mask, order, 1)
    tail = lax.cumlogsumexp(jnp.where(observed, s, _NEG_LARGE), axis=1, reverse=True)
    return jnp.sum(jnp.where(observed, tail - s, 0.0))


def _fit_one(data, mask, hyper, dims, data_dims, key, *, steps, learning_rate, nonneg, ranking):
    """One fit to ``data['target'][T, M]`` over ``mask[T, M]``.

    ``hyper`` = (l2_free, l2_side, l2_data, rank_weight); ``dims[d]`` / ``data_dims[d_data]`` are
    0/1 masks switching latent dims off (so configs of different d share one compiled fit).
    ``ranking`` (static) adds the ListMLE term. Returns the space's arrays.
    """
    l2_free, l2_side, l2_data, rank_weight = hyper[0], hyper[1], hyper[2], hyper[3]
    target = data["target"]
    weight = mask.astype(target.dtype)
    base = (weight * target).sum(0) / jnp.maximum(weight.sum(0), 1.0)  # popularity under this mask
    params = _init_params(key, data, dims.shape[0], data_dims.shape[0])
    if nonneg:
        params = jax.tree.map(jnp.abs, params)

    def loss_fn(params):
        model_vecs, task_vecs, model_bias, task_bias = _vectors(params, data, base, dims, data_dims, nonneg)
        pred = task_vecs @ model_vecs.T + model_bias[None, :] + task_bias[:, None]
        loss = jnp.sum(jnp.where(mask, pred - target, 0.0) ** 2)
        if ranking:
            loss += rank_weight * listmle(pred, data["order"], mask)
        squares = {name: jnp.sum(value**2) for name, value in params.items()}
        return (loss
                + l2_free * (squares["model_free"] + squares["task_free"] + squares["model_bias"])
                + l2_side * (squares["model_map"] + squares["task_map"] + squares["bias_map"])
                + l2_data * squares["dataset"])

    optimizer = optax.adam(learning_rate)

    def step(carry, _):
        params, opt_state = carry
        updates, opt_state = optimizer.update(jax.grad(loss_fn)(params), opt_state, params)
        params = optax.apply_updates(params, updates)
        if nonneg:  # projected gradient: factors stay non-negative
            params = jax.tree.map(lambda x: jnp.maximum(x, 0.0), params)
        return (params, opt_state), None

    (params, _), _ = lax.scan(step, (params, optimizer.init(params)), None, length=steps)
    model_vecs, task_vecs, model_bias, task_bias = _vectors(params, data, base, dims, data_dims, nonneg)
    dataset_vecs = jnp.concatenate([jnp.zeros((params["dataset"].shape[0], dims.shape[0])),
                                    params["dataset"] * data_dims], 1)
    return model_vecs, task_vecs, model_bias, task_bias, dataset_vecs


@functools.partial(jax.jit, static_argnames=("steps", "learning_rate", "nonneg", "ranking"))
def _fit_batch(data, masks, hyper, dims, data_dims, key, *, steps, learning_rate, nonneg, ranking):
    """All fits at once: ``masks[B, T, M]``, ``hyper[B, 4]``, ``dims[B, d]``, ``data_dims[B, d_data]``."""
    fit = functools.partial(_fit_one, steps=steps, learning_rate=learning_rate, nonneg=nonneg, ranking=ranking)
    return jax.vmap(fit, in_axes=(None, 0, 0, 0, 0, None))(data, masks, hyper, dims, data_dims, key)


# ----------------------------------------------------------------------------- the fitted space



@dataclasses.dataclass(frozen=True)
class TransferSpace:
    """A fitted transfer space: ``scores[M] = model_vecs @ task_vec + model_bias``.

    Attributes:
      models, tasks: names, lengths M and T (the history's).
      model_vecs: ``[M, D]``; model_bias: ``[M]``.
      task_vecs: ``[T, D]``; task_bias: ``[T]`` (a constant per task: ranking ignores it).
      prior_vec: ``[D]`` the prior vector of a new task (mean over history tasks).
      datasets: dataset vocabulary (lower-cased names), length N.
      dataset_priors: ``[N, D]`` a new task named after dataset n gets ``prior_vec`` with its
        dataset block replaced by row n's (rows of datasets no model was pre-trained on are
        unused; see ``source_datasets``).
      source_datasets: ``[N]`` bool, datasets some model was pre-trained on.
      config: the hyper-parameters used (chosen by validation when fitted on a grid).
      validation: ``(config, mean validation weighted tau)`` per grid entry, best first.
      task_encoder: task metadata -> features; metadata_map: features -> task vector (or None).
      proxy_map: proxy embedding -> task vector (None until :meth:`with_proxy_map`).
      source_profiles: ``[N, T]`` :func:`source_profiles` of the history (empty: no affinity).
      model_sources: ``[M]`` int, each model's source dataset index (-1: none; empty: unknown).
    """

    models: tuple[str, ...]
    tasks: tuple[str, ...]
    model_vecs: np.ndarray
    model_bias: np.ndarray
    task_vecs: np.ndarray
    task_bias: np.ndarray
    prior_vec: np.ndarray
    datasets: tuple[str, ...]
    dataset_priors: np.ndarray
    source_datasets: np.ndarray
    config: SpaceConfig
    validation: tuple[tuple[SpaceConfig, float], ...] = ()
    task_encoder: FeatureEncoder = FeatureEncoder()
    metadata_map: RidgeMap | None = None
    proxy_map: RidgeMap | None = None
    source_profiles: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0)))
    model_sources: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=int))

    @property
    def dim(self) -> int:
        return self.model_vecs.shape[1]

    def scores(self, task_vec: np.ndarray) -> np.ndarray:
        """``scores[M]`` of every model for a task with vector ``task_vec[D]``."""
        return self.model_vecs @ np.asarray(task_vec, dtype=np.float64) + self.model_bias

    def affinity(self, task: str | None) -> np.ndarray:
        """``affinity[M]`` of each model's source dataset to the task named ``task``
        (:func:`source_affinity`); zeros when the name is no model's source dataset."""
        name = normalise_names([task])[0] if task is not None else ""
        if name not in self.datasets or self.model_sources.size == 0 or self.source_profiles.size == 0:
            return np.zeros(len(self.models))
        return source_affinity(self.source_profiles, self.model_sources, self.datasets.index(name))

    def task_scores(self, task_vec: np.ndarray, task: str | None = None) -> np.ndarray:
        """``scores[M]`` for a task: :meth:`scores`, plus ``config.affinity_weight`` x
        :meth:`affinity` (the scores then standardised first) when ``task`` is a source dataset."""
        scores = self.scores(task_vec)
        affinity = self.affinity(task) if self.config.affinity_weight > 0 else np.zeros(0)
        if not np.any(affinity):
            return scores
        spread = scores.std()
        return (scores - scores.mean()) / (spread if spread > 1e-12 else 1.0) + self.config.affinity_weight * affinity

    def engine_model_vectors(self) -> np.ndarray:
        """``[M, D + 1 + N]``: model vectors for the batch engine, ``[model_vecs, model_bias,
        one-hot source dataset]``, so that :meth:`task_scores` is one dot product (with
        :meth:`engine_task_vector`)."""
        sources = np.zeros((len(self.models), len(self.datasets)))
        if self.model_sources.size:
            has = self.model_sources >= 0
            sources[np.flatnonzero(has), self.model_sources[has]] = 1.0
        return np.concatenate([self.model_vecs, self.model_bias[:, None], sources], axis=1)

    def engine_task_vector(self, task_vec: np.ndarray, task: str | None = None) -> tuple[np.ndarray, float]:
        """``(vec[D + 1 + N], bias)`` with ``engine_model_vectors() @ vec + bias ==
        task_scores(task_vec, task)``: the standardisation and the affinity term of
        :meth:`task_scores` are affine in the dot product and a function of each model's source."""
        task_vec = np.asarray(task_vec, dtype=np.float64)
        per_source = np.zeros(len(self.datasets))
        affinity = self.affinity(task) if self.config.affinity_weight > 0 else np.zeros(0)
        if not np.any(affinity):
            return np.concatenate([task_vec, [1.0], per_source]), 0.0
        scores = self.scores(task_vec)
        spread = scores.std()
        spread = spread if spread > 1e-12 else 1.0
        name = normalise_names([task])[0]
        per_source = self.config.affinity_weight * source_affinity(
            self.source_profiles, np.arange(len(self.datasets)), self.datasets.index(name))
        return np.concatenate([task_vec / spread, [1.0 / spread], per_source]), -scores.mean() / spread

    def prior_task_vector(self, task: str | None = None, metadata: Mapping[str, Any] | None = None,
                          proxy: np.ndarray | None = None) -> np.ndarray:
        """``v[D]``: a new task's vector before any probe.

        From the proxy embedding when given and a proxy map is attached, else from task metadata
        when a metadata map was fitted and ``metadata`` has any of its columns, else the mean task
        vector; then, when ``task`` names a dataset some models were pre-trained on, its dataset
        block is the tied dataset embedding.
        """
        if proxy is not None:
            if self.proxy_map is None:
                raise ValueError("proxy: this space has no proxy map (fit one with with_proxy_map)")
            proxy = np.asarray(proxy, dtype=np.float64)
            if proxy.shape != (self.proxy_map.width,) or not np.all(np.isfinite(proxy)):
                raise ValueError(f"proxy: expected a finite vector of width {self.proxy_map.width}, got shape "
                                 f"{proxy.shape}")
            vec = self.proxy_map(proxy)
        elif self.metadata_map is not None and metadata and any(c[0] in metadata for c in self.task_encoder.columns):
            vec = self.metadata_map(self.task_encoder.transform_one(metadata))
        else:
            vec = self.prior_vec.copy()
        if task is not None:
            name = normalise_names([task])[0]
            if name in self.datasets and self.source_datasets[self.datasets.index(name)]:
                tied = self.dataset_priors[self.datasets.index(name)]
                data_block = np.arange(self.dim) >= self.config.d
                vec = np.where(data_block, tied, vec)
        return vec

    def with_proxy_map(self, proxies: np.ndarray, l2: float = 1.0) -> "TransferSpace":
        """The space with a :class:`~fennec_jax.core.ridge.RidgeMap` fitted from ``proxies[T, P]`` (one row per history
        task, in ``tasks`` order) to the fitted task vectors."""
        proxies = np.asarray(proxies, dtype=np.float64)
        if proxies.ndim != 2 or proxies.shape[0] != len(self.tasks):
            raise ValueError(f"proxies: expected shape [T={len(self.tasks)}, P], got {proxies.shape}")
        return dataclasses.replace(self, proxy_map=RidgeMap.fit(proxies, self.task_vecs, l2))


def probe_task_vector(model_vecs: np.ndarray, model_bias: np.ndarray, probe_models: np.ndarray,
                      probe_scores: np.ndarray, prior: np.ndarray, l2: float) -> np.ndarray:
    """``v[D]``: a task's vector from the true scores of k probe models, ridge toward ``prior``.

    The probe scores may be in any units. They are centred and scaled to the spread the prior
    predicts for the probe models (``std(model_vecs[P] @ prior + model_bias[P])``, at least 0.3
    z), giving ``y[k]``; then, with an unpenalised offset ``c``,

        v = argmin_v min_c ||y - c - model_bias[P] - model_vecs[P] @ v||^2 + l2 ||v - prior||^2
          = (Xc' Xc + l2 I)^-1 (Xc' (y - model_bias[P])_c + l2 prior),  Xc = centred model_vecs[P].

    With k = 0 or 1 (nothing to fit beyond the offset) or equal probe scores it is the prior.

    Raises:
      ValueError: a probe index out of range or repeated, non-finite probe scores, mismatched
        lengths, ``l2 <= 0``, or a prior of the wrong width.
    """
    model_vecs = np.asarray(model_vecs, dtype=np.float64)
    num_models, dim = model_vecs.shape
    probe_models = np.asarray(probe_models).reshape(-1)
    probe_scores = np.asarray(probe_scores, dtype=np.float64).reshape(-1)
    prior = np.asarray(prior, dtype=np.float64)
    if probe_models.size and not np.issubdtype(probe_models.dtype, np.integer):
        raise ValueError(f"probe_models: expected integer model indices, got dtype {probe_models.dtype}")
    if probe_models.shape != probe_scores.shape:
        raise ValueError(f"probe_models has {probe_models.size} entries but probe_scores has {probe_scores.size}")
    if np.any((probe_models < 0) | (probe_models >= num_models)):
        raise ValueError(f"probe_models: indices must lie in [0, {num_models}), got {probe_models.tolist()}")
    if len(np.unique(probe_models)) != probe_models.size:
        raise ValueError(f"probe_models: repeated model indices {probe_models.tolist()}")
    if not np.all(np.isfinite(probe_scores)):
        raise ValueError("probe_scores: must be finite")
    if prior.shape != (dim,):
        raise ValueError(f"prior: expected shape ({dim},), got {prior.shape}")
    if not (math.isfinite(l2) and l2 > 0):
        raise ValueError(f"l2: must be finite and > 0, got {l2!r}")
    spread = probe_scores.std() if probe_models.size else 0.0
    if probe_models.size < 2 or spread <= 1e-12 * max(1.0, np.abs(probe_scores).max()):
        return prior
    vecs, bias = model_vecs[probe_models], np.asarray(model_bias, dtype=np.float64)[probe_models]
    scale = max(float(np.std(vecs @ prior + bias)), 0.3)
    y = (probe_scores - probe_scores.mean()) / spread * scale
    x = vecs - vecs.mean(0)
    r = y - (bias - bias.mean())
    return ridge_solve(x, r, l2, prior)


class _FitArrays(NamedTuple):
    """One fit's arrays; D = config.d + config.d_data, the dataset block last."""

    model_vecs: np.ndarray  # [M, D]
    task_vecs: np.ndarray  # [T, D]
    model_bias: np.ndarray  # [M]
    task_bias: np.ndarray  # [T]
    dataset_vecs: np.ndarray  # [N, D], zero outside the dataset block


def _space_from_fit(design: _Design, history: Records, config: SpaceConfig, fit: _FitArrays, mask: np.ndarray,
                    validation=()) -> TransferSpace:
    model_vecs, task_vecs, model_bias, task_bias, dataset_vecs = (np.ascontiguousarray(a) for a in fit)
    mask = np.asarray(mask, dtype=bool)
    fitted = mask.any(1)  # tasks with observations under this fit's mask
    prior_vec = task_vecs[fitted].mean(0) if fitted.any() else np.zeros(task_vecs.shape[1])
    data_block = np.arange(task_vecs.shape[1]) >= config.d
    dataset_priors = np.where(data_block, dataset_vecs, prior_vec)
    metadata_map = None
    if design.task_encoder.width and fitted.sum() >= 2:
        metadata_map = RidgeMap.fit(design.task_side[fitted], task_vecs[fitted])
    return TransferSpace(
        models=history.models,
        tasks=history.tasks,
        model_vecs=model_vecs,
        model_bias=model_bias,
        task_vecs=task_vecs,
        task_bias=task_bias,
        prior_vec=prior_vec,
        datasets=design.datasets,
        dataset_priors=dataset_priors,
        source_datasets=design.source.sum(0) > 0,
        config=config,
        validation=tuple(validation),
        task_encoder=design.task_encoder,
        metadata_map=metadata_map,
        source_profiles=source_profiles(design.z, mask, design.family, design.source),
        model_sources=(design.source * np.arange(1, design.source.shape[1] + 1)).sum(1).astype(int) - 1,
    )


def _run_fits(design: _Design, configs: Sequence[SpaceConfig], masks: np.ndarray, seed: int):
    """Fits every config under every mask, all in one batch: ``fits[g][f]``, trimmed to config g's dims."""
    first = configs[0]
    d, d_data = max(c.d for c in configs), max(c.d_data for c in configs)
    g, f = len(configs), masks.shape[0]
    hyper = np.array([[c.l2_free, c.l2_side, c.l2_data, c.rank_weight] for c in configs], np.float32)
    dims = np.array([np.arange(d) < c.d for c in configs], np.float32)
    data_dims = np.array([np.arange(d_data) < c.d_data for c in configs], np.float32)
    data = {name: getattr(design, name)
            for name in ("target", "order", "model_side", "bias_side", "task_side", "source", "task_dataset")}
    out = _fit_batch(
        data, np.tile(masks, (g, 1, 1)), np.repeat(hyper, f, 0), np.repeat(dims, f, 0),
        np.repeat(data_dims, f, 0), jax.random.PRNGKey(seed),
        steps=first.steps, learning_rate=first.learning_rate, nonneg=first.nonneg,
        ranking=any(c.rank_weight > 0 for c in configs))
    model_vecs, task_vecs, model_bias, task_bias, dataset_vecs = (np.asarray(a, np.float64) for a in out)
    fits = []
    for i, config in enumerate(configs):
        keep = np.concatenate([np.arange(d) < config.d, np.arange(d_data) < config.d_data])
        fits.append([_FitArrays(model_vecs[b][:, keep], task_vecs[b][:, keep], model_bias[b], task_bias[b],
                                dataset_vecs[b][:, keep]) for b in range(i * f, (i + 1) * f)])
    return fits


def _validation_folds(mask: np.ndarray, num_folds: int, min_models: int, seed: int,
                      preferred: np.ndarray) -> np.ndarray:
    """Indices of history tasks held out for validation (those with enough observed models),
    drawn at random, ``preferred[T]`` ones first (tasks named after a source dataset: only
    there can the affinity weight be validated)."""
    eligible = np.flatnonzero(mask.sum(1) >= min_models)
    if mask.shape[0] < 3 or eligible.size == 0:
        return np.zeros(0, dtype=int)
    rng = np.random.default_rng([seed, 7])
    folds = []
    for group in (eligible[preferred[eligible]], eligible[~preferred[eligible]]):
        size = min(num_folds - len(folds), group.size)
        if size > 0:
            folds.extend(rng.choice(group, size=size, replace=False).tolist())
    return np.sort(np.asarray(folds, dtype=int))


def fit_space(history: Records, configs: SpaceConfig | Sequence[SpaceConfig] = DEFAULT_GRID, seed: int = 0, *,
              side_info: bool = True, num_folds: int = 5, probes: Sequence[int] = (0, 3, 5),
              draws: int = 4, validation_models: int = 2048,
              model_features: np.ndarray | None = None) -> TransferSpace:
    """Fits a transfer space to ``history``, choosing hyper-parameters by validation.

    Args:
      history: the records (never the task to be ranked).
      configs: one config, or a grid; all must share ``steps``, ``learning_rate``, ``nonneg``.
      seed: initialisation and validation draws; the result is a pure function of the inputs.
      side_info: use model/task metadata and tied dataset embeddings.
      num_folds: history tasks held out in turn for validation (with a grid).
      probes: values of k scored on each held-out task (k probe models drawn at random).
      draws: probe draws per (fold, k > 0).
      validation_models: with more models than this, validation runs on a random subset of
        this many models (the chosen config is then fitted on all of them).
      model_features: optional ``[M, E]`` numeric features of the history's models (e.g.
        archi2vec embeddings of their architecture graphs), standardised and added to the
        metadata features of the model vectors and biases. A model's vector is then a learned
        map of its features plus its penalised free residual, so a model without records
        (all its cells masked) is placed by its features alone. Needs ``side_info``.

    With a grid, each held-out task is hidden entirely (all its cells), its vector is obtained
    as a new task's would be (prior, then probes), and the configuration with the best mean
    weighted tau over folds and ``probes`` is refitted on the full history.
    """
    configs = [configs] if isinstance(configs, SpaceConfig) else list(configs)
    if not configs:
        raise ValueError("configs: expected at least one SpaceConfig")
    statics = {(c.steps, c.learning_rate, c.nonneg) for c in configs}
    if len(statics) != 1:
        raise ValueError(f"configs: all must share steps, learning_rate and nonneg, got {sorted(statics)}")
    design = _design(history, configs[0].nonneg, side_info, model_features)
    if len(configs) == 1:
        return _fit_final(design, history, configs[0], seed)
    subset = history.num_models > validation_models
    if subset:
        keep = np.sort(np.random.default_rng([seed, 5]).choice(history.num_models, validation_models, replace=False))
        valid_history = history.select_models(keep)
        valid_design = _design(valid_history, configs[0].nonneg, side_info,
                               None if model_features is None else np.asarray(model_features)[keep])
    else:
        valid_history, valid_design = history, design
    is_source = valid_design.task_dataset @ valid_design.source.any(0).astype(np.float32) > 0
    folds = _validation_folds(valid_design.mask, num_folds, max(probes) + 3, seed, is_source)
    if folds.size == 0:
        return _fit_final(design, history, configs[0], seed)
    # masks[0]: the full history (the final fit when no subset is used); masks[f]: fold f's task hidden.
    masks = np.repeat(valid_design.mask[None], 1 + folds.size, 0)
    masks[np.arange(1, 1 + folds.size), folds] = False
    fit_keys = list(dict.fromkeys(c.fit_key() for c in configs))  # configs differing at score time share a fit
    fit_configs = [next(c for c in configs if c.fit_key() == key) for key in fit_keys]
    fits = _run_fits(valid_design, fit_configs, masks, seed)
    scores = _validate(valid_design, valid_history, configs, fit_keys, fits, masks, folds, probes, draws, seed)
    ranking = tuple(sorted(zip(configs, scores), key=lambda cs: -cs[1]))
    best = ranking[0][0]
    if subset:
        return _fit_final(design, history, best, seed, ranking)
    g = fit_keys.index(best.fit_key())
    return _space_from_fit(design, history, best, fits[g][0], design.mask, ranking)


def _fit_final(design: _Design, history: Records, config: SpaceConfig, seed: int, validation=()) -> TransferSpace:
    fits = _run_fits(design, [config], design.mask[None], seed)
    return _space_from_fit(design, history, config, fits[0][0], design.mask, validation)


def _validate(design, history, configs, fit_keys, fits, masks, folds, probes, draws, seed) -> list[float]:
    """Mean weighted tau per config over held-out folds and probe counts (each k weighs the
    same: a k > 0 draw weighs 1 / draws), scored as a new task is (:mod:`fennec_jax.eval.protocol`)."""
    rng = np.random.default_rng([seed, 11])
    trues, preds, valids, groups, weights = [], [], [], [], []
    for f, held in enumerate(folds, start=1):
        observed = np.flatnonzero(design.mask[held])
        true = design.target[held]
        metadata = {name: column[held] for name, column in history.task_meta.items()}
        fold_draws = validation_draws(rng, observed, probes, draws)
        for c, config in enumerate(configs):
            g = fit_keys.index(config.fit_key())
            space = _space_from_fit(design, history, config, fits[g][f], masks[f])
            prior = space.prior_task_vector(task=history.tasks[held], metadata=metadata)
            for k, draw in fold_draws:
                vec = probe_task_vector(space.model_vecs, space.model_bias, draw, true[draw], prior, config.probe_l2)
                valid = design.mask[held].copy()
                valid[draw] = False
                trues.append(true)
                preds.append(space.task_scores(vec, history.tasks[held]))
                valids.append(valid)
                groups.append(c)
                weights.append(1.0 if k == 0 else 1.0 / draws)
    return validation_tau(trues, preds, valids, groups, weights).tolist()


# ----------------------------------------------------------------------------- ranking methods


PRESETS = {
    "grid": (DEFAULT_GRID, True),  # hyper-parameters chosen by validation inside the history
    "nmf": ((NMF_CONFIG,), False),  # Fennec's published choice: NMF, d = 5, no side information
    "mf": ((MF_CONFIG,), False),  # plain low-rank factorisation with biases (d = 4), no side information
}


@register("fennec")
@dataclasses.dataclass(frozen=True)
class Fennec(MethodBase):
    """Transfer-space ranking: fit the space on the history, then score a new task from its
    prior vector (tied dataset embedding, metadata or proxy) refined by its probes.

    ``evidence.metadata`` may carry ``'task'`` (the new task's name, matched against the models'
    source datasets) and task metadata columns; ``evidence.proxy`` a proxy embedding (used when
    the history carries its tasks' proxy embeddings, ``history.task_side["proxy"]``, from
    which a proxy map is fitted; see :meth:`TransferSpace.with_proxy_map`).

    Configuration: ``preset`` ('grid': the validated grid; 'nmf': Fennec's published NMF,
    d = 5; 'mf': low-rank d = 4, fixed), ``d`` / ``steps`` override every config of the preset,
    ``side_info`` (default: the preset's), ``drop_model_meta`` (metadata columns left out),
    ``proxy`` (use the history's proxy embeddings when it has them).
    ``model_features`` (code only; opt-in) maps the history's model names to
    ``features[M, E]`` (e.g. `archi2vec.GraphFeatures`: embeddings of their architecture
    graphs), passed to :func:`fit_space`; models without records are then placed by them.
    ``configs`` (code only) replaces the preset's configs.
    """

    preset: str = "grid"
    d: int | None = None
    steps: int | None = None
    side_info: bool | None = None
    drop_model_meta: tuple[str, ...] = ()
    proxy: bool = True
    name: str = "fennec"
    model_features: Callable[[Sequence[str]], np.ndarray] | None = None
    configs: tuple[SpaceConfig, ...] | None = None

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"fennec: unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}")

    @property
    def space_configs(self) -> tuple[SpaceConfig, ...]:
        configs = self.configs if self.configs is not None else PRESETS[self.preset][0]
        overrides = {k: v for k, v in (("d", self.d), ("steps", self.steps)) if v is not None}
        return tuple(dataclasses.replace(c, **overrides) for c in configs)

    def fit(self, history: Records, seed: int = 0) -> TransferSpace:
        if self.drop_model_meta:
            history = dataclasses.replace(history, model_meta={k: v for k, v in history.model_meta.items()
                                                               if k not in self.drop_model_meta})
        features = None if self.model_features is None else self.model_features(history.models)
        side_info = PRESETS[self.preset][1] if self.side_info is None else self.side_info
        space = fit_space(history, self.space_configs, seed, side_info=side_info, model_features=features)
        if self.proxy and "proxy" in history.task_side:
            space = space.with_proxy_map(history.task_side["proxy"])
        return space

    def _space_vector(self, state: TransferSpace, evidence: TaskEvidence) -> tuple[np.ndarray, str | None]:
        """The new task's vector in the space (prior refined by probes), and its name."""
        metadata = dict(evidence.metadata or {})
        proxy = evidence.proxy if state.proxy_map is not None else None  # no map: ignored, like other methods
        prior = state.prior_task_vector(task=metadata.get("task"), metadata=metadata, proxy=proxy)
        vec = probe_task_vector(state.model_vecs, state.model_bias, evidence.probe_models, evidence.probe_scores,
                                prior, state.config.probe_l2)
        return vec, metadata.get("task")

    def score(self, state: TransferSpace, evidence: TaskEvidence) -> np.ndarray:
        return state.task_scores(*self._space_vector(state, evidence))

    def task_posterior(self, state: TransferSpace, evidence: TaskEvidence) -> LinearPosterior:
        """The probe ridge read as a Gaussian posterior (:mod:`fennec_jax.methods.suggest`): mean
        the vector :meth:`score` uses, precision ``Xc' Xc + probe_l2 I`` over the probes, prior
        variance per dim the mean variance of the history task vectors (so noise = ``probe_l2``
        times it; 0 for a space without task-vector dims); scores in :meth:`TransferSpace.scores`
        units, with :meth:`TransferSpace.task_scores`' affinity term in those units (same order)."""
        vec, task = self._space_vector(state, evidence)
        raw = state.scores(vec)
        affinity = state.affinity(task) if state.config.affinity_weight > 0 else np.zeros_like(raw)
        spread = raw.std()
        spread = spread if spread > 1e-12 else 1.0
        l2 = state.config.probe_l2
        noise = l2 * float(state.task_vecs.var(0).mean()) if state.dim else 0.0
        return LinearPosterior(raw + state.config.affinity_weight * spread * affinity, state.model_vecs,
                               evidence.probe_models, probe_precision(state.model_vecs, evidence.probe_models, l2),
                               noise)

    def complete(self, state: TransferSpace) -> np.ndarray:
        """``scores[T, M]`` of every model on every history task, from the fitted task vectors."""
        return state.task_vecs @ state.model_vecs.T + state.model_bias

    def model_vectors(self, state: TransferSpace) -> tuple[np.ndarray, np.ndarray]:
        """For the batch engine: ``(model_vecs[M, D'], model_bias[M])``."""
        vecs = state.engine_model_vectors()
        return vecs, np.zeros(vecs.shape[0])

    def task_vector(self, state: TransferSpace, evidence: TaskEvidence) -> tuple[np.ndarray, float]:
        """For the batch engine: ``(task_vec[D'], task_bias)``; the engine's score equals :meth:`score`."""
        return state.engine_task_vector(*self._space_vector(state, evidence))

    def save(self, state: TransferSpace, path: str, *, overwrite: bool = True) -> None:
        save_space(path, state, overwrite=overwrite)

    def restore(self, path: str) -> TransferSpace:
        return restore_space(path)


# ----------------------------------------------------------------------------- checkpoints

FORMAT = "fennec_jax.transfer_space/2"
_ARRAYS = ("model_vecs", "model_bias", "task_vecs", "task_bias", "prior_vec", "dataset_priors", "source_datasets",
           "source_profiles", "model_sources")
_MAPS = ("metadata_map", "proxy_map")
_MAP_ARRAYS = ("weights", "bias", "l2")


def save_space(path: str, space: TransferSpace, *, overwrite: bool = False) -> None:
    """Writes ``space`` to the folder ``path`` (atomically; an existing one only if ``overwrite``)."""
    meta = {
        "models": list(space.models),
        "tasks": list(space.tasks),
        "datasets": list(space.datasets),
        "config": dataclasses.asdict(space.config),
        "validation": [[dataclasses.asdict(c), float(v)] for c, v in space.validation],
        "task_encoder": space.task_encoder.to_json(),
        "maps": [name for name in _MAPS if getattr(space, name) is not None],
    }
    save_arrays(path, FORMAT, meta, _space_arrays(space), overwrite=overwrite)


def restore_space(path: str) -> TransferSpace:
    """The space saved at ``path`` by :func:`save_space`.

    Raises:
      CheckpointError: missing or unreadable (truncated, corrupted) checkpoint, another format,
        another ``fennec_jax`` version, or arrays that do not match their checksum.
    """
    meta, arrays = restore_arrays(path, FORMAT, "transfer-space")
    try:
        return _space_from_parts(meta, arrays)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{os.path.abspath(path)}: inconsistent checkpoint ({type(e).__name__}: {e})") from None


def _space_arrays(space: TransferSpace) -> dict[str, np.ndarray]:
    arrays = {name: np.ascontiguousarray(getattr(space, name)) for name in _ARRAYS}
    for name in _MAPS:
        fitted = getattr(space, name)
        if fitted is not None:
            arrays.update({f"{name}.{part}": np.ascontiguousarray(getattr(fitted, part)) for part in _MAP_ARRAYS})
    return arrays


def _space_from_parts(meta: dict, arrays: dict[str, np.ndarray]) -> TransferSpace:
    maps = {name: RidgeMap(*(arrays[f"{name}.{part}"] for part in _MAP_ARRAYS)) if name in meta["maps"] else None
            for name in _MAPS}
    return TransferSpace(
        models=tuple(meta["models"]),
        tasks=tuple(meta["tasks"]),
        datasets=tuple(meta["datasets"]),
        config=SpaceConfig(**meta["config"]),
        validation=tuple((SpaceConfig(**c), float(v)) for c, v in meta["validation"]),
        task_encoder=FeatureEncoder.from_json(meta["task_encoder"]),
        **{name: arrays[name] for name in _ARRAYS},
        **maps,
    )
