"""Ranks every model for every target task of the chosen data with one method.

  ./run.sh rank_all                                  # all bundled benchmarks, method auto
  ./run.sh rank_all --benchmarks=parc_all,spider_multi --top_k=10 --out=runs/rank_all
  ./run.sh rank_all --records=my_records.csv --model_meta=models.csv --method=knn_task
  ./run.sh rank_all --records=errors.csv --lower_is_better=UTKFace,dSprites
  ./run.sh rank_all --method=fennec --method_config=preset=nmf
  ./run.sh rank_all --format=csv,parquet            # rankings.csv and rankings.parquet

From a fitted transfer space (no records, no fit: millions of models x thousands of tasks):
  ./run.sh rank_all --space=my_space --top_k=10 --out=runs/space        # every task, top 10
  ./run.sh rank_all --space=my_space --tasks=cifar10,dtd                 # full ranking of two
  ./run.sh rank_all --space=my_space --task_range=0:100 --format=csv,parquet
  ./run.sh rank_all --benchmarks=parc_all --method=fennec --export_space=my_space

The default method, auto, picks per number of probes among popularity, knn_task, fennec (its
validated grid), fennec:preset=mf, size and source_score by validation inside each benchmark's
own history (held-out history tasks scored as a new task is), and prints what it chose.

Writes OUT/rankings.csv (benchmark,task,rank,model,predicted_score,observed,measured_score),
OUT/summary.json, the fitted method state under OUT/checkpoints/, and prints per benchmark:
models, tasks, and the method's leave-one-task-out weighted tau and top-1 regret.
predicted_score is in the records' units (the method's per-task standardized score mapped
back with the task's observed mean and standard deviation); a model the records hold a
score for is `observed` = true with its `measured_score`, which ranks it. rankings.csv is
written before the leave-one-task-out check; the check leaves out tasks with fewer than
k + 2 evaluated models and says so. A killed run restarted with the same flags resumes from
its last finished shard (see fennec_jax/ranking/rank_job.py). Progress goes to stderr.

--space=DIR ranks from a folder holding model_vecs.npy [M, d], task_vecs.npy [T, d], optional
model_bias.npy [M], task_bias.npy [T], models.txt, tasks.txt (names, one a line): task t scores
model m as task_vecs[t] @ model_vecs[m] + model_bias[m] + task_bias[t]. Writes
OUT/rankings.parquet (task,rank,model,score; --format=csv for CSV) and OUT/summary.json,
resumable by shards of tasks (see fennec_jax/ranking/space_job.py). --export_space=DIR fits
--method (a vector method: fennec, spider) on one benchmark or --records and writes its space
there (every model, every target task), without ranking.
"""

import os
import sys
import time

from absl import flags

from experiments import cli
from fennec_jax.benchmarks.bundled import benchmark_names, load_benchmark
from fennec_jax.methods.base import method_names
from fennec_jax.ranking import outputs, space_job
from fennec_jax.core.digest import file_digest
from fennec_jax.ranking.rank_job import RankJob, run_rank_job

_BENCHMARKS = flags.DEFINE_list("benchmarks", None,
                                f"Bundled benchmarks (default: all): {', '.join(benchmark_names())}.")
_RECORDS = flags.DEFINE_string("records", None, "Rank a user's records table instead of bundled data: long "
                               "(model,task,score[,seed][,split]) or wide (model, then a column per task), "
                               "CSV or Parquet.")
_MODEL_META = flags.DEFINE_string("model_meta", None, "Model metadata for --records.")
_TASK_META = flags.DEFINE_string("task_meta", None, "Task metadata for --records.")
_METHOD = flags.DEFINE_string("method", "auto", "Ranking method, NAME or NAME:key=value+...; registered: "
                              f"{', '.join(method_names())}.")
_METHOD_CONFIG = flags.DEFINE_string("method_config", None, "key=value,... configuration of --method.")
_LOWER_IS_BETTER = flags.DEFINE_list("lower_is_better", [], "Tasks where a lower score is better (e.g. an error): "
                                     "the methods see them negated; rank 1 = lowest.")
