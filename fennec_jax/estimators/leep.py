"""Estimators built on an empirical joint of target labels and source (pseudo-)classes.

- LEEP: Nguyen, Hassner, Seeger and Archambeau, "LEEP: A New Measure to Evaluate
  Transferability of Learned Representations", ICML 2020.
- NCE: Tran, Nguyen and Hassner, "Transferability and Hardness of Supervised Classification
  Tasks", ICCV 2019.
- N-LEEP: Li et al., "Ranking Neural Checkpoints", CVPR 2021 (LEEP on the posteriors of a
  Gaussian mixture fitted to PCA-reduced features).
"""

import jax
import jax.numpy as jnp
import numpy as np

from fennec_jax.estimators import _batch, _common, _linalg

_NCE_EPSILON = 1e-20
# N-LEEP: PCA keeps this fraction of the variance; 5 mixture components per class.
_PCA_VARIANCE = 0.8
_COMPONENTS_PER_CLASS = 5
# Gaussian mixture and k-means settings (scikit-learn's defaults).
_REG_COVAR = 1e-6
_EM_MAX_ITERATIONS = 100
_EM_TOLERANCE = 1e-3
_KMEANS_MAX_ITERATIONS = 300
_KMEANS_TOLERANCE = 1e-4


def _divide_no_nan(a, b):
    return jnp.where(b > 0, a / jnp.where(b > 0, b, 1.0), 0.0)


def leep_from_posteriors(probs, task):
    """LEEP of ``probs[N, Z]`` (rows: a distribution over source classes or mixture
    components): the mean log of the empirical predictor
    ``p(y_i | x_i) = sum_z probs[i, z] p(y_i | z)``.

    The two passes over all ``N x Z`` entries (the joint as a matrix product, then each
    sample's predictor from its own label's row of ``p(y | z)`` only, not all C rows) run in
    ``probs``' dtype: float32 input gives a relative error of about 1e-6, float64 input
    stays float64. The rest is float64."""
    onehot = task.onehot.astype(probs.dtype)
    joint = (onehot.T @ probs).astype(jnp.float64) / probs.shape[0]  # p(y, z) [C, Z]
    conditional = _divide_no_nan(joint, joint.sum(0)).astype(probs.dtype)  # p(y | z)
    predicted = jnp.sum(probs * conditional[task.labels], axis=1)  # p(y_i | x_i) [N]
    return jnp.mean(jnp.log(predicted.astype(jnp.float64)))


def leep_core(model, task):
    """LEEP of one model; see :func:`leep`."""
    return leep_from_posteriors(model.probs, task)


def first_argmax(x):
    """``argmax(x, 1)`` of ``x[N, Z]`` (first index of each row's maximum) as two
    vectorised row reductions: XLA:CPU's variadic argmax reduction is several times
    slower than a pass over the rows. Exact for ``Z < 2**24`` in float32."""
    top = jax.lax.optimization_barrier(x.max(1, keepdims=True))  # not recomputed per entry
    width = x.shape[1]
    countdown = width - jax.lax.broadcasted_iota(jnp.int32, x.shape, 1)
    return width - jnp.where(x == top, countdown.astype(x.dtype), 0).max(1).astype(jnp.int32)


def nce_core(model, task):
    """NCE of one model; see :func:`nce`."""
    probs = model.probs
    n = probs.shape[0]
    joint = jnp.zeros((task.onehot.shape[1], probs.shape[1])).at[
        task.labels, first_argmax(probs)].add(1.0 / n)  # p(y, z) of hard source labels
    p_z = joint.sum(0)
    conditional = _divide_no_nan(joint, p_z) + _NCE_EPSILON
    entropy = -jnp.sum(conditional * jnp.log(conditional), 0)  # H(Y | z)
    return -jnp.sum(jnp.where(p_z > 0, p_z * entropy, 0.0))


def leep(features, labels, probs, *, num_classes=None):
    """LEEP score (higher = better) of the source head's ``probs[N, Cs]`` for ``labels[N]``.

    Variant: Nguyen et al. 2020. Empirical joint ``p(y, z)`` of target label and source
    class from the soft ``probs``, conditional ``p(y | z)`` with divide-no-nan (source
    classes of zero mass contribute 0), score = mean log-likelihood of the labels under
    ``sum_z probs[i, z] p(y | z)``. ``features`` is not used (it may be None).
    """
    del features
    return float(_batch.run(leep_core, "leep", None, labels, [probs],
                            num_classes=num_classes, uses=("probs",))[0])


