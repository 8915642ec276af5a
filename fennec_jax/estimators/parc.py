"""PARC: Bolya, Mittapalli and Hoffman, "Scalable Diverse Model Selection for Accessible
Transfer Learning", NeurIPS 2021 (dbolya/parc).

Spearman correlation between the representation dissimilarity matrix (RDM) of the
standardised features and that of the one-hot labels, over the upper triangles.
O(N²) memory: above ``max_samples`` samples a fixed random subset is scored.
"""

import jax
import jax.numpy as jnp
import numpy as np

from fennec_jax.estimators import _batch, _common, _linalg

MAX_SAMPLES = 4000


def _standardise(x, mask):
    """scikit-learn's ``StandardScaler`` on the real columns: columns of (numerically)
    zero variance keep scale 1."""
    n = x.shape[0]
    mean = x.mean(0)
    variance = x.var(0)
    eps = jnp.finfo(x.dtype).eps
    constant = variance <= n * eps * variance + (n * mean * eps) ** 2
    return (x - mean) / jnp.where(constant, 1.0, jnp.sqrt(variance)) * mask


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


def _pearson(a, b):
    a, b = a - a.mean(), b - b.mean()
    norm = jnp.sqrt(jnp.sum(a * a) * jnp.sum(b * b))
    return jnp.where(norm > 0, jnp.sum(a * b) / jnp.where(norm > 0, norm, 1.0), 0.0)


def parc_core(model, task, *, pca_dims):
    """PARC of one model; see :func:`parc`."""
    x = model.features
    mask = _common.dim_mask(x.shape[1], model.dim)
    if pca_dims:
        x, _, _ = _linalg.principal_components(x - x.mean(0), pca_dims)
        mask = jnp.ones(pca_dims)
    z = _standardise(x, mask)
    # Rows centred over the real columns and scaled to unit norm: z zᵀ = corrcoef(rows).
    z = (z - z.sum(1, keepdims=True) / mask.sum()) * mask
    norms = jnp.sqrt(jnp.sum(z * z, 1, keepdims=True))
    z = jnp.where(norms > 0, z / jnp.where(norms > 0, norms, 1.0), 0.0)
    upper = np.triu_indices(x.shape[0], 1)
    feature_rdm = 1.0 - (z @ z.T)[upper]
    # The label RDM of one-hot rows is 0 within a class and 1 + 1/(C-1) across. Its average
    # ranks are an increasing affine function of the 'different class' indicator, and the
    # Pearson correlation does not change under one: the indicator needs no ranking.
    different = 1.0 - (task.onehot @ task.onehot.T)[upper]
    return 100.0 * _pearson(_average_ranks(feature_rdm), different)


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
    """``scores[M]`` PARC of many models."""
    del probs_list
    features_list, labels = subsample(features_list, labels, max_samples, seed)
    return _batch.run(parc_core, "parc", features_list, labels, num_classes=num_classes,
                      batch_size=batch_size, options={"pca_dims": pca_dims})


def parc(features, labels, *, num_classes=None, pca_dims=None, max_samples=MAX_SAMPLES,
         seed=0):
    """PARC score (higher = better) of ``features[N, D]`` for ``labels[N]``.

    Variant: Bolya et al. 2021 without the PCA step (the project's ``parc``; pass
    ``pca_dims=32`` for the paper's PCA-to-32 variant, done here by exact PCA rather than
    the reference code's randomised one): standardise the features (scikit-learn's
    StandardScaler), RDM = 1 - corrcoef of the rows, for features and one-hot labels,
    score = 100 x Spearman correlation of the upper triangles. A row that is constant
    after standardisation correlates 0 with every other row; with a single class the label
    RDM is constant and the score is 0. More than ``max_samples`` samples: a random subset
    (``seed``) of that size is used.
    """
    return float(parc_models([features], labels, num_classes=num_classes,
                             pca_dims=pca_dims, max_samples=max_samples, seed=seed)[0])
