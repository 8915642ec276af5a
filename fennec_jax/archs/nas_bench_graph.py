"""NAS-Bench-Graph: test accuracy of 26,206 GNN architectures on node-classification datasets.

Reads the lookup tables shipped in the ``nas-bench-graph`` PyPI package (Qin et al.,
NeurIPS 2022 Datasets & Benchmarks, Apache-2.0), ``nas_bench_graph/light/<dataset>.bench``:
pickled ``{arch_hash: {"perf", "valid_perf", "latency", "para"}}`` dicts. They are
read through `safe_pickle`, never with plain `pickle`.

An architecture is a DAG: one input node, four op nodes and one output node. Op
node ``i`` (0-based) reads from node ``links[i]`` (0 = the input, ``j`` = op
``j - 1``, so ``links[i] <= i``); every op node that no other op reads from feeds
the output. The package keeps one canonical representative per isomorphism class,
whose links are one of `LINK_PATTERNS`, and encodes it as the base-10 integer whose
digits are ``pattern index, op 0, op 1, op 2, op 3`` (op ids index `OP_NAMES`).

Value ranges in package version 1.4.0 (checked by the tests): all eight main
datasets share the same 26,206 architectures with no missing entry; ``perf`` and
``valid_perf`` are fractions in [0, 1] (accuracy; ROC-AUC for proteins);
``latency`` is in seconds and ``para`` (`NasBenchGraphTable.params`) in millions of
parameters. ``proteins`` covers only 2,021 architectures built from five ops
(gcn, sage, arma, fc, skip) and is loaded on its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import pathlib
import tempfile
import zipfile
from collections.abc import Sequence

import numpy as np

from fennec_jax.core import safe_pickle

OP_NAMES = ("gat", "gcn", "gin", "cheb", "sage", "arma", "graph", "fc", "skip")
NUM_OP_NODES = 4
# LINK_PATTERNS[p, i]: the node op i reads from, for canonical link pattern p.
LINK_PATTERNS = np.array(
    [
        [0, 0, 0, 0],
        [0, 0, 0, 1],
        [0, 0, 1, 1],
        [0, 0, 1, 2],
        [0, 0, 1, 3],
        [0, 1, 1, 1],
        [0, 1, 1, 2],
        [0, 1, 2, 2],
        [0, 1, 2, 3],
    ]
)
LINK_PATTERNS.setflags(write=False)
# The package hashes with base len(OP_NAMES) + 1, so the digit 9 never occurs.
_HASH_BASE = len(OP_NAMES) + 1

DATASETS = ("cora", "citeseer", "pubmed", "cs", "physics", "photo", "computers", "arxiv")
PROTEINS = "proteins"
METRICS = ("perf", "valid_perf")
_FIELDS = ("perf", "valid_perf", "latency", "para")
# Bump when the cached arrays change meaning; part of every cache file's name.
_CACHE_FORMAT = 1
_PACKAGE = "nas-bench-graph"

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class NasBenchGraphTable:
    """M architectures x T datasets, rows sorted by hash; arrays are read-only.

    Attributes:
      arch_hashes: [M] canonical NAS-Bench-Graph hashes (ints).
      datasets: [T] dataset names.
      scores: [M, T] float64 requested metric, NaN where a dataset lacks the row.
      links: [M, 4] int, node each op node reads from (see module docstring).
      ops: [M, 4] int, op ids indexing `OP_NAMES`.
      latency: [M, T] float64 seconds, NaN where missing.
      params: [M, T] float64 millions of parameters, NaN where missing.
    """

    arch_hashes: tuple[int, ...]
    datasets: tuple[str, ...]
    scores: np.ndarray
    links: np.ndarray
    ops: np.ndarray
    latency: np.ndarray
    params: np.ndarray


def decode_arch_hashes(arch_hashes: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Splits canonical hashes[M] into links[M, 4] and ops[M, 4] (op ids into `OP_NAMES`)."""
    hashes = np.asarray(arch_hashes)
    if hashes.ndim != 1 or not np.issubdtype(hashes.dtype, np.integer):
        raise ValueError(f"arch_hashes: expected a 1-D sequence of ints, got {hashes!r}")
    powers = _HASH_BASE ** np.arange(NUM_OP_NODES - 1, -1, -1)
    ops = (hashes[:, None] // powers) % _HASH_BASE
    patterns = hashes // _HASH_BASE**NUM_OP_NODES
    bad = (hashes < 0) | (patterns >= len(LINK_PATTERNS)) | (ops >= len(OP_NAMES)).any(axis=1)
    if bad.any():
        raise ValueError(
            f"arch_hashes: {hashes[bad][:5].tolist()} are not NAS-Bench-Graph hashes "
            f"(expected digits <pattern 0-{len(LINK_PATTERNS) - 1}><4 ops 0-{len(OP_NAMES) - 1}>)"
        )
    return LINK_PATTERNS[patterns], ops


def arch_dag(links_row: Sequence[int], ops_row: Sequence[int]) -> tuple[list[str], list[tuple[int, int]]]:
    """Dataflow DAG of one architecture.

    Nodes: 0 = ``"input"``, 1..4 = the op names of ops_row, 5 = ``"output"``.

    Args:
      links_row: [4] node each op reads from (``links_row[i] <= i``).
      ops_row: [4] op ids into `OP_NAMES`.

    Returns:
      (node_ops [6], edges): directed ``(source, target)`` node pairs, first the
      input edge of each op node in order, then each leaf op node -> output.
    """
    links = [int(x) for x in links_row]
    ops = [int(x) for x in ops_row]
    if len(links) != NUM_OP_NODES or any(not 0 <= link <= i for i, link in enumerate(links)):
        raise ValueError(f"links_row: expected {NUM_OP_NODES} ints with links_row[i] in [0, i], got {links}")
    if len(ops) != NUM_OP_NODES or any(not 0 <= op < len(OP_NAMES) for op in ops):
        raise ValueError(f"ops_row: expected {NUM_OP_NODES} op ids in [0, {len(OP_NAMES)}), got {ops}")
    output = NUM_OP_NODES + 1
    edges = [(link, i + 1) for i, link in enumerate(links)]
    edges += [(node, output) for node in range(1, output) if node not in links]
    return ["input", *(OP_NAMES[op] for op in ops), "output"], edges


def default_cache_dir() -> pathlib.Path:
    """``$XDG_CACHE_HOME/fennec_jax``, else ``~/.cache/fennec_jax``."""
    root = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(root) / "fennec_jax"


def load_table(
    datasets: Sequence[str] | None = None,
    metric: str = "perf",
    *,
    bench_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> NasBenchGraphTable:
    """Loads the NAS-Bench-Graph table, parsing each ``.bench`` file at most once per cache.

    Args:
      datasets: names from `DATASETS` (default: all eight), or ``["proteins"]``
        alone (it covers only 2,021 of the architectures).
      metric: ``"perf"`` (test) or ``"valid_perf"`` (validation) accuracy.
      bench_dir: folder of ``<dataset>.bench`` files; default the installed
        package's ``light/`` folder.
      cache_dir: where parsed files are cached as ``.npz``; default
        `default_cache_dir()`. A corrupt cache file is logged and rebuilt; an
        unwritable cache is logged and skipped.

    Raises:
      ValueError: bad arguments, or a ``.bench`` file that is not the expected
        dict of finite values (`safe_pickle.UnsafePickleError` if it references
        globals other than numpy's).
      FileNotFoundError: a requested ``.bench`` file is missing.
    """
    names = DATASETS if datasets is None else tuple(datasets)
    if isinstance(datasets, str) or not names or len(set(names)) != len(names):
        raise ValueError(f"datasets: expected a non-empty list of distinct names, got {datasets!r}")
    unknown = [name for name in names if name not in DATASETS + (PROTEINS,)]
    if unknown:
        raise ValueError(f"datasets: unknown {unknown}; expected names from {DATASETS + (PROTEINS,)}")
    if PROTEINS in names and len(names) > 1:
        raise ValueError(f"datasets: load {PROTEINS!r} on its own (it covers few architectures), got {names}")
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
    bench_dir = pathlib.Path(bench_dir) if bench_dir is not None else _package_bench_dir()
    cache_dir = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()

    columns = [_dataset_columns(bench_dir / f"{name}.bench", cache_dir) for name in names]
    arch_hashes = np.unique(np.concatenate([col["arch_hashes"] for col in columns]))
    fields = {}
    for field in (metric, "latency", "para"):
        table = np.full((len(arch_hashes), len(names)), np.nan)
        for t, col in enumerate(columns):
            table[np.searchsorted(arch_hashes, col["arch_hashes"]), t] = col[field]
        fields[field] = table
    links, ops = decode_arch_hashes(arch_hashes)
    for array in (links, ops, *fields.values()):
        array.setflags(write=False)
    return NasBenchGraphTable(
        arch_hashes=tuple(arch_hashes.tolist()),
        datasets=names,
        scores=fields[metric],
        links=links,
        ops=ops,
        latency=fields["latency"],
        params=fields["para"],
    )


def _package_bench_dir() -> pathlib.Path:
    spec = importlib.util.find_spec("nas_bench_graph")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"NAS-Bench-Graph needs the {_PACKAGE!r} package: pip install {_PACKAGE}==1.4.0")
    return pathlib.Path(spec.submodule_search_locations[0]) / "light"


def _cache_path(bench_path: pathlib.Path, cache_dir: pathlib.Path) -> pathlib.Path:
    """Cache file named by the package version and the source file's identity."""
    stat = bench_path.stat()
    source = f"{bench_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    version = importlib.metadata.version(_PACKAGE)
    return cache_dir / f"nas_bench_graph-{version}-v{_CACHE_FORMAT}" / f"{bench_path.stem}-{digest}.npz"


def _dataset_columns(bench_path: pathlib.Path, cache_dir: pathlib.Path) -> dict[str, np.ndarray]:
    """{"arch_hashes": int64[N], field: float64[N] for each of _FIELDS} of one .bench file."""
    if not bench_path.is_file():
        raise FileNotFoundError(f"{bench_path}: NAS-Bench-Graph file not found")
    cache_path = _cache_path(bench_path, cache_dir)
    if cache_path.exists():
        try:
            return _read_cache(cache_path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            _log.warning("%s: corrupt cache file (%s), rebuilding it", cache_path, exc)
    columns = _parse_bench(bench_path)
    try:
        _write_atomically(cache_path, columns)
    except OSError as exc:
        _log.warning("%s: cannot write cache file (%s)", cache_path, exc)
    return columns


def _parse_bench(bench_path: pathlib.Path) -> dict[str, np.ndarray]:
    bench = safe_pickle.load(bench_path, safe_pickle.NUMPY_GLOBALS)
    if not isinstance(bench, dict) or not bench:
        raise ValueError(f"{bench_path}: expected a non-empty dict of architectures, got {type(bench).__name__}")
    for arch_hash, row in bench.items():
        if type(arch_hash) is not int or not isinstance(row, dict) or not set(_FIELDS) <= row.keys():
            raise ValueError(f"{bench_path}: row {arch_hash!r}: expected an int hash -> dict with keys {_FIELDS}")
    columns = {"arch_hashes": np.fromiter(bench, np.int64, count=len(bench))}
    for field in _FIELDS:
        values = np.fromiter((row[field] for row in bench.values()), np.float64, count=len(bench))
        if not np.isfinite(values).all():
            bad = columns["arch_hashes"][~np.isfinite(values)][:5].tolist()
            raise ValueError(f"{bench_path}: non-finite {field!r} for architectures {bad}")
        columns[field] = values
    return columns


def _read_cache(cache_path: pathlib.Path) -> dict[str, np.ndarray]:
    with np.load(cache_path, allow_pickle=False) as npz:
        columns = {key: npz[key] for key in ("arch_hashes", *_FIELDS)}
    n = len(columns["arch_hashes"])
    if n == 0 or any(array.shape != (n,) for array in columns.values()):
        raise ValueError(f"inconsistent shapes {[a.shape for a in columns.values()]}")
    if columns["arch_hashes"].dtype != np.int64 or any(columns[f].dtype != np.float64 for f in _FIELDS):
        raise ValueError("unexpected dtypes")
    return columns


def _write_atomically(path: pathlib.Path, columns: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as stream:
            np.savez(stream, **columns)
        os.replace(tmp_name, path)
    except BaseException:
        os.unlink(tmp_name)
        raise
