"""H-Score and its shrinkage (regularised) version.

- H-Score: Bao et al., "An Information-Theoretic Approach to Transferability in Task
  Transfer Learning", ICIP 2019.
- Shrinkage H-Score: Ibrahim, Ponomareva and Mazumder, "Newer is not always better:
  Rethinking transferability metrics, their peculiarities, stability and performance",
  ECML-PKDD 2022 (Ledoit-Wolf shrinkage of the feature covariance).

Both are ``trace(pinv(cov(f)) cov(g))`` with ``g_i`` the mean feature of sample i's class.
With ``cs_c = sum_{i in c} (f_i - mean f)`` and the eigenpairs ``(s_i, v_i)`` of ``FᵀF``
(centred F), ``cov(g) = sum_c cs_c cs_cᵀ / (n_c (N - 1))``, so the trace is a sum over
eigenvalues of ``q_i / s_i`` with ``q_i = sum_c (v_iᵀ cs_c)² / n_c``, that is
``sum_c cs_cᵀ pinv(FᵀF) cs_c / n_c``: quadratic forms of the smaller Gram matrix
(:func:`_linalg.pinv_forms`: a Cholesky factor when FᵀF is safely of full rank), no D x D
pseudo-inverse.
"""

import jax.numpy as jnp

from fennec_jax.estimators import _batch, _linalg


def hscore_core(model, task):
    """H-Score of one model; see :func:`hscore`."""
    x = model.features - model.features.mean(0)
    counts = task.onehot.sum(0)
    # sum_i (u_iᵀ 1_c)² over the kept directions = cs_cᵀ pinv(FᵀF) cs_c.
    energy = _linalg.pinv_forms(x, task.onehot, 0.0)
    return jnp.sum(energy / jnp.maximum(counts, 1.0))


def ledoit_wolf_shrinkage(x, dim):
    """Ledoit-Wolf shrinkage coefficient of centred ``x[N, W]`` whose first ``dim`` columns
    are real (scikit-learn's ``ledoit_wolf_shrinkage``; 0 for a single feature)."""
    n = x.shape[0]
    x2 = x * x
    variances = x2.sum(0) / n
    mu = variances.sum() / dim
    # sum_jk (X²ᵀX²)_jk = sum_i |x_i|⁴;  sum_jk (XᵀX)²_jk = |X Xᵀ|²_F (smaller side).
    beta_ = jnp.sum(x2.sum(1) ** 2)
    gram = _linalg.gram(x)
    delta_ = jnp.sum(gram * gram) / n ** 2
    beta = (beta_ / n - delta_) / (dim * n)
    delta = (delta_ - 2.0 * mu * variances.sum() + dim * mu ** 2) / dim
    beta = jnp.minimum(beta, delta)
    shrinkage = jnp.where(delta > 0, beta / jnp.where(delta > 0, delta, 1.0), 0.0)
    return jnp.where(dim > 1, shrinkage, 0.0), mu


def hscore_reg_core(model, task):
    """Shrinkage H-Score of one model; see :func:`hscore_reg`."""
    x = model.features - model.features.mean(0)
    n = x.shape[0]
    counts = task.onehot.sum(0)
    shrinkage, mu = ledoit_wolf_shrinkage(x, model.dim)
    # Along each eigenvector v_i of FᵀF the shrunk covariance is (1 - a)(s_i + t)/N with
    # t = a mu N / (1 - a), so trace(pinv(cov_a) (1 - a) cov(g)) is
    # N / (N - 1) * sum_c cs_cᵀ (FᵀF + t I)⁻¹ cs_c / n_c (and 0 when a = 1: cov_a = mu I).
    # Directions outside the span of the features carry no between-class energy.
    kept = shrinkage < 1.0
    shift = shrinkage * mu * n / jnp.where(kept, 1.0 - shrinkage, 1.0)
    energy = _linalg.pinv_forms(x, task.onehot, shift)
    score = n / (n - 1.0) * jnp.sum(energy / jnp.maximum(counts, 1.0))
    return jnp.where(kept, score, 0.0)


def hscore(features, labels, *, num_classes=None):
    """H-Score (higher = better) of ``features[N, D]`` for ``labels[N]``.

    Variant: Bao et al. 2019 (the authors' ``getHscore``): ``trace(pinv(cov(f)) cov(g))``
    with np.cov's ddof = 1, float64. The pseudo-inverse drops eigenvalues of ``cov(f)``
    below ``max(N, D) * eps`` times the largest (NumPy's ``matrix_rank`` rule, rather than
    the published ``rcond=1e-15``, which turns rounding noise into large values). When
    N <= D the covariance has rank N - 1 and the score saturates at C - 1.
    """
    return float(_batch.run(hscore_core, "hscore", [features], labels,
                            num_classes=num_classes)[0])


def hscore_reg(features, labels, *, num_classes=None):
    """Shrinkage H-Score (higher = better) of ``features[N, D]`` for ``labels[N]``.

    Variant: Ibrahim et al. 2022 (as in thuml's Transfer-Learning-Library
    ``regularized_h_score``): centre f; Ledoit-Wolf shrinkage a and covariance
    ``cov_a = (1 - a) fᵀf / N + a mu I``; score ``trace(pinv(cov_a) (1 - a) cov(g))`` with
    ``cov(g)`` at ddof = 1. float64.
    """
    return float(_batch.run(hscore_reg_core, "hscore_reg", [features], labels,
                            num_classes=num_classes)[0])
