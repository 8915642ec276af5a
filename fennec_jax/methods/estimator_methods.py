"""Forward-pass transferability estimators as ranking methods.

Every estimator of :data:`fennec_jax.estimators.ESTIMATORS` (LogME, LEEP, NCE, H-Score, ...)
is registered as a method of the same name: ``fit`` learns nothing from the history (an
estimator scores a new task from the candidates' forward passes alone), and ``score`` reads
the new task's evidence: ``model_features[m]`` ``[N, D_m]`` of every model, ``labels[N]``
and, for the estimators that need them, ``model_probs[m]`` ``[N, Cs_m]``. So ``evaluate
--methods=popularity,fennec,logme`` runs on any benchmark that carries per-model features
(``Benchmark.features``), such as the one the benchmark builder writes.

A model without probabilities cannot be scored by an estimator that needs them: it gets the
lowest score of the scored models (ranked last), never a made-up value.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fennec_jax.core.evidence import MissingEvidenceError, TaskEvidence
from fennec_jax.core.records import Records
from fennec_jax.methods.base import METHODS, MethodBase

__all__ = ["EstimatorMethod"]


@dataclasses.dataclass(frozen=True)
class EstimatorMethod(MethodBase):
    """The estimator ``estimator`` as a ranking method (module docstring)."""

    estimator: str = "logme"
    name: str = "logme"

    def fit(self, history: Records, seed: int = 0):
        return {"num_models": history.num_models}

    def score(self, state, evidence: TaskEvidence) -> np.ndarray:
        from fennec_jax import estimators

        num_models = int(state["num_models"])
        if evidence.model_features is None:
            raise MissingEvidenceError(f"{self.name}: needs every model's features on the task's examples "
                                       f"(evidence.model_features and labels); this task has none (evaluate: "
                                       f"--features=DIR)")
        if len(evidence.model_features) != num_models:
            raise ValueError(f"{self.name}: evidence has features of {len(evidence.model_features)} models, "
                             f"expected {num_models}")
        keep = list(range(num_models))
        probs = None
        if estimators.needs_probs(self.estimator):
            given = evidence.model_probs or [None] * num_models
            keep = [m for m in keep if given[m] is not None]
            if not keep:
                raise MissingEvidenceError(f"{self.name}: needs source-head probabilities (evidence.model_probs); "
                                           f"none given")
            probs = [given[m] for m in keep]
        values = np.asarray(estimators.score_models(
            self.estimator, [evidence.model_features[m] for m in keep], evidence.labels, probs), dtype=np.float64)
        scores = np.full(num_models, values.min() if values.size else 0.0)
        scores[keep] = values
        return scores


def _register_all() -> None:
    from fennec_jax.estimators.registry import ESTIMATORS

    for name in ESTIMATORS.names():
        def factory(name: str = name, _estimator: str = name, **options) -> EstimatorMethod:
            if options:
                raise ValueError(f"{_estimator}: takes no configuration, got {sorted(options)}")
            return EstimatorMethod(estimator=_estimator, name=name)

        METHODS.register(name, factory)


_register_all()
