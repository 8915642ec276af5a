"""The CPU fast paths of the estimators' linear algebra (tridiagonal spectrum, Cholesky
quadratic forms) against dense NumPy formulas, on full-rank, zero-column and collinear
features (the last must fall back to the eigen-decomposition)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fennec_jax.estimators import _common, _linalg


def _features(case, rng):
    """``x[60, 12]`` and one-hot ``targets[60, 3]``."""
    x = rng.standard_normal((60, 12)) * np.linspace(0.5, 3.0, 12)
    if case == "zero_columns":  # padding at the end and a dead unit in the middle
        x[:, [4, 10, 11]] = 0.0
    elif case == "collinear":
        x[:, 7] = 2.0 * x[:, 2] - x[:, 5]
    targets = np.eye(3)[rng.integers(0, 3, 60)]
    return x, targets


CASES = ["full_rank", "zero_columns", "collinear"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_eigvalsh_lapack_matches_numpy(dtype):
    a = np.random.default_rng(0).standard_normal((9, 9))
    a = (a + a.T).astype(dtype)
    with _common.float64():
        values = np.asarray(jax.jit(_linalg._eigvalsh_lapack)(jnp.asarray(a)))
    assert values.dtype == dtype
    np.testing.assert_allclose(values, np.linalg.eigvalsh(a.astype(np.float64)),
                               atol=1e-4 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("case", CASES)
def test_tridiagonal_spectrum_takes_the_fast_path_unless_collinear(case):
    x, targets = _features(case, np.random.default_rng(1))
    with _common.float64():
        full_rank, _ = jax.jit(_linalg._tridiagonal_spectrum)(jnp.asarray(x),
                                                              jnp.asarray(targets))
    assert bool(full_rank) == (case != "collinear")


@pytest.mark.parametrize("case", CASES)
def test_gram_spectrum_forms_and_eigenvalue_sums(case):
    x, targets = _features(case, np.random.default_rng(2))
    gram, b = x.T @ x, x.T @ targets
    shift = np.array([0.5, 3.0, 40.0])
    with _common.float64():
        def forms(x, targets):
            spectrum = _linalg.gram_spectrum(x, targets)
            first, second = _linalg.resolvent_forms(spectrum, jnp.asarray(shift))
            log_det = _linalg.eigenvalue_sum(
                spectrum, lambda s: jnp.log(shift + s[:, None]))
            return first, second, log_det

        first, second, log_det = jax.jit(forms)(jnp.asarray(x), jnp.asarray(targets))
    for c, t in enumerate(shift):
        r = np.linalg.solve(gram + t * np.eye(12), b[:, c])
        np.testing.assert_allclose(first[c], b[:, c] @ r, rtol=1e-9)
        np.testing.assert_allclose(second[c], r @ r, rtol=1e-9)
        # Every eigenvalue of xᵀx counts, the exact zeros of zero columns included.
        np.testing.assert_allclose(log_det[c], np.linalg.slogdet(gram + t * np.eye(12))[1],
                                   rtol=1e-9)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("shift", [0.0, 25.0])
def test_pinv_forms(case, shift):
    x, targets = _features(case, np.random.default_rng(3))
    b = x.T @ targets
    # The pseudo-inverse with NumPy's matrix_rank cut-off, as GramSpectrum documents.
    matrix = x.T @ x + shift * np.eye(12)
    expected = np.einsum("ic,ij,jc->c", b, np.linalg.pinv(matrix, rcond=60 * 2.3e-16), b)
    with _common.float64():
        got = jax.jit(_linalg.pinv_forms)(jnp.asarray(x), jnp.asarray(targets), shift)
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_accelerator_lowering_uses_the_eigen_decomposition():
    """Lowered for CUDA (no GPU needed), the spectrum and the quadratic forms take the
    eigen-decomposition branch: no LAPACK kernel and no tridiagonal reduction, which only
    the CPU branch calls."""
    x = jax.ShapeDtypeStruct((60, 12), jnp.float64)
    targets = jax.ShapeDtypeStruct((60, 3), jnp.float64)
    with _common.float64():
        for fn in (_linalg.gram_spectrum, lambda x, t: _linalg.pinv_forms(x, t, 0.0)):
            module = jax.export.export(jax.jit(fn), platforms=("cuda",))(x, targets)
            text = module.mlir_module()
            assert "syevd" in text and "lapack" not in text and "sytrd" not in text
