"""The ``rank_all`` job: fit once per benchmark, rank every target task, check, resumable.

Layout under ``out``::

    rankings.csv                     benchmark,task,rank,model,predicted_score,observed,measured_score
    rankings.parquet                 the same rows and columns, typed (``formats``)
    summary.json                     per benchmark: models, tasks, leave-one-task-out check
    checkpoints/<benchmark>/         the fitted method state (orbax, written by method.save)
    parts/<benchmark>/job.json       the arguments that made this folder's parts
    parts/<benchmark>/shard-NNNNN.csv  rows of one shard of target tasks
    parts/<benchmark>/loto.json      the leave-one-task-out check

``rankings.csv`` rows are :class:`~fennec_jax.ranking.table.RankingTable` rows of each target
task (:mod:`fennec_jax.ranking.rank`): ``predicted_score`` in the records' units (the method's
per-task standardized score mapped back with the task's observed mean and standard
deviation), ``observed`` true where the records hold a measured score, which is then
``measured_score`` and ranks the model; rank 1 = best (lowest for the tasks of
``RankJob.lower_is_better``). The methods here give no intervals, so the table's interval
columns are left out.

``rankings.csv`` and ``rankings.parquet`` (one row group per shard) are assembled from the
shards, streamed (:mod:`fennec_jax.ranking.outputs`: memory bounded by a shard) as soon as every
benchmark is ranked, before the
leave-one-task-out check (``evaluate`` with ``TasksOut(probes=(k,), seeds)``, history = the
other targets). The check leaves out target tasks with fewer than k + 2 evaluated models (k
probes and two to rank), as targets and as history, and says so in ``summary.json``; with
fewer than two target tasks left there is no check.

Every file is written atomically (temp file + rename; orbax does the same for checkpoints).
A run restarted with the same arguments reuses the checkpoint (its checksum is verified) and
every finished shard, and produces the same output; a part folder made with other arguments
(or by an older layout of the parts) is cleared first. The output formats are not part of the
arguments: a finished run restarted with another format only assembles that file.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

import fennec_jax
from fennec_jax.core import atomic_io
from fennec_jax.core.records import Benchmark
from fennec_jax.eval import protocol
from fennec_jax.methods.base import RankingMethod
from fennec_jax.ranking import outputs
from fennec_jax.ranking.rank import oriented, rank_tasks, task_shards

__all__ = ["RankJob", "run_rank_job", "COLUMNS", "HEADER"]

COLUMNS = ("rank", "model", "predicted_score", "observed", "measured_score")
HEADER = ("benchmark", "task", *COLUMNS)
# rankings.parquet's columns: the CSV's, typed (an empty measured_score is null).
_SCHEMA = pa.schema([("benchmark", pa.string()), ("task", pa.string()), ("rank", pa.int64()),
                     ("model", pa.string()), ("predicted_score", pa.float64()),
                     ("observed", pa.bool_()), ("measured_score", pa.float64())])
_PARTS_FORMAT = 2  # the layout of parts/: parts of another layout are not reused


@dataclasses.dataclass(frozen=True)
class RankJob:
    """Arguments of one rank_all run (they key the resume state)."""

    method: str
    top_k: int | None = None
    shard_size: int = 256
    eval_probes: int = 3
    eval_seeds: int = 5
    eval_max_tasks: int = 12  # the check holds out at most this many targets (evenly spaced)
    source: str = "bundled"  # 'bundled', or a digest of the user's records file
    lower_is_better: tuple[str, ...] = ()  # tasks where a lower score is better

    def key(self) -> dict:
        """The arguments as they read back from ``job.json``."""
        key = {**dataclasses.asdict(self), "package_version": fennec_jax.__version__, "parts_format": _PARTS_FORMAT}
        return json.loads(json.dumps(key))


def _fit_or_restore(bench: Benchmark, method: RankingMethod, ckpt_dir: str, resume: bool):
    """The method's state on all records, checkpointed by the method itself and reused when
    the job resumes (its checksum is verified on restore)."""
    if resume and os.path.exists(ckpt_dir):
        return method.restore(ckpt_dir)
    state = method.fit(bench.records, seed=0)
    method.save(state, ckpt_dir)
    return state


def _rank_benchmark(bench: Benchmark, method: RankingMethod, job: RankJob, out: str,
                    log: Callable[[str], None]) -> dict:
    """Ranks ``bench``'s target tasks into its shard files; returns its summary entry."""
    part_dir = os.path.join(out, "parts", bench.name)
    ckpt_dir = os.path.abspath(os.path.join(out, "checkpoints", bench.name))
    job_path = os.path.join(part_dir, "job.json")
    resume = False
    if os.path.exists(job_path):
        with open(job_path) as f:
            resume = json.load(f) == job.key()
        if not resume:
            log(f"{bench.name}: earlier parts were made with other arguments; starting afresh")
            shutil.rmtree(part_dir)
            shutil.rmtree(ckpt_dir, ignore_errors=True)
    atomic_io.write_json(job_path, job.key())
    state = _fit_or_restore(bench, method, ckpt_dir, resume)
    shards = task_shards(bench, job.shard_size)
    for i, tasks in enumerate(shards):
        shard_path = os.path.join(part_dir, f"shard-{i:05d}.csv")
        if os.path.exists(shard_path):
            log(f"{bench.name}: shard {i + 1}/{len(shards)} already done")
            continue
        tables = rank_tasks(bench, method, state, tasks, job.top_k, job.lower_is_better)
        rows = [(bench.name, task, *row) for task, table in tables for row in table.rows(job.top_k, COLUMNS)]
        atomic_io.write_csv(shard_path, HEADER, rows)
        log(f"{bench.name}: shard {i + 1}/{len(shards)} ranked ({len(tasks)} tasks)")
    return {
        "models": bench.records.num_models,
        "tasks": len(bench.targets),
        "shards": len(shards),
        "checkpoint": os.path.relpath(ckpt_dir, out) if os.path.exists(ckpt_dir) else None,  # under out
        "dropped": dict(bench.records.dropped),
        # What a method that chooses (auto) chose on all records, and why.
        "choice": method.report(state) if hasattr(method, "report") else None,
    }


