"""ONNX models as layer-level `ArchGraph`s (optional: ``pip install fennec_jax[onnx]``).

ONNX nodes are walked in graph order through the same `graphs.LayerGraphBuilder` that
the Flax importer uses, so both collapse to the same layers: Conv / ConvTranspose ->
conv (depthwise_conv when ``group`` equals the input channels), Gemm / MatMul with a
weight -> dense, MatMul of two activations -> attention, BatchNormalization ->
batch_norm, LayerNormalization and its relatives -> layer_norm, pooling ops, Concat,
Gather from a weight table -> embedding, activations; a residual Add of two
activations -> add, and shape / cast / bias / scale ops stay part of the layer that
produced their input. A decomposed LayerNorm, x * Sigmoid(x) or exp / sum softmax is
recognised like its jaxpr counterpart; Clip(x, 0, ..) is relu. Dropout is the identity of an
inference graph.
Ops the importer does not know, and control flow (If, Loop, Scan), become ``other``
nodes, counted in one logged warning.
"""

from __future__ import annotations

import collections
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from fennec_jax.archs import graphs
from fennec_jax.core.errors import describe

__all__ = ["from_onnx"]

_log = logging.getLogger(__name__)

_ACTIVATIONS = {
    "Relu": "relu",
    "LeakyRelu": "relu",
    "PRelu": "relu",
    "Elu": "relu",
    "Selu": "relu",
    "Celu": "relu",
    "Softplus": "relu",
    "ThresholdedRelu": "relu",
    "HardSwish": "swish",
    "Mish": "swish",
    "Gelu": "gelu",
    "FastGelu": "gelu",
    "Softmax": "softmax",
    "LogSoftmax": "softmax",
}
_UNARY = {"Sigmoid": "sigmoid", "HardSigmoid": "sigmoid", "Tanh": "tanh", "Erf": "erf", "Exp": "exp", "Sqrt": "rsqrt"}
_BINARY = {
    "Add": "add",
    "Sub": "sub",
    "Mul": "mul",
    "Div": "div",
    "Sum": "add",
    "Max": "other",
    "Min": "other",
    "Mean": "other",
}
_NORMS = {
    "BatchNormalization": "batch_norm",
    "LayerNormalization": "layer_norm",
    "SimplifiedLayerNormalization": "layer_norm",
    "RMSNormalization": "layer_norm",
    "GroupNormalization": "layer_norm",
    "InstanceNormalization": "layer_norm",
}
_POOLS = {"MaxPool": "max_pool", "AveragePool": "avg_pool", "LpPool": "avg_pool"}
_GLOBAL_POOLS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
_REDUCES = frozenset(
    {
        "ReduceMean",
        "ReduceSum",
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSumExp",
        "ReduceSumSquare",
        "ArgMax",
        "ArgMin",
    }
)
# Ops whose output is an elementwise, layout or bookkeeping function of their inputs.
_NOISE = frozenset(
    {
        "Identity",
        "Dropout",
        "Reshape",
        "Flatten",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Cast",
        "CastLike",
        "Slice",
        "Pad",
        "Expand",
        "Tile",
        "Split",
        "Neg",
        "Abs",
        "Floor",
        "Ceil",
        "Round",
        "Sign",
        "Reciprocal",
        "Log",
        "Equal",
        "Greater",
        "GreaterOrEqual",
        "Less",
        "LessOrEqual",
        "Not",
        "And",
        "Or",
        "Where",
        "Resize",
        "Upsample",
        "DepthToSpace",
        "SpaceToDepth",
        "Range",
        "Trilu",
        "CumSum",
    }
)
# Ops whose output depends only on input shapes, never on values.
_SHAPE_ONLY = frozenset({"Shape", "Size", "ConstantOfShape", "EyeLike"})


