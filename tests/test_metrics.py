"""Tests for fennec_jax.eval.metrics: every metric against scipy or a NumPy reference."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fennec_jax.eval import metrics



def _correlation(statistic):
    """scipy statistic with the module's convention: constant input gives 0."""
    def metric_1d(t, p):
        if np.ptp(t) == 0 or np.ptp(p) == 0:
            return 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return statistic(t, p)
    return metric_1d


CORRELATIONS = {
    "weighted_tau": _correlation(lambda t, p: stats.weightedtau(t, p, rank=None).statistic),
    "kendall_tau": _correlation(lambda t, p: stats.kendalltau(t, p).statistic),
    "spearman": _correlation(lambda t, p: stats.spearmanr(t, p).statistic),
    "pearson": _correlation(lambda t, p: stats.pearsonr(t, p).statistic),
}


def _top1_regret(t, p):
    return t.max() - t[np.argmax(p)]


def _top1_regret_normalized(t, p):
    return 0.0 if t.max() == t.min() else _top1_regret(t, p) / (t.max() - t.min())


# ranking_metrics key -> reference.
RANKING_METRICS = {
    "weighted_tau": CORRELATIONS["weighted_tau"],
    "kendall": CORRELATIONS["kendall_tau"],
    "spearman": CORRELATIONS["spearman"],
    "pearson": CORRELATIONS["pearson"],
    "top1_regret": _top1_regret,
    "top1_regret_normalized": _top1_regret_normalized,
}


def _descending(p, k):
    return np.argsort(-p, kind="stable")[:k]  # ties: lowest index first


def _topk_hit_rate(t, p, k):
    return float(np.any(t[_descending(p, k)] == t.max()))


def _ndcg_at_k(t, p, k):
    gain = t - t.min()
    discount = 1 / np.log2(np.arange(2, min(k, len(t)) + 2))
    ideal = np.sort(gain)[::-1][:k] @ discount
    return 0.0 if ideal == 0 else gain[_descending(p, k)] @ discount / ideal


def reference(metric_1d, true, pred, mask=None):
    """Applies a NumPy/scipy ``metric_1d(t, p)`` per task on the valid subset; NaN for
    tasks with fewer than 2 valid entries."""
    true, pred = np.broadcast_arrays(np.asarray(true, np.float64), np.asarray(pred, np.float64))
    mask = np.ones(true.shape, bool) if mask is None else np.broadcast_to(mask, true.shape)
    out = np.empty(true.shape[:-1])
    for index in np.ndindex(out.shape):
        t, p = true[index][mask[index]], pred[index][mask[index]]
        out[index] = metric_1d(t, p) if len(t) >= 2 else np.nan
    return out


def scores(seed, shape, ties=None):
    """(true, pred) float32 arrays; ``ties`` in {None, 'true', 'pred', 'both'} makes
    that side small integers (many ties)."""
    rng = np.random.default_rng(seed)
    true = rng.normal(size=shape)
    pred = 0.5 * true + rng.normal(size=shape)
    if ties in ("true", "both"):
        true = rng.integers(0, 4, size=shape).astype(float)
    if ties in ("pred", "both"):
        pred = rng.integers(0, 3, size=shape).astype(float)
    return true.astype(np.float32), pred.astype(np.float32)


@pytest.mark.parametrize("name", sorted(CORRELATIONS))
@pytest.mark.parametrize("ties", [None, "true", "pred", "both"])
def test_correlations_match_scipy(name, ties):
    true, pred = scores(0, (6, 41), ties)
    got = getattr(metrics, name)(true, pred)
    assert got.shape == (6,) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, reference(CORRELATIONS[name], true, pred), atol=2e-6)


def test_weighted_tau_reference_values():
    # Row 0: scipy's docstring example (5 entries, padded with masked NaN); row 1:
    # entries equal in (true, pred), which scipy ranks by decreasing index.
    true = np.array([[12, 2, 1, 12, 2, np.nan, np.nan, np.nan], [3, 3, 3, 1, 1, 2, 2, 0]])
    pred = np.array([[1, 4, 7, 1, 0, np.nan, np.nan, np.nan], [1, 1, 2, 0, 0, 2, 1, 5]])
    mask = ~np.isnan(true)
    expected = [-0.4157652301037516, stats.weightedtau(true[1], pred[1], rank=None).statistic]
    np.testing.assert_allclose(metrics.weighted_tau(true, pred, mask), expected, atol=1e-6)
    np.testing.assert_allclose(metrics.weighted_tau(pred, true, mask)[0], -0.7181341329699028,
                               atol=1e-6)


