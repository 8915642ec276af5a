"""Spectral helpers on the smaller side of a feature matrix ``x[N, W]``.

Everything the estimators need from ``x`` is a function of the eigen-decomposition of
``xᵀx`` (``W x W``) or, equivalently, of ``x xᵀ`` (``N x N``): both share their non-zero
eigenvalues ``s`` and ``x v_i = sqrt(s_i) u_i``. The helpers pick the smaller one from the
static shape, so N < D (wide features) costs ``N³`` rather than ``D³``.
"""

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular


def _wide(x):
    """True when the N x N Gram matrix is the smaller (or equal) side."""
    return x.shape[0] <= x.shape[1]


def transposed(x):
    """``xᵀ`` as a row-major array of its own. XLA:CPU multiplies float64 matrices several
    times faster when both operands run along their last axis (``a @ bᵀ``) than when the
    product runs along the first (``xᵀ @ x`` was 5x slower than OpenBLAS at 1000 x 256);
    the barrier keeps XLA from folding the copy back into the product."""
    return jax.lax.optimization_barrier(x.T)


def gram(x):
    """The smaller Gram matrix of ``x[N, W]``: ``x xᵀ`` ``[N, N]`` when N <= W, else
    ``xᵀx`` ``[W, W]``, both computed as ``a @ aᵀ`` (see :func:`transposed`)."""
    if _wide(x):
        return x @ x.T
    xt = transposed(x)
    return xt @ xt.T


def rank_cutoff(s, x):
    """Eigenvalues of ``xᵀx`` at or below this are numerically zero (the ``matrix_rank``
    rule: ``max(N, W) * eps * s_max``)."""
    return max(x.shape) * jnp.finfo(x.dtype).eps * jnp.maximum(s.max(), 0.0)


def spectral_projections(x, targets):
    """Eigenvalues of ``xᵀx`` and the energy of ``targets[N, C]`` along each eigenvector.

    Returns ``(s[k], p2[k, C], x2[k, C])`` with ``k = min(N, W)``, ``s`` >= 0 ascending,
    ``p2[i, c] = (v_iᵀ xᵀ t_c)²`` (``v_i`` the i-th eigenvector of ``xᵀx``) and
    ``x2[i, c] = (u_iᵀ t_c)² = p2[i, c] / s_i`` (``u_i`` the unit left singular vector),
    set to 0 where ``s_i`` is below :func:`rank_cutoff`.
    """
    if _wide(x):
        s, u = jnp.linalg.eigh(gram(x))
        s = jnp.maximum(s, 0.0)
        x2 = (u.T @ targets) ** 2
        p2 = s[:, None] * x2
        x2 = jnp.where((s > rank_cutoff(s, x))[:, None], x2, 0.0)
    else:
        xt = transposed(x)
        s, v = jnp.linalg.eigh(xt @ xt.T)
        s = jnp.maximum(s, 0.0)
        p2 = (v.T @ (xt @ targets)) ** 2
        keep = s > rank_cutoff(s, x)
        x2 = jnp.where(keep[:, None], p2 / jnp.where(keep, s, 1.0)[:, None], 0.0)
    return s, p2, x2


def principal_components(x, k):
    """Top-``k`` principal components of centred ``x[N, W]``.

    Returns ``(scores[N, k], variances[k], total_variance)``: ``scores = x V_k`` (``V_k``
    the leading eigenvectors of ``xᵀx``, descending), ``variances`` the eigenvalues over
    ``N - 1`` (scikit-learn's ``explained_variance_``). When ``min(N, W) < k`` the missing
    components are zero columns with zero variance. Signs follow scikit-learn's PCA.
    """
    n = x.shape[0]
    if _wide(x):
        s, u = jnp.linalg.eigh(gram(x))
        s, u = jnp.maximum(s[::-1], 0.0), u[:, ::-1]
        scores = u * jnp.sqrt(s)
    else:
        s, v = jnp.linalg.eigh(gram(x))
        s, v = jnp.maximum(s[::-1], 0.0), v[:, ::-1]
        scores = x @ v
    scores, s = scores[:, :k], s[:k]
    # scikit-learn's sign convention (svd_flip, u_based_decision=False): the largest
    # |loading| of each component is positive. loadings = xᵀ scores / s, up to scale.
    loadings = x.T @ scores
    biggest = jnp.take_along_axis(loadings, jnp.argmax(jnp.abs(loadings), 0)[None], 0)
    scores = scores * jnp.where(biggest < 0, -1.0, 1.0)
    missing = k - s.shape[0]
    if missing > 0:
        scores = jnp.pad(scores, ((0, 0), (0, missing)))
        s = jnp.pad(s, (0, missing))
    return scores, s / (n - 1), jnp.sum(x * x) / (n - 1)


def logdet_identity_plus_gram(x, scale):
    """``log det(I + scale * xᵀx)`` for ``x[n, W]``, ``scale`` >= 0, by Cholesky on the
    smaller side (Sylvester: ``det(I + AᵀA) = det(I + AAᵀ)``). The matrix has eigenvalues
    >= 1, so the factorisation always succeeds."""
    product = gram(x)
    chol = jnp.linalg.cholesky(jnp.eye(product.shape[0]) + scale * product)
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))


def generalized_eigh(a, b):
    """Eigenpairs of ``a v = w b v`` for symmetric ``a`` and positive definite ``b``,
    descending ``w``, eigenvectors normalised to ``vᵀ b v = 1`` (as ``scipy.linalg.eigh``)."""
    chol = jnp.linalg.cholesky(b)
    inv_chol = solve_triangular(chol, jnp.eye(b.shape[0]), lower=True)
    w, z = jnp.linalg.eigh(inv_chol @ a @ inv_chol.T)
    return w[::-1], (inv_chol.T @ z)[:, ::-1]
