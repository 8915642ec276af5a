"""Ranking outputs assembled from shards, streamed: memory is bounded by one shard.

A job writes its rankings shard by shard (one shard of tasks at a time, each in its own file,
so that a killed job resumes); the final files are assembled from the shards here:

- `concat_csv`: the CSV shards' bytes after their header line, copied behind one header.
- `write_parquet`: one Parquet row group per shard (``pyarrow.parquet.ParquetWriter``).
- `write_csv`: Arrow tables (one per shard) as one CSV with a header line.

Each file is atomic (:func:`fennec_jax.core.atomic_io.replacing`): written to a temporary file
beside the target (created with the umask's mode), synced, then renamed over the target.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from fennec_jax.core import atomic_io

__all__ = ["FORMATS", "check_formats", "concat_csv", "write_parquet", "write_csv"]

FORMATS = ("csv", "parquet")  # the rankings files a job can write: rankings.csv, rankings.parquet


def check_formats(formats: Sequence[str], error: type[ValueError] = ValueError) -> None:
    """Raises ``error`` unless ``formats`` is one or more of :data:`FORMATS`."""
    if not formats or any(f not in FORMATS for f in formats):
        raise error(f"formats: expected one or more of {FORMATS}, got {tuple(formats)}")


def concat_csv(path: str, header: Sequence[str], shard_paths: Iterable[str]) -> int:
    """Writes ``header`` then every shard's lines after its first (its header), byte for
    byte, to ``path``; returns the number of lines after the header (rows, unless a field
    holds a line break)."""
    lines = 0
    with atomic_io.replacing(path) as tmp, open(tmp, "wb") as out:
        out.write((",".join(header) + "\n").encode("utf-8"))
        for shard in shard_paths:
            with open(shard, "rb") as f:
                f.readline()
                for block in iter(lambda: f.read(1 << 20), b""):  # pylint: disable=cell-var-from-loop
                    out.write(block)
                    lines += block.count(b"\n")
    return lines


def write_parquet(path: str, schema: pa.Schema, tables: Iterable[pa.Table]) -> int:
    """Writes ``tables`` (each cast to ``schema``) to ``path``, one row group each;
    returns the number of rows."""
    rows = 0
    with atomic_io.replacing(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for table in tables:
            writer.write_table(table.cast(schema), row_group_size=max(1, table.num_rows))
            rows += table.num_rows
    return rows


def write_csv(path: str, schema: pa.Schema, tables: Iterable[pa.Table]) -> int:
    """Writes ``tables`` (each cast to ``schema``) to ``path`` as one CSV with a header
    line; returns the number of rows."""
    rows = 0
    with atomic_io.replacing(path) as tmp, pa_csv.CSVWriter(tmp, schema) as writer:
        for table in tables:
            writer.write_table(table.cast(schema))
            rows += table.num_rows
    return rows
