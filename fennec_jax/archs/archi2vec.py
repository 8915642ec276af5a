"""archi2vec: a graph-network encoder of neural architectures, for cold-start model ranking.

The encoder (`GraphEncoder`, Flax + jraph) maps a padded batch of architecture graphs
(`graphs.to_graphs_tuple`) and an optional per-graph metadata vector ``meta[G, K]`` (for
example the log parameter count) to embeddings ``emb[G, embed_dim]`` per network:

1. node features (op one-hot in the model's op vocabulary, log attributes, attribute mask;
   with ``degree_features`` also the log of each node's dataflow in- and out-degree) ->
   ``hidden`` wide states;
2. ``rounds`` rounds of message passing (`jraph.GraphNetwork`): each edge's message is an
   MLP of its direction feature (dataflow ``[1, 0]`` or reverse ``[0, 1]``) and the states
   of its two ends, messages are summed at the receiving node, and the node's state is
   updated as ``LayerNorm(h + MLP([h, messages]))``;
3. multi-head attention readout over each graph's real nodes, concatenated with
   ``log1p(nodes)`` and ``meta``, then an MLP to ``embed_dim``.

Edges of the padding graph only touch padding nodes, so a graph embeds the same in
any bucket; sums and per-graph softmaxes make the embedding independent of node order.

Training: ``ensemble`` independently initialised networks side by side (vmapped, same
minibatches; predictions are their mean, which ranks clearly better than one network when
few architectures have records), AdamW with clipped gradients and a cosine learning
rate, minibatches of ``batch_size`` graphs padded to fixed buckets (one compiled step per
bucket shape), deterministic for a seed.

* `pretrain`: self-supervised, for zoos without records (``config.ssl_objective``):
  ``"wl"``: from its embedding, every graph predicts the Weisfeiler-Lehman subtree labels
  of its own nodes: for each iteration 0..``wl_iterations``, the distribution of its
  nodes' labels (`graph_features.wl_node_labels`, hashed to ``wl_vocab`` classes; KL
  divergence), so the embedding learns the zoo's op mix and local structures;
  ``"contrastive"``: two random views of each graph of a minibatch (`augment`:
  node-attribute masking, edge dropping, op substitution, each at ``augment_rate``) must
  find each other among the batch's views (NT-Xent on a projection of the embedding,
  ``temperature``).
* `fit_supervised`: regression of any per-model targets ``[M, D]`` (masked squared
  error plus ``rank_weight`` x a pairwise logistic ranking loss over the minibatch's
  graphs, per output), e.g. transfer-space model vectors; `fit_cold_start`: the same on
  per-task normal scores of task scores ``[T, M]`` (`core.records.normal_scores`).
  Both can start from a pretrained encoder.

Op vocabulary (`graphs.OpVocabulary`): `pretrain`, and `fit_supervised` without ``init``, fit
the network on the op names of their graphs (`OPS`, then the graphs' other op names, sorted);
fits from ``init`` keep its vocabulary. The model carries it (`Archi2VecModel.vocab`), and
`predict` / `embed` read new graphs in it: an op name it has not seen is `graphs.UNKNOWN_OP`.
`save_model` / `restore_model` keep the vocabulary with the weights and config.

`predict` gives the scores of unseen architectures from their graphs alone; `embed`
gives ``emb[G, ensemble * embed_dim]``; `fit_vector_map` fits a ridge map from
embeddings to given vectors (``vecs ~ emb @ W + b``). The ranking methods built on it
(the ``archi2vec`` method, graph embeddings as model features of the transfer space) are in
`fennec_jax.methods.cold_start`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fennec_jax.archs import graph_features
from fennec_jax.core import ridge
from fennec_jax.core.records import normal_scores
from fennec_jax.archs._jraph import jraph
from fennec_jax.core.ridge import RidgeMap
from fennec_jax.archs.graphs import (BUILTIN_VOCABULARY, OPS, ArchGraph, OpVocabulary, resolve_vocabulary,
                                     to_graphs_tuple)

__all__ = [
    "Archi2VecConfig",
    "GraphEncoder",
    "Archi2VecModel",
    "init_model",
    "save_model",
    "restore_model",
    "pretrain",
    "fit_supervised",
    "fit_cold_start",
    "predict",
    "embed",
    "fit_vector_map",
    "RidgeMap",
    "augment",
    "chunks",
    "SSL_OBJECTIVES",
]


SSL_OBJECTIVES = ("wl", "contrastive")


@dataclasses.dataclass(frozen=True)
class Archi2VecConfig:
    """Encoder shape and training settings.

    Attributes:
      hidden: width of node states and MLPs.
      embed_dim: width d of the embeddings.
      rounds: message-passing rounds.
      heads: attention-readout heads (``hidden`` must be divisible by it).
      meta_dim: width K of the per-graph metadata vector (0: none).
      ensemble: independently initialised networks trained side by side (vmapped, same
        minibatches); predictions are their mean, embeddings their concatenation.
      batch_size: graphs per training minibatch.
      epochs: supervised training length, in passes over the training graphs.
      learning_rate: AdamW peak learning rate (cosine decay to 0 over the steps).
      weight_decay: AdamW decoupled weight decay.
      pretrain_epochs: self-supervised passes over the zoo in `pretrain`.
      wl_iterations: WL iterations whose label distributions each graph predicts in `pretrain`.
      wl_vocab: hashed WL label classes per iteration.
      max_batch_nodes: node budget per batch in `embed` / `predict`.
      rank_weight: weight of the pairwise logistic ranking loss added to the squared error in
        supervised training (0: squared error only).
      degree_features: add log in/out-degrees to the node features.
      ssl_objective: `pretrain`'s objective, ``"wl"`` or ``"contrastive"``.
      augment_rate: per node / edge probability of each `augment` perturbation.
      temperature: softmax temperature of the contrastive objective.
    """

    hidden: int = 64
    embed_dim: int = 32
    rounds: int = 3
    heads: int = 4
    meta_dim: int = 0
    ensemble: int = 3
    batch_size: int = 128
    epochs: float = 40.0
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    pretrain_epochs: float = 1.0
    wl_iterations: int = 2
    wl_vocab: int = 256
    max_batch_nodes: int = 8192
    rank_weight: float = 30.0
    degree_features: bool = True
    ssl_objective: str = "wl"
    augment_rate: float = 0.2
    temperature: float = 0.2

    def steps(self, num_graphs: int, epochs: float) -> int:
        """Optimiser steps for ``epochs`` passes over num_graphs graphs in minibatches."""
        return int(np.ceil(epochs * num_graphs / min(self.batch_size, num_graphs)))

    def __post_init__(self):
        for name in ("hidden", "embed_dim", "rounds", "heads", "ensemble", "batch_size", "wl_iterations",
                     "wl_vocab", "max_batch_nodes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        if not isinstance(self.meta_dim, int) or self.meta_dim < 0:
            raise ValueError(f"meta_dim: expected an int >= 0, got {self.meta_dim!r}")
        for name in ("epochs", "pretrain_epochs"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: expected a number >= 0, got {getattr(self, name)!r}")
        if self.hidden % self.heads:
            raise ValueError(f"heads: must divide hidden = {self.hidden}, got {self.heads}")
        if self.ssl_objective not in SSL_OBJECTIVES:
            raise ValueError(f"ssl_objective: expected one of {SSL_OBJECTIVES}, got {self.ssl_objective!r}")
        if not (0 <= self.augment_rate < 1 and self.temperature > 0 and self.rank_weight >= 0):
            raise ValueError(f"augment_rate in [0, 1), temperature > 0 and rank_weight >= 0 expected, got "
                             f"{self.augment_rate}, {self.temperature}, {self.rank_weight}")
        if not (self.learning_rate > 0 and self.weight_decay >= 0):
            raise ValueError(f"learning_rate > 0 and weight_decay >= 0 expected, got "
                             f"{self.learning_rate}, {self.weight_decay}")


# ----------------------------------------------------------------------------- network

_ENDPOINT_OPS = np.array([OPS.index("input"), OPS.index("output")])
_NEG_LARGE = -1e9  # stands for log(0) in the contrastive softmax: finite, so gradients stay finite

# Config fields that shape the parameters (the rest only steer training / batching).
_NETWORK_FIELDS = ("hidden", "embed_dim", "rounds", "heads", "meta_dim", "ensemble", "wl_iterations", "wl_vocab",
                   "degree_features")


class _MLP(nn.Module):
    """Two-layer perceptron, GELU in between."""

    features: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.features)(nn.gelu(nn.Dense(self.features)(x)))


class GraphEncoder(nn.Module):
    """Graph batch (+ metadata) -> emb[G_pad, embed_dim].

    See the module docstring. ``graph`` is a padded `jraph.GraphsTuple` from
    `graphs.to_graphs_tuple`; ``meta`` is ``[G_pad, meta_dim]`` or None when
    ``meta_dim == 0``. Rows of padding graphs are meaningless.
    """

    hidden: int
    embed_dim: int
    rounds: int
    heads: int
    meta_dim: int
    degree_features: bool = False

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple, meta: jax.Array | None = None):
        num_nodes, num_graphs = graph.nodes.shape[0], graph.n_node.shape[0]
        nodes = graph.nodes
        if self.degree_features:
            nodes = jnp.concatenate([nodes, _log_degrees(graph)], -1)
        h = nn.LayerNorm()(nn.Dense(self.hidden)(nodes))
        for r in range(self.rounds):
            message = _MLP(self.hidden, name=f"message_{r}")
            update = _MLP(self.hidden, name=f"update_{r}")
            norm = nn.LayerNorm(name=f"norm_{r}")

            def message_fn(edges, sent, received, globals_, message=message):
                return message(jnp.concatenate([edges, sent, received], -1))

            def update_fn(nodes, sent, received, globals_, update=update, norm=norm):
                return norm(nodes + update(jnp.concatenate([nodes, received], -1)))

            network = jraph.GraphNetwork(update_edge_fn=message_fn, update_node_fn=update_fn)
            h = network(graph._replace(nodes=h)).nodes
        graph_of_node = jnp.repeat(jnp.arange(num_graphs), graph.n_node, total_repeat_length=num_nodes)
        logits = nn.Dense(self.heads, name="attention_logits")(h)  # [N, heads]
        weights = jraph.segment_softmax(logits, graph_of_node, num_graphs)
        values = nn.Dense(self.hidden, name="attention_values")(h).reshape(num_nodes, self.heads, -1)
        pooled = jax.ops.segment_sum(weights[..., None] * values, graph_of_node, num_graphs).reshape(num_graphs, -1)
        parts = [pooled, jnp.log1p(graph.n_node.astype(pooled.dtype))[:, None]]
        if self.meta_dim:
            if meta is None or meta.shape != (num_graphs, self.meta_dim):
                raise ValueError(f"meta: expected shape ({num_graphs}, {self.meta_dim}), got "
                                 f"{None if meta is None else meta.shape}")
            parts.append(meta)
        hidden = nn.gelu(nn.Dense(self.hidden)(jnp.concatenate(parts, -1)))
        return nn.Dense(self.embed_dim, name="embedding")(hidden)


def _log_degrees(graph: jraph.GraphsTuple) -> jax.Array:
    """[N, 2] log1p of each node's dataflow in-degree and out-degree (edge feature 0 marks
    the forward copy of an edge)."""
    forward, num_nodes = graph.edges[:, 0], graph.nodes.shape[0]
    in_degree = jax.ops.segment_sum(forward, graph.receivers, num_nodes)
    out_degree = jax.ops.segment_sum(forward, graph.senders, num_nodes)
    return jnp.log1p(jnp.stack([in_degree, out_degree], -1))


class _Network(nn.Module):
    """Encoder plus its two heads on the embedding: supervised outputs and WL label logits."""

    config: Archi2VecConfig
    num_outputs: int

    def setup(self):
        c = self.config
        self.encoder = GraphEncoder(c.hidden, c.embed_dim, c.rounds, c.heads, c.meta_dim, c.degree_features)
        self.output_head = nn.Dense(max(self.num_outputs, 1))
        self.wl_head = nn.Dense((c.wl_iterations + 1) * c.wl_vocab)
        self.projection = _MLP(c.embed_dim)

    def __call__(self, graph, meta):
        """(outputs[G_pad, num_outputs], wl_logits[G_pad, wl_iterations + 1, wl_vocab], emb[G_pad, d],
        projection[G_pad, d]) (the projection is what the contrastive objective compares)."""
        emb = self.encoder(graph, meta)
        wl = self.wl_head(emb).reshape(emb.shape[0], self.config.wl_iterations + 1, self.config.wl_vocab)
        return self.output_head(emb)[:, : self.num_outputs], wl, emb, self.projection(emb)


@dataclasses.dataclass(frozen=True)
class Archi2VecModel:
    """A trained (or initialised) archi2vec network.

    Attributes:
      config: the `Archi2VecConfig` it was built with.
      num_outputs: width D of the supervised head (0 for a pretrained-only encoder).
      params: the Flax parameters ``{"encoder": ..., "output_head": ..., "wl_head": ...}``,
        every leaf with a leading axis of the ``config.ensemble`` members.
      vocab: the op vocabulary of its one-hot op features (their width is ``len(vocab)``).
    """

    config: Archi2VecConfig
    num_outputs: int
    params: Any
    vocab: OpVocabulary = BUILTIN_VOCABULARY

    @property
    def network(self) -> _Network:
        return _Network(self.config, self.num_outputs)


def init_model(config: Archi2VecConfig, num_outputs: int = 0, seed: int = 0,
               encoder: Archi2VecModel | None = None, vocab: OpVocabulary | None = None) -> Archi2VecModel:
    """Fresh parameters of ``config.ensemble`` members for ``num_outputs`` supervised
    outputs, on the op vocabulary ``vocab`` (default: ``encoder``'s, else the built-in one);
    the encoder (and WL head) are copied from ``encoder`` when given (its config must have
    the same network fields, and its vocabulary be ``vocab``)."""
    if encoder is not None:
        differ = {f: (getattr(encoder.config, f), getattr(config, f)) for f in _NETWORK_FIELDS
                  if getattr(encoder.config, f) != getattr(config, f)}
        if differ:
            raise ValueError(f"encoder: built with other settings than config, (encoder, config): {differ}")
        if vocab is not None and vocab != encoder.vocab:
            raise ValueError(f"vocab: the encoder's op vocabulary is {encoder.vocab}, got {vocab}")
        vocab = encoder.vocab
    vocab = BUILTIN_VOCABULARY if vocab is None else vocab
    example = _example_batch(config, vocab)
    network = _Network(config, num_outputs)
    keys = jax.random.split(jax.random.key(seed), config.ensemble)
    params = jax.vmap(lambda key: network.init(key, *example)["params"])(keys)
    if encoder is not None:
        params = {**params, **{k: encoder.params[k] for k in ("encoder", "wl_head", "projection")}}
    return Archi2VecModel(config, num_outputs, params, vocab)


def _example_batch(config: Archi2VecConfig, vocab: OpVocabulary):
    graph = ArchGraph.from_ops("example", ["input", "output"], [[0, 1]])
    batch, _ = to_graphs_tuple([graph], vocab=vocab)
    meta = jnp.zeros((len(batch.n_node), config.meta_dim)) if config.meta_dim else None
    return batch, meta


_CHECKPOINT_FORMAT = "fennec_jax.archi2vec.Archi2VecModel/1"


def save_model(model: Archi2VecModel, path: str, *, overwrite: bool = False) -> None:
    """Writes ``model`` (weights, config, ``num_outputs`` and op vocabulary) as one checkpoint
    folder ``path`` (`core.checkpoint.save_arrays`: atomic, checksummed)."""
    from flax import traverse_util

    from fennec_jax.core.checkpoint import save_arrays

    arrays = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(model.params, sep="/").items()}
    meta = {"config": dataclasses.asdict(model.config), "num_outputs": model.num_outputs,
            "ops": list(model.vocab.names)}
    save_arrays(path, _CHECKPOINT_FORMAT, meta, arrays, overwrite=overwrite)


def restore_model(path: str) -> Archi2VecModel:
    """The model `save_model` wrote at ``path``.

    Raises:
      CheckpointError: naming ``path``, for a folder that is not an intact archi2vec checkpoint
        of this package version, or whose weights do not fit its config and vocabulary.
    """
    from flax import traverse_util

    from fennec_jax.core.checkpoint import CheckpointError, restore_arrays

    meta, arrays = restore_arrays(path, _CHECKPOINT_FORMAT, "fennec_jax archi2vec model")
    try:
        config, vocab = Archi2VecConfig(**meta["config"]), OpVocabulary.from_names(meta["ops"])
        num_outputs = int(meta["num_outputs"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad archi2vec metadata ({exc})") from None
    params = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in arrays.items()})
    expected = jax.eval_shape(lambda: init_model(config, num_outputs, 0, vocab=vocab).params)
    if jax.tree.structure(expected) != jax.tree.structure(params) or any(
        e.shape != a.shape for e, a in zip(jax.tree.leaves(expected), jax.tree.leaves(params))
    ):
        raise CheckpointError(f"{path}: its weights do not fit its config and op vocabulary")
    return Archi2VecModel(config, num_outputs, params, vocab)


# ----------------------------------------------------------------------------- batches


def _check_meta(meta: np.ndarray | None, num_graphs: int, config: Archi2VecConfig) -> np.ndarray | None:
    if config.meta_dim == 0:
        if meta is not None:
            raise ValueError("meta: given, but config.meta_dim is 0")
        return None
    if meta is None:
        raise ValueError(f"meta: config.meta_dim is {config.meta_dim}; expected meta[{num_graphs}, {config.meta_dim}]")
    meta = np.asarray(meta, np.float32)
    if meta.shape != (num_graphs, config.meta_dim) or not np.isfinite(meta).all():
        raise ValueError(f"meta: expected finite values of shape ({num_graphs}, {config.meta_dim}), got {meta.shape}")
    return meta


def _pad_rows(rows: np.ndarray, length: int) -> np.ndarray:
    """rows[G, ...] zero-padded to [length, ...]."""
    return np.concatenate([rows, np.zeros((length - len(rows), *rows.shape[1:]), rows.dtype)])


def _batch(graphs: Sequence[ArchGraph], index: np.ndarray, meta: np.ndarray | None, vocab: OpVocabulary):
    """(graphs_tuple, meta[G_pad, K] or None, BatchInfo) of graphs[index], op features in vocab."""
    batch, info = to_graphs_tuple([graphs[i] for i in index], vocab=vocab)
    batch_meta = None if meta is None else _pad_rows(meta[index], len(info.graph_mask))
    return batch, batch_meta, info


def _minibatches(num_graphs: int, batch_size: int, steps: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """``steps`` index arrays of min(batch_size, num_graphs) graphs: consecutive slices of
    a stream of random permutations, so every graph is seen about once per epoch."""
    size = min(batch_size, num_graphs)
    order = np.zeros(0, int)
    for _ in range(steps):
        if len(order) < size:
            order = np.concatenate([order, rng.permutation(num_graphs)])
        yield order[:size]
        order = order[size:]


def chunks(graphs: Sequence[ArchGraph], max_nodes: int, max_graphs: int = 1023) -> Iterator[np.ndarray]:
    """Consecutive index ranges of at most max_graphs graphs and (unless one graph alone
    exceeds it) max_nodes nodes."""
    start, nodes = 0, 0
    for i, graph in enumerate(graphs):
        if i > start and (nodes + graph.num_nodes > max_nodes or i - start == max_graphs):
            yield np.arange(start, i)
            start, nodes = i, 0
        nodes += graph.num_nodes
    yield np.arange(start, len(graphs))


# ----------------------------------------------------------------------------- training


@functools.lru_cache(maxsize=32)  # one object per setting, so _train_step compiles once for it
def _optimizer(weight_decay: float) -> optax.GradientTransformation:
    """AdamW's update direction (clipped gradients); `_train_step` scales it by -learning rate,
    which comes in as an argument so a new schedule length does not recompile the step."""
    return optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_adam(), optax.add_decayed_weights(weight_decay))


def _cosine_learning_rates(peak: float, steps: int) -> np.ndarray:
    """[steps] learning rates decaying from peak to 0 along a half cosine."""
    return (0.5 * peak * (1 + np.cos(np.pi * np.arange(steps) / max(steps, 1)))).astype(np.float32)


def _supervised_loss(params, network, batch, meta, targets, target_mask):
    """Mean squared error over observed (graph, output) pairs of the batch, plus
    ``rank_weight`` x the pairwise logistic ranking loss (`_pairwise_loss`)."""
    outputs, _, _, _ = network.apply({"params": params}, batch, meta)
    sq = jnp.where(target_mask, (outputs - targets) ** 2, 0.0)
    loss = sq.sum() / jnp.maximum(target_mask.sum(), 1)
    if network.config.rank_weight:
        loss = loss + network.config.rank_weight * _pairwise_loss(outputs, targets, target_mask)
    return loss


def _pairwise_loss(outputs, targets, mask):
    """Mean over ordered pairs (i, j) of graphs observed on the same output with
    targets[i, o] > targets[j, o] of softplus(outputs[j, o] - outputs[i, o])
    (RankNet's loss; all arrays [G_pad, D])."""
    better = (targets[:, None, :] > targets[None, :, :]) & mask[:, None, :] & mask[None, :, :]
    margin = outputs[:, None, :] - outputs[None, :, :]
    loss = jnp.where(better, jax.nn.softplus(-margin), 0.0)
    return loss.sum() / jnp.maximum(better.sum(), 1)


def _wl_loss(params, network, batch, meta, label_bags, graph_mask):
    """Mean KL divergence from each real graph's WL label distributions
    label_bags[G_pad, iterations + 1, vocab] to the predicted ones (0 when exact)."""
    _, logits, _, _ = network.apply({"params": params}, batch, meta)
    kl = optax.losses.kl_divergence(jax.nn.log_softmax(logits), label_bags).mean(-1)
    return jnp.where(graph_mask, kl, 0.0).sum() / jnp.maximum(graph_mask.sum(), 1)


def _contrastive_loss(params, network, batch, meta, partner, valid):
    """NT-Xent (InfoNCE) over the batch's views: each real view's projection must pick its
    partner view (``partner[G_pad]`` index) among all other real views of the batch, by
    cosine similarity / ``config.temperature`` (``valid[G_pad]`` marks the real views)."""
    _, _, _, projection = network.apply({"params": params}, batch, meta)
    z = projection * jax.lax.rsqrt((projection**2).sum(-1, keepdims=True) + 1e-12)  # finite gradient at 0
    similarity = z @ z.T / network.config.temperature
    others = valid[None, :] & ~jnp.eye(len(valid), dtype=bool)
    log_p = jax.nn.log_softmax(jnp.where(others, similarity, _NEG_LARGE), axis=-1)
    picked = jnp.take_along_axis(log_p, jnp.maximum(partner, 0)[:, None], axis=-1)[:, 0]
    return -jnp.where(valid, picked, 0.0).sum() / jnp.maximum(valid.sum(), 1)


@functools.partial(jax.jit, static_argnames=("loss_fn", "network", "optimizer"))
def _train_step(params, opt_state, learning_rate, batch, meta, targets, target_mask, *, loss_fn, network,
                optimizer):
    """One step of every ensemble member (params and opt_state have a leading member axis)."""

    def member_step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params, network, batch, meta, targets, target_mask)
        direction, opt_state = optimizer.update(grads, opt_state, params)
        updates = jax.tree.map(lambda d: -learning_rate * d, direction)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.vmap(member_step)(params, opt_state)


def _train(model, num_graphs, loss_fn, make_batch, steps, seed) -> tuple[Archi2VecModel, np.ndarray]:
    """Runs ``steps`` optimiser steps on minibatches of num_graphs graphs; make_batch(index,
    rng) -> (graphs_tuple, meta or None, targets, mask) of graphs[index]. Returns the trained
    model and the loss[steps, ensemble] of every step."""
    network, optimizer = model.network, _optimizer(model.config.weight_decay)
    params, opt_state = model.params, jax.vmap(optimizer.init)(model.params)
    rng, losses = np.random.default_rng(seed), []
    learning_rates = _cosine_learning_rates(model.config.learning_rate, steps)
    for learning_rate, index in zip(learning_rates, _minibatches(num_graphs, model.config.batch_size, steps, rng)):
        batch, batch_meta, targets, mask = make_batch(index, rng)
        params, opt_state, loss = _train_step(params, opt_state, learning_rate, batch, batch_meta, targets, mask,
                                              loss_fn=loss_fn, network=network, optimizer=optimizer)
        losses.append(loss)
    return dataclasses.replace(model, params=params), np.asarray(losses, np.float64)


def _pretrain_objective(graphs, meta, config, vocab):
    """(loss_fn, make_batch) of ``config.ssl_objective``."""
    if config.ssl_objective == "contrastive":
        return _contrastive_loss, _contrastive_batches(graphs, meta, config, vocab)
    return _wl_loss, _wl_batches(graphs, meta, config, vocab)


def pretrain(
    graphs: Sequence[ArchGraph],
    config: Archi2VecConfig = Archi2VecConfig(),
    seed: int = 0,
    meta: np.ndarray | None = None,
) -> tuple[Archi2VecModel, np.ndarray]:
    """Self-supervised training on a zoo's graphs alone, with ``config.ssl_objective``: WL label
    prediction (``"wl"``) or NT-Xent over two `augment`ed views (``"contrastive"``).

    Returns:
      (model, losses[steps, ensemble]): a model with ``num_outputs = 0`` whose encoder
      `embed` and `init_model` / `fit_supervised` (``init=``) can use; its op vocabulary is
      that of ``graphs``.
    """
    graph_features.check_graphs(graphs)
    meta = _check_meta(meta, len(graphs), config)
    vocab = OpVocabulary.from_graphs(graphs)
    loss_fn, make_batch = _pretrain_objective(graphs, meta, config, vocab)
    model = init_model(config, 0, seed, vocab=vocab)
    steps = config.steps(len(graphs), config.pretrain_epochs)
    return _train(model, len(graphs), loss_fn, make_batch, steps, seed)


def _wl_batches(graphs: Sequence[ArchGraph], meta: np.ndarray | None, config: Archi2VecConfig,
                vocab: OpVocabulary):
    """make_batch for `_train`: the graphs and their WL label distributions
    ``[G_pad, wl_iterations + 1, wl_vocab]`` (module docstring)."""
    labels, _ = graph_features.wl_node_labels(graphs, config.wl_iterations, vocab)
    labels = (labels % np.uint64(config.wl_vocab)).astype(np.int64)  # [N_all, iterations + 1]
    sizes = np.array([g.num_nodes for g in graphs])
    offsets = np.cumsum(sizes) - sizes
    levels = np.arange(config.wl_iterations + 1)

    def make_batch(index, rng):
        batch, batch_meta, info = _batch(graphs, index, meta, vocab)
        rows = np.concatenate([np.arange(offsets[i], offsets[i] + sizes[i]) for i in index])
        graph_of_row = np.repeat(np.arange(len(index)), sizes[index])
        bags = np.zeros((len(info.graph_mask), len(levels), config.wl_vocab), np.float32)
        np.add.at(bags, (graph_of_row[:, None], levels, labels[rows]), 1.0)
        return batch, batch_meta, bags / np.maximum(bags.sum(-1, keepdims=True), 1.0), info.graph_mask

    return make_batch


def _contrastive_batches(graphs: Sequence[ArchGraph], meta: np.ndarray | None, config: Archi2VecConfig,
                         vocab: OpVocabulary):
    """make_batch for `_train`: two `augment`ed views of each graph of the minibatch,
    view i of graph b at rows b and B + b, each the other's partner."""
    op_pool = np.unique(vocab.ids(graphs))

    def make_batch(index, rng):
        views = [augment(graphs[i], rng, config.augment_rate, op_pool, vocab) for _ in range(2) for i in index]
        batch, info = to_graphs_tuple(views, vocab=vocab)
        size, b = len(info.graph_mask), len(index)
        batch_meta = None if meta is None else _pad_rows(np.concatenate([meta[index], meta[index]]), size)
        partner = np.full(size, -1, np.int32)
        partner[: 2 * b] = np.concatenate([np.arange(b, 2 * b), np.arange(b)])
        return batch, batch_meta, partner, info.graph_mask

    return make_batch


def augment(graph: ArchGraph, rng: np.random.Generator, rate: float, op_pool: np.ndarray | None = None,
            vocab: OpVocabulary | None = None) -> ArchGraph:
    """A random view of ``graph`` for the contrastive objective: each node's attributes are
    masked (set missing), each edge dropped, and each node's op substituted by one drawn
    from ``op_pool`` (op ids in ``vocab``; default: all of it), independently with probability
    ``rate`` (input and output nodes keep their op). ``vocab`` defaults to the graph's own;
    the view's op ids are ids in it (its ``extra_ops`` are ``vocab.extra``)."""
    vocab = resolve_vocabulary([graph], vocab)
    pool = np.arange(len(vocab)) if op_pool is None else np.asarray(op_pool)
    n = graph.num_nodes
    masked = rng.random(n) < rate
    keep_edges = rng.random(graph.num_edges) >= rate
    ops = vocab.ids([graph])
    swap = (rng.random(n) < rate) & ~np.isin(ops, _ENDPOINT_OPS)
    ops[swap] = rng.choice(pool, swap.sum())
    return ArchGraph(graph.name, ops, np.where(masked[:, None], 0.0, graph.attrs),
                     graph.attr_mask & ~masked[:, None], graph.edges[keep_edges], vocab.extra)


def fit_supervised(
    graphs: Sequence[ArchGraph],
    targets: np.ndarray,
    mask: np.ndarray | None = None,
    config: Archi2VecConfig = Archi2VecConfig(),
    seed: int = 0,
    init: Archi2VecModel | None = None,
    meta: np.ndarray | None = None,
) -> tuple[Archi2VecModel, np.ndarray]:
    """Trains the encoder and output head to regress ``targets[M, D]`` (masked squared error).

    Args:
      graphs: M training architectures.
      targets: [M, D] per-model targets (e.g. transfer-space vectors); used as given, so
        put them on comparable scales.
      mask: optional bool [M, D] observed targets (default: all).
      config: settings; ``config.epochs`` passes.
      seed: initialisation and minibatch order.
      init: a pretrained model whose encoder (and op vocabulary) to start from (same
        config); without it the op vocabulary is that of ``graphs``.
      meta: [M, config.meta_dim] per-graph metadata when ``config.meta_dim > 0``.

    Returns:
      (model, losses[steps, ensemble]).
    """
    graph_features.check_graphs(graphs)
    targets = np.asarray(targets, np.float32)
    if targets.ndim != 2 or len(targets) != len(graphs) or targets.shape[1] < 1:
        raise ValueError(f"targets: expected shape [M, D] with M = {len(graphs)} graphs, got {targets.shape}")
    mask = np.ones(targets.shape, bool) if mask is None else np.asarray(mask)
    if mask.shape != targets.shape or mask.dtype != np.bool_:
        raise ValueError(f"mask: expected a bool array of shape {targets.shape}, got {mask.dtype} {mask.shape}")
    if not np.isfinite(targets[mask]).all():
        raise ValueError("targets: non-finite values inside mask")
    targets = np.where(mask, targets, 0.0)
    meta = _check_meta(meta, len(graphs), config)
    vocab = init.vocab if init is not None else OpVocabulary.from_graphs(graphs)

    def make_batch(index, rng):
        batch, batch_meta, info = _batch(graphs, index, meta, vocab)
        size = len(info.graph_mask)
        return batch, batch_meta, _pad_rows(targets[index], size), _pad_rows(mask[index], size)

    model = init_model(config, targets.shape[1], seed, init, vocab)
    steps = config.steps(len(graphs), config.epochs)
    return _train(model, len(graphs), _supervised_loss, make_batch, steps, seed)


def fit_cold_start(
    graphs: Sequence[ArchGraph],
    scores: np.ndarray,
    mask: np.ndarray | None = None,
    config: Archi2VecConfig = Archi2VecConfig(),
    seed: int = 0,
    init: Archi2VecModel | None = None,
    meta: np.ndarray | None = None,
) -> Archi2VecModel:
    """Trains on M architectures' task scores[T, M] (mask[T, M], default: finite entries)
    to predict the T tasks' normal scores (`core.records.normal_scores`) of new ones."""
    scores, mask = graph_features.check_cold_start_inputs(graphs, scores, mask)
    z = normal_scores(scores, mask)
    return fit_supervised(graphs, z.T, mask.T, config, seed, init, meta)[0]


# ----------------------------------------------------------------------------- inference


@functools.partial(jax.jit, static_argnames=("network",))
def _forward(params, batch, meta, *, network):
    """(outputs[G_pad, D] averaged over members, emb[G_pad, members * d])."""
    outputs, _, emb, _ = jax.vmap(lambda p: network.apply({"params": p}, batch, meta))(params)
    return outputs.mean(0), emb.transpose(1, 0, 2).reshape(emb.shape[1], -1)


def _forward_all(model: Archi2VecModel, graphs: Sequence[ArchGraph], meta) -> tuple[np.ndarray, np.ndarray]:
    """(outputs[G, D], emb[G, d]) of all graphs, in node-budgeted chunks, op features in the model's vocabulary."""
    graph_features.check_graphs(graphs)
    meta = _check_meta(meta, len(graphs), model.config)
    outputs, embs = [], []
    for index in chunks(graphs, model.config.max_batch_nodes):
        batch, batch_meta, _ = _batch(graphs, index, meta, model.vocab)
        out, emb = _forward(model.params, batch, batch_meta, network=model.network)
        outputs.append(np.asarray(out)[: len(index)])
        embs.append(np.asarray(emb)[: len(index)])
    return np.concatenate(outputs), np.concatenate(embs)


def embed(model: Archi2VecModel, graphs: Sequence[ArchGraph], meta: np.ndarray | None = None) -> np.ndarray:
    """emb[G, ensemble * embed_dim] float32 of graphs: the members' embeddings side by
    side (meta[G, meta_dim] when the config has meta). Op names outside ``model.vocab`` are
    read as `graphs.UNKNOWN_OP`."""
    return _forward_all(model, graphs, meta)[1]


def predict(model: Archi2VecModel, graphs: Sequence[ArchGraph], meta: np.ndarray | None = None) -> np.ndarray:
    """pred[D, G], the members' mean output: for `fit_cold_start`, per-task normal scores
    ``[T, G]`` (higher = better); for `fit_supervised`, estimates of ``targets.T``. Op names
    outside ``model.vocab`` are read as `graphs.UNKNOWN_OP`."""
    if model.num_outputs == 0:
        raise ValueError("model: has no supervised head (pretrained only); use embed, or fit_supervised first")
    return _forward_all(model, graphs, meta)[0].T


def fit_vector_map(emb: np.ndarray, vecs: np.ndarray, l2=ridge.DEFAULT_L2_GRID) -> RidgeMap:
    """Ridge map ``vecs[M, D] ~ emb[M, d_e] @ W + b`` (`core.ridge.fit_ridge`: features
    scaled inside, l2 chosen per column by leave-one-out); apply with ``map.apply(emb[G, d_e])``."""
    return ridge.fit_ridge(emb, vecs, l2=l2)
