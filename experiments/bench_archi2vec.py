"""Benchmark: archi2vec graphs encoded per second on CPU, against the WL-feature baseline, in one run.

  python experiments/bench_archi2vec.py --graphs=10000 --out=bench/archi2vec.json

Encodes the first --graphs NAS-Bench-Graph architectures with `archi2vec.embed` (the default
`Archi2VecConfig`, freshly initialised: the cost does not depend on the weights):

  (a) compile: the first call minus the best warm call (jit compiles one function per padded
      batch shape);
  (b) warm: best of --repeats calls, end to end (host-side batching with
      `graphs.to_graphs_tuple` included), and the batching alone;
  (c) baselines, same graphs: `arch_baselines.wl_features` (the WL ridge baseline's
      featurisation, 1 iteration, 4,096 buckets) and `op_count_features`.

Wall clock and process CPU time (all threads) are both reported; on a shared machine the
wall-clock figures depend on what else runs.
"""

import os
import time

import numpy as np
from absl import app, flags

from fennec_jax.archs import graph_features as arch_baselines
from fennec_jax.archs import archi2vec
from fennec_jax.core import atomic_io
from fennec_jax.archs import graphs
from fennec_jax.archs import nas_bench_graph

_GRAPHS = flags.DEFINE_integer("graphs", 10_000, "NAS-Bench-Graph architectures to encode.", lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed warm calls; the best is kept.", lower_bound=1)
_OUT = flags.DEFINE_string("out", "bench/archi2vec.json", "Where to write the JSON results.")


def _timed(fn, repeats: int) -> tuple[float, float]:
    """(best wall seconds, CPU seconds of that call) over ``repeats`` calls of fn()."""
    best = (np.inf, np.inf)
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return best


def main(argv):
    del argv
    zoo = graphs.from_nas_bench_graph_table(nas_bench_graph.load_table())
    if _GRAPHS.value > len(zoo):
        raise app.UsageError(f"--graphs: at most {len(zoo)} NAS-Bench-Graph architectures, got {_GRAPHS.value}")
    batch = zoo[: _GRAPHS.value]
    config = archi2vec.Archi2VecConfig()
    model = archi2vec.init_model(config, seed=0)

    first = time.perf_counter()
    archi2vec.embed(model, batch)
    first = time.perf_counter() - first
    warm, warm_cpu = _timed(lambda: archi2vec.embed(model, batch), _REPEATS.value)
    chunks = list(archi2vec.chunks(batch, config.max_batch_nodes))
    batching, _ = _timed(lambda: [graphs.to_graphs_tuple([batch[i] for i in c]) for c in chunks], _REPEATS.value)
    wl, wl_cpu = _timed(lambda: arch_baselines.wl_features(batch), _REPEATS.value)
    counts, _ = _timed(lambda: arch_baselines.op_count_features(batch), _REPEATS.value)

    n = len(batch)
    result = {
        "graphs": n,
        "config": {"hidden": config.hidden, "rounds": config.rounds, "heads": config.heads,
                   "ensemble": config.ensemble, "embed_dim": config.embed_dim,
                   "max_batch_nodes": config.max_batch_nodes},
        "chunks": len(chunks),
        "compile_seconds": first - warm,
        "first_call_seconds": first,
        "warm_seconds": warm,
        "warm_cpu_seconds": warm_cpu,
        "graphs_per_second": n / warm,
        "graphs_per_cpu_second": n / warm_cpu,
        "batching_seconds": batching,
        "wl_features_seconds": wl,
        "wl_features_cpu_seconds": wl_cpu,
        "wl_graphs_per_second": n / wl,
        "wl_graphs_per_cpu_second": n / wl_cpu,
        "op_count_graphs_per_second": n / counts,
        "ratio_archi2vec_to_wl": wl / warm,
        "ratio_archi2vec_to_wl_cpu": wl_cpu / warm_cpu,
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    atomic_io.write_json(_OUT.value, result)
    print(f"archi2vec.embed, {n} NAS-Bench-Graph graphs (ensemble {config.ensemble} x hidden {config.hidden}, "
          f"{len(chunks)} batches): {n / warm:,.0f} graphs/s warm ({warm:.2f} s wall, {warm_cpu:.2f} s CPU; "
          f"host batching {batching:.2f} s); compile {first - warm:.1f} s")
    print(f"WL features (baseline): {n / wl:,.0f} graphs/s ({wl:.2f} s wall, {wl_cpu:.2f} s CPU); op counts "
          f"{n / counts:,.0f} graphs/s")
    print(f"ratio archi2vec / WL featurisation (graphs/s): {wl / warm:.2f} wall, {wl_cpu / warm_cpu:.2f} CPU; "
          "load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
