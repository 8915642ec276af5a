"""The one protocol every ranking method follows, and the registry of methods by name.

A ranking method learns from the visible records of historical tasks and then scores all
models for a new task from whatever evidence exists about that task::

    state = method.fit(history, seed=0)              # history: Records[T, M], never the new task
    scores = method.score(state, evidence)            # scores[M], higher = predicted better
    scores = method.score_batch(state, evidences)     # scores[B, M]
    method.save(state, path); state = method.restore(path)

``evidence`` is a :class:`~fennec_jax.core.evidence.TaskEvidence`: true scores of a few probe
models (k may be 0), a proxy embedding, the task's name and metadata, per-model forward-pass
features; a method uses what it can and ignores the rest. ``fit`` is a pure function of its
inputs and the seed. Everything that ranks models is a method: the baselines, the transfer
space (``fennec``), Model Spider (``spider``), the forward-pass estimators (``logme``, ...:
they read ``evidence.model_features``) and the cold-start predictors that place models from
their architecture graphs (``graph_regression``, ``archi2vec``: they read
``history.model_side["graph"]``).

:class:`MethodBase` gives ``score_batch`` (a loop over ``score``) and ``save`` / ``restore``
for states that are dicts of arrays (one orbax checkpoint, :mod:`fennec_jax.core.checkpoint`);
methods override them where they do better (the transfer space, Model Spider).

Methods register by name in :data:`METHODS` (a :class:`~fennec_jax.core.registry.Registry`);
a method's variants are configurations of its name (``get_method("fennec", preset="nmf")``,
or ``fennec:preset=nmf`` on the command line), not new names.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from fennec_jax.core.evidence import TaskEvidence
from fennec_jax.core.records import Records
from fennec_jax.core.registry import Registry, parse_spec, typed_config

__all__ = [
    "TaskEvidence",
    "RankingMethod",
    "VectorRankingMethod",
    "MethodBase",
    "CompletionMethod",
    "METHODS",
    "register",
    "get_method",
    "method_names",
    "method_from_spec",
]


class RankingMethod(Protocol):
    """What ``evaluate``, ``rank_all`` and a zoo need from a method."""

    name: str

    def fit(self, history: Records, seed: int = 0) -> Any:
        """Learns from ``history`` (a pure function of it and ``seed``); returns the state."""

    def score(self, state: Any, evidence: TaskEvidence) -> np.ndarray:
        """``scores[M]`` for one new task, over the history's models."""

    def score_batch(self, state: Any, evidences: Sequence[TaskEvidence]) -> np.ndarray:
        """``scores[B, M]`` for a batch of new tasks."""

    def save(self, state: Any, path: str) -> None:
        """Writes ``state`` to the folder ``path`` (atomically, checksummed)."""

    def restore(self, path: str) -> Any:
        """The state saved at ``path``; CheckpointError if it cannot be restored faithfully."""


class VectorRankingMethod(RankingMethod, Protocol):
    """A method whose scores are vector arithmetic, so the batch engine can rank with it:
    ``scores[M] = model_vecs @ task_vec + model_bias + task_bias`` with
    ``(task_vec, task_bias) = task_vector(state, evidence)``, equal to ``score(state, evidence)``."""

    def model_vectors(self, state: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(model_vecs[M, D], model_bias[M])``."""

    def task_vector(self, state: Any, evidence: TaskEvidence) -> tuple[np.ndarray, float]:
        """``(task_vec[D], task_bias)`` of a new task."""


class MethodBase:
    """Defaults for the protocol: ``score_batch`` loops over ``score``; ``save`` / ``restore``
    store a state that is a dict of arrays (or one array) with a format tag per method."""

    name: str

    def score_batch(self, state: Any, evidences: Sequence[TaskEvidence]) -> np.ndarray:
        if not evidences:
            raise ValueError("evidences: expected at least one task")
        return np.stack([np.asarray(self.score(state, ev), dtype=np.float64) for ev in evidences])

    def save(self, state: Any, path: str, *, overwrite: bool = True) -> None:
        from fennec_jax.core.checkpoint import save_arrays

        items = dict(state) if isinstance(state, Mapping) else {"state": state}
        items = {k: np.asarray(v) for k, v in items.items()}
        # Scalars and text go into the JSON metadata (orbax keeps numeric arrays only).
        plain = {k: v.tolist() for k, v in items.items() if v.dtype.kind in "OUS" or v.ndim == 0}
        arrays = {k: np.ascontiguousarray(v) for k, v in items.items() if k not in plain}
        save_arrays(path, _format(self), {"kind": "dict" if isinstance(state, Mapping) else "array", "plain": plain},
                    arrays, overwrite=overwrite)

    def restore(self, path: str) -> Any:
        from fennec_jax.core.checkpoint import restore_arrays

        meta, arrays = restore_arrays(path, _format(self), self.name)
        if meta.get("kind") == "array":
            return arrays["state"]
        out = dict(arrays)
        out.update({k: v if not isinstance(v, list) else np.asarray(v, dtype=object)
                    for k, v in meta.get("plain", {}).items()})
        return out


class CompletionMethod(MethodBase):
    """A method whose state is its completion of the history, ``{"pred": scores[T, M],
    "tasks": names[T]}``: a history task is scored by its row, a new task by the mean row."""

    def complete(self, state) -> np.ndarray:
        """``scores[T, M]`` of every model on every history task."""
        return state["pred"]

    def score(self, state, evidence: TaskEvidence) -> np.ndarray:
        tasks = list(np.asarray(state["tasks"]).tolist())
        if evidence.task in tasks:
            return state["pred"][tasks.index(evidence.task)]
        return state["pred"].mean(0)


def _format(method) -> str:
    return f"fennec_jax.method.{type(method).__name__}/1"


def _load_builtin_methods() -> None:
    # Importing the modules runs their registrations.
    from fennec_jax.methods import auto, baselines, cold_start, estimator_methods, fennec, spider  # noqa: F401


METHODS: Registry[RankingMethod] = Registry("method", _load_builtin_methods)


def register(name: str):
    """Decorator registering a method factory: its dataclass (configured by its fields, string
    values typed by :func:`~fennec_jax.core.registry.typed_config`), or a function of its config."""

    def deco(factory):
        if dataclasses.is_dataclass(factory):
            METHODS.register(name, functools.partial(_build, factory))
        else:
            METHODS.register(name, factory)
        return factory

    return deco


def _build(cls, **config):
    return cls(**typed_config(cls, config))


def method_names() -> tuple[str, ...]:
    return METHODS.names()


def get_method(name: str, **config) -> RankingMethod:
    """A registered method by name, built with ``config`` (its configuration; string values
    are converted to the configuration's field types)."""
    return METHODS.build(name, **config)


def method_from_spec(spec: str, config: Mapping[str, str] | None = None) -> RankingMethod:
    """The method of a spec ``NAME`` or ``NAME:key=value+key=value`` (as in
    ``--methods=fennec,fennec:preset=nmf``), with ``config`` (e.g. ``--method_config``) added;
    its ``name`` is the spec, so reports tell configurations apart."""
    name, spec_config = parse_spec(spec)
    method = get_method(name, **{**spec_config, **(config or {})})
    label = spec if not config else f"{name}:" + "+".join(f"{k}={v}" for k, v in {**spec_config, **config}.items())
    if dataclasses.is_dataclass(method) and "name" in {f.name for f in dataclasses.fields(method)}:
        method = dataclasses.replace(method, name=label)
    return method
