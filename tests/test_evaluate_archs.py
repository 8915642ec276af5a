"""Graph features, ridge, the cold-start splits of the evaluation loop, and experiments/evaluate_archs.py."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats

import dataclasses

from fennec_jax.archs import graph_features as ab
from fennec_jax.archs.graphs import OPS, ArchGraph, save_jsonl
from fennec_jax.benchmarks.bundled import as_benchmark
from fennec_jax.core.records import normal_scores, records_from_matrix
from fennec_jax.core.ridge import fit_ridge
from fennec_jax.eval import protocol
from fennec_jax.methods.baselines import family_popularity
from fennec_jax.methods.base import MethodBase, get_method

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(**flag_values):
    """Runs experiments/evaluate_archs.py in a subprocess, so its absl flags stay out of this
    process (other tests load other programs); a failed run raises with the program's stderr."""
    command = [sys.executable, "-m", "experiments.evaluate_archs",
               *(f"--{key}={value}" for key, value in flag_values.items())]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT)
    if done.returncode != 0:
        raise ValueError(done.stderr[-3000:])


# A diamond: input -> conv -> {relu, max_pool} -> add -> output.
DIAMOND = ArchGraph.from_ops(
    "diamond", ["input", "conv", "relu", "max_pool", "add", "output"],
    [[0, 1], [1, 2], [1, 3], [2, 4], [3, 4], [4, 5]], [{}, {"channels_out": 64}, {}, {}, {}, {}])


def _relabelled(graph, perm):
    inverse = np.argsort(perm)
    return ArchGraph(graph.name, graph.ops[inverse], graph.attrs[inverse], graph.attr_mask[inverse], perm[graph.edges])


# ----------------------------------------------------------------------------- features


def test_op_count_features_count_ops_and_shape():
    chain = ArchGraph.from_ops("chain", ["input", "conv", "conv", "output"], [[0, 1], [1, 2], [2, 3]])
    x = ab.op_count_features([DIAMOND, chain])
    assert x.shape == (2, len(OPS) + 3)
    assert x[0, OPS.index("conv")] == 1 and x[1, OPS.index("conv")] == 2 and x[0, OPS.index("add")] == 1
    np.testing.assert_array_equal(x[:, len(OPS):], [[6, 6, 4], [4, 3, 3]])  # nodes, edges, depth


def test_wl_labels_ignore_node_order_but_see_direction_and_attributes():
    perm = np.array([3, 0, 5, 1, 4, 2])
    labels, graph_of_node = ab.wl_node_labels([DIAMOND, _relabelled(DIAMOND, perm)], iterations=2)
    assert labels.shape == (12, 3) and graph_of_node.tolist() == [0] * 6 + [1] * 6
    np.testing.assert_array_equal(labels[:6], labels[6:][perm])  # node i became node perm[i]
    reversed_diamond = ArchGraph(DIAMOND.name, DIAMOND.ops, DIAMOND.attrs, DIAMOND.attr_mask, DIAMOND.edges[:, ::-1])
    np.testing.assert_array_equal(ab.wl_node_labels([reversed_diamond], 0)[0], labels[:6, :1])
    assert not np.array_equal(ab.wl_node_labels([reversed_diamond], 1)[0][:, 1], labels[:6, 1])
    wider = ArchGraph.from_ops("w", DIAMOND.op_names, DIAMOND.edges, [{}, {"channels_out": 256}, {}, {}, {}, {}])
    assert ab.wl_node_labels([wider], 0)[0][1, 0] != labels[1, 0]
    x = ab.wl_features([DIAMOND], iterations=2, dim=64)
    assert x.shape == (1, 64) and x.sum() == 3 * 6


def test_normal_scores_are_normal_quantiles_of_ranks():
    scores = np.array([[3.0, 1.0, 2.0, 2.0, 9.0], [1.0, 2.0, 3.0, 4.0, 0.0]])
    mask = np.array([[True] * 5, [True, True, True, False, True]])
    z = normal_scores(scores, mask)
    np.testing.assert_allclose(z[0], scipy.stats.norm.ppf((scipy.stats.rankdata(scores[0]) - 0.5) / 5))
    np.testing.assert_allclose(z[1, mask[1]], scipy.stats.norm.ppf((np.array([2, 3, 4, 1]) - 0.5) / 4))
    assert z[1, 3] == 0


# ----------------------------------------------------------------------------- ridge


