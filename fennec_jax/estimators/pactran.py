"""PACTran: Ding et al., "PACTran: PAC-Bayesian Metrics for Estimating the Transferability
of Pretrained Models to Classification Tasks", ECCV 2022 (google-research/pactran_metrics).

Both variants are PAC-Bayesian bounds on the target loss, published lower-is-better; the
scores here are their negatives (higher = better).

- Gaussian: a linear softmax classifier on the features with a Gaussian prior, fitted to
  convergence, plus a flatness term from the diagonal Hessian.
- Dirichlet: the source-head probabilities as a fixed soft clustering, with a Dirichlet
  prior on the cluster-to-label table, 10 mean-field updates.
"""

import jax
import jax.numpy as jnp
from jax.scipy.special import digamma, gammaln

from fennec_jax.estimators import _batch

_LDA_FACTOR = 1.0  # prior variance of the weights = 1 / (lda_factor N)
_S2_FACTOR = 100.0  # posterior variance factor: s2 = 100 / D
_LBFGS_MAX_ITERATIONS = 500
_LBFGS_TOLERANCE = 1e-8
_LBFGS_MEMORY = 10
_ARMIJO = 1e-4
_DIRICHLET_ALPHA = 1.0
_DIRICHLET_ITERATIONS = 10
_LOG_EPSILON = 1e-10


def _masked_log_softmax(logits, present):
    return jax.nn.log_softmax(jnp.where(present, logits, -jnp.inf), axis=-1)


def _minimise(loss, theta):
    """L-BFGS (memory 10, Armijo backtracking) on a flat ``theta`` until the gradient norm
    is below tolerance. A small hand-rolled solver: it compiles in a fraction of the time
    of optax's line-searched L-BFGS, and the problem is smooth and convex."""
    value_and_grad = jax.value_and_grad(loss)
    memory = _LBFGS_MEMORY

    def direction(grad, s_hist, y_hist, rho, stored):
        """Two-loop recursion over the ``stored`` newest pairs of the circular history."""
        count = jnp.minimum(stored, memory)

        def newest_first(j, carry):
            q, alphas = carry
            i = (stored - 1 - j) % memory
            alpha = jnp.where(j < count, rho[i] * (s_hist[i] @ q), 0.0)
            return q - alpha * y_hist[i], alphas.at[i].set(alpha)

        q, alphas = jax.lax.fori_loop(0, memory, newest_first,
                                      (grad, jnp.zeros(memory)))
        last = (stored - 1) % memory
        scale = jnp.where(stored > 0, (s_hist[last] @ y_hist[last])
                          / jnp.maximum(y_hist[last] @ y_hist[last], 1e-300), 1.0)

        def oldest_first(j, r):
            i = (stored - count + j) % memory
            beta = rho[i] * (y_hist[i] @ r)
            return r + jnp.where(j < count, alphas[i] - beta, 0.0) * s_hist[i]

        return -jax.lax.fori_loop(0, memory, oldest_first, scale * q)

    def step(carry):
        theta, value, grad, s_hist, y_hist, rho, stored, iteration = carry
        d = direction(grad, s_hist, y_hist, rho, stored)
        slope = grad @ d
        d, slope = jnp.where(slope < 0, d, -grad), jnp.where(slope < 0, slope, -grad @ grad)
        first = jnp.where(stored > 0, 1.0, 1.0 / jnp.maximum(jnp.linalg.norm(grad), 1.0))

        def too_long(search):
            t, tries = search
            return (loss(theta + t * d) > value + _ARMIJO * t * slope) & (tries < 50)

        t, _ = jax.lax.while_loop(too_long, lambda search: (search[0] / 2, search[1] + 1),
                                  (first, 0))
        new_theta = theta + t * d
        new_value, new_grad = value_and_grad(new_theta)
        s, y = new_theta - theta, new_grad - grad
        curvature = s @ y
        accept = curvature > 1e-12 * jnp.maximum(y @ y, 1e-300)
        i = stored % memory
        s_hist = jnp.where(accept, s_hist.at[i].set(s), s_hist)
        y_hist = jnp.where(accept, y_hist.at[i].set(y), y_hist)
        rho = jnp.where(accept, rho.at[i].set(1.0 / jnp.where(accept, curvature, 1.0)), rho)
        return (new_theta, new_value, new_grad, s_hist, y_hist, rho,
                stored + accept.astype(stored.dtype), iteration + 1)

    def not_done(carry):
        grad, iteration = carry[2], carry[-1]
        return (jnp.linalg.norm(grad) >= _LBFGS_TOLERANCE) & (iteration < _LBFGS_MAX_ITERATIONS)

    value, grad = value_and_grad(theta)
    history = jnp.zeros((memory, theta.size))
    carry = (theta, value, grad, history, history, jnp.zeros(memory), 0, 0)
    return jax.lax.while_loop(not_done, step, carry)[0]


