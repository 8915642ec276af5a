"""LogME: the logarithm of the maximum label evidence of a Bayesian linear model.

You, Liu, Wang and Long, "LogME: Practical Assessment of Pre-trained Models for Transfer
Learning", ICML 2021, in the fixed-point form of You et al., "Ranking and Tuning Pre-trained
Models: A New Paradigm for Exploiting Model Hubs", JMLR 2022 (thuml/LogME ``_fit_fixed_point``).
"""

import jax
import jax.numpy as jnp
import numpy as np

from fennec_jax.estimators import _batch, _linalg

_MAX_ITERATIONS = 11
_TOLERANCE = 1e-3
_EPSILON = 1e-5
_TINY = 1e-12
_SMALLEST_ALPHA = 1e-300


def logme_core(model, task):
    """LogME of one (padded) model; see :func:`logme`."""
    x, dim, onehot = model.features, model.dim, task.onehot
    n = x.shape[0]
    spectrum = _linalg.gram_spectrum(x, onehot)
    k = spectrum.eigenvalues.shape[0]
    yy = onehot.sum(0)  # |y_c|² of the 0/1 target of each class

    def update(state):
        alpha, beta, m2, res2, done, step = state
        t = alpha / beta
        gamma = _linalg.eigenvalue_sum(spectrum, lambda s: s[:, None] / (s[:, None] + t))
        # With r = (FᵀF + t I)⁻¹ Fᵀy: m = r, and |y - F m|² = |y|² - yᵀF r - t |r|².
        fitted, new_m2 = _linalg.resolvent_forms(spectrum, t)
        new_res2 = yy - fitted - t * new_m2
        # Floored so that features that are all zero (gamma = m2 = 0) keep alpha / beta
        # positive: their evidence is then the limit alpha -> 0, in which the prior terms
        # (dim/2) log alpha - 1/2 log det(alpha I) cancel.
        new_alpha = jnp.maximum(gamma / (new_m2 + _EPSILON), _SMALLEST_ALPHA)
        # gamma < N in exact arithmetic; the floor keeps log(beta) finite if it rounds to N.
        new_beta = jnp.maximum(n - gamma, n * _TINY) / (new_res2 + _EPSILON)
        converged = jnp.abs(new_alpha / new_beta - t) / t <= _TOLERANCE
        keep = lambda old, new: jnp.where(done, old, new)
        return (keep(alpha, new_alpha), keep(beta, new_beta), keep(m2, new_m2),
                keep(res2, new_res2), done | converged, step + 1)

    ones = jnp.ones_like(yy)
    state = (ones, ones, ones, ones, jnp.zeros(yy.shape, bool), 0)
    # Every class stops at its own convergence (as the published per-class loop does);
    # the loop ends when all have, or after the published 11 updates.
    alpha, beta, m2, res2, _, _ = jax.lax.while_loop(
        lambda state: (state[5] < _MAX_ITERATIONS) & ~jnp.all(state[4]), update, state)
    # Sum of log(alpha + beta s) over all `dim` eigenvalues of FᵀF: the k computed here
    # plus dim - k zeros (the zeros the published fixed-point code leaves out when N < D).
    log_det = (_linalg.eigenvalue_sum(spectrum, lambda s: jnp.log(alpha + beta * s[:, None]))
               + (dim - k) * jnp.log(alpha))
    evidence = (dim / 2.0 * jnp.log(alpha) + n / 2.0 * jnp.log(beta) - 0.5 * log_det
                - beta / 2.0 * res2 - alpha / 2.0 * m2 - n / 2.0 * np.log(2 * np.pi)) / n
    present = yy > 0
    return jnp.sum(jnp.where(present, evidence, 0.0)) / jnp.sum(present)


def logme(features, labels, *, num_classes=None):
    """LogME score (higher = better) of ``features[N, D]`` for ``labels[N]``.

    Variant: the fixed-point evidence maximisation of thuml/LogME (JMLR 2022), float64:
    per class a 0/1 regression target; alpha = beta = 1, at most 11 fixed-point updates,
    stop when the relative change of alpha / beta is <= 1e-3, 1e-5 added to the
    denominators; evidence divided by N, averaged over the classes present. The spectrum
    comes from FᵀF (N > D; on CPU its tridiagonal form, the same eigenvalues and
    quadratic forms without the eigenvectors) or F Fᵀ (N <= D). Unlike the published
    fixed-point code, the log-determinant counts all D eigenvalues of FᵀF, including the
    D - N zeros when N < D (as the original ICML full-SVD code does).
    """
    return float(_batch.run(logme_core, "logme", [features], labels,
                            num_classes=num_classes)[0])
