"""Batch ranking engine: score every model for every task in a transfer space.

Task ``t`` scores model ``m`` as ``task_vecs[t] @ model_vecs[m] + model_bias[m]
(+ task_bias[t])``; higher is better. Entry points:

- `score_matrix` materialises ``scores[T, M]`` (small zoos, references).
- `top_k` gives the k best models per task (k = M: a full ranking of every task), by
  one of two paths, picked by the crossover below:
  * streaming: over the models in chunks under ``jit``, keeping a running top-k per task,
    so memory is bounded by ``task_chunk_size * chunk_size`` scores, not ``T * M``. Given
    a ``mesh`` (see `make_mesh`), the models are split across its devices along the
    ``"models"`` axis; each device streams over its share and the per-device top-k lists
    are merged.
  * sort: a jitted matmul per chunk of tasks, then every task's scores sorted on the host
    as int64 keys (`_descending_keys`), the chunks' rows split over one thread per core.
    Memory: a chunk of scores and keys per thread, beside the [T, k] outputs.
- `rank_models` fully ranks every model for one task.

Crossover. The streaming path's cost grows with k (k candidate blocks of ``block_size``
models per chunk, then an exact top-k over them), the sort path's does not (M log M per
task). Measured on the 2-core CPU (float32, d = 64, CPU seconds of the process, best of
3, machine shared with other jobs; /tmp script, the same calls as
``experiments/bench_engine.py``'s crossover section), stream / sort time:

    M = 50,000, T = 100:   k = 100: 0.52   200: 0.87   400: 2.7    800: 2.8
    M = 200,000, T = 50:   k = 100: 0.39   200: 0.58   400: 1.3    800: 1.9
    M = 1,000,000, T = 10: k = 1600: 1.07  3200: 1.13  6400: 1.5   12800: 2.2

so sort wins from about k = sqrt(M) (224, 447, 1000 here; within 1.3x of the faster
path at the crossover either side). `top_k` sorts when ``k * k >= M`` (and no mesh is
given): a full ranking (k = M) always sorts. At 200k models x 50 tasks, k = M, the sort
path is 2.9x NumPy's matmul + stable argsort per row in wall time, 3.5x in CPU time (load
average 10 on the 2 cores; 5.8x wall at load 4), where the streaming path was 0.14x
(``experiments/bench_engine.py --sections=full_rank``). Accelerators: same rule, untuned.

Ties: among equal scores the lower model index ranks first, in every entry point and for
any number of devices. (Only a score of ``-0.0`` against ``+0.0`` is left unspecified:
XLA's max treats them as equal, its top-k ranks ``+0.0`` first.)

How one chunk is reduced. XLA's exact top-k on CPU is a single-threaded partial sort with
a fixed cost per row, slower per score than the matmul that produced the scores, so a
chunk ``scores[R, C]`` is reduced in two stages: cut into blocks of ``block_size`` models,
each block reduced to its maximum (one vectorised pass), the ``k`` blocks with the highest
maxima picked, and the exact top-k taken over those blocks' scores and the running top-k.
This is exact. Rank blocks by maximum, then by position: if a score's block is not among
the ``k`` best blocks, each of the ``k`` blocks ranked above it holds a score (its
maximum) ranked above that score, which therefore is not among the ``k`` best.
"""

import concurrent.futures
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MODELS_AXIS = "models"

# On CPU (tuned on a 2-core AVX-512 machine) a chunk of 128 x 32768 float32 scores
# (16 MiB) keeps the matmul near its peak while the per-row cost of the exact top-k stays
# small beside it. The accelerator sizes are untuned guesses: larger matmuls, same bound.
_DEFAULT_SIZES = {
    "cpu": dict(chunk_size=32768, task_chunk_size=128, block_size=64),
    "accelerator": dict(chunk_size=65536, task_chunk_size=1024, block_size=128),
}
_NO_MODEL = -1  # index in running top-k slots that no model has filled yet
# The sort path: scores per matmul (32 MiB of float32) and per sorted piece (8 MiB of
# int64 keys).
_SORT_CHUNK_SCORES = 1 << 23
_SORT_PIECE_SCORES = 1 << 20
_ALGORITHMS = ("auto", "stream", "sort")


