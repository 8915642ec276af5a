"""Probe suggestion policies: distinct unprobed picks within budget, clear errors, D-optimal
picks shrinking the posterior more than random ones, Thompson sampling hunting the best
model, sequential and batch modes, and fennec's posterior matching its scores."""

import dataclasses

import numpy as np
import pytest

from fennec_jax.core.evidence import TaskEvidence
from fennec_jax.core.records import records_from_matrix
from fennec_jax.methods.base import MethodBase, get_method
from fennec_jax.methods.baselines import Popularity
from fennec_jax.methods.suggest import (POLICIES, LinearPosterior, UnsupportedPolicyError, choose_probes,
                                        information_gains, policy_from_spec, probe_precision, suggest)


@dataclasses.dataclass
class Linear(MethodBase):
    """Scores linear in the task vector with an exact Gaussian posterior (ridge toward 0,
    offset free): the world the policies assume."""

    features: np.ndarray
    noise: float = 0.1
    l2: float = 1.0
    name: str = "linear"
    seen: list = dataclasses.field(default_factory=list)

    def fit(self, history, seed=0):
        return None

    def task_posterior(self, state, evidence):
        self.seen.append(evidence.probe_models.copy())
        x, probes = self.features, evidence.probe_models
        precision = probe_precision(x, probes, self.l2)
        vec = np.zeros(x.shape[1])
        if len(probes) >= 2:
            xc = x[probes] - x[probes].mean(0)
            vec = np.linalg.solve(precision, xc.T @ (evidence.probe_scores - evidence.probe_scores.mean()))
        return LinearPosterior(x @ vec, x, probes, precision, self.noise)

    def score(self, state, evidence):
        return self.task_posterior(state, evidence).scores


def _features(num_models=30, dim=3, seed=0):
    """``x[M, D]``: a low-rank world with one dominant direction."""
    return np.random.default_rng(seed).normal(size=(num_models, dim)) * np.array([3.0, 1.0, 0.3])[:dim]


@pytest.mark.parametrize("spec", ["random", "dopt", "thompson", "thompson:draws=16", "mixed", "mixed:hunt=2"])
@pytest.mark.parametrize("budget", [1, 4])
def test_each_policy_suggests_distinct_unprobed_candidates_within_budget(spec, budget):
    method = Linear(_features())
    evidence = TaskEvidence([2, 7], [0.3, 0.9])
    candidates = np.arange(0, 30, 2)  # even models only; 2 is a probe already
    out = suggest(method, None, evidence, budget, spec, candidates=candidates, seed=1)
    assert out.models.shape == (budget,) and out.gains.shape == (budget,)
    assert len(set(out.models.tolist())) == budget
    assert set(out.models.tolist()) <= set(candidates.tolist()) - {2}
    assert out.policy == spec and out.gain
    assert np.isnan(out.gains).all() == (spec == "random")


def test_budget_larger_than_the_models_left_is_an_error():
    method = Linear(_features(num_models=5))
    evidence = TaskEvidence([0, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="3 candidate models are left.*at most 3"):
        suggest(method, None, evidence, 4, "dopt")
    with pytest.raises(ValueError, match="at most 1"):
        suggest(method, None, evidence, 2, "random", candidates=[0, 1, 4])
    with pytest.raises(ValueError, match="budget: expected an integer >= 1"):
        suggest(method, None, evidence, 0, "dopt")


@pytest.fixture(scope="module")
def fennec_space():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(6, 3)) @ rng.normal(size=(3, 14)) + 0.1 * rng.normal(size=(6, 14))
    records = records_from_matrix([f"m{i}" for i in range(14)], [f"t{i}" for i in range(6)], scores)
    fennec = get_method("fennec", preset="mf", steps=50)
    return fennec, fennec.fit(records)


