"""Model Spider (fennec_jax.methods.spider): loss, training, rank-only supervision, engine scoring,
re-ranking, checkpoints, bad inputs, and the registered method in leave-one-task-out."""

import dataclasses

import jax
import numpy as np
import pytest
import scipy.stats

import fennec_jax as fj
from fennec_jax.ranking import engine
from fennec_jax.methods import spider
from fennec_jax.core.checkpoint import CheckpointError
from fennec_jax.methods.base import TaskEvidence

T, M = 12, 8
# Small and short: every test fit shares these shapes, so the fit compiles once per widths.
CONFIG = spider.SpiderConfig(d=8, heads=2, steps=150, learning_rate=0.05, rerank_choices=(0, 2),
                             train_probes=(0, 3), valid_probes=(0, 3), valid_draws=2)


def _planted(seed=0, missing=0.1):
    """History whose tasks share one planted model order (plus noise), a few cells missing."""
    rng = np.random.default_rng(seed)
    quality = np.linspace(2.0, -2.0, M)  # model 0 best
    scores = 70 + 5 * (quality[None, :] + 0.3 * rng.standard_normal((T, M)))
    mask = rng.random((T, M)) > missing
    mask[:, :2] = True
    scores = np.where(mask, scores, np.nan)
    names = [f"m{i}" for i in range(M)]
    return fj.records_from_matrix(names, [f"t{i}" for i in range(T)], scores, mask), quality


@pytest.fixture(scope="module")
def fitted():
    records, quality = _planted()
    return records, quality, spider.fit_spider(records, CONFIG, seed=0)


def _numpy_listmle(pred, true, mask):
    total = 0.0
    for p, y, keep in zip(pred, true, mask):
        s = p[keep][np.argsort(-y[keep], kind="stable")]
        total += sum(np.log(np.exp(s[i:]).sum()) - s[i] for i in range(len(s)))
    return total / len(pred)


def test_listmle_matches_numpy():
    rng = np.random.default_rng(3)
    pred, true = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    mask = rng.random((4, 6)) > 0.3
    got = float(spider.listmle_loss(pred, true, mask))
    np.testing.assert_allclose(got, _numpy_listmle(pred, true, mask), rtol=1e-5)
    # Only the order of `true` matters; a perfectly ordered, well separated pred has small loss.
    np.testing.assert_allclose(float(spider.listmle_loss(pred, np.exp(true), mask)), got, rtol=1e-6)
    assert float(spider.listmle_loss(100 * true, true)) < 1.0 < float(spider.listmle_loss(-100 * true, true))
    with pytest.raises(ValueError, match=r"\[T, M\]"):
        spider.listmle_loss(pred, true[:, :3])


def test_training_lowers_the_loss_and_recovers_the_planted_order(fitted):
    records, quality, state = fitted
    true = np.where(records.mask, records.scores, 0.0)
    untrained = dataclasses.replace(state, rerank=0, params=spider._init(
        state.net, spider._design(records, None, None), state.widths, jax.random.PRNGKey(1)))
    trained = dataclasses.replace(state, rerank=0)
    losses = [float(spider.listmle_loss(spider.score_tasks(s, [TaskEvidence()] * T), true, records.mask))
              for s in (untrained, trained)]
    assert losses[1] < losses[0] - 1.0
    scores = spider.score_tasks(state, [TaskEvidence()])[0]
    assert scipy.stats.spearmanr(scores, quality)[0] > 0.95


def test_rank_only_history_with_missing_cells_recovers_the_order(fitted):
    records, quality, _ = fitted
    # Ranks only (0 = worst among each task's observed models); unobserved cells stay missing.
    worst_first = np.argsort(np.argsort(np.where(records.mask, records.scores, -np.inf), 1), 1)
    ranks = np.where(records.mask, worst_first - (~records.mask).sum(1, keepdims=True), np.nan)
    assert np.nanmin(ranks) == 0 and np.isnan(ranks).any()
    rank_records = fj.records_from_matrix(records.models, records.tasks, ranks, records.mask)
    state = spider.fit_spider(rank_records, CONFIG, seed=1)
    scores = spider.score_tasks(state, [TaskEvidence()])[0]
    assert scipy.stats.spearmanr(scores, quality)[0] > 0.95