def _ridge_closed_form(x, y, alpha):
    """Ridge on standardised x with an unpenalised intercept, as raw-unit weights and bias."""
    mean, scale = x.mean(0), x.std(0)
    xs = (x - mean) / scale
    coef = np.linalg.solve(xs.T @ xs + alpha * np.eye(x.shape[1]), xs.T @ (y - y.mean(0))) / scale[:, None]
    return coef, y.mean(0) - mean @ coef


@pytest.mark.parametrize("num_features", [4, 30])  # tall and wide designs (both Gram branches)
def test_fit_ridge_matches_the_closed_form(num_features):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, num_features)) * 3 + 1, rng.normal(size=(12, 2))
    vector_map = fit_ridge(x, y, l2=0.5)
    s = np.linalg.svd((x - x.mean(0)) / x.std(0), compute_uv=False)
    s = s[s > 1e-6 * s.max()]  # centring removes one direction when F >= M
    coef, bias = _ridge_closed_form(x, y, 0.5 * (s**2).mean())
    np.testing.assert_allclose(vector_map.weights, coef, atol=1e-8)
    np.testing.assert_allclose(vector_map.bias, bias, atol=1e-8)


def test_fit_ridge_picks_the_penalty_with_the_lowest_leave_one_out_error():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(15, 6))
    y = np.stack([x @ rng.normal(size=6), rng.normal(size=15)], 1) + 0.3 * rng.normal(size=(15, 2))
    grid = (0.01, 0.1, 1.0, 10.0)
    chosen = fit_ridge(x, y, l2=grid).l2
    # Brute force: refit without each row (features scaled as in the full fit, intercept
    # refitted on the remaining rows) and predict it.
    xs = (x - x.mean(0)) / x.std(0)
    s2 = (np.linalg.svd(xs, compute_uv=False) ** 2).mean()
    for column in range(2):
        errors = []
        for l2 in grid:
            residuals = []
            for i in range(len(x)):
                keep = np.arange(len(x)) != i
                xk, yk = xs[keep] - xs[keep].mean(0), y[keep, column] - y[keep, column].mean()
                coef = np.linalg.solve(xk.T @ xk + l2 * s2 * np.eye(6), xk.T @ yk)
                residuals.append(y[i, column] - y[keep, column].mean() - (xs[i] - xs[keep].mean(0)) @ coef)
            errors.append(np.mean(np.square(residuals)))
        assert chosen[column] == grid[int(np.argmin(errors))], (column, errors)


def test_fit_ridge_fits_masked_columns_on_their_rows():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(20, 3)), rng.normal(size=(20, 2))
    mask = np.ones((20, 2), bool)
    mask[:5, 1] = False
    y_holes = np.where(mask, y, np.nan)
    both = fit_ridge(x, y_holes, mask, l2=1.0)
    alone = fit_ridge(x[5:], y[5:, 1:], l2=1.0)
    np.testing.assert_allclose(both.weights[:, 1], alone.weights[:, 0])
    with pytest.raises(ValueError, match="x, y"):
        fit_ridge(x, y_holes, l2=1.0)


# ----------------------------------------------------------------------------- methods on NAS-Bench-Graph


@pytest.fixture(scope="module")
def nas_bench_graph_subset():
    pytest.importorskip("nas_bench_graph")
    from fennec_jax.archs import graphs
    from fennec_jax.archs import nas_bench_graph

    table = nas_bench_graph.load_table()
    rows = np.random.default_rng(0).permutation(len(table.arch_hashes))[:1500]
    zoo = graphs.from_nas_bench_graph_table(table)
    return [zoo[i] for i in rows], table.scores[rows].T, table.datasets


BASELINES = {"opcount_ridge": get_method("graph_regression", features="opcount"),
             "wl_ridge": get_method("graph_regression", features="wl"),
             "both_rf": get_method("graph_regression", features="both", regressor="forest")}


def _graph_benchmark(graphs, scores, tasks):
    records = records_from_matrix([g.name for g in graphs], list(tasks), scores)
    return as_benchmark(dataclasses.replace(records, model_side={"graph": list(graphs)}))


