"""The leave-one-task-out protocol: hidden task never seen, probes never scored."""

import dataclasses

import numpy as np
import pytest

from fennec_jax.eval import protocol as evaluation
from fennec_jax.eval import metrics, reports
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


# ----------------------------------------------------------------------------- probe policies

# knn_task on parc_controlled, k = 0 and 3, 2 seeds, computed before probe policies existed.
_BEFORE_POLICIES = {"0": {"weighted_tau": 0.5992922633886337, "kendall": 0.47055379549662274,
                          "top1_regret": 1.5105145772298176},
                    "3": {"weighted_tau": 0.5916076650222143, "kendall": 0.45496724049250287,
                          "top1_regret": 1.7284043629964192}}


@pytest.mark.parametrize("policy", ["random", ("random",)])
def test_default_random_probes_give_the_results_from_before_probe_policies(policy):
    bench = load_benchmark("parc_controlled")
    report = evaluation.evaluate(bench, {"knn": KnnTask()}, evaluation.TasksOut(probes=(0, 3), seeds=2,
                                                                                probe_policy=policy))
    assert report["settings"] == ["0", "3"] and report["protocol"]["probe_policy"] == ["random"]
    for k, want in _BEFORE_POLICIES.items():
        for key, value in want.items():
            assert report["results"]["knn"][k]["mean"][key] == pytest.approx(value, rel=1e-9)
    assert report["results"]["knn"]["0"]["mean"]["weighted_tau_k0"] == report["results"]["knn"]["0"]["mean"]["weighted_tau"]


def test_final_regret_is_the_best_of_the_probes_and_the_top_prediction():
    true = np.array([5.0, 9.0, 1.0, 7.0, 3.0])
    valid = np.array([True, True, True, True, False])
    pred = np.array([[0.0, 0.0, 1.0, 0.5, 9.0],   # top valid non-probe: model 2 (1.0); probes 0, 3 -> 7.0
                     [0.0, 5.0, 1.0, 0.5, 9.0],   # top valid non-probe: model 1, the best
                     [0.0, 0.0, 0.0, 0.0, 9.0]])  # no probes, prediction ties -> lowest index: model 0
    regret = evaluation.final_regret(true, pred, [np.array([0, 3]), np.array([0, 3]), np.zeros(0, int)], valid)
    np.testing.assert_allclose(regret, [2.0, 0.0, 4.0])


def test_policy_probes_are_chosen_one_at_a_time_from_the_true_scores():
    bench = load_benchmark("parc_controlled")
    bench = dataclasses.replace(bench, targets=bench.targets[:2])
    fennec = get_method("fennec", preset="mf", steps=100)
    seen = []

    @dataclasses.dataclass(frozen=True)
    class Watched(type(fennec)):
        def task_posterior(self, state, evidence):
            seen.append((evidence.metadata["task"], evidence.probe_models.copy(), evidence.probe_scores.copy()))
            return super().task_posterior(state, evidence)

    split = evaluation.TasksOut(probes=(0, 2), seeds=2, probe_policy=("random", "suggest:dopt", "suggest:thompson"))
    report = evaluation.evaluate(bench, {"f": Watched(preset="mf", steps=100)}, split)
    assert report["settings"] == ["0", "2", "2 suggest:dopt", "2 suggest:thompson"]
    assert report["protocol"]["probe_policy"] == ["random", "suggest:dopt", "suggest:thompson"]
    records = bench.records
    # Per task: 2 policies x 2 seeds x 2 picks, the k-th pick seeing the k earlier ones with their true scores.
    assert len(seen) == 2 * 2 * 2 * 2
    for task, probes, scores in seen:
        t = records.tasks.index(task)
        assert task in bench.targets and len(probes) in (0, 1)
        assert bench.eval_mask[t][probes].all()
        np.testing.assert_array_equal(scores, records.scores[t, probes])
    for setting in report["settings"]:
        mean = report["results"]["f"][setting]["mean"]
        assert np.isfinite([mean["weighted_tau"], mean["final_regret"], mean["weighted_tau_k0"]]).all()
    # Adding policies leaves the random rows as they were.
    alone = evaluation.evaluate(bench, {"f": fennec}, evaluation.TasksOut(probes=(0, 2), seeds=2))
    for setting in ("0", "2"):
        assert alone["results"]["f"][setting]["per_task"] == report["results"]["f"][setting]["per_task"]