_TOP_K = flags.DEFINE_integer("top_k", None, "Keep the top k models per task (default: all).", lower_bound=1)
_SHARD_SIZE = flags.DEFINE_integer("shard_size", 256, "Tasks per resumable shard (with --space, default: "
                                   "as many as make about 4M rows, at most 1024).", lower_bound=1)
_EVAL_PROBES = flags.DEFINE_integer("eval_probes", 3, "k for the leave-one-task-out check.", lower_bound=0)
_EVAL_SEEDS = flags.DEFINE_integer("eval_seeds", 5, "Seeds for the leave-one-task-out check.", lower_bound=1)
_EVAL_MAX_TASKS = flags.DEFINE_integer("eval_max_tasks", 12, "The check holds out at most this many targets "
                                       "(evenly spaced), each against all the others.", lower_bound=2)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for a run over several "
                                   "processes (README: Running on several hosts).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Processes in the run.", lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index, 0 to --num_processes - 1.", lower_bound=0)
_OUT = flags.DEFINE_string("out", "runs/rank_all", "Output folder.")
_FORMAT = flags.DEFINE_list("format", None, "Output formats, csv and/or parquet (default: csv; "
                            "with --space, parquet).")
_SPACE = flags.DEFINE_string("space", None, "Rank from a fitted transfer space in this folder "
                             "(model_vecs.npy, task_vecs.npy, ...) instead of records.")
_TASKS = flags.DEFINE_list("tasks", None, "With --space: the task names (tasks.txt) to rank.")
_TASK_RANGE = flags.DEFINE_string("task_range", None, "With --space: rows start:stop of "
                                  "task_vecs.npy to rank.")
_EXPORT_SPACE = flags.DEFINE_string("export_space", None, "Fit --method on the data and write "
                                    "its transfer space to this folder (no ranking).")


def _print_table(summary: dict, job: RankJob) -> None:
    print(f"\nmethod = {job.method}; weighted tau and top-1 regret: leave-one-task-out, k = {job.eval_probes} "
          f"probes, {job.eval_seeds} seeds, mean over target tasks")
    print(f"{'benchmark':<26}{'models':>8}{'tasks':>7}{'w.tau':>8}{'regret':>9}")
    for name, entry in summary["benchmarks"].items():
        loto = entry["loto"]
        check = (f"{loto['weighted_tau']:>8.3f}{loto['top1_regret']:>9.3f}" if loto["weighted_tau"] is not None
                 else f"{'n/a':>8}{'n/a':>9}")
        note = f"  ({loto['note']})" if loto["note"] else ""
        print(f"{name:<26}{entry['models']:>8}{entry['tasks']:>7}{check}{note}")
    for name, entry in summary["benchmarks"].items():
        if entry.get("choice"):
            print(f"\n{name}: {entry['choice']}")


def _formats(default: str) -> tuple[str, ...]:
    formats = tuple(_FORMAT.value or [default])
    unknown = [f for f in formats if f not in outputs.FORMATS]
    if unknown:
        raise cli.InputError(f"--format: expected csv and/or parquet, got {', '.join(unknown)}")
    return formats


def _task_range() -> tuple[int, int] | None:
    if _TASK_RANGE.value is None:
        return None
    try:
        start, stop = map(int, _TASK_RANGE.value.split(":"))
    except ValueError:
        raise cli.InputError(f"--task_range: expected start:stop (integers), got "
                             f"{_TASK_RANGE.value!r}") from None
    return start, stop


