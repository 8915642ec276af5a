"""Spectral helpers on the smaller side of a feature matrix ``x[N, W]``.

Everything the estimators need from ``x`` is a function of the eigen-decomposition of
``xᵀx`` (``W x W``) or, equivalently, of ``x xᵀ`` (``N x N``): both share their non-zero
eigenvalues ``s`` and ``x v_i = sqrt(s_i) u_i``. The helpers pick the smaller one from the
static shape, so N < D (wide features) costs ``N³`` rather than ``D³``.

LogME and H-Score need less than the eigenvectors: sums over the eigenvalues and quadratic
forms ``b_cᵀ (xᵀx + t I)⁻¹ b_c``. On CPU, for tall ``x``, :func:`gram_spectrum` gets them
from the tridiagonal form of ``xᵀx`` and :func:`pinv_forms` from a Cholesky factor, each
falling back to the eigen-decomposition when ``xᵀx`` is (nearly) rank-deficient; at
W = 256 that is 2-3x less work than ``eigh``, the step that bounds both estimators.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular
from jaxlib import lapack


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


class GramSpectrum(NamedTuple):
    """``xᵀx`` of ``x[N, W]`` seen from ``targets[N, C]``: its eigenvalues, and a basis in
    which ``xᵀx`` is a symmetric tridiagonal matrix ``T`` and ``b_c = xᵀ t_c`` has
    coordinates ``projections[:, c]``. That is enough for every sum of a function of the
    eigenvalues (:func:`eigenvalue_sum`) and every ``b_cᵀ (xᵀx + shift I)⁻¹ b_c``
    (:func:`resolvent_forms`), which is all LogME and H-Score need.

    eigenvalues: ``[k]`` ascending, >= 0, ``k = min(N, W)`` (the smaller Gram side).
    diagonal, off_diagonal: ``[k]`` each, ``T[i, i]`` and ``T[i, i - 1]``
      (``off_diagonal[0] = 0``). In the eigenbasis, ``T`` is diagonal, and a direction whose
      eigenvalue is numerically zero (:func:`rank_cutoff`) has diagonal 1 and projection 0:
      it is left out of the quadratic forms, as a pseudo-inverse would.
    projections: ``[k, C]``.
    stand_ins: ``[]`` how many of ``eigenvalues`` stand in, with value ``stand_in``, for
      the exact zeros of all-zero columns of ``x`` (zero padding, dead units).
    stand_in: ``[]``.
    """

    eigenvalues: jax.Array
    diagonal: jax.Array
    off_diagonal: jax.Array
    projections: jax.Array
    stand_ins: jax.Array
    stand_in: jax.Array


def _eigvalsh_lapack(a):
    """Eigenvalues of ``a[k, k]``, symmetric with both triangles stored (LAPACK reads the
    row-major array as its transpose), by LAPACK ``syevd`` without eigenvectors (the
    kernel jaxlib registers for ``eigh``, asked for values only): half the time of
    ``jnp.linalg.eigvalsh``, which computes the eigenvectors and drops them."""
    # prepare_lapack_call also loads the LAPACK routines into jaxlib's kernels (jax does
    # this when it lowers its own linear algebra; a program may have none before this).
    call = jax.ffi.ffi_call(
        lapack.prepare_lapack_call("syevd_ffi", np.dtype(a.dtype)),
        (jax.ShapeDtypeStruct(a.shape, a.dtype), jax.ShapeDtypeStruct(a.shape[:1], a.dtype),
         jax.ShapeDtypeStruct((), jnp.int32)),
        input_output_aliases={0: 0}, vmap_method="sequential")
    _, values, info = call(a, mode=np.uint8(ord("N")), uplo=np.uint8(ord("L")))
    return jnp.where(info == 0, values, jnp.nan)


def _eigen_spectrum(x, targets):
    """:class:`GramSpectrum` from the eigen-decomposition of the smaller Gram matrix."""
    s, p2, _ = spectral_projections(x, targets)
    keep = s > rank_cutoff(s, x)
    # b_c along v_i is ±sqrt(p2_ic); only its square enters the quadratic forms.
    projections = jnp.where(keep[:, None], jnp.sqrt(p2), 0.0)
    zero = jnp.zeros((), x.dtype)
    return GramSpectrum(s, jnp.where(keep, s, 1.0), jnp.zeros_like(s), projections, zero, zero)


def _gram_with_stand_ins(x, targets):
    """``(xᵀx + diag(stand_in on all-zero columns), xᵀ targets, stand_ins, stand_in)`` for
    tall ``x``. An all-zero column of ``x`` (zero padding, a dead unit) is a zero row and
    column of ``xᵀx`` and a zero row of ``xᵀ targets``; a diagonal ``stand_in`` (the mean
    of the other diagonal entries) there keeps the matrix block-diagonal and invertible
    without changing any quadratic form of ``xᵀ targets``."""
    xt = transposed(x)
    product = xt @ xt.T
    diag = jnp.diagonal(product)
    dead = diag == 0
    stand_ins = jnp.sum(dead).astype(x.dtype)
    stand_in = jnp.sum(diag) / jnp.maximum(x.shape[1] - stand_ins, 1.0)
    stand_in = jnp.where(stand_in > 0, stand_in, 1.0)
    product = product + jnp.diag(jnp.where(dead, stand_in, 0.0))
    return product, xt @ targets, stand_ins, stand_in


def _tridiagonal_spectrum(x, targets):
    """``(full_rank, GramSpectrum)`` of tall ``x`` from the tridiagonal form of ``xᵀx``
    (``sytrd``), its eigenvalues without eigenvectors and ``Qᵀ xᵀ targets`` (``ormqr``):
    at W = 256 about half the time of :func:`spectral_projections`' ``eigh``. All-zero
    columns do not count as rank deficiency (:func:`_gram_with_stand_ins`); ``full_rank``
    says whether any other eigenvalue is at or below :func:`rank_cutoff`."""
    product, b, stand_ins, stand_in = _gram_with_stand_ins(x, targets)
    reflectors, diagonal, off, taus = jax.lax.linalg.tridiagonal(product, lower=True)
    projections = jnp.concatenate([b[:1], jax.lax.linalg.ormqr(
        reflectors[1:, :-1], taus, b[1:], left=True, transpose=True)])
    off = jnp.concatenate([jnp.zeros((1,), off.dtype), off])
    tridiagonal = jnp.diag(diagonal) + jnp.diag(off[1:], -1) + jnp.diag(off[1:], 1)
    s = _eigvalsh_lapack(tridiagonal)
    # The cutoff is that of the columns that are not all zero (stand_in <= their largest).
    full_rank = jnp.all(s > rank_cutoff(s, x))
    return full_rank, GramSpectrum(jnp.maximum(s, 0.0), diagonal, off, projections,
                                   stand_ins, stand_in)


def gram_spectrum(x, targets):
    """:class:`GramSpectrum` of ``x[N, W]`` and ``targets[N, C]``.

    On CPU, for tall ``x`` (N > W >= 2), from the tridiagonal form when ``xᵀx`` is of full rank
    apart from all-zero columns, else (collinear columns) from the eigen-decomposition;
    on other platforms, and for wide ``x``, from the eigen-decomposition. Both give the
    same values up to rounding."""
    # One column: nothing to gain, and XLA:CPU fails to lower a 1 x 1 ``sytrd`` here.
    if _wide(x) or x.shape[1] < 2:
        return _eigen_spectrum(x, targets)

    def on_cpu(x, targets):
        full_rank, spectrum = _tridiagonal_spectrum(x, targets)
        return jax.lax.cond(full_rank, lambda: spectrum,
                            lambda: _eigen_spectrum(x, targets))

    return jax.lax.platform_dependent(x, targets, cpu=on_cpu, default=_eigen_spectrum)


def eigenvalue_sum(spectrum, f):
    """``sum_i f(s)_i`` over the eigenvalues ``s[k]`` of ``xᵀx`` on its smaller side (``f``
    maps ``s[k]`` to ``[k, ...]`` elementwise along the first axis), with the zero
    eigenvalues of all-zero columns counted as ``f(0)``."""
    s = spectrum.eigenvalues
    correction = spectrum.stand_ins * (f(jnp.zeros((1,), s.dtype))
                                       - f(spectrum.stand_in[None]))[0]
    return jnp.sum(f(s), 0) + jnp.where(spectrum.stand_ins > 0, correction, 0.0)


def resolvent_forms(spectrum, shift):
    """``(b_cᵀ r_c, r_cᵀ r_c)`` per target, each ``[C]``, with ``r_c = (xᵀx + shift_c I)⁻¹ b_c``,
    ``b_c = xᵀ t_c`` and ``shift[C]`` >= 0 (a shift of 0 needs :attr:`GramSpectrum`'s
    numerically-zero directions left out, which it does). One tridiagonal solve per
    target."""
    b = spectrum.projections.T[:, :, None]  # [C, k, 1]
    lower = jnp.broadcast_to(spectrum.off_diagonal, b.shape[:2])
    upper = jnp.concatenate([lower[:, 1:], jnp.zeros_like(lower[:, :1])], 1)
    r = jax.lax.linalg.tridiagonal_solve(lower, spectrum.diagonal + shift[:, None], upper, b)
    return jnp.sum(b * r, (1, 2)), jnp.sum(r * r, (1, 2))


def pinv_forms(x, targets, shift):
    """``b_cᵀ pinv(xᵀx + shift I) b_c`` per target, ``[C]``, for ``b_c = xᵀ t_c`` and a
    scalar ``shift`` >= 0, with numerically-zero directions of ``xᵀx`` left out (as in
    :class:`GramSpectrum`).

    On CPU, for tall ``x``, by Cholesky when that is provably the same: with
    ``L Lᵀ = xᵀx + shift I`` (all-zero columns stood in for, :func:`_gram_with_stand_ins`),
    the smallest eigenvalue is at least ``1 / |L⁻¹|²_F`` and the largest at most the trace,
    so no direction is at the :func:`rank_cutoff` when ``1 / |L⁻¹|²_F`` clears twice the
    cutoff of the trace (the factor covers the rounding of ``L⁻¹``). Otherwise, and on
    other platforms, from the eigen-decomposition (:func:`resolvent_forms`)."""
    def exact(x, targets):
        shifts = jnp.full((targets.shape[1],), shift, x.dtype)
        return resolvent_forms(_eigen_spectrum(x, targets), shifts)[0]

    if _wide(x):
        return exact(x, targets)

    def on_cpu(x, targets):
        product, b, _, _ = _gram_with_stand_ins(x, targets)
        product = product + shift * jnp.eye(product.shape[0], dtype=x.dtype)
        chol = jnp.linalg.cholesky(product)
        inverse = solve_triangular(chol, jnp.eye(product.shape[0], dtype=x.dtype),
                                   lower=True)
        smallest = 1.0 / jnp.sum(inverse * inverse)
        safe = smallest > 2.0 * max(x.shape) * jnp.finfo(x.dtype).eps * jnp.trace(product)
        return jax.lax.cond(safe, lambda: jnp.sum((inverse @ b) ** 2, 0),
                            lambda: exact(x, targets))

    return jax.lax.platform_dependent(x, targets, cpu=on_cpu, default=exact)


def principal_components(x, k):
    """Top-``k`` principal components of centred ``x[N, W]``.

    Returns ``(scores[N, k], variances[k], total_variance)``: ``scores = x V_k`` (``V_k``
    the leading eigenvectors of ``xᵀx``, descending), ``variances`` the eigenvalues over
    ``N - 1`` (scikit-learn's ``explained_variance_``). When ``min(N, W) < k`` the missing
    components are zero columns with zero variance, and so are those past the rank of ``x``.
    Signs follow scikit-learn's PCA.
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
    # Past the rank of x the eigenvalues are rounding (about eps * the largest): those
    # components are exactly zero, not noise that a later per-column scaling would blow up.
    beyond_rank = s <= max(x.shape) * jnp.finfo(s.dtype).eps * s[0]
    s, scores = jnp.where(beyond_rank, 0.0, s), jnp.where(beyond_rank, 0.0, scores)
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
