"""PARC: Bolya, Mittapalli and Hoffman, "Scalable Diverse Model Selection for Accessible
Transfer Learning", NeurIPS 2021 (dbolya/parc, ``methods.PARC``).

Spearman correlation between the representation dissimilarity matrix (RDM) of the
standardised features and that of the one-hot labels, over the upper triangles, computed
as the authors' code does (see :func:`parc`), floating-point ties included.
O(N²) memory: above ``max_samples`` samples a fixed random subset is scored.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fennec_jax.estimators import _batch, _common

MAX_SAMPLES = 4000

# The reference's PCA: sklearn.decomposition.PCA(n_components=min(f, N),
# svd_solver="randomized", random_state=1919, iterated_power=1) with scikit-learn's
# defaults n_oversamples=10 and power_iteration_normalizer="auto" (= none for one
# iteration).
_PCA_SEED = 1919
_PCA_OVERSAMPLES = 10


def _standardise(x, mask):
    """scikit-learn's ``StandardScaler`` on the real columns: columns of (numerically)
    zero variance keep scale 1."""
    n = x.shape[0]
    mean = x.mean(0)
    variance = x.var(0)
    eps = jnp.finfo(x.dtype).eps
    constant = variance <= n * eps * variance + (n * mean * eps) ** 2
    return (x - mean) / jnp.where(constant, 1.0, jnp.sqrt(variance)) * mask


def _gaussian(rows, columns):
    """The reference's random test matrix: ``RandomState(1919).normal(size=(rows,
    columns))`` (a constant of the compiled program). Its first ``d`` rows are the matrix
    drawn for ``d`` rows, so one drawn for the padded width serves every true width."""
    return np.random.RandomState(_PCA_SEED).normal(size=(rows, columns))


def _signed_top(scores, singular, loadings, components):
    """``scores[:, j] * singular[j]`` for the first ``components`` (zero columns past the
    available ones), each signed so that its loading vector (``loadings[:, j]``) has its
    largest-magnitude entry positive (scikit-learn's ``svd_flip(u_based_decision=False)``),
    and the singular values."""
    available = min(components, scores.shape[1], loadings.shape[1])
    loadings = loadings[:, :available]
    largest = jnp.take_along_axis(loadings, jnp.argmax(jnp.abs(loadings), 0)[None], 0)[0]
    top = scores[:, :available] * (singular[:available] * jnp.sign(largest))
    pad = components - available
    return (jnp.pad(top, ((0, 0), (0, pad))),
            jnp.pad(singular[:available], (0, pad)))


def _randomised_pca(x, dim, components):
    """``(scores[N, components], singular[components])``: the reference's randomised PCA
    (Halko et al. via scikit-learn's ``randomized_svd``) of the centred ``x[N, W]`` (zero
    beyond column ``dim``): ``k = components + 10`` Gaussian test vectors, one power
    iteration without normalisation, an orthonormal basis of the sampled range, the SVD of
    the projection onto it; the data matrix is transposed first when N < dim, as
    scikit-learn does. Not exact PCA: with one power iteration the components of a D > k
    matrix are only approximate, and the reference's score depends on that."""
    n, width = x.shape
    k = components + _PCA_OVERSAMPLES

    def samples_by_features():  # M = x [N, W]: test matrix [D, k]
        omega = _gaussian(width, k)
        q, _ = jnp.linalg.qr(x @ (x.T @ (x @ omega)))
        u_hat, singular, vt = jnp.linalg.svd(q.T @ x, full_matrices=False)
        return _signed_top(q @ u_hat, singular, vt.T, components)

    def features_by_samples():  # M = xᵀ [W, N]: test matrix [N, k]
        omega = _gaussian(n, k)
        q, _ = jnp.linalg.qr(x.T @ (x @ (x.T @ omega)))
        u_hat, singular, vt = jnp.linalg.svd(q.T @ x.T, full_matrices=False)
        return _signed_top(vt.T, singular, q @ u_hat, components)

    if width <= n:  # dim <= width <= N: never transposed
        return samples_by_features()
    return jax.lax.cond(dim > n, features_by_samples, samples_by_features)


def _order_keys(values):
    """Integers that sort as the floats ``values[n]`` do (no NaNs; -0.0 equal to +0.0):
    the bit patterns, with those of negative numbers flipped. XLA:CPU sorts integers about
    four times faster than floats (37 against 155 ms for 499,500 float64 here)."""
    integer = {4: jnp.int32, 8: jnp.int64}[jnp.dtype(values.dtype).itemsize]
    bits = jax.lax.bitcast_convert_type(jnp.where(values == 0, 0.0, values), integer)
    return jnp.where(bits < 0, bits ^ jnp.iinfo(integer).max, bits)


def _average_ranks(values):
    """Ranks 1..n of ``values[n]`` with ties given their average rank (scipy's default)."""
    keys = _order_keys(values)
    ordered = jnp.sort(keys)
    below = jnp.searchsorted(ordered, keys, side="left")
    upto = jnp.searchsorted(ordered, keys, side="right")
    return (below + upto + 1) / 2.0


def label_ranks(labels):
    """``[N (N - 1) / 2]`` float64 (NumPy): the average ranks of the reference's label RDM
    over the upper triangle, centred and scaled to unit norm (all 0 when it is constant).

    The reference builds it as ``1 - np.corrcoef(np.eye(C)[labels])``. In exact arithmetic
    that takes two values (0 within a class, 1 + 1/(C - 1) across), but the BLAS product
    inside ``np.corrcoef`` rounds the same dot product differently at different positions
    of the N x N matrix, so the computed RDM has a few values 1 to 4 ulp apart (0 or
    1.1e-16 within a class, depending on the pair), and ``scipy.stats.spearmanr`` ranks
    them apart: that moves the score by up to several percent at small N. Which pairs
    round which way depends on the BLAS kernel's blocking, so the matrix is computed here
    with NumPy exactly as the reference does (once per task: it does not depend on the
    model). ``C`` is ``max(labels) + 1`` (the reference's ``np.eye(num_classes)`` when
    the last class is present; a larger ``num_classes`` never changes the score)."""
    labels = np.asarray(labels)
    n = labels.shape[0]
    if np.unique(labels).size < 2:  # one class: the exact RDM is constant (score 0)
        return np.zeros(n * (n - 1) // 2)
    rdm = np.corrcoef(np.eye(int(labels.max()) + 1)[labels])
    np.subtract(1.0, rdm, out=rdm)
    values = rdm[np.triu(np.ones((n, n), bool), 1)]
    del rdm
    distinct, counts = np.unique(values, return_counts=True)
    centred = np.cumsum(counts) - (counts - 1) / 2.0 - (values.size + 1) / 2.0
    norm = np.sqrt(np.sum(counts * centred ** 2))
    if not norm > 0:
        return np.zeros(values.size)
    return (centred / norm)[np.searchsorted(distinct, values)]


def parc_core(model, labels, *, pca_dims):
    """PARC of one model (padded features, see ``_batch.Model``) against ``labels``, the
    output of :func:`label_ranks`; see :func:`parc`."""
    x = model.features
    n = x.shape[0]
    mask = _common.dim_mask(x.shape[1], model.dim)
    if pca_dims:
        # PCA to f = min(pca_dims, N) components, as the reference. The scores of a
        # component past the data's rank are rounding noise: the reference's N-th
        # component when f = N is a column of equal values (the centred data are
        # orthogonal to the ones vector), which standardising turns into a zero column
        # that still counts in the row correlations; such components are that zero
        # column here. Components past D (where the reference raises) are left out.
        components = min(pca_dims, n)
        x, singular = _randomised_pca(x - x.mean(0), model.dim, components)
        tolerance = singular[0] * max(x.shape[0], model.features.shape[1]) \
            * jnp.finfo(x.dtype).eps
        x = jnp.where(singular > tolerance, x, 0.0)
        mask = _common.dim_mask(components, model.dim)
    z = _standardise(x, mask)
    # Rows centred over the real columns and scaled to unit norm: z zᵀ = corrcoef(rows),
    # clipped to [-1, 1] as np.corrcoef does.
    z = (z - z.sum(1, keepdims=True) / mask.sum()) * mask
    norms = jnp.sqrt(jnp.sum(z * z, 1, keepdims=True))
    z = jnp.where(norms > 0, z / jnp.where(norms > 0, norms, 1.0), 0.0)
    feature_rdm = 1.0 - jnp.clip(z @ z.T, -1.0, 1.0)[np.triu_indices(n, 1)]
    ranks = _average_ranks(feature_rdm)
    centred = ranks - (ranks.shape[0] + 1) / 2.0
    norm = jnp.sqrt(jnp.sum(centred * centred))
    return 100.0 * jnp.where(norm > 0, jnp.dot(centred, labels) / jnp.where(norm > 0, norm,
                                                                              1.0), 0.0)


@functools.lru_cache(maxsize=None)
def _compiled(pca_dims, batch_size):
    """Jitted ``(stacked Model, label ranks) -> (scores[M], value checks[M, 3])``, mapped
    over the models as ``_batch.run`` maps a core (the label ranks are shared)."""
    def one_model(model, labels):
        checks = _common.value_checks(model.features, None)
        model = model._replace(features=model.features.astype(jnp.float64))
        return parc_core(model, labels, pca_dims=pca_dims), checks

    def over_models(models, labels):
        if batch_size is None and not _batch.sequential_by_default():
            return jax.vmap(one_model, in_axes=(0, None))(models, labels)
        return jax.lax.map(lambda model: one_model(model, labels), models,
                           batch_size=None if batch_size in (None, 1) else batch_size)

    return jax.jit(over_models)


def subsample(features_list, labels, max_samples, seed):
    """A fixed random subset of ``max_samples`` rows (the same for every model) when there
    are more samples than that."""
    n = np.shape(labels)[0]
    if n <= max_samples:
        return features_list, labels
    rows = np.sort(np.random.default_rng(seed).choice(n, max_samples, replace=False))
    return [np.asarray(f)[rows] for f in features_list], np.asarray(labels)[rows]


def parc_models(features_list, labels, probs_list=None, *, num_classes=None, pca_dims=None,
                max_samples=MAX_SAMPLES, seed=0, batch_size=None):
    """``scores[M]`` PARC of many models (grouped, padded and mapped as ``_batch.run``
    does; the label RDM's ranks are computed once, on the host)."""
    del probs_list
    features_list, labels = subsample(features_list, labels, max_samples, seed)
    features_list, labels, _, _ = _batch.check_models(
        "parc", features_list, labels, None, num_classes, ("features",))
    scores, checks = {}, {}
    with _common.float64():
        ranks = jnp.asarray(label_ranks(labels))
        run_group = _compiled(pca_dims or None, batch_size)
        for width, _ in _batch.groups(features_list, None):
            members = _batch.groups(features_list, None)[(width, 0)]
            staged = None
            for part in _batch.chunks(features_list, None, members, width):
                staged = _batch.stack(features_list, None, part, width, group=members,
                                      into=staged)
                values, ok = run_group(staged, ranks)
                scores.update(zip(part, np.asarray(values)))
                checks.update(zip(part, np.asarray(ok)))
    count = len(scores)
    names = lambda m: "features" if count == 1 else f"features_list[{m}]"  # noqa: E731
    _common.value_errors([checks[m] for m in range(count)], names, names)
    scores = np.array([scores[m] for m in range(count)], np.float64)
    if not np.isfinite(scores).all():
        raise FloatingPointError(f"parc produced a non-finite score {scores}; please "
                                 "report this input")
    return scores


def parc(features, labels, *, num_classes=None, pca_dims=None, max_samples=MAX_SAMPLES,
         seed=0):
    """PARC score (higher = better) of ``features[N, D]`` for ``labels[N]``.

    Variant: Bolya et al. 2021, the authors' ``methods.PARC`` step by step (the project's
    ``parc`` is ``n_dims=None``, no PCA; ``pca_dims=32`` is the paper's ``PARC f=32``):

    1. with ``pca_dims``: scikit-learn's randomised PCA as the reference calls it
       (``n_components=min(pca_dims, N)``, ``random_state=1919``, ``iterated_power=1``,
       10 oversamples, transposed when N < D, signs by the largest loading), reproduced
       with the same Gaussian test matrix; it is an approximation of PCA for D > f + 10,
       and the score follows the reference's approximation, not exact PCA;
    2. standardise the features (scikit-learn's StandardScaler: constant columns keep
       scale 1);
    3. feature RDM = 1 - corrcoef of the rows; label RDM = 1 - np.corrcoef of the one-hot
       rows, computed with NumPy exactly as the reference does, so that its rounding
       (values a few ulp apart that exact arithmetic would tie; see :func:`label_ranks`)
       is ranked the same way;
    4. score = 100 x Spearman correlation (average ranks for ties) of the upper triangles.

    Defined values where the reference gives NaN or raises: a row that is constant after
    standardisation correlates 0 with every other row; with a single class the score is 0;
    ``pca_dims`` larger than D keeps min(pca_dims, N, D) components (the reference's
    scikit-learn call raises). More than ``max_samples`` samples: a random subset
    (``seed``) of that size is used (the reference has no limit).
    """
    return float(parc_models([features], labels, num_classes=num_classes,
                             pca_dims=pca_dims, max_samples=max_samples, seed=seed)[0])
