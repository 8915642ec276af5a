"""Tests for fennec_jax.archs.graphs: the graph type, batching, JSON lines, NAS-Bench-Graph and Flax import."""

import collections
import itertools
import json
import logging
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import nas_bench_graph as nbg_package  # The reference encoder (imports no torch).
import numpy as np
import pytest
from graph_expectations import CONV_3X3_STRIDE_2

from fennec_jax.archs import graphs
from fennec_jax.archs import nas_bench_graph as nbg
from fennec_jax.archs._jraph import jraph

A = len(graphs.ATTRS)


def _diamond(name="diamond"):
    """input -> conv -> (relu, dense) -> add -> output."""
    return graphs.ArchGraph.from_ops(
        name,
        ["input", "conv", "relu", "dense", "add", "output"],
        [[0, 1], [1, 2], [1, 3], [2, 4], [3, 4], [4, 5]],
        [{}, {"channels_in": 3, "channels_out": 16, "kernel_size": 3}, {}, {"channels_out": 16}, {}, {}],
    )


def _chain(n, name="chain"):
    edges = [[i, i + 1] for i in range(n - 1)]
    return graphs.ArchGraph.from_ops(name, ["input", *["dense"] * (n - 2), "output"], edges)


def _assert_connected(graph):
    """Every node is reachable from the input (node of op "input") and reaches the output."""
    ops = graph.op_names
    assert ops.count("input") == 1 and ops.count("output") == 1
    succ, pred = collections.defaultdict(set), collections.defaultdict(set)
    for s, d in graph.edges.tolist():
        succ[s].add(d)
        pred[d].add(s)

    def closure(start, nbrs):
        seen, stack = {start}, [start]
        while stack:
            for m in nbrs[stack.pop()] - seen:
                seen.add(m)
                stack.append(m)
        return seen

    everything = set(range(graph.num_nodes))
    assert closure(ops.index("input"), succ) == everything
    assert closure(ops.index("output"), pred) == everything


# ----------------------------------------------------------------------------- ArchGraph


def test_from_ops_fields():
    g = _diamond()
    assert g.num_nodes == 6 and g.num_edges == 6
    assert g.op_names == ("input", "conv", "relu", "dense", "add", "output")
    assert g.ops.dtype == np.int32 and g.edges.dtype == np.int32
    assert g.attrs.shape == g.attr_mask.shape == (6, A)
    assert g.node_attrs(1) == {"channels_in": 3.0, "channels_out": 16.0, "kernel_size": 3.0}
    assert g.node_attrs(0) == {}
    assert g.attr_mask.sum() == 4 and g.attrs[~g.attr_mask].sum() == 0
    assert g.op_counts()["conv"] == 1
    with pytest.raises(ValueError, match="read-only"):
        g.edges[0, 0] = 3


def test_arrays_are_copied():
    ops = np.array([0, 4, 1], np.int32)
    g = graphs.ArchGraph("g", ops, np.zeros((3, A)), np.zeros((3, A), bool), np.array([[0, 1], [1, 2]]))
    ops[1] = 2
    assert g.op_names[1] == "dense"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"edges": [[0, 6]]}, "edges: node indices"),
        ({"edges": [[-1, 2]]}, "edges: node indices"),
        ({"edges": [[2, 2]]}, "self-loops"),
        ({"edges": [[0, 1, 2]]}, r"edges: expected shape \[E, 2\]"),
        ({"edges": [[0.0, 1.0]]}, "edges: expected integers"),
        ({"ops": ["input", "conv2d"]}, "unknown op types"),
        ({"attrs": [{"stride": -1}] + [{}] * 5}, "attrs: attribute values"),
        ({"attrs": [{"stride": float("nan")}] + [{}] * 5}, "attrs: attribute values"),
        ({"attrs": [{"widht": 2}] + [{}] * 5}, "unknown attribute 'widht'"),
        ({"attrs": [{}]}, "one dict per node"),
        ({"name": ""}, "name"),
    ],
)
def test_validation(kwargs, match):
    args = {
        "name": "g",
        "ops": ["input", "conv", "relu", "dense", "add", "output"],
        "edges": [[0, 1]],
        "attrs": None,
        **kwargs,
    }
    with pytest.raises(ValueError, match=match):
        graphs.ArchGraph.from_ops(args["name"], args["ops"], args["edges"], args["attrs"])


