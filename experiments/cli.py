"""What the programs in experiments/ share: turning a user's records file into a benchmark, and
looking up methods and benchmarks by the names given in flags."""

import os
import sys

from fennec_jax.benchmarks import as_benchmark
from fennec_jax.data import Benchmark, RecordsError, load_records


def records_benchmark(path: str, model_meta: str | None, task_meta: str | None) -> Benchmark:
    """The user's records as a benchmark named after the file; bad input ends the program
    with one clear line (file, line, problem) and exit status 1; dropped rows are printed."""
    try:
        records = load_records(path, model_meta=model_meta, task_meta=task_meta)
    except RecordsError as err:
        sys.exit(f"error: {err}")
    if records.dropped:
        print(f"dropped on purpose: {dict(records.dropped)}")
    return as_benchmark(records, name=os.path.splitext(os.path.basename(path))[0])


def by_name(lookup, name: str, flag: str):
    """``lookup(name)`` (e.g. ``get_method``, ``load_benchmark``); an unknown name ends the
    program with one clear line naming the flag and the choices, and exit status 1."""
    try:
        return lookup(name)
    except ValueError as err:
        sys.exit(f"error: --{flag}: {err}")
