"""Ranks every model for every target task of the chosen data with one method.

  ./run.sh rank_all                                  # all bundled benchmarks, method auto
  ./run.sh rank_all --benchmarks=parc_all,spider_multi --top_k=10 --out=runs/rank_all
  ./run.sh rank_all --records=my_records.csv --model_meta=models.csv --method=knn_task
  ./run.sh rank_all --records=errors.csv --lower_is_better=UTKFace,dSprites
  ./run.sh rank_all --method=fennec --method_config=preset=nmf

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
"""

import os
import sys
import time

from absl import flags

from experiments import cli
from fennec_jax.benchmarks.bundled import benchmark_names, load_benchmark
from fennec_jax.methods.base import method_names
from fennec_jax.ranking.rank_job import RankJob, file_digest, run_rank_job

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
_SHARD_SIZE = flags.DEFINE_integer("shard_size", 256, "Tasks per resumable shard.", lower_bound=1)
_EVAL_PROBES = flags.DEFINE_integer("eval_probes", 3, "k for the leave-one-task-out check.", lower_bound=0)
_EVAL_SEEDS = flags.DEFINE_integer("eval_seeds", 5, "Seeds for the leave-one-task-out check.", lower_bound=1)
_EVAL_MAX_TASKS = flags.DEFINE_integer("eval_max_tasks", 12, "The check holds out at most this many targets "
                                       "(evenly spaced), each against all the others.", lower_bound=2)
_OUT = flags.DEFINE_string("out", "runs/rank_all", "Output folder.")


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


def main():
    (method,) = cli.methods_from_flags([_METHOD.value], _METHOD_CONFIG.value, flag="method").values()
    if _RECORDS.value:
        if _BENCHMARKS.value:
            raise cli.InputError("give --records or --benchmarks, not both")
        benchmarks = [cli.records_benchmark(_RECORDS.value, _MODEL_META.value, _TASK_META.value)]
        source = "records:" + file_digest(_RECORDS.value)
    else:
        benchmarks = [cli.by_name(load_benchmark, name, "benchmarks") for name in (_BENCHMARKS.value or benchmark_names())]
        source = "bundled"
    known = {task for bench in benchmarks for task in bench.records.tasks}
    unknown = [task for task in _LOWER_IS_BETTER.value if task not in known]
    if unknown:
        raise cli.InputError(f"--lower_is_better: no task named {', '.join(unknown)} in the records")
    job = RankJob(method=method.name, top_k=_TOP_K.value, shard_size=_SHARD_SIZE.value,
                  eval_probes=_EVAL_PROBES.value, eval_seeds=_EVAL_SEEDS.value,
                  eval_max_tasks=_EVAL_MAX_TASKS.value, source=source,
                  lower_is_better=tuple(_LOWER_IS_BETTER.value))
    start = time.perf_counter()
    summary = run_rank_job(benchmarks, method, job, _OUT.value,
                           log=lambda msg: print(msg, file=sys.stderr, flush=True))
    _print_table(summary, job)
    print(f"\nwrote {os.path.join(_OUT.value, 'rankings.csv')} ({summary['rows']} rows), summary.json "
          f"and checkpoints/ in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    cli.run(main)
