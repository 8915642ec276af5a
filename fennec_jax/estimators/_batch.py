"""Scoring many models on one task with one vmapped call per group of similar widths.

An estimator is a *core*, ``core(model: Model, task: Task, **options) -> value``, a pure
JAX function of one model's padded inputs. :func:`run` checks every model's inputs, pads
features to a shared width (zero columns; ``Model.dim`` keeps the true width so the cores
mask padding), stacks the models of each width group and maps the core over them with
``jax.vmap`` (or ``jax.lax.map`` in chunks of ``batch_size`` to bound memory). There is no
Python loop over models inside a group; groups exist only so that one 2048-wide model does
not force 64 others to 2048 columns. On CPU, NumPy inputs that must be copied into aligned
memory are staged in runs of about 32 MB through one reused buffer (:func:`chunks`).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fennec_jax.estimators import _common

# XLA:CPU uses a host array in place (no copy) when its data is aligned to this.
_ALIGNMENT = 64
# Host staging buffer on CPU, and the fewest models per staged run (see :func:`chunks`).
_STAGING_BYTES = 32 << 20
_MIN_RUN = 4


class Model(NamedTuple):
    """One model's inputs to a core (fields the estimator does not use are None).

    features: ``[N, W]`` float64 (inside a core; see :func:`keeps_input_dtype`),
      zero-padded beyond ``dim``.
    dim: ``[]`` int32, the true feature width.
    probs: ``[N, Cs]`` source-head probabilities in the caller's dtype (float32 or
      float64): cores cast them where they compute.
    """

    features: jax.Array | None
    dim: jax.Array | None
    probs: jax.Array | None


def padded_width(dim, num_samples):
    """The width a ``dim``-wide model is padded to when batched with others: the next power
    of two (at least 8), but never past ``num_samples`` when ``dim`` fits under it, so a
    narrow model keeps its cheap ``W x W`` algebra."""
    width = max(8, 1 << (int(dim) - 1).bit_length())
    return min(width, num_samples) if dim <= num_samples else width


def keeps_input_dtype(core):
    """Mark ``core`` as taking float32 features as they are (it casts to float64 where it
    needs to) rather than cast to float64 first: for cores that only sum over samples,
    a float64 copy of ``features`` would cost more than the rest of the work."""
    core.keeps_input_dtype = True
    return core


def _features_dtype(core, dtype):
    keep = getattr(core, "keeps_input_dtype", False) and dtype in (jnp.float32, jnp.float64)
    return dtype if keep else jnp.float64


def sequential_by_default():
    """Whether ``batch_size=None`` maps the core over models one at a time (a compiled
    loop) rather than vmapping all of them: on CPU, where XLA runs a batched matrix product
    or decomposition no faster than a loop over its members (and a vmapped product whose
    other operand is shared, such as the one-hot labels, several times slower), while a
    loop keeps one model's working set in cache."""
    return jax.default_backend() == "cpu"


@functools.lru_cache(maxsize=None)
def _compiled(core, options, batch_size):
    """Jitted ``(stacked Model, Task) -> (outputs[M, ...], value checks[M, 3])`` for
    ``core`` with static ``options`` (a sorted tuple of items). Inputs arrive in their own
    dtype (the host makes no float64 copies)."""
    bound = functools.partial(core, **dict(options))

    def one_model(model, task):
        checks = _common.value_checks(model.features, model.probs)
        # Features go to float64 here (unless the core keeps float32); probs stay in their
        # dtype for the cores to cast where they accumulate (NCE needs only their argmax).
        if model.features is not None:
            dtype = _features_dtype(core, model.features.dtype)
            model = model._replace(features=model.features.astype(dtype))
        return bound(model, task), checks

    def over_models(models, task):
        if batch_size is None and not sequential_by_default():
            return jax.vmap(one_model, in_axes=(0, None))(models, task)
        return jax.lax.map(lambda model: one_model(model, task), models,
                           batch_size=None if batch_size in (None, 1) else batch_size)

    return jax.jit(over_models)


def _names(name, count):
    """``m -> argument name`` for error messages (``name`` alone for a single model)."""
    return (lambda m: name) if count == 1 else (lambda m: f"{name}_list[{m}]")


