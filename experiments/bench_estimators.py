"""Benchmark: fennec_jax.estimators.score_models against NumPy/SciPy loops over models.

  python experiments/bench_estimators.py --models=64 --n=1000 --dims=256,2048 \
      --classes=10 --out=bench/estimators.json

For each feature width D and each estimator: one warm-up call of ``score_models`` on all
M models (compile + run; the compile time reported is warm-up minus a steady run), then the
best of --repeats steady runs, against the best of --repeats runs of the NumPy/SciPy
baseline looping over the models (measured in the same process, interleaved). The
baselines are ``fennec_jax.estimators.reference``, which follows the authors' published
NumPy code (e.g. LogME's SVD, H-Score's ``pinv``, TransRate's per-class ``slogdet``, GBC's
loop over class pairs, PACTran's L-BFGS-B); they are the reference point, not tuned
rewrites. With --numpy_models=K < M the baseline loop is timed on the first K models and
scaled by M / K (written as "numpy_models_timed").

The synthetic task: features of M models = class signal + low-rank nuisance + noise
through a random projection to D dims; probs = softmax of a random source head
(--source_classes classes). Both are float32 arrays [M, N, .] handed to score_models as is
(a 3-D array stands for M equally wide models; NumPy allocates it unaligned, so every call
copies it into JAX's memory) and looped over by the baselines. Each estimator is also
timed on the same arrays already held by JAX ("seconds_device_inputs": what a JAX forward
pass leaves, used in place). Writes {"D=<d>": {name: {"seconds", "compile_seconds",
"numpy_seconds", "speedup", "seconds_device_inputs", "speedup_device_inputs", ...}}} to
--out and prints a table. With --scaling_n, also {"scaling": ...}: the time of a few
models against N for the O(N^2) and iterative estimators (logme as a reference).

With --sharded, each estimator is also timed with the models split over every device
(``score_models(..., mesh=engine.make_mesh())`` on the NumPy inputs: "seconds_sharded",
"sharded_vs_unsharded" = seconds / seconds_sharded, "sharded_devices"); on CPU,
--cpu_devices splits the host into that many devices (e.g. 2 on this 2-core machine,
and threading as above: one core per device):

  python experiments/bench_estimators.py --sharded --cpu_devices=2 --models=64 \
      --dims=256 --estimators=logme,hscore,leep --out=bench/estimators_sharded.json
"""

import json
import os
import time

# Threading, unless set in the environment: single-threaded BLAS/LAPACK (OpenBLAS, used by
# NumPy, SciPy and jaxlib's LAPACK kernels) and single-threaded XLA Eigen. On this shared
# 2-core machine multi-threaded OpenBLAS spin-waits under load (a batch of 256 x 256 eigh
# ran 10-30x slower, for NumPy and JAX alike), and XLA's Eigen pool can deadlock on vmapped
# graphs (a score_models call hung here). Both sides get the same setting.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

import numpy as np  # noqa: E402  (after XLA_FLAGS, before jax is imported)
import jax  # noqa: E402
from absl import app, flags  # noqa: E402

from fennec_jax.core import atomic_io  # noqa: E402
from fennec_jax import estimators  # noqa: E402
from fennec_jax.estimators import reference  # noqa: E402
from fennec_jax.ranking import engine  # noqa: E402

_MODELS = flags.DEFINE_integer("models", 64, "Candidate models M.")
_N = flags.DEFINE_integer("n", 1000, "Target samples N.")
_DIMS = flags.DEFINE_list("dims", ["256", "2048"], "Feature widths D to benchmark.")
_CLASSES = flags.DEFINE_integer("classes", 10, "Target classes C.")
_SOURCE_CLASSES = flags.DEFINE_integer("source_classes", 1000, "Source-head classes Cs.")
_ESTIMATORS = flags.DEFINE_list("estimators", None, "Estimators to run (default: all).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats (best is reported).")
_NUMPY_MODELS = flags.DEFINE_integer("numpy_models", None, "Time the NumPy loop on this "
                                     "many models and scale to M (default: all M).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "score_models batch_size (models "
                                   "mapped per vmapped chunk; bounds memory).")
_OUT = flags.DEFINE_string("out", "bench/estimators.json", "Output JSON.")
_SCALING_N = flags.DEFINE_list("scaling_n", [], "Also time --scaling_estimators at these "
                               "sample counts N (D = --scaling_dim, --scaling_models "
                               "models) and write a 'scaling' section.")
_SCALING_ESTIMATORS = flags.DEFINE_list(
    "scaling_estimators", ["logme", "parc", "nleep", "pactran_gauss", "pactran_dir"],
    "Estimators timed against N (logme: a linear-in-N reference).")
_SCALING_DIM = flags.DEFINE_integer("scaling_dim", 256, "Feature width D for --scaling_n.")
_SCALING_MODELS = flags.DEFINE_integer("scaling_models", 4, "Models M for --scaling_n.")
_SHARDED = flags.DEFINE_bool("sharded", False, "Also time score_models with the models "
                             "split over every device (mesh=engine.make_mesh()).")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", None, "On CPU, split the host into this "
                                    "many devices (jax_num_cpu_devices).")


