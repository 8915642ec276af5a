"""Numerical edge cases (issue #18): every registered ranking method on records with a constant
task, near-duplicate models or a single model, and every estimator on features with N < D,
one sample per class, NaN and infinite values and near-duplicate models. Each ends in finite
scores or in a ValueError that names the problem; never NaN scores, never another exception.

The methods reuse the planted zoo and small configurations of test_method_conformance.py.
"""

import dataclasses

import numpy as np
import pytest

from fennec_jax import estimators
from fennec_jax.core.evidence import TaskEvidence
from fennec_jax.core.records import records_from_matrix
from fennec_jax.methods.base import method_names
from test_method_conformance import _method, zoo  # noqa: F401 (zoo is a fixture)

# (case, method) -> the ValueError expected; every other pair must score finitely.
REFUSED = {
    ("single_model", "graph_regression"): "fewer than 2 observed models",
    ("single_model", "archi2vec"): "fewer than 2 observed models",
}


def _degenerate(records, task):
    """History task t1 constant; m5 a copy of m4 (scores, metadata, graph, features) 1e-9 apart."""
    scores = records.scores.copy()
    scores[1] = 0.7
    scores[:, 5] = scores[:, 4] + 1e-9
    meta = {key: np.concatenate([col[:5], col[4:5], col[6:]]) for key, col in records.model_meta.items()}
    graphs = list(records.model_side["graph"])
    graphs[5] = dataclasses.replace(graphs[4], name="m5")
    features = [*task["model_features"][:5], task["model_features"][4] + 1e-9, *task["model_features"][6:]]
    probs = [*task["model_probs"][:5], task["model_probs"][4], *task["model_probs"][6:]]
    records = dataclasses.replace(records, scores=scores, model_meta=meta, model_side={"graph": graphs})
    return records, {**task, "model_features": features, "model_probs": probs}


def _single_model(records, task):
    """The zoo cut down to its first model."""
    single = records_from_matrix(records.models[:1], records.tasks, records.scores[:, :1],
                                 model_meta={key: col[:1] for key, col in records.model_meta.items()})
    single = dataclasses.replace(single, model_side={"graph": records.model_side["graph"][:1]})
    return single, {**task, "model_features": task["model_features"][:1], "model_probs": task["model_probs"][:1]}


def _evidences(records, task, probes):
    """k = 0, the true probes of task t0, and the same probes all scoring alike (a constant task)."""
    evidence = lambda scores: TaskEvidence(probes, scores, metadata={"task": "t0"}, seed=0, **task)
    return [TaskEvidence(metadata={"task": "t0"}, seed=0, **task), evidence(records.scores[0, probes]),
            evidence(np.full(len(probes), 0.5))]


@pytest.mark.parametrize("case", ["degenerate", "single_model"])
@pytest.mark.parametrize("name", method_names())
def test_method_on_degenerate_records(name, case, zoo):
    records, task = (_degenerate if case == "degenerate" else _single_model)(*zoo)
    probes = np.array([1, 4, 5]) if case == "degenerate" else np.array([0])
    method = _method(name)
    if (case, name) in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[case, name]):
            method.fit(records.without_task(0), seed=0)
        return
    state = method.fit(records.without_task(0), seed=0)
    scores = np.asarray(method.score_batch(state, _evidences(records, task, probes)))
    assert scores.shape == (3, records.num_models) and np.all(np.isfinite(scores)), scores


def _estimator_cases():
    """name -> (features[N, D], labels[N], probs[N, 5]) of the degenerate shapes."""
    rng = np.random.default_rng(0)

    def probs(n):
        z = np.exp(rng.normal(size=(n, 5)))
        return z / z.sum(1, keepdims=True)

    wide = np.arange(12) % 3  # N = 12 < D = 40
    one_each = np.arange(4)  # one sample per class
    return {"n_below_d": (rng.normal(size=(12, 40)), wide, probs(12)),
            "one_per_class": (rng.normal(size=(4, 6)), one_each, probs(4)),
            "one_per_class_n_below_d": (rng.normal(size=(4, 40)), one_each, probs(4))}


ESTIMATOR_CASES = _estimator_cases()


@pytest.mark.parametrize("name", estimators.method_names())
def test_estimator_on_degenerate_features(name):
    """Finite scores for every shape, and near-duplicate candidates (1e-9 apart) score alike,
    also where scores are relative to the candidate set (ncti, etran). Two models per call:
    one compile per shape."""
    for case, (features, labels, probs) in ESTIMATOR_CASES.items():
        twins = estimators.score_models(name, [features, features + 1e-9], labels, [probs, probs])
        assert np.all(np.isfinite(twins)), case
        np.testing.assert_allclose(twins[0], twins[1], rtol=1e-6, atol=1e-9, err_msg=case)
    # One sample in all: too few for a feature statistic.
    features, _, probs = ESTIMATOR_CASES["one_per_class"]
    if estimators.needs_probs(name):
        assert np.isfinite(estimators.score(name, features[:1], np.zeros(1, int), probs[:1]))
    else:
        with pytest.raises(ValueError, match="features needs at least 2 samples"):
            estimators.score(name, features[:1], np.zeros(1, int))


@pytest.mark.parametrize("name", estimators.method_names())
def test_estimator_names_the_non_finite_argument(name):
    """A NaN or infinite value in what the estimator reads is a ValueError naming that argument;
    in what it does not read, it changes nothing."""
    features, labels, probs = ESTIMATOR_CASES["n_below_d"]
    read, ignored = ("probs", "features") if estimators.needs_probs(name) else ("features", "probs")
    clean = estimators.score_models(name, [features, features], labels, [probs, probs])
    for bad in (np.nan, np.inf, -np.inf):
        inputs = {"features": features.copy(), "probs": probs.copy()}
        inputs[read][1, 2] = bad
        with pytest.raises(ValueError, match=rf"{read}_list\[1\] contains NaN or infinite"):
            estimators.score_models(name, [features, inputs["features"]], labels, [probs, inputs["probs"]])
        inputs = {"features": features.copy(), "probs": probs.copy()}
        inputs[ignored][1, 2] = bad
        np.testing.assert_array_equal(
            estimators.score_models(name, [features, inputs["features"]], labels, [probs, inputs["probs"]]), clean)