def _as_models(arrays):
    """A 3-D array (NumPy, or JAX: viewed in place) as one NumPy array; others as given."""
    return np.asarray(arrays) if getattr(arrays, "ndim", None) == 3 else arrays


def check_models(name, features_list, labels, probs_list, num_classes, uses):
    """Shape-checked inputs: ``(features_list or None, labels[N], C, probs_list or None)``.

    ``uses`` names the inputs the estimator reads ("features", "probs"); the others may be
    None and are not checked. Errors name the argument and the model index. A 3-D array
    (NumPy or JAX) may stand for a list of equally wide models (it is then not copied when
    it is 64-byte aligned, as JAX's own arrays are)."""
    num_samples = None
    features_list, probs_list = _as_models(features_list), _as_models(probs_list)
    if "features" in uses:
        if features_list is None or len(features_list) == 0:
            raise ValueError(f"{name} needs features for every model (features_list is "
                             "empty)")
        names = _names("features", len(features_list))
        if not (isinstance(features_list, np.ndarray) and features_list.ndim == 3):
            features_list = [_common.check_features(f, names(m))
                             for m, f in enumerate(features_list)]
        num_samples = features_list[0].shape[0]
        for m, f in enumerate(features_list):
            if f.shape[0] != num_samples:
                raise ValueError(f"{names(m)} has {f.shape[0]} samples, expected "
                                 f"{num_samples} (all models are scored on the same "
                                 "examples)")
        _common.check_features(features_list[0], names(0))
    else:
        features_list = None
    if "probs" in uses:
        if probs_list is None or len(probs_list) == 0 or any(p is None for p in probs_list):
            raise ValueError(f"{name} needs source-head probabilities (probs) for every "
                             "model")
        if features_list is not None and len(probs_list) != len(features_list):
            raise ValueError(f"probs_list has {len(probs_list)} models but features_list "
                             f"has {len(features_list)}")
        if num_samples is None:
            num_samples = np.shape(probs_list[0])[0]
        names = _names("probs", len(probs_list))
        if isinstance(probs_list, np.ndarray) and probs_list.ndim == 3:
            _common.check_probs(probs_list[0], num_samples, names(0))
        else:
            probs_list = [_common.check_probs(p, num_samples, names(m))
                          for m, p in enumerate(probs_list)]
    else:
        probs_list = None
    labels, num_classes = _common.check_labels(labels, num_samples, num_classes)
    return features_list, labels, num_classes, probs_list


def groups(features_list, probs_list):
    """``{(width, probs_width): [model indices]}``: models stacked together."""
    num_models = len(features_list if features_list is not None else probs_list)
    grouped = {}
    for m in range(num_models):
        width = 0
        if features_list is not None:
            n, dim = features_list[m].shape
            width = dim if num_models == 1 else padded_width(dim, n)
        probs_width = 0 if probs_list is None else probs_list[m].shape[1]
        grouped.setdefault((width, probs_width), []).append(m)
    return grouped


