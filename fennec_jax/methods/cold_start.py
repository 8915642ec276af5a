"""Cold-start ranking methods: models placed by their architecture graphs.

A model without records still has an architecture. These methods read each model's graph
from ``history.model_side["graph"]`` (a `fennec_jax.archs.graphs.ArchGraph` per model),
learn from the models that have records, and predict every model's score on every history
task (``complete(state) -> scores[T, M]``), the models without records included; a new task
gets the mean prediction over the history's tasks. Targets are the per-task normal scores of
the observed models' ranks (`fennec_jax.core.records.normal_scores`), so every task weighs the
same; predictions are in those units (only their order matters).

Op names: each fit works in the op vocabulary of the graphs it trains on
(`fennec_jax.archs.graphs.OpVocabulary`: `OPS`, then a user's own op names; an encoder
pretrained elsewhere brings its own), so a user's op names stay distinct; an op name only the
models without records use is read as `graphs.UNKNOWN_OP` (logged). The state keeps the
vocabulary's names (``"ops"``) next to the predictions, and saves with them.

* ``graph_regression``: hand-made graph features (``features``: ``opcount``, ``wl``, ``both``;
  `fennec_jax.archs.graph_features`) -> scores by ridge (penalty per task by leave-one-out)
  or random forests (``regressor``).
* ``archi2vec``: the jraph graph network of `fennec_jax.archs.archi2vec`, trained on the
  visible models (optionally from an encoder pretrained on the whole zoo: ``pretrained``).

:class:`GraphFeatures` turns an encoder's graph embeddings into model features for the
transfer space (``Fennec(model_features=...)``, :func:`fennec_arch`), so fennec places models
without records by their graphs too.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fennec_jax.archs import archi2vec as a2v
from fennec_jax.archs.graph_features import FEATURES, check_cold_start_inputs
from fennec_jax.archs.graphs import UNKNOWN_OP, ArchGraph, OpVocabulary
from fennec_jax.core.records import Records, normal_scores
from fennec_jax.core.registry import typed_config
from fennec_jax.core.ridge import fit_ridge
from fennec_jax.methods.base import CompletionMethod, register
from fennec_jax.methods.fennec import Fennec

__all__ = ["GraphRegression", "Archi2VecMethod", "GraphFeatures", "fennec_arch", "model_graphs"]

_log = logging.getLogger(__name__)


def model_graphs(history: Records) -> list[ArchGraph]:
    """The history's models' graphs (``model_side["graph"]``); ValueError when absent."""
    graphs = history.model_side.get("graph")
    if graphs is None:
        raise ValueError("needs every model's architecture graph (records.model_side['graph']); "
                         "give graphs with --graphs")
    return list(graphs)


class _GraphPredictor(CompletionMethod):
    """Shared by the graph methods: fit on the models with records, predict all of them.

    State: ``{"pred": scores[T, M], "tasks": names[T], "ops": the fit's op vocabulary names[V]}``.
    """

    def _train(self, graphs, scores, mask, seed):  # -> a fitted predictor with a .vocab, for _predict
        raise NotImplementedError

    def _predict(self, state, graphs) -> np.ndarray:  # -> pred[T, G]
        raise NotImplementedError

    def fit(self, history: Records, seed: int = 0):
        graphs = model_graphs(history)
        seen = np.flatnonzero(history.mask.any(0))
        scores, mask = check_cold_start_inputs([graphs[i] for i in seen], history.scores[:, seen],
                                               history.mask[:, seen])
        state = self._train([graphs[i] for i in seen], scores, mask, seed)
        unseen = state.vocab.unseen(graphs)
        if unseen:
            _log.warning("%s: op names no model with records uses, read as %r: %s", self.name, UNKNOWN_OP, unseen)
        return {"pred": np.asarray(self._predict(state, graphs), np.float64), "tasks": np.asarray(history.tasks),
                "ops": np.asarray(state.vocab.names)}


def _fit_forests(x: np.ndarray, y: np.ndarray, mask: np.ndarray, seed: int, trees: int) -> list:
    """One random forest per column of y[M, D], on that column's observed rows (per-task
    forests rank clearly better than one multi-output forest: 0.607 vs 0.588 mean Kendall
    tau on NAS-Bench-Graph at n = 1000)."""
    from sklearn.ensemble import RandomForestRegressor  # imported on use: sklearn is slow to import

    return [
        RandomForestRegressor(n_estimators=trees, max_features=0.3, min_samples_leaf=2, random_state=seed)
        .fit(x[mask[:, d]], y[mask[:, d], d])
        for d in range(y.shape[1])
    ]


@register("graph_regression")
@dataclasses.dataclass(frozen=True)
class GraphRegression(_GraphPredictor):
    """Graph features -> per-task normal scores (module docstring).

    Attributes:
      features: ``"opcount"``, ``"wl"`` or ``"both"`` (`fennec_jax.archs.graph_features.FEATURES`).
      regressor: ``"ridge"`` (`core.ridge.fit_ridge`, l2 by leave-one-out) or ``"forest"``
        (scikit-learn random forests, one per task).
      trees: number of trees of each forest.
    """

    features: str = "opcount"
    regressor: str = "ridge"
    trees: int = 100
    name: str = "graph_regression"

    def __post_init__(self):
        if self.features not in FEATURES:
            raise ValueError(f"features: expected one of {sorted(FEATURES)}, got {self.features!r}")
        if self.regressor not in ("ridge", "forest"):
            raise ValueError(f"regressor: expected 'ridge' or 'forest', got {self.regressor!r}")

    def _train(self, graphs, scores, mask, seed):
        vocab = OpVocabulary.from_graphs(graphs)
        x, z = FEATURES[self.features](graphs, vocab=vocab), normal_scores(scores, mask).T
        if self.regressor == "ridge":
            return _Fitted(vocab, fit_ridge(x, z, mask.T))
        return _Fitted(vocab, _fit_forests(x, z, mask.T, seed, self.trees))

    def _predict(self, state, graphs) -> np.ndarray:
        x = FEATURES[self.features](graphs, vocab=state.vocab)
        if self.regressor == "ridge":
            return state.regressor.apply(x).T
        return np.stack([forest.predict(x) for forest in state.regressor])


@dataclasses.dataclass(frozen=True)
class _Fitted:
    """A fitted `GraphRegression`: its features' op vocabulary and its ridge map or forests[T]."""

    vocab: OpVocabulary
    regressor: Any