def nce(features, labels, probs, *, num_classes=None):
    """NCE score (higher = better): negative conditional entropy ``-H(Y | Z)``.

    Variant: Tran et al. 2019 as in thuml/LogME's ``NCE``: hard source label
    ``z = argmax probs[i]``, empirical joint of (y, z) over the N samples, score
    ``-sum_z p(z) H(Y | z)`` with 1e-20 added inside the log; source classes never
    predicted are skipped. ``features`` is not used (it may be None).
    """
    del features
    return float(_batch.run(nce_core, "nce", None, labels, [probs],
                            num_classes=num_classes, uses=("probs",))[0])


def _num_pca_components(x, dim):
    """Components that keep 80% of the variance (scikit-learn's ``PCA(n_components=0.8)``:
    the smallest k whose cumulative explained-variance ratio exceeds 0.8)."""
    _, variances, total = _linalg.principal_components(x, min(x.shape))
    ratio = jnp.cumsum(variances) / total
    return jnp.minimum(jnp.searchsorted(ratio, _PCA_VARIANCE, side="right") + 1, dim)


def nleep_num_components_core(model, task):
    """Number of PCA components N-LEEP keeps for one model (host-side shape choice)."""
    del task
    x = model.features - model.features.mean(0)
    return _num_pca_components(x, model.dim).astype(jnp.float64)


def _kmeans_plus_plus(key, x, k):
    """Greedy k-means++ seeding (scikit-learn's: 2 + log k candidates per new centre, drawn
    with probability proportional to the squared distance to the nearest centre)."""
    n = x.shape[0]
    trials = 2 + int(np.log(k))
    uniforms = jax.random.uniform(key, (k, trials), dtype=x.dtype)  # row 0: first centre
    first = jnp.minimum((uniforms[0, 0] * n).astype(jnp.int32), n - 1)
    centres = jnp.zeros((k, x.shape[1])).at[0].set(x[first])
    closest = jnp.sum((x - x[first]) ** 2, 1)

    def add_centre(i, carry):
        centres, closest = carry
        cumulative = jnp.cumsum(closest)
        candidates = jnp.minimum(jnp.searchsorted(cumulative, uniforms[i] * cumulative[-1]),
                                 n - 1)
        distances = jnp.sum((x[None] - x[candidates][:, None]) ** 2, -1)  # [trials, N]
        new_closest = jnp.minimum(closest, distances)
        best = jnp.argmin(new_closest.sum(1))
        return centres.at[i].set(x[candidates[best]]), new_closest[best]

    return jax.lax.fori_loop(1, k, add_centre, (centres, closest))[0]


def _kmeans_labels(key, x, k):
    """Lloyd's k-means from k-means++ seeds; one-hot assignments ``[N, k]``."""
    tolerance = _KMEANS_TOLERANCE * jnp.mean(jnp.var(x, 0))

    def assign(centres):
        distances = jnp.sum((x[:, None] - centres[None]) ** 2, -1)
        return jax.nn.one_hot(jnp.argmin(distances, 1), k, dtype=x.dtype)

    def step(carry):
        centres, _, i = carry
        members = assign(centres)
        counts = members.sum(0)[:, None]
        new = jnp.where(counts > 0, members.T @ x / jnp.maximum(counts, 1.0), centres)
        return new, jnp.sum((new - centres) ** 2), i + 1

    def not_done(carry):
        _, shift, i = carry
        return (shift > tolerance) & (i < _KMEANS_MAX_ITERATIONS)

    centres = _kmeans_plus_plus(key, x, k)
    centres, _, _ = jax.lax.while_loop(not_done, step, (centres, jnp.inf, 0))
    return assign(centres)


def _gmm_m_step(x, resp):
    """Weights ``[K]``, means ``[K, d]`` and Cholesky factors of the full covariances
    ``[K, d, d]`` (plus ``reg_covar`` on the diagonal) from responsibilities ``[N, K]``."""
    nk = resp.sum(0) + 10 * jnp.finfo(x.dtype).eps
    means = resp.T @ x / nk[:, None]
    centred = x[None] - means[:, None]  # [K, N, d]
    covariances = jnp.einsum("nk,knd,kne->kde", resp, centred, centred) / nk[:, None, None]
    covariances += _REG_COVAR * jnp.eye(x.shape[1])
    return nk / x.shape[0], means, jnp.linalg.cholesky(covariances)


