"""Benchmark: fennec_jax.ranking.engine.top_k against numpy on a synthetic zoo, in one run.

Measures, on whatever machine runs it:
  (a) a numpy baseline: chunked matmul + argpartition, merged into a running top-k;
  (b) the machine's float32 matmul peak in JAX (a 4096^3 matmul, best of several);
  (c) the engine end to end (after a warm-up call; compile time reported apart) and its
      scoring step alone: the engine's own chunk matmul, repeated, as GFLOP/s;
  (d) peak RSS of a fresh subprocess per zoo size (--models_list);
  (e) `engine.rank_models` for one new task (--rank_models_list);
  (f) full ranking (`top_k` with k = M: the sort path) of --full_rank_models x
      --full_rank_tasks against NumPy matmul + stable argsort per row, the streaming path
      at k = M, and both paths at each k of --crossover_ks (the crossover the engine's
      docstring records).

  python -m experiments.bench_engine --models=1000000 --tasks=10000 --out=bench/engine.json
  python -m experiments.bench_engine --sections=full_rank    # (f) alone

The results are merged into --out (keys of sections not run are kept).

Every time is taken twice: wall clock, and CPU time of the whole process (all threads).
On a machine shared with other jobs the wall-clock ratios depend on how many cores each
job gets; the CPU-time ratios compare the work done and vary less.

--baseline_tasks runs numpy on fewer tasks and scales its time linearly to --tasks (its
cost is linear in the number of tasks); the JSON then says so (numpy_extrapolated).
"""

import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments.machine import device_description, own_peak_rss_bytes
from fennec_jax.core import atomic_io
from fennec_jax.ranking import engine

FLAGS = flags.FLAGS
flags.DEFINE_integer("models", 1_000_000, "Models in the synthetic zoo (M).")
flags.DEFINE_integer("tasks", 10_000, "Tasks to rank models for (T).")
flags.DEFINE_integer("dim", 64, "Transfer-space dimension (d).")
flags.DEFINE_integer("top_k", 10, "Models returned per task (k).")
flags.DEFINE_integer("chunk_size", None, "Engine models per chunk (default: engine's).")
flags.DEFINE_integer("task_chunk_size", None, "Engine tasks per chunk (default: engine's).")
flags.DEFINE_integer("block_size", None, "Engine block size (default: engine's).")
flags.DEFINE_integer("baseline_tasks", None,
                     "Tasks for the numpy baseline (default: all); fewer = extrapolated.")
flags.DEFINE_integer("repeats", 2, "Timed engine runs after the warm-up; best is kept.")
flags.DEFINE_list("models_list", ["100000", "1000000"],
                  "Zoo sizes for the peak-RSS measurement (one subprocess each).")
flags.DEFINE_integer("rss_tasks", None,
                     "Tasks in each peak-RSS subprocess (default: --tasks).")
flags.DEFINE_list("rank_models_list", ["26206", "1000000"],
                  "Zoo sizes for timing rank_models on one task.")
flags.DEFINE_string("out", "bench/engine.json", "Where to write the JSON results.")
flags.DEFINE_integer("seed", 0, "Seed of the synthetic zoo.")
flags.DEFINE_bool("rss_child", False, "Internal: run one top_k call, print peak RSS.")
_SECTIONS = ("top_k", "rss", "rank_models", "full_rank")
flags.DEFINE_multi_enum("sections", list(_SECTIONS), _SECTIONS, "Sections to run.")
flags.DEFINE_integer("full_rank_models", 200_000, "Models in the full-ranking section.")
flags.DEFINE_integer("full_rank_tasks", 50, "Tasks in the full-ranking section.")
flags.DEFINE_list("crossover_ks", ["100", "200", "400", "800"],
                  "k at which the full-ranking section times both top-k paths.")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEEDUP_TARGET = 5.0
FULL_RANK_TARGET = 2.0
PEAK_FRACTION_TARGET = 0.6
RSS_TARGET_GB = 4.0