def test_bad_probe_policies_are_refused_before_any_fit():
    spy = Spy(None)
    with pytest.raises(ValueError, match="'spy' does not give; use a fennec method"):
        evaluation.evaluate(load_benchmark("parc_controlled"), {"spy": spy},
                            evaluation.TasksOut(probes=(3,), probe_policy=("random", "suggest:thompson")))
    assert spy.seen == []
    with pytest.raises(ValueError, match="expected 'random' or 'suggest:NAME'"):
        evaluation.TasksOut(probe_policy="dopt")
    with pytest.raises(ValueError, match="unknown probe policy 'best'"):
        evaluation.TasksOut(probe_policy=("random", "suggest:best"))
    with pytest.raises(ValueError, match="distinct"):
        evaluation.TasksOut(probe_policy=("random", "random"))


# ----------------------------------------------------------------------------- what the reports show


@pytest.fixture(scope="module")
def three_tasks():
    """knn_task and popularity on 3 parc_controlled targets, k = 0 and 3, 3 seeds, knn's predictions kept."""
    bench = load_benchmark("parc_controlled")
    bench = dataclasses.replace(bench, targets=bench.targets[:3])
    report = evaluation.evaluate(bench, {"popularity": Popularity(), "knn": KnnTask()},
                                 evaluation.TasksOut(probes=(0, 3), seeds=3), keep_predictions="knn")
    return bench, report


def test_regret_is_also_normalised_by_each_task_range(three_tasks):
    bench, report = three_tasks
    records = bench.records
    for name in ("popularity", "knn"):
        for setting in ("0", "3"):
            for task, values in report["results"][name][setting]["per_task"].items():
                t = records.tasks.index(task)
                spread = np.ptp(records.scores[t, bench.eval_mask[t]])
                # final regret: over the task's evaluated models, every k.
                assert values["final_regret_normalized"] == pytest.approx(values["final_regret"] / spread)
                if setting == "0":  # no probe: top-1 regret ranks every evaluated model too
                    assert values["top1_regret_normalized"] == pytest.approx(values["top1_regret"] / spread)
                assert 0 <= values["top1_regret_normalized"] <= 1
    assert set(evaluation.METRIC_KEYS) <= set(report["results"]["knn"]["3"]["mean"])


def test_standard_errors_are_over_tasks_and_per_task_over_seeds(three_tasks):
    _, report = three_tasks
    entry = report["results"]["knn"]["3"]
    for key in evaluation.METRIC_KEYS:
        values = np.array([v[key] for v in entry["per_task"].values()])
        assert entry["se"][key] == pytest.approx(values.std(ddof=1) / np.sqrt(3))
    # Random probes vary with the seed: a spread over seeds per task; k = 0 (deterministic methods): none.
    assert all(se["weighted_tau"] > 0 for se in entry["per_task_se"].values())
    assert all(se["weighted_tau"] == 0 for se in report["results"]["knn"]["0"]["per_task_se"].values())
    assert "over tasks" in report["protocol"]["se"] and "over seeds" in report["protocol"]["se"]


def test_kept_predictions_are_the_ones_scored(three_tasks):
    bench, report = three_tasks
    kept = report["predictions"]
    assert kept["method"] == "knn" and set(kept["by_setting"]) == {"0", "3"}
    for setting, by_task in kept["by_setting"].items():
        for task, points in by_task.items():
            t = bench.records.tasks.index(task)
            assert len(points["true"]) == bench.eval_mask[t].sum() - int(setting)  # probes left out
            assert set(points["true"]) <= set(bench.records.scores[t, bench.eval_mask[t]].tolist())
            if setting == "0":  # the same prediction for every seed: seed 0's tau is the reported one
                tau = float(metrics.weighted_tau(np.array(points["true"]), np.array(points["pred"])))
                assert tau == pytest.approx(report["results"]["knn"]["0"]["per_task"][task]["weighted_tau"], abs=1e-6)
    with pytest.raises(ValueError, match="keep_predictions: 'nope' is not one of the methods"):
        evaluation.evaluate(bench, {"knn": KnnTask()}, evaluation.TasksOut(probes=(0,), seeds=1),
                            keep_predictions="nope")
