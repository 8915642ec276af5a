"""Neural architectures as layer-level dataflow graphs, batched for graph networks.

An `ArchGraph` has one node per layer-level operation (op types from the shared
vocabulary `OPS` or the graph's own ``extra_ops``, numeric attributes from `ATTRS`) and one
directed edge per dataflow dependency. Graphs come from:

* `from_flax` / `from_function`: traces a Flax module (or any ``fn(params, x)``)
  to a jaxpr and collapses its primitives to layers (`LayerGraphBuilder`);
* `load_jsonl` / `save_jsonl`: one architecture per line,
  ``{"model": str, "nodes": [{"op": str, "attrs": {str: number}}], "edges": [[src, dst], ...]}``;
  op names are read by `canonical_op` (built-in names, known aliases, kernel sizes in names
  such as ``sep_conv_5x5``), and every other name stays its own op type;
* `from_nas_bench_graph` / `from_nas_bench_graph_table`: the NAS-Bench-Graph space;
* `fennec_jax.archs.onnx_import.from_onnx` (optional ``onnx`` dependency).

Op vocabularies. Op ids below ``len(OPS)`` name the built-in op types in every graph; a
graph's ids ``len(OPS) + j`` name its ``extra_ops[j]`` (a user's own op names). Whatever is
fitted on graphs (features, archi2vec) works in an `OpVocabulary`: `OPS`, then the extra op
names seen in the training graphs, sorted; an op name it has not seen maps to `UNKNOWN_OP`.
The built-in vocabulary (`BUILTIN_VOCABULARY`, no extra names) is `OPS` itself, so graphs of
built-in ops featurise exactly as they did before vocabularies.

`to_graphs_tuple` turns a list of graphs into one padded ``jraph.GraphsTuple`` whose
sizes come from a few fixed buckets, so a jitted graph network compiles a handful
of shapes. Node features, ``nodes[N, V + 2 * len(ATTRS)]`` for a vocabulary of V op types
(``V + 2 * len(ATTRS) = NODE_FEATURE_DIM`` for the built-in one)::

    [0, V)                          one-hot op type (its id in the vocabulary)
    [V, V + len(ATTRS))             log1p(attribute value), 0 where missing
    [V + len(ATTRS), V + 2 len(ATTRS))  1.0 where the attribute is present

Edge features, ``edges[E, EDGE_FEATURE_DIM]``: ``[1, 0]`` for a dataflow edge
(source -> consumer), ``[0, 1]`` for its added reverse copy (``reverse_edges=True``).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import functools
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.extend.core as jcore
import numpy as np

from fennec_jax.core import atomic_io
from fennec_jax.archs import nas_bench_graph as nbg
from fennec_jax.archs._jraph import jraph

__all__ = [
    "align_graphs",
    "OPS",
    "UNKNOWN_OP",
    "OpVocabulary",
    "BUILTIN_VOCABULARY",
    "resolve_vocabulary",
    "canonical_op",
    "ATTRS",
    "NODE_FEATURE_DIM",
    "EDGE_FEATURE_DIM",
    "DEFAULT_BUCKET_SIZES",
    "ArchGraph",
    "BatchInfo",
    "to_graphs_tuple",
    "load_jsonl",
    "save_jsonl",
    "from_nas_bench_graph",
    "from_nas_bench_graph_table",
    "LayerGraphBuilder",
    "from_function",
    "from_flax",
]

_log = logging.getLogger(__name__)

# Layer-level op types. Norms: batch_norm normalises with statistics over the batch
# (or running averages of them); layer_norm with per-example statistics (LayerNorm,
# RMSNorm, GroupNorm, InstanceNorm). relu covers the piecewise-linear family (relu6,
# leaky relu, elu, selu, softplus); swish covers x * sigmoid(x) (silu, hard swish,
# mish). gcn ... skip are the NAS-Bench-Graph operations (`nas_bench_graph.OP_NAMES`).
OPS = (
    "input",
    "output",
    "conv",
    "depthwise_conv",
    "dense",
    "batch_norm",
    "layer_norm",
    "relu",
    "gelu",
    "sigmoid",
    "swish",
    "tanh",
    "softmax",
    "max_pool",
    "avg_pool",
    "global_pool",
    "add",
    "mul",
    "concat",
    "attention",
    "embedding",
    "reshape",
    "dropout",
    "gcn",
    "gat",
    "sage",
    "gin",
    "cheb",
    "arma",
    "graph",
    "fc",
    "skip",
    "other",
)
# Numeric node attributes, all >= 0. channels_in / channels_out: input and output
# features (conv, dense, norms; vocabulary size and embedding width for embedding);
# kernel_size / stride / dilation: largest over the spatial axes; groups: conv
# feature groups; expansion: inverted-bottleneck expansion ratio; heads: attention
# heads; features: attention features per head; params: learned weights of the node.
ATTRS = (
    "channels_in",
    "channels_out",
    "kernel_size",
    "stride",
    "dilation",
    "groups",
    "expansion",
    "heads",
    "features",
    "params",
)
# The op type of a node whose op a vocabulary does not know (an op name unseen at fit time);
# also what the tracers call an op they cannot name.
UNKNOWN_OP = "other"
NODE_FEATURE_DIM = len(OPS) + 2 * len(ATTRS)
EDGE_FEATURE_DIM = 2
DEFAULT_BUCKET_SIZES = tuple(2**k for k in range(4, 25))

_OP_INDEX = {op: i for i, op in enumerate(OPS)}
_UNKNOWN_ID = _OP_INDEX[UNKNOWN_OP]
_ATTR_INDEX = {attr: i for i, attr in enumerate(ATTRS)}
_NAS_BENCH_GRAPH_OPS = np.array([_OP_INDEX[op] for op in ("input", *nbg.OP_NAMES, "output")], np.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class ArchGraph:
    """One architecture: N layer-level nodes and E directed dataflow edges. Arrays are read-only.

    Attributes:
      name: the model's name.
      ops: [N] int32 op ids: ``i < len(OPS)`` is ``OPS[i]``, ``len(OPS) + j`` is ``extra_ops[j]``.
      attrs: [N, len(ATTRS)] float32 attribute values, 0 where missing.
      attr_mask: [N, len(ATTRS)] bool, True where the attribute is present.
      edges: [E, 2] int32 (source, target) node indices, 0-based.
      extra_ops: distinct op names outside `OPS` (a user's own op types; empty for graphs
        of built-in ops).
    """

    name: str
    ops: np.ndarray
    attrs: np.ndarray
    attr_mask: np.ndarray
    edges: np.ndarray
    extra_ops: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name: expected a non-empty string, got {self.name!r}")
        extra = _extra_names(self.extra_ops, "extra_ops")
        ops = _int_array(self.ops, "ops")
        if ops.ndim != 1 or len(ops) == 0:
            raise ValueError(f"ops: expected a non-empty 1-D array of op ids, got shape {ops.shape}")
        num_ops = len(OPS) + len(extra)
        if ((ops < 0) | (ops >= num_ops)).any():
            raise ValueError(f"ops: op ids must lie in [0, {num_ops}), got {ops[(ops < 0) | (ops >= num_ops)][:5]}")
        n = len(ops)
        attrs = np.asarray(self.attrs, np.float32)
        mask = np.asarray(self.attr_mask)
        for array, arg in ((attrs, "attrs"), (mask, "attr_mask")):
            if array.shape != (n, len(ATTRS)):
                raise ValueError(f"{arg}: expected shape ({n}, {len(ATTRS)}), got {array.shape}")
        if mask.dtype != np.bool_:
            raise ValueError(f"attr_mask: expected a bool array, got {mask.dtype}")
        if not (np.isfinite(attrs).all() and (attrs >= 0).all()):
            raise ValueError("attrs: attribute values must be finite and >= 0")
        if (attrs[~mask] != 0).any():
            raise ValueError("attrs: values must be 0 where attr_mask is False")
        edges = _int_array(self.edges, "edges")
        if edges.size == 0:
            edges = edges.reshape(0, 2)
        if edges.ndim != 2 or edges.shape[1] != 2:
            raise ValueError(f"edges: expected shape [E, 2], got {edges.shape}")
        if ((edges < 0) | (edges >= n)).any():
            bad = edges[((edges < 0) | (edges >= n)).any(1)][:5].tolist()
            raise ValueError(f"edges: node indices must lie in [0, {n}), got {bad}")
        if (edges[:, 0] == edges[:, 1]).any():
            loops = edges[edges[:, 0] == edges[:, 1]][:5].tolist()
            raise ValueError(f"edges: self-loops are not dataflow, got {loops}")
        for field, array in (("ops", ops), ("attrs", attrs), ("attr_mask", mask), ("edges", edges)):
            array = np.array(array)  # A private copy, so no caller can change it.
            array.setflags(write=False)
            object.__setattr__(self, field, array)
        object.__setattr__(self, "extra_ops", extra)

    @classmethod
    def from_ops(
        cls,
        name: str,
        ops: Sequence[str],
        edges: Sequence[Sequence[int]] | np.ndarray,
        attrs: Sequence[Mapping[str, float]] | None = None,
        *,
        extra_ops: Sequence[str] = (),
    ) -> ArchGraph:
        """Builds a graph from op names (`OPS` or ``extra_ops``, a graph's own op types), edges
        [E, 2] and per-node ``{attr: value}`` dicts."""
        extra = _extra_names(extra_ops, "extra_ops")
        index = {**_OP_INDEX, **{op: len(OPS) + j for j, op in enumerate(extra)}} if extra else _OP_INDEX
        unknown = sorted({op for op in ops if op not in index})
        if unknown:
            raise ValueError(f"ops: unknown op types {unknown}; expected names from OPS or extra_ops")
        if attrs is not None and len(attrs) != len(ops):
            raise ValueError(f"attrs: expected one dict per node ({len(ops)}), got {len(attrs)}")
        values, mask = _attr_arrays(attrs if attrs is not None else [{}] * len(ops))
        return cls(name, np.array([index[op] for op in ops], np.int32), values, mask, np.asarray(edges), extra)

    @property
    def num_nodes(self) -> int:
        return len(self.ops)

    @property
    def num_edges(self) -> int:
        return len(self.edges)

    @property
    def op_names(self) -> tuple[str, ...]:
        """[N] op type names."""
        names = OPS + self.extra_ops
        return tuple(names[i] for i in self.ops)

    def node_attrs(self, node: int) -> dict[str, float]:
        """``{attr: value}`` of the attributes present on one node."""
        return {ATTRS[a]: float(self.attrs[node, a]) for a in np.flatnonzero(self.attr_mask[node])}

    def op_counts(self) -> collections.Counter:
        """Counter of op type names."""
        return collections.Counter(self.op_names)


def _extra_names(names: Sequence[str], arg: str) -> tuple[str, ...]:
    """names as a tuple of distinct non-empty strings outside `OPS`; ValueError naming ``arg``."""
    if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{arg}: expected a sequence of non-empty op names, got {names!r}")
    names = tuple(names)
    if len(set(names)) != len(names):
        raise ValueError(f"{arg}: op names must be distinct, got {names!r}")
    builtin = [n for n in names if n in _OP_INDEX]
    if builtin:
        raise ValueError(f"{arg}: {builtin} are built-in op types (OPS); only names outside OPS belong here")
    return names


def _int_array(value, arg: str) -> np.ndarray:
    array = np.asarray(value)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{arg}: expected integers, got dtype {array.dtype}")
    return array.astype(np.int32)


def _attr_arrays(attrs: Sequence[Mapping[str, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-node ``{attr: value}`` dicts -> (values [N, A] float32, mask [N, A] bool)."""
    values = np.zeros((len(attrs), len(ATTRS)), np.float32)
    mask = np.zeros((len(attrs), len(ATTRS)), bool)
    for node, node_attrs in enumerate(attrs):
        for attr, value in node_attrs.items():
            if attr not in _ATTR_INDEX:
                raise ValueError(f"attrs: node {node}: unknown attribute {attr!r}; expected names from ATTRS")
            values[node, _ATTR_INDEX[attr]] = value
            mask[node, _ATTR_INDEX[attr]] = True
    return values, mask


# ----------------------------------------------------------------------------- op vocabularies


@dataclasses.dataclass(frozen=True)
class OpVocabulary:
    """The op types a fitted model (or a feature matrix) knows, and their ids.

    ``names`` is `OPS` (ids ``0 .. len(OPS) - 1``, the same in every vocabulary) followed by
    ``extra``: op names outside `OPS` (`from_graphs`: those the graphs use, sorted, so the
    order does not depend on the order of the graphs). `ids` gives every node its id here; a
    name the vocabulary lacks (an op unseen at fit time) gets the id of `UNKNOWN_OP`. Save a
    vocabulary as ``names`` and restore it with `from_names`.

    Attributes:
      extra: distinct op names outside `OPS`.
    """

    extra: tuple[str, ...] = ()
    _index: dict[str, int] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        extra = _extra_names(self.extra, "extra")
        object.__setattr__(self, "extra", extra)
        object.__setattr__(self, "_index", {op: len(OPS) + j for j, op in enumerate(extra)})

    @classmethod
    def from_graphs(cls, graphs: Iterable[ArchGraph]) -> OpVocabulary:
        """The vocabulary of the op names ``graphs`` use: `OPS`, then their other names sorted."""
        used: dict[tuple[str, ...], set[int]] = {}
        for graph in graphs:
            if graph.extra_ops:
                used.setdefault(graph.extra_ops, set()).update(np.unique(graph.ops[graph.ops >= len(OPS)]).tolist())
        return cls(tuple(sorted({extra[i - len(OPS)] for extra, ids in used.items() for i in ids})))

    @classmethod
    def from_names(cls, names: Sequence[str]) -> OpVocabulary:
        """The vocabulary whose ``names`` are ``names`` (as saved with a fitted state).

        Raises:
          ValueError: ``names`` does not start with this version's `OPS`.
        """
        names = tuple(names)
        if names[: len(OPS)] != OPS:
            raise ValueError(f"names: an op vocabulary starts with the built-in OPS {OPS}, got {names[:len(OPS)]}")
        return cls(names[len(OPS) :])

    @property
    def names(self) -> tuple[str, ...]:
        """[V] op names by id."""
        return OPS + self.extra

    def __len__(self) -> int:
        return len(OPS) + len(self.extra)

    def ids(self, graphs: Iterable[ArchGraph]) -> np.ndarray:
        """int32[N]: the id here of every node of ``graphs`` (concatenated in order); an op
        name this vocabulary lacks gets the id of `UNKNOWN_OP`."""
        tables: dict[tuple[str, ...], np.ndarray] = {}
        parts = []
        for graph in graphs:
            if not graph.extra_ops:
                parts.append(graph.ops)
                continue
            table = tables.get(graph.extra_ops)
            if table is None:
                extra_ids = [self._index.get(op, _UNKNOWN_ID) for op in graph.extra_ops]
                table = tables[graph.extra_ops] = np.array([*range(len(OPS)), *extra_ids], np.int32)
            parts.append(table[graph.ops])
        return np.concatenate(parts).astype(np.int32, copy=False)

    def unseen(self, graphs: Iterable[ArchGraph]) -> list[str]:
        """Sorted op names that ``graphs`` use and this vocabulary lacks (`ids` maps them to `UNKNOWN_OP`)."""
        return sorted(set(OpVocabulary.from_graphs(graphs).extra) - set(self.extra))


BUILTIN_VOCABULARY = OpVocabulary()


def resolve_vocabulary(graphs: Sequence[ArchGraph], vocab: OpVocabulary | None) -> OpVocabulary:
    """``vocab`` (checked), or when None the vocabulary of ``graphs`` (`OpVocabulary.from_graphs`)."""
    if vocab is None:
        return OpVocabulary.from_graphs(graphs)
    if not isinstance(vocab, OpVocabulary):
        raise ValueError(f"vocab: expected an OpVocabulary, got {type(vocab).__name__}")
    return vocab


# Aliases of op types in other code bases' names (after `_normalized`): to built-in ops, or to
# "zero" (the DARTS / NAS-Bench-201 zero op, no built-in equivalent).
_OP_ALIASES = {
    "identity": "skip",
    "skip_connect": "skip",
    "skip_connection": "skip",
    "none": "zero",
    "zero": "zero",
    "batchnorm": "batch_norm",
    "bn": "batch_norm",
    "layernorm": "layer_norm",
    "maxpool": "max_pool",
    "avgpool": "avg_pool",
    "global_avg_pool": "global_pool",
    "global_max_pool": "global_pool",
    "concatenate": "concat",
    "self_attention": "attention",
    "multi_head_attention": "attention",
}
# A square kernel in the name: conv3x3, conv_3x3, nor_conv_3x3 (NAS-Bench-201), sep_conv_5x5 and
# dil_conv_3x3 (DARTS), max_pool_3x3, avgpool3x3, ...
_KERNEL_NAME = re.compile(r"(?P<kind>nor_?conv|sep_?conv|dil_?conv|dw_?conv|depthwise_?conv|conv|avg_?pool|max_?pool)"
                          r"_?(?P<k>[1-9][0-9]*)x(?P<k2>[1-9][0-9]*)")
# Kind (underscores removed) -> (op, attributes besides the kernel). DARTS' dil_conv is a
# depthwise-separable conv with dilation 2 (its only definition in use); sep_conv (DARTS) and
# dw_conv are depthwise-separable convs of dilation 1.
_KERNEL_KINDS = {
    "conv": ("conv", {}),
    "norconv": ("conv", {}),
    "sepconv": ("depthwise_conv", {}),
    "dwconv": ("depthwise_conv", {}),
    "depthwiseconv": ("depthwise_conv", {}),
    "dilconv": ("depthwise_conv", {"dilation": 2.0}),
    "avgpool": ("avg_pool", {}),
    "maxpool": ("max_pool", {}),
}


def _normalized(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def canonical_op(name: str) -> tuple[str, dict[str, float]]:
    """(op type, attributes) that an op name in a user's file stands for.

    A name of `OPS` is itself. Otherwise, compared lower-case with ``-`` and spaces read as
    ``_``: a built-in name (``Conv``), a known alias (``identity`` / ``skip_connect`` -> ``skip``,
    NAS-Bench-Graph's identity; ``none`` / ``zero`` -> ``zero``; ``relu6`` -> ``relu``, ...), or
    a square kernel (``conv3x3`` / ``conv_3x3`` / ``nor_conv_3x3`` -> ``conv`` with
    ``kernel_size`` 3; ``sep_conv_5x5`` -> ``depthwise_conv`` 5; ``dil_conv_3x3`` ->
    ``depthwise_conv`` 3 with ``dilation`` 2; ``avg_pool_3x3``, ``max_pool_3x3``). Any other
    name, including composites such as ``conv3x3-bn-relu`` or ``conv_7x1_1x7``, is its own op
    type, kept as written.
    """
    op, attrs = _canonical(name)
    return op, dict(attrs)


@functools.lru_cache(maxsize=4096)
def _canonical(name: str) -> tuple[str, tuple[tuple[str, float], ...]]:
    if name in _OP_INDEX:
        return name, ()
    key = _normalized(name)
    alias = key if key in _OP_INDEX else _OP_ALIASES.get(key) or _NAMED_ACTIVATIONS.get(key)
    if alias is not None:
        return alias, ()
    match = _KERNEL_NAME.fullmatch(key)
    if match is not None and match["k"] == match["k2"]:
        op, attrs = _KERNEL_KINDS[match["kind"].replace("_", "")]
        return op, (("kernel_size", float(match["k"])), *attrs.items())
    return name, ()


# ----------------------------------------------------------------------------- batching


@dataclasses.dataclass(frozen=True)
class BatchInfo:
    """What `to_graphs_tuple` padded, all arrays host-side numpy.

    Attributes:
      names: [G] names of the real graphs, in batch order.
      graph_mask: [G_pad] True for the G real graphs (the first G).
      node_mask: [N_pad] True for real nodes.
      edge_mask: [E_pad] True for real edges (including added reverse edges).
    """

    names: tuple[str, ...]
    graph_mask: np.ndarray
    node_mask: np.ndarray
    edge_mask: np.ndarray


def to_graphs_tuple(
    graphs: Sequence[ArchGraph],
    *,
    vocab: OpVocabulary | None = None,
    bucket_sizes: Sequence[int] = DEFAULT_BUCKET_SIZES,
    reverse_edges: bool = True,
) -> tuple[Any, BatchInfo]:
    """Batches graphs into one padded ``jraph.GraphsTuple`` (see the module docstring for features).

    The padded node count is the smallest bucket > total nodes (jraph's padding graph
    needs a node), the edge count the smallest bucket >= total edges, the graph count
    the smallest bucket > G; so batches of similar size share shapes under ``jit``.

    Args:
      graphs: G >= 1 graphs.
      vocab: the op vocabulary of the one-hot op features (a fitted model's); default the
        graphs' own (`OpVocabulary.from_graphs`: `OPS` for graphs of built-in ops).
      bucket_sizes: increasing positive sizes to round node, edge and graph counts up to.
      reverse_edges: also add each edge reversed (edge feature ``[0, 1]``), so message
        passing sees both directions.

    Returns:
      (graphs_tuple, info): nodes float32[N_pad, len(vocab) + 2 * len(ATTRS)], edges
      float32[E_pad, EDGE_FEATURE_DIM], senders / receivers int32[E_pad], n_node /
      n_edge int32[G_pad], globals None; `BatchInfo` masks of the real parts.
    """
    if isinstance(graphs, ArchGraph) or not graphs or not all(isinstance(g, ArchGraph) for g in graphs):
        raise ValueError(f"graphs: expected a non-empty sequence of ArchGraph, got {type(graphs).__name__}")
    buckets = np.asarray(bucket_sizes)
    if buckets.ndim != 1 or not len(buckets) or not np.issubdtype(buckets.dtype, np.integer):
        raise ValueError(f"bucket_sizes: expected a non-empty 1-D sequence of ints, got {bucket_sizes!r}")
    if buckets[0] < 1 or (np.diff(buckets) <= 0).any():
        raise ValueError(f"bucket_sizes: expected strictly increasing positive sizes, got {buckets.tolist()}")

    vocab = resolve_vocabulary(graphs, vocab)
    directions = 2 if reverse_edges else 1
    n_node = np.array([g.num_nodes for g in graphs], np.int32)
    n_edge = np.array([g.num_edges for g in graphs], np.int32) * directions
    op_ids = vocab.ids(graphs)
    attrs = np.concatenate([g.attrs for g in graphs])
    mask = np.concatenate([g.attr_mask for g in graphs])
    nodes = np.concatenate([np.eye(len(vocab), dtype=np.float32)[op_ids], np.log1p(attrs), mask.astype(np.float32)], 1)
    # Edges stay grouped by graph (jraph needs that): each graph's forward edges, then their reverses.
    pairs, kinds = [], []
    for graph, offset in zip(graphs, np.cumsum(n_node) - n_node):
        forward = graph.edges + offset
        pairs += [forward, forward[:, ::-1]][:directions]
        kinds.append(np.repeat(np.eye(EDGE_FEATURE_DIM, dtype=np.float32)[:directions], graph.num_edges, axis=0))
    pairs = np.concatenate(pairs).astype(np.int32)
    batch = jraph.GraphsTuple(
        nodes=nodes,
        edges=np.concatenate(kinds),
        senders=pairs[:, 0],
        receivers=pairs[:, 1],
        n_node=n_node,
        n_edge=n_edge,
        globals=None,
    )
    total_nodes, total_edges, num_graphs = int(n_node.sum()), int(n_edge.sum()), len(graphs)
    pad_nodes = _bucket(total_nodes + 1, buckets, "nodes")
    pad_edges = _bucket(total_edges, buckets, "edges")
    pad_graphs = _bucket(num_graphs + 1, buckets, "graphs")
    padded = jraph.pad_with_graphs(batch, pad_nodes, pad_edges, pad_graphs)
    info = BatchInfo(
        names=tuple(g.name for g in graphs),
        graph_mask=np.arange(pad_graphs) < num_graphs,
        node_mask=np.arange(pad_nodes) < total_nodes,
        edge_mask=np.arange(pad_edges) < total_edges,
    )
    return padded, info


def _bucket(needed: int, buckets: np.ndarray, what: str) -> int:
    fits = buckets[buckets >= needed]
    if not len(fits):
        raise ValueError(f"bucket_sizes: largest bucket {int(buckets[-1])} < {needed} {what} needed")
    return int(fits[0])


# ----------------------------------------------------------------------------- JSON lines


def load_jsonl(path: str | os.PathLike) -> list[ArchGraph]:
    """Reads one architecture per non-blank line (format in the module docstring).

    Each op name goes through `canonical_op`: built-in names and known aliases become the
    built-in op, with the attributes the name gives (``sep_conv_5x5``: ``kernel_size`` 5)
    where the node does not give them itself; every other name stays its own op type (in
    the graph's ``extra_ops``, sorted), so a file in its own op names keeps them apart. The
    names kept are logged once per file. Unknown attribute names are dropped, counted and
    logged as one warning per file.

    Raises:
      ValueError: ``"<path>:<line>: ..."`` for bad JSON, a missing key, an edge index
        out of range or a non-numeric attribute.
    """
    graphs, dropped, extras = [], collections.Counter(), {}
    with open(path, "rb") as stream:
        for lineno, raw in enumerate(stream, 1):
            try:
                line = raw.decode("utf-8")
                if line.strip():
                    graphs.append(_graph_from_record(json.loads(line), dropped, extras))
            except (ValueError, TypeError, KeyError, OverflowError, RecursionError) as exc:
                raise ValueError(f"{path}:{lineno}: {_describe(exc)}") from None
    if dropped:
        _log.warning("%s: dropped unknown attribute names: %s", path, dict(dropped))
    kept = sorted(set().union(*extras))
    if kept:
        _log.info("%s: %d op names outside the built-in ops kept as their own op types: %s", path, len(kept), kept)
    return graphs


def _describe(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"byte 0x{exc.object[exc.start]:02x} at column {exc.start + 1} is not UTF-8; expected a UTF-8 JSON object"
    if isinstance(exc, json.JSONDecodeError):
        return f"bad JSON ({exc.msg} at column {exc.colno}); expected one JSON object per line"
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply; expected {\"model\": ..., \"nodes\": [...], \"edges\": [...]}"
    if isinstance(exc, KeyError):
        return f"missing key {exc.args[0]!r}; expected keys model, nodes, edges (nodes with op)"
    return " ".join(str(exc).split())[:300]


def _graph_from_record(record: Any, dropped: collections.Counter, extras: dict) -> ArchGraph:
    """One line's graph; counts dropped attribute names, and shares equal ``extra_ops`` tuples
    through ``extras`` (so `OpVocabulary.ids` maps them once per file)."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    name, nodes, edges = record["model"], record["nodes"], record["edges"]
    if not isinstance(nodes, list) or not all(isinstance(node, dict) for node in nodes):
        raise ValueError("'nodes': expected a list of objects")
    ops, attrs = [], []
    for i, node in enumerate(nodes):
        op = node["op"]
        if not isinstance(op, str) or not op:
            raise ValueError(f"node {i}: 'op' must be a non-empty string, got {op!r}")
        op, named_attrs = canonical_op(op)
        node_attrs = node.get("attrs", {})
        if not isinstance(node_attrs, dict):
            raise ValueError(f"node {i}: 'attrs' must be an object, got {node_attrs!r}")
        for attr, value in node_attrs.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"node {i}: attribute {attr!r} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"node {i}: attribute {attr!r} must be finite and >= 0, got {value!r}")
        known = {attr: value for attr, value in node_attrs.items() if attr in _ATTR_INDEX}
        dropped.update(f"attr:{attr}" for attr in node_attrs.keys() - known.keys())
        ops.append(op)
        attrs.append({**named_attrs, **known})
    if not isinstance(edges, list) or not all(
        isinstance(e, list) and len(e) == 2 and all(type(i) is int for i in e) for e in edges
    ):
        raise ValueError("'edges': expected a list of [src, dst] integer pairs")
    extra = tuple(sorted({op for op in ops if op not in _OP_INDEX}))
    extra = extras.setdefault(extra, extra)
    return ArchGraph.from_ops(name, ops, np.array(edges, np.int64).reshape(-1, 2), attrs, extra_ops=extra)


def save_jsonl(graphs: Iterable[ArchGraph], path: str | os.PathLike) -> None:
    """Writes graphs one per line, atomically, in the format `load_jsonl` reads."""
    lines = []
    for graph in graphs:
        nodes = []
        for i, op in enumerate(graph.op_names):
            node_attrs = {attr: _json_number(value) for attr, value in graph.node_attrs(i).items()}
            nodes.append({"op": op, "attrs": node_attrs} if node_attrs else {"op": op})
        record = {"model": graph.name, "nodes": nodes, "edges": graph.edges.tolist()}
        lines.append(json.dumps(record, separators=(",", ":")) + "\n")
    atomic_io.write_text(os.fspath(path), "".join(lines))


def _json_number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


# ----------------------------------------------------------------------------- NAS-Bench-Graph


def from_nas_bench_graph(links_row: Sequence[int], ops_row: Sequence[int], name: str) -> ArchGraph:
    """One NAS-Bench-Graph architecture: input, its 4 GNN ops (`nas_bench_graph.arch_dag`), output."""
    node_ops, edges = nbg.arch_dag(links_row, ops_row)
    return ArchGraph.from_ops(name, node_ops, np.array(edges, np.int32))


def from_nas_bench_graph_table(table: nbg.NasBenchGraphTable) -> list[ArchGraph]:
    """[M] graphs of a `nas_bench_graph.load_table` table, in row order, named ``nas_bench_graph:<hash>``.

    Rows share edge arrays by link pattern (one `nas_bench_graph.arch_dag` call per
    distinct pattern), so all 26,206 architectures convert in well under a second.
    """
    links, ops = np.asarray(table.links), np.asarray(table.ops)
    if links.shape != ops.shape or links.ndim != 2 or links.shape[1] != nbg.NUM_OP_NODES:
        raise ValueError(
            f"table: expected links and ops of shape [M, {nbg.NUM_OP_NODES}], got {links.shape}, {ops.shape}"
        )
    if len(table.arch_hashes) != len(links):
        raise ValueError(f"table: {len(table.arch_hashes)} arch_hashes for {len(links)} rows")
    if ((ops < 0) | (ops >= len(nbg.OP_NAMES))).any():
        raise ValueError(f"table: op ids must lie in [0, {len(nbg.OP_NAMES)})")
    patterns, pattern_of_row = np.unique(links, axis=0, return_inverse=True)
    # arch_dag validates each link pattern; a template graph validates the shared arrays.
    templates = [from_nas_bench_graph(pattern, [0] * nbg.NUM_OP_NODES, "template") for pattern in patterns]
    column = np.ones_like(ops[:, :1])
    node_ops = _NAS_BENCH_GRAPH_OPS[np.concatenate([0 * column, ops + 1, -column], 1)]  # [M, 6]
    node_ops.setflags(write=False)
    return [
        _validated_graph(f"nas_bench_graph:{arch_hash}", row_ops, templates[pattern])
        for arch_hash, row_ops, pattern in zip(table.arch_hashes, node_ops, pattern_of_row.ravel().tolist())
    ]


def _validated_graph(name: str, ops: np.ndarray, template: ArchGraph) -> ArchGraph:
    """template with its ops replaced by a read-only [N] row already checked by the caller;
    skips ArchGraph's per-graph checks, for bulk conversion."""
    graph = object.__new__(ArchGraph)
    object.__setattr__(graph, "name", name)
    object.__setattr__(graph, "ops", ops)
    for field in ("attrs", "attr_mask", "edges", "extra_ops"):
        object.__setattr__(graph, field, getattr(template, field))
    return graph


# ----------------------------------------------------------------------------- layer graphs from dataflow


@dataclasses.dataclass(frozen=True, slots=True)
class _Weight:
    """A value that does not depend on the model input (parameters, constants, shapes).

    learned: derived from a parameter or captured array, not from literals alone.
    tags: "inv_std" (passed through rsqrt / sqrt), "random" (derived from random bits).
    """

    shape: tuple[int, ...]
    learned: bool
    tags: frozenset[str]


@dataclasses.dataclass(frozen=True, slots=True)
class _Act:
    """A value computed from the model input.

    producers: graph nodes whose outputs it is an elementwise function of.
    reductions: ids of the reductions (sums, maxima over axes) it derives from that no
      node stands for yet: statistics inside a norm or softmax, or a global pool if the
      value reaches a layer.
    tags: pattern hints since the last node: "cube" (x**3, tanh-gelu), "exp" (softmax
      numerator), "inv_std" (rsqrt / sqrt of statistics), "batch_stat" (statistics over
      the batch axis).
    """

    shape: tuple[int, ...]
    producers: frozenset[int]
    reductions: frozenset[int]
    tags: frozenset[str]


_Value = _Weight | _Act
_NO_TAGS: frozenset[str] = frozenset()
# Ops whose node absorbs a following mul / div by the tensor they were computed from
# (x * sigmoid(x) is swish; x * 0.5 * (1 + tanh(..)) is gelu).
_GATES = frozenset({"sigmoid", "swish", "gelu", "tanh", "relu", "softmax"})
_BINARY_OPS = {"add": "add", "sub": "add", "mul": "mul", "div": "mul"}


def _size(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


class LayerGraphBuilder:
    """Collapses a primitive-level dataflow graph into an `ArchGraph` of layers.

    Importers (`from_function`, `fennec_jax.archs.onnx_import.from_onnx`) walk their
    primitives in dataflow order and call these methods with opaque values: every
    method takes the input values and output shape and returns the output value.
    Elementwise work on a tensor stays part of the node that produced it; patterns
    spanning several primitives are recognised here, once for all importers:

    * norms: statistics reduced from a tensor, passed through rsqrt / sqrt and
      multiplied back into it -> layer_norm, or batch_norm if reduced over axis 0; a
      tensor times a learned rsqrt / sqrt weight (running variance) -> batch_norm;
    * softmax: exp(x) divided by a reduction of itself -> softmax, absorbed into an
      attention node it normalises;
    * attention: a product of two input-dependent tensors -> attention, and a
      product with an attention node's output joins that node;
    * x * f(x) for an activation f joins f's node (sigmoid becomes swish); tanh of
      an expression with x**3 is gelu; erf is gelu;
    * a reduction that reaches a layer without being used as statistics -> global_pool;
    * a tensor combined with random bits -> dropout.
    """

    def __init__(self):
        self._ops: list[str] = []
        self._attrs: list[dict[str, float]] = []
        self._preds: list[set[int]] = []
        self._pools: dict[tuple[frozenset[int], frozenset[int]], int] = {}
        self._num_reductions = 0
        self._input = self._node("input", (), {})

    # -- values

    def input(self, shape: Sequence[int]) -> _Act:
        """A value of the model input (all input tensors share the one input node)."""
        return _Act(tuple(shape), frozenset({self._input}), frozenset(), _NO_TAGS)

    @staticmethod
    def weight(shape: Sequence[int], *, learned: bool = True, random: bool = False) -> _Weight:
        """A parameter (learned) or constant, or random bits (``random=True``)."""
        return _Weight(tuple(shape), learned, frozenset({"random"}) if random else _NO_TAGS)

    @staticmethod
    def is_activation(value: _Value) -> bool:
        return isinstance(value, _Act)

    # -- layers and patterns

    def layer(self, op: str, inputs: Sequence[_Value], shape: Sequence[int], attrs: Mapping[str, float] = ()) -> _Value:
        """A node of type ``op`` reading the input-dependent ``inputs``; weights only give a weight."""
        acts = [self._full(v) for v in inputs if isinstance(v, _Act)]
        if not acts:
            return self._weight_of(inputs, shape)
        node = self._node(op, frozenset().union(*(a.producers for a in acts)), dict(attrs))
        return self._out(node, shape)

    def activation(self, op: str, x: _Value, shape: Sequence[int]) -> _Value:
        """A named activation (``op`` in `OPS`) of x; softmax of attention scores joins the attention node."""
        if not isinstance(x, _Act):
            return self._weight_of([x], shape)
        x = self._full(x)
        if op == "softmax" and self._attention_of(x.producers) is not None:
            return dataclasses.replace(x, shape=tuple(shape), tags=_NO_TAGS)
        return self._out(self._node(op, x.producers, {}), shape)

    def unary(self, kind: str, x: _Value, shape: Sequence[int]) -> _Value:
        """Elementwise function of one value.

        kind: "relu" (max(x, 0)), "tanh", "sigmoid", "erf", "exp", "rsqrt" (also sqrt),
        "cube" (x**3), or "none" (any other elementwise function).
        """
        shape = tuple(shape)
        if isinstance(x, _Weight):
            tags = x.tags | ({"inv_std"} if kind == "rsqrt" and x.learned else set())
            return _Weight(shape, x.learned, frozenset(tags))
        if x.reductions:  # Statistics: clamps and transforms stay part of the pattern.
            tags = x.tags | ({"inv_std"} if kind == "rsqrt" else set())
            return dataclasses.replace(x, shape=shape, tags=frozenset(tags))
        if kind in ("relu", "sigmoid", "tanh", "erf"):
            op = {"relu": "relu", "sigmoid": "sigmoid", "erf": "gelu"}.get(kind, "gelu" if "cube" in x.tags else "tanh")
            return self._out(self._node(op, x.producers, {}), shape)
        tags = x.tags | ({kind} if kind in ("exp", "cube") else set())
        return dataclasses.replace(x, shape=shape, tags=frozenset(tags))

    def binary(self, kind: str, a: _Value, b: _Value, shape: Sequence[int]) -> _Value:
        """Elementwise ``kind`` in ("add", "sub", "mul", "div", "other") of two values."""
        shape = tuple(shape)
        if isinstance(a, _Weight) and isinstance(b, _Weight):
            return self._weight_of([a, b], shape)
        if isinstance(a, _Weight) or isinstance(b, _Weight):
            x, w = (a, b) if isinstance(a, _Act) else (b, a)
            if "random" in w.tags:
                return self._out(self._node("dropout", self._full(x).producers, {}), shape)
            if kind in ("mul", "div") and "inv_std" in w.tags and _size(w.shape) > 1 and not x.reductions:
                channels = float(_size(w.shape))
                attrs = {"channels_in": channels, "channels_out": channels}
                return self._out(self._node("batch_norm", x.producers, attrs), shape)
            return dataclasses.replace(x, shape=shape)
        if a.producers == b.producers and (a.reductions or b.reductions):
            return self._statistics(kind, a, b, shape)
        a, b = self._full(a), self._full(b)
        if a.producers == b.producers:
            return _Act(shape, a.producers, frozenset(), a.tags | b.tags)
        if kind in ("mul", "div"):
            for gate, x in ((a, b), (b, a)):
                node = _single(gate.producers)
                if node is not None and self._ops[node] in _GATES and self._preds[node] == x.producers:
                    if self._ops[node] == "sigmoid" and kind == "mul":
                        self._ops[node] = "swish"
                    return _Act(shape, gate.producers, frozenset(), _NO_TAGS)
        op = _BINARY_OPS.get(kind, "other")
        return self._out(self._node(op, a.producers | b.producers, {}), shape)

    def _statistics(self, kind: str, a: _Act, b: _Act, shape: tuple[int, ...]) -> _Act:
        """a op b where both come from the same nodes and at least one is a reduction of them."""
        if a.reductions and b.reductions:
            return _Act(shape, a.producers, a.reductions | b.reductions, a.tags | b.tags)
        full, stats = (a, b) if b.reductions else (b, a)
        if kind in ("mul", "div") and "inv_std" in stats.tags:
            op = "batch_norm" if "batch_stat" in stats.tags else "layer_norm"
            channels = float(full.shape[-1] if full.shape else 1)  # Features are the last axis.
            attrs = {"channels_in": channels, "channels_out": channels}
            return self._out(self._node(op, full.producers, attrs), shape)
        if kind == "div" and "exp" in full.tags and stats is b:
            return self.activation("softmax", dataclasses.replace(full, tags=_NO_TAGS), shape)
        return _Act(shape, full.producers, frozenset(), full.tags)

    def reduce(self, x: _Value, axes: Sequence[int], shape: Sequence[int]) -> _Value:
        """A sum / mean / max / ... of x over ``axes`` (axis 0 = batch)."""
        if isinstance(x, _Weight):
            return self._weight_of([x], shape)
        reduction = self._num_reductions
        self._num_reductions += 1
        tags = x.tags | ({"batch_stat"} if 0 in axes and len(x.shape) > 1 else set())
        return _Act(tuple(shape), x.producers, x.reductions | {reduction}, frozenset(tags))

    def matmul(self, a: _Value, b: _Value, shape: Sequence[int], attrs: Mapping[str, float] = ()) -> _Value:
        """A contraction: with a weight -> dense; of two activations -> attention.

        A product with the output of an attention node (the value mixing after its
        softmax) joins that node instead of making a second one.
        """
        if isinstance(a, _Weight) or isinstance(b, _Weight):
            return self.layer("dense", [a, b], shape, attrs)
        a, b = self._full(a), self._full(b)
        for scores, values in ((a, b), (b, a)):
            node = self._attention_of(scores.producers)
            if node is not None and not self._reaches(values.producers, node):
                self._preds[node] |= values.producers
                return self._out(node, shape)
        return self._out(self._node("attention", a.producers | b.producers, dict(attrs)), shape)

    def concat(self, inputs: Sequence[_Value], shape: Sequence[int]) -> _Value:
        """Concatenation: a node if it joins tensors from different nodes."""
        acts = [self._full(v) for v in inputs if isinstance(v, _Act)]
        if len({a.producers for a in acts}) > 1:
            return self.layer("concat", acts, shape)
        return self.merge(inputs, shape)

    def gather(self, table: _Value, indices: _Value, shape: Sequence[int]) -> _Value:
        """Indexing: rows of a weight table picked by input-dependent indices -> embedding."""
        if isinstance(table, _Weight) and isinstance(indices, _Act):
            attrs = {"params": float(_size(table.shape))}
            if len(table.shape) == 2:
                attrs.update(channels_in=float(table.shape[0]), channels_out=float(table.shape[1]))
            return self.layer("embedding", [indices], shape, attrs)
        return self.merge([table, indices], shape)

    def merge(self, inputs: Sequence[_Value], shape: Sequence[int]) -> _Value:
        """Any other function of the inputs: part of the producing node when they share one
        (a pending reduction stays pending only if no input is a full tensor), else an
        ``other`` node."""
        acts = [v for v in inputs if isinstance(v, _Act)]
        if not acts:
            return self._weight_of(inputs, shape)
        if len({a.producers for a in acts}) > 1:
            return self.layer("other", acts, shape)
        full = any(not a.reductions for a in acts)
        reductions = frozenset() if full else frozenset().union(*(a.reductions for a in acts))
        return _Act(tuple(shape), acts[0].producers, reductions, frozenset().union(*(a.tags for a in acts)))

    def join(self, values: Sequence[_Value], shape: Sequence[int]) -> _Value:
        """Control-flow join (branches of a cond, iterations of a loop): no node, union of producers."""
        acts = [self._full(v) for v in values if isinstance(v, _Act)]
        if not acts:
            return self._weight_of(values, shape)
        return _Act(tuple(shape), frozenset().union(*(a.producers for a in acts)), frozenset(), _NO_TAGS)

    def finish(self, outputs: Sequence[_Value], name: str) -> ArchGraph:
        """The graph of all nodes that reach the outputs, plus the output node."""
        acts = [self._full(v) for v in outputs if isinstance(v, _Act)]
        if not acts:
            raise ValueError(f"{name}: no output depends on the input")
        output = self._node("output", frozenset().union(*(a.producers for a in acts)), {})
        live, stack = {output}, [output]
        while stack:
            for pred in self._preds[stack.pop()]:
                if pred not in live:
                    live.add(pred)
                    stack.append(pred)
        order = sorted(live)
        index = {node: i for i, node in enumerate(order)}
        edges = sorted((index[p], index[n]) for n in order for p in self._preds[n])
        ops, attrs = [self._ops[n] for n in order], [self._attrs[n] for n in order]
        return ArchGraph.from_ops(name, ops, np.array(edges, np.int32).reshape(-1, 2), attrs)

    # -- internals

    def _node(self, op: str, preds: Iterable[int], attrs: dict[str, float]) -> int:
        self._ops.append(op)
        self._attrs.append({k: float(v) for k, v in attrs.items()})
        self._preds.append(set(preds))
        return len(self._ops) - 1

    @staticmethod
    def _out(node: int, shape: Sequence[int]) -> _Act:
        return _Act(tuple(shape), frozenset({node}), frozenset(), _NO_TAGS)

    @staticmethod
    def _weight_of(inputs: Sequence[_Value], shape: Sequence[int]) -> _Weight:
        tags = frozenset().union(*(v.tags for v in inputs))
        return _Weight(tuple(shape), any(v.learned for v in inputs), tags)

    def _full(self, x: _Act) -> _Act:
        """x as a tensor a node can read: a pending reduction becomes a global_pool node."""
        if not x.reductions:
            return x
        key = (x.producers, x.reductions)
        if key not in self._pools:
            self._pools[key] = self._node("global_pool", x.producers, {})
        return self._out(self._pools[key], x.shape)

    def _attention_of(self, producers: frozenset[int]) -> int | None:
        node = _single(producers)
        return node if node is not None and self._ops[node] == "attention" else None

    def _reaches(self, sources: frozenset[int], target: int) -> bool:
        """Whether target is among sources or their ancestors."""
        seen, stack = set(sources), list(sources)
        while stack:
            node = stack.pop()
            if node == target:
                return True
            for pred in self._preds[node] - seen:
                seen.add(pred)
                stack.append(pred)
        return False


def _single(producers: frozenset[int]) -> int | None:
    return next(iter(producers)) if len(producers) == 1 else None


# ----------------------------------------------------------------------------- jaxpr importer

# Named jit / custom_jvp calls recognised as one activation (jax.nn and flax.linen names).
_NAMED_ACTIVATIONS = {
    "relu": "relu",
    "relu6": "relu",
    "leaky_relu": "relu",
    "elu": "relu",
    "selu": "relu",
    "celu": "relu",
    "softplus": "relu",
    "hard_tanh": "relu",
    "silu": "swish",
    "swish": "swish",
    "hard_silu": "swish",
    "hard_swish": "swish",
    "mish": "swish",
    "gelu": "gelu",
    "sigmoid": "sigmoid",
    "hard_sigmoid": "sigmoid",
    "log_sigmoid": "sigmoid",
    "softmax": "softmax",
    "_softmax": "softmax",
    "log_softmax": "softmax",
    "tanh": "tanh",
}
_UNARY_PRIMITIVES = {
    "tanh": "tanh",
    "logistic": "sigmoid",
    "erf": "erf",
    "erfc": "erf",
    "exp": "exp",
    "exp2": "exp",
    "rsqrt": "rsqrt",
    "sqrt": "rsqrt",
}
_BINARY_PRIMITIVES = {
    "add": "add",
    "add_any": "add",
    "sub": "sub",
    "mul": "mul",
    "div": "div",
    "max": "other",
    "min": "other",
}
_REDUCE_PRIMITIVES = frozenset(
    {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or", "argmax", "argmin"}
)
_POOL_PRIMITIVES = {"reduce_window_max": "max_pool", "reduce_window_sum": "avg_pool", "reduce_window": "avg_pool"}
_RANDOM_PRIMITIVES = frozenset(
    {"random_bits", "random_seed", "random_fold_in", "random_split", "threefry2x32", "rng_bit_generator"}
)
# A loop over stacked weights (nn.scan over layers) is unrolled up to this many times.
_MAX_UNROLL = 256


def from_function(fn: Callable, params: Any, example_input: Any, name: str) -> ArchGraph:
    """Layer graph of ``fn(params, example_input)``, traced with ``jax.make_jaxpr``.

    Every leaf of ``params`` is a learned weight and every leaf of ``example_input``
    comes from the one input node; arrays or ``jax.ShapeDtypeStruct``s both work
    (nothing is computed). Nested jaxprs (jit, custom_jvp / custom_vjp, remat, cond,
    while, scan) are walked; a scan over stacked weights only is unrolled.
    """
    closed = jax.make_jaxpr(fn)(params, example_input)
    num_params = len(jax.tree.leaves(params))
    builder = LayerGraphBuilder()
    inputs = [
        builder.weight(_shape(v)) if i < num_params else builder.input(_shape(v))
        for i, v in enumerate(closed.jaxpr.invars)
    ]
    consts = [builder.weight(np.shape(c)) for c in closed.consts]
    outputs = _walk(builder, closed.jaxpr, consts, inputs)
    return builder.finish(outputs, name)


def from_flax(module: Any, example_input: Any, name: str | None = None, **call_kwargs) -> ArchGraph:
    """Layer graph of a ``flax.linen`` module applied to ``example_input``.

    Parameters are only shape-evaluated (``jax.eval_shape`` of ``module.init``), so
    large models import quickly. ``call_kwargs`` go to both ``init`` and ``apply``
    (e.g. ``train=False``); mutable collections are allowed and their updates ignored.
    ``name`` defaults to the module's class name.
    """
    if not (callable(getattr(module, "init", None)) and callable(getattr(module, "apply", None))):
        raise ValueError(f"module: expected a flax.linen Module, got {type(module).__name__} (see from_function)")
    key = jax.random.key(0)
    rngs = {"params": key, "dropout": key}
    variables = jax.eval_shape(lambda x: module.init(rngs, x, **call_kwargs), example_input)

    def apply(variables, x):
        return module.apply(variables, x, rngs={"dropout": key}, mutable=True, **call_kwargs)[0]

    return from_function(apply, variables, example_input, name or type(module).__name__)


def _shape(var: Any) -> tuple[int, ...]:
    return tuple(getattr(getattr(var, "aval", var), "shape", ()))


def _walk(builder: LayerGraphBuilder, jaxpr: Any, consts: Sequence[_Value], inputs: Sequence[_Value]) -> list[_Value]:
    """Values of jaxpr's outputs given values of its constvars and invars."""
    env = dict(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, inputs))

    def read(var):
        if isinstance(var, jcore.Literal):
            return builder.weight(np.shape(var.val), learned=False)
        return env[var]

    for eqn in jaxpr.eqns:
        outs = _eqn(builder, eqn, [read(v) for v in eqn.invars])
        env.update((var, value) for var, value in zip(eqn.outvars, outs) if not isinstance(var, jcore.DropVar))
    return [read(v) for v in jaxpr.outvars]


def _eqn(builder: LayerGraphBuilder, eqn: Any, ins: list[_Value]) -> list[_Value]:
    """Values of one equation's outputs."""
    prim, params = eqn.primitive.name, eqn.params
    shapes = [_shape(v) for v in eqn.outvars]
    shape = shapes[0] if shapes else ()
    subs = [p for p in params.values() if isinstance(p, (jcore.Jaxpr, jcore.ClosedJaxpr))]
    if prim in _RANDOM_PRIMITIVES:
        return [builder.weight(s, learned=False, random=True) for s in shapes]
    if prim == "conv_general_dilated":
        return [builder.layer(*_conv(eqn, ins))]
    if prim == "dot_general":
        return [builder.matmul(ins[0], ins[1], shape, _dot_attrs(eqn, ins))]
    if prim in _POOL_PRIMITIVES:
        attrs = {"kernel_size": max(params["window_dimensions"]), "stride": max(params["window_strides"])}
        return [builder.layer(_POOL_PRIMITIVES[prim], ins, shape, attrs)]
    if prim in _REDUCE_PRIMITIVES:
        return [builder.reduce(ins[0], params["axes"], shape)]
    if prim == "concatenate":
        return [builder.concat(ins, shape)]
    if prim == "gather":
        return [builder.gather(ins[0], ins[1], shape)]
    if prim == "max" and any(isinstance(v, jcore.Literal) and np.all(v.val == 0) for v in eqn.invars):
        return [builder.unary("relu", ins[0] if builder.is_activation(ins[0]) else ins[1], shape)]
    if prim == "integer_pow":
        return [builder.unary("cube" if params["y"] == 3 else "none", ins[0], shape)]
    if prim in _UNARY_PRIMITIVES:
        return [builder.unary(_UNARY_PRIMITIVES[prim], ins[0], shape)]
    if prim in _BINARY_PRIMITIVES and len(ins) == 2:
        return [builder.binary(_BINARY_PRIMITIVES[prim], ins[0], ins[1], shape)]
    if prim == "select_n":
        randoms = [v for v in ins if not builder.is_activation(v) and "random" in v.tags]
        if randoms:
            return [builder.binary("mul", builder.merge(ins[1:], shape), randoms[0], shape)]
    if prim == "scan":
        return _scan(builder, eqn, ins)
    if prim == "while":
        body = params["body_jaxpr"]
        start = params["cond_nconsts"]
        return _walk(builder, body.jaxpr, _consts(builder, body), ins[start:])
    if prim == "cond":
        branches = [_walk(builder, b.jaxpr, _consts(builder, b), ins[1:]) for b in params["branches"]]
        return [builder.join(values, s) for values, s in zip(zip(*branches), shapes)]
    if subs:
        acts = [v for v in ins if builder.is_activation(v)]
        activation = _NAMED_ACTIVATIONS.get(str(params.get("name", "")))
        if activation is not None and len(acts) == 1 and len(shapes) == 1:
            return [builder.activation(activation, acts[0], shape)]
        sub = subs[0]
        inner = sub.jaxpr if isinstance(sub, jcore.ClosedJaxpr) else sub
        if len(subs) == 1 and len(inner.invars) == len(ins) and len(inner.outvars) == len(shapes):
            return _walk(builder, inner, _consts(builder, sub), ins)
    return [builder.merge(ins, s) for s in shapes]


def _consts(builder: LayerGraphBuilder, sub: Any) -> list[_Weight]:
    consts = sub.consts if isinstance(sub, jcore.ClosedJaxpr) else ()
    return [builder.weight(np.shape(c)) for c in consts]


def _scan(builder: LayerGraphBuilder, eqn: Any, ins: list[_Value]) -> list[_Value]:
    """A scan over stacked weights (a stack of layers) is unrolled; a scan over
    input-dependent sequence elements (a recurrence) is walked once."""
    params = eqn.params
    body, length = params["jaxpr"], params["length"]
    num_consts, num_carry = params["num_consts"], params["num_carry"]
    consts, carry, xs = ins[:num_consts], ins[num_consts : num_consts + num_carry], ins[num_consts + num_carry :]
    steps = length if not any(builder.is_activation(x) for x in xs) and length <= _MAX_UNROLL else 1
    step_ys = []
    for _ in range(max(steps, 1)):
        outs = _walk(builder, body.jaxpr, _consts(builder, body), [*consts, *carry, *xs])
        carry = outs[:num_carry]
        step_ys.append(outs[num_carry:])
    shapes = [_shape(v) for v in eqn.outvars[num_carry:]]
    ys = [builder.join(values, s) for values, s in zip(zip(*step_ys), shapes)]
    return [*carry, *ys]


def _conv(eqn: Any, ins: list[_Value]) -> tuple[str, list[_Value], tuple[int, ...], dict[str, float]]:
    """(op, inputs, shape, attrs) of a conv_general_dilated equation."""
    params = eqn.params
    lhs_spec, rhs_spec, _ = params["dimension_numbers"]
    lhs_shape, rhs_shape = ins[0].shape, ins[1].shape
    channels_in = lhs_shape[lhs_spec[1]]
    groups = params["feature_group_count"] * params["batch_group_count"]
    attrs = {
        "channels_in": channels_in,
        "channels_out": rhs_shape[rhs_spec[0]],
        "kernel_size": max((rhs_shape[d] for d in rhs_spec[2:]), default=1),
        "stride": max(params["window_strides"], default=1),
        "dilation": max(params["rhs_dilation"], default=1),
        "groups": groups,
        "params": _size(rhs_shape),
    }
    op = "depthwise_conv" if groups > 1 and groups == channels_in else "conv"
    return op, ins, _shape(eqn.outvars[0]), attrs


def _dot_attrs(eqn: Any, ins: list[_Value]) -> dict[str, float]:
    """dense: channels in / out and weight size; attention: heads and features per head."""
    (contract_a, contract_b), (batch_a, _) = eqn.params["dimension_numbers"]
    a, b = ins
    contracted = _size(tuple(a.shape[d] for d in contract_a))
    if isinstance(a, _Weight) or isinstance(b, _Weight):
        w, w_contract = (b, contract_b) if isinstance(b, _Weight) else (a, contract_a)
        out = _size(tuple(n for d, n in enumerate(w.shape) if d not in w_contract))
        return {"channels_in": contracted, "channels_out": out, "params": _size(w.shape)}
    heads = _size(tuple(a.shape[d] for d in batch_a[1:]))
    return {"heads": heads, "features": contracted}


def align_graphs(models: Sequence[str], graphs: Sequence[ArchGraph], source: str) -> list[ArchGraph]:
    """The graph of each model, in the order of ``models``, matched by name.

    Graphs of models not in ``models`` are allowed (a zoo may have graphs without records).

    Raises:
      ValueError: a graph name occurs twice in ``source``, or a model has no graph there
        (the message names the model and ``source``).
    """
    by_name: dict[str, ArchGraph] = {}
    for graph in graphs:
        if graph.name in by_name:
            raise ValueError(f"{source}: graph {graph.name!r} occurs twice")
        by_name[graph.name] = graph
    missing = [m for m in models if m not in by_name]
    if missing:
        raise ValueError(f"{source}: no graph for model {missing[0]!r}"
                         + (f" (and {len(missing) - 1} more models)" if len(missing) > 1 else ""))
    return [by_name[m] for m in models]