def test_validation_of_raw_arrays():
    ok = dict(name="g", ops=np.array([0, 1]), attrs=np.zeros((2, A)), attr_mask=np.zeros((2, A), bool), edges=[[0, 1]])
    graphs.ArchGraph(**ok)
    with pytest.raises(ValueError, match="ops: op ids"):
        graphs.ArchGraph(**{**ok, "ops": np.array([0, len(graphs.OPS)])})
    with pytest.raises(ValueError, match="attrs: expected shape"):
        graphs.ArchGraph(**{**ok, "attrs": np.zeros((3, A))})
    with pytest.raises(ValueError, match="attr_mask: expected a bool"):
        graphs.ArchGraph(**{**ok, "attr_mask": np.zeros((2, A))})
    with pytest.raises(ValueError, match="0 where attr_mask is False"):
        graphs.ArchGraph(**{**ok, "attrs": np.ones((2, A))})
    with pytest.raises(ValueError, match="ops: expected a non-empty"):
        no_nodes = {"ops": np.zeros(0, int), "attrs": np.zeros((0, A)), "attr_mask": np.zeros((0, A), bool)}
        graphs.ArchGraph(**{**ok, **no_nodes})
    empty = graphs.ArchGraph(**{**ok, "edges": []})
    assert empty.edges.shape == (0, 2)


def test_vocabularies():
    assert len(set(graphs.OPS)) == len(graphs.OPS) and len(set(graphs.ATTRS)) == len(graphs.ATTRS)
    assert set(nbg.OP_NAMES) <= set(graphs.OPS)
    assert {"input", "output", "other"} <= set(graphs.OPS)
    assert graphs.NODE_FEATURE_DIM == len(graphs.OPS) + 2 * A


# ----------------------------------------------------------------------------- batching


def test_graphs_tuple_features_and_padding():
    g1, g2 = _diamond("a"), _chain(3, "b")
    batch, info = graphs.to_graphs_tuple([g1, g2], bucket_sizes=(4, 8, 16, 32))
    # 9 nodes + 1 padding node -> 16; 2 * (6 + 2) edges = 16 -> 16; 2 graphs + 1 -> 4.
    assert batch.nodes.shape == (16, graphs.NODE_FEATURE_DIM) and batch.nodes.dtype == np.float32
    assert batch.edges.shape == (16, graphs.EDGE_FEATURE_DIM)
    assert batch.n_node.tolist() == [6, 3, 7, 0] and batch.n_edge.tolist() == [12, 4, 0, 0]
    assert info.names == ("a", "b")
    assert info.graph_mask.tolist() == [True, True, False, False]
    assert info.node_mask.sum() == 9 and info.edge_mask.sum() == 16 and info.edge_mask.shape == (16,)

    ops_part = batch.nodes[:9, : len(graphs.OPS)]
    np.testing.assert_array_equal(ops_part.argmax(1), np.concatenate([g1.ops, g2.ops]))
    np.testing.assert_array_equal(ops_part.sum(1), 1.0)
    conv = batch.nodes[1, len(graphs.OPS) :]
    k = graphs.ATTRS.index("kernel_size")
    np.testing.assert_allclose(conv[k], np.log1p(3.0), rtol=1e-6)
    np.testing.assert_allclose(conv[graphs.ATTRS.index("channels_out")], np.log1p(16.0), rtol=1e-6)
    np.testing.assert_array_equal(conv[A:], g1.attr_mask[1].astype(np.float32))
    np.testing.assert_array_equal(batch.nodes[9:], 0.0)

    # Graph 1: forward edges, then their reverses; graph 2's indices are offset by 6.
    senders, receivers = batch.senders[:16], batch.receivers[:16]
    np.testing.assert_array_equal(np.stack([senders[:6], receivers[:6]], 1), g1.edges)
    np.testing.assert_array_equal(np.stack([senders[6:12], receivers[6:12]], 1), g1.edges[:, ::-1])
    np.testing.assert_array_equal(np.stack([senders[12:14], receivers[12:14]], 1), g2.edges + 6)
    np.testing.assert_array_equal(batch.edges[:16], np.repeat([[1, 0], [0, 1], [1, 0], [0, 1]], [6, 6, 2, 2], 0))
    assert batch.globals is None