def test_engine_scores_equal_direct_scores(fitted):
    records, _, state = fitted
    state = dataclasses.replace(state, rerank=0)
    evidences = [TaskEvidence(), TaskEvidence([1, 4, 6], [3.0, 9.0, 1.0], metadata={"task": "t3"}),
                 TaskEvidence([0, 2], [50.0, 40.0])]
    batched = spider.score_tasks(state, evidences)
    one_by_one = np.stack([fj.get_method("spider", config=CONFIG).score(state, ev) for ev in evidences])
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-5)
    tokens, bias = state.model_vectors()
    h = spider.task_vectors(state, evidences)
    np.testing.assert_allclose(batched, h @ tokens.T + bias, rtol=1e-5, atol=1e-5)
    _, top = engine.top_k(tokens, h, 3, model_bias=bias)
    np.testing.assert_array_equal(np.asarray(top), np.argsort(-batched, axis=1, kind="stable")[:, :3])
    # Probe scores in other units (a positive affine change) give the same scores.
    units = [TaskEvidence([1, 4, 6], [3.0, 9.0, 1.0]), TaskEvidence([1, 4, 6], [-7.0, 5.0, -11.0])]
    a, b = spider.score_tasks(state, units)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_reranking_reorders_only_the_top_candidates(fitted):
    _, _, state = fitted
    evidences = [TaskEvidence(), TaskEvidence([1, 4, 6], [3.0, 9.0, 1.0])]
    first = spider.score_tasks(dataclasses.replace(state, rerank=0), evidences)
    second = spider.score_tasks(dataclasses.replace(state, rerank=4), evidences)
    for a, b in zip(first, second):
        order_a, order_b = np.argsort(-a, kind="stable"), np.argsort(-b, kind="stable")
        assert set(order_a[:4]) == set(order_b[:4])
        np.testing.assert_array_equal(order_a[4:], order_b[4:])
        np.testing.assert_array_equal(a[order_a[4:]], b[order_b[4:]])
    assert state.rerank in (0, 2) and {r for r, _ in state.validation} == {0, 2}


def test_save_restore_round_trip(fitted, tmp_path):
    _, _, state = fitted
    path = tmp_path / "spider"
    spider.save_spider(str(path), state)
    restored = spider.restore_spider(str(path))
    assert restored.models == state.models and restored.config == state.config and restored.rerank == state.rerank
    evidences = [TaskEvidence(), TaskEvidence([0, 3, 5], [1.0, 2.0, 0.5])]
    np.testing.assert_array_equal(spider.score_tasks(restored, evidences), spider.score_tasks(state, evidences))
    with pytest.raises(CheckpointError, match="already exists"):
        spider.save_spider(str(path), state)
    with pytest.raises(CheckpointError, match="no checkpoint folder"):
        spider.restore_spider(str(tmp_path / "missing"))


