"""Which models to fine-tune next on a new task: probe suggestion policies.

A user who can afford k fine-tunes on a new task chooses which k. A policy answers from a
method's state fitted on the history and what is known of the task so far
(:class:`~fennec_jax.core.evidence.TaskEvidence`: probes, proxy, metadata), with the reason for
each pick (its expected gain).

**The posterior** (:class:`LinearPosterior`, from ``method.task_posterior(state, evidence)``;
``fennec`` has it). The task's scores are linear in its vector ``v[D]``::

    scores[M] = features[M, D] @ v + offsets[M]          (the method's order)
    probe p measured = c + scores[p] + eps,  eps ~ N(0, noise),  c free (any units)
    v ~ N(mean, noise * inv(precision)),  precision = Xc' Xc + l2 I

with ``Xc`` the probed models' features centred over the probes (:func:`probe_precision`):
the free offset means one probe alone says nothing about ``v``, two or more do. For fennec
this is exactly the ridge of ``probe_task_vector`` read as a Gaussian posterior (its mean is
the vector fennec scores with). The precision does not depend on the measured scores, so a
pick's information is known before it is fine-tuned.

**Policies** (:data:`POLICIES`, a :class:`~fennec_jax.core.registry.Registry`; ``suggest:NAME``
or ``suggest:NAME:key=value+key=value`` in ``evaluate --probe_policy``):

* ``random``: distinct candidates uniformly at random, the baseline (needs no posterior).
* ``dopt``: D-optimal design, greedy: the candidate whose score most increases
  ``log det(precision)``; gain = information about the task vector in nats,
  ``0.5 log(1 + n/(n+1) d' inv(precision) d)`` with ``d`` its features minus the probes'
  mean. With no probe yet and more picks to come, the first pick is the candidate farthest
  from the candidates' mean (in the posterior's metric: one end of the widest pair; its
  information arrives with the second probe, so its gain is 0).
* ``thompson``: Thompson sampling for the best model: one draw of every candidate's score
  (task vector from the posterior, plus each model's own noise), the best of the draw is
  picked; gain = the probability that it is the best of the candidates not yet fine-tuned
  (share of ``draws`` draws).
* ``mixed``: learn, then hunt: ``dopt`` picks while more than ``hunt`` (default 1) picks remain,
  ``thompson`` for the last ones, on the posterior the first picks sharpened.

Ties (every gain equal, e.g. a space without task-vector dims) go to the highest score.

**Modes.** Batch (:func:`suggest`): ``budget`` picks at once, before any result: each pick is
added to the posterior as if measured at its predicted score (the precision grows, the mean
stays: "kriging believer"), so the picks are diverse. Sequential (:func:`choose_probes`):
one pick, its measured score fed back (``reveal``), the method rescored, the next pick.
``dopt`` picks the same either way (its gains ignore measured scores); ``thompson`` and
``random`` do not. A policy configured ``batch=true`` makes :func:`choose_probes` plan all its
picks at once (the evaluation's batch mode).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from fennec_jax.core.evidence import TaskEvidence
from fennec_jax.core.registry import Registry, parse_spec, typed_config

__all__ = [
    "LinearPosterior",
    "Suggestion",
    "UnsupportedPolicyError",
    "POLICIES",
    "RandomPolicy",
    "DOptimal",
    "Thompson",
    "Mixed",
    "policy_from_spec",
    "check_supported",
    "probe_precision",
    "information_gains",
    "suggest",
    "choose_probes",
]


class UnsupportedPolicyError(ValueError):
    """The policy needs a posterior the method does not give; the message says what to use."""


# ----------------------------------------------------------------------------- the posterior


def probe_precision(features: np.ndarray, probes: np.ndarray, l2: float) -> np.ndarray:
    """``precision[D, D] = Xc' Xc + l2 I``, ``Xc = features[probes]`` centred over the probes
    (``features[M, D]``, ``probes[n]`` int; ``l2 I`` for n < 2)."""
    x = np.asarray(features, np.float64)[np.asarray(probes, int)]
    x = x - x.mean(0) if len(x) else x
    return x.T @ x + l2 * np.eye(x.shape[1])


def information_gains(features: np.ndarray, probe_features: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """``gains[C]`` in nats: ``0.5 log det(precision') / det(precision)`` for adding each of
    ``features[C, D]`` to the probes ``probe_features[n, D]`` (0 for every candidate at n = 0:
    one probe fixes only the offset)."""
    n = len(probe_features)
    if n == 0 or features.shape[1] == 0:
        return np.zeros(len(features))
    return 0.5 * np.log1p(n / (n + 1) * _quadratic(features - probe_features.mean(0), precision))


def _quadratic(d: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """``q[C] = d[c]' inv(precision) d[c]`` for ``d[C, D]``."""
    return np.einsum("cd,cd->c", d, np.linalg.solve(precision, d.T).T)


@dataclasses.dataclass(frozen=True)
class LinearPosterior:
    """A Gaussian posterior over a new task's vector and the scores it implies (module docstring).

    Attributes:
      scores: ``[M]`` posterior mean score of every model, an increasing affine map of the
        method's scores (the units of the probe fit).
      features: ``[M, D]`` d scores / d v.
      probes: ``[n]`` int, the models measured (or, in a batch plan, believed) so far.
      precision: ``[D, D]`` (:func:`probe_precision` of ``probes``).
      noise: variance of a measured score around ``c + scores``.
    """

    scores: np.ndarray
    features: np.ndarray
    probes: np.ndarray
    precision: np.ndarray
    noise: float

    @property
    def num_models(self) -> int:
        return len(self.scores)

    def cov(self) -> np.ndarray:
        """``cov[D, D]`` of the task vector."""
        return self.noise * np.linalg.inv(self.precision)

    def with_probe(self, model: int) -> "LinearPosterior":
        """The posterior after ``model`` is measured at its predicted score: the precision gains
        its rank-one update, the mean and the scores stay."""
        x = self.features[self.probes]
        n = len(x)
        d = self.features[model] - (x.mean(0) if n else 0.0)
        precision = self.precision + (n / (n + 1)) * np.outer(d, d)
        return dataclasses.replace(self, probes=np.append(self.probes, model), precision=precision)


@dataclasses.dataclass(frozen=True)
class Suggestion:
    """The next models to fine-tune, best first.

    Attributes:
      models: ``[B]`` int model indices, in the order chosen.
      gains: ``[B]`` each pick's expected gain when chosen (see ``gain``; NaN for ``random``).
      gain: what ``gains`` measure.
      policy: the policy's spec.
    """

    models: np.ndarray
    gains: np.ndarray
    gain: str
    policy: str


# ----------------------------------------------------------------------------- policies


@dataclasses.dataclass(frozen=True)
class _Policy:
    """What every policy shares: its spec name and the evaluation mode (``batch``: plan all
    picks before any result, instead of one pick per measured result)."""

    batch: bool = False
    name: str = ""
    needs_posterior: ClassVar[bool] = True
    gain: ClassVar[str] = ""

    def select(self, posterior: LinearPosterior | None, candidates: np.ndarray, budget: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(picks[budget], gains[budget])`` from ``candidates[C]`` (distinct, not yet probed;
        ``budget <= C``), the batch plan."""
        raise NotImplementedError


def _best(gains: np.ndarray, scores: np.ndarray) -> int:
    """Index of the largest gain, ties (to 12 significant digits) to the largest score."""
    rounded = np.round(gains / max(np.abs(gains).max(), 1e-300), 12) if gains.size else gains
    return int(np.lexsort((-scores, -rounded))[0])


@dataclasses.dataclass(frozen=True)
class RandomPolicy(_Policy):
    """Distinct candidates uniformly at random."""

    name: str = "random"

    needs_posterior: ClassVar[bool] = False
    gain: ClassVar[str] = "none (uniform draw)"

    def select(self, posterior, candidates, budget, rng):
        return rng.choice(candidates, size=budget, replace=False), np.full(budget, np.nan)


@dataclasses.dataclass(frozen=True)
class DOptimal(_Policy):
    """Greedy D-optimal design on the task vector's posterior precision."""

    name: str = "dopt"

    gain: ClassVar[str] = "information about the task vector (nats)"

    def select(self, posterior, candidates, budget, rng):
        left = np.asarray(candidates, int)
        picks, gains = [], []
        for step in range(budget):
            feats = posterior.features[left]
            gain = information_gains(feats, posterior.features[posterior.probes], posterior.precision)
            spread = gain
            if len(posterior.probes) == 0 and budget - step >= 2 and feats.shape[1]:
                # The first of several picks: one end of the widest pair.
                spread = _quadratic(feats - feats.mean(0), posterior.precision)
            i = _best(spread, posterior.scores[left])
            picks.append(int(left[i]))
            gains.append(float(gain[i]))
            posterior = posterior.with_probe(left[i])
            left = np.delete(left, i)
        return np.asarray(picks, int), np.asarray(gains)


@dataclasses.dataclass(frozen=True)
class Thompson(_Policy):
    """Thompson sampling for the best model; ``draws`` posterior draws estimate each pick's
    probability of being the best untried candidate."""

    draws: int = 256
    name: str = "thompson"
    gain: ClassVar[str] = "probability of being the best model not yet fine-tuned"

    def __post_init__(self):
        if self.draws < 1:
            raise ValueError(f"thompson: draws must be >= 1, got {self.draws}")

    def select(self, posterior, candidates, budget, rng):
        left = np.asarray(candidates, int)
        picks, gains = [], []
        for _ in range(budget):
            sample = _score_draws(posterior, left, self.draws, rng)  # [C, S]
            best = sample.argmax(0)
            i = int(best[0])
            picks.append(int(left[i]))
            gains.append(float(np.mean(best == i)))
            posterior = posterior.with_probe(left[i])
            left = np.delete(left, i)
        return np.asarray(picks, int), np.asarray(gains)


@dataclasses.dataclass(frozen=True)
class Mixed(_Policy):
    """Learn, then hunt: ``dopt`` picks while more than ``hunt`` picks remain, then ``thompson``
    (``draws``) for the last ``hunt``, made on the posterior the learning picks sharpened."""

    hunt: int = 1
    draws: int = 256
    name: str = "mixed"
    gain: ClassVar[str] = ("information about the task vector (nats) for the learning picks, then the probability "
                           "of being the best model not yet fine-tuned")

    def __post_init__(self):
        if self.hunt < 1:
            raise ValueError(f"mixed: hunt must be >= 1, got {self.hunt}")

    def select(self, posterior, candidates, budget, rng):
        learn = max(budget - self.hunt, 0)
        picks, gains = DOptimal().select(posterior, candidates, learn, rng)
        for model in picks:
            posterior = posterior.with_probe(model)
        left = np.asarray(candidates, int)[~np.isin(candidates, picks)]
        more, more_gains = Thompson(draws=self.draws).select(posterior, left, budget - learn, rng)
        return np.concatenate([picks, more]).astype(int), np.concatenate([gains, more_gains])


def _score_draws(posterior: LinearPosterior, models: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """``scores[C, S]`` float32: ``draws`` joint draws of the measured scores of ``models[C]``
    (up to the common offset): task vector from the posterior plus independent noise per model."""
    dim = posterior.features.shape[1]
    out = rng.standard_normal((len(models), draws), dtype=np.float32)
    out *= np.float32(np.sqrt(posterior.noise))
    out += posterior.scores[models, None].astype(np.float32)
    if dim and posterior.noise > 0:
        root = np.linalg.cholesky(posterior.cov())
        out += posterior.features[models].astype(np.float32) @ (root @ rng.standard_normal((dim, draws))).astype(np.float32)
    return out


def _load_policies() -> None:
    for cls in (RandomPolicy, DOptimal, Thompson, Mixed):
        POLICIES.register(cls.name, functools.partial(_build, cls))


def _build(cls, **config):
    return cls(**typed_config(cls, config))


POLICIES: Registry[Callable[..., _Policy]] = Registry("probe policy", _load_policies)


def policy_from_spec(spec: str) -> _Policy:
    """The policy of ``NAME`` or ``NAME:key=value+key=value`` (e.g. ``thompson:draws=512``,
    ``dopt:batch=true``); its ``name`` is the spec. ValueError lists the policies."""
    name, config = parse_spec(spec)
    if "name" in config:
        raise ValueError(f"probe policy {spec!r}: 'name' is not a configuration key")
    return dataclasses.replace(POLICIES.build(name, **config), name=spec)


# ----------------------------------------------------------------------------- suggest


def check_supported(method: Any, policy: _Policy) -> None:
    """UnsupportedPolicyError when ``policy`` needs a posterior and ``method`` has no ``task_posterior``."""
    if policy.needs_posterior and not hasattr(method, "task_posterior"):
        raise UnsupportedPolicyError(
            f"probe policy {policy.name!r} needs a posterior over the task vector, which method "
            f"{getattr(method, 'name', type(method).__name__)!r} does not give; use a fennec method "
            f"(e.g. fennec, fennec:preset=mf) or the random policy")


def _candidates(candidates: Sequence[int] | None, evidence: TaskEvidence, num_models: int, budget: int) -> np.ndarray:
    """The candidates left (given ones, or every model) minus the probes, checked."""
    probes = evidence.probe_models
    if np.any((probes < 0) | (probes >= num_models)):
        raise ValueError(f"probes: model indices must lie in [0, {num_models}), got {probes.tolist()}; "
                         f"name only models of the history")
    if candidates is None:
        pool = np.arange(num_models)
    else:
        pool = np.asarray(candidates).reshape(-1)
        if pool.size and not np.issubdtype(pool.dtype, np.integer):
            raise ValueError(f"candidates: expected integer model indices, got dtype {pool.dtype}")
        if np.any((pool < 0) | (pool >= num_models)):
            raise ValueError(f"candidates: model indices must lie in [0, {num_models}), got {pool.tolist()}")
        if len(np.unique(pool)) != pool.size:
            raise ValueError(f"candidates: repeated model indices in {pool.tolist()}; give each model once")
    left = pool[~np.isin(pool, probes)]
    if not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"budget: expected an integer >= 1, got {budget!r}")
    if budget > left.size:
        raise ValueError(f"budget: {budget} fine-tunes asked but only {left.size} candidate models are left "
                         f"(not yet probed); ask for at most {left.size}")
    return left


def suggest(method: Any, state: Any, evidence: TaskEvidence, budget: int, policy: _Policy | str = "dopt", *,
            candidates: Sequence[int] | None = None, seed: int | Sequence[int] = 0) -> Suggestion:
    """The next ``budget`` models to fine-tune on a new task, chosen at once (batch mode).

    Args:
      method, state: a ranking method and its state fitted on the history.
      evidence: what is known of the task (probes so far, proxy, metadata).
      budget: how many models to suggest (at most the candidates left).
      policy: a policy or its spec (:func:`policy_from_spec`).
      candidates: ``[C]`` model indices that may be suggested (default: every model); probed
        models are left out.
      seed: the policy's randomness (``numpy.random.default_rng(seed)``).
    Raises:
      ValueError: a budget larger than the candidates left, a probe or candidate outside the
        history's models, repeated candidates, or an unknown policy.
      UnsupportedPolicyError: the policy needs a posterior the method does not give.
    """
    policy = policy_from_spec(policy) if isinstance(policy, str) else policy
    check_supported(method, policy)
    posterior = method.task_posterior(state, evidence) if policy.needs_posterior else None
    num_models = posterior.num_models if posterior else len(np.asarray(method.score(state, evidence)))
    left = _candidates(candidates, evidence, num_models, budget)
    picks, gains = policy.select(posterior, left, budget, np.random.default_rng(seed))
    return Suggestion(picks, gains, policy.gain, policy.name)


def choose_probes(method: Any, state: Any, evidence: TaskEvidence, budget: int, policy: _Policy | str,
                  reveal: Callable[[int], float], *, candidates: Sequence[int] | None = None,
                  seed: int | Sequence[int] = 0) -> tuple[TaskEvidence, Suggestion]:
    """Runs ``policy`` for ``budget`` fine-tunes: sequentially (one pick, its measured score
    ``reveal(model)`` added to the evidence, the next pick from the updated posterior), or all
    at once when the policy is configured ``batch=true``. Returns the evidence with the
    picks' measured scores appended, and the picks with their gains (arguments as :func:`suggest`)."""
    policy = policy_from_spec(policy) if isinstance(policy, str) else policy
    rng = np.random.default_rng(seed)
    steps = [budget] if policy.batch else [1] * budget
    picks, gains = [], []
    for i, size in enumerate(steps):
        chosen = suggest(method, state, evidence, size if policy.batch else budget - i, policy,
                         candidates=candidates, seed=rng.integers(2**63))
        new = chosen.models[:size]
        picks.extend(new.tolist())
        gains.extend(chosen.gains[:size].tolist())
        evidence = dataclasses.replace(
            evidence, probe_models=np.append(evidence.probe_models, new),
            probe_scores=np.append(evidence.probe_scores, [float(reveal(int(m))) for m in new]))
    return evidence, Suggestion(np.asarray(picks, int), np.asarray(gains), policy.gain, policy.name)
