"""The Fennec transfer space: fitting, task vectors from probes / proxies / metadata, methods."""

import dataclasses

import numpy as np
import pytest
import scipy.stats

from fennec_jax.core.ridge import RidgeMap
from fennec_jax.methods import fennec as ts
from fennec_jax.core.records import records_from_matrix, standardize
from fennec_jax.methods.base import TaskEvidence, get_method

# One config shape for most tests keeps compilation to a few programs.
PLAIN = ts.SpaceConfig(d=2, d_data=0, l2_free=0.01, l2_side=0.1, steps=400, learning_rate=0.05)


def planted(num_tasks=10, num_models=24, rank=2, seed=0, observed=0.8):
    """Records of a rank-``rank`` matrix, each task in its own units (scale and offset)."""
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=(num_models, rank)), rng.normal(size=(num_tasks, rank))
    scores = (v @ u.T) * rng.uniform(0.5, 3.0, (num_tasks, 1)) + rng.uniform(-5, 50, (num_tasks, 1))
    mask = rng.random(scores.shape) < observed
    mask[:, :3] = True  # every task observes a few models
    records = records_from_matrix([f"m{i}" for i in range(num_models)], [f"t{i}" for i in range(num_tasks)],
                                  scores, mask)
    return records, scores


@pytest.fixture(scope="module")
def planted_space():
    records, scores = planted()
    return records, scores, ts.fit_space(records, PLAIN, seed=0, side_info=False)


def test_fit_is_deterministic_for_a_seed(planted_space):
    records, _, space = planted_space
    again = ts.fit_space(records, PLAIN, seed=0, side_info=False)
    for name in ("model_vecs", "model_bias", "task_vecs", "task_bias", "prior_vec"):
        np.testing.assert_array_equal(getattr(space, name), getattr(again, name))
    other = ts.fit_space(records, PLAIN, seed=1, side_info=False)
    assert not np.array_equal(space.model_vecs, other.model_vecs)


def test_recovers_planted_low_rank_matrix(planted_space):
    records, scores, space = planted_space
    # Truth in the fit's units: each task standardised by its observed cells.
    mean = np.nanmean(np.where(records.mask, scores, np.nan), 1, keepdims=True)
    std = np.nanstd(np.where(records.mask, scores, np.nan), 1, keepdims=True)
    truth = (scores - mean) / std
    pred = space.task_vecs @ space.model_vecs.T + space.model_bias + space.task_bias[:, None]
    held_out = ~records.mask
    assert held_out.sum() > 20
    assert np.corrcoef(pred[held_out], truth[held_out])[0, 1] > 0.98
    assert np.abs(pred[records.mask] - standardize(scores, records.mask)[records.mask]).max() < 0.1


def _direct_probe_solve(space, probes, probe_scores, prior, l2):
    """The same estimate by a generic least-squares solve of the augmented system."""
    vecs, bias = space.model_vecs[probes], space.model_bias[probes]
    scale = max(np.std(vecs @ prior + bias), 0.3)
    y = (probe_scores - probe_scores.mean()) / probe_scores.std() * scale
    k, d = vecs.shape
    a = np.block([[np.ones((k, 1)), vecs], [np.zeros((d, 1)), np.sqrt(l2) * np.eye(d)]])
    rhs = np.concatenate([y - bias, np.sqrt(l2) * prior])
    return np.linalg.lstsq(a, rhs, rcond=None)[0][1:]