def test_unknown_or_repeated_models_and_unknown_policies_are_errors(fennec_space):
    method = Linear(_features(num_models=5))
    with pytest.raises(ValueError, match=r"probes: model indices must lie in \[0, 4\).*only models of the history"):
        suggest(Popularity(), np.zeros(4), TaskEvidence([0, 9], [0.1, 0.2]), 1, "random")
    with pytest.raises(ValueError, match=r"probe_models: indices must lie in \[0, 14\)"):  # fennec's own check
        suggest(*fennec_space, TaskEvidence([0, 14], [0.1, 0.2]), 1, "dopt")
    with pytest.raises(ValueError, match="repeated"):
        TaskEvidence([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="candidates: repeated"):
        suggest(method, None, TaskEvidence(), 1, "dopt", candidates=[3, 3])
    with pytest.raises(ValueError, match="candidates: model indices"):
        suggest(method, None, TaskEvidence(), 1, "dopt", candidates=[7])
    with pytest.raises(ValueError, match="unknown probe policy 'nope'; choose from random, dopt, thompson"):
        policy_from_spec("nope")
    with pytest.raises(ValueError, match="unknown config key 'beta'"):
        policy_from_spec("thompson:beta=2")


def test_a_policy_needing_a_posterior_says_which_methods_have_one():
    with pytest.raises(UnsupportedPolicyError, match="'popularity' does not give; use a fennec method"):
        suggest(Popularity(), np.zeros(4), TaskEvidence(), 1, "thompson")
    out = suggest(Popularity(), np.zeros(4), TaskEvidence(), 2, "random", seed=0)  # random needs none
    assert len(set(out.models.tolist())) == 2


def test_information_gains_and_rank_one_updates_match_the_log_determinant():
    x = _features(num_models=12, dim=3, seed=4)
    probes = np.array([1, 5, 8])
    precision = probe_precision(x, probes, 2.0)
    gains = information_gains(x, x[probes], precision)
    post = LinearPosterior(np.zeros(12), x, probes, precision, 0.5)
    for m in (0, 3, 11):
        grown = probe_precision(x, np.append(probes, m), 2.0)
        np.testing.assert_allclose(post.with_probe(m).precision, grown, atol=1e-12)
        want = 0.5 * (np.linalg.slogdet(grown)[1] - np.linalg.slogdet(precision)[1])
        assert gains[m] == pytest.approx(want, abs=1e-12)
    np.testing.assert_allclose(information_gains(x, x[:0], precision), 0.0)  # one probe fixes only the offset
    np.testing.assert_allclose(probe_precision(x, [4], 2.0), 2.0 * np.eye(3))


def test_dopt_shrinks_the_posterior_more_than_random_picks():
    x = _features(num_models=60, dim=3, seed=2)
    method = Linear(x)
    picks = suggest(method, None, TaskEvidence(), 4, "dopt").models
    volume = lambda probes: np.linalg.slogdet(probe_precision(x, probes, 1.0))[1]  # noqa: E731
    rng = np.random.default_rng(0)
    random_sets = [volume(rng.choice(60, 4, replace=False)) for _ in range(300)]
    assert volume(picks) > np.quantile(random_sets, 0.95)
    # Sequential and batch D-optimal picks agree: its gains ignore the measured scores.
    evidence, chosen = choose_probes(method, None, TaskEvidence(), 4, "dopt", reveal=lambda m: float(m))
    np.testing.assert_array_equal(chosen.models, picks)
    assert chosen.gains[0] == 0.0 and (chosen.gains[1:] > 0).all()


def test_thompson_finds_the_best_model_when_the_posterior_is_sure():
    x = _features(num_models=20, dim=2, seed=3)
    true_vec = np.array([1.0, -0.5])
    truth = x @ true_vec
    method = Linear(x, noise=1e-4)
    probes = np.argsort(truth)[:3]  # the three worst: enough to pin the task vector down
    evidence = TaskEvidence(probes, truth[probes])
    out = suggest(method, None, evidence, 1, "thompson", seed=0)
    assert out.models[0] == np.argmax(truth)
    assert out.gains[0] > 0.9  # probability of being the best untried model


def test_sequential_mode_reveals_each_pick_before_the_next_and_batch_mode_plans_at_once():
    x = _features(num_models=15, seed=5)
    truth = x @ np.array([0.5, 1.0, -1.0])
    for batch, posterior_calls in ((False, [0, 1, 2]), (True, [0])):
        method = Linear(x)
        revealed = []

        def reveal(m):
            revealed.append(m)
            return truth[m]

        policy = policy_from_spec(f"thompson:batch={str(batch).lower()}")
        evidence, chosen = choose_probes(method, None, TaskEvidence(metadata={"task": "t"}), 3, policy, reveal,
                                         seed=7)
        assert [len(p) for p in method.seen] == posterior_calls
        assert revealed == chosen.models.tolist() == evidence.probe_models.tolist()
        np.testing.assert_array_equal(evidence.probe_scores, truth[chosen.models])
        assert evidence.metadata == {"task": "t"}


def test_mixed_learns_with_dopt_then_hunts_with_thompson():
    x = _features(num_models=20, dim=2, seed=3)
    truth = x @ np.array([1.0, -0.5])
    method = Linear(x, noise=1e-4)
    probes = np.argsort(truth)[:3]
    evidence = TaskEvidence(probes, truth[probes])
    mixed = suggest(method, None, evidence, 3, "mixed", seed=0)
    dopt = suggest(method, None, evidence, 2, "dopt", seed=0)
    np.testing.assert_array_equal(mixed.models[:2], dopt.models)  # the learning picks are dopt's
    np.testing.assert_allclose(mixed.gains[:2], dopt.gains)
    left = np.setdiff1d(np.arange(20), np.r_[probes, dopt.models])
    assert mixed.models[2] == left[np.argmax(truth[left])]  # the hunt: the best model left, sure posterior
    assert 0.9 < mixed.gains[2] <= 1.0
    hunt_all = suggest(method, None, evidence, 2, "mixed:hunt=2", seed=0)
    assert hunt_all.models[0] == np.argmax(np.where(np.isin(np.arange(20), probes), -np.inf, truth))
    with pytest.raises(ValueError, match="hunt must be >= 1"):
        policy_from_spec("mixed:hunt=0")


def test_registry_lists_the_policies():
    assert {"random", "dopt", "thompson", "mixed"} <= set(POLICIES.names())
    assert policy_from_spec("dopt:batch=true").batch and policy_from_spec("dopt:batch=true").name == "dopt:batch=true"


def test_fennec_posterior_is_its_probe_ridge(fennec_space):
    fennec, space = fennec_space
    evidence = TaskEvidence([1, 4, 9], [0.2, 0.5, -0.3])
    post = fennec.task_posterior(space, evidence)
    score = fennec.score(space, evidence)
    assert np.corrcoef(post.scores, score)[0, 1] == pytest.approx(1.0)  # the same order, affine units
    np.testing.assert_allclose(post.precision, probe_precision(space.model_vecs, [1, 4, 9], space.config.probe_l2))
    assert post.noise > 0 and post.cov().shape == (space.dim, space.dim)
    picks = suggest(fennec, space, evidence, 3, "dopt").models
    assert not set(picks.tolist()) & {1, 4, 9}


def test_fennec_posterior_keeps_the_order_of_the_source_affinity_term():
    from fennec_jax.methods.fennec import Fennec, SpaceConfig

    rng = np.random.default_rng(1)
    tasks, models = [f"t{i}" for i in range(7)], [f"m{i}" for i in range(16)]
    sources = np.array([tasks[i % 4] for i in range(16)])
    scores = rng.normal(size=(7, 2)) @ rng.normal(size=(2, 16)) + 0.3 * (sources[None] == np.array(tasks)[:, None])
    records = records_from_matrix(models, tasks, scores, model_meta={"source": sources})
    fennec = Fennec(configs=(SpaceConfig(d=2, d_data=1, affinity_weight=0.8, steps=50),))
    space = fennec.fit(records.select_tasks(np.arange(1, 7)))
    assert space.affinity("t0").any()
    evidence = TaskEvidence([2, 5, 11], [0.4, 0.1, 0.9], metadata={"task": "t0"})
    post = fennec.task_posterior(space, evidence)
    assert np.corrcoef(post.scores, fennec.score(space, evidence))[0, 1] == pytest.approx(1.0)
    without = dataclasses.replace(space, config=dataclasses.replace(space.config, affinity_weight=0.0))
    assert np.corrcoef(post.scores, fennec.score(without, evidence))[0, 1] < 0.999  # the term matters here
