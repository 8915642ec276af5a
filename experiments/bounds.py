"""Bounds on leave-one-task-out ranking with k probes on a bundled benchmark (issue #15):
what a low-rank model, a lucky probe set or the best-matching history task could reach, beside
the anchor (the rows: :mod:`fennec_jax.eval.bounds`).

  ./run.sh bounds --benchmark=model_recycling --out=runs/bounds_mr

Writes OUT/bounds.json (atomically) and OUT/table.md, and prints the table.
"""

import time

from absl import flags

from experiments import cli
from fennec_jax.benchmarks.bundled import load_benchmark
from fennec_jax.core import atomic_io
from fennec_jax.core.records import TRANSFORMS
from fennec_jax.eval.bounds import bounds, table

_BENCHMARK = flags.DEFINE_string("benchmark", "model_recycling", "Bundled benchmark.")
_PROBES = flags.DEFINE_list("probes", ["0", "3", "5"], "Numbers k of probe models revealed.")
_SEEDS = flags.DEFINE_integer("seeds", 10, "Probe draws per (task, k), as the protocol's.", lower_bound=1)
_RANKS = flags.DEFINE_list("oracle_ranks", ["1", "3", "5", "10"], "Ranks of the all-cells oracle.")
_ANCHOR_RANK = flags.DEFINE_integer("anchor_rank", 5, "Rank of the history factors of the anchor.", lower_bound=1)
_SETS = flags.DEFINE_integer("hindsight_sets", 200, "Random probe sets per task and k for the hindsight rows.",
                             lower_bound=1)
_TRANSFORM = flags.DEFINE_enum("transform", "z", list(TRANSFORMS),
                               "Per-task scores the factor models fit: z-scores (records.standardize) or normal "
                               "scores of the ranks (records.normal_scores; a sensitivity check).")
_L2 = flags.DEFINE_float("l2", 1e-3, "Ridge on the factors in the masked ALS (z-score units).", lower_bound=0.0)
_OUT = flags.DEFINE_string("out", "runs/bounds", "Output folder.")


def main():
    try:
        probes = tuple(int(k) for k in _PROBES.value)
        ranks = tuple(int(r) for r in _RANKS.value)
    except ValueError:
        raise cli.InputError(f"--probes and --oracle_ranks must be integers, got {_PROBES.value}, {_RANKS.value}") \
            from None
    if any(k < 0 for k in probes) or any(r < 1 for r in ranks):
        raise cli.InputError("--probes must be >= 0 and --oracle_ranks >= 1")
    bench = cli.by_name(load_benchmark, _BENCHMARK.value, "benchmark")
    start = time.perf_counter()
    result = bounds(bench, probes, _SEEDS.value, ranks, _ANCHOR_RANK.value, _SETS.value, _L2.value,
                    transform=_TRANSFORM.value, progress=lambda msg: None)
    result["wall_seconds"] = time.perf_counter() - start
    text = table(result)
    atomic_io.write_json(f"{_OUT.value}/bounds.json", result)
    atomic_io.write_text(f"{_OUT.value}/table.md", text)
    print(text)
    print(f"wall time {result['wall_seconds']:.1f} s; wrote {_OUT.value}/bounds.json and table.md")


if __name__ == "__main__":
    cli.run(main)