def test_graphs_tuple_forward_only_and_message_passing():
    g = _diamond()
    batch, info = graphs.to_graphs_tuple([g], reverse_edges=False, bucket_sizes=(8, 16))
    assert batch.edges[info.edge_mask].tolist() == [[1.0, 0.0]] * 6
    # One sum-aggregation step over real edges counts each node's in-degree.
    ones = jnp.ones((batch.nodes.shape[0],))
    in_degree = jax.ops.segment_sum(ones[batch.senders] * info.edge_mask, batch.receivers, batch.nodes.shape[0])
    np.testing.assert_array_equal(np.asarray(in_degree[:6]), np.bincount(g.edges[:, 1], minlength=6))


def test_buckets_bound_compiled_shapes():
    traces = []

    @jax.jit
    def pooled(batch):
        traces.append(1)
        return jraph.GraphConvolution(lambda x: x, add_self_edges=False)(batch).nodes.sum()

    batches = [graphs.to_graphs_tuple([_chain(n), _diamond()])[0] for n in (6, 7, 8)]
    assert len({(b.nodes.shape, b.edges.shape, b.n_node.shape) for b in batches}) == 1
    for batch in batches:
        pooled(batch)
    assert len(traces) == 1


def test_graphs_tuple_graph_without_edges():
    lone = graphs.ArchGraph.from_ops("lone", ["other"], [])
    batch, info = graphs.to_graphs_tuple([lone, _chain(3)], bucket_sizes=(2, 4, 8))
    assert batch.n_node.tolist()[:2] == [1, 3] and batch.n_edge.tolist()[:2] == [0, 4]
    assert batch.senders[:4].tolist() == [1, 2, 2, 3] and batch.receivers[:4].tolist() == [2, 3, 1, 2]


def test_graphs_tuple_bad_arguments():
    with pytest.raises(ValueError, match="graphs: expected a non-empty"):
        graphs.to_graphs_tuple([])
    with pytest.raises(ValueError, match="graphs: expected a non-empty"):
        graphs.to_graphs_tuple(_diamond())
    with pytest.raises(ValueError, match="bucket_sizes: expected strictly increasing"):
        graphs.to_graphs_tuple([_diamond()], bucket_sizes=(8, 4))
    with pytest.raises(ValueError, match="bucket_sizes: largest bucket 4 < 7 nodes"):
        graphs.to_graphs_tuple([_diamond()], bucket_sizes=(2, 4))


# ----------------------------------------------------------------------------- JSON lines


def test_jsonl_round_trip(tmp_path):
    path = tmp_path / "archs.jsonl"
    originals = [_diamond("a"), _chain(4, "b")]
    graphs.save_jsonl(originals, path)
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["nodes"][1] == {
        "op": "conv",
        "attrs": {"channels_in": 3, "channels_out": 16, "kernel_size": 3},
    }
    loaded = graphs.load_jsonl(path)
    assert [g.name for g in loaded] == ["a", "b"]
    for original, copy in zip(originals, loaded):
        for field in ("ops", "attrs", "attr_mask", "edges"):
            np.testing.assert_array_equal(getattr(copy, field), getattr(original, field))


def test_jsonl_unknown_op_names_stay_their_own_op_types(tmp_path, caplog):
    path = tmp_path / "archs.jsonl"
    record = {
        "model": "m",
        "nodes": [{"op": "input"}, {"op": "mystery", "attrs": {"stride": 2, "flops": 9}}, {"op": "output"}],
        "edges": [[0, 1], [1, 2]],
    }
    path.write_text(json.dumps(record) + "\n\n" + json.dumps({**record, "model": "n"}) + "\n")
    with caplog.at_level(logging.INFO):
        loaded = graphs.load_jsonl(path)
    assert [g.op_names for g in loaded] == [("input", "mystery", "output")] * 2
    assert loaded[0].extra_ops == ("mystery",) and loaded[0].extra_ops is loaded[1].extra_ops  # shared per file
    assert loaded[0].node_attrs(1) == {"stride": 2.0}
    assert "['mystery']" in caplog.text and "'attr:flops': 2" in caplog.text