def synthetic_zoo(num_models, num_tasks, dim, seed):
    """float32 model_vecs[M, d], task_vecs[T, d], model_bias[M], drawn without float64."""
    rng = np.random.default_rng(seed)
    scale = np.float32(1 / np.sqrt(dim))
    model_vecs = rng.standard_normal((num_models, dim), dtype=np.float32) * scale
    task_vecs = rng.standard_normal((num_tasks, dim), dtype=np.float32)
    model_bias = rng.standard_normal(num_models, dtype=np.float32) * np.float32(0.1)
    return model_vecs, task_vecs, model_bias


def engine_options():
    return dict(chunk_size=FLAGS.chunk_size, task_chunk_size=FLAGS.task_chunk_size,
                block_size=FLAGS.block_size)


def resolved_chunk_sizes():
    """(models per chunk, tasks per chunk) that the engine uses on this backend."""
    defaults = engine.default_chunk_sizes()
    chunk = FLAGS.chunk_size or defaults["chunk_size"]
    task_chunk = FLAGS.task_chunk_size or defaults["task_chunk_size"]
    return min(chunk, FLAGS.models), min(task_chunk, FLAGS.tasks)


def numpy_top_k(model_vecs, task_vecs, model_bias, k, chunk_size, task_chunk_size):
    """Baseline: per (model chunk, task chunk), matmul + argpartition, merged per chunk."""
    num_tasks = task_vecs.shape[0]
    values = np.full((num_tasks, k), -np.inf, np.float32)
    indices = np.full((num_tasks, k), -1, np.int64)
    for start in range(0, model_vecs.shape[0], chunk_size):
        chunk_vecs = model_vecs[start:start + chunk_size]
        chunk_bias = model_bias[start:start + chunk_size]
        chunk_k = min(k, chunk_vecs.shape[0])
        for first_task in range(0, num_tasks, task_chunk_size):
            rows = slice(first_task, first_task + task_chunk_size)
            scores = task_vecs[rows] @ chunk_vecs.T + chunk_bias
            best = np.argpartition(scores, scores.shape[1] - chunk_k, axis=1)[:, -chunk_k:]
            merged_values = np.concatenate(
                [values[rows], np.take_along_axis(scores, best, axis=1)], axis=1)
            merged_indices = np.concatenate([indices[rows], best + start], axis=1)
            order = np.lexsort((merged_indices, -merged_values), axis=1)[:, :k]
            values[rows] = np.take_along_axis(merged_values, order, axis=1)
            indices[rows] = np.take_along_axis(merged_indices, order, axis=1)
    return values, indices


def timed(fn, repeats=1):
    """(wall seconds, process CPU seconds), each the best over repeats calls of fn()."""
    wall = cpu = np.inf
    for _ in range(repeats):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        wall = min(wall, time.perf_counter() - wall_start)
        cpu = min(cpu, time.process_time() - cpu_start)
    return wall, cpu


def gflops(flop, seconds):
    return {"wall": flop / seconds[0] / 1e9, "cpu": flop / seconds[1] / 1e9}


