"""Encoding names and metadata as numbers: metadata columns to features, names to one-hots.

:class:`FeatureEncoder` turns model or task metadata columns (numeric or text) into a
feature matrix ``x[n, P]``; :func:`normalise_names` is how dataset and category names are
compared (case-insensitively); :func:`one_hot` encodes indices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["FeatureEncoder", "normalise_names", "one_hot"]


@dataclasses.dataclass(frozen=True)
class FeatureEncoder:
    """Metadata columns -> a numeric feature matrix ``x[n, P]``.

    Numeric columns are standardised (log first when positive and spanning more than two
    orders of magnitude); a missing value gives 0 plus a 1 in the column's missing indicator
    (present when the fitted data had gaps). Text columns are one-hot over the values (compared
    case-insensitively) that occur at least twice; an unseen value gives all zeros. Constant
    columns are dropped.

    Attributes:
      columns: per column ``(name, kind, spec)``: kind 'numeric' with spec
        ``(log, mean, std, has_missing)``, or 'text' with spec ``(value, ...)``.
    """

    columns: tuple[tuple[str, str, tuple], ...] = ()

    @classmethod
    def fit(cls, meta: Mapping[str, np.ndarray]) -> "FeatureEncoder":
        columns = []
        for name in sorted(meta):
            col = np.asarray(meta[name])
            if np.issubdtype(col.dtype, np.number):
                values = col.astype(np.float64)
                finite = values[np.isfinite(values)]
                if finite.size < 2:
                    continue
                log = bool(finite.min() > 0 and finite.max() > 100 * finite.min())
                finite = np.log(finite) if log else finite
                std = float(finite.std())
                if std <= 1e-12:
                    continue
                columns.append((name, "numeric", (log, float(finite.mean()), std, bool(finite.size < values.size))))
            else:
                values = normalise_names(col)
                names, counts = np.unique(values[values != ""], return_counts=True)
                kept = tuple(str(v) for v, c in zip(names, counts) if c >= 2)
                if len(kept) >= 2 or (len(kept) == 1 and np.any(values != kept[0])):
                    columns.append((name, "text", kept))
        return cls(tuple(columns))

    @property
    def width(self) -> int:
        return sum(_column_width(kind, spec) for _, kind, spec in self.columns)

    def transform(self, meta: Mapping[str, Any], n: int) -> np.ndarray:
        """``x[n, P]`` float32 for ``n`` rows of ``meta`` (column -> length-n values)."""
        blocks = [np.zeros((n, 0), np.float32)]
        for name, kind, spec in self.columns:
            col = np.asarray(meta[name]) if name in meta else None
            if col is not None and col.shape != (n,):
                raise ValueError(f"metadata column {name!r} has shape {col.shape}, expected ({n},)")
            if kind == "numeric":
                log, mean, std, has_missing = spec
                values = np.full(n, np.nan) if col is None else _as_float(col, name)
                finite = np.isfinite(values) & (values > 0 if log else True)
                safe = np.where(finite, values, 1.0)
                x = np.where(finite, ((np.log(safe) if log else safe) - mean) / std, 0.0)
                block = [x, (~finite).astype(np.float64)] if has_missing else [x]
                blocks.append(np.stack(block, 1).astype(np.float32))
            else:
                values = normalise_names(col) if col is not None else np.full(n, "", dtype=object)
                blocks.append((values[:, None] == np.array(spec, dtype=object)[None, :]).astype(np.float32))
        return np.concatenate(blocks, 1)

    def transform_one(self, metadata: Mapping[str, Any] | None) -> np.ndarray:
        """``x[P]`` for one new task's metadata (name -> value); absent keys count as missing."""
        metadata = metadata or {}
        row = {name: np.array([metadata[name]], dtype=object if kind == "text" else np.float64)
               for name, kind, _ in self.columns if name in metadata}
        return self.transform(row, 1)[0]

    def to_json(self) -> list:
        return [[name, kind, list(spec)] for name, kind, spec in self.columns]

    @classmethod
    def from_json(cls, columns: list) -> "FeatureEncoder":
        return cls(tuple((str(name), str(kind), tuple(spec)) for name, kind, spec in columns))


def _column_width(kind: str, spec: tuple) -> int:
    return (2 if spec[3] else 1) if kind == "numeric" else len(spec)


def _as_float(col: np.ndarray, name: str) -> np.ndarray:
    try:
        return col.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"metadata {name!r} must be numeric, got {col[:3]!r}") from None


def normalise_names(values) -> np.ndarray:
    """Lower-cased, stripped strings (dataset and category names match case-insensitively)."""
    return np.array([str(v).strip().lower() if v is not None else "" for v in np.asarray(values, dtype=object)],
                    dtype=object)


def one_hot(index: Sequence[int], n: int) -> np.ndarray:
    index = np.asarray(index, dtype=int)
    out = np.zeros((len(index), n), np.float32)
    rows = np.flatnonzero(index >= 0)
    out[rows, index[rows]] = 1.0
    return out