def from_onnx(model: Any, name: str | None = None) -> graphs.ArchGraph:
    """Layer graph of an ONNX model.

    Args:
      model: an ``onnx.ModelProto`` or the path of a ``.onnx`` file.
      name: the graph's name; default the ONNX graph's name, else the file stem.

    Raises:
      ImportError: the optional ``onnx`` package is missing.
      ValueError: naming the file (or ``model``): it is not an ONNX model, its graph is inconsistent
        (an undefined input, a malformed attribute), or no output depends on a graph input.
    """
    try:
        import onnx
        from onnx import numpy_helper, shape_inference
    except ImportError as exc:
        raise ImportError("from_onnx needs the optional 'onnx' package: pip install 'fennec_jax[onnx]'") from exc

    if isinstance(model, (str, os.PathLike)):
        source = os.fspath(model)
        default_name = os.path.splitext(os.path.basename(source))[0]
        try:
            model = onnx.load(source)
        except FileNotFoundError:
            raise
        except Exception as exc:  # protobuf raises its own DecodeError types.
            raise ValueError(f"{source}: not a readable ONNX model ({describe(exc)})") from None
    elif isinstance(model, onnx.ModelProto):
        source, default_name = "model", ""
    else:
        raise ValueError(f"model: expected an onnx.ModelProto or a path, got {type(model).__name__}")
    try:
        model = shape_inference.infer_shapes(model)
    except Exception as exc:  # Shapes only refine attributes; import without them.
        _log.warning("ONNX shape inference failed (%s); importing without inferred shapes", exc)
    graph = model.graph
    name = name or graph.name or default_name or "onnx_model"
    try:
        return _import_graph(graph, name, onnx, numpy_helper)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, RecursionError) as exc:
        # A model that parses but whose graph is inconsistent (undefined inputs, bad attributes).
        raise ValueError(f"{source}: not a valid ONNX graph ({describe(exc)}); expected a model whose "
                         f"outputs are computed from its inputs (onnx.checker.check_model tells what is wrong)") from None


def _import_graph(graph: Any, name: str, onnx: Any, numpy_helper: Any) -> graphs.ArchGraph:
    """The layer graph of the ONNX ``graph`` (see :func:`from_onnx`)."""
    builder = graphs.LayerGraphBuilder()
    shapes = {info.name: _dims(info) for info in (*graph.input, *graph.value_info, *graph.output)}
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    env: dict[str, Any] = {key: builder.weight(value.shape) for key, value in constants.items()}
    for info in graph.input:
        if info.name not in env:
            env[info.name] = builder.input(shapes[info.name])
    unknown = collections.Counter()
    for node in graph.node:
        if node.op_type == "Constant":
            value = _constant(node, onnx, numpy_helper)
            constants[node.output[0]] = value
            env[node.output[0]] = builder.weight(np.shape(value), learned=False)
            continue
        ins = [env[i] for i in node.input if i]
        out_shapes = [shapes.get(o, ()) for o in node.output]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        outs = _node(builder, node, ins, out_shapes, attrs, [constants.get(i) for i in node.input], unknown)
        env.update((key, value) for key, value in zip(node.output, outs) if key)
    if unknown:
        _log.warning("%s: ONNX ops imported as 'other': %s", name, dict(unknown))
    return builder.finish([env[o.name] for o in graph.output], name)


def _dims(info: Any) -> tuple[int, ...]:
    """Static shape of a ValueInfoProto; unknown dimensions are 0."""
    tensor = info.type.tensor_type
    if not tensor.HasField("shape"):
        return ()
    return tuple(d.dim_value if d.HasField("dim_value") else 0 for d in tensor.shape.dim)


def _constant(node: Any, onnx: Any, numpy_helper: Any) -> np.ndarray:
    attr = node.attribute[0]
    if attr.name == "value":
        return numpy_helper.to_array(attr.t)
    return np.asarray(onnx.helper.get_attribute_value(attr))


