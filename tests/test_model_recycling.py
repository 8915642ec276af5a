"""The bundled model_recycling benchmark, and the fixed-ranking baselines (size, source_score)
that it and timm_imagenet carry the evidence for."""

import dataclasses
import time

import numpy as np
import pytest

from fennec_jax.benchmarks.bundled import BENCHMARKS, load_benchmark
from fennec_jax.core.evidence import MissingEvidenceError, TaskEvidence
from fennec_jax.core.records import records_from_matrix
from fennec_jax.eval import protocol
from fennec_jax.methods.base import get_method


def test_model_recycling_loads_fast_with_its_metadata():
    start = time.perf_counter()
    bench = BENCHMARKS.get("model_recycling")()  # uncached
    assert time.perf_counter() - start < 1.0
    records = bench.records
    assert (records.num_models, records.num_tasks) == (2175, 36) and bench.targets == records.tasks
    assert int(records.mask.sum()) == 38376  # 49 % of 78,300 cells
    assert records.dropped == {"empty cell (not fine-tuned in the source)": 78300 - 38376}
    assert records.models[:2] == ("roberta-base", "ibm/ColD-Fusion-itr13-seed2")
    assert records.tasks[0] == "20_newsgroup" and "base_model" not in records.tasks
    np.testing.assert_allclose(records.scores[records.task_index("ag_news"), :2], [89.6342, 89.3])
    meta = records.model_meta
    assert sorted(meta) == ["family", "layers", "mnli_linear_probe", "model_type", "params"]
    assert dict(zip(*np.unique(meta["family"].astype(str), return_counts=True))) == {
        "bert-base-cased": 326, "bert-base-uncased": 572, "roberta-base": 1277}
    assert meta["params"][0] == 124647170 and np.all(np.isfinite(meta["params"]))
    # The linear probe is empty for the three base models only.
    missing = [records.models[m] for m in np.flatnonzero(np.isnan(meta["mnli_linear_probe"]))]
    assert sorted(missing) == ["bert-base-cased", "bert-base-uncased", "roberta-base"]
    assert meta["mnli_linear_probe"][1] == pytest.approx(84.7945)
    assert not np.any(bench.eval_mask & ~records.mask) and np.all(bench.eval_mask.sum(1) >= 500)


def _records(**meta):
    scores = np.arange(12.0).reshape(2, 6)
    return records_from_matrix([f"m{i}" for i in range(6)], ["a", "b"], scores, model_meta=meta)


def test_size_ranks_by_params_and_missing_last():
    method = get_method("size")
    state = method.fit(_records(params=np.array([5.0, np.nan, 1.0, 3e9, np.nan, 2.0])))
    scores = method.score(state, TaskEvidence())
    assert state["column"] == "params"
    np.testing.assert_array_equal(np.argsort(-scores, kind="stable"), [3, 0, 5, 2, 1, 4])
    assert scores[1] == scores[4] < scores[2]  # missing values tie at the bottom
    # Another column by configuration; the timm name params_m is in the default lookup.
    assert get_method("size", column="depth").fit(_records(depth=np.arange(6.0)))["column"] == "depth"
    assert method.fit(_records(params_m=np.arange(6.0)))["column"] == "params_m"


def test_source_score_lookup_order_and_history_task():
    method = get_method("source_score")
    both = _records(mnli_linear_probe=np.arange(6.0), source_score=-np.arange(6.0))
    assert method.fit(both)["column"] == "source_score"  # a user's own column first
    # A history task serves as the source score (timm_imagenet: the task 'imagenet').
    state = get_method("source_score", column="b").fit(_records())
    np.testing.assert_array_equal(state["scores"], np.arange(6.0, 12.0))


@pytest.mark.parametrize("method, meta, message", [
    ("size", {}, r"size: needs a per-model number.*'params' or 'params_m'.*model metadata none.*size:column=NAME"),
    ("source_score", {"params": np.ones(6)}, r"'mnli_linear_probe'.*model metadata \['params'\]"),
    ("size", {"params": np.array(["big"] * 6, dtype=object)}, r"'params' is not numeric"),
    ("size", {"params": np.full(6, np.nan)}, r"'params' has no value for any model"),
])
def test_missing_evidence_says_which_column(method, meta, message):
    with pytest.raises(MissingEvidenceError, match=message):
        get_method(method).fit(_records(**meta))


def test_fixed_rankings_on_model_recycling():
    """At k = 0 through the evaluation loop, source_score (the MNLI linear probe) beats size on
    two real tasks, and equals scipy's weighted tau of the probe column itself."""
    import scipy.stats

    bench = dataclasses.replace(load_benchmark("model_recycling"), targets=("rte", "sst2"))
    methods = {name: get_method(name) for name in ("size", "source_score")}
    report = protocol.evaluate(bench, methods, protocol.TasksOut(probes=(0,), seeds=1))
    tau = {name: {t: v["weighted_tau"] for t, v in report["results"][name]["0"]["per_task"].items()}
           for name in methods}
    assert tau["source_score"] == pytest.approx({"rte": 0.4819, "sst2": 0.3671}, abs=1e-4)
    assert tau["size"] == pytest.approx({"rte": 0.2516, "sst2": 0.1529}, abs=1e-4)
    records, rte = bench.records, bench.records.task_index("rte")
    probe = records.model_meta["mnli_linear_probe"]
    probe = np.where(np.isnan(probe), -1.0, probe)  # the base models (no probe) last
    observed = bench.eval_mask[rte]
    direct = scipy.stats.weightedtau(records.scores[rte, observed], probe[observed], rank=None)[0]
    assert tau["source_score"]["rte"] == pytest.approx(direct, abs=1e-6)


def test_normal_scores_let_a_failed_run_weigh_no_more_than_its_rank():
    # m1 is best on tasks b and c, but its run on task a diverged; m0 is second everywhere.
    scores = np.array([[0.90, 0.10, 0.91, 0.89], [0.80, 0.85, 0.70, 0.60], [0.80, 0.85, 0.70, 0.60]])
    records = records_from_matrix([f"m{i}" for i in range(4)], ["a", "b", "c"], scores)
    z, normal = (get_method("popularity", transform=t) for t in ("z", "normal"))
    assert np.argmax(z.score(z.fit(records), TaskEvidence())) == 0  # z-scores: the failed run sinks m1
    assert np.argmax(normal.score(normal.fit(records), TaskEvidence())) == 1  # ranks: best twice, worst once
    np.testing.assert_allclose(normal.fit(records), records.transformed("normal").mean(0))
    knn = get_method("knn_task", transform="normal")
    state = knn.fit(records)
    np.testing.assert_array_equal(state["z"], records.transformed("normal"))
    with pytest.raises(ValueError, match="transform: expected one of z, normal"):
        get_method("knn_task", transform="ranks")
