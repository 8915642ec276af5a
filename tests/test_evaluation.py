"""The leave-one-task-out protocol: hidden task never seen, probes never scored."""

import dataclasses

import numpy as np
import pytest

from fennec_jax.eval import protocol as evaluation
from fennec_jax.eval import reports
from fennec_jax.methods.baselines import KnnTask, Popularity, Random
from fennec_jax.benchmarks.bundled import load_benchmark
from fennec_jax.methods.base import MethodBase, TaskEvidence, get_method, method_names


@dataclasses.dataclass
class Spy(MethodBase):
    """Records what the protocol shows a method; predicts the (leaked-if-wrong) true scores."""

    benchmark: object
    name: str = "spy"
    seen: list = dataclasses.field(default_factory=list)

    def fit(self, history, seed=0):
        return history

    def score(self, history, evidence: TaskEvidence):
        self.seen.append((history.tasks, evidence.k, evidence.probe_models.copy()))
        return np.arange(history.num_models, dtype=float)


def test_hidden_task_never_seen_and_probes_exact():
    bench = load_benchmark("parc_controlled")
    spy = Spy(bench)
    evaluation.evaluate(bench, {"spy": spy}, evaluation.TasksOut(probes=(0, 3), seeds=2))
    assert len(spy.seen) == len(bench.targets) * 2 * 2
    for i, target in enumerate(bench.targets):
        for tasks, k, probes in spy.seen[4 * i: 4 * (i + 1)]:
            assert target not in tasks  # the hidden task is absent from history
            assert set(tasks) == set(bench.targets) - {target}  # history='targets'
            assert k == len(probes)


def test_probe_models_are_never_scored():
    # A method that puts probes at the top: if probes were scored, metrics would change.
    bench = load_benchmark("spider_multi")

    class ProbesFirst(Popularity):
        def score(self, state, evidence):
            s = np.asarray(state).copy()
            s[evidence.probe_models] = 1e6 * np.arange(1, evidence.k + 1)
            return s

    pop = Popularity()
    report = evaluation.evaluate(bench, {"pop": pop, "probes_first": ProbesFirst()}, evaluation.TasksOut(probes=(3,), seeds=3))
    a, b = report["results"]["pop"]["3"]["mean"], report["results"]["probes_first"]["3"]["mean"]
    assert a == pytest.approx(b)


def test_probe_draw_is_shared_and_seeded():
    cands = np.arange(10, 30)
    a = evaluation.probe_draw(cands, 5, seed=1, task=2)
    assert np.array_equal(a, evaluation.probe_draw(cands, 5, seed=1, task=2))
    assert not np.array_equal(a, evaluation.probe_draw(cands, 5, seed=2, task=2))
    assert len(set(a)) == 5 and set(a) <= set(cands)
    with pytest.raises(ValueError, match="only 20 evaluated"):
        evaluation.probe_draw(cands, 21, 0, 0)


@pytest.mark.parametrize(
    "name, expected",
    # Reference: popularity at k=0 with only the other targets as history (issue #2).
    [("parc_controlled", 0.60), ("parc_all", 0.71), ("spider_single", 0.76), ("spider_multi", 0.52)],
)
def test_popularity_matches_published_reference(name, expected):
    report = evaluation.evaluate(load_benchmark(name), {"popularity": Popularity()}, evaluation.TasksOut(probes=(0,), seeds=1))
    assert report["results"]["popularity"]["0"]["mean"]["weighted_tau"] == pytest.approx(expected, abs=0.006)


def test_random_is_near_zero_and_knn_uses_probes():
    bench = load_benchmark("parc_all")
    report = evaluation.evaluate(bench, {"random": Random(), "knn": KnnTask(), "pop": Popularity()}, evaluation.TasksOut(probes=(0, 5), seeds=10))
    res = report["results"]
    assert abs(res["random"]["5"]["mean"]["weighted_tau"]) < 0.15
    assert res["knn"]["0"]["mean"] == res["pop"]["0"]["mean"]  # k=0: knn falls back to popularity
    assert res["knn"]["5"]["mean"]["weighted_tau"] > res["pop"]["5"]["mean"]["weighted_tau"]
    md = reports.to_markdown(report)
    assert "| knn | 5 |" in md and "cifar10" in md


def test_registry():
    assert {"random", "popularity", "knn_task"} <= set(method_names())
    with pytest.raises(ValueError, match="unknown method"):
        get_method("nope")
