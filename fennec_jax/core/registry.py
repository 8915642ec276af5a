"""One registry type for everything the package looks up by name: methods, estimators,
benchmarks and architectures.

A :class:`Registry` maps a name to an entry: ``get(name)`` returns it (an estimator record,
a benchmark loader, an architecture constructor), ``build(name, **config)`` calls it with a
configuration (a method's factory), so a method's variants are configurations of one name,
not new names.
Entries that live in modules not yet imported are found through the registry's ``loader``
(called once, on first look-up), so registration never depends on import side effects of
``fennec_jax/__init__``.

Configurations come from the command line as ``key=value,key=value`` (:func:`parse_config`)
and are typed by the factory's dataclass fields (:func:`typed_config`).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

__all__ = ["Registry", "parse_config", "typed_config", "parse_spec"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> entry, for one kind of thing (``kind`` names it in error messages)."""

    def __init__(self, kind: str, loader: Callable[[], None] | None = None):
        self.kind = kind
        self._loader = loader
        self._loaded = loader is None
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None):
        """Registers ``entry`` under ``name``; without ``entry``, a decorator."""

        def add(e):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = e
            return e

        return add if entry is None else add(entry)

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            self._loader()

    def names(self) -> tuple[str, ...]:
        self._load()
        return tuple(self._entries)

    def get(self, name: str) -> T:
        """The entry ``name``; ValueError listing the names otherwise."""
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; choose from {', '.join(self._entries)}") from None

    def build(self, name: str, **config):
        """The entry ``name`` (a factory) called with ``config``."""
        return self.get(name)(**config)

    def values(self):
        self._load()
        return self._entries.values()

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def parse_config(text: str | None) -> dict[str, str]:
    """``"a=1,b=x"`` -> ``{"a": "1", "b": "x"}``; tuples as ``a=1/3/5``. ValueError names
    the bad item."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"config item {item!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """A method spec ``"NAME"`` or ``"NAME:key=value+key=value"`` (e.g. ``fennec:preset=nmf``)
    -> ``(NAME, config)``: ``+`` separates the items, since ``,`` separates the specs of a
    ``--methods`` list."""
    name, _, config = spec.partition(":")
    return name.strip(), parse_config(config.replace("+", ","))


def _coerce(value: str, kind: Any, key: str):
    origin = typing.get_origin(kind)
    if kind is bool:
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"config {key}={value!r}: expected true or false")
    if origin is tuple:
        (inner, *_) = typing.get_args(kind) or (str,)
        return tuple(_coerce(v, inner, key) for v in value.split("/") if v)
    for target in (int, float):
        if kind is target:
            try:
                return target(value)
            except ValueError:
                raise ValueError(f"config {key}={value!r}: expected {target.__name__}") from None
    if kind is str or kind is Any:
        return value
    if origin is typing.Union or type(kind).__name__ == "UnionType":  # e.g. int | None
        for arg in typing.get_args(kind):
            if arg is type(None):
                if value.lower() == "none":
                    return None
                continue
            try:
                return _coerce(value, arg, key)
            except ValueError:
                pass
        raise ValueError(f"config {key}={value!r}: expected {kind}")
    raise ValueError(f"config {key}: cannot be set from text (type {kind})")


def typed_config(cls: type, config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with string values converted to the types of dataclass ``cls``'s fields;
    an unknown key is a ValueError listing the fields."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    out = {}
    for key, value in config.items():
        if key not in names:
            raise ValueError(f"unknown config key {key!r} for {cls.__name__}; expected one of {', '.join(names)}")
        out[key] = _coerce(value, hints[key], key) if isinstance(value, str) else value
    return out