@dataclasses.dataclass(frozen=True)
class Archi2VecMethod(_GraphPredictor):
    """archi2vec as a ranking method (module docstring).

    Attributes:
      config: encoder and training settings.
      pretrained: optional encoder from `archi2vec.pretrain` (e.g. on the whole zoo) to start from.
    """

    config: a2v.Archi2VecConfig = a2v.Archi2VecConfig()
    pretrained: a2v.Archi2VecModel | None = None
    name: str = "archi2vec"

    def _train(self, graphs, scores, mask, seed):
        return a2v.fit_cold_start(graphs, scores, mask, self.config, seed, self.pretrained)

    def _predict(self, state, graphs) -> np.ndarray:
        return a2v.predict(state, graphs)


@register("archi2vec")
def _archi2vec(name: str = "archi2vec", pretrained: a2v.Archi2VecModel | None = None, **overrides) -> Archi2VecMethod:
    """``archi2vec`` with :class:`~fennec_jax.archs.archi2vec.Archi2VecConfig` field overrides."""
    config = a2v.Archi2VecConfig(**typed_config(a2v.Archi2VecConfig, overrides))
    return Archi2VecMethod(config=config, pretrained=pretrained, name=name)


# ----------------------------------------------------------------------------- transfer space


@dataclasses.dataclass(frozen=True, eq=False)
class GraphFeatures:
    """Model names -> ``features[M, E + 1]``: the `embed`ding of each model's architecture
    graph, then 1.0 (the last column; zeros in a row whose model has no graph).

    Plugged into the transfer space as ``transfer_space.Fennec(model_features=...)`` (see
    `fennec_arch`): a model's vector is then a learned map of its graph embedding and
    metadata plus a learned residual for models with records, so an unseen model is scored
    from its graph alone.

    Attributes:
      model: an encoder (e.g. from `pretrain` on the zoo's graphs), without metadata.
      graphs: model name -> its `ArchGraph` (models sharing an architecture may share one).
    """

    model: a2v.Archi2VecModel
    graphs: Mapping[str, ArchGraph]

    def __post_init__(self):
        if self.model.config.meta_dim:
            raise ValueError("model: GraphFeatures embeds graphs alone; expected config.meta_dim = 0")
        bad = [name for name, g in self.graphs.items() if not isinstance(g, ArchGraph)]
        if bad:
            raise ValueError(f"graphs: expected ArchGraph values, got {type(self.graphs[bad[0]]).__name__} "
                             f"for {bad[0]!r}")

    def __call__(self, models: Sequence[str]) -> np.ndarray:
        known = [m for m in models if m in self.graphs]
        width = self.model.config.ensemble * self.model.config.embed_dim
        features = np.zeros((len(models), width + 1), np.float32)
        if known:
            distinct = list({id(self.graphs[m]): self.graphs[m] for m in known}.values())
            emb = dict(zip((id(g) for g in distinct), a2v.embed(self.model, distinct)))
            rows = [i for i, m in enumerate(models) if m in self.graphs]
            features[rows, :width] = [emb[id(self.graphs[models[i]])] for i in rows]
            features[rows, width] = 1.0
        return features


def fennec_arch(graphs: Mapping[str, ArchGraph], encoder: a2v.Archi2VecModel, **fennec_fields) -> Fennec:
    """The fennec method (`transfer_space.Fennec`) with each model's vector and bias also a
    learned map of its archi2vec graph embedding (`GraphFeatures`); ``fennec_fields``
    override other `Fennec` fields (``configs``, ...)."""
    return Fennec(model_features=GraphFeatures(encoder, dict(graphs)), name="fennec_arch", **fennec_fields)