def _rank_space(several: bool) -> None:
    """rank_all --space: the space job (fennec_jax/ranking/space_job.py); over every device of
    every process when ``several``."""
    from fennec_jax.ranking import engine

    given = [name for name, flag in (("--records", _RECORDS), ("--benchmarks", _BENCHMARKS),
                                     ("--export_space", _EXPORT_SPACE)) if flag.value]
    if given:
        raise cli.InputError(f"--space ranks from the space alone; drop {', '.join(given)}")
    job = space_job.SpaceJob(top_k=_TOP_K.value, tasks=tuple(_TASKS.value) if _TASKS.value else None,
                             task_range=_task_range(),
                             shard_size=_SHARD_SIZE.value if flags.FLAGS["shard_size"].present else None)
    start = time.perf_counter()
    try:
        space = space_job.load_space(_SPACE.value)
        summary = space_job.run_space_job(space, job, _OUT.value, _formats("parquet"),
                                          log=lambda msg: print(msg, file=sys.stderr, flush=True),
                                          mesh=engine.make_mesh() if several else None)
    except space_job.SpaceError as err:
        raise cli.InputError(str(err)) from None
    what = f"top {job.top_k}" if job.top_k else "every model"
    print(f"ranked {what} of {summary['models']:,} models for {summary['tasks_ranked']:,} of "
          f"{summary['tasks']:,} tasks: {summary['rows']:,} rows in "
          f"{', '.join('rankings.' + f for f in summary['formats'])} under {_OUT.value} in "
          f"{time.perf_counter() - start:.1f} s")


def _join_processes() -> bool:
    """Joins the multi-process run the flags describe (README: Running on several hosts);
    True when this process is one of several."""
    from fennec_jax.ranking import distributed

    try:
        return distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    except ValueError as err:
        raise cli.InputError(f"--{str(err).split(':')[0]}: {str(err).split(':', 1)[1].strip()}") from None


def main():
    several = _join_processes()
    if _SPACE.value:
        _rank_space(several)
        return
    if several and _PROCESS_ID.value != 0:
        print(f"process {_PROCESS_ID.value}: ranking a records table runs on process 0 (the fit and the tables of "
              f"one benchmark fit one host); --space splits the models over every process")
        return
    if _TASKS.value or _TASK_RANGE.value:
        raise cli.InputError("--tasks and --task_range go with --space")
    (method,) = cli.methods_from_flags([_METHOD.value], _METHOD_CONFIG.value, flag="method").values()
    if _RECORDS.value:
        if _BENCHMARKS.value:
            raise cli.InputError("give --records or --benchmarks, not both")
        benchmarks = [cli.records_benchmark(_RECORDS.value, _MODEL_META.value, _TASK_META.value)]
        source = "records:" + file_digest(_RECORDS.value)
    else:
        benchmarks = [cli.by_name(load_benchmark, name, "benchmarks") for name in (_BENCHMARKS.value or benchmark_names())]
        source = "bundled"
    if _EXPORT_SPACE.value:
        if len(benchmarks) != 1:
            raise cli.InputError("--export_space: expected one benchmark (--benchmarks=NAME or --records)")
        try:
            shape = space_job.export_space(benchmarks[0], method, method.fit(benchmarks[0].records, seed=0),
                                           _EXPORT_SPACE.value)
        except space_job.SpaceError as err:
            raise cli.InputError(f"--export_space: {err}") from None
        print(f"wrote the {method.name} space of {benchmarks[0].name} ({shape['models']} models, "
              f"{shape['tasks']} tasks, d = {shape['dim']}) to {_EXPORT_SPACE.value}")
        return
    known = {task for bench in benchmarks for task in bench.records.tasks}
    unknown = [task for task in _LOWER_IS_BETTER.value if task not in known]
    if unknown:
        raise cli.InputError(f"--lower_is_better: no task named {', '.join(unknown)} in the records")
    job = RankJob(method=method.name, top_k=_TOP_K.value, shard_size=_SHARD_SIZE.value,
                  eval_probes=_EVAL_PROBES.value, eval_seeds=_EVAL_SEEDS.value,
                  eval_max_tasks=_EVAL_MAX_TASKS.value, source=source,
                  lower_is_better=tuple(_LOWER_IS_BETTER.value))
    formats = _formats("csv")
    start = time.perf_counter()
    summary = run_rank_job(benchmarks, method, job, _OUT.value,
                           log=lambda msg: print(msg, file=sys.stderr, flush=True), formats=formats)
    _print_table(summary, job)
    written = ", ".join(os.path.join(_OUT.value, "rankings." + f) for f in formats)
    print(f"\nwrote {written} ({summary['rows']} rows), summary.json "
          f"and checkpoints/ in {time.perf_counter() - start:.1f} s")

if __name__ == "__main__":
    cli.run(main)