def default_chunk_sizes(platform=None):
    """`top_k`'s default chunk_size, task_chunk_size and block_size for a platform.

    ``platform`` is a JAX platform name ("cpu", "gpu", "tpu"); default: the default
    backend's.
    """
    platform = platform or jax.default_backend()
    return dict(_DEFAULT_SIZES["cpu" if platform == "cpu" else "accelerator"])


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all devices) with the axis ``"models"``.

    After ``fennec_jax.ranking.distributed.initialize``, all devices are those of every
    process: the default mesh is then the global one.
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices: expected at least one device, got none")
    return Mesh(np.asarray(devices), (MODELS_AXIS,))


def jit_split_over_models(fn, mesh: Mesh):
    """``jit`` of ``fn(models, shared)`` where ``models`` (a pytree whose leaves lead with the
    model axis, a multiple of the mesh's size) is split along the mesh's ``"models"`` axis,
    each device running ``fn`` on its share, and ``shared`` is replicated. The outputs (leading
    with the model axis) come back replicated on every device, so each process of a mesh over
    several processes reads them whole. ``fn`` must use no collectives: the varying-axis type
    check is skipped (JAX's cond and scan branches may mix shard-local and replicated values)."""
    models = PartitionSpec(MODELS_AXIS)
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(models, PartitionSpec()), out_specs=models,
                                 check_vma=False),
                   out_shardings=NamedSharding(mesh, PartitionSpec()))


# ------------------------------------------------------------------------------ checks