@pytest.mark.parametrize(
    "line, match",
    [
        ('{"model": "m", "nodes": [', "bad JSON"),
        ('{"nodes": [{"op": "input"}], "edges": []}', "missing key 'model'"),
        ('{"model": "m", "nodes": [{"attrs": {}}], "edges": []}', "missing key 'op'"),
        ('{"model": "m", "nodes": [{"op": "input"}], "edges": [[0, 1]]}', "edges: node indices"),
        ('{"model": "m", "nodes": [{"op": "input", "attrs": {"stride": "2"}}], "edges": []}', "must be a number"),
        ('{"model": "m", "nodes": [{"op": "input", "attrs": {"stride": true}}], "edges": []}', "must be a number"),
        ('{"model": "m", "nodes": [{"op": "input", "attrs": {"stride": -2}}], "edges": []}', ">= 0"),
        ('{"model": "m", "nodes": [{"op": "input"}], "edges": [[0, 1.5]]}', "integer pairs"),
        ('["m"]', "expected a JSON object"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, line, match):
    path = tmp_path / "bad.jsonl"
    good = '{"model": "ok", "nodes": [{"op": "input"}, {"op": "output"}], "edges": [[0, 1]]}'
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(ValueError, match=rf"bad\.jsonl:2: .*{match}"):
        graphs.load_jsonl(path)


# ----------------------------------------------------------------------------- NAS-Bench-Graph


def test_from_nas_bench_graph():
    g = graphs.from_nas_bench_graph([0, 0, 1, 2], [1, 4, 7, 8], "arch")
    assert g.op_names == ("input", "gcn", "sage", "fc", "skip", "output")
    assert g.edges.tolist() == [[0, 1], [0, 2], [1, 3], [2, 4], [3, 5], [4, 5]]
    assert not g.attr_mask.any()
    with pytest.raises(ValueError, match="links_row"):
        graphs.from_nas_bench_graph([0, 2, 0, 0], [0, 0, 0, 0], "bad")


@pytest.fixture(scope="module")
def nas_table():
    """The whole NAS-Bench-Graph space, from the package's own canonical hashes."""
    space = sorted(
        {
            nbg_package.Arch(list(link), list(ops)).valid_hash()
            for link in nbg_package.link_list
            for ops in itertools.product(nbg_package.gnn_list, repeat=4)
            if set(ops) != {"skip"}
        }
    )
    links, ops = nbg.decode_arch_hashes(space)
    return types.SimpleNamespace(arch_hashes=tuple(space), links=links, ops=ops)


def test_from_nas_bench_graph_table_matches_rowwise(nas_table):
    converted = graphs.from_nas_bench_graph_table(nas_table)
    assert len(converted) == len(nas_table.arch_hashes) == 26_206
    rng = np.random.default_rng(0)
    for m in [0, len(converted) - 1, *rng.integers(0, len(converted), 200)]:
        g, ref = converted[m], graphs.from_nas_bench_graph(nas_table.links[m], nas_table.ops[m], "ref")
        assert g.name == f"nas_bench_graph:{nas_table.arch_hashes[m]}"
        assert g.op_names == ref.op_names
        np.testing.assert_array_equal(g.edges, ref.edges)
        np.testing.assert_array_equal(g.attr_mask, ref.attr_mask)
        assert not g.ops.flags.writeable and not g.edges.flags.writeable
    batch, info = graphs.to_graphs_tuple(converted[:1000])
    assert info.node_mask.sum() == 6000 and batch.n_node[:1000].tolist() == [6] * 1000


def test_from_nas_bench_graph_table_errors():
    def table(hashes, links, ops):
        return types.SimpleNamespace(arch_hashes=hashes, links=[links], ops=[ops])

    with pytest.raises(ValueError, match="op ids"):
        graphs.from_nas_bench_graph_table(table((1,), [0, 0, 0, 0], [0, 0, 0, 9]))
    with pytest.raises(ValueError, match="links_row"):
        graphs.from_nas_bench_graph_table(table((1,), [0, 3, 0, 0], [0, 0, 0, 0]))
    with pytest.raises(ValueError, match="arch_hashes"):
        graphs.from_nas_bench_graph_table(table((1, 2), [0, 0, 0, 0], [0, 0, 0, 0]))


# ----------------------------------------------------------------------------- Flax import


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(32)(x))
        x = nn.relu(nn.Dense(16)(x))
        return nn.Dense(10)(x)


class ResidualCNN(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(8, (3, 3), strides=2)(x)))
        y = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(8, (3, 3))(x)))
        y = nn.BatchNorm(use_running_average=not train)(nn.Conv(8, (3, 3), feature_group_count=8)(y))
        x = nn.relu(x + y)
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.Dropout(0.5, deterministic=not train)(x.mean(axis=(1, 2)))
        return nn.Dense(5)(x)