def test_baselines_rank_held_out_nas_bench_graph_architectures(nas_bench_graph_subset):
    bench = _graph_benchmark(*nas_bench_graph_subset)
    report = protocol.evaluate(bench, BASELINES, protocol.ArchitecturesOut(train_sizes=(300,), seeds=1))
    means = {name: report["results"][name]["300"]["mean"]["kendall"] for name in BASELINES}
    # Measured here: opcount_ridge 0.460, wl_ridge 0.449, both_rf 0.537. A random ranking of
    # the 1,200 held-out models has tau 0 +- 0.02 (per task; the 8-task mean is tighter), so
    # 0.3 is far above chance and leaves a margin for regressions of detail, not of substance.
    assert min(means.values()) > 0.3, means
    assert means["both_rf"] > means["opcount_ridge"]  # the forest on both feature sets is best


def test_architectures_out_rejects_bad_arguments(nas_bench_graph_subset):
    graphs, scores, tasks = nas_bench_graph_subset
    small = _graph_benchmark(graphs[:10], scores[:, :10], tasks)
    with pytest.raises(ValueError, match="train_sizes"):
        protocol.evaluate(small, BASELINES, protocol.ArchitecturesOut(train_sizes=(9,), seeds=1))
    no_graphs = as_benchmark(records_from_matrix([g.name for g in graphs[:10]], list(tasks), scores[:, :10]))
    with pytest.raises(ValueError, match="graph"):
        protocol.evaluate(no_graphs, BASELINES, protocol.ArchitecturesOut(train_sizes=(5,), seeds=1))


# ----------------------------------------------------------------------------- the program


def test_evaluate_archs_end_to_end_on_nas_bench_graph(tmp_path):
    pytest.importorskip("nas_bench_graph")
    _run(benchmark="nas_bench_graph", max_models=300, train=50, seeds=1, epochs=5, pretrain_epochs=1, ensemble=1,
         methods="archi2vec,archi2vec_ssl,graph_regression:features=opcount,graph_regression:features=wl,"
                 "graph_regression:features=both+regressor=forest", out=tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["results"]) == {"archi2vec", "archi2vec_ssl", "graph_regression:features=opcount",
                                      "graph_regression:features=wl", "graph_regression:features=both+regressor=forest"}
    tasks = ["cora", "citeseer", "pubmed", "cs", "physics", "photo", "computers", "arxiv"]
    for by_size in report["results"].values():
        row = by_size["50"]
        assert set(row["mean"]) == {"kendall", "spearman"}
        assert list(row["per_task"]) == tasks
        per_task = [row["per_task"][t]["kendall"] for t in tasks]
        assert row["mean"]["kendall"] == pytest.approx(np.mean(per_task))
        assert -1 <= row["mean"]["kendall"] <= 1 and -1 <= row["mean"]["spearman"] <= 1
    assert report["pretrain_seconds"] > 0 and "(300 models)" in (tmp_path / "report.md").read_text()
    markdown = (tmp_path / "report.md").read_text()
    assert "| graph_regression:features=opcount | 50 |" in markdown


def _records_and_graphs(tmp_path, num_models=16):
    rng = np.random.default_rng(3)
    graphs, lines = [], ["model,task,score"]
    for m in range(num_models):
        convs = int(rng.integers(1, 5))
        ops = ["input", *["conv"] * convs, "output"]
        graphs.append(ArchGraph.from_ops(f"net{m}", ops, [[i, i + 1] for i in range(len(ops) - 1)]))
        lines += [f"net{m},taskA,{convs + rng.normal(scale=0.1):.4f}", f"net{m},taskB,{-convs + rng.normal():.4f}"]
    (tmp_path / "records.csv").write_text("\n".join(lines) + "\n")
    save_jsonl(graphs, tmp_path / "graphs.jsonl")
    return graphs