def matmul_peak(size=4096, repeats=5):
    """GFLOP/s (wall, cpu) of a float32 size^3 matmul in JAX, after a warm-up."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    jax.block_until_ready(matmul(a, b))
    return gflops(2 * size**3, timed(lambda: matmul(a, b), repeats))


def scoring_step(dim, chunk, task_chunk, num_chunks=16):
    """GFLOP/s (wall, cpu) of the engine's scoring step alone, num_chunks times.

    The matmul `engine.top_k` runs per chunk in float32, same shapes and layout:
    tasks[Tc, d + 1] (a column of ones) times models[C, d + 1] (the bias column). Only
    the useful 2 * d FLOPs per score are counted.
    """
    tasks = jax.random.normal(jax.random.key(2), (task_chunk, dim + 1), jnp.float32)
    models = jax.random.normal(jax.random.key(3), (chunk, dim + 1), jnp.float32)

    @jax.jit
    def repeated_scoring(tasks, models):
        def step(_, acc):  # acc feeds back so XLA cannot hoist the matmul out of the loop
            scores = jax.lax.dot_general(tasks + acc, models, (((1,), (1,)), ((), ())),
                                         preferred_element_type=jnp.float32)
            return acc + scores[0, 0] * 0
        return jax.lax.fori_loop(0, num_chunks, step, jnp.float32(0))

    jax.block_until_ready(repeated_scoring(tasks, models))
    return gflops(2 * task_chunk * chunk * dim * num_chunks,
                  timed(lambda: repeated_scoring(tasks, models), 3))


def timed_first_call(fn):
    """(seconds of the first call, seconds of it spent tracing + compiling)."""
    compile_seconds = []

    def listener(name, seconds, **_):
        if name.startswith("/jax/core/compile/"):
            compile_seconds.append(seconds)

    jax.monitoring.register_event_duration_secs_listener(listener)
    wall, _ = timed(fn)
    jax.monitoring.unregister_event_duration_listener(listener)
    return wall, sum(compile_seconds)


def peak_rss_gb(num_models, num_tasks):
    """Peak RSS (GB) of a fresh process that builds a zoo and runs top_k once."""
    command = [sys.executable, "-m", "experiments.bench_engine", "--rss_child",
               f"--models={num_models}", f"--tasks={num_tasks}", f"--dim={FLAGS.dim}",
               f"--top_k={FLAGS.top_k}", f"--seed={FLAGS.seed}"]
    command += [f"--{name}={value}" for name, value in engine_options().items()
                if value is not None]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=_ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_gb"]


def rss_child():
    model_vecs, task_vecs, model_bias = synthetic_zoo(FLAGS.models, FLAGS.tasks,
                                                      FLAGS.dim, FLAGS.seed)
    jax.block_until_ready(engine.top_k(model_vecs, task_vecs, FLAGS.top_k,
                                       model_bias=model_bias, **engine_options()))
    print(json.dumps({"peak_rss_gb": own_peak_rss_bytes() / 1e9}))


def rank_models_ms(num_models, dim, seed):
    """Best wall milliseconds of rank_models for one task over a zoo of num_models."""
    model_vecs, task_vecs, model_bias = map(jnp.asarray,
                                            synthetic_zoo(num_models, 1, dim, seed))
    rank = lambda: engine.rank_models(model_vecs, task_vecs[0], model_bias)
    jax.block_until_ready(rank())
    return timed(rank, 5)[0] * 1e3


def top_k_section(results):
    """(a) - (c): the engine's top-k against numpy at --models x --tasks."""
    k, dim = FLAGS.top_k, FLAGS.dim
    num_models, num_tasks = FLAGS.models, FLAGS.tasks
    chunk, task_chunk = resolved_chunk_sizes()
    results.update(device=device_description(), load_average_at_start=os.getloadavg()[0],
                   models=num_models, tasks=num_tasks, dim=dim, top_k=k, chunk_size=chunk,
                   task_chunk_size=task_chunk, block_size=FLAGS.block_size)
    peak = matmul_peak()
    scoring = scoring_step(dim, chunk, task_chunk)
    results.update(matmul_peak_gflops=peak, scoring_gflops=scoring,
                   matmul_peak_fraction=scoring["wall"] / peak["wall"],
                   matmul_peak_fraction_cpu_time=scoring["cpu"] / peak["cpu"])
    print(f"matmul peak (4096^3 float32, jax): {peak['wall']:.1f} GFLOP/s")
    print(f"engine scoring step ({task_chunk} x {chunk} x {dim}): {scoring['wall']:.1f} "
          f"GFLOP/s = {scoring['wall'] / peak['wall']:.0%} of peak (CPU time: "
          f"{scoring['cpu'] / peak['cpu']:.0%}; target >= {PEAK_FRACTION_TARGET:.0%})")

    model_vecs, task_vecs, model_bias = synthetic_zoo(num_models, num_tasks, dim,
                                                      FLAGS.seed)
    device_arrays = tuple(map(jnp.asarray, (model_vecs, task_vecs, model_bias)))
    run_engine = lambda: engine.top_k(device_arrays[0], device_arrays[1], k,
                                      model_bias=device_arrays[2], **engine_options())
    first_call, compile_seconds = timed_first_call(run_engine)
    engine_seconds = timed(run_engine, FLAGS.repeats)
    end_to_end = gflops(2 * num_tasks * num_models * dim, engine_seconds)
    results.update(engine_first_call_seconds=first_call,
                   engine_compile_seconds=compile_seconds,
                   engine_seconds=engine_seconds[0], engine_cpu_seconds=engine_seconds[1],
                   engine_gflops_equivalent=end_to_end,
                   end_to_end_peak_fraction=end_to_end["wall"] / peak["wall"])
    print(f"engine top-{k} of {num_models:,} models for {num_tasks:,} tasks: "
          f"{engine_seconds[0]:.2f} s, {engine_seconds[1]:.2f} s CPU "
          f"({end_to_end['wall']:.1f} GFLOP/s of scoring end to end, "
          f"{end_to_end['wall'] / peak['wall']:.0%} of peak); "
          f"compile {compile_seconds:.2f} s")

    baseline_tasks = min(FLAGS.baseline_tasks or num_tasks, num_tasks)
    numpy_measured = timed(lambda: numpy_top_k(model_vecs, task_vecs[:baseline_tasks],
                                               model_bias, k, chunk, task_chunk))
    scale = num_tasks / baseline_tasks
    numpy_seconds = (numpy_measured[0] * scale, numpy_measured[1] * scale)
    _, numpy_indices = numpy_top_k(model_vecs, task_vecs[:min(baseline_tasks, 200)],
                                   model_bias, k, chunk, task_chunk)
    _, engine_indices = run_engine()
    agree = np.mean(np.all(np.asarray(engine_indices[:len(numpy_indices)]) == numpy_indices,
                           axis=1))
    speedup = numpy_seconds[0] / engine_seconds[0]
    speedup_cpu = numpy_seconds[1] / engine_seconds[1]
    results.update(numpy_seconds=numpy_seconds[0], numpy_cpu_seconds=numpy_seconds[1],
                   numpy_seconds_measured=numpy_measured[0],
                   numpy_tasks_measured=baseline_tasks,
                   numpy_extrapolated=baseline_tasks < num_tasks,
                   speedup_vs_numpy=speedup, speedup_vs_numpy_cpu_time=speedup_cpu,
                   numpy_rows_agreeing=float(agree))
    note = (f" (measured on {baseline_tasks:,} tasks in {numpy_measured[0]:.1f} s, scaled "
            f"linearly)" if baseline_tasks < num_tasks else "")
    print(f"numpy baseline: {numpy_seconds[0]:.1f} s, {numpy_seconds[1]:.1f} s CPU{note}; "
          f"engine speedup {speedup:.1f}x wall, {speedup_cpu:.1f}x CPU time "
          f"(target >= {SPEEDUP_TARGET:.0f}x); same top-{k} lists on {agree:.1%} of "
          f"{len(numpy_indices)} tasks checked")



