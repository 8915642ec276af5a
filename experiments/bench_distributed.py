"""Benchmark: the same work in 1 process and in several (fennec_jax.ranking.distributed).

  python experiments/bench_distributed.py --models=200000 --tasks=1000 --dim=64 --k=10 \
      --estimator_models=32 --processes=2

Starts the run itself on 127.0.0.1: first 1 process, then --processes processes (one CPU
device each, unless XLA_FLAGS says otherwise), each building the same seeded zoo. Every
process times, after a warm-up call that compiles, the best of --repeats calls (each
started together: a barrier across processes) of ``engine.top_k`` over the global mesh,
and of ``estimators.score_models`` (--estimator, --estimator_models models of --n samples
and --estimator_dim features) over it, results read back on every process. Prints
seconds for each run and the ratio (1 process / N processes: above 1 is a speed-up).

The processes share the host's cores: unless OPENBLAS_NUM_THREADS is set, each process
of a run gets cores / processes BLAS threads (more threads than cores, OpenBLAS spin-waits:
the estimators' LAPACK calls then run several times slower). XLA's own thread pool is
left as it is.
"""

import json
import os
import socket
import subprocess
import sys
import time

from absl import app, flags

_MODELS = flags.DEFINE_integer("models", 200_000, "Models M in the zoo.")
_TASKS = flags.DEFINE_integer("tasks", 1000, "Tasks T ranked.")
_DIM = flags.DEFINE_integer("dim", 64, "Vector width d.")
_K = flags.DEFINE_integer("k", 10, "Models kept per task.")
_ESTIMATOR = flags.DEFINE_string("estimator", "logme", "Estimator timed.")
_ESTIMATOR_MODELS = flags.DEFINE_integer("estimator_models", 32, "Models scored (0: skip).")
_N = flags.DEFINE_integer("n", 1000, "Samples per model scored.")
_ESTIMATOR_DIM = flags.DEFINE_integer("estimator_dim", 256, "Feature width scored.")
_PROCESSES = flags.DEFINE_integer("processes", 2, "Processes of the run compared to 1.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls (best is reported).")
_OUT = flags.DEFINE_string("out", None, "Optional JSON with the timings.")
# Set by the launcher for its workers.
_WORKER = flags.DEFINE_integer("worker", None, "Run as this process of a run (internal).")
_PORT = flags.DEFINE_integer("port", None, "Coordinator port (internal).")
_WORKERS = flags.DEFINE_integer("workers", 1, "Processes in this run (internal).")


def worker():
    """One process of a run: prints its best times as JSON (process 0)."""
    from fennec_jax.ranking import distributed  # pylint: disable=import-outside-toplevel
    distributed.initialize(f"127.0.0.1:{_PORT.value}", _WORKERS.value, _WORKER.value)
    import numpy as np  # pylint: disable=import-outside-toplevel
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    from fennec_jax import estimators  # pylint: disable=import-outside-toplevel
    from fennec_jax.ranking import engine  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(0)
    model_vecs = rng.normal(size=(_MODELS.value, _DIM.value)).astype(np.float32)
    task_vecs = rng.normal(size=(_TASKS.value, _DIM.value)).astype(np.float32)
    features = rng.normal(size=(_ESTIMATOR_MODELS.value, _N.value, _ESTIMATOR_DIM.value))
    features = features.astype(np.float32)
    labels = np.arange(_N.value) % 10
    mesh = engine.make_mesh()
    jobs = {"top_k": lambda: engine.top_k(model_vecs, task_vecs, _K.value, mesh=mesh)[1],
            "estimator": lambda: estimators.score_models(_ESTIMATOR.value, features, labels,
                                                         mesh=mesh)}
    if not _ESTIMATOR_MODELS.value:
        del jobs["estimator"]
    seconds = {}
    for name, job in jobs.items():
        np.asarray(job())  # compile
        times = []
        for repeat in range(_REPEATS.value):
            multihost_utils.sync_global_devices(f"{name}{repeat}")
            start = time.perf_counter()
            np.asarray(job())
            times.append(time.perf_counter() - start)
        seconds[name] = min(times)
    if distributed.is_main():
        print(json.dumps({"devices": mesh.size, "seconds": seconds}), flush=True)


def _launch(processes):
    """The JSON printed by process 0 of a run of ``processes`` processes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flags_ = [f"--{name}={flags.FLAGS[name].value}" for name in (
        "models", "tasks", "dim", "k", "estimator", "estimator_models", "n",
        "estimator_dim", "repeats")]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.setdefault("OPENBLAS_NUM_THREADS", str(max(1, os.cpu_count() // processes)))
    workers = [subprocess.Popen(
        [sys.executable, __file__, *flags_, f"--worker={index}", f"--port={port}",
         f"--workers={processes}"], stdout=subprocess.PIPE, text=True,
        env=env) for index in range(processes)]
    outputs = [w.communicate()[0] for w in workers]
    if any(w.returncode for w in workers):
        raise RuntimeError(f"a worker of the {processes}-process run failed")
    return json.loads(outputs[0].strip().splitlines()[-1])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _WORKER.value is not None:
        worker()
        return
    print(f"M={_MODELS.value} x T={_TASKS.value} (d={_DIM.value}) top-{_K.value}; "
          f"{_ESTIMATOR.value} of {_ESTIMATOR_MODELS.value} models, N={_N.value}, "
          f"D={_ESTIMATOR_DIM.value}; {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}")
    runs = {processes: _launch(processes) for processes in (1, _PROCESSES.value)}
    one, many = runs[1]["seconds"], runs[_PROCESSES.value]["seconds"]
    results = {"processes": _PROCESSES.value, "runs": runs,
               "ratio": {job: one[job] / many[job] for job in one}}
    for job in one:
        print(f"{job:>10}: 1 process {one[job]:8.3f} s, {_PROCESSES.value} processes "
              f"{many[job]:8.3f} s, ratio {results['ratio'][job]:.2f}x "
              f"({runs[_PROCESSES.value]['devices']} devices)")
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    app.run(main)
