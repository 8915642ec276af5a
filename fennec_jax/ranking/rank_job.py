"""The ``rank_all`` job: fit once per benchmark, rank every target task, resumable.

Layout under ``out``::

    rankings.csv                     benchmark,task,rank,model,score (all benchmarks)
    summary.json                     per benchmark: models, tasks, leave-one-task-out check
    checkpoints/<benchmark>/         the fitted method state (orbax, written by method.save)
    parts/<benchmark>/job.json       the arguments that made this folder's parts
    parts/<benchmark>/shard-NNNNN.csv  rows of one shard of target tasks
    parts/<benchmark>/loto.json      the leave-one-task-out check

Every file is written atomically (temp file + rename; orbax does the same for checkpoints).
A run restarted with the same arguments reuses the checkpoint (its checksum is verified) and
every finished shard, and produces the same output; a part folder made with other arguments
is cleared first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence

import fennec_jax
from fennec_jax.core import atomic_io
from fennec_jax.core.records import Benchmark
from fennec_jax.eval import protocol
from fennec_jax.methods.base import RankingMethod
from fennec_jax.ranking.rank import rank_tasks, task_shards

__all__ = ["RankJob", "run_rank_job", "HEADER"]

HEADER = ("benchmark", "task", "rank", "model", "score")


@dataclasses.dataclass(frozen=True)
class RankJob:
    """Arguments of one rank_all run (they key the resume state)."""

    method: str
    top_k: int | None = None
    shard_size: int = 256
    eval_probes: int = 3
    eval_seeds: int = 5
    source: str = "bundled"  # 'bundled', or a digest of the user's records file

    def key(self) -> dict:
        return {**dataclasses.asdict(self), "package_version": fennec_jax.__version__}


def file_digest(path: str) -> str:
    """SHA-256 of a file's bytes (identifies a user's records across restarts)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
        rows = [(bench.name, *row) for row in rank_tasks(bench, method, state, tasks, job.top_k)]
        atomic_io.write_csv(shard_path, HEADER, rows)
        log(f"{bench.name}: shard {i + 1}/{len(shards)} ranked ({len(tasks)} tasks)")
    loto_path = os.path.join(part_dir, "loto.json")
    if not os.path.exists(loto_path):
        if bench.records.num_tasks < 2:
            # Hiding the only task leaves no history to learn from: the check does not apply.
            loto = {"weighted_tau": None, "top1_regret": None, "seconds": 0.0,
                    "note": "single task: leave-one-task-out leaves no history"}
        else:
            report = protocol.evaluate(bench, {method.name: method},
                                       protocol.TasksOut(probes=(job.eval_probes,), seeds=job.eval_seeds))
            entry = report["results"][method.name][str(job.eval_probes)]
            loto = {"weighted_tau": entry["mean"]["weighted_tau"], "top1_regret": entry["mean"]["top1_regret"],
                    "seconds": report["seconds"][method.name]}
        atomic_io.write_json(loto_path, loto)
    with open(loto_path) as f:
        loto = json.load(f)
    return {
        "models": bench.records.num_models,
        "tasks": len(bench.targets),
        "shards": len(shards),
        "checkpoint": ckpt_dir if os.path.exists(ckpt_dir) else None,
        "loto": {"k": job.eval_probes, "seeds": job.eval_seeds, **loto},
        "dropped": dict(bench.records.dropped),
    }


def run_rank_job(benchmarks: Sequence[Benchmark], method: RankingMethod, job: RankJob, out: str,
                 log: Callable[[str], None] = lambda msg: None) -> dict:
    """Runs (or resumes) the job; writes ``rankings.csv`` and ``summary.json``; returns the summary."""
    summary = {"method": job.method, "job": job.key(), "benchmarks": {}}
    for bench in benchmarks:
        summary["benchmarks"][bench.name] = _rank_benchmark(bench, method, job, out, log)
    lines = [",".join(HEADER) + "\n"]
    for bench in benchmarks:
        part_dir = os.path.join(out, "parts", bench.name)
        for name in sorted(n for n in os.listdir(part_dir) if n.startswith("shard-")):
            with open(os.path.join(part_dir, name)) as f:
                lines.extend(f.readlines()[1:])
    atomic_io.write_text(os.path.join(out, "rankings.csv"), "".join(lines))
    summary["rows"] = len(lines) - 1
    atomic_io.write_json(os.path.join(out, "summary.json"), summary)
    return summary
