"""fennec_jax.estimators against the reference scores of the original authors' code
(tests/data/estimators/golden.json, see its SPEC in shared/estimators), plus the edge cases
every estimator must survive with a defined value or a clear error."""

import importlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from fennec_jax import estimators
from fennec_jax.estimators import _batch as batching
from fennec_jax.estimators import reference
from forced_devices import run_on_cpu_devices

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "estimators")
with open(os.path.join(DATA, "golden.json")) as f:
    GOLDEN = json.load(f)
CASES = sorted(GOLDEN["cases"])


def _case(name):
    data = np.load(os.path.join(DATA, GOLDEN["cases"][name]["npz"]))
    return data["features"], data["labels"], data["probs"]


def _batch():
    data = np.load(os.path.join(DATA, GOLDEN["batch"]["npz"]))
    return ([data[f"features_{m}"] for m in range(GOLDEN["batch"]["n_models"])],
            data["labels"])


# name -> (golden key, sign, rtol). PACTran is published lower-is-better (sign -1);
# nleep is stochastic (a Gaussian mixture from a k-means start): rtol 5e-2 per SPEC.
GOLDEN_KEYS = {
    "logme": ("logme", 1, 1e-4),
    "leep": ("leep", 1, 1e-4),
    "nce": ("nce", 1, 1e-4),
    "hscore": ("hscore", 1, 1e-4),
    "hscore_reg": ("hscore_reg", 1, 1e-4),
    "nleep": ("nleep_log", 1, 5e-2),
    "transrate": ("transrate", 1, 1e-4),
    "gbc": ("gbc_spherical", 1, 1e-4),
    "gbc_diagonal": ("gbc_diagonal", 1, 1e-4),
    "sfda": ("sfda", 1, 1e-4),
    "pactran_gauss": ("pactran_gauss", -1, 1e-3),
    "pactran_dir": ("pactran_dir", -1, 1e-4),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", sorted(GOLDEN_KEYS))
def test_matches_golden(name, case):
    features, labels, probs = _case(case)
    key, sign, rtol = GOLDEN_KEYS[name]
    value = estimators.score(name, features, labels, probs)
    np.testing.assert_allclose(sign * value, GOLDEN["cases"][case]["scores"][key],
                               rtol=rtol)


# The NumPy references (fennec_jax.estimators.reference, also the benchmark's baseline)
# against the JAX estimators: same formulas in float64, so agreement to rounding, except
# for nleep (another random mixture), PACTran-Gauss (L-BFGS-B stops elsewhere) and NCTI
# (an SVD-solver LDA). ncti and etran compare their per-model components.
REFERENCE_RTOL = {"nleep": 5e-2, "pactran_gauss": 1e-3, "ncti": 1e-6}


@pytest.mark.parametrize("name", estimators.method_names())
def test_matches_numpy_reference(name):
    features, labels, probs = _case("c1_n200_d32_c5")
    expected = reference.REFERENCES[name](
        probs if estimators.needs_probs(name) else features, labels)
    if name in reference.COMBINE:
        value = getattr(estimators, f"{name}_components")(features, labels)
    else:
        value = estimators.score(name, features, labels, probs)
    np.testing.assert_allclose(value, expected, rtol=REFERENCE_RTOL.get(name, 1e-9))


def _parc_tasks():
    """PARC inputs the goldens do not cover: N < D (random features, 5 and 3 classes) and
    scikit-learn's digits (300 images, 64 integer pixels with constant columns, 10
    classes)."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(0)
    digits = load_digits()
    return {"n60_d200": (rng.normal(size=(60, 200)), rng.integers(0, 5, 60)),
            "n30_d64": (rng.normal(size=(30, 64)), rng.integers(0, 3, 30)),
            "digits300": (digits.data[:300].astype(float), digits.target[:300])}


@pytest.mark.parametrize("case", CASES)
def test_parc(case):
    """The label RDM is the reference's ``1 - np.corrcoef(onehot)``, whose BLAS rounding
    leaves some within-class entries 1.1e-16 instead of 0; Spearman ranks those apart, and
    so does this PARC (ranking them as exact ties moved these scores by up to 0.5%)."""
    features, labels, _ = _case(case)
    value = estimators.score("parc", features, labels)
    np.testing.assert_allclose(value, reference.parc(features, labels), rtol=1e-9)
    np.testing.assert_allclose(value, GOLDEN["cases"][case]["scores"]["parc_nopca"],
                               rtol=1e-4)


@pytest.mark.parametrize("case", CASES)
def test_parc_pca32(case):
    """PCA to 32 dimensions as the reference does it, scikit-learn's randomised PCA with
    one power iteration (an approximation for D > 42: exact PCA was 11% and 33% off on c2
    and c3)."""
    features, labels, _ = _case(case)
    value = estimators.parc(features, labels, pca_dims=32)
    np.testing.assert_allclose(value, reference.parc(features, labels, 32), rtol=1e-6)
    np.testing.assert_allclose(value, GOLDEN["cases"][case]["scores"]["parc_pca32"],
                               rtol=1e-2)


@pytest.mark.parametrize("pca_dims", [None, 32])
@pytest.mark.parametrize("task", ["n60_d200", "n30_d64", "digits300"])
def test_parc_matches_reference_small_n_and_digits(task, pca_dims):
    """N < D (the reference's PCA then works on the transpose, and for N = 30 keeps 30
    components, the last a constant column) and real pixels, with and without PCA."""
    features, labels = _parc_tasks()[task]
    np.testing.assert_allclose(estimators.parc(features, labels, pca_dims=pca_dims),
                               reference.parc(features, labels, pca_dims),
                               rtol=1e-9 if pca_dims is None else 1e-6)


@pytest.mark.parametrize("pca_dims", [None, 32])
def test_parc_score_models_padded_widths(pca_dims):
    """Models of widths 200, 40, 100, 61, 7, 60 and 33 on N = 60 samples, padded and
    batched (N < D and N >= D in one call, some padded past N): each score equals the
    reference's. With D = 7 < 32 the reference's PCA call raises; this PARC keeps D
    components, the reference's score with pca_dims = D."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 60)
    base = rng.normal(size=(60, 200)) + rng.normal(size=(4, 200))[labels]
    features_list = [base[:, :w] * (1 + m) for m, w in enumerate((200, 40, 100, 61, 7, 60,
                                                                   33))]
    expected = [reference.parc(f, labels, None if pca_dims is None
                               else min(pca_dims, f.shape[1])) for f in features_list]
    for batch_size in (None, 3):
        np.testing.assert_allclose(
            estimators.score_models("parc", features_list, labels, pca_dims=pca_dims,
                                    batch_size=batch_size), expected, rtol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_ncti_and_etran_components(case):
    features, labels, _ = _case(case)
    golden = GOLDEN["cases"][case]["scores"]
    np.testing.assert_allclose(estimators.etran_components(features, labels),
                               [golden["etran_energy"], golden["etran_lda"]], rtol=1e-4)
    ncti = estimators.ncti_components(features, labels)
    if golden["ncti_seli"] is None:  # D = 32 < 64: the reference raises; we pad the PCA
        assert np.isfinite(ncti).all()
        return
    # c3 (1000 x 128) made scikit-learn's PCA pick its randomised solver: 1e-3 apart.
    rtol = 5e-3 if features.shape[0] * features.shape[1] > 500 * 64 else 1e-6
    np.testing.assert_allclose(ncti, [golden["ncti_seli"], golden["ncti_ncc"],
                                      golden["ncti_vc"]], rtol=rtol)


@pytest.mark.parametrize("name", ["logme", "hscore", "hscore_reg", "transrate", "gbc",
                                  "sfda", "parc"])
def test_score_models_batch_golden(name):
    """4 models of widths 64, 96, 128, 80 in one call (padded and grouped by width)."""
    features_list, labels = _batch()
    key = {"gbc": "gbc_spherical", "parc": "parc_nopca"}.get(name, name)
    scores = estimators.score_models(name, features_list, labels)
    assert scores.shape == (4,)
    np.testing.assert_allclose(scores, GOLDEN["batch"]["per_model"][key], rtol=1e-4,
                               atol=1e-12)


@pytest.mark.parametrize("name, key", [("ncti", "ncti_combined"), ("etran", "etran_combined")])
def test_candidate_normalised_batch_golden(name, key):
    features_list, labels = _batch()
    scores = estimators.score_models(name, features_list, labels)
    np.testing.assert_allclose(scores, GOLDEN["batch"][key], rtol=1e-6, atol=1e-9)
    components = np.stack([reference.REFERENCES[name](f, labels) for f in features_list])
    np.testing.assert_allclose(scores, reference.COMBINE[name](components), rtol=1e-6,
                               atol=1e-9)
    # A candidate set of one: every min-max normalised component is 0.
    assert estimators.score(name, features_list[0], labels) == 0.0


def test_score_models_three_widths_equal_single_scores():
    """Probabilities of different source-head sizes and features of different widths:
    each model's batched score equals its single-model score."""
    rng = np.random.default_rng(3)
    labels = np.arange(90) % 3
    features_list = [rng.normal(size=(90, d)) + labels[:, None] for d in (5, 12, 9)]
    probs_list = []
    for width in (4, 6, 4):
        logits = rng.normal(size=(90, width))
        logits[np.arange(90), labels] += 1.5
        probs_list.append(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
    for name in ("leep", "nce", "pactran_dir", "gbc_diagonal", "pactran_gauss"):
        batched = estimators.score_models(name, features_list, labels, probs_list)
        single = [estimators.score(name, f, labels, p)
                  for f, p in zip(features_list, probs_list)]
        np.testing.assert_allclose(batched, single, rtol=1e-6, err_msg=name)


def test_stacked_numpy_and_jax_inputs_equal_list_input():
    """A 3-D NumPy array (unaligned: staged by a copy) or JAX array (used in place) of
    equally wide models scores as the list of its models."""
    features, labels, probs = (a.astype(np.float32) if a.dtype.kind == "f" else a
                               for a in _toy())
    features_list = [features, features[::-1] * 0.5]
    probs_list = [probs, probs[::-1]]
    for name in ("logme", "leep", "nce", "gbc"):
        expected = estimators.score_models(name, features_list, labels, probs_list)
        for stacked in (np.stack, jnp.asarray):
            got = estimators.score_models(name, stacked(np.stack(features_list)), labels,
                                          stacked(np.stack(probs_list)))
            np.testing.assert_allclose(got, expected, rtol=1e-12, err_msg=name)


def test_nce_ties_take_the_first_source_class():
    """Rows with tied maxima (here uniform rows) count for their first maximal class, as
    ``argmax`` does."""
    labels = np.arange(12) % 3
    probs = np.full((12, 4), 0.25)
    probs[:6] = np.eye(4)[labels[:6] + 1]
    expected = reference.nce(probs, labels)
    for dtype in (np.float64, np.float32):
        np.testing.assert_allclose(estimators.nce(None, labels, probs.astype(dtype)),
                                   expected, rtol=1e-12)


def test_registry():
    names = estimators.method_names()
    assert names == ["logme", "leep", "nce", "hscore", "hscore_reg", "nleep", "transrate",
                     "gbc", "gbc_diagonal", "parc", "sfda", "ncti", "etran",
                     "pactran_gauss", "pactran_dir"]
    assert {n for n in names if estimators.needs_probs(n)} == {"leep", "nce", "pactran_dir"}
    assert {n for n in names if estimators.get(n).candidate_normalised} == {"ncti", "etran"}
    for estimator in estimators.ESTIMATORS.values():
        assert estimator.variant and estimator.function.__doc__
        assert "Variant" in estimator.function.__doc__
    with pytest.raises(ValueError, match="unknown estimator 'nope'"):
        estimators.score("nope", np.ones((4, 2)), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="needs source-head probabilities"):
        estimators.score("leep", np.ones((4, 2)), [0, 1, 0, 1])


# ---------------------------------------------------------------- edge cases
# One wide toy task (N = 48 < D = 64, four classes, the last with a single sample, a
# constant column) serves most edge cases, so the compiled estimators are reused.

def _toy(num_samples=48, dim=64, num_classes=4, seed=0):
    """Class-shifted Gaussian features with a constant column, a 7-class source head, and
    labels whose last class has a single sample."""
    rng = np.random.default_rng(seed)
    labels = np.arange(num_samples) % (num_classes - 1)
    labels[-1] = num_classes - 1
    features = rng.normal(size=(num_classes, dim))[labels] + rng.normal(size=(num_samples,
                                                                              dim))
    features[:, dim // 2] = 3.0
    logits = rng.normal(size=(num_samples, 7))
    logits[np.arange(num_samples), labels] += 2.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return features, labels, probs


@pytest.fixture(scope="module")
def toy_scores():
    """Every estimator on the toy task, from float64 and from float32 inputs."""
    features, labels, probs = _toy()
    scores64 = {n: estimators.score(n, features, labels, probs)
                for n in estimators.method_names()}
    scores32 = {n: estimators.score(n, features.astype(np.float32), labels,
                                    probs.astype(np.float32))
                for n in estimators.method_names()}
    return scores64, scores32


def test_wide_singleton_constant_column(toy_scores):
    """N < D, a class with one sample, a constant column: defined, finite values."""
    scores, _ = toy_scores
    features, labels, _ = _toy()
    for name, value in scores.items():
        assert np.isfinite(value), name
    # N <= D: the covariance has rank N - 1 and H-Score saturates at C - 1.
    np.testing.assert_allclose(scores["hscore"], 3.0, rtol=1e-8)
    # LogME from the N x N side with the D - N zero eigenvalues' log-alpha terms equals
    # the evidence from all D eigenvalues, and so does not move when zero columns are
    # appended (the published fixed-point code, which drops them, does).
    np.testing.assert_allclose(scores["logme"],
                               reference.logme_full_spectrum(features, labels), rtol=1e-9)
    wider = np.concatenate([features, np.zeros((48, 8))], 1)
    np.testing.assert_allclose(estimators.logme(wider, labels), scores["logme"], rtol=1e-9)


def test_float32_input_matches_float64(toy_scores):
    scores64, scores32 = toy_scores
    for name in scores64:
        # Inputs are rounded to float32, then everything runs in float64 (LEEP's two
        # products over all N x Cs entries run in float32: relative error about 1e-6).
        np.testing.assert_allclose(scores32[name], scores64[name], rtol=1e-4, atol=1e-6,
                                   err_msg=name)


def test_single_class(toy_scores):
    """One class present (num_classes = 4 keeps the toy task's shapes): natural limits."""
    features, _, probs = _toy()
    labels = np.zeros(48, int)
    expected = {"leep": 0.0, "nce": 0.0, "hscore": 0.0, "hscore_reg": 0.0, "nleep": 0.0,
                "transrate": 0.0, "gbc": 0.0, "gbc_diagonal": 0.0, "parc": 0.0, "sfda": 1.0,
                "ncti": 0.0, "etran": 0.0}
    for name in estimators.method_names():
        value = estimators.score(name, features, labels, probs, num_classes=4)
        assert np.isfinite(value), name
        if name in expected:
            np.testing.assert_allclose(value, expected[name], atol=1e-8, err_msg=name)
    # Without num_classes the task has C = 1 outright.
    assert estimators.score("logme", features, labels) == pytest.approx(
        estimators.score("logme", features, labels, num_classes=4), rel=1e-9)


def test_absent_classes_change_nothing(toy_scores):
    """A larger num_classes only adds empty classes, which every estimator ignores."""
    scores, _ = toy_scores
    features, labels, probs = _toy()
    for name in ("logme", "transrate", "gbc", "leep"):
        np.testing.assert_allclose(
            estimators.score(name, features, labels, probs, num_classes=9), scores[name],
            rtol=1e-9, err_msg=name)


def test_score_models_mixed_widths_equal_single_scores(toy_scores):
    """A 64-wide and a 40-wide model (padded to 48 columns), source heads of 7 and 5
    classes: batched scores equal single-model scores."""
    scores, _ = toy_scores
    features, labels, probs = _toy()
    narrow = features[:, :40] * 0.5
    narrow_probs = np.concatenate([probs[:, :4], probs[:, 4:].sum(1, keepdims=True)], 1)
    # The other estimators' padding is covered by test_score_models_batch_golden.
    for name in ("leep", "nce", "pactran_dir", "gbc_diagonal", "pactran_gauss", "nleep"):
        batched = estimators.score_models(name, [features, narrow], labels,
                                          [probs, narrow_probs])
        single = estimators.score(name, narrow, labels, narrow_probs)
        np.testing.assert_allclose(batched, [scores[name], single], rtol=1e-6,
                                   err_msg=name)


def test_constant_column_and_singleton_tall():
    """N = 200 > D = 32 (the golden case's shape), a constant column, a class with a
    single sample: rank-deficient covariance on the D x D side."""
    features, labels, probs = _case("c1_n200_d32_c5")
    features = features.copy()
    features[:, 3] = 7.0
    labels = labels.copy()
    labels[labels == 4] = 3
    labels[0] = 4
    for name in estimators.method_names():
        assert np.isfinite(estimators.score(name, features, labels, probs)), name
    # A constant column carries no information: H-Score equals that of the other columns.
    np.testing.assert_allclose(estimators.hscore(features, labels),
                               estimators.hscore(np.delete(features, 3, 1), labels),
                               rtol=1e-8)


@pytest.mark.parametrize("name", ["logme", "leep", "pactran_gauss"])
def test_bad_labels_name_labels(name):
    features, labels, probs = _toy(num_samples=12, dim=3)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\), got values in \[-1"):
        estimators.score(name, features, np.where(labels == 0, -1, labels), probs)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        estimators.score(name, features, labels, probs, num_classes=2)
    with pytest.raises(ValueError, match="labels must be whole numbers"):
        estimators.score(name, features, labels + 0.5, probs)
    with pytest.raises(ValueError, match="labels must have shape"):
        estimators.score(name, features, labels[:-1], probs)


def test_non_finite_and_malformed_inputs_name_the_argument():
    features, labels, probs = _toy(num_samples=12, dim=3)
    bad = features.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="features contains NaN"):
        estimators.score("logme", bad, labels)
    bad[2, 1] = np.inf
    with pytest.raises(ValueError, match=r"features_list\[1\] contains NaN or inf"):
        estimators.score_models("hscore", [features, bad], labels)
    bad_probs = probs.copy()
    bad_probs[0, 0] = np.nan
    with pytest.raises(ValueError, match="probs contains NaN"):
        estimators.score("leep", features, labels, bad_probs)
    with pytest.raises(ValueError, match="probs rows must be probability vectors"):
        estimators.score("nce", features, labels, np.log(probs))
    signed = probs.copy()
    signed[0, :2] = [1.5, -0.5 - signed[0, 2:].sum()]  # sums to 1, one negative entry
    with pytest.raises(ValueError, match="probs rows must be probability vectors"):
        estimators.score("leep", features, labels, signed.astype(np.float32))
    with pytest.raises(ValueError, match="features must be a 2-D array"):
        estimators.score("gbc", features[:, 0], labels)
    with pytest.raises(ValueError, match=r"features_list\[1\] has 11 samples"):
        estimators.score_models("gbc", [features, features[:-1]], labels)


def test_does_not_modify_input_or_enable_x64_globally(toy_scores):
    features, labels, _ = _toy()
    before = features.copy()
    estimators.sfda(features, labels)  # the reference code overwrites its input
    np.testing.assert_array_equal(features, before)
    assert jnp.ones(2).dtype == jnp.float32  # float64 stays local to the estimators


def _hscore_reference(features, labels):
    """The NumPy H-Score with the pseudo-inverse's matrix_rank rule, as the estimator's."""
    return reference.hscore(features, labels,
                            rcond=max(features.shape) * np.finfo(float).eps)


@pytest.mark.parametrize("batch_size", [None, 2])
def test_tall_models_fast_and_fallback_paths(batch_size):
    """N = 120 > D (CPU fast paths): a full-rank 16-wide model, a 12-wide one padded to 16
    zero columns and one with a dead unit (stood in for), and one with a collinear
    column (eigen-decomposition fallback), batched as a compiled loop and as vmapped
    chunks of 2: each equals its single score and the NumPy formula."""
    rng = np.random.default_rng(5)
    labels = np.arange(120) % 4
    full = rng.normal(size=(4, 16))[labels] + rng.normal(size=(120, 16))
    narrow = full[:, :12] * 1.5 + rng.normal(size=(120, 12))
    dead = full.copy()
    dead[:, 3] = 0.0
    collinear = full.copy()
    collinear[:, 9] = full[:, 2] - 2.0 * full[:, 7]
    models = [full, narrow, dead, collinear]
    for name, numpy_score in (("logme", reference.logme_full_spectrum),
                              ("hscore", _hscore_reference)):
        batched = estimators.score_models(name, models, labels, batch_size=batch_size)
        single = [estimators.score(name, x, labels) for x in models]
        np.testing.assert_allclose(batched, single, rtol=1e-9, err_msg=name)
        np.testing.assert_allclose(single, [numpy_score(x, labels) for x in models],
                                   rtol=1e-7, err_msg=name)


def test_staging_in_runs_equals_one_stack(monkeypatch):
    """Five models of widths 16, 16, 16, 10, 12 (one padded group) staged in two runs of
    three through one reused buffer (the last run padded by a repeat): the scores equal
    those of one stack, so a narrower model never reads the previous run's columns, and
    a run of float32 models is staged in the group's float64."""
    rng = np.random.default_rng(8)
    labels = np.arange(40) % 3
    widths = [16, 16, 16, 10, 12]
    features = [rng.normal(size=(3, w))[labels] + rng.normal(size=(40, w)) * (1 + i)
                for i, w in enumerate(widths)]
    features[:3] = [f.astype(np.float32) for f in features[:3]]  # the group is float64
    probs = [rng.dirichlet(np.ones(6), size=40) for _ in widths]
    assert batching.chunks(features, probs, list(range(5)), 16) == [[0, 1, 2, 3, 4]]
    expected = {name: estimators.score_models(name, features, labels, probs)
                for name in ("gbc_diagonal", "logme", "leep")}
    per_model = 40 * 16 * 8 + 40 * 6 * 8  # float64 features and probs of one model
    monkeypatch.setattr(batching, "_STAGING_BYTES", 2 * per_model)
    assert batching.chunks(features, probs, list(range(5)), 16) == [[0, 1, 2], [3, 4, 4]]
    for name, scores in expected.items():
        np.testing.assert_array_equal(
            estimators.score_models(name, features, labels, probs), scores, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parc_average_ranks_match_scipy(dtype):
    """PARC's ranks through integer sort keys: negative and positive values, -0.0 next to
    +0.0, and ties, against scipy.stats.rankdata."""
    parc_module = importlib.import_module("fennec_jax.estimators.parc")
    values = np.array([0.5, -1.25, 0.0, -0.0, 2.0, 0.5, -1.25, 1e-300 if dtype == np.float64
                       else 1e-30, -3.0, 0.5], dtype)
    with jax.enable_x64(True):
        ranks = np.asarray(jax.jit(parc_module._average_ranks)(jnp.asarray(values)))
    np.testing.assert_array_equal(ranks, scipy.stats.rankdata(values))


def test_logme_one_column_and_all_zero_features():
    """One feature column (N > D = 1), and features that are all zero: the evidence is then
    the limit alpha -> 0, a Gaussian fit of each class indicator with beta = N / |y|²."""
    rng = np.random.default_rng(9)
    labels = np.arange(50) % 3
    column = rng.normal(size=(50, 1)) + labels[:, None]
    np.testing.assert_allclose(estimators.logme(column, labels),
                               reference.logme_full_spectrum(column, labels), rtol=1e-9)
    for shape in ((50, 4), (10, 40)):
        y = labels[: shape[0]]
        n = shape[0]
        counts = np.bincount(y)
        limit = np.mean((0.5 * np.log(n / counts) - 0.5 - 0.5 * np.log(2 * np.pi)))
        np.testing.assert_allclose(estimators.logme(np.zeros(shape), y), limit, rtol=1e-9)


def test_jax_inputs_stay_on_device():
    """JAX inputs (a 3-D array, a list of 2-D arrays of two widths) are checked and
    stacked as JAX arrays, never as NumPy copies, and score as their NumPy twins."""
    features, labels, probs = (a.astype(np.float32) if a.dtype.kind == "f" else a
                               for a in _toy(dim=12))
    stacked = jnp.asarray(np.stack([features, features * 0.5]))
    widths = [jnp.asarray(features), jnp.asarray(features[:, :7])]
    for inputs in (stacked, widths):
        checked, *_ = batching.check_models("logme", inputs, labels, None, None,
                                            ("features",))
        assert checked is inputs if inputs is stacked else all(
            a is b for a, b in zip(checked, inputs))
        model = batching.stack(checked, None, [0, 1], 16)
        assert isinstance(model.features, jax.Array) and model.features.shape[2] == 16
        np.testing.assert_array_equal(model.dim, [12, 12 if inputs is stacked else 7])
        host = np.asarray(inputs) if inputs is stacked else [np.asarray(x) for x in inputs]
        np.testing.assert_allclose(estimators.score_models("hscore", inputs, labels),
                                   estimators.score_models("hscore", host, labels),
                                   rtol=1e-12)
    probs_on_device = jnp.asarray(np.stack([probs, probs[::-1]]))
    np.testing.assert_allclose(
        estimators.score_models("leep", None, labels, probs_on_device),
        estimators.score_models("leep", None, labels, [probs, probs[::-1]]), rtol=1e-12)


_FOUR_DEVICES = """
import json
import jax, jax.numpy as jnp, numpy as np
from fennec_jax import estimators
from fennec_jax.estimators import _batch
from fennec_jax.ranking import engine

rng = np.random.default_rng(0)
labels = np.arange(60) % 3
# 7 models of widths padded to two groups (8: 5 models, 16: 2 models), none a multiple of 4.
features = [rng.normal(size=(3, d))[labels] + rng.normal(size=(60, d))
            for d in (5, 7, 6, 8, 5, 12, 16)]
probs = [rng.dirichlet(np.ones(4), size=60) for _ in features]
held = jnp.asarray(np.stack([f[:, :5] for f in features]).astype(np.float32))
mesh = engine.make_mesh()
results = {"devices": mesh.size, "diffs": {}}
for name in ("logme", "hscore", "leep", "etran"):
    for inputs, label in ((features, "numpy"), (held, "jax")):
        unsharded = estimators.score_models(name, inputs, labels, probs)
        sharded = estimators.score_models(name, inputs, labels, probs, mesh=mesh)
        results["diffs"][f"{name} {label}"] = float(np.max(np.abs(sharded - unsharded)
                                                        / np.maximum(1, abs(unsharded))))
placed = {}
for label, inputs in (("numpy", features), ("jax", held)):
    model = _batch.place(mesh, inputs, probs, [0, 1, 2, 3, 4, 0, 1, 2], 8, [0, 1, 2, 3, 4])
    placed[label] = [sorted((shard.device.id, shard.data.shape[0])
                            for shard in x.addressable_shards)
                     for x in (model.features, model.dim, model.probs)]
results["placed"] = placed
print(json.dumps(results))
"""


def test_sharded_scores_equal_unsharded():
    """With 4 CPU devices, ``mesh=`` scores as unsharded, from NumPy lists of several
    widths (groups of 5 and 2 models, padded to 8 and 4) and from a JAX array, and puts
    2 of 8 models on each device."""
    results = run_on_cpu_devices(_FOUR_DEVICES)
    assert results["devices"] == 4
    for case, diff in results["diffs"].items():
        assert diff <= 1e-12, case
    for label, shards in results["placed"].items():
        assert all(len({d for d, _ in s}) == 4 and all(n == 2 for _, n in s)
                   for s in shards), label


def test_sharded_needs_a_models_axis():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("x",))
    features, labels, _ = _toy(num_samples=12, dim=3)
    with pytest.raises(ValueError, match="models"):
        estimators.score_models("logme", [features], labels, mesh=mesh)
