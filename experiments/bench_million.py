"""Benchmark: the ``rank_all --space`` job on a synthetic zoo of a million models.

Writes a seeded random transfer space (model_vecs [M, d], task_vecs [T, d], model_bias [M],
models.txt, tasks.txt; d = 64) under --dir (default: a temporary folder, removed after), then
runs the space job (fennec_jax/ranking/space_job.py, what ``./run.sh rank_all --space=DIR``
runs) in a fresh process, twice:
  (a) top --top_k models for every task, to rankings.parquet;
  (b) the full ranking (every model) of the first --full_tasks tasks, to rankings.parquet.
For each: wall seconds of the child process end to end (Python and JAX start-up, loading the
memory-mapped space, ranking, writing), and its peak RSS. Fitting the space is not part of it.

  python -m experiments.bench_million                       # 1M models x 10k tasks
  python -m experiments.bench_million --models=100000 --tasks=1000 --out=/tmp/million.json

The figures are merged into --out under ``million`` and, at the default sizes, the keys
``rank_all_1m_seconds`` and ``rank_all_1m_peak_rss_gb`` (the top-k run).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

from experiments.machine import device_description, own_peak_rss_bytes
from fennec_jax.core import atomic_io

FLAGS = flags.FLAGS
flags.DEFINE_integer("models", 1_000_000, "Models in the synthetic space (M).")
flags.DEFINE_integer("tasks", 10_000, "Tasks in the synthetic space (T).")
flags.DEFINE_integer("dim", 64, "Dimension of the space (d).")
flags.DEFINE_integer("top_k", 10, "Models per task in run (a).")
flags.DEFINE_integer("full_tasks", 10, "Tasks fully ranked in run (b).")
flags.DEFINE_integer("seed", 0, "Seed of the synthetic space.")
flags.DEFINE_string("dir", None, "Where to write the space and the outputs (default: a "
                    "temporary folder, removed after).")
flags.DEFINE_string("out", "bench/engine.json", "JSON to merge the results into.")
flags.DEFINE_string("child", None, "Internal: run the job on the space in this folder.")
flags.DEFINE_string("child_out", None, "Internal: the child's output folder.")
flags.DEFINE_string("child_task_range", None, "Internal: the child's task rows start:stop.")

TIME_TARGET_S = 90.0
RSS_TARGET_GB = 4.0
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_space(folder, num_models, num_tasks, dim, seed, rows_per_step=1 << 18):
    """A random space in ``folder``: float32 vectors (scaled like a fitted space's), model
    biases and names. Written in steps, so the parent stays small."""
    rng = np.random.default_rng(seed)
    model_vecs = np.lib.format.open_memmap(os.path.join(folder, "model_vecs.npy"), mode="w+",
                                           dtype=np.float32, shape=(num_models, dim))
    for start in range(0, num_models, rows_per_step):
        rows = min(rows_per_step, num_models - start)
        model_vecs[start:start + rows] = (rng.standard_normal((rows, dim), dtype=np.float32)
                                          * np.float32(1 / np.sqrt(dim)))
    model_vecs.flush()
    del model_vecs
    np.save(os.path.join(folder, "task_vecs.npy"),
            rng.standard_normal((num_tasks, dim), dtype=np.float32))
    np.save(os.path.join(folder, "model_bias.npy"),
            rng.standard_normal(num_models, dtype=np.float32) * np.float32(0.1))
    for name, prefix, count in (("models.txt", "model", num_models), ("tasks.txt", "task", num_tasks)):
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.write("".join(f"{prefix}-{i:07d}\n" for i in range(count)))


def run_child(space, out, top_k=None, task_range=None):
    """(wall seconds, the child's report) of the job in a fresh process."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "experiments.bench_million", f"--child={space}",
               f"--child_out={out}"]
    if top_k:
        command.append(f"--top_k={top_k}")
    else:
        command.append("--top_k=0")
    if task_range:
        command.append(f"--child_task_range={task_range[0]}:{task_range[1]}")
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=_ROOT)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"child failed:\n{done.stderr[-3000:]}")
    return wall, json.loads(done.stdout.strip().splitlines()[-1])


def child():
    """The space job, as rank_all --space runs it; prints its rows and peak RSS."""
    from fennec_jax.ranking import space_job  # pylint: disable=import-outside-toplevel

    task_range = (tuple(map(int, FLAGS.child_task_range.split(":")))
                  if FLAGS.child_task_range else None)
    job = space_job.SpaceJob(top_k=FLAGS.top_k or None, task_range=task_range)
    start, cpu_start = time.perf_counter(), time.process_time()
    summary = space_job.run_space_job(space_job.load_space(FLAGS.child), job, FLAGS.child_out)
    print(json.dumps({"rows": summary["rows"], "shards": summary["shards"],
                      "job_seconds": time.perf_counter() - start,
                      "job_cpu_seconds": time.process_time() - cpu_start,
                      "peak_rss_gb": own_peak_rss_bytes() / 1e9,
                      "parquet_mb": os.path.getsize(os.path.join(FLAGS.child_out,
                                                                 "rankings.parquet")) / 1e6}))


def main(argv):
    del argv
    if FLAGS.child:
        child()
        return
    num_models, num_tasks, dim = FLAGS.models, FLAGS.tasks, FLAGS.dim
    print(f"device: {device_description()}; load average {os.getloadavg()[0]:.1f}")
    folder = FLAGS.dir or tempfile.mkdtemp(prefix="bench_million.")
    try:
        space = os.path.join(folder, "space")
        os.makedirs(space, exist_ok=True)
        start = time.perf_counter()
        write_space(space, num_models, num_tasks, dim, FLAGS.seed)
        print(f"wrote a {num_models:,} x {num_tasks:,} space (d = {dim}) in "
              f"{time.perf_counter() - start:.1f} s")
        top = run_child(space, os.path.join(folder, "top"), top_k=FLAGS.top_k)
        full_range = (0, min(FLAGS.full_tasks, num_tasks))
        full = run_child(space, os.path.join(folder, "full"), task_range=full_range)
    finally:
        if not FLAGS.dir:
            shutil.rmtree(folder, ignore_errors=True)
    results = {}
    if os.path.exists(FLAGS.out):
        with open(FLAGS.out) as f:
            results = json.load(f)
    million = {"device": device_description(), "load_average_at_start": os.getloadavg()[0],
               "models": num_models, "tasks": num_tasks, "dim": dim, "fit": "excluded",
               "top_k": {"k": FLAGS.top_k, "seconds": top[0], **top[1]},
               "full_rank": {"tasks": full_range[1], "seconds": full[0], **full[1]}}
    results["million"] = million
    if (num_models, num_tasks) == (1_000_000, 10_000):
        results.update(rank_all_1m_seconds=top[0], rank_all_1m_peak_rss_gb=top[1]["peak_rss_gb"])
    atomic_io.write_json(FLAGS.out, results)
    for name, (wall, report) in (("top-%d of every task" % FLAGS.top_k, top),
                                 ("full ranking of %d tasks" % full_range[1], full)):
        print(f"{name}: {wall:.1f} s end to end ({report['job_seconds']:.1f} s in the job, "
              f"{report['job_cpu_seconds']:.1f} s CPU), peak "
              f"RSS {report['peak_rss_gb']:.2f} GB, {report['rows']:,} rows, "
              f"{report['parquet_mb']:.1f} MB of Parquet")
    print(f"targets (1M x 10k top-{FLAGS.top_k}): < {TIME_TARGET_S:.0f} s, < {RSS_TARGET_GB:.0f} GB "
          f"peak RSS; wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