def test_proxies_and_model_table_paths_and_bad_inputs():
    # Two groups of tasks rank the models in opposite orders; the proxy tells the group.
    rng = np.random.default_rng(5)
    group = np.arange(T) % 2
    base = np.linspace(1.0, -1.0, M)
    scores = np.where(group[:, None] == 0, base, -base) + 0.1 * rng.standard_normal((T, M))
    names = [f"m{i}" for i in range(M)]
    records = fj.records_from_matrix(names, [f"t{i}" for i in range(T)], scores)
    proxies = {f"t{i}": np.array([1.0 - group[i], group[i], 0.1 * rng.standard_normal()]) for i in range(T)}
    table = {n: rng.standard_normal(3) for n in names}
    method = spider.Spider(config=CONFIG, model_table=table, task_proxies=proxies)
    state = method.fit(records)
    for g, sign in ((0, 1.0), (1, -1.0)):
        pred = method.score(state, TaskEvidence(proxy=np.array([1.0 - g, g, 0.0])))
        assert scipy.stats.spearmanr(pred, sign * base)[0] > 0.8
    with pytest.raises(ValueError, match="expected proxy width 3"):
        method.score(state, TaskEvidence(proxy=np.ones(5)))
    with pytest.raises(ValueError, match=r"probe_models: indices must lie in \[0, 8\)"):
        method.score(state, TaskEvidence([0, 9], [1.0, 2.0]))
    with pytest.raises(ValueError, match="model_table: no vector for 1 history models"):
        spider.fit_spider(records, CONFIG, model_table={n: table[n] for n in names[1:]})
    with pytest.raises(ValueError, match="divisible"):
        spider.SpiderConfig(d=7, heads=2)
    # Unseen models get tokens from the table, scored next to the history's models, which keep
    # their scores. A new model with m0's (m7's) table row scores as m0 (m7) does with its own
    # free vector zeroed and the mean bias: placed by its features alone.
    first_stage = dataclasses.replace(state, rerank=0)
    grown = spider.add_models(first_stage, ["new0", "new1"], np.stack([table["m0"], table["m7"]]))
    assert grown.models == (*names, "new0", "new1")
    evidences = [TaskEvidence(), TaskEvidence(proxy=np.array([0.0, 1.0, 0.0])),
                 TaskEvidence([1, 4, 6], [3.0, 9.0, 1.0])]
    after = spider.score_tasks(grown, evidences)
    np.testing.assert_allclose(after[:, :M], spider.score_tasks(first_stage, evidences), rtol=1e-5, atol=1e-5)
    p = first_stage.params["params"]
    twins = np.isin(np.arange(M), [0, 7])
    featured_only = {"params": {**p, "model_free": np.where(twins[:, None], 0.0, p["model_free"]),
                                "model_bias": np.where(twins, p["model_bias"].mean(), p["model_bias"])}}
    duplicates = spider.score_tasks(dataclasses.replace(first_stage, params=featured_only), evidences)[:, twins]
    np.testing.assert_allclose(after[:, M:], duplicates, rtol=1e-5, atol=1e-5)
    assert np.abs(after[:, M] - after[:, M + 1]).max() > 1e-2  # the rows place them apart
    with pytest.raises(ValueError, match=r"table_rows: expected finite \[1, 3\]"):
        spider.add_models(state, ["new2"], np.ones((1, 4)))


def test_registered_spider_in_leave_one_task_out():
    # One more task than the fixture, history = all other tasks: the fit has the fixture's shapes.
    records, _ = _planted(seed=2)
    extra = fj.records_from_matrix(records.models, (*records.tasks, "new"),
                                   np.concatenate([records.scores, records.scores[:1] + 0.5]))
    bench = fj.as_benchmark(extra, targets=("t0", "new"))
    methods = {"spider": fj.get_method("spider", config=CONFIG), "random": fj.get_method("random")}
    report = fj.evaluate(bench, methods, fj.TasksOut(probes=(0, 3), seeds=2, history="all"))
    spider_tau = report["results"]["spider"]["0"]["mean"]["weighted_tau"]
    random_tau = report["results"]["random"]["0"]["mean"]["weighted_tau"]
    assert spider_tau > 0.8 > random_tau


def test_probe_adaptation_is_the_ridge_solution():
    """`_adapt_to_probes` equals the d x d ridge solution computed directly in NumPy, fits the
    probes' z-scores (up to an offset) as l2 -> 0, and leaves h alone with < 2 probes."""
    rng = np.random.default_rng(5)
    b, k, d = 3, 4, 6
    h = rng.standard_normal((b, d))
    tokens, bias = rng.standard_normal((b, k, d)), rng.standard_normal((b, k))
    z = rng.standard_normal((b, k))
    ok = np.array([[True] * 4, [True, True, True, False], [True, False, False, False]])
    gain, l2 = 1.7, 0.3
    got = np.asarray(spider._adapt_to_probes(h, tokens, bias, z, ok, gain, l2))
    for i in range(b):
        x = tokens[i][ok[i]] - tokens[i][ok[i]].mean(0)
        y = gain * z[i][ok[i]] - (bias[i][ok[i]] - bias[i][ok[i]].mean())
        want = np.linalg.solve(x.T @ x + l2 * np.eye(d), x.T @ y + l2 * h[i]) if ok[i].sum() > 1 else h[i]
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[2], h[2])  # one probe: unchanged
    exact = np.asarray(spider._adapt_to_probes(h[:1], tokens[:1], bias[:1], z[:1], ok[:1], gain, 1e-6))
    fitted = tokens[0] @ exact[0] + bias[0]
    np.testing.assert_allclose(fitted - fitted.mean(), gain * z[0] - gain * z[0].mean(), atol=1e-3)