def rss_section(results):
    """(d): peak RSS of a fresh top_k process per zoo size."""
    rss_tasks = FLAGS.rss_tasks or FLAGS.tasks
    rss = {m: peak_rss_gb(int(m), rss_tasks) for m in FLAGS.models_list}
    results.update(peak_rss_gb=rss, rss_tasks=rss_tasks)
    for m, gb in rss.items():
        print(f"peak RSS, fresh process, M={int(m):,} x {rss_tasks:,} tasks: {gb:.2f} GB "
              f"(target < {RSS_TARGET_GB:.0f} GB)")



def rank_models_section(results):
    """(e): rank_models for one task."""
    ranking = {m: rank_models_ms(int(m), FLAGS.dim, FLAGS.seed)
               for m in FLAGS.rank_models_list}
    results["rank_models_ms"] = ranking
    for m, ms in ranking.items():
        print(f"rank_models, one task, all {int(m):,} models: {ms:.1f} ms")



def full_rank_section(results):
    """(f): full ranking by the engine against NumPy, both top-k paths across k."""
    num_models, num_tasks = FLAGS.full_rank_models, FLAGS.full_rank_tasks
    load = os.getloadavg()[0]
    model_vecs, task_vecs, model_bias = synthetic_zoo(num_models, num_tasks, FLAGS.dim,
                                                      FLAGS.seed)
    rank = lambda k, algorithm: engine.top_k(model_vecs, task_vecs, k, model_bias=model_bias,
                                             algorithm=algorithm)
    numpy_rank = lambda: np.stack([np.argsort(-row, kind="stable")
                                   for row in task_vecs @ model_vecs.T + model_bias])
    rank(num_models, "auto")  # warm-up: compiles
    engine_seconds = timed(lambda: rank(num_models, "auto"), FLAGS.repeats + 1)
    numpy_seconds = timed(numpy_rank, FLAGS.repeats)
    stream_seconds = timed(lambda: rank(num_models, "stream"))  # compiles too: an upper bound
    _, order = rank(num_models, "auto")
    scores = np.asarray(engine.score_matrix(model_vecs, task_vecs, model_bias))
    exact = np.array_equal(order, np.argsort(-scores, axis=1, kind="stable"))
    same_as_numpy = float(np.mean(np.all(order == numpy_rank(), axis=1)))
    crossover = {}
    for k in map(int, FLAGS.crossover_ks):
        for algorithm in ("stream", "sort"):
            rank(k, algorithm)
        crossover[k] = {algorithm: dict(zip(("wall", "cpu"), timed(lambda: rank(k, algorithm), 3)))
                        for algorithm in ("stream", "sort")}
    speedup = numpy_seconds[0] / engine_seconds[0]
    results.update(
        full_rank={"device": device_description(), "load_average_at_start": load,
                   "models": num_models, "tasks": num_tasks, "dim": FLAGS.dim,
                   "engine_seconds": engine_seconds[0], "engine_cpu_seconds": engine_seconds[1],
                   "numpy_seconds": numpy_seconds[0], "numpy_cpu_seconds": numpy_seconds[1],
                   "streaming_seconds_first_call": stream_seconds[0],
                   "exact_vs_stable_argsort_of_engine_scores": exact,
                   "rows_equal_to_numpy_order": same_as_numpy,
                   "crossover_seconds": crossover},
        full_rank_speedup_vs_numpy=speedup)
    print(f"full ranking of {num_models:,} models x {num_tasks} tasks: engine "
          f"{engine_seconds[0]:.3f} s ({engine_seconds[1]:.3f} s CPU), numpy matmul + stable "
          f"argsort {numpy_seconds[0]:.3f} s ({numpy_seconds[1]:.3f} s CPU): {speedup:.1f}x "
          f"(target >= {FULL_RANK_TARGET:.0f}x); streaming path {stream_seconds[0]:.2f} s "
          f"(first call); order identical to the stable argsort of the engine's scores: "
          f"{exact}; rows identical to numpy's order: {same_as_numpy:.1%}")
    for k, times in crossover.items():
        ratio = times["stream"]["cpu"] / times["sort"]["cpu"]
        print(f"  k = {k:>6}: stream {times['stream']['wall']:.3f} s, sort "
              f"{times['sort']['wall']:.3f} s wall; stream / sort CPU time {ratio:.2f} "
              f"(engine picks {'sort' if engine._sort_is_faster(k, num_models) else 'stream'})")  # pylint: disable=protected-access


def main(argv):
    del argv
    if FLAGS.rss_child:
        rss_child()
        return
    print(f"device: {device_description()}; load average {os.getloadavg()[0]:.1f}")
    results = {}
    if os.path.exists(FLAGS.out):
        with open(FLAGS.out) as f:
            results = json.load(f)
    results.update(jax_version=jax.__version__)
    sections = {"top_k": top_k_section, "rss": rss_section,
                "rank_models": rank_models_section, "full_rank": full_rank_section}
    for name in FLAGS.sections:
        sections[name](results)
    atomic_io.write_json(FLAGS.out, results)
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