def _node(
    builder: graphs.LayerGraphBuilder,
    node: Any,
    ins: list[Any],
    out_shapes: list[tuple[int, ...]],
    attrs: dict[str, Any],
    constants: list[np.ndarray | None],
    unknown: collections.Counter,
) -> list[Any]:
    """Values of one ONNX node's outputs."""
    op, shape = node.op_type, out_shapes[0] if out_shapes else ()
    if op in ("Conv", "ConvTranspose"):
        return [builder.layer(*_conv(op, ins, shape, attrs))]
    if op in ("Gemm", "MatMul"):
        a, b = ins[0], ins[1]
        out = builder.matmul(a, b, shape, _matmul_attrs(op, a, b, attrs))
        return [builder.binary("add", out, ins[2], shape) if len(ins) > 2 else out]
    if op in _ACTIVATIONS:
        return [builder.activation(_ACTIVATIONS[op], ins[0], shape)]
    if op == "Clip":  # Clip(x, 0, 6) is relu6; other clips are bookkeeping.
        low = attrs.get("min", _scalar(constants[1]) if len(constants) > 1 else None)
        return [builder.activation("relu", ins[0], shape) if low == 0 else builder.merge(ins, shape)]
    if op in _UNARY:
        return [builder.unary(_UNARY[op], ins[0], shape)]
    if op == "Pow":
        exponent = constants[1] if len(constants) > 1 else None
        kind = {3.0: "cube", 0.5: "rsqrt", -0.5: "rsqrt"}.get(_scalar(exponent), "none")
        return [builder.binary("other", builder.unary(kind, ins[0], shape), ins[1], shape)]
    if op in _BINARY:
        value = ins[0]
        for other in ins[1:]:
            value = builder.binary(_BINARY[op], value, other, shape)
        return [value]
    if op in _NORMS:
        channels = float(math.prod(ins[1].shape)) if len(ins) > 1 else 0.0
        norm = builder.layer(_NORMS[op], ins, shape, {"channels_in": channels, "channels_out": channels})
        return [norm] * len(out_shapes)
    if op in _POOLS:
        pool_attrs = {"kernel_size": max(attrs.get("kernel_shape", [1])), "stride": max(attrs.get("strides", [1]))}
        return [builder.layer(_POOLS[op], ins[:1], shape, pool_attrs)] * len(out_shapes)
    if op in _GLOBAL_POOLS:
        return [builder.layer("global_pool", ins, shape)]
    if op in _REDUCES:
        axes = attrs.get("axes", attrs.get("axis"))
        if axes is None and len(constants) > 1 and constants[1] is not None:
            axes = constants[1].tolist()
        ndim = len(ins[0].shape)
        axes = range(ndim) if axes is None else [a % ndim if ndim else a for a in np.atleast_1d(axes).tolist()]
        return [builder.reduce(ins[0], list(axes), shape)]
    if op == "Concat":
        return [builder.concat(ins, shape)]
    if op == "Gather":
        return [builder.gather(ins[0], ins[1], shape)]
    if op in _SHAPE_ONLY:
        return [builder.weight(s, learned=False) for s in out_shapes]
    if op in _NOISE or not any(builder.is_activation(v) for v in ins):
        return [builder.merge(ins, s) for s in out_shapes]
    unknown[op] += 1
    other = builder.layer("other", ins, shape)
    return [other] * len(out_shapes)


def _scalar(value: np.ndarray | None) -> float | None:
    return float(value.reshape(())) if value is not None and value.size == 1 else None


def _conv(op: str, ins: list, shape: Sequence[int], attrs: dict[str, Any]) -> tuple[str, list, Sequence[int], dict]:
    """(op, inputs, shape, attrs) of a Conv / ConvTranspose node; weights [C_out, C_in / groups, k...]
    for Conv, [C_in, C_out / groups, k...] for ConvTranspose."""
    w = ins[1].shape
    groups = int(attrs.get("group", 1))
    if op == "Conv":
        channels_in, channels_out = w[1] * groups, w[0]
    else:
        channels_in, channels_out = w[0], w[1] * groups
    layer_attrs = {
        "channels_in": channels_in,
        "channels_out": channels_out,
        "kernel_size": max(attrs.get("kernel_shape", w[2:]) or [1]),
        "stride": max(attrs.get("strides", [1])),
        "dilation": max(attrs.get("dilations", [1])),
        "groups": groups,
        "params": math.prod(w),
    }
    kind = "depthwise_conv" if groups > 1 and groups == channels_in else "conv"
    return kind, ins, shape, layer_attrs


def _matmul_attrs(op: str, a: Any, b: Any, attrs: dict[str, Any]) -> dict[str, float]:
    """dense: channels in / out and weight size; attention: heads and features per head."""
    if graphs.LayerGraphBuilder.is_activation(a) and graphs.LayerGraphBuilder.is_activation(b):
        heads = a.shape[1] if len(a.shape) == 4 else 1
        return {"heads": heads, "features": a.shape[-1] if a.shape else 0}
    w = b if not graphs.LayerGraphBuilder.is_activation(b) else a
    if len(w.shape) < 2:
        return {"params": math.prod(w.shape)}
    rows, cols = w.shape[-2:]
    transposed = attrs.get("transB", 0) if w is b else not attrs.get("transA", 0)
    channels_in, channels_out = (cols, rows) if transposed else (rows, cols)
    return {"channels_in": channels_in, "channels_out": channels_out, "params": math.prod(w.shape)}
