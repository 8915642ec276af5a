"""Model Spider: learned model tokens, task tokens from evidence, listwise training (issue #7).

Model Spider (Zhang et al., NeurIPS 2023) learns one token per pre-trained model and builds a
task's token from features of the task; a fitness head scores (model, task) pairs and is
trained with a listwise ranking loss over historical tasks. Here:

* **Model tokens** ``tokens[M, d]``: a learned free vector per model, plus the tied embedding
  of its source dataset (model metadata ``source``), plus a linear map of its other metadata
  (:class:`~fennec_jax.methods.fennec.FeatureEncoder`), plus optionally a linear map of a
  given model-vector table (e.g. archi2vec vectors; :class:`Spider` ``model_table``), which is
  what an unseen model's token is built from (:func:`add_models`).
* **Task token parts** ``parts[J, d]`` of one task, each present or masked:
  a learned "unknown task" token (always present); a metadata part (the tied dataset
  embedding of the task's name when some models were pre-trained on that dataset, plus
  encoded task metadata columns; hidden for a random half of the tasks at each training step,
  so that tasks without metadata are trained too); proxy parts (``evidence.proxy[P]`` or
  per-class means ``[C, P]``, each projected to width d; needs ``task_proxies`` at fit
  time); one part per probe model (its token, and its token times the probe's z-scored
  score). Probe scores enter only as z-scores within the
  task, so any affine change of their units gives the same ranking.
* **Fitness head**: a learned query attends (multi-head) over the task's parts, then
  LayerNorm and a Linear layer give the task vector ``h[d]``; a model's score is
  ``tokens[m] @ h + bias[m]``. The original puts the model token into the attended sequence;
  here it is the read-out instead, so a task's scores are one dot product per model: the
  first stage is computed by the batch engine (:func:`fennec_jax.ranking.engine.score_matrix`) and
  scales to millions of models.
* **Probe adaptation** (``config.adapt_probes``): with k >= 2 probes, ``h`` is then moved by
  ridge regression toward it so that the probes' scores fit their z-scores (a K x K solve;
  the ridge strength and the z-score gain are learned parameters, trained through the solve).
* **Re-ranking**: the top-R models of the first stage become extra parts (their tokens and
  first-stage scores, z-scored among the R), the head is applied again and only those R are
  re-ordered; they stay ranked above every other model, whose order is unchanged. R is
  chosen by validation on held-out history tasks (R = 0: no re-ranking).

Training (:func:`fit_spider`): Flax + optax, full batch over all history tasks under ``jit``
(``lax.scan`` over Adam steps). Every step each task draws a number of probes k from
``config.train_probes`` and k probe models at random among its observed ones; the loss is
ListMLE (Plackett-Luce) of the first-stage scores over the task's other observed models, plus
ListMLE of the re-ranked scores over the top-R first-stage candidates. Only the order of each
task's observed scores is used, so rank-only tasks train like any other, and unobserved
cells are masked. The validation fit (history minus a random ``valid_fraction`` of its
tasks) and the final fit run as one vmapped program.

Save/restore: :func:`save_spider` / :func:`restore_spider` (orbax, checksummed like
:mod:`fennec_jax.core.checkpoint`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from jax import lax

from fennec_jax.ranking import engine
from fennec_jax.eval.protocol import validation_draws, validation_tau
from fennec_jax.core.checkpoint import CheckpointError, restore_arrays, save_arrays
from fennec_jax.core.encoding import FeatureEncoder, normalise_names, one_hot
from fennec_jax.core.evidence import TaskEvidence
from fennec_jax.core.records import Records, standardize
from fennec_jax.core.registry import typed_config
from fennec_jax.methods.base import MethodBase, register
from fennec_jax.methods.fennec import listmle

__all__ = [
    "SpiderConfig",
    "SpiderState",
    "Spider",
    "listmle_loss",
    "fit_spider",
    "task_vectors",
    "score_tasks",
    "add_models",
    "save_spider",
    "restore_spider",
    "FORMAT",
]

FORMAT = "fennec_jax.spider/2"


@dataclasses.dataclass(frozen=True)
class SpiderConfig:
    """Hyper-parameters.

    Attributes:
      d: token width.
      heads: attention heads (``d`` must be divisible by it).
      steps: Adam steps (full batch).
      learning_rate: Adam learning rate.
      l2: L2 weight on all parameters.
      train_probes: numbers of probes k drawn (uniformly) per task and step in training.
      rerank_choices: candidate values of R (top candidates re-ranked), chosen by validation;
        the largest is trained.
      valid_fraction: fraction of history tasks held out to choose R (at least one).
      valid_probes: values of k scored on the held-out tasks.
      valid_draws: probe draws per (held-out task, k > 0).
      adapt_probes: after the head, move the task vector by ridge regression so that the probe
        models' scores fit the probes' z-scores (strength and scale learned with the rest).
    """

    d: int = 16
    heads: int = 2
    steps: int = 400
    learning_rate: float = 0.02
    l2: float = 1e-4
    train_probes: tuple[int, ...] = (0, 1, 3, 5)
    rerank_choices: tuple[int, ...] = (0, 3, 5)
    valid_fraction: float = 0.25
    valid_probes: tuple[int, ...] = (0, 1, 3)
    valid_draws: int = 3
    adapt_probes: bool = True

    def __post_init__(self):
        for name in ("d", "heads", "steps", "valid_draws"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"SpiderConfig.{name} must be a positive integer, got {value!r}")
        if self.d % self.heads:
            raise ValueError(f"SpiderConfig: d = {self.d} must be divisible by heads = {self.heads}")
        for name in ("train_probes", "rerank_choices", "valid_probes"):
            values = getattr(self, name)
            if not values or any(int(v) != v or v < 0 for v in values):
                raise ValueError(f"SpiderConfig.{name} must be non-empty non-negative integers, got {values!r}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"SpiderConfig.learning_rate must be finite and > 0, got {self.learning_rate!r}")
        if not (math.isfinite(self.l2) and self.l2 >= 0):
            raise ValueError(f"SpiderConfig.l2 must be finite and >= 0, got {self.l2!r}")
        if not 0 < self.valid_fraction < 1:
            raise ValueError(f"SpiderConfig.valid_fraction must lie in (0, 1), got {self.valid_fraction!r}")


def listmle_loss(pred: np.ndarray, true: np.ndarray, mask: np.ndarray | None = None) -> jnp.ndarray:
    """Mean over tasks of the ListMLE (Plackett-Luce) negative log-likelihood.

    For one task with models sorted by decreasing ``true`` (over ``mask``),
    ``-sum_i [pred_(i) - log sum_{j >= i} exp(pred_(j))]``. ``pred[T, M]``, ``true[T, M]``,
    ``mask[T, M]`` (default all); only the order of ``true`` matters.
    """
    pred, true = jnp.asarray(pred, jnp.float32), jnp.asarray(true, jnp.float32)
    mask = jnp.ones(pred.shape, bool) if mask is None else jnp.asarray(mask, bool)
    if pred.ndim != 2 or pred.shape != true.shape or mask.shape != pred.shape:
        raise ValueError(f"listmle_loss: pred, true, mask must share one [T, M] shape, got "
                         f"{pred.shape}, {true.shape}, {mask.shape}")
    return listmle(pred, _order(true, mask), mask) / pred.shape[0]


def _order(true, mask):
    """``order[T, M]``: models by decreasing ``true``, observed first, ties in index order."""
    return jnp.argsort(jnp.where(mask, -true, jnp.inf), axis=1, stable=True).astype(jnp.int32)


# ----------------------------------------------------------------------------- the network


class _SpiderNet(nn.Module):
    """Model tokens and the task encoder (parts -> attention -> LayerNorm -> Linear)."""

    num_models: int
    num_datasets: int
    model_side: int  # width of encoded model metadata
    table_width: int  # width of the given model-vector table (0: none)
    task_side: int  # width of encoded task metadata
    proxy_width: int  # width of proxy features (0: none)
    d: int
    heads: int
    adapt_probes: bool

    def setup(self):
        small = nn.initializers.normal(0.1)
        self.model_free = self.param("model_free", small, (self.num_models, self.d))
        self.model_bias = self.param("model_bias", nn.initializers.zeros, (self.num_models,))
        if self.num_datasets:
            self.dataset = self.param("dataset", small, (self.num_datasets, self.d))
        if self.model_side:
            self.model_map = nn.Dense(self.d, use_bias=False)
        if self.table_width:
            self.table_map = nn.Dense(self.d, use_bias=False)
        if self.proxy_width:
            self.proxy_part = nn.Dense(self.d)
        if self.num_datasets or self.task_side:
            self.meta_part = nn.Dense(self.d)
        self.unknown = self.param("unknown", small, (self.d,))
        self.query = self.param("query", small, (self.d,))
        self.probe_part = nn.Dense(self.d)
        self.candidate_part = nn.Dense(self.d)
        self.attention = nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=self.d,
                                                         out_features=self.d)
        self.norm = nn.LayerNorm()
        self.head = nn.Dense(self.d)
        if self.adapt_probes:
            self.log_gain = self.param("log_gain", nn.initializers.zeros, (1,))
            self.log_l2 = self.param("log_l2", nn.initializers.zeros, (1,))

    def model_tokens(self, side):
        """``(tokens[M, d], bias[M])`` from ``side`` = {source[M, N], model_side[M, Pm], table[M, F]}."""
        tokens = self.model_free
        if self.num_datasets:
            tokens = tokens + side["source"] @ self.dataset
        if self.model_side:
            tokens = tokens + self.model_map(side["model_side"])
        if self.table_width:
            tokens = tokens + self.table_map(side["table"])
        return tokens, self.model_bias

    def init_all(self, side, batch):
        """Touches every parameter (for ``init``)."""
        return self(self.model_tokens(side)[0], batch)

    def __call__(self, tokens, batch):
        """``h[B, d]``, the task vectors of a batch of tasks (see :func:`_empty_batch` for keys)."""
        b = batch["probe_idx"].shape[0]
        parts = [jnp.broadcast_to(self.unknown, (b, 1, self.d))]
        valid = [jnp.ones((b, 1), bool)]
        if self.num_datasets or self.task_side:
            names = batch["task_dataset"] @ self.dataset if self.num_datasets else jnp.zeros((b, 0))
            parts.append(self.meta_part(jnp.concatenate([names, batch["task_side"]], 1))[:, None])
            valid.append(batch["meta_ok"][:, None])
        if self.proxy_width:
            parts.append(self.proxy_part(batch["proxy"]))
            valid.append(batch["proxy_ok"])
        probe = tokens[batch["probe_idx"]]  # [B, K, d]
        z = batch["probe_z"][..., None]
        parts.append(self.probe_part(jnp.concatenate([probe, probe * z, z], -1)))
        valid.append(batch["probe_ok"])
        cand = tokens[batch["cand_idx"]]  # [B, R, d]
        s = batch["cand_s"][..., None]
        parts.append(self.candidate_part(jnp.concatenate([cand, cand * s, s], -1)))
        valid.append(batch["cand_ok"])
        parts, valid = jnp.concatenate(parts, 1), jnp.concatenate(valid, 1)
        query = jnp.broadcast_to(self.query, (b, 1, self.d))
        attended = self.attention(query, parts, mask=valid[:, None, None, :])
        h = self.head(self.norm(query + attended)[:, 0])
        if not self.adapt_probes:
            return h
        return _adapt_to_probes(h, tokens[batch["probe_idx"]], self.model_bias[batch["probe_idx"]],
                                batch["probe_z"], batch["probe_ok"], jnp.exp(self.log_gain[0]), jnp.exp(self.log_l2[0]))


def _adapt_to_probes(h, probe_tokens, probe_bias, probe_z, probe_ok, gain, l2):
    """``h'[B, d]``: the head's task vectors ``h[B, d]`` moved, by ridge regression toward ``h``,
    so that the probes' first-stage scores fit their observed z-scores.

    With ``x[B, K, d]`` the probe tokens centred over the probes of each task (masked by
    ``probe_ok[B, K]``) and targets ``y = gain * probe_z - bias`` (an
    unpenalised offset absorbs the probes' mean, so ``y`` is centred too),
    ``h' = argmin_v ||y - x v||^2 + l2 ||v - h||^2 = h + x^T (x x^T + l2 I_K)^-1 (y - x h)``
    (the K x K form: K probes, K << d is the usual case). With fewer than 2 probes ``x`` and
    ``y`` are 0 and ``h' = h``."""
    w = probe_ok.astype(h.dtype)
    n = jnp.maximum(w.sum(1, keepdims=True), 1.0)
    x = (probe_tokens - (probe_tokens * w[..., None]).sum(1, keepdims=True) / n[..., None]) * w[..., None]
    y = gain * probe_z - probe_bias
    y = (y - (y * w).sum(1, keepdims=True) / n) * w  # centred: the offset is not penalised
    resid = y - jnp.einsum("bkd,bd->bk", x, h)
    gram = jnp.einsum("bkd,bjd->bkj", x, x) + l2 * jnp.eye(x.shape[1], dtype=h.dtype)
    return h + jnp.einsum("bkd,bk->bd", x, jnp.linalg.solve(gram, resid[..., None])[..., 0])


def _empty_batch(b: int, widths: Mapping[str, int], k: int = 0, r: int = 0, c: int = 0) -> dict:
    """A batch of ``b`` tasks with no evidence: ``k`` probe, ``r`` candidate, ``c`` proxy slots."""
    return {
        "probe_idx": np.zeros((b, k), np.int32), "probe_z": np.zeros((b, k), np.float32),
        "probe_ok": np.zeros((b, k), bool),
        "cand_idx": np.zeros((b, r), np.int32), "cand_s": np.zeros((b, r), np.float32),
        "cand_ok": np.zeros((b, r), bool),
        "task_dataset": np.zeros((b, widths["num_datasets"]), np.float32),
        "task_side": np.zeros((b, widths["task_side"]), np.float32), "meta_ok": np.zeros(b, bool),
        "proxy": np.zeros((b, c, widths["proxy_width"]), np.float32), "proxy_ok": np.zeros((b, c), bool),
    }


def _zscore(values, ok):
    """Per-row z-scores of ``values[B, K]`` over ``ok``; 0 where fewer than 2 or no spread."""
    n = ok.sum(-1, keepdims=True)
    mean = jnp.where(ok, values, 0.0).sum(-1, keepdims=True) / jnp.maximum(n, 1)
    dev = jnp.where(ok, values - mean, 0.0)
    std = jnp.sqrt((dev**2).sum(-1, keepdims=True) / jnp.maximum(n, 1))
    good = (n >= 2) & (std > 1e-6)
    return jnp.where(ok & good, dev / jnp.where(good, std, 1.0), 0.0)


def _candidates(s1, allowed, r):
    """Top-``r`` rows of first-stage ``s1[B, M]`` among ``allowed[B, M]``: (idx, z-scored s, ok)."""
    top, idx = lax.top_k(jnp.where(allowed, s1, -jnp.inf), r)
    ok = jnp.isfinite(top)
    return idx.astype(jnp.int32), _zscore(jnp.where(ok, top, 0.0), ok), ok


def _rerank(net, params, tokens, bias, batch, s1, r):
    """``scores[B, M]``: ``s1`` with its top-``r`` re-scored by the head with candidate parts;
    they stay above all other models, whose scores are unchanged."""
    idx, cand_s, ok = _candidates(s1, jnp.ones(s1.shape, bool), r)
    h2 = net.apply(params, tokens, {**batch, "cand_idx": idx, "cand_s": cand_s, "cand_ok": ok})
    s2 = jnp.take_along_axis(h2 @ tokens.T + bias, idx, 1)
    threshold = jnp.take_along_axis(s1, idx[:, -1:], 1)
    new = threshold + 1.0 + (s2 - s2.min(1, keepdims=True))
    return jax.vmap(lambda row, i, v: row.at[i].set(v))(s1, idx, new)


# ----------------------------------------------------------------------------- design and fit


@dataclasses.dataclass(frozen=True)
class _Design:
    """The history as arrays; ``side`` holds the model inputs, ``tasks`` the task inputs."""

    target: np.ndarray  # [T, M] float32 z-scores (only their order is used)
    mask: np.ndarray  # [T, M] bool
    side: dict  # source[M, N], model_side[M, Pm], table[M, F]
    tasks: dict  # task_dataset[T, N], task_side[T, Q], meta_ok[T], proxy[T, C, P], proxy_ok[T, C]
    datasets: tuple[str, ...]
    model_encoder: FeatureEncoder
    task_encoder: FeatureEncoder


def _design(history: Records, model_table, task_proxies) -> _Design:
    if history.num_tasks == 0 or history.num_models == 0:
        raise ValueError(f"history: expected at least one task and one model, got shape {history.scores.shape}")
    m = history.num_models
    sources = normalise_names(history.model_meta.get("source", [""] * m))
    task_names = normalise_names(history.tasks)
    datasets = tuple(sorted(set(sources) - {""}))
    index = {name: i for i, name in enumerate(datasets)}
    model_encoder = FeatureEncoder.fit({k: v for k, v in history.model_meta.items() if k != "source"})
    task_encoder = FeatureEncoder.fit(history.task_meta)
    table = _table_rows(model_table, history.models) if model_table is not None else np.zeros((m, 0), np.float32)
    proxy, proxy_ok = _history_proxies(task_proxies, history.tasks)
    task_dataset = one_hot([index.get(t, -1) for t in task_names], len(datasets))
    task_side = task_encoder.transform(history.task_meta, history.num_tasks)
    return _Design(
        target=standardize(history.scores, history.mask).astype(np.float32),
        mask=history.mask.copy(),
        side={"source": one_hot([index.get(s, -1) for s in sources], len(datasets)),
              "model_side": model_encoder.transform(history.model_meta, m), "table": table},
        tasks={"task_dataset": task_dataset, "task_side": task_side,
               "meta_ok": task_dataset.any(1) | (task_side.shape[1] > 0),
               "proxy": proxy, "proxy_ok": proxy_ok},
        datasets=datasets,
        model_encoder=model_encoder,
        task_encoder=task_encoder,
    )


def _table_rows(model_table: Mapping[str, Any], models: Sequence[str]) -> np.ndarray:
    """``table[M, F]`` from a model name -> vector mapping covering every model."""
    missing = [name for name in models if name not in model_table]
    if missing:
        raise ValueError(f"model_table: no vector for {len(missing)} history models, e.g. {missing[:3]}")
    rows = [np.asarray(model_table[name], dtype=np.float64).reshape(-1) for name in models]
    widths = {r.size for r in rows}
    if len(widths) != 1:
        raise ValueError(f"model_table: vectors must share one width, got widths {sorted(widths)}")
    table = np.stack(rows)
    if not np.all(np.isfinite(table)):
        raise ValueError("model_table: vectors must be finite")
    return table.astype(np.float32)


def _as_proxy_parts(proxy, width: int | None, where: str) -> np.ndarray:
    """A proxy ``[P]`` or per-class means ``[C, P]`` as ``[C, P]`` float32, checked."""
    x = np.asarray(proxy, dtype=np.float64)
    x = x[None] if x.ndim == 1 else x
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{where}: expected a proxy vector [P] or per-class means [C, P], got shape {np.shape(proxy)}")
    if width is not None and x.shape[1] != width:
        raise ValueError(f"{where}: expected proxy width {width} (the width spider was fitted with), "
                         f"got shape {np.shape(proxy)}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{where}: proxy must be finite")
    return x.astype(np.float32)


def _history_proxies(task_proxies, tasks) -> tuple[np.ndarray, np.ndarray]:
    """``(proxy[T, C, P], proxy_ok[T, C])``; tasks without a proxy get no proxy parts."""
    if not task_proxies:
        return np.zeros((len(tasks), 0, 0), np.float32), np.zeros((len(tasks), 0), bool)
    unknown = sorted(set(task_proxies) - set(tasks))
    if unknown:
        raise ValueError(f"task_proxies: tasks not in the history: {unknown[:3]}")
    width = None
    parts = {}
    for name, value in task_proxies.items():
        parts[name] = _as_proxy_parts(value, width, f"task_proxies[{name!r}]")
        width = parts[name].shape[1]
    c = max(p.shape[0] for p in parts.values())
    proxy = np.zeros((len(tasks), c, width), np.float32)
    ok = np.zeros((len(tasks), c), bool)
    for t, name in enumerate(tasks):
        if name in parts:
            proxy[t, : parts[name].shape[0]] = parts[name]
            ok[t, : parts[name].shape[0]] = True
    return proxy, ok


def _widths(design: _Design) -> dict:
    return {"num_datasets": len(design.datasets), "task_side": design.tasks["task_side"].shape[1],
            "proxy_width": design.tasks["proxy"].shape[2]}


def _network(num_models: int, widths: Mapping[str, int], model_side: int, table_width: int,
             config: SpiderConfig) -> _SpiderNet:
    return _SpiderNet(num_models=num_models, num_datasets=widths["num_datasets"], model_side=model_side,
                      table_width=table_width, task_side=widths["task_side"], proxy_width=widths["proxy_width"],
                      d=config.d, heads=config.heads, adapt_probes=config.adapt_probes)


def _init(net: _SpiderNet, design: _Design, widths, key):
    batch = _empty_batch(1, widths, k=1, r=1, c=design.tasks["proxy"].shape[1])
    return jax.tree.map(np.asarray, net.init(key, design.side, batch, method=_SpiderNet.init_all))


def _loss(net, params, design_arrays, mask, key, *, probe_choices, max_probes, rerank):
    """Training loss of one fit: ListMLE of the first stage (+ of the re-ranked top-``rerank``)."""
    target, order, side, tasks = design_arrays
    tokens, bias = net.apply(params, side, method=_SpiderNet.model_tokens)
    t, m = target.shape
    k_key, u_key, meta_key = jax.random.split(key, 3)
    k = jnp.asarray(probe_choices)[jax.random.randint(k_key, (t,), 0, len(probe_choices))]
    u = jnp.where(mask, jax.random.uniform(u_key, (t, m)), -1.0)
    probe_idx = lax.top_k(u, max_probes)[1].astype(jnp.int32)  # random observed models
    probe_ok = (jnp.arange(max_probes) < k[:, None]) & jnp.take_along_axis(mask, probe_idx, 1)
    probe_z = _zscore(jnp.take_along_axis(target, probe_idx, 1), probe_ok)
    rows = jnp.arange(t)[:, None]
    is_probe = jnp.zeros((t, m), bool).at[rows, probe_idx].set(probe_ok)
    rest = mask & ~is_probe
    # Half the time a task's metadata part is hidden, so tasks without metadata train too.
    meta_ok = tasks["meta_ok"] & jax.random.bernoulli(meta_key, 0.5, (t,))
    batch = {**tasks, "meta_ok": meta_ok, "probe_idx": probe_idx, "probe_z": probe_z, "probe_ok": probe_ok,
             "cand_idx": jnp.zeros((t, 0), jnp.int32), "cand_s": jnp.zeros((t, 0)),
             "cand_ok": jnp.zeros((t, 0), bool)}
    s1 = net.apply(params, tokens, batch) @ tokens.T + bias
    loss = listmle(s1, order, rest)
    if rerank:
        idx, cand_s, ok = _candidates(lax.stop_gradient(s1), rest, rerank)
        h2 = net.apply(params, tokens, {**batch, "cand_idx": idx, "cand_s": cand_s, "cand_ok": ok})
        in_top = jnp.zeros((t, m), bool).at[rows, idx].set(ok)
        loss += listmle(h2 @ tokens.T + bias, order, in_top)
    return loss / t


@functools.partial(jax.jit, static_argnames=("net", "steps", "learning_rate", "l2", "probe_choices", "rerank"))
def _fit_batch(net, params, design_arrays, masks, key, *, steps, learning_rate, l2, probe_choices, rerank):
    """Fits under every ``masks[F, T, M]`` from the same initial ``params``: stacked params [F, ...]."""
    optimizer = optax.adam(learning_rate)
    loss = functools.partial(_loss, net, probe_choices=probe_choices, max_probes=max(max(probe_choices), 1),
                             rerank=rerank)

    def total(p, mask, k):
        penalty = sum(jnp.sum(x**2) for x in jax.tree.leaves(p))
        return loss(p, design_arrays, mask, k) + l2 * penalty

    def one(mask):
        def step(carry, k):
            p, opt_state = carry
            updates, opt_state = optimizer.update(jax.grad(total)(p, mask, k), opt_state, p)
            return (optax.apply_updates(p, updates), opt_state), None

        (p, _), _ = lax.scan(step, (params, optimizer.init(params)), jax.random.split(key, steps))
        return p

    return jax.vmap(one)(masks)


# ----------------------------------------------------------------------------- the fitted state


@dataclasses.dataclass(frozen=True)
class SpiderState:
    """A fitted Model Spider.

    Attributes:
      models: model names, length M (history models, then any added by :func:`add_models`).
      datasets: dataset vocabulary (lower-cased model sources), length N.
      config: hyper-parameters; rerank: the chosen R (0: no re-ranking).
      validation: ``(R, mean weighted tau on held-out history tasks)`` per choice, best first.
      params: the network's parameters (nested dict of arrays).
      side: model inputs ``source[M, N]``, ``model_side[M, Pm]``, ``table[M, F]``.
      model_encoder, task_encoder: metadata -> features.
      proxy_width: width P of proxy features the state accepts (0: proxies are ignored).
    """

    models: tuple[str, ...]
    datasets: tuple[str, ...]
    config: SpiderConfig
    rerank: int
    validation: tuple[tuple[int, float], ...]
    params: dict
    side: dict
    model_encoder: FeatureEncoder
    task_encoder: FeatureEncoder
    proxy_width: int

    @property
    def widths(self) -> dict:
        return {"num_datasets": len(self.datasets), "task_side": self.task_encoder.width,
                "proxy_width": self.proxy_width}

    @property
    def net(self) -> _SpiderNet:
        return _network(len(self.models), self.widths, self.side["model_side"].shape[1],
                        self.side["table"].shape[1], self.config)

    def model_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """``(tokens[M, d], bias[M])``: the first stage scores ``tokens @ h + bias``."""
        tokens, bias = _model_tokens(self.net, self.params, self.side)
        return np.asarray(tokens), np.asarray(bias)


@functools.partial(jax.jit, static_argnames="net")
def _model_tokens(net, params, side):
    return net.apply(params, side, method=_SpiderNet.model_tokens)


@functools.partial(jax.jit, static_argnames="net")
def _head(net, params, tokens, batch):
    return net.apply(params, tokens, batch)


@functools.partial(jax.jit, static_argnames=("net", "r"))
def _rerank_jit(net, params, tokens, bias, batch, s1, r):
    return _rerank(net, params, tokens, bias, batch, s1, r)


def fit_spider(history: Records, config: SpiderConfig = SpiderConfig(), seed: int = 0, *,
               model_table: Mapping[str, Any] | None = None,
               task_proxies: Mapping[str, Any] | None = None) -> SpiderState:
    """Fits Model Spider to ``history`` and chooses R by validation inside it.

    Args:
      history: the records (never the task to be ranked); rank-only tasks are fine.
      config: hyper-parameters.
      seed: initialisation, probe sampling and validation draws (the result is a pure
        function of the inputs).
      model_table: optional model name -> vector (e.g. archi2vec), for every history model.
      task_proxies: optional task name -> proxy ``[P]`` or per-class means ``[C, P]``, for any
        subset of the history's tasks (one width P).
    """
    design = _design(history, model_table, task_proxies)
    widths = _widths(design)
    net = _network(history.num_models, widths, design.side["model_side"].shape[1], design.side["table"].shape[1],
                   config)
    init_key, fit_key = jax.random.split(jax.random.PRNGKey(seed))
    params = _init(net, design, widths, init_key)
    rng = np.random.default_rng([seed, 17])
    eligible = np.flatnonzero(design.mask.sum(1) >= max(config.valid_probes) + 2)
    choices = sorted({min(int(r), history.num_models) for r in config.rerank_choices})
    n_valid = max(1, int(round(config.valid_fraction * eligible.size))) if eligible.size >= 3 else 0
    held = np.sort(rng.choice(eligible, n_valid, replace=False)) if n_valid and len(choices) > 1 else np.zeros(0, int)
    masks = np.repeat(design.mask[None], 1 + (held.size > 0), 0)
    masks[1:, held] = False
    arrays = (design.target, np.asarray(_order(design.target, design.mask)), design.side, design.tasks)
    fitted = _fit_batch(net, params, arrays, masks, fit_key, steps=config.steps, learning_rate=config.learning_rate,
                        l2=config.l2, probe_choices=tuple(min(int(k), history.num_models) for k in config.train_probes),
                        rerank=max(choices))
    full = jax.tree.map(lambda x: np.asarray(x[0]), fitted)
    state = SpiderState(models=history.models, datasets=design.datasets, config=config, rerank=max(choices),
                        validation=(), params=full, side=design.side, model_encoder=design.model_encoder,
                        task_encoder=design.task_encoder, proxy_width=widths["proxy_width"])
    if held.size == 0:
        return dataclasses.replace(state, rerank=choices[0])
    valid_state = dataclasses.replace(state, params=jax.tree.map(lambda x: np.asarray(x[1]), fitted))
    scores = _validate(valid_state, history, design, held, choices, rng)
    ranking = tuple(sorted(zip(choices, scores), key=lambda cs: -cs[1]))
    return dataclasses.replace(state, rerank=ranking[0][0], validation=ranking)


def _validate(state, history, design, held, choices, rng) -> list[float]:
    """Mean weighted tau on the held-out tasks for each R, scored as new tasks are
    (:mod:`fennec_jax.eval.protocol`; draws with an undefined tau left out)."""
    cfg = state.config
    evidences, trues, valids = [], [], []
    for t in held:
        observed = np.flatnonzero(design.mask[t])
        metadata = history.task_metadata(t)
        proxy = design.tasks["proxy"][t][design.tasks["proxy_ok"][t]]
        for _, chosen in validation_draws(rng, observed, cfg.valid_probes, cfg.valid_draws):
            evidences.append(TaskEvidence(chosen, design.target[t, chosen], metadata=metadata,
                                          proxy=proxy if proxy.size else None))
            valid = design.mask[t].copy()
            valid[chosen] = False
            trues.append(design.target[t])
            valids.append(valid)
    first = _first_stage(state, evidences)  # the same for every R: computed once
    preds = [_reranked(state, first, r) for r in choices]
    groups = np.repeat(np.arange(len(choices)), len(evidences))
    return validation_tau(trues * len(choices), np.concatenate(preds), valids * len(choices), groups,
                          skip_undefined=True).tolist()


# ----------------------------------------------------------------------------- scoring


def _evidence_batch(state: SpiderState, evidences: Sequence[TaskEvidence]) -> dict:
    """The arrays of a batch of new tasks (probes and proxies padded to the batch's largest)."""
    m = len(state.models)
    k = max((ev.k for ev in evidences), default=0)
    proxies = [None] * len(evidences)
    if state.proxy_width:
        proxies = [None if ev.proxy is None else _as_proxy_parts(ev.proxy, state.proxy_width, "evidence.proxy")
                   for ev in evidences]
    c = max((p.shape[0] for p in proxies if p is not None), default=0)
    batch = _empty_batch(len(evidences), state.widths, k=k, c=c)
    index = {name: i for i, name in enumerate(state.datasets)}
    for b, ev in enumerate(evidences):
        if np.any((ev.probe_models < 0) | (ev.probe_models >= m)):
            raise ValueError(f"evidence.probe_models: indices must lie in [0, {m}), got {ev.probe_models.tolist()}")
        batch["probe_idx"][b, : ev.k] = ev.probe_models
        batch["probe_ok"][b, : ev.k] = True
        batch["probe_z"][b, : ev.k] = standardize(ev.probe_scores[None], np.ones((1, ev.k), bool))[0]
        metadata = dict(ev.metadata or {})
        name = normalise_names([metadata["task"]])[0] if metadata.get("task") is not None else ""
        if name in index:
            batch["task_dataset"][b, index[name]] = 1.0
        if state.task_encoder.width:
            batch["task_side"][b] = state.task_encoder.transform_one(metadata)
        batch["meta_ok"][b] = name in index or any(col[0] in metadata for col in state.task_encoder.columns)
        if proxies[b] is not None:
            batch["proxy"][b, : proxies[b].shape[0]] = proxies[b]
            batch["proxy_ok"][b, : proxies[b].shape[0]] = True
    return batch


def task_vectors(state: SpiderState, evidences: Sequence[TaskEvidence]) -> np.ndarray:
    """``h[B, d]``: first-stage task vectors; a model's score is ``tokens[m] @ h + bias[m]``."""
    tokens, _ = _model_tokens(state.net, state.params, state.side)
    return np.asarray(_head(state.net, state.params, tokens, _evidence_batch(state, evidences)))


def score_tasks(state: SpiderState, evidences: Sequence[TaskEvidence]) -> np.ndarray:
    """``scores[B, M]`` for a batch of new tasks: the first stage by the batch engine
    (:func:`fennec_jax.ranking.engine.score_matrix`), then the top ``state.rerank`` re-ranked."""
    if not evidences:
        return np.zeros((0, len(state.models)))
    return _reranked(state, _first_stage(state, evidences), state.rerank)


def _first_stage(state: SpiderState, evidences: Sequence[TaskEvidence]):
    """``(tokens[M, d], bias[M], batch, s1[B, M])``: the first-stage scores of a batch of tasks
    and what re-ranking needs of them."""
    tokens, bias = _model_tokens(state.net, state.params, state.side)
    batch = _evidence_batch(state, evidences)
    h = _head(state.net, state.params, tokens, batch)
    return tokens, bias, batch, engine.score_matrix(tokens, h, model_bias=bias)


def _reranked(state: SpiderState, first, rerank: int) -> np.ndarray:
    """``scores[B, M]``: the first stage ``first`` with its top ``rerank`` re-ranked."""
    tokens, bias, batch, s1 = first
    r = min(rerank, len(state.models))
    if r:
        s1 = _rerank_jit(state.net, state.params, tokens, bias, batch, s1, r)
    return np.asarray(s1, dtype=np.float64)


def add_models(state: SpiderState, names: Sequence[str], table_rows: np.ndarray,
               sources: Sequence[str] | None = None) -> SpiderState:
    """``state`` with unseen models appended, their tokens from the model-vector table.

    Needs a state fitted with ``model_table``. ``table_rows[A, F]``; ``sources`` (optional,
    length A) their source datasets (tied embedding when known). The new models' free vector
    is 0, their bias the mean bias, their other metadata features 0 (the mean).
    """
    width = state.side["table"].shape[1]
    if width == 0:
        raise ValueError("add_models: this state was fitted without a model_table")
    rows = np.asarray(table_rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape != (len(names), width) or not np.all(np.isfinite(rows)):
        raise ValueError(f"table_rows: expected finite [{len(names)}, {width}], got shape {rows.shape}")
    clash = sorted(set(names) & set(state.models))
    if clash or len(set(names)) != len(names):
        raise ValueError(f"names: must be new and distinct, got repeats {clash[:3] or list(names)[:3]}")
    index = {name: i for i, name in enumerate(state.datasets)}
    source = one_hot([index.get(s, -1) for s in normalise_names(sources)] if sources is not None
                      else [-1] * len(names), len(state.datasets))
    a = len(names)
    side = {"source": np.concatenate([state.side["source"], source]),
            "model_side": np.concatenate([state.side["model_side"],
                                          np.zeros((a, state.side["model_side"].shape[1]), np.float32)]),
            "table": np.concatenate([state.side["table"], rows.astype(np.float32)])}
    p = state.params["params"]
    params = {"params": {**p, "model_free": np.concatenate([p["model_free"], np.zeros((a, state.config.d))]),
                         "model_bias": np.concatenate([p["model_bias"], np.full(a, p["model_bias"].mean())])}}
    return dataclasses.replace(state, models=state.models + tuple(names), side=side, params=params)


# ----------------------------------------------------------------------------- the method


SPIDER_PRESETS = {
    "default": {},
    # wider tokens trained longer (chosen after looking at the targets: optimistic figures)
    "wide": {"d": 32, "steps": 1000, "learning_rate": 0.005},
}


@dataclasses.dataclass(frozen=True)
class Spider(MethodBase):
    """Model Spider ranking (see the module docstring).

    ``model_table`` (model name -> vector, e.g. archi2vec) adds a model-vector input to the
    tokens; ``task_proxies`` (task name -> proxy ``[P]`` / ``[C, P]``) lets history tasks
    train the proxy parts, after which ``evidence.proxy`` of width P is used (without them a
    proxy is ignored, as by ``fennec``). History proxies also come from
    ``history.task_side["proxy"]``.
    """

    config: SpiderConfig = SpiderConfig()
    model_table: Mapping[str, Any] | None = None
    task_proxies: Mapping[str, Any] | None = None
    name: str = "spider"

    def fit(self, history: Records, seed: int = 0) -> SpiderState:
        proxies = self.task_proxies
        if proxies is None and "proxy" in history.task_side:
            proxies = dict(zip(history.tasks, history.task_side["proxy"]))
        return fit_spider(history, self.config, seed, model_table=self.model_table, task_proxies=proxies)

    def score(self, state: SpiderState, evidence: TaskEvidence) -> np.ndarray:
        return score_tasks(state, [evidence])[0]

    def score_batch(self, state: SpiderState, evidences: Sequence[TaskEvidence]) -> np.ndarray:
        return score_tasks(state, evidences)

    def save(self, state: SpiderState, path: str, *, overwrite: bool = True) -> None:
        save_spider(path, state, overwrite=overwrite)

    def restore(self, path: str) -> SpiderState:
        return restore_spider(path)


@register("spider")
def _spider(preset: str = "default", name: str = "spider", config: SpiderConfig | None = None,
            **overrides) -> Spider:
    """``spider`` configured by ``preset`` ('default' or 'wide': d = 32, 1000 Adam steps,
    lr 0.005), or a whole ``config``, and :class:`SpiderConfig` field overrides."""
    if preset not in SPIDER_PRESETS:
        raise ValueError(f"spider: unknown preset {preset!r}; choose from {', '.join(SPIDER_PRESETS)}")
    base = dataclasses.asdict(config) if config is not None else SPIDER_PRESETS[preset]
    config = SpiderConfig(**typed_config(SpiderConfig, {**base, **overrides}))
    return Spider(config=config, name=name)


# ----------------------------------------------------------------------------- checkpoints


def save_spider(path: str, state: SpiderState, *, overwrite: bool = False) -> None:
    """Writes ``state`` to the folder ``path`` with orbax (atomically; checksummed)."""
    meta = {
        "models": list(state.models),
        "datasets": list(state.datasets),
        "config": dataclasses.asdict(state.config),
        "rerank": state.rerank,
        "validation": [list(v) for v in state.validation],
        "model_encoder": state.model_encoder.to_json(),
        "task_encoder": state.task_encoder.to_json(),
        "proxy_width": state.proxy_width,
    }
    save_arrays(path, FORMAT, meta, _state_arrays(state), overwrite=overwrite)


def restore_spider(path: str) -> SpiderState:
    """The state saved at ``path`` by :func:`save_spider`; :class:`CheckpointError` if it
    is missing, unreadable, of another format or version, or fails its checksum."""
    meta, arrays = restore_arrays(path, FORMAT, "spider")
    try:
        params = traverse_util.unflatten_dict({tuple(k.split("/")[1:]): v for k, v in arrays.items()
                                               if k.startswith("params/")})
        return SpiderState(
            models=tuple(meta["models"]), datasets=tuple(meta["datasets"]),
            config=SpiderConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()}),
            rerank=int(meta["rerank"]), validation=tuple((int(r), float(v)) for r, v in meta["validation"]),
            params=params, side={k.split("/")[1]: v for k, v in arrays.items() if k.startswith("side/")},
            model_encoder=FeatureEncoder.from_json(meta["model_encoder"]),
            task_encoder=FeatureEncoder.from_json(meta["task_encoder"]), proxy_width=int(meta["proxy_width"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{os.path.abspath(path)}: inconsistent checkpoint ({type(e).__name__}: {e})") from None


def _state_arrays(state: SpiderState) -> dict[str, np.ndarray]:
    flat = traverse_util.flatten_dict(state.params, sep="/")
    arrays = {f"params/{k}": np.ascontiguousarray(v) for k, v in flat.items()}
    arrays.update({f"side/{k}": np.ascontiguousarray(v) for k, v in state.side.items()})
    return arrays