def pactran_gauss_core(model, task):
    """Negative PACTran-Gaussian bound of one model; see :func:`pactran_gauss`."""
    x = model.features - model.features.mean(0)
    onehot = task.onehot
    n, width = x.shape
    present = onehot.sum(0) > 0
    real = (jnp.arange(width) < model.dim)[:, None] & present[None]  # [W, C]
    num_params = model.dim * present.sum()  # kd
    prior_precision = _LDA_FACTOR * n  # ldas2

    num_classes = onehot.shape[1]
    unflatten = lambda theta: (theta[:-num_classes].reshape(width, num_classes),
                               theta[-num_classes:])

    def loss(theta):
        weights, bias = unflatten(theta)
        log_q = _masked_log_softmax(x @ weights + bias, present)
        cross_entropy = -jnp.sum(jnp.where(onehot > 0, log_q, 0.0)) / n
        return cross_entropy + 0.5 * jnp.sum(weights ** 2) / prior_precision

    theta = _minimise(loss, jnp.zeros((width + 1) * num_classes))
    weights, bias = unflatten(theta)
    probs = jnp.exp(_masked_log_softmax(x @ weights + bias, present))
    curvature = probs - probs ** 2  # diagonal Hessian of the cross-entropy per logit
    hessian_weights = jnp.where(real, (x ** 2).T @ curvature + 1.0 / prior_precision, 0.0)
    hessian_sum = hessian_weights.sum() + jnp.sum(jnp.where(present, curvature, 0.0))
    sigma2_inv = hessian_sum * prior_precision / num_params + _LOG_EPSILON
    s2 = _S2_FACTOR / model.dim
    bound = loss(theta) + 0.5 * num_params / prior_precision * s2 * jnp.log(sigma2_inv)
    return -bound


def pactran_dir_core(model, task):
    """Negative PACTran-Dirichlet bound of one model; see :func:`pactran_dir`."""
    probs, onehot = model.probs.astype(jnp.float64), task.onehot
    present = onehot.sum(0) > 0
    counts = onehot.sum(0)[:, None]  # [C, 1]
    prior = _DIRICHLET_ALPHA * counts / counts.sum() + _LOG_EPSILON  # a0
    log_s = jnp.log(probs + _LOG_EPSILON)  # [N, Cs]

    def update(carry, _):
        q = carry[0]
        posterior = prior + onehot.T @ q  # aw [C, Cs]
        logits = log_s + onehot @ digamma(posterior) - digamma(posterior.sum(0))[None]
        log_q = jax.nn.log_softmax(logits, axis=-1)
        return (jnp.exp(log_q), posterior, log_q), None

    # The bound uses the last update's q and the Dirichlet posterior it started from.
    start = (probs, jnp.zeros((onehot.shape[1], probs.shape[1])), log_s)
    (q, posterior, log_q), _ = jax.lax.scan(update, start, None,
                                            length=_DIRICHLET_ITERATIONS)
    log_c0 = gammaln(prior.sum()) - jnp.sum(gammaln(prior))
    log_c = gammaln(posterior.sum(0)) - jnp.sum(gammaln(posterior), 0)
    bound = -jnp.sum(log_c0 - log_c - jnp.sum(q * (log_q - log_s), 0))
    return -bound / (probs.shape[0] * present.sum())


def pactran_gauss(features, labels, *, num_classes=None):
    """Negative PACTran-Gaussian bound (higher = better) of ``features[N, D]``.

    Variant: Ding et al. 2022, ``calculate_pac_gauss`` as used by the ETran reference code
    (features centred, lda_factor = 1, the first reported ``s2 = 100 / D``): minimise
    ``cross-entropy + |W|² / (2 N)`` of a linear softmax classifier (L-BFGS to a gradient
    norm of 1e-8; the reference runs scipy's L-BFGS-B for at most 100 iterations at
    tol 1e-6, which converges on typical inputs), then bound = loss + ``kd / (2 N) s2 log(sigma2_inv)`` with
    ``sigma2_inv = sum(diag Hessian) N / kd + 1e-10``, ``kd = D C``. Returns ``-bound``.
    """
    return float(_batch.run(pactran_gauss_core, "pactran_gauss", [features], labels,
                            num_classes=num_classes)[0])


def pactran_dir(features, labels, probs, *, num_classes=None):
    """Negative PACTran-Dirichlet bound (higher = better) of the source head's
    ``probs[N, Cs]`` for ``labels[N]``.

    Variant: Ding et al. 2022, ``calculate_pac_dir`` with alpha = 1: prior
    ``a0 = alpha n_c / N + 1e-10``, 10 mean-field updates of the soft assignments ``q``
    starting from ``probs``, bound ``-(sum_z [log C(a0) - log C(a_z) - KL(q_z | s_z)]) /
    (N C)``. Returns ``-bound``. ``features`` is not used (it may be None).
    """
    del features
    return float(_batch.run(pactran_dir_core, "pactran_dir", None, labels, [probs],
                            num_classes=num_classes, uses=("probs",))[0])