def _gmm_log_resp(x, params):
    """``(mean log-likelihood, log responsibilities[N, K])`` under the mixture."""
    weights, means, chols = params
    centred = x[None] - means[:, None]  # [K, N, d]
    solved = jax.scipy.linalg.solve_triangular(chols, jnp.swapaxes(centred, 1, 2),
                                               lower=True)  # [K, d, N]
    log_det = jnp.sum(jnp.log(jnp.diagonal(chols, axis1=1, axis2=2)), 1)
    log_gauss = (-0.5 * (x.shape[1] * np.log(2 * np.pi) + jnp.sum(solved ** 2, 1))
                 - log_det[:, None])  # [K, N]
    weighted = log_gauss.T + jnp.log(weights)
    norm = jax.scipy.special.logsumexp(weighted, 1)
    return norm.mean(), weighted - norm[:, None]


def gmm_posteriors(key, x, num_components):
    """Posteriors ``[N, K]`` of a full-covariance Gaussian mixture fitted to ``x[N, d]`` by
    EM from a k-means start (scikit-learn's ``GaussianMixture`` defaults: reg_covar 1e-6,
    at most 100 EM iterations, tolerance 1e-3 on the mean log-likelihood)."""
    params = _gmm_m_step(x, _kmeans_labels(key, x, num_components))

    def step(carry):
        params, bound, _, i = carry
        new_bound, log_resp = _gmm_log_resp(x, params)
        return _gmm_m_step(x, jnp.exp(log_resp)), new_bound, bound, i + 1

    def not_done(carry):
        _, bound, previous, i = carry
        return (jnp.abs(bound - previous) >= _EM_TOLERANCE) & (i < _EM_MAX_ITERATIONS)

    params, _, _, _ = jax.lax.while_loop(not_done, step, (params, -jnp.inf, jnp.inf, 0))
    return jnp.exp(_gmm_log_resp(x, params)[1])


def nleep_core(model, task, *, num_dims, num_components, seed):
    """N-LEEP of one model with PCA padded to ``num_dims`` columns; see :func:`nleep`."""
    x = model.features - model.features.mean(0)
    scores, _, _ = _linalg.principal_components(x, num_dims)
    kept = jnp.arange(num_dims) < _num_pca_components(x, model.dim)
    # Dropped components are zero columns: every mixture component then has the same
    # variance (reg_covar) there, which cancels from the posteriors.
    scores = jnp.where(kept, scores, 0.0)
    # RBG keys: far cheaper to compile than threefry, and only seeding needs randomness.
    posteriors = gmm_posteriors(jax.random.key(seed, impl="rbg"), scores, num_components)
    return leep_from_posteriors(posteriors, task)


def nleep_models(features_list, labels, probs_list=None, *, num_classes=None, seed=0,
                 batch_size=None):
    """``scores[M]`` N-LEEP of many models (two vmapped passes: PCA sizes, then the
    mixtures at the largest PCA size)."""
    del probs_list
    run = lambda core, **options: _batch.run(core, "nleep", features_list, labels,
                                             num_classes=num_classes,
                                             batch_size=batch_size, options=options)
    num_dims = int(run(nleep_num_components_core).max())  # also checks the inputs
    num_components = _COMPONENTS_PER_CLASS * np.unique(np.asarray(labels)).size
    return run(nleep_core, num_dims=num_dims, num_components=num_components, seed=seed)


def nleep(features, labels, *, num_classes=None, seed=0):
    """N-LEEP score (higher = better) of ``features[N, D]`` for ``labels[N]``.

    Variant: Li et al. 2021 as in the SFDA / NCTI reference code, with the log of LEEP
    kept: PCA keeping 80% of the variance, a full-covariance Gaussian mixture with
    5 x (number of classes) components (k-means++ start from ``seed``, EM as scikit-learn's
    ``GaussianMixture``), then LEEP on the mixture posteriors. Stochastic through the
    k-means start: different seeds differ by a few percent.
    """
    return float(nleep_models([features], labels, num_classes=num_classes, seed=seed)[0])