def _aligned_zeros(shape, dtype):
    """A zero NumPy array aligned to 64 bytes, which XLA:CPU takes without a copy."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buffer = np.zeros(nbytes + _ALIGNMENT, np.uint8)
    start = -buffer.ctypes.data % _ALIGNMENT
    return buffer[start: start + nbytes].view(dtype).reshape(shape)


def _in_place(arrays, members, width):
    """Whether ``arrays[members]`` is already one aligned ``[M, N, width]`` array."""
    return (isinstance(arrays, np.ndarray) and arrays.ndim == 3 and arrays.shape[2] == width
            and list(members) == list(range(arrays.shape[0]))
            and arrays.ctypes.data % _ALIGNMENT == 0 and arrays.flags.c_contiguous)


def _stack(arrays, members, width, group, into=None):
    """``arrays[members]`` as one ``[len(members), N, width]`` array, zero-padded, in the
    common dtype of the models ``group`` (float32 at least) and 64-byte aligned: the 3-D
    input itself when it already is that, else one copy (cheaper than the one XLA makes
    of an unaligned array), written into ``into`` (a previous result of the same shape)
    when given."""
    if _in_place(arrays, members, width):
        return arrays
    reused = into is not None
    if not reused:
        dtype = np.result_type(np.float32, *(arrays[m].dtype for m in group))
        into = _aligned_zeros((len(members), arrays[members[0]].shape[0], width), dtype)
    for i, m in enumerate(members):
        dim = arrays[m].shape[1]
        into[i, :, :dim] = arrays[m]
        if reused:  # a fresh buffer is zero already; a reused one has the last run's columns
            into[i, :, dim:] = 0
    return into


def stack(features_list, probs_list, members, width, group=None, into=None):
    """The stacked :class:`Model` (NumPy) of the models ``members``, in the dtypes of the
    models ``group`` (default ``members``), written into the buffers of ``into`` (a
    previous stack of as many models of the same group) when given."""
    group = members if group is None else group
    features = dims = probs = None
    if features_list is not None:
        features = _stack(features_list, members, width, group, into and into.features)
        dims = np.array([features_list[m].shape[1] for m in members], np.int32)
    if probs_list is not None:
        probs = _stack(probs_list, members, probs_list[members[0]].shape[1], group,
                       into and into.probs)
    return Model(features, dims, probs)


def chunks(features_list, probs_list, members, width):
    """``members`` as equal runs (the last padded by repeating its last model) staged one
    after another through one reused host buffer of about ``_STAGING_BYTES`` (more when
    that holds fewer than ``_MIN_RUN`` models: the loop over runs is never one over
    models).

    On CPU, inputs that must be copied into aligned memory are copied run by run: fresh
    memory costs about three times a copy into warm memory (page faults and zeroing: 78 ms
    against 25 ms for 256 MB here), and the host holds one run, not a second copy of
    everything. Inputs used in place, and other platforms (where staging is the transfer
    to the device), take one run."""
    inputs = []
    if features_list is not None:
        inputs.append((features_list, width))
    if probs_list is not None:
        inputs.append((probs_list, probs_list[members[0]].shape[1]))
    copies = [(arrays, w) for arrays, w in inputs if not _in_place(arrays, members, w)]
    if not copies or not sequential_by_default():
        return [list(members)]
    num_samples = copies[0][0][members[0]].shape[0]
    per_model = sum(num_samples * w * max(4, *(arrays[m].dtype.itemsize for m in members))
                    for arrays, w in copies)
    count = -(-len(members) * per_model // _STAGING_BYTES)
    count = max(1, min(count, -(-len(members) // _MIN_RUN)))
    size = -(-len(members) // count)
    runs = [list(members[i: i + size]) for i in range(0, len(members), size)]
    runs[-1] += [runs[-1][-1]] * (size - len(runs[-1]))
    return runs


def run(core, name, features_list, labels, probs_list=None, *, num_classes=None,
        uses=("features",), combine=None, batch_size=None, options=(), class_blocks=False):
    """``scores[M]`` float64 of ``core`` over all models (see module docstring).

    ``combine``, if given, maps the stacked per-model outputs ``[M, K]`` to ``scores[M]``
    (estimators normalised across the candidate set); ``class_blocks`` adds the per-class
    gather index to the :class:`Task`. Raises FloatingPointError if a score
    is not finite: every documented edge case has a defined value, so that is a bug."""
    features_list, labels, num_classes, probs_list = check_models(
        name, features_list, labels, probs_list, num_classes, uses)
    task = _common.make_task(labels, num_classes, class_blocks)
    outputs, checks = {}, {}
    with _common.float64():
        run_group = _compiled(core, tuple(sorted(dict(options).items())), batch_size)
        for (width, _), members in groups(features_list, probs_list).items():
            staged = None
            for part in chunks(features_list, probs_list, members, width):
                staged = stack(features_list, probs_list, part, width, group=members,
                               into=staged)
                values, ok = run_group(staged, task)
                # np.asarray waits for the results: the buffers are free for the next run.
                outputs.update(zip(part, np.asarray(values)))
                checks.update(zip(part, np.asarray(ok)))
        count = len(outputs)
        _common.value_errors([checks[m] for m in range(count)], _names("features", count),
                             _names("probs", count))
        stacked = np.stack([outputs[m] for m in range(count)])
        scores = np.asarray(combine(jnp.asarray(stacked))) if combine else stacked
    scores = np.asarray(scores, np.float64)
    if not np.isfinite(scores).all():
        raise FloatingPointError(f"{name} produced a non-finite score {scores}; please "
                                 "report this input")
    return scores
