"""Scoring many models on one task with one vmapped call per group of similar widths.

An estimator is a *core*, ``core(model: Model, task: Task, **options) -> value``, a pure
JAX function of one model's padded inputs. :func:`run` checks every model's inputs, pads
features to a shared width (zero columns; ``Model.dim`` keeps the true width so the cores
mask padding), stacks the models of each width group and maps the core over them with
``jax.vmap`` (or ``jax.lax.map`` in chunks of ``batch_size`` to bound memory). There is no
Python loop over models inside a group; groups exist only so that one 2048-wide model does
not force 64 others to 2048 columns. On CPU, NumPy inputs that must be copied into aligned
memory are staged in runs of about 32 MB through one reused buffer (:func:`chunks`).

Inputs that are JAX arrays (a 3-D array of equally wide models, or a list of 2-D arrays)
stay on their devices: checked by shape and dtype, padded and stacked there (no host round
trip). Inside :func:`sharded` (``with sharded(mesh): ...``; a mesh with the
``fennec_jax.ranking.engine.MODELS_AXIS`` axis, e.g. ``engine.make_mesh()``) the stacked
models are split along that axis, each device scores its share under ``shard_map``, and
the outputs come back replicated, so that with several processes (see
``fennec_jax.ranking.distributed``) every process reads all scores. NumPy inputs are then
stacked device by device (each process stacks only its devices' models); JAX inputs are
resharded device to device.
"""

import contextlib
import contextvars
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from fennec_jax.estimators import _common
from fennec_jax.ranking.engine import MODELS_AXIS, jit_split_over_models

# XLA:CPU uses a host array in place (no copy) when its data is aligned to this.
_ALIGNMENT = 64
# Host staging buffer on CPU, and the fewest models per staged run (see :func:`chunks`).
_STAGING_BYTES = 32 << 20
_MIN_RUN = 4
# The mesh that :func:`run` splits the models over (None: the default device).
_MESH = contextvars.ContextVar("mesh", default=None)


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


@contextlib.contextmanager
def sharded(mesh):
    """Within this context :func:`run` splits the models over ``mesh``'s ``MODELS_AXIS``
    (None: no split, the default)."""
    if mesh is not None and MODELS_AXIS not in mesh.axis_names:
        raise ValueError(f"mesh: expected an axis named {MODELS_AXIS!r}, got axes "
                         f"{mesh.axis_names}")
    token = _MESH.set(mesh)
    try:
        yield
    finally:
        _MESH.reset(token)


@functools.lru_cache(maxsize=None)
def _compiled(core, options, batch_size, mesh=None):
    """Jitted ``(stacked Model, Task) -> (outputs[M, ...], value checks[M, 3])`` for
    ``core`` with static ``options`` (a sorted tuple of items). Inputs arrive in their own
    dtype (the host makes no float64 copies). With a ``mesh``, M is a multiple of its size
    and the models come split along ``MODELS_AXIS`` (:func:`place`); each device maps the
    core over its share and the outputs are replicated on every device."""
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

    # The cores use no collectives (their cond and scan branches mix shard-local and
    # replicated values).
    return jax.jit(over_models) if mesh is None else jit_split_over_models(over_models, mesh)


def _names(name, count):
    """``m -> argument name`` for error messages (``name`` alone for a single model)."""
    return (lambda m: name) if count == 1 else (lambda m: f"{name}_list[{m}]")


def _as_models(arrays):
    """A 3-D array as one array (a JAX array stays on its devices: see :func:`_on_device`),
    other array-likes as NumPy; a list as given."""
    if getattr(arrays, "ndim", None) == 3 and not isinstance(arrays, jax.Array):
        return np.asarray(arrays)
    return arrays


def _on_device(arrays):
    """Whether ``arrays`` (a 3-D array, or a list of 2-D ones) are JAX arrays, which are
    stacked where they live (:func:`_device_stack`)."""
    return isinstance(arrays, jax.Array) or (
        isinstance(arrays, (list, tuple)) and len(arrays) > 0
        and all(isinstance(a, jax.Array) for a in arrays))


def _model_shape(arrays, m):
    """Shape of model ``m`` of ``arrays`` (a 3-D array is not indexed: a JAX one would run
    an op per model)."""
    return arrays.shape[1:] if getattr(arrays, "ndim", None) == 3 else np.shape(arrays[m])


def _stand_in(x):
    """``x``; for a JAX array, a zero-stride NumPy array of its shape and dtype, for the
    ``_common`` shape and dtype checks (no copy to the host)."""
    return np.broadcast_to(np.zeros((), x.dtype), x.shape) if isinstance(x, jax.Array) else x


def _checked(check, x, *args):
    """``check(x, *args)`` (a ``_common`` shape and dtype check, which returns ``x`` as
    NumPy); a JAX array is checked through :func:`_stand_in` and returned as it is."""
    checked = check(_stand_in(x), *args)
    return x if isinstance(x, jax.Array) else checked