def test_float64_with_x64():
    true, pred = scores(1, (3, 29), ties="true")
    with jax.enable_x64(True):
        got = metrics.ranking_metrics(true.astype(np.float64), pred.astype(np.float64))
        assert all(v.dtype == jnp.float64 for v in got.values())
    for key, metric_1d in RANKING_METRICS.items():
        np.testing.assert_allclose(got[key], reference(metric_1d, true, pred), atol=1e-12,
                                   err_msg=key)


def test_masked_entries_are_ignored_even_when_nan():
    true, pred = scores(2, (6, 41), ties="both")
    mask = np.random.default_rng(3).random((6, 41)) < 0.6
    mask[0] = False  # no valid entry
    mask[1, 1:] = False  # one valid entry
    mask[2, :2], mask[2, 2:] = True, False  # two valid entries
    true_nan = np.where(mask, true, np.nan)
    pred_nan = np.where(mask, pred, np.nan)
    for name, metric_1d in CORRELATIONS.items():
        got = getattr(metrics, name)(true_nan, pred_nan, mask)
        np.testing.assert_allclose(got, reference(metric_1d, true, pred, mask), atol=2e-6,
                                   err_msg=name)
    assert np.isnan(got[:2]).all() and abs(got[2]) == 1


def test_batches_broadcast_over_seeds():
    true, _ = scores(4, (3, 20))
    _, pred = scores(5, (2, 3, 20))  # [S, T, M] against true[T, M]
    got = metrics.ranking_metrics(true, pred)
    assert set(got) == set(RANKING_METRICS)
    for key, metric_1d in RANKING_METRICS.items():
        assert got[key].shape == (2, 3)
        np.testing.assert_allclose(got[key], reference(metric_1d, true, pred), atol=2e-6,
                                   err_msg=key)


@pytest.mark.parametrize("name", sorted(CORRELATIONS))
def test_constant_or_short_input(name):
    true, pred = scores(12, (6, 41))
    true[0], pred[1] = 0.1, 7.0  # constant true, constant pred: 0
    mask = np.ones((6, 41), bool)
    mask[2, 1:] = False  # one valid entry: NaN
    mask[3:5, 2:] = False  # two valid entries: +-1
    true[3:5, :2], pred[3, :2], pred[4, :2] = [1, 2], [3, 5], [5, 3]
    got = getattr(metrics, name)(true, pred, mask)
    np.testing.assert_allclose(got[:5], [0, 0, np.nan, 1, -1], atol=1e-6)