def _self_check(bench: Benchmark, method: RankingMethod, job: RankJob, log: Callable[[str], None]) -> dict:
    """The leave-one-task-out check of ``method`` on ``bench`` (module docstring: which tasks)."""
    k = job.eval_probes
    evaluated = bench.eval_mask[bench.target_indices].sum(1)
    kept = tuple(t for t, n in zip(bench.targets, evaluated) if n >= k + 2)
    skipped = [t for t in bench.targets if t not in kept]
    notes = []
    if skipped:
        notes.append(f"left out {len(skipped)} task(s) with fewer than k + 2 = {k + 2} evaluated models: "
                     f"{', '.join(skipped)}")
    check = {"weighted_tau": None, "top1_regret": None, "seconds": 0.0, "skipped": skipped}
    if len(kept) < 2:
        notes.append("fewer than two target tasks: leave-one-task-out leaves no history")
    else:
        done = itertools.count(1)
        held = kept
        if len(kept) > job.eval_max_tasks:
            held = tuple(kept[i] for i in np.linspace(0, len(kept) - 1, job.eval_max_tasks).round().astype(int))
            notes.append(f"held out {len(held)} of the {len(kept)} targets in turn (evenly spaced; "
                         f"--eval_max_tasks), each against all the others")
        report = protocol.evaluate(
            dataclasses.replace(bench, targets=kept), {method.name: method},
            protocol.TasksOut(probes=(k,), seeds=job.eval_seeds, held_out=held),
            progress=lambda msg: log(f"{bench.name}: self-check {next(done)}/{len(held)} tasks"))
        entry = report["results"][method.name][str(k)]
        check.update(weighted_tau=entry["mean"]["weighted_tau"], top1_regret=entry["mean"]["top1_regret"],
                     seconds=report["seconds"][method.name])
    return {**check, "note": "; ".join(notes)}


def _shard_paths(benchmarks: Sequence[Benchmark], out: str) -> list[str]:
    """Every benchmark's shard files, in output order."""
    paths = []
    for bench in benchmarks:
        part_dir = os.path.join(out, "parts", bench.name)
        paths += [os.path.join(part_dir, n) for n in sorted(os.listdir(part_dir)) if n.startswith("shard-")]
    return paths


def _read_shard(path: str) -> pa.Table:
    """One CSV shard as an Arrow table of ``_SCHEMA``."""
    convert = pa_csv.ConvertOptions(column_types=_SCHEMA, true_values=["true"], false_values=["false"])
    return pa_csv.read_csv(path, convert_options=convert)


def run_rank_job(benchmarks: Sequence[Benchmark], method: RankingMethod, job: RankJob, out: str,
                 log: Callable[[str], None] = lambda msg: None, formats: Sequence[str] = ("csv",)) -> dict:
    """Runs (or resumes) the job: ranks, writes ``rankings.csv`` and/or ``rankings.parquet``
    (``formats``, a subset of :data:`~fennec_jax.ranking.outputs.FORMATS`), runs the check, writes ``summary.json``;
    returns the summary."""
    outputs.check_formats(formats)
    benchmarks = [oriented(bench, job.lower_is_better) for bench in benchmarks]
    summary = {"method": job.method, "job": job.key(),
               "benchmarks": {bench.name: _rank_benchmark(bench, method, job, out, log) for bench in benchmarks}}
    shards = _shard_paths(benchmarks, out)
    if "csv" in formats:
        summary["rows"] = outputs.concat_csv(os.path.join(out, "rankings.csv"), HEADER, shards)
    if "parquet" in formats:
        summary["rows"] = outputs.write_parquet(os.path.join(out, "rankings.parquet"), _SCHEMA,
                                                map(_read_shard, shards))
    for bench in benchmarks:
        loto_path = os.path.join(out, "parts", bench.name, "loto.json")
        if not os.path.exists(loto_path):
            atomic_io.write_json(loto_path, _self_check(bench, method, job, log))
        with open(loto_path) as f:
            summary["benchmarks"][bench.name]["loto"] = {"k": job.eval_probes, "seeds": job.eval_seeds,
                                                         **json.load(f)}
    atomic_io.write_json(os.path.join(out, "summary.json"), summary)
    return summary
