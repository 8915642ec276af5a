"""Smoke tests of fennec_jax.eval.bounds (./run.sh bounds) on a planted low-rank matrix."""

import numpy as np

from fennec_jax.eval import bounds
from fennec_jax.benchmarks.bundled import as_benchmark
from fennec_jax.core.records import records_from_matrix


def _planted(tasks=12, models=150, rank=3, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(tasks, rank)) + np.array([1.0] + [0.0] * (rank - 1))  # a shared direction
    V = rng.normal(size=(models, rank))
    return 70.0 + 5.0 * (U @ V.T) + noise * rng.normal(size=(tasks, models))


def test_masked_als_recovers_hidden_cells_of_a_low_rank_matrix():
    scores = _planted(tasks=20, models=200, noise=0.0)
    mask = np.random.default_rng(1).random(scores.shape) > 0.4
    z = (scores - 70.0) / 5.0
    U, V = bounds.masked_als(z, mask, rank=3, l2=1e-6)
    hidden = ~mask
    assert np.corrcoef((U @ V.T)[hidden], z[hidden])[0, 1] > 0.99


def test_oracle_at_the_true_rank_is_near_perfect_and_probes_help_the_anchor():
    scores = _planted()
    records = records_from_matrix([f"m{i}" for i in range(scores.shape[1])], [f"t{i}" for i in range(scores.shape[0])],
                                  scores)
    bench = as_benchmark(records, "planted")
    result = bounds.bounds(bench, probes=(0, 5), seeds=3, oracle_ranks=(3,), anchor_rank=3, hindsight_sets=3,
                           lp_column=None, held_out=("t0", "t1", "t2"), progress=lambda msg: None)
    rows = result["rows"]
    assert rows["oracle r=3"][0]["mean"]["weighted_tau"] > 0.95
    assert rows["anchor"][5]["mean"]["weighted_tau"] > rows["anchor"][0]["mean"]["weighted_tau"] + 0.05
    assert rows["anchor"][5]["mean"]["weighted_tau"] > 0.9
    assert set(rows) >= {"popularity", "anchor", "anchor, best of 3 sets", "anchor, 90th pct set",
                         "nearest task (hindsight)", "best history task (hindsight)"}
    assert "source_score" not in rows and "anchor+lp" not in rows
    assert "Max Pearson" in bounds.table(result)
