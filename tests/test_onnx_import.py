"""Tests for fennec_jax.archs.onnx_import on small ONNX graphs built with onnx.helper."""

import collections
import logging
import sys

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
from graph_expectations import CONV_3X3_STRIDE_2

from fennec_jax.archs import graphs

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fennec_jax.archs.onnx_import import from_onnx  # noqa: E402


def _model(nodes, inputs, outputs, weights, name="net"):
    """ModelProto from nodes, [(name, shape)] float inputs / outputs and {name: array} initializers."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _edges_by_op(graph):
    return collections.Counter((graph.op_names[s], graph.op_names[d]) for s, d in graph.edges.tolist())


def _residual_cnn():
    """NCHW: conv-bn-relu, conv-bn-relu, depthwise conv-bn, residual add, relu, max pool, GAP, dense, softmax."""
    w = {}
    nodes = []
    for i, (c_in, groups) in enumerate([(3, 1), (8, 1), (8, 8)]):
        w[f"w{i}"] = np.ones((8, c_in // groups, 3, 3))
        w[f"b{i}"] = np.zeros(8)
        for stat in ("scale", "bias", "mean", "var"):
            w[f"{stat}{i}"] = np.ones(8)
        nodes.append(
            helper.make_node(
                "Conv",
                [["x", "r0", "r1"][i], f"w{i}", f"b{i}"],
                [f"c{i}"],
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                strides=[2 if i == 0 else 1] * 2,
                group=groups,
            )
        )
        nodes.append(
            helper.make_node("BatchNormalization", [f"c{i}", f"scale{i}", f"bias{i}", f"mean{i}", f"var{i}"], [f"n{i}"])
        )
        if i < 2:
            nodes.append(helper.make_node("Relu", [f"n{i}"], [f"r{i}"]))
    w["fc_w"] = np.ones((8, 5))
    w["fc_b"] = np.zeros(5)
    nodes += [
        helper.make_node("Add", ["r0", "n2"], ["sum"]),
        helper.make_node("Relu", ["sum"], ["act"]),
        helper.make_node("MaxPool", ["act"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["pool"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["y"]),
    ]
    return _model(nodes, [("x", [2, 3, 16, 16])], [("y", [2, 5])], w, name="cnn")


def test_residual_cnn():
    g = from_onnx(_residual_cnn())
    assert g.name == "cnn"
    assert g.op_names == (
        "input",
        "conv",
        "batch_norm",
        "relu",
        "conv",
        "batch_norm",
        "relu",
        "depthwise_conv",
        "batch_norm",
        "add",
        "relu",
        "max_pool",
        "global_pool",
        "dense",
        "softmax",
        "output",
    )
    assert g.node_attrs(1) == CONV_3X3_STRIDE_2
    assert g.node_attrs(7)["groups"] == 8.0 and g.node_attrs(7)["channels_in"] == 8.0
    assert g.node_attrs(2) == {"channels_in": 8.0, "channels_out": 8.0}
    assert g.node_attrs(11) == {"kernel_size": 2.0, "stride": 2.0}
    assert g.node_attrs(13) == {"channels_in": 8.0, "channels_out": 5.0, "params": 40.0}
    assert sorted(s for s, d in g.edges.tolist() if d == 9) == [3, 8]  # The residual add.


def test_same_architecture_as_flax():
    """The ONNX CNN above and its Flax twin give the same layer graph."""

    class Twin(nn.Module):
        @nn.compact
        def __call__(self, x):
            bn = lambda y: nn.BatchNorm(use_running_average=True)(y)  # noqa: E731
            r0 = nn.relu(bn(nn.Conv(8, (3, 3), strides=2)(x)))
            r1 = nn.relu(bn(nn.Conv(8, (3, 3))(r0)))
            n2 = bn(nn.Conv(8, (3, 3), feature_group_count=8)(r1))
            y = nn.max_pool(nn.relu(r0 + n2), (2, 2), strides=(2, 2)).mean(axis=(1, 2))
            return nn.softmax(nn.Dense(5)(y))

    from_flax = graphs.from_flax(Twin(), jnp.ones((2, 16, 16, 3)))
    from_onnx_ = from_onnx(_residual_cnn())
    assert from_flax.op_names == from_onnx_.op_names
    np.testing.assert_array_equal(from_flax.edges, from_onnx_.edges)
    for i in range(from_flax.num_nodes):
        flax_attrs, onnx_attrs = from_flax.node_attrs(i), from_onnx_.node_attrs(i)
        assert {k: v for k, v in onnx_attrs.items() if k in flax_attrs} == flax_attrs, from_flax.op_names[i]


def _attention_block():
    """Embedding, decomposed LayerNorm, single-head attention written as MatMuls, residual,
    x * Sigmoid(x), Concat, and an op the importer does not know."""
    d = 4
    w = {n: np.ones((d, d)) for n in ("wq", "wk", "wv", "wo")}
    w.update(table=np.ones((10, d)), gamma=np.ones(d), beta=np.zeros(d), two=2.0, eps=1e-5, scale=2.0)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["x"]),
        helper.make_node("ReduceMean", ["x"], ["mu"], axes=[-1]),
        helper.make_node("Sub", ["x", "mu"], ["xc"]),
        helper.make_node("Pow", ["xc", "two"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["var"], axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["var_eps"]),
        helper.make_node("Sqrt", ["var_eps"], ["std"]),
        helper.make_node("Div", ["xc", "std"], ["xn"]),
        helper.make_node("Mul", ["xn", "gamma"], ["xg"]),
        helper.make_node("Add", ["xg", "beta"], ["ln"]),
        helper.make_node("MatMul", ["ln", "wq"], ["q"]),
        helper.make_node("MatMul", ["ln", "wk"], ["k"]),
        helper.make_node("MatMul", ["ln", "wv"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Div", ["s", "scale"], ["s2"]),
        helper.make_node("Softmax", ["s2"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["a"]),
        helper.make_node("MatMul", ["a", "wo"], ["o"]),
        helper.make_node("Add", ["x", "o"], ["h"]),
        helper.make_node("Sigmoid", ["h"], ["g"]),
        helper.make_node("Mul", ["h", "g"], ["sw"]),
        helper.make_node("Concat", ["sw", "x"], ["cat"], axis=-1),
        helper.make_node("Hardmax", ["cat"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 2 * d])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in w.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_attention_block(tmp_path, caplog):
    path = tmp_path / "block.onnx"
    onnx.save(_attention_block(), path)
    with caplog.at_level(logging.WARNING):
        g = from_onnx(path, name="blk")
    assert g.name == "blk"
    assert g.op_counts() == collections.Counter(
        input=1, embedding=1, layer_norm=1, dense=4, attention=1, add=1, swish=1, concat=1, other=1, output=1
    )
    assert "'Hardmax': 1" in caplog.text
    edges = _edges_by_op(g)
    assert edges[("dense", "attention")] == 3 and edges[("attention", "dense")] == 1
    assert edges[("embedding", "add")] == 1 and edges[("embedding", "concat")] == 1
    ops = g.op_names
    assert g.node_attrs(ops.index("embedding")) == {"channels_in": 10.0, "channels_out": 4.0, "params": 40.0}
    assert g.node_attrs(ops.index("layer_norm")) == {"channels_in": 4.0, "channels_out": 4.0}
    assert g.node_attrs(ops.index("attention")) == {"heads": 1.0, "features": 4.0}


def test_activation_variants():
    w = {"w": np.ones((4, 4)), "lo": 0.0, "hi": 6.0, "three": 3.0, "half": 0.5, "c": 0.04}
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Clip", ["h", "lo", "hi"], ["relu6"]),
        helper.make_node("Pow", ["h", "three"], ["cube"]),
        helper.make_node("Mul", ["cube", "c"], ["cube_c"]),
        helper.make_node("Add", ["h", "cube_c"], ["inner"]),
        helper.make_node("Tanh", ["inner"], ["t"]),
        helper.make_node("Mul", ["h", "t"], ["gelu"]),
        helper.make_node("Add", ["relu6", "gelu"], ["y"]),
    ]
    g = from_onnx(_model(nodes, [("x", [2, 4])], [("y", [2, 4])], w))
    assert g.op_counts() == collections.Counter(input=1, dense=1, relu=1, gelu=1, add=1, output=1)


def test_bad_inputs(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x00not a model\xff" * 3)
    with pytest.raises(ValueError, match="junk.onnx: not a readable ONNX model"):
        from_onnx(path)
    with pytest.raises(FileNotFoundError):
        from_onnx(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="model: expected an onnx.ModelProto"):
        from_onnx(42)
    constant_net = _model([helper.make_node("Relu", ["w"], ["y"])], [("x", [2])], [("y", [2])], {"w": np.ones(2)})
    with pytest.raises(ValueError, match="no output depends on the input"):
        from_onnx(constant_net)


def test_missing_onnx_gives_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install 'fennec_jax\[onnx\]'"):
        from_onnx("model.onnx")
