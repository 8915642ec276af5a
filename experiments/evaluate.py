"""Evaluate ranking methods leave-one-task-out on bundled benchmarks or a user's records.

  ./run.sh evaluate --benchmark=parc_controlled --methods=random,popularity,knn_task,fennec \
      --probes=0,1,3,5 --seeds=10 --out=runs/eval_parc_controlled
  ./run.sh evaluate --records=my_records.csv [--model_meta=models.csv] --methods=popularity,fennec:preset=nmf
  ./run.sh evaluate --records=built/records.csv --proxies=built/proxy.npz --features=built/features \
      --methods=popularity,fennec,logme,leep --probes=0,3
  ./run.sh evaluate --benchmark=parc_controlled,spider_multi --methods=fennec --probes=3 --seeds=5 \
      --probe_policy=random,suggest:dopt,suggest:thompson

--probe_policy compares how the k probes are chosen, on the same tasks and seeds: random (the
shared draw; rows "k") or suggest:NAME[:key=value+...] (a policy of
fennec_jax.methods.suggest picks each probe from the method's state, the pick's true score
revealed before the next; rows "k suggest:NAME"; batch=true picks all k at once).

--intervals=0.8 also measures calibrated intervals: in each fold the method is refitted
without each of up to --calibration_tasks history tasks (never the target), the intervals are
calibrated on those held-out tasks' errors (fennec_jax.zoo.calibration), and the report adds
the coverage of the target's intervals (share of its non-probe models' true scores inside)
and their mean width in the task's units.

A method is NAME or NAME:key=value+key=value (its configuration, e.g. fennec:preset=nmf,
spider:preset=wide); --method_config adds key=value,... to every method. Writes
OUT/report.json, OUT/report.md and OUT/report.html (figures: means against k with standard
errors, per-task bars, --scatter_method's predicted against true scores) (OUT/<benchmark>/
when several are given) and prints the mean table.
"""

import dataclasses
import os
import time

from absl import flags
from tqdm import tqdm

from experiments import cli
from fennec_jax.benchmarks.bundled import attach_task_data, load_benchmark
from fennec_jax.eval import protocol, reports
from fennec_jax.zoo.calibration import CALIBRATION_TASKS

_BENCHMARK = flags.DEFINE_list("benchmark", None, "Bundled benchmark name(s), comma separated.")
_RECORDS = flags.DEFINE_string("records", None, "A long table model,task,score[,seed][,split] (CSV or Parquet).")
_MODEL_META = flags.DEFINE_string("model_meta", None, "Model metadata table (column 'model') for --records.")
_TASK_META = flags.DEFINE_string("task_meta", None, "Task metadata table (column 'task') for --records.")
_PROXIES = flags.DEFINE_string("proxies", None, "Tasks' proxy embeddings (.npz: tasks, embeddings) for --records.")
_FEATURES = flags.DEFINE_string("features", None, "Folder TASK/MODEL.npz of forward-pass features for --records.")
_METHODS = flags.DEFINE_list("methods", ["random", "popularity", "knn_task"], "Method specs to compare.")
_METHOD_CONFIG = flags.DEFINE_string("method_config", None, "key=value,... added to every method's configuration.")
_PROBES = flags.DEFINE_list("probes", ["0", "1", "3", "5"], "Numbers k of probe models revealed.")
_SEEDS = flags.DEFINE_integer("seeds", 10, "Probe draws per (task, k).", lower_bound=1)
_HISTORY = flags.DEFINE_enum("history", "targets", ["targets", "all"],
                             "History tasks: the other targets only, or all other tasks.")
_PROBE_POLICY = flags.DEFINE_list("probe_policy", ["random"],
                                  "How probes are chosen: random and/or suggest:NAME[:key=value+...] "
                                  "(NAME: dopt, thompson, mixed, random).")
_INTERVALS = flags.DEFINE_float("intervals", None, "Two-sided level (e.g. 0.8) of calibrated intervals whose "
                                "coverage and width the report adds (default: none).")
_CALIBRATION_TASKS = flags.DEFINE_integer("calibration_tasks", CALIBRATION_TASKS, "With --intervals: history tasks "
                                          "of each fold held out to calibrate them (one more fit each; as fit_zoo).",
                                          lower_bound=1)
_SCATTER = flags.DEFINE_string("scatter_method", None, "Method whose seed-0 predictions the report keeps and plots "
                               "against the true scores (default: the last of --methods; empty: none).")
_OUT = flags.DEFINE_string("out", "runs/evaluate", "Output folder.")


def main():
    if bool(_BENCHMARK.value) == bool(_RECORDS.value):
        raise cli.InputError("give exactly one of --benchmark or --records")
    try:
        probes = tuple(int(k) for k in _PROBES.value)
    except ValueError:
        raise cli.InputError(f"--probes must be integers, got {_PROBES.value}") from None
    if any(k < 0 for k in probes):
        raise cli.InputError(f"--probes must be >= 0, got {list(probes)}")
    methods = cli.methods_from_flags(_METHODS.value, _METHOD_CONFIG.value)
    if _RECORDS.value:
        bench = cli.records_benchmark(_RECORDS.value, _MODEL_META.value, _TASK_META.value)
        try:
            benchmarks = [attach_task_data(bench, proxies=_PROXIES.value, features_dir=_FEATURES.value)]
        except ValueError as err:
            raise cli.InputError(str(err)) from None
    else:
        if _PROXIES.value or _FEATURES.value:
            raise cli.InputError("--proxies and --features go with --records")
        benchmarks = [cli.by_name(load_benchmark, name, "benchmark") for name in _BENCHMARK.value]
    try:
        split = protocol.TasksOut(probes=probes, seeds=_SEEDS.value, history=_HISTORY.value,
                                  probe_policy=tuple(_PROBE_POLICY.value))
    except ValueError as err:
        raise cli.InputError(f"--probe_policy: {err}") from None
    try:
        split = dataclasses.replace(split, intervals=_INTERVALS.value, calibration_tasks=_CALIBRATION_TASKS.value)
    except ValueError as err:
        raise cli.InputError(f"--{err}") from None
    keep = list(methods)[-1] if _SCATTER.value is None else (_SCATTER.value or None)
    for bench in benchmarks:
        out = _OUT.value if len(benchmarks) == 1 else os.path.join(_OUT.value, bench.name)
        start = time.perf_counter()
        with tqdm(total=len(bench.targets) * len(methods), desc=bench.name, unit="fit") as bar:
            try:
                report = protocol.evaluate(bench, methods, split, progress=lambda msg: bar.update(1),
                                           keep_predictions=keep)
            except ValueError as err:
                raise cli.InputError(str(err)) from None
        report["wall_seconds"] = time.perf_counter() - start
        markdown = reports.write_report(out, report)
        print(markdown.split("## Per task")[0])
        print(f"wall time {report['wall_seconds']:.1f} s; wrote {out}/report.json, report.md and report.html")


if __name__ == "__main__":
    cli.run(main)
