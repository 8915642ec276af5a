"""Kill-and-resume check: programs killed with SIGKILL at random moments, then rerun.

  ./run.sh kill_resume [--programs=rank_all,fit_zoo_rank,build_benchmark] [--kills=20] [--out=runs/kill_resume]

For each program (small arguments, so that a run takes seconds): one uninterrupted run gives
the reference folder. Then, until ``--kills`` runs were killed mid-run, from an empty folder:
the program is started, killed with SIGKILL at a moment drawn uniformly over the reference
run's duration (a run that finishes first is checked too, and does not count), the folder is
inspected, and the program is rerun with the same arguments to completion (every run writes
to the same folder; the reference is moved aside). Checked:

* at the kill, every file visible under a name the finished run also writes has the finished
  run's content (nothing half-written under a final name), and every other visible file is a
  temporary (a hidden name, or orbax's ``NAME.orbax-checkpoint-tmp``);
* after the rerun, the folder holds the same files as the reference, byte for byte.

Run-to-run differences that are not the output: measured times. JSON files and ``.npz`` files
(the builder's stages record how long a stage took) are compared after dropping keys that hold
timings (any key containing ``seconds``); ``report.md`` / ``report.html`` beside a
``report.json`` are renderings of it, with its timings in them (a seconds column, "built in N
s"), so they are compared through that ``report.json``. An orbax checkpoint folder (one holding
``_CHECKPOINT_METADATA``) is compared by what it restores to (every array bit for bit, and its
metadata), not by its files: orbax names its data files at random and stamps the time it
wrote them, so two writes of the same arrays never match byte for byte; for the same reason a
zoo's digest of its ``method/`` checkpoint files (``method_digest``) is left out. Nothing else
is exempt. Writes OUT/report.json and OUT/report.md.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
from absl import flags

from experiments import cli

_PROGRAMS = flags.DEFINE_list("programs", ["rank_all", "fit_zoo_rank", "build_benchmark"], "Programs to check.")
_KILLS = flags.DEFINE_integer("kills", 20, "Kills per program (runs that finish before their kill moment are "
                             "checked too and do not count).", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the kill moments.")
_OUT = flags.DEFINE_string("out", "runs/kill_resume", "Output folder.")

_PY = [sys.executable, "-m"]
_BUILD = ["--families=resnet18", "--num_sources=2", "--num_targets=3", "--source_examples=40", "--num_train=20",
          "--num_test=20", "--pretrain_steps=4", "--finetune_steps=2", "--probe_steps=4", "--seeds=1",
          "--targets_per_group=1", "--proxy_examples=4", "--real_scale=false", "--estimators=logme",
          "--probes=1", "--probe_seeds=1"]


def _commands(program: str, out: str) -> list[list[str]]:
    """The program's command lines (run in sequence) writing into ``out``."""
    if program == "rank_all":
        return [_PY + ["experiments.rank_all", "--benchmarks=parc_controlled", "--method=knn_task", "--eval_seeds=1",
                       "--eval_max_tasks=3", f"--out={out}"]]
    if program == "fit_zoo_rank":
        from fennec_jax.zoo import default

        records = os.path.join(os.path.dirname(default.__file__), "..", "bundled", "builder", "records.csv")
        # A zoo without task data (fast to fit) ranks a new task from probes.
        probes = "resnet18@src_digits_all=0.9,mobilenet_v2@src_faces=0.6,googlenet@src_patches_all=0.7"
        return [_PY + ["experiments.fit_zoo", f"--records={os.path.abspath(records)}", f"--out={out}/zoo",
                       "--overwrite"],
                _PY + ["experiments.rank", f"--zoo={out}/zoo", f"--probes={probes}", "--task_meta=task=new",
                       f"--out={out}/rank"]]
    if program == "build_benchmark":
        return [_PY + ["experiments.build_benchmark", *_BUILD, f"--out={out}"]]
    raise cli.InputError(f"--programs: unknown program {program!r}; expected rank_all, fit_zoo_rank, build_benchmark")


def _run(commands, kill_after=None) -> tuple[bool, float]:
    """Runs the commands in sequence; with ``kill_after`` seconds, SIGKILLs whichever runs then.
    Returns (completed, seconds)."""
    start = time.perf_counter()
    for command in commands:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            left = None if kill_after is None else kill_after - (time.perf_counter() - start)
            _, err = proc.communicate(timeout=None if left is None else max(left, 0.0))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return False, time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}: {err.decode()[-2000:]}")
    return True, time.perf_counter() - start


def _ignored(rel: str) -> bool:
    return rel.split(os.sep)[0] == "jax_cache"  # the compilation cache build_benchmark keeps in its folder