@pytest.mark.parametrize("m", [1, 2])
def test_one_or_two_models(m):
    got = metrics.ranking_metrics(np.arange(m, dtype=np.float32), np.arange(m)[::-1])
    expected = np.nan if m == 1 else -1.0
    for key in ("weighted_tau", "kendall", "spearman", "pearson"):
        np.testing.assert_allclose(got[key], expected, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(got["top1_regret"], np.nan if m == 1 else 1.0)
    np.testing.assert_allclose(got["top1_regret_normalized"], np.nan if m == 1 else 1.0)


def test_top1_regret_and_topk_hit_rate():
    true, pred = scores(6, (5, 12), ties="both")  # ties in pred: lowest index chosen
    mask = np.random.default_rng(7).random((5, 12)) < 0.8
    true, pred = np.where(mask, true, np.nan), np.where(mask, pred, np.nan)
    np.testing.assert_allclose(metrics.top1_regret(true, pred, mask),
                               reference(_top1_regret, true, pred, mask), atol=1e-6)
    for k in (1, 3, 20):
        np.testing.assert_array_equal(
            metrics.topk_hit_rate(true, pred, k, mask),
            reference(lambda t, p: _topk_hit_rate(t, p, k), true, pred, mask))
    np.testing.assert_array_equal(metrics.topk_hit_rate(true, pred, 1, mask),
                                  metrics.top1_regret(true, pred, mask) == 0)


def test_top1_regret_normalized_is_a_fraction_of_the_range():
    true, pred = scores(8, (5, 12), ties="both")
    mask = np.random.default_rng(9).random((5, 12)) < 0.8
    mask[0, :2], mask[0, 2:] = True, False  # two valid entries: regret 0 or the whole range
    got = metrics.top1_regret_normalized(np.where(mask, true, np.nan), pred, mask)
    np.testing.assert_allclose(got, reference(_top1_regret_normalized, true, pred, mask), atol=1e-6)
    assert float(got[0]) in (0.0, 1.0) and np.all((got >= 0) & (got <= 1))
    # Units do not matter: the same task in other units (x 100 + 7) gives the same value.
    np.testing.assert_allclose(metrics.top1_regret_normalized(100 * true + 7, pred, mask), got, atol=1e-6)
    t = np.array([0.5, 0.9, 0.1, 0.7])
    assert float(metrics.top1_regret_normalized(t, np.array([0, 0, 1, 0]))) == pytest.approx(1.0)  # the worst
    assert float(metrics.top1_regret_normalized(t, np.array([0, 0, 0, 1]))) == pytest.approx(0.25)
    assert float(metrics.top1_regret_normalized(np.ones(4), t)) == 0.0  # constant true


def test_top1_regret_closed_form():
    true = np.array([0.1, 0.9, 0.5, 0.9])
    assert float(metrics.top1_regret(true, [1.0, 0.0, 2.0, 2.0])) == pytest.approx(0.4)
    assert float(metrics.top1_regret(true, np.ones(4))) == pytest.approx(0.8)  # index 0


def test_ndcg_at_k():
    true, pred = scores(8, (5, 12), ties="both")
    mask = np.random.default_rng(9).random((5, 12)) < 0.8
    true, pred = np.where(mask, true, np.nan), np.where(mask, pred, np.nan)
    for k in (1, 5, 30):
        np.testing.assert_allclose(
            metrics.ndcg_at_k(true, pred, k, mask),
            reference(lambda t, p: _ndcg_at_k(t, p, k), true, pred, mask), atol=1e-6)
    true = np.array([3.0, 1.0, 2.0, 0.0])
    assert float(metrics.ndcg_at_k(true, true, 2)) == pytest.approx(1.0)
    # Reversed prediction: gains [0, 1] / ideal [3, 2], discounts [1, 1/log2(3)].
    expected = (1 / np.log2(3)) / (3 + 2 / np.log2(3))
    assert float(metrics.ndcg_at_k(true, -true, 2)) == pytest.approx(expected, rel=1e-6)
    assert float(metrics.ndcg_at_k(np.ones(4), true, 2)) == 0.0  # constant true


def test_large_m_matches_scipy():
    true, pred = scores(10, (20_000,))
    got = metrics.ranking_metrics(true, pred)
    assert float(got["kendall"]) == pytest.approx(stats.kendalltau(true, pred).statistic, abs=1e-4)
    assert float(got["spearman"]) == pytest.approx(stats.spearmanr(true, pred).statistic, abs=1e-4)
    assert float(got["weighted_tau"]) == pytest.approx(
        stats.weightedtau(true, pred, rank=None).statistic, abs=1e-4)


def test_jit_and_vmap():
    true, pred = scores(11, (6, 41))  # the shape of the scipy comparisons above
    expected = metrics.kendall_tau(true, pred)
    np.testing.assert_allclose(jax.jit(metrics.kendall_tau)(true, pred), expected, atol=1e-7)
    np.testing.assert_allclose(jax.vmap(metrics.kendall_tau)(true, pred), expected, atol=1e-7)


def test_non_finite_inside_mask():
    true, pred = np.array([1.0, 2.0, 3.0]), np.array([1.0, np.nan, 3.0])
    with pytest.raises(ValueError, match="`pred` must be finite inside `mask`"):
        metrics.spearman(true, pred)
    assert np.isnan(jax.jit(metrics.spearman)(true, pred))  # traced: propagates as NaN
    assert float(metrics.spearman(true, pred, np.array([True, False, True]))) == 1.0


@pytest.mark.parametrize("call, message", [
    (lambda: metrics.pearson(np.ones(3), np.ones(4)), "same last axis"),
    (lambda: metrics.pearson(1.0, 2.0), "shape"),
    (lambda: metrics.pearson(np.ones((2, 0)), np.ones((2, 0))), "at least one model"),
    (lambda: metrics.pearson(np.ones(3), np.ones(3), np.ones(3)), "boolean"),
    (lambda: metrics.pearson(np.ones((2, 3)), np.ones((4, 3))), "broadcast"),
    (lambda: metrics.topk_hit_rate(np.ones(3), np.ones(3), 0), "`k`"),
    (lambda: metrics.ndcg_at_k(np.ones(3), np.ones(3), 2.0), "`k`"),
])
def test_bad_arguments_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()
