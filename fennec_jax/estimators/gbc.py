"""GBC: Pándy et al., "Transferability Estimation using Bhattacharyya Class Separability",
CVPR 2022 (google-research ``stable_transfer/transferability/gbc.py``).

Each class is a Gaussian with diagonal (or spherical) covariance; the score is minus the sum
over ordered pairs of distinct classes of the Bhattacharyya coefficient ``exp(-D_B)``.
"""

import functools

import jax.numpy as jnp

from fennec_jax.estimators import _batch, _common

_MIN_VARIANCE = 1e-4


def gbc_core(model, task, *, spherical):
    """GBC of one model; see :func:`gbc` / :func:`gbc_diagonal`. The per-class sums over
    samples run in the features' dtype (float32 input: relative error about 1e-6), the
    rest in float64."""
    x, onehot = model.features, task.onehot
    mask = _common.dim_mask(x.shape[1], model.dim)
    counts, present, means = _common.class_stats(x, task)  # means [C, W] float64
    residual = x - means.astype(x.dtype)[task.labels]
    variances = jnp.maximum(_common.class_sums(residual ** 2, task).astype(jnp.float64)
                            / jnp.maximum(counts, 1.0)[:, None],
                            _MIN_VARIANCE)  # [C, W], population variance
    gap2 = (means[:, None] - means[None]) ** 2 * mask  # [C, C, W]
    if spherical:
        sigma = jnp.sum(variances * mask, 1) / model.dim  # [C]
        average = (sigma[:, None] + sigma[None]) / 2
        distance = (gap2.sum(-1) / average / 8
                    + 0.5 * (jnp.log(average) - 0.5 * jnp.log(sigma)[:, None]
                             - 0.5 * jnp.log(sigma)[None]))
    else:
        average = (variances[:, None] + variances[None]) / 2  # [C, C, W]
        log_ratio = (jnp.log(average) - 0.5 * jnp.log(variances)[:, None]
                     - 0.5 * jnp.log(variances)[None])
        distance = jnp.sum((gap2 / average / 8 + 0.5 * log_ratio) * mask, -1)
    pairs = present[:, None] & present[None] & ~jnp.eye(onehot.shape[1], dtype=bool)
    return -jnp.sum(jnp.where(pairs, jnp.exp(-distance), 0.0))


gbc_spherical_core = _batch.keeps_input_dtype(functools.partial(gbc_core, spherical=True))
gbc_diagonal_core = _batch.keeps_input_dtype(functools.partial(gbc_core, spherical=False))


def gbc(features, labels, *, num_classes=None):
    """GBC with spherical Gaussians (higher = better) of ``features[N, D]``.

    Variant: Pándy et al. 2022, google-research code: per class mean and population
    variance (ddof = 0) floored at 1e-4; spherical = each class's variance averaged over
    the D dimensions; Bhattacharyya distance
    ``|mu_1 - mu_2|² / (8 s) + 1/2 (log s - 1/2 log s_1 - 1/2 log s_2)``, ``s = (s_1 + s_2) / 2``;
    score ``-sum_{c1 != c2} exp(-D_B)`` over ordered pairs of present classes (0 for C = 1).
    """
    return float(_batch.run(gbc_spherical_core, "gbc", [features], labels,
                            num_classes=num_classes)[0])


def gbc_diagonal(features, labels, *, num_classes=None):
    """GBC with diagonal Gaussians (higher = better) of ``features[N, D]``.

    Variant: as :func:`gbc` with a per-dimension variance (floored at 1e-4) and the
    Bhattacharyya distance of diagonal Gaussians, summed over dimensions.
    """
    return float(_batch.run(gbc_diagonal_core, "gbc_diagonal", [features], labels,
                            num_classes=num_classes)[0])