def test_evaluate_archs_on_records_and_graphs(tmp_path):
    _records_and_graphs(tmp_path)
    _run(records=tmp_path / "records.csv", graphs=tmp_path / "graphs.jsonl", methods="graph_regression", train=8,
         seeds=2, out=tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert list(report["results"]["graph_regression"]["8"]["per_task"]) == ["taskA", "taskB"]
    # taskA grows with the number of convs, which op counts see exactly.
    assert report["results"]["graph_regression"]["8"]["per_task"]["taskA"]["kendall"] > 0.6


def test_evaluate_archs_names_a_model_without_a_graph(tmp_path):
    graphs = _records_and_graphs(tmp_path)
    save_jsonl(graphs[:5] + graphs[6:], tmp_path / "graphs.jsonl")  # net5 has records but no graph
    with pytest.raises(ValueError, match=r"graphs\.jsonl: no graph for model 'net5'"):
        _run(records=tmp_path / "records.csv", graphs=tmp_path / "graphs.jsonl", methods="graph_regression",
             train=8, seeds=1, out=tmp_path / "out")


def _family_records():
    """Two families (a: models 0-3, b: 4-7) on 3 tasks; family a is better on tasks 0 and 1,
    b on task 2; within a family, model order follows the index."""
    from fennec_jax.core.records import records_from_matrix

    family = np.array(["a"] * 4 + ["b"] * 4)
    within = np.tile(np.arange(4), 2) * 0.1
    scores = np.stack([np.where(family == "a", 1.0, 0.0) + within,
                       np.where(family == "a", 2.0, 0.5) + within,
                       np.where(family == "a", 0.0, 1.0) + within])
    records = records_from_matrix([f"m{i}" for i in range(8)], ["t0", "t1", "t2"], scores, np.ones((3, 8), bool))
    return records, family


def test_hide_models_and_folds():
    records, family = _family_records()
    hidden = records.hide_models(np.array([1, 5]))
    assert not hidden.mask[:, [1, 5]].any() and hidden.mask.sum() == 18
    assert np.isnan(hidden.scores[:, [1, 5]]).all() and hidden.models == records.models
    folds = protocol.model_folds(8, 3, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(8)) and [len(f) for f in folds] == [3, 3, 2]
    by_family = protocol.model_folds(8, 3, seed=0, groups=family)
    assert [f.tolist() for f in by_family] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ValueError, match="num_folds"):
        protocol.model_folds(8, 9, seed=0)


def test_family_popularity_uses_the_family_or_the_nearest_one():
    records, family = _family_records()
    pred = family_popularity(records.hide_models(np.array([0])), family)
    # Model 0 hidden: its family's visible models (1-3) predict it.
    assert pred[0, 0] == pytest.approx(pred[0, 1]) and pred[0, 0] > pred[0, 4]
    # Family b hidden except model 7: nearest by embedding is then b itself; all of b hidden:
    # the family with the nearest mean embedding (a here), else the mean over visible models.
    embeddings = np.array([[0.0]] * 4 + [[0.1]] * 4)
    partly = family_popularity(records.hide_models(np.arange(4, 7)), family, embeddings)
    np.testing.assert_allclose(partly[:, 4], partly[:, 7])
    hide_b = records.hide_models(np.arange(4, 8))
    nearest = family_popularity(hide_b, family, embeddings)
    np.testing.assert_allclose(nearest[:, 4], nearest[:, 0])
    three = np.array(["a", "a", "c", "c", "b", "b", "b", "b"])
    near_c = np.array([[0.0], [0.0], [1.0], [1.0], [0.9], [0.9], [0.9], [0.9]])
    pred_c = family_popularity(hide_b, three, near_c)
    np.testing.assert_allclose(pred_c[:, 4], pred_c[:, 2])
    assert not np.allclose(pred_c[:, 4], pred_c[:, 0])


class _Predictor(MethodBase):
    """A test method whose completion of the history is a given function of it."""

    def __init__(self, name, predict):
        self.name, self.predict = name, predict

    def fit(self, history, seed=0):
        return self.predict(history)

    def complete(self, state):
        return state

    def score(self, state, evidence):
        return state[0]


def test_models_out_split_scores_assembled_predictions():
    records, family = _family_records()
    seen = []

    def oracle(history):
        seen.append(int((~history.mask.any(0)).sum()))
        return records.scores

    methods = {"oracle": _Predictor("oracle", oracle),
               "family": _Predictor("family", lambda h: family_popularity(h, family)),
               "constant": _Predictor("constant", lambda h: np.zeros((3, 8)))}
    report = protocol.evaluate(as_benchmark(records), methods, protocol.ModelsOut(tuple(protocol.model_folds(8, 4, seed=1))))
    results = report["results"]
    assert seen == [2, 2, 2, 2]  # each fold hides its own two models
    assert results["oracle"]["all"]["mean"]["kendall"] == pytest.approx(1.0)
    assert results["constant"]["all"]["mean"]["kendall"] == 0.0
    assert 0.3 < results["family"]["all"]["mean"]["kendall"] < 1.0  # right families, ties within them
    assert set(results["family"]["all"]["per_task"]) == {"t0", "t1", "t2"}
    with pytest.raises(ValueError, match="partition"):
        protocol.evaluate(as_benchmark(records), {"oracle": methods["oracle"]}, protocol.ModelsOut((np.arange(4),)))