def _files(root: str) -> dict[str, str]:
    """``{relative path: path}`` of the outputs under ``root``: files, and checkpoint folders
    as one entry each."""
    out = {}
    for folder, dirs, names in os.walk(root):
        rel = os.path.relpath(folder, root)
        if "_CHECKPOINT_METADATA" in names and not _ignored(rel):
            out[rel] = folder
            dirs.clear()
            continue
        for name in names:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if not _ignored(rel):
                out[rel] = path
    return out


def _restored(path: str):
    from fennec_jax.core import checkpoint

    meta, arrays = checkpoint.restore_arrays(path, checkpoint.stored_format(path), "compared")
    return _strip(meta), {name: (a.dtype.str, a.shape, a.tobytes()) for name, a in arrays.items()}


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if "seconds" not in k and k not in ("method_digest", "checksum")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    if isinstance(value, float) and value != value:
        return "NaN"  # NaN != NaN: compared as a token
    return value


def _same(a: str, b: str) -> bool:
    if os.path.isdir(a) or os.path.isdir(b):
        try:
            return os.path.isdir(a) and os.path.isdir(b) and _restored(a) == _restored(b)
        except ValueError:  # CheckpointError: unreadable, so not the same
            return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        da, db = fa.read(), fb.read()
    if da == db:
        return True
    if a.endswith(".json"):
        try:
            return _strip(json.loads(da)) == _strip(json.loads(db))
        except ValueError:
            return False
    if os.path.basename(a) in ("report.md", "report.html") and os.path.exists(
            os.path.join(os.path.dirname(a), "report.json")):
        return _same(os.path.join(os.path.dirname(a), "report.json"), os.path.join(os.path.dirname(b), "report.json"))
    if a.endswith(".npz"):
        try:
            with np.load(a) as za, np.load(b) as zb:
                keys = [k for k in za.files if "seconds" not in k]
                return keys == [k for k in zb.files if "seconds" not in k] and all(
                    np.array_equal(za[k], zb[k]) for k in keys)
        except (ValueError, OSError):
            return False
    return False


def _hidden(rel: str) -> bool:
    """A temporary: a hidden name (ours) or orbax's ``NAME.orbax-checkpoint-tmp...``."""
    return any(part.startswith(".") or ".orbax-checkpoint-tmp" in part for part in rel.split(os.sep))


def _check_program(program: str, root: str, rng: random.Random) -> dict:
    scratch = os.path.join(root, program)
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    out = os.path.join(scratch, "run")  # every run writes here: the same arguments each time
    commands = _commands(program, out)
    _, seconds = _run(commands)
    ref = os.path.join(scratch, "reference")
    os.rename(out, ref)
    ref_files = _files(ref)
    trials = []
    while sum(t["killed"] for t in trials) < _KILLS.value and len(trials) < 3 * _KILLS.value:
        i = len(trials)
        at = rng.uniform(0.0, 0.95 * seconds)
        completed, _ = _run(commands, kill_after=at)
        visible = _files(out) if os.path.isdir(out) else {}
        torn = sorted(rel for rel, path in visible.items() if rel in ref_files and not _same(path, ref_files[rel]))
        stray = sorted(rel for rel in visible if rel not in ref_files and not _hidden(rel))
        _run(commands)
        final = _files(out)
        differ = sorted(rel for rel in set(final) | set(ref_files)
                        if rel not in final or rel not in ref_files or not _same(final[rel], ref_files[rel]))
        trials.append({"kill_at_seconds": round(at, 2), "killed": not completed, "visible_files": len(visible),
                       "half_written": torn, "stray": stray, "differ_after_rerun": differ})
        print(f"{program} trial {i + 1}: {'killed' if not completed else 'finished before its kill'} at {at:.1f} s ({len(visible)} files visible), "
              f"half-written {len(torn)}, stray {len(stray)}, differ after rerun {len(differ)}", flush=True)
        shutil.rmtree(out)
    return {"reference_seconds": seconds, "reference_files": len(ref_files), "trials": trials,
            "killed": sum(t["killed"] for t in trials),
            "failures": sum(bool(t["half_written"] or t["stray"] or t["differ_after_rerun"]) for t in trials)}


def main():
    rng = random.Random(_SEED.value)
    root = os.path.abspath(_OUT.value)
    report = {program: _check_program(program, root, rng) for program in _PROGRAMS.value}
    lines = ["# Kill and resume", "", "| program | run (s) | files | kills | killed mid-run | failures |",
             "|---|---|---|---|---|---|"]
    for program, r in report.items():
        lines.append(f"| {program} | {r['reference_seconds']:.1f} | {r['reference_files']} | {len(r['trials'])} | "
                     f"{r['killed']} | {r['failures']} |")
    from fennec_jax.core import atomic_io

    atomic_io.write_json(os.path.join(root, "report.json"), report)
    atomic_io.write_text(os.path.join(root, "report.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    cli.run(main)
