"""What the programs in experiments/ share: a main that turns bad input into one clear line,
a user's records as a benchmark, and methods and benchmarks looked up by the names in flags.

Programs run as a package (``python -m experiments.NAME``; ``./run.sh NAME`` does it); the
library never reads flags.
"""

import os
import sys

from absl import app, flags, logging

from fennec_jax.benchmarks.bundled import as_benchmark
from fennec_jax.core.checkpoint import CheckpointError
from fennec_jax.core.evidence import MissingEvidenceError
from fennec_jax.core.model_names import attach_name_metadata
from fennec_jax.core.records import Benchmark, RecordsError, load_records
from fennec_jax.core.registry import parse_config
from fennec_jax.methods.base import method_from_spec
from fennec_jax.zoo.task_data import TaskDataError
from fennec_jax.zoo.zoo import ZooError


class InputError(Exception):
    """Bad input from the user: the program ends with ``error: <message>`` and exit status 1."""


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, where a bad flag is one line ``error: ...`` with exit status 1
    and ``--help`` / ``--helpfull`` exit 0 after the usage (absl exits 1)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        sys.exit(f"error: {err}")
    except SystemExit as stop:  # only the help flags exit while flags are parsed
        if stop.code == 1:
            sys.exit(0)
        raise


def run(main):
    """``absl.app.run`` of ``main`` where bad input (a bad flag, InputError, RecordsError,
    CheckpointError, MissingEvidenceError: a method asked for evidence the data does not
    carry; ZooError, TaskDataError: a zoo or a new task's data that cannot be used) ends
    with one line and exit status 1, ``--help`` exits 0, and Ctrl-C ends with one line and
    status 130."""

    def wrapped(argv):
        if len(argv) > 1:
            sys.exit(f"error: unexpected arguments: {' '.join(argv[1:])}")
        if not flags.FLAGS["verbosity"].present:  # orbax logs every checkpoint step at INFO
            logging.set_verbosity(logging.WARNING)
        try:
            main()
        except (InputError, RecordsError, CheckpointError, MissingEvidenceError, ZooError, TaskDataError) as err:
            sys.exit(f"error: {err}")
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    app.run(wrapped, flags_parser=_parse_flags)


def records_benchmark(path: str, model_meta: str | None, task_meta: str | None) -> Benchmark:
    """The user's records as a benchmark named after the file; dropped rows are printed.
    Without a model metadata file, what the model names reliably carry (Hugging Face / timm
    ids: family, size, patch, resolution, pre-training data) is the model metadata
    (:func:`fennec_jax.core.model_names.attach_name_metadata`)."""
    records = load_records(path, model_meta=model_meta, task_meta=task_meta)
    if model_meta is None:
        records = attach_name_metadata(records)
    if records.dropped:
        print(f"dropped on purpose: {dict(records.dropped)}")
    return as_benchmark(records, name=os.path.splitext(os.path.basename(path))[0])


def by_name(lookup, name: str, flag: str):
    """``lookup(name)`` (e.g. ``load_benchmark``); an unknown name is an InputError naming
    the flag and the choices."""
    try:
        return lookup(name)
    except ValueError as err:
        raise InputError(f"--{flag}: {err}") from None


def methods_from_flags(specs, config_text: str | None, flag: str = "methods") -> dict:
    """``{label: method}`` for method specs ``NAME`` or ``NAME:key=value+key=value`` (e.g.
    ``fennec:preset=nmf``) with ``--method_config`` added to each; bad names or configs are
    an InputError naming the flag."""
    try:
        config = parse_config(config_text)
        methods = [method_from_spec(spec, config) for spec in specs]
    except (ValueError, TypeError) as err:
        raise InputError(f"--{flag}: {err}") from None
    return {method.name: method for method in methods}
