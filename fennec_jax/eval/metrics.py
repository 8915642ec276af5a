"""Ranking metrics between true and predicted model scores, vectorised over tasks.

Every metric compares ``true[..., M]`` (ground-truth transfer performance of ``M``
models) with ``pred[..., M]`` (a transferability estimate of the same models) along
the last axis and returns one value per leading index, shape ``[...]``. Leading axes
(tasks, seeds, ...) broadcast against each other, so ``true[T, M]`` can be scored
against ``pred[S, T, M]`` in one call. Higher scores are better in both arrays.

Conventions shared by all metrics
---------------------------------
mask
    Optional boolean ``mask[..., M]`` of valid entries (default: all valid). Entries
    outside the mask are ignored completely: they may hold anything, NaN included,
    and never change a result. Every metric equals its value on the valid subset.
Fewer than two valid entries
    The result is NaN: with zero or one model there is no ranking to evaluate.
Constant ``true`` or constant ``pred`` (among valid entries)
    The correlation metrics (`weighted_tau`, `kendall_tau`, `spearman`, `pearson`)
    return 0.0: a ranking without any order carries no information, so it counts as
    uncorrelated. (SciPy returns NaN in this case.) `ndcg_at_k` returns 0.0 when
    ``true`` is constant (all gains are zero); see its docstring.
Non-finite values inside the mask
    When a metric is called eagerly (outside `jax.jit` / `jax.vmap`), NaN or
    infinite values inside the mask raise ``ValueError`` (see `check_finite`).
    Under a transformation the values cannot be inspected, so the affected results
    are NaN instead.
Precision
    Computation runs in the promoted floating dtype of the inputs, at least float32;
    float64 inputs with ``jax_enable_x64`` give float64 results. Tie detection is
    exact comparison of the values in that dtype.
Scale
    All metrics are O(M log M) or better in time and O(M) in memory per task
    (`kendall_tau` and `weighted_tau` are O(M log^2 M)), so M of several tens of
    thousands of models is fine.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax


def check_finite(true, pred, mask=None):
    """Raises ``ValueError`` if ``true`` or ``pred`` has a NaN or infinity inside ``mask``.

    Parameters
    ----------
    true, pred : array_like, shape ``[..., M]`` (leading axes broadcastable)
        Scores to validate.
    mask : array_like of bool, shape ``[..., M]``, optional
        Valid entries; entries outside it are not checked. Default: all valid.

    Notes
    -----
    Needs concrete values: call it outside `jax.jit`. The metric functions call it
    themselves whenever their inputs are concrete.
    """
    valid = True if mask is None else jnp.asarray(mask)
    for name, values in (("true", true), ("pred", pred)):
        bad = jnp.logical_and(valid, ~jnp.isfinite(jnp.asarray(values)))
        if bool(jnp.any(bad)):
            first = tuple(int(i[0]) for i in jnp.nonzero(bad))
            raise ValueError(
                f"`{name}` must be finite inside `mask`; found {int(jnp.sum(bad))} "
                f"NaN/inf value(s), the first at index {first}.")


def _prepare(true, pred, mask):
    """Converts and validates the public arguments: returns ``(true, pred, mask)``."""
    true, pred = jnp.asarray(true), jnp.asarray(pred)
    for name, values in (("true", true), ("pred", pred)):
        if values.ndim == 0:
            raise ValueError(f"`{name}` must have shape [..., M], got a scalar.")
        if not (jnp.issubdtype(values.dtype, jnp.floating)
                or jnp.issubdtype(values.dtype, jnp.integer)):
            raise ValueError(f"`{name}` must hold real numbers, got dtype {values.dtype}.")
    if true.shape[-1] == 0:
        raise ValueError(
            f"`true` and `pred` need at least one model (M >= 1), got shape {true.shape}.")
    if true.shape[-1] != pred.shape[-1]:
        raise ValueError(
            f"`true` and `pred` must have the same last axis (models), got shapes "
            f"{true.shape} and {pred.shape}.")
    if mask is None:
        mask = jnp.ones(true.shape[-1:], dtype=bool)
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
        raise ValueError(f"`mask` must be a boolean array, got dtype {mask.dtype}.")
    if mask.ndim == 0 or mask.shape[-1] != true.shape[-1]:
        raise ValueError(
            f"`mask` must have shape [..., {true.shape[-1]}] like `true`, got {mask.shape}.")
    try:
        jnp.broadcast_shapes(true.shape, pred.shape, mask.shape)
    except ValueError:
        raise ValueError(
            f"leading axes of `true` {true.shape}, `pred` {pred.shape} and `mask` "
            f"{mask.shape} do not broadcast.") from None
    if not any(isinstance(a, jax.core.Tracer) for a in (true, pred, mask)):
        check_finite(true, pred, mask)
    dtype = jnp.promote_types(jnp.result_type(true, pred), jnp.float32)
    # Broadcast here, so that `_batched` compiles once per full shape.
    return jnp.broadcast_arrays(true.astype(dtype), pred.astype(dtype), mask)


def _check_k(k):
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` must be a positive int, got {k!r}.")


@functools.partial(jax.jit, static_argnames=("metric_1d", "k"))
def _batched(true, pred, mask, *, metric_1d, k=None):
    """Applies ``metric_1d(true[M], pred[M], valid[M])`` over the leading axes of
    ``true``, ``pred`` and ``mask`` (all of the same shape)."""
    batch_shape, m = true.shape[:-1], true.shape[-1]
    metric = metric_1d if k is None else functools.partial(metric_1d, k=k)
    flat = jax.vmap(metric)(*(a.reshape(-1, m) for a in (true, pred, mask)))
    return jax.tree.map(lambda v: v.reshape(batch_shape), flat)


# ---------------------------------------------------------------------------
# Per-task building blocks: 1-D arrays of length M plus a boolean `valid[M]`.
# ---------------------------------------------------------------------------


def _finish(value, true, pred, valid):
    """NaN where fewer than 2 entries are valid or a valid entry is non-finite."""
    nonfinite = jnp.any(valid & ~(jnp.isfinite(true) & jnp.isfinite(pred)))
    return jnp.where((jnp.sum(valid) < 2) | nonfinite, jnp.nan, value).astype(true.dtype)


def _sort_order(keys, valid):
    """Permutation ``order[M]``: valid entries first, ascending by ``keys`` (first key
    major), ties broken by index, so the result is deterministic (a stable sort)."""
    index = lax.iota(jnp.int32, valid.shape[0])
    operands = ((~valid).astype(jnp.int32), *keys, index)
    return lax.sort(operands, num_keys=len(operands))[-1]


def _search(sorted_keys, queries, lo, hi, inclusive, steps=None):
    """Vectorised binary search within per-query ranges of an ascending sequence.

    ``sorted_keys`` and ``queries`` are tuples of arrays compared lexicographically
    (first key major); ``sorted_keys[k][lo:hi]`` must be ascending for each query and
    ``hi - lo < 2**steps`` (default ``steps``: enough for the whole sequence).
    Returns per query the insertion point in ``[lo, hi]``: the first position whose
    key is ``> query`` if ``inclusive`` (bool, per query or shared), else ``>= query``.
    """
    size = sorted_keys[0].shape[0]
    steps = size.bit_length() if steps is None else steps

    def precedes(position):  # key < query, or key <= query where inclusive
        keys = [k[position] for k in sorted_keys]
        result = (keys[-1] < queries[-1]) | (inclusive & (keys[-1] == queries[-1]))
        for key, query in zip(keys[-2::-1], queries[-2::-1]):
            result = (key < query) | ((key == query) & result)
        return result

    def halve(_, bounds):
        lo, hi = bounds
        middle = (lo + hi) // 2
        active = lo < hi
        go_right = precedes(jnp.minimum(middle, size - 1))
        return (jnp.where(active & go_right, middle + 1, lo),
                jnp.where(active & ~go_right, middle, hi))

    shape = queries[0].shape
    bounds = (jnp.broadcast_to(lo, shape), jnp.broadcast_to(hi, shape))
    return lax.fori_loop(0, steps, halve, bounds)[0]


def _tie_ranks(values, valid):
    """0-based rank range ``(lowest[M], highest[M])`` of each valid entry's tie group
    among the ``n`` valid entries (ascending); invalid entries get ``(n, n)``, above
    every valid rank."""
    n = jnp.sum(valid, dtype=jnp.int32)
    sorted_values = values[_sort_order((values,), valid)]
    lowest = _search((sorted_values,), (values,), 0, n, inclusive=False)
    highest = _search((sorted_values,), (values,), 0, n, inclusive=True) - 1
    return jnp.where(valid, lowest, n), jnp.where(valid, highest, n)


def _discordant_partners(ranks):
    """``count[i] = #{j < i: ranks[j] > ranks[i]} + #{j > i: ranks[j] < ranks[i]}``.

    Bottom-up merge sort that counts while it merges: at level ``l`` the array is
    sorted within halves of ``2**l`` positions, and each entry binary-searches the
    other half of its block, which gives both its count of discordant partners
    there and its position in the merged block. Each pair meets exactly once.
    O(M log^2 M) time, O(M) memory.
    """
    size = ranks.shape[0]
    position = lax.iota(jnp.int32, size)

    def merge_level(level, state):
        merged, origin, count = state  # `merged` ascends within halves of 2**level
        half_id = position >> level
        is_left = half_id % 2 == 0
        other = jnp.where(is_left, half_id + 1, half_id - 1)
        lo = jnp.minimum(other << level, size)
        hi = jnp.minimum((other + 1) << level, size)
        # Left entries count lower ranks in the right half; right entries count the
        # left half minus its ranks <= theirs (equal ranks merge left first).
        found = _search((merged,), (merged,), lo, hi, inclusive=~is_left, steps=level + 1)
        count = count + jnp.where(is_left, found - lo, hi - found)
        # Merged position: own index in the block plus the other half's entries before.
        target = jnp.where(is_left, position, position - (1 << level)) + found - lo
        return tuple(jnp.zeros_like(a).at[target].set(a, unique_indices=True)
                     for a in (merged, origin, count))

    levels = max(size - 1, 0).bit_length()
    _, origin, count = lax.fori_loop(
        0, levels, merge_level, (ranks, position, jnp.zeros(size, jnp.int32)))
    return jnp.zeros_like(count).at[origin].set(count, unique_indices=True)


def _kendall_taus_1d(true, pred, valid):
    """``(tau_b, weighted_tau)``: Kendall tau-b and additive hyperbolic weighted tau."""
    n = jnp.sum(valid, dtype=jnp.int32)
    true_low, true_high = _tie_ranks(true, valid)
    pred_low, pred_high = _tie_ranks(pred, valid)
    # Lexicographic (true, pred) order, ties by index: the order of scipy's
    # np.lexsort((pred, true)), whose reverse defines weightedtau's ranks.
    order = _sort_order((true_low, pred_low), valid)
    true_rank, pred_rank = true_low[order], pred_low[order]
    joint = (true_rank, pred_rank)
    tied_both = (_search(joint, joint, 0, n, inclusive=True)
                 - _search(joint, joint, 0, n, inclusive=False) - 1)
    # Per entry i (in sorted order), counts over its n - 1 partners j.
    untied_true = n - 1 - (true_high - true_low)[order]
    untied_pred = n - 1 - (pred_high - pred_low)[order]
    untied_both = untied_true + untied_pred - (n - 1) + tied_both
    discordant = _discordant_partners(pred_rank)
    concordance = untied_both - 2 * discordant  # concordant minus discordant partners

    position = lax.iota(jnp.int32, valid.shape[0])
    in_range = position < n
    dtype = true.dtype

    def tau(weight):
        # Additive pair weights w_i + w_j summed over pairs = sum_i w_i * (count over j).
        numerator = jnp.sum(weight * concordance.astype(dtype))
        norm_true = jnp.sum(weight * untied_true.astype(dtype))
        norm_pred = jnp.sum(weight * untied_pred.astype(dtype))
        constant = (norm_true == 0) | (norm_pred == 0)
        value = numerator / jnp.sqrt(jnp.where(constant, 1, norm_true * norm_pred))
        return jnp.where(constant, 0.0, jnp.clip(value, -1.0, 1.0))

    # weightedtau rank: 0 for the lexicographically largest entry, weight 1/(rank + 1).
    hyperbolic = jnp.where(in_range, 1 / jnp.maximum(n - position, 1).astype(dtype), 0)
    return (_finish(tau(in_range.astype(dtype)), true, pred, valid),
            _finish(tau(hyperbolic), true, pred, valid))


def _kendall_tau_1d(true, pred, valid):
    return _kendall_taus_1d(true, pred, valid)[0]


def _weighted_tau_1d(true, pred, valid):
    return _kendall_taus_1d(true, pred, valid)[1]


def _pearson_1d(true, pred, valid):
    n = jnp.sum(valid)

    def centred(x):
        x = jnp.where(valid, x, 0)
        x = jnp.where(valid, x - jnp.sum(x) / jnp.maximum(n, 1), 0)
        return x / jnp.maximum(jnp.max(jnp.abs(x)), jnp.finfo(x.dtype).tiny)  # no overflow

    def is_constant(x):
        return jnp.max(jnp.where(valid, x, -jnp.inf)) == jnp.min(jnp.where(valid, x, jnp.inf))

    t, p = centred(true), centred(pred)
    constant = is_constant(true) | is_constant(pred)
    norm = jnp.sqrt(jnp.sum(t * t)) * jnp.sqrt(jnp.sum(p * p))
    value = jnp.sum(t * p) / jnp.where(constant, 1, norm)
    return _finish(jnp.where(constant, 0.0, jnp.clip(value, -1.0, 1.0)), true, pred, valid)


def _average_ranks(values, valid):
    lowest, highest = _tie_ranks(values, valid)
    return (lowest + highest).astype(values.dtype) / 2


def _spearman_1d(true, pred, valid):
    value = _pearson_1d(_average_ranks(true, valid), _average_ranks(pred, valid), valid)
    return _finish(value, true, pred, valid)


def _best_by_pred(pred, valid, k):
    """Indices ``[min(k, M)]`` of the k highest valid ``pred``, ties to the lowest index
    (``lax.top_k`` order); invalid entries come last."""
    return lax.top_k(jnp.where(valid, pred, -jnp.inf), min(k, pred.shape[0]))[1]


def _top1_regret_1d(true, pred, valid):
    best = jnp.max(jnp.where(valid, true, -jnp.inf))
    chosen = true[_best_by_pred(pred, valid, 1)[0]]
    return _finish(best - chosen, true, pred, valid)


def _top1_regret_normalized_1d(true, pred, valid):
    spread = jnp.max(jnp.where(valid, true, -jnp.inf)) - jnp.min(jnp.where(valid, true, jnp.inf))
    regret = _top1_regret_1d(true, pred, valid)
    value = jnp.where(spread > 0, regret / jnp.where(spread > 0, spread, 1), 0.0)
    return _finish(value, true, pred, valid)


def _topk_hit_rate_1d(true, pred, valid, k):
    best = jnp.max(jnp.where(valid, true, -jnp.inf))
    top = _best_by_pred(pred, valid, k)
    hit = jnp.any(valid[top] & (true[top] == best))
    return _finish(hit.astype(true.dtype), true, pred, valid)


def _ndcg_at_k_1d(true, pred, valid, k):
    gain = jnp.where(valid, true - jnp.min(jnp.where(valid, true, jnp.inf)), 0)
    k = min(k, true.shape[0])
    discount = 1 / jnp.log2(jnp.arange(2, k + 2, dtype=true.dtype))
    dcg = jnp.sum(gain[_best_by_pred(pred, valid, k)] * discount)
    ideal = jnp.sum(lax.top_k(gain, k)[0] * discount)
    value = jnp.where(ideal > 0, dcg / jnp.where(ideal > 0, ideal, 1), 0.0)
    return _finish(value, true, pred, valid)


def _ranking_metrics_1d(true, pred, valid):
    kendall, weighted = _kendall_taus_1d(true, pred, valid)
    return {
        "weighted_tau": weighted,
        "kendall": kendall,
        "spearman": _spearman_1d(true, pred, valid),
        "pearson": _pearson_1d(true, pred, valid),
        "top1_regret": _top1_regret_1d(true, pred, valid),
        "top1_regret_normalized": _top1_regret_normalized_1d(true, pred, valid),
    }


# ---------------------------------------------------------------------------
# Public metrics.
# ---------------------------------------------------------------------------

_PARAMETER_DOCS = {
    "true_pred": """Parameters
    ----------
    true : array_like, shape ``[..., M]``
        Ground-truth scores of M models (higher is better).
    pred : array_like, shape ``[..., M]``
        Predicted scores of the same models (higher is better). Leading axes
        broadcast with those of ``true`` and ``mask``.""",
    "mask": """mask : array_like of bool, shape ``[..., M]``, optional
        Valid entries; the others are ignored and may hold NaN. Default: all valid.""",
    # The correlation metrics' shared conventions (`_finish` and their constant checks).
    "correlation_returns": """Returns
    -------
    Array, shape ``[...]``
        The correlation, in [-1, 1]. NaN with fewer than 2 valid entries; 0.0 if
        ``true`` or ``pred`` is constant (all its valid values exactly equal).""",
}


def weighted_tau(true, pred, mask=None):
    """Weighted Kendall tau (Vigna, 2015), additive hyperbolic weights.

    Equals ``scipy.stats.weightedtau(true, pred, rank=None)`` on the valid entries
    (up to floating-point rounding), except that constant input gives 0.0, not NaN.

    {true_pred}
    {mask}

    {correlation_returns}

    Notes
    -----
    Entries are ranked by decreasing lexicographic order of ``(true, pred)``
    (ground truth major, prediction breaking ties; entries equal in both are ranked
    by decreasing index, as in SciPy): rank ``r = 0`` is the best model. An entry of
    rank ``r`` has weight ``w = 1 / (r + 1)`` and a pair of entries weighs
    ``w_i + w_j``, so swaps among the top models count most. With weighted sums
    over pairs ``C`` (concordant), ``D`` (discordant), ``T`` (tied in ``true`` only),
    ``P`` (tied in ``pred`` only)::

        tau = (C - D) / sqrt((C + D + T) * (C + D + P))

    Pairs tied in both count in neither factor, as in tau-b. The swapped call
    ``weighted_tau(pred, true)`` is a different statistic. Computed by merge-sort
    counting in O(M log^2 M) time and O(M) memory.

    References
    ----------
    .. [1] S. Vigna, "A weighted correlation index for rankings with ties", WWW 2015.
    """
    true, pred, mask = _prepare(true, pred, mask)
    return _batched(true, pred, mask, metric_1d=_weighted_tau_1d)


def kendall_tau(true, pred, mask=None):
    """Kendall rank correlation, tau-b (adjusted for ties).

    Equals ``scipy.stats.kendalltau(true, pred).statistic`` (its default
    ``variant='b'``) on the valid entries, except that constant input gives 0.0.

    {true_pred}
    {mask}

    {correlation_returns}

    Notes
    -----
    With pair counts ``C`` (concordant), ``D`` (discordant), ``T`` (tied in
    ``true`` only) and ``P`` (tied in ``pred`` only)::

        tau_b = (C - D) / sqrt((C + D + T) * (C + D + P))

    It is `weighted_tau` with every pair weighing 1. Computed by merge-sort counting
    in O(M log^2 M) time and O(M) memory.
    """
    true, pred, mask = _prepare(true, pred, mask)
    return _batched(true, pred, mask, metric_1d=_kendall_tau_1d)


def spearman(true, pred, mask=None):
    """Spearman rank correlation: Pearson correlation of the ranks.

    Equals ``scipy.stats.spearmanr(true, pred).statistic`` on the valid entries,
    except that constant input gives 0.0. Tied values get the average of the ranks
    they span (``scipy.stats.rankdata(method='average')``).

    {true_pred}
    {mask}

    {correlation_returns}
    """
    true, pred, mask = _prepare(true, pred, mask)
    return _batched(true, pred, mask, metric_1d=_spearman_1d)


def pearson(true, pred, mask=None):
    """Pearson linear correlation coefficient.

    Equals ``scipy.stats.pearsonr(true, pred).statistic`` on the valid entries,
    except that constant input gives 0.0 (SciPy: NaN and a warning).

    {true_pred}
    {mask}

    {correlation_returns}

    Notes
    -----
    Two-pass: the values are centred on their mean and scaled by their largest
    magnitude before the products are summed, so large offsets and magnitudes do
    not overflow or cancel in float32.
    """
    true, pred, mask = _prepare(true, pred, mask)
    return _batched(true, pred, mask, metric_1d=_pearson_1d)


def top1_regret(true, pred, mask=None):
    """Regret of picking the model with the highest prediction, in units of ``true``.

    ``max(true) - true[i*]`` with ``i* = argmax(pred)`` over the valid entries.

    {true_pred}
    {mask}

    Returns
    -------
    regret : Array, shape ``[...]``
        Non-negative; 0.0 when the chosen model is (one of) the truly best. NaN with
        fewer than 2 valid entries.

    Notes
    -----
    If several valid entries share the highest ``pred``, the one with the lowest
    index is chosen (``jnp.argmax`` convention), so a constant ``pred`` picks the
    first valid model.
    """
    true, pred, mask = _prepare(true, pred, mask)
    return _batched(true, pred, mask, metric_1d=_top1_regret_1d)


def top1_regret_normalized(true, pred, mask=None):
    """`top1_regret` as a fraction of the range of ``true``: comparable across tasks.

    ``(max(true) - true[i*]) / (max(true) - min(true))`` with ``i* = argmax(pred)``, both
    extremes over the valid entries.

    {true_pred}
    {mask}

    Returns
    -------
    regret : Array, shape ``[...]``
        In [0, 1]: 0.0 when the chosen model is (one of) the truly best, 1.0 when it is
        (one of) the truly worst. 0.0 if ``true`` is constant (every pick is the best).
        NaN with fewer than 2 valid entries.

    Notes
    -----
    Raw regret averaged over tasks whose scores are in different units (or spreads) is
    dominated by the widest task; this normalised form weighs every task alike. It is
    unchanged when ``true`` is shifted or multiplied by a positive constant. Ties in
    ``pred`` as in `top1_regret`.
    """
    true, pred, mask = _prepare(true, pred, mask)
    return _batched(true, pred, mask, metric_1d=_top1_regret_normalized_1d)


def topk_hit_rate(true, pred, k, mask=None):
    """Whether a truly best model is among the ``k`` highest predictions: 1.0 or 0.0.

    Average it over tasks to get the hit rate.

    {true_pred}
    k : int
        Number of top-predicted models that are selected (``k >= 1``; larger than
        the number of valid entries means all of them, giving 1.0).
    {mask}

    Returns
    -------
    hit : Array, shape ``[...]``
        1.0 if any valid entry attaining the largest valid ``true`` is selected, else
        0.0. NaN with fewer than 2 valid entries.

    Notes
    -----
    The ``k`` selected entries are the first ``k`` valid entries in decreasing
    ``pred`` order, ties broken by lowest index (as in `top1_regret`; so
    ``topk_hit_rate(..., k=1) == (top1_regret(...) == 0)``).
    """
    _check_k(k)
    true, pred, mask = _prepare(true, pred, mask)
    return _batched(true, pred, mask, metric_1d=_topk_hit_rate_1d, k=k)


def ndcg_at_k(true, pred, k, mask=None):
    """Normalised discounted cumulative gain of the top ``k`` predictions.

    ``NDCG@k = DCG@k(pred order) / DCG@k(ideal order)`` with
    ``DCG@k = sum(gain[order[r]] / log2(r + 2) for r in range(k))``.

    {true_pred}
    k : int
        Number of ranked positions evaluated (``k >= 1``; values above the number of
        valid entries evaluate the whole ranking).
    {mask}

    Returns
    -------
    ndcg : Array, shape ``[...]``
        In [0, 1]; 1.0 when the top ``k`` predicted models carry the ``k`` largest
        gains in order. 0.0 if ``true`` is constant (every gain is zero, the
        scikit-learn convention). NaN with fewer than 2 valid entries.

    Notes
    -----
    Gains are the true scores shifted to be non-negative:
    ``gain = true - min(true)`` over the valid entries, so the worst valid model
    has gain 0. Gains are linear (not exponentiated), so NDCG is unchanged when
    ``true`` is shifted or multiplied by a positive constant. The
    predicted order is decreasing ``pred`` with ties broken by lowest index, as in
    `top1_regret` (scikit-learn's ``ndcg_score`` instead averages over tied
    predictions).
    """
    _check_k(k)
    true, pred, mask = _prepare(true, pred, mask)
    return _batched(true, pred, mask, metric_1d=_ndcg_at_k_1d, k=k)


def ranking_metrics(true, pred, mask=None):
    """The evaluation protocol's metrics, computed together in one pass.

    {true_pred}
    {mask}

    Returns
    -------
    metrics : dict of str to Array, each of shape ``[...]``
        ``weighted_tau`` (`weighted_tau`), ``kendall`` (`kendall_tau`),
        ``spearman`` (`spearman`), ``pearson`` (`pearson`), ``top1_regret``
        (`top1_regret`) and ``top1_regret_normalized`` (`top1_regret_normalized`), with
        the conventions of those functions.
    """
    true, pred, mask = _prepare(true, pred, mask)
    return _batched(true, pred, mask, metric_1d=_ranking_metrics_1d)


for _metric in (weighted_tau, kendall_tau, spearman, pearson, top1_regret, top1_regret_normalized, topk_hit_rate,
                ndcg_at_k, ranking_metrics):
    if _metric.__doc__:  # None under python -OO
        _metric.__doc__ = _metric.__doc__.format(**_PARAMETER_DOCS)
del _metric