class AttentionBlock(nn.Module):
    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(50, 16)(tokens)
        x = x + nn.MultiHeadDotProductAttention(num_heads=4)(nn.LayerNorm()(x))
        y = nn.Dense(16)(nn.gelu(nn.Dense(64)(nn.LayerNorm()(x))))
        return nn.softmax(nn.Dense(3)(x + y))


def test_flax_mlp():
    g = graphs.from_flax(MLP(), jnp.ones((2, 12)))
    assert g.name == "MLP"
    assert g.op_names == ("input", "dense", "relu", "dense", "relu", "dense", "output")
    assert g.edges.tolist() == [[i, i + 1] for i in range(6)]
    assert [g.node_attrs(i)["channels_in"] for i in (1, 3, 5)] == [12.0, 32.0, 16.0]
    assert [g.node_attrs(i)["channels_out"] for i in (1, 3, 5)] == [32.0, 16.0, 10.0]
    assert g.node_attrs(1)["params"] == 12 * 32


@pytest.mark.parametrize("train", [False, True])
def test_flax_residual_cnn(train):
    g = graphs.from_flax(ResidualCNN(), jnp.ones((2, 16, 16, 3)), name="cnn", train=train)
    counts = g.op_counts()
    assert g.name == "cnn"
    assert counts["conv"] == 2 and counts["depthwise_conv"] == 1  # == the three nn.Conv layers
    assert counts["batch_norm"] == 3 and counts["relu"] == 3
    assert counts["add"] == 1 and counts["max_pool"] == 1 and counts["global_pool"] == 1
    assert counts["dense"] == 1 and counts["dropout"] == (1 if train else 0)
    assert sum(counts.values()) == 15 + (1 if train else 0)
    _assert_connected(g)
    ops = g.op_names
    first = ops.index("conv")
    assert g.node_attrs(first) == CONV_3X3_STRIDE_2
    assert g.node_attrs(ops.index("depthwise_conv"))["groups"] == 8.0
    assert g.node_attrs(ops.index("batch_norm"))["channels_out"] == 8.0
    # The residual add reads the first block's relu and the last batch norm.
    add = ops.index("add")
    sources = sorted(ops[s] for s, d in g.edges.tolist() if d == add)
    assert sources == ["batch_norm", "relu"]


def test_flax_attention_block():
    g = graphs.from_flax(AttentionBlock(), jnp.ones((2, 5), jnp.int32))
    counts = g.op_counts()
    assert counts["embedding"] == 1 and counts["attention"] == 1
    assert counts["layer_norm"] == 2 and counts["gelu"] == 1 and counts["add"] == 2
    assert counts["dense"] == 4 + 2 + 1  # q, k, v, out; the MLP; the head
    assert counts["softmax"] == 1  # The final one; the attention's own softmax is part of it.
    _assert_connected(g)
    ops = g.op_names
    attention = ops.index("attention")
    assert sorted(ops[s] for s, d in g.edges.tolist() if d == attention) == ["dense"] * 3
    assert g.node_attrs(attention) == {"heads": 4.0, "features": 4.0}
    assert g.node_attrs(ops.index("embedding")) == {"channels_in": 50.0, "channels_out": 16.0, "params": 800.0}
    assert g.node_attrs(ops.index("layer_norm"))["channels_in"] == 16.0