def _as_vectors(name, x, ndim=2):
    """``x`` as a finite floating array with ``ndim`` dimensions, else ValueError."""
    x = jnp.asarray(x)
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {x.shape}")
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
        raise ValueError(f"{name}: expected real numbers, got dtype {x.dtype}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    if x.size and not bool(jnp.isfinite(x).all()):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return x


def _as_bias(name, bias, length, length_name):
    """``bias[length]`` as float32; zeros when ``bias`` is None."""
    if bias is None:
        return jnp.zeros((length,), jnp.float32)
    bias = _as_vectors(name, bias, ndim=1)
    if bias.shape[0] != length:
        raise ValueError(f"{name}: expected shape ({length},), one entry per "
                         f"{length_name}, got {bias.shape}")
    return bias.astype(jnp.float32)


def _check_inputs(model_vecs, task_vecs, model_bias, task_bias):
    """Validated (model_vecs[M, d], task_vecs[T, d], model_bias[M], task_bias[T])."""
    model_vecs = _as_vectors("model_vecs", model_vecs)
    task_vecs = _as_vectors("task_vecs", task_vecs)
    if model_vecs.shape[0] == 0:
        raise ValueError("model_vecs: expected at least one model, got 0 rows")
    if task_vecs.shape[1] != model_vecs.shape[1]:
        raise ValueError(f"task_vecs: expected {model_vecs.shape[1]} columns to match "
                         f"model_vecs {model_vecs.shape}, got shape {task_vecs.shape}")
    model_bias = _as_bias("model_bias", model_bias, model_vecs.shape[0], "model")
    task_bias = _as_bias("task_bias", task_bias, task_vecs.shape[0], "task")
    return model_vecs, task_vecs, model_bias, task_bias


def _check_dtype(dtype):
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
        raise ValueError(f"dtype: expected float32, bfloat16 or float16, got {dtype}")
    return dtype


def _check_size(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------- scoring


def _dot(task_vecs, model_vecs):
    """task_vecs[T, d] @ model_vecs[M, d].T summed in float32."""
    return lax.dot_general(task_vecs, model_vecs, (((1,), (1,)), ((), ())),
                           preferred_element_type=jnp.float32)


def score_matrix(model_vecs, task_vecs, model_bias=None, task_bias=None,
                 dtype=jnp.float32):
    """scores[T, M] for model_vecs[M, d], task_vecs[T, d], model_bias[M], task_bias[T].

    With ``dtype=jnp.bfloat16`` (or float16) the vectors are rounded to that type and the
    products summed in float32; biases stay float32, and so do the scores.
    """
    model_vecs, task_vecs, model_bias, task_bias = _check_inputs(
        model_vecs, task_vecs, model_bias, task_bias)
    return _score_matrix(model_vecs, task_vecs, model_bias, task_bias,
                         dtype=_check_dtype(dtype))


def _model_scores(model_vecs, task_vecs, model_bias, dtype):
    """scores[T, M] without the task bias (which does not change a task's order)."""
    return _dot(task_vecs.astype(dtype), model_vecs.astype(dtype)) + model_bias


@functools.partial(jax.jit, static_argnames="dtype")
def _score_matrix(model_vecs, task_vecs, model_bias, task_bias, *, dtype):
    return _model_scores(model_vecs, task_vecs, model_bias, dtype) + task_bias[:, None]


# ------------------------------------------------------------------------ top-k merges


def _select(values, indices, k):
    """Top k of values[R, N] with their indices[R, N]; equal values keep column order."""
    top_values, columns = lax.top_k(values, k)
    return top_values, jnp.take_along_axis(indices, columns, axis=1)


def _sort_rows(x):
    """x[R, n] sorted ascending along rows, entries distinct within a row.

    Ranks by counting, a few vectorised passes for n ~ 10, where XLA's CPU sort would
    call a comparator for every pair.
    """
    ranks = (x[:, None, :] < x[:, :, None]).sum(-1)  # ranks[r, i] = #{j: x[r, j] < x[r, i]}
    slots = jnp.arange(x.shape[1])
    return jnp.where(ranks[:, :, None] == slots, x[:, :, None], 0).sum(1)


def _merge_chunk(running_values, running_indices, scores, first_index, block_size):
    """Running top-k (values, indices)[R, k] merged with scores[R, C].

    ``scores[:, c]`` belongs to model ``first_index + c``. The running lists must be
    sorted best first, ties in index order, and hold only models below ``first_index``;
    the result keeps these properties.
    """
    rows, width = scores.shape
    k = running_values.shape[1]
    blocks = scores.reshape(rows, width // block_size, block_size)
    _, best_blocks = lax.top_k(blocks.max(axis=2), min(k, blocks.shape[1]))
    best_blocks = _sort_rows(best_blocks)  # index order: among equal scores, lower first
    candidates = jax.vmap(lambda row_blocks, picked: row_blocks[picked])(blocks,
                                                                        best_blocks)
    candidate_indices = (first_index + best_blocks[:, :, None] * block_size
                         + jnp.arange(block_size, dtype=jnp.int32))
    values = jnp.concatenate([running_values, candidates.reshape(rows, -1)], axis=1)
    indices = jnp.concatenate(
        [running_indices, candidate_indices.reshape(rows, -1)], axis=1)
    return _select(values, indices, k)


# ------------------------------------------------------------------ streaming top-k


def _even_split(total, max_size, multiple):
    """Size of the pieces that cut ``total`` into as few pieces of about ``max_size`` as
    possible, as even as possible (the last one wastes little), a multiple of ``multiple``.
    """
    pieces = -(-total // max_size)
    size = -(-total // pieces)
    return -(-size // multiple) * multiple


def _streaming_top_k(model_vecs, model_bias, task_vecs, *, k, first_index, chunk_size,
                     task_chunk_size, block_size, dtype):
    """values[T, k], indices[T, k] of the best models in model_vecs[N, d] per task.

    ``model_bias[N]`` is -inf for padding rows; returned indices are ``first_index`` +
    row. A ``lax.scan`` visits the models ``chunk_size`` at a time (the last, partial chunk
    padded with -inf scores); inside a chunk, tasks go ``task_chunk_size`` at a time. The
    carry is the running top-k, (T, k), whatever N.

    In float32 the bias rides in the matmul as an extra column (tasks get a column of
    ones): adding it to each scores chunk afterwards costs a full extra pass over the
    chunk, measured at a quarter to a half of the matmul's own time on a 2-core CPU. In
    lower precisions it is added in float32 after the matmul, so that it is not rounded.
    """
    num_rows = model_vecs.shape[0]
    num_tasks = task_vecs.shape[0]
    block = min(block_size, num_rows)
    chunk = _even_split(num_rows, chunk_size, block)
    task_chunk = _even_split(num_tasks, task_chunk_size, 1)
    num_task_chunks = -(-num_tasks // task_chunk)
    bias_in_matmul = dtype == jnp.float32

    tasks = jnp.pad(task_vecs, ((0, num_task_chunks * task_chunk - num_tasks), (0, 0)))
    if bias_in_matmul:
        tasks = jnp.concatenate([tasks, jnp.ones_like(tasks[:, :1])], axis=1)
    tasks = tasks.astype(dtype).reshape(num_task_chunks, task_chunk, -1)

    def merge(running, chunk_vecs, chunk_bias, first):
        """Running top-k of every task chunk merged with one chunk of models."""
        chunk_vecs = chunk_vecs.astype(dtype)
        if bias_in_matmul:
            chunk_vecs = jnp.concatenate([chunk_vecs, chunk_bias[:, None]], axis=1)

        def merge_task_chunk(args):
            task_block, values, indices = args
            scores = _dot(task_block, chunk_vecs)
            if not bias_in_matmul:
                scores = scores + chunk_bias
            return _merge_chunk(values, indices, scores, first, block)

        return lax.map(merge_task_chunk, (tasks, *running))

    def scan_step(running, start):
        chunk_vecs = lax.dynamic_slice_in_dim(model_vecs, start, chunk)
        chunk_bias = lax.dynamic_slice_in_dim(model_bias, start, chunk)
        return merge(running, chunk_vecs, chunk_bias, first_index + start), None

    running = (jnp.full((num_task_chunks, task_chunk, k), -jnp.inf, jnp.float32),
               jnp.full((num_task_chunks, task_chunk, k), _NO_MODEL, jnp.int32))
    num_full, tail = divmod(num_rows, chunk)
    if num_full:
        starts = jnp.arange(num_full, dtype=jnp.int32) * chunk
        running, _ = lax.scan(scan_step, running, starts)
    if tail:
        start = num_full * chunk
        running = merge(running,
                        jnp.pad(model_vecs[start:], ((0, chunk - tail), (0, 0))),
                        jnp.pad(model_bias[start:], (0, chunk - tail),
                                constant_values=-jnp.inf),
                        first_index + start)
    values, indices = running
    return values.reshape(-1, k)[:num_tasks], indices.reshape(-1, k)[:num_tasks]


_STATIC = ("k", "chunk_size", "task_chunk_size", "block_size", "dtype")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _top_k_one_device(model_vecs, model_bias, task_vecs, task_bias, *, k, chunk_size,
                      task_chunk_size, block_size, dtype):
    values, indices = _streaming_top_k(
        model_vecs, model_bias, task_vecs, k=k, first_index=0, chunk_size=chunk_size,
        task_chunk_size=task_chunk_size, block_size=block_size, dtype=dtype)
    return values + task_bias[:, None], indices


@functools.partial(jax.jit, static_argnames=_STATIC + ("mesh",))
def _top_k_sharded(model_vecs, model_bias, task_vecs, task_bias, *, k, chunk_size,
                   task_chunk_size, block_size, dtype, mesh):
    """model_vecs[n * S, d] in n equal shards along the mesh's models axis.

    The outputs are replicated on every device of the mesh, so that each process of a
    mesh over several processes reads them whole.
    """
    num_shards = mesh.shape[MODELS_AXIS]
    shard_rows = model_vecs.shape[0] // num_shards

    def shard_top_k(shard_vecs, shard_bias, tasks):
        first = lax.axis_index(MODELS_AXIS).astype(jnp.int32) * shard_rows
        values, indices = _streaming_top_k(
            shard_vecs, shard_bias, tasks, k=k, first_index=first, chunk_size=chunk_size,
            task_chunk_size=task_chunk_size, block_size=block_size, dtype=dtype)
        return values[None], indices[None]

    models = PartitionSpec(MODELS_AXIS)
    values, indices = jax.shard_map(
        shard_top_k, mesh=mesh, in_specs=(models, models, PartitionSpec()),
        out_specs=(models, models),
        # The scan carry starts replicated and turns per-shard: skip that type check.
        check_vma=False)(model_vecs, model_bias, task_vecs)
    # [n, T, k] -> [T, n * k]: shards in index order, each best first with ties in index
    # order, so the stable top-k keeps lower indices first among equal scores.
    num_tasks = task_vecs.shape[0]
    values = values.transpose(1, 0, 2).reshape(num_tasks, -1)
    indices = indices.transpose(1, 0, 2).reshape(num_tasks, -1)
    values, indices = _select(values, indices, k)
    replicated = NamedSharding(mesh, PartitionSpec())
    return (lax.with_sharding_constraint(values + task_bias[:, None], replicated),
            lax.with_sharding_constraint(indices, replicated))


def _shard_models(mesh, model_vecs, model_bias):
    """Models padded (bias -inf) to a multiple of the shard count, placed on the mesh.

    Over several processes, every process passes the same models and places the shards
    of its own devices.
    """
    pad = -model_vecs.shape[0] % mesh.shape[MODELS_AXIS]
    model_vecs = jnp.pad(model_vecs, ((0, pad), (0, 0)))
    model_bias = jnp.pad(model_bias, (0, pad), constant_values=-jnp.inf)
    sharding = NamedSharding(mesh, PartitionSpec(MODELS_AXIS))
    return jax.device_put(model_vecs, sharding), jax.device_put(model_bias, sharding)


# ------------------------------------------------------------------------ sort top-k


def _top_k_by_sort(model_vecs, model_bias, task_vecs, task_bias, *, k, dtype):
    """values[T, k], indices[T, k] (NumPy) from a full sort of every task's scores.

    Tasks go ``max(1, _SORT_CHUNK_SCORES // M)`` at a time through one jitted matmul
    (the next chunk's is dispatched before this one is sorted, so they overlap); each
    chunk's scores[R, M] are cut into pieces of about ``_SORT_PIECE_SCORES`` scores
    sorted on one thread per core (`_descending_keys`; NumPy's sort releases the GIL).
    Memory: two chunks of scores, and a piece of keys per thread, beside the outputs.
    """
    num_tasks, num_models = task_vecs.shape[0], model_vecs.shape[0]
    rows = max(1, _SORT_CHUNK_SCORES // num_models)
    piece = max(1, _SORT_PIECE_SCORES // num_models)
    values = np.empty((num_tasks, k), np.float32)
    indices = np.empty((num_tasks, k), np.int32)
    task_bias = np.asarray(task_bias)

    def chunk_scores(start):
        return _sort_scores(model_vecs, task_vecs[start:start + rows], model_bias,
                            dtype=dtype)

    def rank_piece(start, scores):
        keys = _descending_keys(scores)[:, :k]
        stop = start + scores.shape[0]
        indices[start:stop] = keys.astype(np.int32)
        values[start:stop] = _key_scores(keys) + task_bias[start:stop, None]

    with concurrent.futures.ThreadPoolExecutor(_cores()) as pool:
        pending = chunk_scores(0)
        for start in range(0, num_tasks, rows):
            scores = np.asarray(pending)
            if start + rows < num_tasks:
                pending = chunk_scores(start + rows)
            list(pool.map(lambda first: rank_piece(start + first, scores[first:first + piece]),
                          range(0, scores.shape[0], piece)))
    return values, indices


_sort_scores = jax.jit(_model_scores, static_argnames="dtype")


def _cores():
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _sort_is_faster(k, num_models):
    """The measured crossover between the two top-k paths (module docstring)."""
    return k * k >= num_models


def top_k(model_vecs, task_vecs, k, *, model_bias=None, task_bias=None, chunk_size=None,
          task_chunk_size=None, block_size=None, dtype=jnp.float32, mesh=None,
          algorithm="auto"):
    """The k best models for every task: (values[T, k], indices[T, k]).

    Args:
      model_vecs: [M, d] model vectors.
      task_vecs: [T, d] task vectors.
      k: models to return per task, 1 <= k <= M.
      model_bias: optional [M], added to every task's scores.
      task_bias: optional [T], added to one task's scores (does not change its order).
      chunk_size: models per streaming step (per device). Default depends on the backend.
      task_chunk_size: tasks per matmul inside a step. Default depends on the backend.
      block_size: models per block in the two-stage chunk reduction (module docstring).
      dtype: float32; or bfloat16 / float16 to round the vectors first (products are
        summed in float32, biases stay float32).
      mesh: optional `jax.sharding.Mesh` with a ``"models"`` axis (`make_mesh`): the
        models are split across its devices. Any number of devices gives the same result.
      algorithm: "stream" (the streaming top-k), "sort" (a full sort of every task's
        scores on the host; not with a mesh; the chunk sizes do not apply), or "auto":
        sort where k is close to M (module docstring: the measured crossover), else
        stream.

    Returns:
      values[T, k] float32 scores, best first, and indices[T, k] int32 rows of
      ``model_vecs``; among equal scores the lower index comes first. Exact: a full sort
      of the same scores gives the same lists. The streaming path's scores may differ
      from `score_matrix` (and from the sort path's) in the last bit: in float32 it sums
      the bias inside the matmul, in another order. JAX arrays from the streaming path,
      NumPy arrays from the sort path.
    """
    model_vecs, task_vecs, model_bias, task_bias = _check_inputs(
        model_vecs, task_vecs, model_bias, task_bias)
    if task_vecs.shape[0] == 0:
        raise ValueError("task_vecs: expected at least one task, got 0 rows")
    num_models = model_vecs.shape[0]
    k = _check_size("k", k)
    if k > num_models:
        raise ValueError(f"k: expected at most M={num_models} (the number of models), "
                         f"got {k}")
    if algorithm not in _ALGORITHMS:
        raise ValueError(f"algorithm: expected one of {_ALGORITHMS}, got {algorithm!r}")
    if algorithm == "sort" and mesh is not None:
        raise ValueError("algorithm: 'sort' runs on one device; give no mesh")
    if algorithm == "sort" or (algorithm == "auto" and mesh is None
                               and _sort_is_faster(k, num_models)):
        return _top_k_by_sort(model_vecs, model_bias, task_vecs, task_bias, k=k,
                              dtype=_check_dtype(dtype))
    device = mesh.devices.flat[0] if mesh is not None else jax.devices()[0]
    given = dict(chunk_size=chunk_size, task_chunk_size=task_chunk_size,
                 block_size=block_size)
    sizes = {name: _check_size(name, default if given[name] is None else given[name])
             for name, default in default_chunk_sizes(device.platform).items()}
    options = dict(k=k, dtype=_check_dtype(dtype), **sizes)
    if mesh is None:
        return _top_k_one_device(model_vecs, model_bias, task_vecs, task_bias, **options)
    if MODELS_AXIS not in mesh.axis_names:
        raise ValueError(f"mesh: expected an axis named {MODELS_AXIS!r}, got axes "
                         f"{mesh.axis_names}")
    model_vecs, model_bias = _shard_models(mesh, model_vecs, model_bias)
    return _top_k_sharded(model_vecs, model_bias, task_vecs, task_bias, mesh=mesh,
                          **options)


# ------------------------------------------------------------------- one task, all M


def rank_models(model_vecs, task_vec, model_bias=None):
    """Every model ranked for one task: (order[M], scores[M]).

    ``order`` lists model indices best first (ties: lower index first; ``+0.0`` ranks
    above ``-0.0``); ``scores[m]`` is ``model_vecs[m] @ task_vec + model_bias[m]``,
    indexed by model, not by rank.

    The scores come from one jitted matvec. Inputs are validated through them (any NaN
    or infinity in an input makes a score non-finite), which spares a separate pass over
    ``model_vecs``; the argument at fault is then looked up. The order is one int64 sort
    on the host: XLA's CPU sort calls a comparator per pair and takes ~20x longer at 1M.
    """
    model_vecs, task_vec = jnp.asarray(model_vecs), jnp.asarray(task_vec)
    if model_vecs.ndim != 2 or model_vecs.shape[0] == 0:
        raise ValueError(f"model_vecs: expected a 2-D array with at least one row, got "
                         f"shape {model_vecs.shape}")
    if task_vec.shape != model_vecs.shape[1:]:
        raise ValueError(f"task_vec: expected shape ({model_vecs.shape[1]},) to match "
                         f"model_vecs {model_vecs.shape}, got {task_vec.shape}")
    if model_bias is None:
        model_bias = jnp.zeros((model_vecs.shape[0],), jnp.float32)
    elif jnp.shape(model_bias) != model_vecs.shape[:1]:
        raise ValueError(f"model_bias: expected shape ({model_vecs.shape[0]},), one entry "
                         f"per model, got {jnp.shape(model_bias)}")
    scores, all_finite = _rank_scores(model_vecs, task_vec, model_bias)
    if not all_finite:
        _as_vectors("task_vec", task_vec, ndim=1)
        _as_vectors("model_vecs", model_vecs)
        _as_bias("model_bias", model_bias, model_vecs.shape[0], "model")
        raise ValueError("model_vecs, task_vec: finite inputs but scores overflow float32")
    scores = np.asarray(scores)
    return jnp.asarray(_descending_order(scores)), jnp.asarray(scores)


@jax.jit
def _rank_scores(model_vecs, task_vec, model_bias):
    """(scores[M] float32, whether all are finite)."""
    scores = _dot(task_vec[None].astype(jnp.float32), model_vecs.astype(jnp.float32))[0]
    scores = scores + model_bias.astype(jnp.float32)
    return scores, jnp.isfinite(scores).all()


def _descending_order(scores):
    """Indices sorting float32 scores[..., M] best first along the last axis, equal scores
    by lower index: order[..., M] int32."""
    return _descending_keys(scores).astype(np.int32)  # the low 32 bits: the index


def _descending_keys(scores):
    """The sorted int64 keys[..., M] of float32 scores[..., M]: best first, equal scores
    by lower index.

    One sort of distinct keys: the float's bits mapped to an int that orders like the
    float (negatives have their magnitude bits flipped), negated, above the index. The
    keys are built in int32 and shifted in place, so a row costs little beside its sort
    (NumPy's int64 sort is vectorised where the CPU allows). `_key_scores` reads the
    scores back.
    """
    bits = scores.view(np.int32)
    descending = ~(bits ^ ((bits >> 31) & 0x7FFFFFFF))  # = -ascending - 1, fits int32
    keys = descending.astype(np.int64)
    keys <<= 32
    keys |= np.arange(scores.shape[-1], dtype=np.int64)
    keys.sort(axis=-1)
    return keys


def _key_scores(keys):
    """The float32 scores[..., N] that keys[..., N] of `_descending_keys` were made of:
    sequential passes, where gathering the scores by index would jump around."""
    bits = (keys >> 32).astype(np.int32)
    np.invert(bits, out=bits)  # ascending
    flips = bits >> 31
    flips &= 0x7FFFFFFF
    bits ^= flips
    return bits.view(np.float32)