@pytest.mark.parametrize("k, l2", [(2, 0.5), (4, 1.0), (7, 3.0)])
def test_probe_vector_closed_form_matches_least_squares(planted_space, k, l2):
    records, scores, space = planted_space
    rng = np.random.default_rng(k)
    probes = rng.choice(records.num_models, size=k, replace=False)
    prior = space.prior_vec + rng.normal(scale=0.3, size=space.dim)
    probe_scores = scores[0, probes]
    vec = ts.probe_task_vector(space.model_vecs, space.model_bias, probes, probe_scores, prior, l2)
    np.testing.assert_allclose(vec, _direct_probe_solve(space, probes, probe_scores, prior, l2), rtol=1e-8, atol=1e-10)
    # Probe scores in other units (positive affine change) give the same vector.
    rescaled = ts.probe_task_vector(space.model_vecs, space.model_bias, probes, 7.0 * probe_scores - 3.0, prior, l2)
    np.testing.assert_allclose(rescaled, vec, rtol=1e-8, atol=1e-10)


def test_zero_or_one_probe_gives_the_prior(planted_space):
    _, scores, space = planted_space
    prior = space.prior_vec
    for probes in ([], [5]):
        vec = ts.probe_task_vector(space.model_vecs, space.model_bias, np.array(probes, dtype=int),
                                   scores[0, probes], prior, 1.0)
        np.testing.assert_array_equal(vec, prior)
    same = ts.probe_task_vector(space.model_vecs, space.model_bias, np.array([1, 2, 3]), np.full(3, 4.0), prior, 1.0)
    np.testing.assert_array_equal(same, prior)
    method = ts.Fennec(configs=(PLAIN,), side_info=False)
    np.testing.assert_array_equal(method.score(space, TaskEvidence()), space.scores(prior))


def test_probes_move_the_ranking_toward_the_truth(planted_space):
    records, scores, space = planted_space
    z = standardize(scores, np.ones_like(records.mask))
    method = ts.Fennec(configs=(PLAIN,), side_info=False)
    gains = []
    for t in range(records.num_tasks):
        probes = np.random.default_rng(t).choice(records.num_models, size=6, replace=False)
        rest = np.setdiff1d(np.arange(records.num_models), probes)
        prior = method.score(space, TaskEvidence())
        probed = method.score(space, TaskEvidence(probes, scores[t, probes]))
        gains.append(scipy.stats.spearmanr(z[t, rest], probed[rest])[0]
                     - scipy.stats.spearmanr(z[t, rest], prior[rest])[0])
    assert np.mean(gains) > 0.2


def test_bad_probe_inputs_raise(planted_space):
    _, _, space = planted_space
    args = (space.model_vecs, space.model_bias)
    with pytest.raises(ValueError, match="probe_models"):
        ts.probe_task_vector(*args, np.array([0, space.model_vecs.shape[0]]), np.ones(2), space.prior_vec, 1.0)
    with pytest.raises(ValueError, match="probe_models"):
        ts.probe_task_vector(*args, np.array([-1, 2]), np.ones(2), space.prior_vec, 1.0)
    with pytest.raises(ValueError, match="probe_scores"):
        ts.probe_task_vector(*args, np.array([0, 1]), np.array([1.0, np.nan]), space.prior_vec, 1.0)
    with pytest.raises(ValueError, match="prior"):
        ts.probe_task_vector(*args, np.array([0, 1]), np.ones(2), np.ones(space.dim + 1), 1.0)
    with pytest.raises(ValueError, match="l2"):
        ts.probe_task_vector(*args, np.array([0, 1]), np.ones(2), space.prior_vec, 0.0)
    with pytest.raises(ValueError, match="probe_models"):
        ts.Fennec(configs=(PLAIN,)).score(space, TaskEvidence(np.array([99]), np.array([1.0])))