# ------------------------------------------------------------ task and timing

def synthetic_task(num_models, n, dim, num_classes, source_classes, seed=0):
    """``(features[M, N, D], labels[N], probs[M, N, Cs])`` float32 (as a forward pass gives
    them): each model sees class signal of its own strength, a 24-factor nuisance and
    noise, projected to ``dim`` dimensions and rectified."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    features = np.empty((num_models, n, dim), np.float32)
    probs = np.empty((num_models, n, source_classes), np.float32)
    for m in range(num_models):
        latent = np.concatenate([
            (0.5 + 2.0 * m / num_models) * rng.normal(size=(num_classes, 16))[labels],
            rng.normal(size=(n, 24))], 1)
        projection = rng.normal(size=(latent.shape[1], dim)) / np.sqrt(latent.shape[1])
        features[m] = np.maximum(latent @ projection + 0.3 * rng.normal(size=(n, dim)), 0)
        logits = rng.normal(size=(n, source_classes))
        logits[np.arange(n), labels * 7 % source_classes] += 1.0 + 3.0 * m / num_models
        p = np.exp(logits - logits.max(1, keepdims=True))
        probs[m] = p / p.sum(1, keepdims=True)
    return features, labels, probs


def _best_time(fn, repeats):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def bench_one(name, features_list, labels, probs_list, device_inputs, repeats,
              numpy_models, batch_size, mesh=None):
    """Times of ``score_models`` on the float32 NumPy inputs (copied into JAX's memory on
    every call), on the same inputs already held by JAX (``device_inputs``: what a JAX
    forward pass leaves; no copy), of the NumPy baseline loop, and with a ``mesh``, on the
    NumPy inputs split over its devices."""
    estimator = estimators.get(name)
    inputs = probs_list if estimator.needs_probs else features_list
    options = {} if batch_size is None else {"batch_size": batch_size}
    run_jax = lambda: estimators.score_models(name, features_list, labels, probs_list,
                                              **options)
    run_device = lambda: estimators.score_models(name, *device_inputs[:1], labels,
                                                 device_inputs[1], **options)
    run_sharded = lambda: estimators.score_models(name, features_list, labels, probs_list,
                                                  mesh=mesh, **options)
    baseline = reference.REFERENCES[name]
    timed = inputs[:numpy_models]
    run_numpy = lambda: np.array([baseline(np.asarray(x, np.float64), labels)
                                  for x in timed])
    start = time.perf_counter()
    scores = run_jax()
    warm_up = time.perf_counter() - start
    run_device()
    sharded_diff = None if mesh is None else float(np.max(np.abs(run_sharded() - scores)))
    jax_times, device_times, numpy_times, sharded_times = [], [], [], []
    for _ in range(repeats):  # interleaved, so all see the same machine load
        jax_times.append(_best_time(run_jax, 1)[0])
        device_times.append(_best_time(run_device, 1)[0])
        if mesh is not None:
            sharded_times.append(_best_time(run_sharded, 1)[0])
        seconds, numpy_values = _best_time(run_numpy, 1)
        numpy_times.append(seconds)
    seconds, device_seconds = min(jax_times), min(device_times)
    numpy_seconds = min(numpy_times) * len(inputs) / len(timed)
    if name in reference.COMBINE and len(timed) == len(inputs):
        numpy_values = reference.COMBINE[name](numpy_values)
    agree = (float(np.max(np.abs(scores[: len(timed)] - numpy_values)))
             if len(timed) == len(inputs) or name not in reference.COMBINE else None)
    row = {"seconds": seconds, "compile_seconds": max(warm_up - seconds, 0.0),
           "numpy_seconds": numpy_seconds, "speedup": numpy_seconds / seconds,
           "seconds_device_inputs": device_seconds,
           "speedup_device_inputs": numpy_seconds / device_seconds,
           "numpy_models_timed": len(timed), "max_abs_diff_vs_numpy": agree}
    if mesh is not None:
        row.update(seconds_sharded=min(sharded_times), sharded_devices=mesh.size,
                   sharded_vs_unsharded=seconds / min(sharded_times),
                   max_abs_diff_sharded=sharded_diff)
    return row


def bench_scaling(names, sample_counts, num_models, dim, repeats):
    """``{name: {"N=<n>": seconds}}``: best steady ``score_models`` time of ``num_models``
    models at each N (after a warm-up call that compiles), plus the log-log slope between
    the smallest and largest N (time ~ N^slope)."""
    timings = {name: {} for name in names}
    for n in sample_counts:
        features_list, labels, probs_list = synthetic_task(
            num_models, n, dim, _CLASSES.value, _SOURCE_CLASSES.value)
        for name in names:
            run = lambda: estimators.score_models(name, features_list, labels, probs_list)
            run()
            timings[name][f"N={n}"] = _best_time(run, repeats)[0]
            print(f"{name:>14} N={n:<6} {timings[name][f'N={n}']:9.3f} s  "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    low, high = min(sample_counts), max(sample_counts)
    for name in names:
        times = timings[name]
        times["slope"] = float(np.log(times[f"N={high}"] / times[f"N={low}"])
                               / np.log(high / low))
    return timings


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    names = _ESTIMATORS.value or estimators.method_names()
    unknown = [n for n in names if n not in estimators.ESTIMATORS]
    if unknown:
        raise app.UsageError(f"--estimators: unknown {', '.join(unknown)}")
    numpy_models = _NUMPY_MODELS.value or _MODELS.value
    if _CPU_DEVICES.value:
        jax.config.update("jax_num_cpu_devices", _CPU_DEVICES.value)
    mesh = engine.make_mesh() if _SHARDED.value else None
    results = {}
    if os.path.exists(_OUT.value):  # keep other widths from earlier runs
        with open(_OUT.value) as f:
            results = json.load(f)
    for dim in (int(d) for d in _DIMS.value):
        features_list, labels, probs_list = synthetic_task(
            _MODELS.value, _N.value, dim, _CLASSES.value, _SOURCE_CLASSES.value)
        device_inputs = (jax.device_put(features_list), jax.device_put(probs_list))
        key = f"D={dim}"
        results.setdefault(key, {})
        print(f"\nM={_MODELS.value} models, N={_N.value}, D={dim}, C={_CLASSES.value}, "
              f"Cs={_SOURCE_CLASSES.value}")
        print(f"{'estimator':>14} {'jax s':>9} {'compile s':>9} {'numpy s':>9} "
              f"{'speedup':>8} {'on-device s':>11} {'speedup':>8}  max|diff|")
        for name in names:
            row = bench_one(name, features_list, labels, probs_list, device_inputs,
                            _REPEATS.value, numpy_models, _BATCH_SIZE.value, mesh)
            row.update(models=_MODELS.value, n=_N.value, classes=_CLASSES.value,
                       source_classes=_SOURCE_CLASSES.value,
                       load_average=os.getloadavg()[0], repeats=_REPEATS.value,
                       batch_size=_BATCH_SIZE.value, xla_flags=os.environ.get("XLA_FLAGS"),
                       openblas_threads=os.environ.get("OPENBLAS_NUM_THREADS"))
            results[key][name] = row
            diff = row["max_abs_diff_vs_numpy"]
            scaled = "" if row["numpy_models_timed"] == _MODELS.value else \
                f"  (numpy timed on {row['numpy_models_timed']} models, scaled)"
            print(f"{name:>14} {row['seconds']:9.3f} {row['compile_seconds']:9.2f} "
                  f"{row['numpy_seconds']:9.3f} {row['speedup']:7.1f}x "
                  f"{row['seconds_device_inputs']:11.3f} "
                  f"{row['speedup_device_inputs']:7.1f}x  "
                  f"{'-' if diff is None else f'{diff:.1e}'}{scaled}", flush=True)
            if mesh is not None:
                print(f"{'':>14} sharded over {mesh.size} devices: "
                      f"{row['seconds_sharded']:.3f} s, {row['sharded_vs_unsharded']:.2f}x "
                      f"unsharded, max|diff| {row['max_abs_diff_sharded']:.1e}", flush=True)
            atomic_io.write_json(_OUT.value, results)
    if _SCALING_N.value:
        sample_counts = [int(n) for n in _SCALING_N.value]
        print(f"\nscaling with N: M={_SCALING_MODELS.value}, D={_SCALING_DIM.value}, "
              f"C={_CLASSES.value}, Cs={_SOURCE_CLASSES.value}")
        results["scaling"] = {
            "models": _SCALING_MODELS.value, "dim": _SCALING_DIM.value,
            "classes": _CLASSES.value, "source_classes": _SOURCE_CLASSES.value,
            "repeats": _REPEATS.value, "load_average": os.getloadavg()[0],
            "xla_flags": os.environ.get("XLA_FLAGS"),
            "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
            "seconds": bench_scaling(_SCALING_ESTIMATORS.value, sample_counts,
                                     _SCALING_MODELS.value, _SCALING_DIM.value,
                                     _REPEATS.value)}
        atomic_io.write_json(_OUT.value, results)
    print(f"\nwrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
