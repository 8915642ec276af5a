"""One contract checked over every registered method (in the spirit of scikit-learn's
estimator checks): shapes, determinism for a seed, invariance of the ranking to an affine
change of the probe scores, a save / restore round trip that gives identical scores, and the
evaluation loop never showing a method the hidden task or its non-probe cells.

Every registered name is checked; a method that needs more than records (forward-pass
features, architecture graphs) gets them from the synthetic zoo below. Small configurations
keep the suite fast (``SMALL``); a newly registered method is checked with its defaults.
"""

import dataclasses

import numpy as np
import pytest

from fennec_jax.archs.graphs import ArchGraph
from fennec_jax.benchmarks.bundled import as_benchmark
from fennec_jax.core.evidence import TaskEvidence
from fennec_jax.core.records import records_from_matrix
from fennec_jax.eval import protocol
from fennec_jax.methods.base import get_method, method_names

T, M, N, C = 6, 8, 60, 3
SMALL = {
    "fennec": {"preset": "mf", "steps": "40"},
    "spider": {"steps": "30", "d": "8", "rerank_choices": "0"},
    "archi2vec": {"epochs": "2", "ensemble": "1", "hidden": "16", "embed_dim": "8", "batch_size": "8"},
    "graph_regression": {},
    "pactran_gauss": {},
    "auto": {"candidates": "popularity/knn_task/fennec:preset=mf&steps=40"},
}


@pytest.fixture(scope="module")
def zoo():
    """A planted zoo: scores[T, M] of rank 2 with families, sources, sizes (one missing) and
    source scores, graphs (chains of 1-4 convs) and per-model features on the new task's
    examples whose class signal follows the models' quality."""
    rng = np.random.default_rng(0)
    quality = rng.normal(size=M)
    scores = quality[None] + 0.3 * rng.normal(size=(T, 1)) * rng.normal(size=(1, M)) + 0.05 * rng.normal(size=(T, M))
    graphs = [ArchGraph.from_ops(f"m{m}", ["input", *["conv"] * (1 + m % 4), "output"],
                                 [[i, i + 1] for i in range(2 + m % 4)]) for m in range(M)]
    records = records_from_matrix(
        [f"m{m}" for m in range(M)], [f"t{t}" for t in range(T)], scores,
        model_meta={"family": np.array(["a", "b"] * (M // 2), dtype=object),
                    "source": np.array(["t0", "t1", "x", "y"] * (M // 4), dtype=object),
                    "params": np.where(np.arange(M) == 2, np.nan, np.exp(quality)),  # for size
                    "source_score": np.round(quality, 1)})  # for source_score
    records = dataclasses.replace(records, model_side={"graph": graphs})
    labels = np.repeat(np.arange(C), N // C)
    means = rng.normal(size=(C, 6))
    features = [means[labels] * (1 + q) + rng.normal(size=(N, 6)) for q in quality - quality.min()]
    logits = [f @ rng.normal(size=(6, 5)) for f in features]
    probs = [np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)
             for z in logits]
    task = {"model_features": features, "labels": labels, "model_probs": probs}
    return records, task


def _method(name):
    return get_method(name, **SMALL.get(name, {}))


def _evidence(records, task, probes, seed=0, scale=1.0, shift=0.0):
    true = records.scores[0]
    return TaskEvidence(probes, true[probes] * scale + shift, metadata={"task": "t0"}, seed=seed, **task)


@pytest.mark.parametrize("name", method_names())
def test_method_contract(name, zoo, tmp_path):
    records, task = zoo
    history = records.without_task(0)
    method = _method(name)
    state = method.fit(history, seed=0)
    probes = np.array([1, 4, 6])
    evidence = _evidence(records, task, probes)
    scores = np.asarray(method.score(state, evidence))
    assert scores.shape == (M,) and np.all(np.isfinite(scores))
    batch = np.asarray(method.score_batch(state, [evidence, _evidence(records, task, np.array([0, 2]))]))
    assert batch.shape == (2, M) and np.all(np.isfinite(batch))
    np.testing.assert_allclose(batch[0], scores, rtol=1e-5, atol=1e-6)
    # Deterministic for a seed.
    again = np.asarray(method.score(method.fit(history, seed=0), evidence))
    np.testing.assert_allclose(again, scores, rtol=1e-5, atol=1e-6)
    # The ranking does not depend on the probe scores' units.
    rescaled = np.asarray(method.score(state, _evidence(records, task, probes, scale=3.0, shift=-7.0)))
    np.testing.assert_array_equal(np.argsort(-rescaled, kind="stable"), np.argsort(-scores, kind="stable"))
    # A saved state restores to identical scores.
    method.save(state, str(tmp_path / "state"))
    restored = method.restore(str(tmp_path / "state"))
    np.testing.assert_array_equal(np.asarray(method.score(restored, evidence)), scores)


class _Guard:
    """Wraps a method; fails if the hidden task or any of its non-probe cells reach it."""

    def __init__(self, method, records, task):
        self.method, self.records, self.task, self.name = method, records, task, method.name
        self.calls = 0

    def fit(self, history, seed=0):
        assert self.records.tasks[self.hidden] not in history.tasks
        assert all(np.isfinite(history.scores[history.mask]))
        return self.method.fit(history, seed)

    def score_batch(self, state, evidences):
        true = self.records.scores[self.hidden]
        for ev in evidences:
            np.testing.assert_array_equal(ev.probe_scores, true[ev.probe_models])  # the probes, nothing more
            assert ev.k <= 3 and ev.metadata["task"] == self.records.tasks[self.hidden]
        self.calls += 1
        return self.method.score_batch(state, evidences)


@pytest.mark.parametrize("name", method_names())
def test_hidden_task_never_reaches_the_method(name, zoo):
    records, task = zoo
    bench = dataclasses.replace(as_benchmark(records, targets=("t0", "t3")), features=lambda t: task)
    guard = _Guard(_method(name), records, task)
    for hidden in (0, 3):
        guard.hidden = hidden
        single = dataclasses.replace(bench, targets=(records.tasks[hidden],))
        report = protocol.evaluate(single, {name: guard}, protocol.TasksOut(probes=(0, 3), seeds=2, history="all"))
        assert np.isfinite(report["results"][name]["3"]["mean"]["kendall"])
    assert guard.calls == 4
