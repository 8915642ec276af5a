"""Restricted unpickling: load pickles that may only reference allow-listed globals.

`pickle.load` on an untrusted file can run arbitrary code, because a pickle names
callables (``GLOBAL`` / ``STACK_GLOBAL`` / ``INST`` opcodes, resolved by
`pickle.Unpickler.find_class`) and then calls them (``REDUCE`` / ``BUILD`` /
``NEWOBJ``). Every callable a pickle can reach goes through ``find_class`` (the
copyreg extension opcodes included), so refusing names there, before importing
their module, blocks code execution.

The pure-Python unpickler (`pickle._Unpickler`, about 8x slower than the C one on
the NAS-Bench-Graph files) is used on purpose: the C one sizes its memo table from
the index in a ``LONG_BINPUT`` opcode, so a single corrupt byte can make it fill
gigabytes (the process gets killed), whereas the Python one keeps its memo in a dict.

Globals are compared as ``(module, name)`` exactly as written in the pickle (no
Python 2 name fixing), e.g. ``("numpy.core.multiarray", "_reconstruct")``.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
from collections.abc import Callable, Collection, Mapping
from typing import Any, BinaryIO

Global = tuple[str, str]

# What pickled numpy arrays, dtypes and scalars reference: numpy 1.x writes
# `numpy.core.*`, numpy 2.x writes `numpy._core.*`; protocol 5 rebuilds arrays with
# `_frombuffer`; protocol <= 2 stores raw bytes as `_codecs.encode(str, "latin1")`.
NUMPY_GLOBALS: frozenset[Global] = frozenset(
    {
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }
)


class UnsafePickleError(ValueError):
    """A pickle referenced a global outside the allowlist; it was neither imported nor called."""


class _RestrictedUnpickler(pickle._Unpickler):  # pylint: disable=protected-access
    """Pure-Python unpickler whose `find_class` only resolves allow-listed globals."""

    def __init__(
        self,
        stream: BinaryIO,
        source: str,
        allowed: Collection[Global],
        substitutes: Mapping[Global, Any],
        persistent_load: Callable[[Any], Any] | None,
    ):
        super().__init__(stream)
        self._source = source
        self._allowed = allowed
        self._substitutes = substitutes
        if persistent_load is not None:
            self.persistent_load = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in self._substitutes:
            return self._substitutes[key]
        if key not in self._allowed:
            raise UnsafePickleError(
                f"{self._source}: refused to load global {f'{module}.{name}'!r:.200}: it is not in "
                f"the allowlist {sorted(self._allowed)}"
            )
        obj = importlib.import_module(module)
        for attr in name.split("."):
            obj = getattr(obj, attr)
        return obj


def load_stream(
    stream: BinaryIO,
    allowed: Collection[Global],
    *,
    source: str,
    substitutes: Mapping[Global, Any] | None = None,
    persistent_load: Callable[[Any], Any] | None = None,
) -> Any:
    """Unpickles one object from `stream`, resolving only allow-listed globals.

    Args:
      stream: binary file object positioned at the start of a pickle; it is left
        just after the pickle's STOP opcode (so sequential pickles can be read).
      allowed: ``(module, name)`` globals the pickle may reference; they are
        imported as usual.
      source: name of the stream used in error messages (e.g. a file path).
      substitutes: ``(module, name) -> object`` stand-ins returned instead of
        importing the global (e.g. a numpy rebuild function in place of a torch
        one); these globals are allowed too.
      persistent_load: called with each persistent id (``PERSID`` /
        ``BINPERSID`` opcodes, as in PyTorch checkpoints); without it such ids
        are an error.

    Raises:
      UnsafePickleError: the pickle references any other global.
      ValueError: the data is not a valid pickle (truncated, corrupt, or an
        allowed callable rejected its arguments).
    """
    unpickler = _RestrictedUnpickler(
        stream, source, allowed, substitutes or {}, persistent_load
    )
    try:
        return unpickler.load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # Corrupt data can surface as nearly any exception type.
        raise ValueError(
            f"{source}: not a valid pickle ({type(exc).__name__}: {exc})"
        ) from exc


def load(
    path: str | os.PathLike,
    allowed: Collection[Global],
    *,
    substitutes: Mapping[Global, Any] | None = None,
    persistent_load: Callable[[Any], Any] | None = None,
) -> Any:
    """Unpickles the single object stored in the file at `path` (see `load_stream`).

    Raises:
      UnsafePickleError: the pickle references a global outside `allowed`.
      ValueError: the file is not exactly one valid pickle (truncated, corrupt,
        or with trailing bytes after it).
    """
    source = os.fspath(path)
    with open(path, "rb") as file:
        # From memory, a corrupt length field cannot make a read allocate more than the file.
        stream = io.BytesIO(file.read())
    obj = load_stream(
        stream,
        allowed,
        source=source,
        substitutes=substitutes,
        persistent_load=persistent_load,
    )
    if stream.read(1):
        raise ValueError(f"{source}: unexpected bytes after the end of the pickle")
    return obj
