"""Leave-one-task-out evaluation of ranking methods on bundled benchmarks or a user's records.

  ./run.sh evaluate --benchmark=parc_controlled --methods=random,popularity,knn_task \
      --probes=0,1,3,5 --seeds=10 --out=runs/eval_parc_controlled
  ./run.sh evaluate --records=my_records.csv [--model_meta=models.csv] --methods=popularity

Writes OUT/report.json and OUT/report.md (one pair per benchmark when several are given:
OUT/<benchmark>/report.*) and prints the mean table.
"""

import os
import time

from absl import app, flags, logging
from tqdm import tqdm

from fennec_jax import atomic_io, evaluation
from fennec_jax.benchmarks import load_benchmark
from fennec_jax.methods import get_method

from cli import by_name, records_benchmark  # experiments/cli.py, beside this program

_BENCHMARK = flags.DEFINE_list("benchmark", None, "Bundled benchmark name(s), comma separated.")
_RECORDS = flags.DEFINE_string("records", None, "A long table model,task,score[,seed][,split] (CSV or Parquet).")
_MODEL_META = flags.DEFINE_string("model_meta", None, "Model metadata table (column 'model') for --records.")
_TASK_META = flags.DEFINE_string("task_meta", None, "Task metadata table (column 'task') for --records.")
_METHODS = flags.DEFINE_list("methods", ["random", "popularity", "knn_task"], "Methods to compare.")
_PROBES = flags.DEFINE_list("probes", ["0", "1", "3", "5"], "Numbers k of probe models revealed.")
_SEEDS = flags.DEFINE_integer("seeds", 10, "Probe draws per (task, k).", lower_bound=1)
_HISTORY = flags.DEFINE_enum("history", "targets", ["targets", "all"],
                             "History tasks: the other targets only, or all other tasks.")
_OUT = flags.DEFINE_string("out", "runs/evaluate", "Output folder.")


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:  # orbax logs every checkpoint step at INFO
        logging.set_verbosity(logging.WARNING)
    if bool(_BENCHMARK.value) == bool(_RECORDS.value):
        raise app.UsageError("give exactly one of --benchmark or --records")
    try:
        probes = [int(k) for k in _PROBES.value]
    except ValueError:
        raise app.UsageError(f"--probes must be integers, got {_PROBES.value}") from None
    if any(k < 0 for k in probes):
        raise app.UsageError(f"--probes must be >= 0, got {probes}")
    methods = {name: by_name(get_method, name, "methods") for name in _METHODS.value}
    if _RECORDS.value:
        benchmarks = [records_benchmark(_RECORDS.value, _MODEL_META.value, _TASK_META.value)]
    else:
        benchmarks = [by_name(load_benchmark, name, "benchmark") for name in _BENCHMARK.value]
    for bench in benchmarks:
        out = _OUT.value if len(benchmarks) == 1 else os.path.join(_OUT.value, bench.name)
        start = time.perf_counter()
        with tqdm(total=len(bench.targets) * len(methods), desc=bench.name, unit="fit") as bar:
            report = evaluation.leave_one_task_out(
                bench, methods, probes=probes, seeds=_SEEDS.value, history=_HISTORY.value,
                progress=lambda msg: bar.update(1),
            )
        report["wall_seconds"] = time.perf_counter() - start
        atomic_io.write_json(os.path.join(out, "report.json"), report)
        markdown = evaluation.to_markdown(report)
        atomic_io.write_text(os.path.join(out, "report.md"), markdown)
        print(markdown.split("## Per task")[0])
        print(f"wall time {report['wall_seconds']:.1f} s; wrote {out}/report.json and report.md")


if __name__ == "__main__":
    app.run(main)