def test_flax_scan_over_layers_is_unrolled():
    class Layer(nn.Module):
        @nn.compact
        def __call__(self, x, _):
            return nn.swish(nn.Dense(4)(x)), None

    class Stack(nn.Module):
        @nn.compact
        def __call__(self, x):
            layers = nn.scan(nn.remat(Layer), variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
            return layers()(x, None)[0]

    g = graphs.from_flax(Stack(), jnp.ones((2, 4)))
    assert g.op_names == ("input", *["dense", "swish"] * 3, "output")


def test_from_function_primitive_patterns():
    """Raw jnp code: x * sigmoid(x), tanh-gelu, RMS norm, concat, cond and while."""

    def fn(params, x):
        h = x @ params["w"]
        a = h * jax.nn.sigmoid(h)  # swish
        b = 0.5 * h * (1 + jnp.tanh(0.79 * (h + 0.044 * h**3)))  # gelu
        c = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + 1e-6)  # layer_norm
        d = jax.lax.cond(x.sum() > 0, jnp.tanh, jax.nn.sigmoid, h)
        e = jax.lax.while_loop(lambda c: c[0].sum() < 9, lambda c: (jnp.maximum(c[0], 0.0), c[1]), (d, x))[0]
        return jnp.concatenate([a, b, c, e], axis=-1)

    g = graphs.from_function(fn, {"w": jnp.ones((3, 4))}, jnp.ones((2, 3)), "raw")
    counts = g.op_counts()
    assert counts == collections.Counter(
        input=1, dense=1, swish=1, gelu=1, layer_norm=1, tanh=1, sigmoid=1, relu=1, concat=1, output=1
    )
    _assert_connected(g)


def test_from_function_fixed_trip_loop_is_unrolled():
    def fn(p, x):
        return jax.lax.fori_loop(0, 3, lambda i, v: jnp.tanh(v @ p), x)

    g = graphs.from_function(fn, jnp.ones((3, 3)), jnp.ones(3), "loop")
    assert g.op_names == ("input", *["dense", "tanh"] * 3, "output")


def test_from_function_attention_without_names():
    """softmax(q k^T) v written out; the products join one attention node."""

    def fn(params, x):
        q, k, v = (x @ params[n] for n in "qkv")
        s = q @ k.T / 2.0
        p = jnp.exp(s - s.max(-1, keepdims=True))
        p = p / p.sum(-1, keepdims=True)
        return (p @ v) @ params["o"]

    params = {n: jnp.ones((4, 4)) for n in "qkvo"}
    g = graphs.from_function(fn, params, jnp.ones((3, 4)), "attn")
    assert g.op_counts() == collections.Counter(input=1, dense=4, attention=1, output=1)


def test_from_function_output_must_depend_on_input():
    with pytest.raises(ValueError, match="no output depends on the input"):
        graphs.from_function(lambda p, x: p * 2, jnp.ones(3), jnp.ones(3), "const")


def test_flax_rejects_non_modules():
    with pytest.raises(ValueError, match="module: expected a flax.linen Module"):
        graphs.from_flax(lambda x: x, jnp.ones(3))


def test_flax_accepts_shape_structs():
    x = jax.ShapeDtypeStruct((2, 12), jnp.float32)
    assert graphs.from_flax(MLP(), x).op_names == graphs.from_flax(MLP(), jnp.ones((2, 12))).op_names


def test_architecture_graph_traces_the_flax_definition():
    from fennec_jax.archs import architectures

    g = architectures.graph("alexnet", num_classes=10)  # 224 x 224: the adaptive pool is the identity
    counts = g.op_counts()
    assert g.name == "alexnet" and counts["conv"] == 5 and counts["dense"] == 3 and counts["max_pool"] == 3
    assert counts["input"] == 1 and counts["output"] == 1
    assert g.node_attrs(int(np.flatnonzero(g.ops == graphs.OPS.index("dense"))[-1]))["channels_out"] == 10