def check_models(name, features_list, labels, probs_list, num_classes, uses):
    """Shape-checked inputs: ``(features_list or None, labels[N], C, probs_list or None)``.

    ``uses`` names the inputs the estimator reads ("features", "probs"); the others may be
    None and are not checked. Errors name the argument and the model index. A 3-D array
    (NumPy or JAX) may stand for a list of equally wide models (it is then not copied when
    it is 64-byte aligned, as JAX's own arrays are). JAX arrays are checked by shape and
    dtype and kept on their devices."""
    num_samples = None
    features_list, probs_list = _as_models(features_list), _as_models(probs_list)
    if "features" in uses:
        if features_list is None or len(features_list) == 0:
            raise ValueError(f"{name} needs features for every model (features_list is "
                             "empty)")
        names = _names("features", len(features_list))
        if getattr(features_list, "ndim", None) == 3:
            _common.check_features(_stand_in(features_list)[0], names(0))
        else:
            features_list = [_checked(_common.check_features, f, names(m))
                             for m, f in enumerate(features_list)]
            num_samples = features_list[0].shape[0]
            for m, f in enumerate(features_list):
                if f.shape[0] != num_samples:
                    raise ValueError(f"{names(m)} has {f.shape[0]} samples, expected "
                                     f"{num_samples} (all models are scored on the same "
                                     "examples)")
        num_samples = _model_shape(features_list, 0)[0]
    else:
        features_list = None
    if "probs" in uses:
        stacked = getattr(probs_list, "ndim", None) == 3
        if probs_list is None or len(probs_list) == 0 or (
                not stacked and any(p is None for p in probs_list)):
            raise ValueError(f"{name} needs source-head probabilities (probs) for every "
                             "model")
        if features_list is not None and len(probs_list) != len(features_list):
            raise ValueError(f"probs_list has {len(probs_list)} models but features_list "
                             f"has {len(features_list)}")
        if num_samples is None:
            num_samples = _model_shape(probs_list, 0)[0]
        names = _names("probs", len(probs_list))
        if stacked:
            _common.check_probs(_stand_in(probs_list)[0], num_samples, names(0))
        else:
            probs_list = [_checked(_common.check_probs, p, num_samples, names(m))
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
            n, dim = _model_shape(features_list, m)
            width = dim if num_models == 1 else padded_width(dim, n)
        probs_width = 0 if probs_list is None else _model_shape(probs_list, m)[1]
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


def _dtype(arrays, group):
    """The common dtype of the models ``group`` of ``arrays``, float32 at least."""
    dtypes = [arrays.dtype] if getattr(arrays, "ndim", None) == 3 else \
        [arrays[m].dtype for m in group]
    return np.result_type(np.float32, *dtypes)


def _device_stack(arrays, members, width, group):
    """JAX ``arrays[members]`` (a 3-D array or a list) as one ``[len(members), N, width]``
    JAX array, zero-padded, in the common dtype of the models ``group``, computed on the
    devices where they live."""
    if isinstance(arrays, jax.Array):
        if list(members) != list(range(arrays.shape[0])):
            arrays = arrays[np.asarray(members)]
        stacked = arrays if arrays.shape[2] == width else \
            jnp.pad(arrays, ((0, 0), (0, 0), (0, width - arrays.shape[2])))
    else:
        stacked = jnp.stack([jnp.pad(arrays[m], ((0, 0), (0, width - arrays[m].shape[1])))
                             for m in members])
    dtype = _dtype(arrays, group)
    return stacked if stacked.dtype == dtype else stacked.astype(dtype)


def _stack(arrays, members, width, group, into=None):
    """``arrays[members]`` as one ``[len(members), N, width]`` array, zero-padded, in the
    common dtype of the models ``group`` (float32 at least): JAX inputs stacked where they
    live (:func:`_device_stack`); NumPy inputs 64-byte aligned, the 3-D input itself when
    it already is that, else one copy (cheaper than the one XLA makes of an unaligned
    array), written into ``into`` (a previous result of the same shape) when given."""
    if _on_device(arrays):
        return _device_stack(arrays, members, width, group)
    if _in_place(arrays, members, width):
        return arrays
    reused = into is not None
    if not reused:
        dtype = _dtype(arrays, group)
        into = _aligned_zeros((len(members), arrays[members[0]].shape[0], width), dtype)
    for i, m in enumerate(members):
        dim = arrays[m].shape[1]
        into[i, :, :dim] = arrays[m]
        if reused:  # a fresh buffer is zero already; a reused one has the last run's columns
            into[i, :, dim:] = 0
    return into


def _dims(features_list, members):
    """``dims[len(members)]`` int32: the true widths of the models ``members``."""
    return np.array([_model_shape(features_list, m)[1] for m in members], np.int32)


def stack(features_list, probs_list, members, width, group=None, into=None):
    """The stacked :class:`Model` (NumPy, or JAX for JAX inputs) of the models
    ``members``, in the dtypes of the models ``group`` (default ``members``), written into
    the buffers of ``into`` (a previous stack of as many models of the same group) when
    given."""
    group = members if group is None else group
    features = dims = probs = None
    if features_list is not None:
        features = _stack(features_list, members, width, group, into and into.features)
        dims = _dims(features_list, members)
    if probs_list is not None:
        probs = _stack(probs_list, members, _model_shape(probs_list, members[0])[1], group,
                       into and into.probs)
    return Model(features, dims, probs)


def place(mesh, features_list, probs_list, members, width, group):
    """The stacked :class:`Model` of the models ``members`` (a multiple of ``mesh.size``)
    as JAX arrays split along ``mesh``'s ``MODELS_AXIS``, in the dtypes of the models
    ``group``. JAX inputs are stacked where they live and resharded device to device;
    NumPy inputs are stacked per device, for this process's devices only."""
    sharding = NamedSharding(mesh, PartitionSpec(MODELS_AXIS))

    def split(on_device, stack_part, shape):
        if on_device:
            return jax.device_put(stack_part(members), sharding)
        return jax.make_array_from_callback(
            shape, sharding, lambda index: stack_part(members[index[0]]))

    features = dims = probs = None
    if features_list is not None:
        num_samples = _model_shape(features_list, members[0])[0]
        features = split(_on_device(features_list),
                         lambda part: _stack(features_list, part, width, group),
                         (len(members), num_samples, width))
        dims = split(False, lambda part: _dims(features_list, part), (len(members),))
    if probs_list is not None:
        probs_shape = _model_shape(probs_list, members[0])
        probs = split(_on_device(probs_list),
                      lambda part: _stack(probs_list, part, probs_shape[1], group),
                      (len(members), *probs_shape))
    return Model(features, dims, probs)


def chunks(features_list, probs_list, members, width, multiple=1):
    """``members`` as equal runs of a multiple of ``multiple`` models (the last padded by
    repeating its last model) staged one after another through one reused host buffer of
    about ``_STAGING_BYTES`` (more when that holds fewer than ``_MIN_RUN`` models: the
    loop over runs is never one over models).

    On CPU, inputs that must be copied into aligned memory are copied run by run: fresh
    memory costs about three times a copy into warm memory (page faults and zeroing: 78 ms
    against 25 ms for 256 MB here), and the host holds one run, not a second copy of
    everything. Inputs used in place or on device, and other platforms (where staging is
    the transfer to the device), take one run."""
    inputs = []
    if features_list is not None:
        inputs.append((features_list, width))
    if probs_list is not None:
        inputs.append((probs_list, _model_shape(probs_list, members[0])[1]))
    copies = [(arrays, w) for arrays, w in inputs
              if not (_on_device(arrays) or _in_place(arrays, members, w))]
    count = 1
    if copies and sequential_by_default():
        num_samples = copies[0][0][members[0]].shape[0]
        per_model = sum(num_samples * w
                        * max(4, *(arrays[m].dtype.itemsize for m in members))
                        for arrays, w in copies)
        count = -(-len(members) * per_model // _STAGING_BYTES)
        count = max(1, min(count, -(-len(members) // _MIN_RUN)))
    size = -(-len(members) // count)
    size = -(-size // multiple) * multiple
    runs = [list(members[i: i + size]) for i in range(0, len(members), size)]
    runs[-1] += [runs[-1][-1]] * (size - len(runs[-1]))
    return runs


def run(core, name, features_list, labels, probs_list=None, *, num_classes=None,
        uses=("features",), combine=None, batch_size=None, options=(), class_blocks=False):
    """``scores[M]`` float64 of ``core`` over all models (see module docstring).

    ``combine``, if given, maps the stacked per-model outputs ``[M, K]`` to ``scores[M]``
    (estimators normalised across the candidate set); ``class_blocks`` adds the per-class
    gather index to the :class:`Task`. Within :func:`sharded`, the models are split over
    the mesh's devices. Raises FloatingPointError if a score
    is not finite: every documented edge case has a defined value, so that is a bug."""
    features_list, labels, num_classes, probs_list = check_models(
        name, features_list, labels, probs_list, num_classes, uses)
    task = _common.make_task(labels, num_classes, class_blocks)
    outputs, checks = {}, {}
    mesh = _MESH.get()
    with _common.float64():
        run_group = _compiled(core, tuple(sorted(dict(options).items())), batch_size, mesh)
        for (width, _), members in groups(features_list, probs_list).items():
            staged = None
            for part in chunks(features_list, probs_list, members, width,
                               multiple=1 if mesh is None else mesh.size):
                staged = (stack(features_list, probs_list, part, width, group=members,
                                into=staged) if mesh is None else
                          place(mesh, features_list, probs_list, part, width, members))
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