def test_proxy_map_on_synthetic_features(planted_space):
    records, _, space = planted_space
    rng = np.random.default_rng(3)
    mixing = rng.normal(size=(space.dim, 6))
    proxies = space.task_vecs @ mixing + 0.01 * rng.normal(size=(records.num_tasks, 6))
    with_map = space.with_proxy_map(proxies, l2=1e-3)
    new_vec = rng.normal(size=space.dim)
    predicted = with_map.prior_task_vector(proxy=new_vec @ mixing)
    np.testing.assert_allclose(predicted, new_vec, atol=0.1)
    # The map is an ordinary ridge regression with an unpenalised intercept.
    fitted = RidgeMap.fit(proxies, space.task_vecs, l2=0.5)
    x = np.c_[np.ones(len(proxies)), proxies - proxies.mean(0)]
    penalty = np.diag([0.0] + [0.5] * 6)
    coef = np.linalg.solve(x.T @ x + penalty, x.T @ space.task_vecs)
    np.testing.assert_allclose(fitted.weights, coef[1:], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(fitted.bias, coef[0] - proxies.mean(0) @ coef[1:], rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="width 6"):
        with_map.prior_task_vector(proxy=np.ones(5))
    with pytest.raises(ValueError, match="proxy map"):
        space.prior_task_vector(proxy=np.ones(6))
    method = ts.Fennec(configs=(PLAIN,))
    np.testing.assert_array_equal(method.score(space, TaskEvidence(proxy=np.ones(6))), space.scores(space.prior_vec))
    np.testing.assert_allclose(method.score(with_map, TaskEvidence(proxy=new_vec @ mixing)),
                               with_map.scores(predicted))
    with pytest.raises(ValueError, match="proxies"):
        space.with_proxy_map(np.ones((records.num_tasks + 1, 6)))


def two_kinds(seed=0, num_tasks=12, num_models=20):
    """Tasks of two kinds ('a' favours the first half of the models, 'b' the second)."""
    rng = np.random.default_rng(seed)
    kinds = np.array(["a", "b"] * (num_tasks // 2), dtype=object)
    favour = np.where(np.arange(num_models) < num_models // 2, 1.0, -1.0)
    sign = np.where(kinds == "a", 1.0, -1.0)[:, None]
    scores = sign * favour + 0.3 * rng.normal(size=(num_tasks, num_models))
    records = records_from_matrix([f"m{i}" for i in range(num_models)], [f"t{i}" for i in range(num_tasks)],
                                  scores, task_meta={"kind": kinds})
    return records, favour


def test_task_metadata_gives_an_informed_prior():
    records, favour = two_kinds()
    space = ts.fit_space(records, PLAIN, seed=0)
    assert space.metadata_map is not None
    for kind, sign in (("a", 1.0), ("b", -1.0)):
        scores = space.scores(space.prior_task_vector(metadata={"kind": kind}))
        assert scipy.stats.spearmanr(scores, sign * favour)[0] > 0.7
    # Without metadata the prior cannot tell the kinds apart.
    mean = space.scores(space.prior_task_vector())
    assert abs(scipy.stats.spearmanr(mean, favour)[0]) < 0.5
    evidence = TaskEvidence(metadata={"kind": "b"})
    assert scipy.stats.spearmanr(ts.Fennec(configs=(PLAIN,)).score(space, evidence), -favour)[0] > 0.7


def tied_zoo(seed=0, families=3, datasets=6):
    """Models = (family, source dataset); a model transfers best to datasets near its source.

    Datasets sit on a circle; similarity = cos(angle difference). Each dataset is also a task.
    """
    rng = np.random.default_rng(seed)
    angles = np.linspace(0, 2 * np.pi, datasets, endpoint=False)
    names = [f"Data{i}" for i in range(datasets)]
    fam_effect = rng.normal(size=families)
    models, family, source, rows = [], [], [], []
    for f in range(families):
        for s in range(datasets):
            models.append(f"f{f}_{names[s]}")
            family.append(f"f{f}")
            source.append(names[s])
            rows.append(0.3 * fam_effect[f] + np.cos(angles[s] - angles))
    scores = np.array(rows).T + 0.05 * rng.normal(size=(datasets, len(models)))
    mask = np.array([[src != task for src in source] for task in names])  # source == target unobserved
    records = records_from_matrix(models, [n.lower() for n in names], scores, mask,
                                  model_meta={"family": np.array(family, dtype=object),
                                              "source": np.array(source, dtype=object)})
    return records, scores


def test_tied_dataset_embedding_informs_a_hidden_source_dataset():
    records, scores = tied_zoo()
    config = ts.SpaceConfig(d=2, d_data=2, l2_free=1.0, l2_side=0.1, l2_data=0.1, steps=400, learning_rate=0.05)
    gains = []
    for hidden in range(records.num_tasks):
        history = records.without_task(hidden)
        space = ts.fit_space(history, config, seed=0)
        observed = records.mask[hidden]
        tied = space.scores(space.prior_task_vector(task=records.tasks[hidden].upper()))  # case-insensitive
        untied = space.scores(space.prior_task_vector())
        gains.append(scipy.stats.spearmanr(scores[hidden, observed], tied[observed])[0]
                     - scipy.stats.spearmanr(scores[hidden, observed], untied[observed])[0])
    assert np.mean(gains) > 0.3
    assert min(gains) > 0.0


def test_nonneg_mode_gives_nonnegative_factors(planted_space):
    records, _, _ = planted_space
    space = ts.fit_space(records, ts.NMF_CONFIG, seed=0, side_info=False)
    assert space.model_vecs.shape == (records.num_models, 5)
    assert np.all(space.model_vecs >= 0) and np.all(space.task_vecs >= 0)
    assert np.all(space.model_bias == 0) and np.all(space.task_bias == 0)
    assert np.all(space.prior_vec >= 0)
    with pytest.raises(ValueError, match="nonneg"):
        ts.SpaceConfig(nonneg=True, d_data=3)


def test_validation_picks_latent_dims_for_low_rank_data():
    records, _ = planted(num_tasks=8, num_models=24, seed=2, observed=1.0)
    grid = [dataclasses.replace(PLAIN, d=0), PLAIN]
    space = ts.fit_space(records, grid, seed=0, side_info=False, num_folds=3, probes=(0, 3), draws=2)
    assert space.config == PLAIN
    assert [c for c, _ in space.validation] == [PLAIN, grid[0]]
    assert space.model_vecs.shape == (records.num_models, PLAIN.d)


def test_bad_configs_and_history_raise(planted_space):
    records, _, _ = planted_space
    with pytest.raises(ValueError, match="configs"):
        ts.fit_space(records, [PLAIN, dataclasses.replace(PLAIN, steps=10)])
    with pytest.raises(ValueError, match="configs"):
        ts.fit_space(records, [])
    with pytest.raises(ValueError, match="l2_free"):
        ts.SpaceConfig(l2_free=-1.0)
    numeric = ts.FeatureEncoder((("kind", "numeric", (False, 0.0, 1.0, False)),))
    with pytest.raises(ValueError, match="metadata 'kind'"):
        numeric.transform({"kind": np.array(["x"], dtype=object)}, 1)


def test_nmf_reconstructs_a_planted_nonnegative_low_rank_matrix():
    """NMF mode on a non-negative rank-2 matrix with a fifth of its cells hidden: the factors
    reproduce each task's min-max scaled scores on the observed cells and predict the hidden ones."""
    rng = np.random.default_rng(0)
    scores = rng.uniform(size=(10, 2)) @ rng.uniform(size=(24, 2)).T
    mask = rng.random(scores.shape) < 0.8
    mask[:, :3] = True
    records = records_from_matrix([f"m{i}" for i in range(24)], [f"t{i}" for i in range(10)],
                                  np.where(mask, scores, np.nan), mask)
    space = ts.fit_space(records, ts.NMF_CONFIG, seed=0, side_info=False)
    observed = np.where(mask, scores, np.nan)
    low, high = np.nanmin(observed, 1, keepdims=True), np.nanmax(observed, 1, keepdims=True)
    truth = (scores - low) / (high - low)
    pred = space.task_vecs @ space.model_vecs.T
    assert np.abs(pred[mask] - truth[mask]).max() < 0.02
    assert np.corrcoef(pred[~mask], truth[~mask])[0, 1] > 0.99


@pytest.mark.parametrize("preset", ["nmf", "mf"])
def test_registered_presets_rank_a_planted_structure_better_than_popularity(preset):
    """Two kinds of tasks favour opposite halves of the zoo. Two probes in each half tell a
    held-out task's kind, which a low-rank space reads off and popularity (the history's mean,
    where the other kind is the majority) cannot."""
    records, _ = two_kinds()
    methods = (get_method("fennec", preset=preset), get_method("popularity"))
    probes = np.array([0, 1, 10, 11])
    rest = np.setdiff1d(np.arange(records.num_models), probes)
    taus = []
    for t in range(records.num_tasks):
        history, evidence = records.without_task(t), TaskEvidence(probes, records.scores[t, probes])
        taus.append([scipy.stats.spearmanr(records.scores[t, rest], m.score(m.fit(history, seed=0), evidence)[rest])[0]
                     for m in methods])
    fennec, popularity = np.array(taus).T
    assert fennec.min() > 0.5 and fennec.mean() > popularity.mean() + 1.0


def test_feature_encoder_handles_numeric_text_and_missing():
    meta = {
        "params": np.array([1e6, 2e7, np.nan, 5e8]),
        "family": np.array(["ResNet", "resnet", "vit", "ViT "], dtype=object),
        "constant": np.array([1.0, 1.0, 1.0, 1.0]),
    }
    encoder = ts.FeatureEncoder.fit(meta)
    assert [c[0] for c in encoder.columns] == ["family", "params"]
    x = encoder.transform(meta, 4)
    assert x.shape == (4, encoder.width) == (4, 4)
    np.testing.assert_array_equal(x[:, :2], [[1, 0], [1, 0], [0, 1], [0, 1]])  # case-insensitive one-hot
    logs = np.log([1e6, 2e7, 5e8])
    np.testing.assert_allclose(x[[0, 1, 3], 2], (logs - logs.mean()) / logs.std(), rtol=1e-6)
    np.testing.assert_array_equal(x[:, 3], [0, 0, 1, 0])  # missing indicator
    np.testing.assert_array_equal(encoder.transform_one({"family": "unknown"}), [0, 0, 0, 1])
    assert ts.FeatureEncoder.from_json(encoder.to_json()) == encoder


def test_source_profiles_subtract_the_family_mean():
    # 3 tasks x 4 models: families [0, 0, 1, 1], sources [a, b, a, -]; task 2 misses model 1.
    z = np.array([[1.0, -1.0, 2.0, 0.0], [0.0, 2.0, -1.0, 1.0], [3.0, 9.0, 1.0, -1.0]])
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 1, 1]], bool)
    family = np.array([0, 0, 1, 1])
    source = ts.one_hot([0, 1, 0, -1], 2)
    profiles = ts.source_profiles(z, mask, family, source)
    # By hand: family means per task, then the mean effect of each source's models.
    expected_a = [((1 - 0) + (2 - 1)) / 2, ((0 - 1) + (-1 - 0)) / 2, ((3 - 3) + (1 - 0)) / 2]
    expected_b = [-1 - 0, 2 - 1, np.nan]
    np.testing.assert_allclose(profiles, [expected_a, expected_b])


def test_source_affinity_is_the_profile_correlation():
    rng = np.random.default_rng(0)
    profiles = rng.normal(size=(4, 6))
    profiles[2, 1] = np.nan  # dataset 2 lacks task 1
    profiles[3, :4] = np.nan  # dataset 3 has only 2 tasks: too few
    model_sources = np.array([0, 1, 2, 3, -1, 1])
    affinity = ts.source_affinity(profiles, model_sources, dataset=1)
    keep = np.isfinite(profiles[2])
    expected = [scipy.stats.pearsonr(profiles[0], profiles[1])[0], 1.0,
                scipy.stats.pearsonr(profiles[2, keep], profiles[1, keep])[0], 0.0, 0.0, 1.0]
    np.testing.assert_allclose(affinity, expected, rtol=1e-10)
    with pytest.raises(ValueError, match="dataset"):
        ts.source_affinity(profiles, model_sources, dataset=4)


def test_affinity_weight_ranks_alike_sources_up():
    # Two families x sources; the hidden task 'd0' behaves like dataset 'd1' (models pre-trained
    # on d0 and d1 do well or badly on the same tasks), so d1-sourced models should rise.
    rng = np.random.default_rng(3)
    sources = [f"d{i}" for i in range(6)]
    num_tasks = 6
    effect = rng.normal(size=(6, num_tasks))  # [source, task]
    effect[1] = effect[0] + 0.1 * rng.normal(size=num_tasks)
    family_gap = np.array([0.0, 1.0])
    models = [(f, s) for f in range(2) for s in range(6)]
    scores = np.array([[family_gap[f] + effect[s, t] for f, s in models] for t in range(num_tasks)])
    meta = {"family": np.array([f"f{f}" for f, _ in models], dtype=object),
            "source": np.array([sources[s] for _, s in models], dtype=object)}
    records = records_from_matrix([f"m{i}" for i in range(len(models))], sources, scores,
                                  np.ones_like(scores, bool), model_meta=meta)
    history = records.without_task(0)
    space = ts.fit_space(history, dataclasses.replace(PLAIN, affinity_weight=1.0), seed=0)
    affinity = space.affinity("D0")  # case-insensitive
    assert affinity[1] > 0.9 and affinity[0] == 1.0 and affinity[7] > 0.9
    assert np.all(space.affinity("unknown") == 0)
    plain = space.scores(space.prior_task_vector())
    blended = space.task_scores(space.prior_task_vector(), "d0")
    np.testing.assert_allclose(blended, (plain - plain.mean()) / plain.std() + affinity)
    rank = lambda s, m: int((s > s[m]).sum())
    assert rank(blended, 1) < rank(plain, 1) and rank(blended, 7) < rank(plain, 7)
    np.testing.assert_array_equal(space.task_scores(space.prior_task_vector(), None), plain)


def test_model_features_place_models_without_records():
    records, scores = planted(num_tasks=12, num_models=40, seed=3, observed=1.0)
    rng = np.random.default_rng(3)
    features = scores.T[:, :4] + 0.01 * rng.normal(size=(40, 4))  # informative features of every model
    hidden = np.arange(30, 40)
    mask = records.mask.copy()
    mask[:, hidden] = False
    history = records_from_matrix(records.models, records.tasks, np.where(mask, scores, np.nan), mask)
    truth = standardize(scores, records.mask)

    def hidden_corr(space):
        pred = space.task_vecs @ space.model_vecs.T + space.model_bias
        return np.mean([np.corrcoef(pred[t, hidden], truth[t, hidden])[0, 1] for t in range(12)])

    with_features = ts.fit_space(history, PLAIN, seed=0, model_features=features)
    assert hidden_corr(with_features) > 0.9
    plain = ts.fit_space(history, PLAIN, seed=0)
    spread = (plain.task_vecs @ plain.model_vecs.T + plain.model_bias)[:, hidden].std(1)
    assert spread.max() < 1e-3  # no records, no features: every hidden model scored alike
    method = ts.Fennec(configs=(PLAIN,),
                       model_features=lambda models: features[[records.models.index(m) for m in models]])
    np.testing.assert_allclose(method.fit(history).model_vecs, with_features.model_vecs)
    with pytest.raises(ValueError, match="model_features"):
        ts.fit_space(history, PLAIN, model_features=features[:5])
    with pytest.raises(ValueError, match="model_features"):
        ts.fit_space(history, PLAIN, side_info=False, model_features=features)
