"""What is known about one new task: :class:`TaskEvidence`, the input of every method's ``score``.

A method scores every model for a task from whatever evidence exists about it: the true
scores of a few probe models (k may be 0), a proxy embedding of the task's data, its name and
metadata, and, for forward-pass estimators, every model's features on the task's examples.
Methods ignore what they do not use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["TaskEvidence", "MissingEvidenceError"]


class MissingEvidenceError(ValueError):
    """A method needs evidence the task does not have (e.g. an estimator without features);
    the message says what is missing."""


@dataclasses.dataclass(frozen=True)
class TaskEvidence:
    """What is known about one new task.

    Attributes:
      probe_models: ``probe_models[k]`` int, indices into the history's models whose true
        score on the new task is known (k may be 0).
      probe_scores: ``probe_scores[k]`` float, those true scores (any scale; methods must be
        invariant to an affine change of it).
      proxy: optional ``proxy[P]`` embedding of the task's data from a proxy encoder.
      metadata: optional task metadata (name -> value); ``"task"`` is the task's name.
      seed: randomness for methods that sample (the evaluation passes its draw's seed).
      model_features: optional per-model forward-pass features on the task's examples,
        ``model_features[m]`` of shape ``[N, D_m]``, one per history model (estimators).
      labels: ``labels[N]`` int, the task's labels of those examples.
      model_probs: optional per-model source-head probabilities ``[N, Cs_m]`` (or None for a
        model without them).
    """

    probe_models: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=int))
    probe_scores: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    proxy: np.ndarray | None = None
    metadata: Mapping[str, Any] | None = None
    seed: int = 0
    model_features: Sequence[np.ndarray] | None = None
    labels: np.ndarray | None = None
    model_probs: Sequence[np.ndarray | None] | None = None

    def __post_init__(self):
        models = np.asarray(self.probe_models, dtype=int).reshape(-1)
        scores = np.asarray(self.probe_scores, dtype=np.float64).reshape(-1)
        if models.shape != scores.shape:
            raise ValueError(
                f"probe_models has {models.size} entries but probe_scores has {scores.size}"
            )
        if not np.all(np.isfinite(scores)):
            raise ValueError("probe_scores must be finite")
        if len(np.unique(models)) != models.size:
            raise ValueError("probe_models has repeated models")
        if (self.model_features is None) != (self.labels is None):
            raise ValueError("model_features and labels go together")
        object.__setattr__(self, "probe_models", models)
        object.__setattr__(self, "probe_scores", scores)

    @property
    def k(self) -> int:
        return int(self.probe_models.size)

    @property
    def task(self) -> str | None:
        """The task's name, when the metadata gives it."""
        return (self.metadata or {}).get("task")
