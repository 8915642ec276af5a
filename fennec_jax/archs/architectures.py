"""Flax (linen) definitions of the torchvision vision families used by the bundled model zoos.

ResNet-18/50/101/152, AlexNet, GoogLeNet, Inception-v3, DenseNet-121/169/201, MobileNetV2 and
MNASNet-1.0, with torchvision's layer structure and parameter counts (checked against the
published counts in ``tests/test_architectures.py``). Look them up by torchvision's builder
name in :data:`ARCHITECTURES` or through :func:`build`.

Calling convention (all models)
-------------------------------
``model.apply(variables, x[N, H, W, 3], train=False, return_features=False)`` returns
``logits[N, num_classes]``, or ``(logits, features[N, D])`` with ``return_features=True``,
where ``features`` is the input of the last linear layer (before its dropout): the pooled
trunk output for every family except AlexNet, where it is the second 4096-wide hidden layer.
Inputs are NHWC; spatial sides below :func:`min_input_size` raise ``ValueError``.

- ``train=True`` normalises with batch statistics; pass ``mutable=['batch_stats']`` to get the
  updated running averages, and ``rngs={'dropout': key}`` for the families with dropout
  (AlexNet, GoogLeNet, Inception-v3, MobileNetV2, MNASNet).
- GoogLeNet and Inception-v3 built with ``aux_logits=True`` create torchvision's auxiliary
  heads (``aux1``, ``aux2``; ``AuxLogits``) and, in training, ``sow`` their logits into
  ``variables['intermediates']['aux_logits']``, a tuple in network order (GoogLeNet: aux1,
  aux2): add ``'intermediates'`` to ``mutable`` to read them. Without ``aux_logits`` (the
  default) the heads do not exist, as in torchvision's pretrained models.

Width
-----
Every model takes ``width_multiplier`` (default 1.0) to train small versions quickly. For
ResNet, AlexNet, GoogLeNet, Inception-v3 and DenseNet every channel count (DenseNet: growth
rate and stem) is scaled and rounded, at least 1. MobileNetV2 and MNASNet use torchvision's
own ``width_mult`` / ``alpha`` rules: channels rounded to multiples of 8 and the 1280-wide
last layer kept.

Parameter names mirror torchvision's state dict
-----------------------------------------------
Each torchvision submodule is a flax submodule of the same name, ``nn.Sequential`` indices
included, so ``flax.traverse_util.flatten_dict(variables[collection], sep='.')`` gives
torchvision's keys up to the leaf name (:func:`torch_name`): ``params`` ``kernel`` ->
``weight`` (conv ``[kh, kw, in/groups, out]`` -> ``[out, in/groups, kh, kw]``, linear
``[in, out]`` -> ``[out, in]``), ``scale`` -> ``weight``, ``bias`` -> ``bias``;
``batch_stats`` ``mean`` / ``var`` -> ``running_mean`` / ``running_var``. Flattening before
a linear layer happens in NCHW order (AlexNet, GoogLeNet's aux heads), so linear weights
need only the transpose. Layers without variables (ReLU, pooling, dropout) carry no names.
torchvision's ``transform_input`` (GoogLeNet, Inception-v3 pretrained weights) is an input
normalisation without parameters and is left to the caller.

Initialisation (not part of the structure): convolutions He (truncated) normal over fan-out,
linear layers torch's default uniform over fan-in with zero bias, batch norm ones and zeros.
Batch-norm momentum and epsilon are torchvision's per family (GoogLeNet and Inception-v3 eps
1e-3; MNASNet's very slow running averages, see :class:`MNASNet`). On CPU prefer
:func:`init_variables` to ``model.init``: it compiles several times faster.
:func:`num_params` counts parameters from shapes alone.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fennec_jax.archs import graphs
from fennec_jax.core.registry import Registry

__all__ = [
    "ARCHITECTURES",
    "AlexNet",
    "BasicBlock",
    "Bottleneck",
    "DenseNet",
    "GoogLeNet",
    "InceptionV3",
    "MNASNet",
    "MobileNetV2",
    "ResNet",
    "adaptive_avg_pool",
    "avg_pool",
    "build",
    "graph",
    "init_variables",
    "input_size",
    "max_pool",
    "min_input_size",
    "num_params",
    "torch_name",
]

Array = jax.Array

_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_DENSE_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
_TORCH_LEAF_NAMES = {
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
}


# ----------------------------------------------------------------------------- building blocks


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (v[0], v[1])


def _scaled(channels: int, width_multiplier: float) -> int:
    """``channels * width_multiplier`` rounded, at least 1."""
    return max(1, int(round(channels * width_multiplier)))


def conv(
    features: int,
    kernel: int | Sequence[int],
    stride: int = 1,
    padding: int | Sequence[int] = 0,
    groups: int = 1,
    use_bias: bool = False,
    name: str | None = None,
) -> nn.Conv:
    """``torch.nn.Conv2d`` with symmetric zero ``padding`` (an int or ``(ph, pw)``)."""
    ph, pw = _pair(padding)
    return nn.Conv(
        features,
        _pair(kernel),
        strides=_pair(stride),
        padding=((ph, ph), (pw, pw)),
        feature_group_count=groups,
        use_bias=use_bias,
        kernel_init=_CONV_INIT,
        name=name,
    )


def dense(features: int, name: str | None = None) -> nn.Dense:
    """``torch.nn.Linear``."""
    return nn.Dense(features, kernel_init=_DENSE_INIT, name=name)


def batch_norm(train: bool, eps: float = 1e-5, momentum: float = 0.9, name: str | None = None):
    """``torch.nn.BatchNorm2d(eps=eps, momentum=1 - momentum)``: flax counts momentum the other way."""
    return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=eps, name=name)


class Nest(nn.Module):
    """One named level of the parameter tree, like a torch ``nn.Sequential``.

    ``body(*args)`` runs inside this module, so the layers it creates are named under it
    (``features/0/kernel``). A method of the enclosing module used as ``body`` must be marked
    ``@nn.nowrap``: a wrapped method would create its layers in the enclosing module instead.
    """

    body: Callable[..., Any]

    @nn.compact
    def __call__(self, *args):
        return self.body(*args)


class ConvBN(nn.Module):
    """Conv (no bias) -> batch norm -> ``activation``.

    torchvision's ``BasicConv2d`` (children ``conv``, ``bn``) and ``Conv2dNormActivation``
    (children ``0``, ``1``: pass ``names=('0', '1')``); ``activation=None`` for a linear output.
    """

    features: int
    kernel: int | Sequence[int]
    stride: int = 1
    padding: int | Sequence[int] = 0
    groups: int = 1
    activation: Callable[[Array], Array] | None = nn.relu
    bn_eps: float = 1e-5
    bn_momentum: float = 0.9
    names: tuple[str, str] = ("conv", "bn")

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        conv_name, bn_name = self.names
        x = conv(self.features, self.kernel, self.stride, self.padding, self.groups, name=conv_name)(x)
        x = batch_norm(train, self.bn_eps, self.bn_momentum, name=bn_name)(x)
        return x if self.activation is None else self.activation(x)


def _pool_padding(size: int, window: int, stride: int, padding: int, ceil_mode: bool) -> tuple[int, int]:
    """``(low, high)`` padding that makes a VALID pool produce torch's output length."""
    if not ceil_mode:
        return padding, padding
    out = -(-(size + 2 * padding - window) // stride) + 1
    if (out - 1) * stride >= size + padding:  # torch: the last window must start inside the input
        out -= 1
    return padding, (out - 1) * stride + window - size - padding


def max_pool(x: Array, window: int, stride: int, padding: int = 0, ceil_mode: bool = False) -> Array:
    """``torch.nn.MaxPool2d(window, stride, padding, ceil_mode=ceil_mode)`` on ``x[N, H, W, C]``."""
    pads = [_pool_padding(size, window, stride, padding, ceil_mode) for size in x.shape[1:3]]
    return nn.max_pool(x, (window, window), (stride, stride), padding=pads)


def avg_pool(x: Array, window: int, stride: int, padding: int = 0) -> Array:
    """``torch.nn.AvgPool2d(window, stride, padding)`` (padding counted) on ``x[N, H, W, C]``."""
    pad = ((padding, padding), (padding, padding))
    return nn.avg_pool(x, (window, window), (stride, stride), padding=pad, count_include_pad=True)


def _adaptive_pool_matrix(size: int, out: int) -> np.ndarray:
    """``weights[out, size]``: row ``i`` averages torch's adaptive window ``[floor(i*size/out),
    ceil((i+1)*size/out))``."""
    weights = np.zeros((out, size), np.float32)
    for i in range(out):
        lo, hi = (i * size) // out, -(-((i + 1) * size) // out)
        weights[i, lo:hi] = 1.0 / (hi - lo)
    return weights


def adaptive_avg_pool(x: Array, output_size: int | Sequence[int]) -> Array:
    """``torch.nn.AdaptiveAvgPool2d(output_size)``: ``x[N, H, W, C]`` -> ``[N, oh, ow, C]``."""
    oh, ow = _pair(output_size)
    if x.shape[1:3] == (oh, ow):
        return x
    rows = jnp.asarray(_adaptive_pool_matrix(x.shape[1], oh), x.dtype)
    cols = jnp.asarray(_adaptive_pool_matrix(x.shape[2], ow), x.dtype)
    return jnp.einsum("nhwc,ih,jw->nijc", x, rows, cols)


def _flatten_nchw(x: Array) -> Array:
    """``x[N, H, W, C]`` -> ``[N, C*H*W]`` in torch's ``flatten`` order."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


def _global_avg_pool(x: Array) -> Array:
    """``x[N, H, W, C]`` -> ``[N, C]``."""
    return x.mean(axis=(1, 2))


def _check_input(x: Array, min_size: int, model: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"x: expected images [N, H, W, C] for {model}, got shape {x.shape}")
    if min(x.shape[1:3]) < min_size:
        raise ValueError(
            f"x: {model} needs height and width >= {min_size}, got {x.shape[1]}x{x.shape[2]}"
        )


def _outputs(logits: Array, features: Array, return_features: bool):
    return (logits, features) if return_features else logits


# ----------------------------------------------------------------------------- ResNet


def _resnet_shortcut(x: Array, features: int, stride: int, train: bool) -> Array:
    """Identity, or torchvision's ``downsample`` (1x1 conv + bn) when the shape changes."""
    if stride == 1 and x.shape[-1] == features:
        return x
    return ConvBN(features, 1, stride, activation=None, names=("0", "1"), name="downsample")(x, train)


class BasicBlock(nn.Module):
    """ResNet-18/34 block: two 3x3 convs; output ``planes`` channels."""

    planes: int
    stride: int = 1
    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        y = nn.relu(batch_norm(train, name="bn1")(conv(self.planes, 3, self.stride, 1, name="conv1")(x)))
        y = batch_norm(train, name="bn2")(conv(self.planes, 3, 1, 1, name="conv2")(y))
        return nn.relu(y + _resnet_shortcut(x, self.planes, self.stride, train))


class Bottleneck(nn.Module):
    """ResNet-50+ block (v1.5: stride on the 3x3 conv); output ``4 * planes`` channels."""

    planes: int
    stride: int = 1
    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        out = self.planes * self.expansion
        y = nn.relu(batch_norm(train, name="bn1")(conv(self.planes, 1, name="conv1")(x)))
        y = nn.relu(batch_norm(train, name="bn2")(conv(self.planes, 3, self.stride, 1, name="conv2")(y)))
        y = batch_norm(train, name="bn3")(conv(out, 1, name="conv3")(y))
        return nn.relu(y + _resnet_shortcut(x, out, self.stride, train))


class ResNet(nn.Module):
    """torchvision ``ResNet``; ``stage_sizes`` blocks in ``layer1`` .. ``layer4``; features
    ``512 * expansion`` wide (scaled)."""

    block: type[BasicBlock] | type[Bottleneck]
    stage_sizes: Sequence[int]
    num_classes: int = 1000
    width_multiplier: float = 1.0
    input_size: ClassVar[int] = 224
    min_input_size: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x: Array, train: bool = False, return_features: bool = False):
        _check_input(x, self.min_input_size, "ResNet")
        width = _scaled(64, self.width_multiplier)
        x = nn.relu(batch_norm(train, name="bn1")(conv(width, 7, 2, 3, name="conv1")(x)))
        x = max_pool(x, 3, 2, 1)
        for i, num_blocks in enumerate(self.stage_sizes):
            x = Nest(self._stage, name=f"layer{i + 1}")(x, width * 2**i, 1 if i == 0 else 2, num_blocks, train)
        features = _global_avg_pool(x)
        return _outputs(dense(self.num_classes, name="fc")(features), features, return_features)

    @nn.nowrap
    def _stage(self, x: Array, planes: int, stride: int, num_blocks: int, train: bool) -> Array:
        for j in range(num_blocks):
            x = self.block(planes, stride if j == 0 else 1, name=str(j))(x, train)
        return x


# ----------------------------------------------------------------------------- AlexNet


class AlexNet(nn.Module):
    """torchvision ``AlexNet``: ``features.{0,3,6,8,10}`` convs, 6x6 adaptive pool,
    ``classifier.{1,4,6}`` linears; features are the 4096-wide (scaled) second hidden layer."""

    num_classes: int = 1000
    width_multiplier: float = 1.0
    dropout: float = 0.5
    input_size: ClassVar[int] = 224
    min_input_size: ClassVar[int] = 63

    @nn.compact
    def __call__(self, x: Array, train: bool = False, return_features: bool = False):
        _check_input(x, self.min_input_size, "AlexNet")
        x = Nest(self._features, name="features")(x)
        x = _flatten_nchw(adaptive_avg_pool(x, 6))
        logits, features = Nest(self._classifier, name="classifier")(x, train)
        return _outputs(logits, features, return_features)

    @nn.nowrap
    def _features(self, x: Array) -> Array:
        s = functools.partial(_scaled, width_multiplier=self.width_multiplier)
        x = max_pool(nn.relu(conv(s(64), 11, 4, 2, use_bias=True, name="0")(x)), 3, 2)
        x = max_pool(nn.relu(conv(s(192), 5, 1, 2, use_bias=True, name="3")(x)), 3, 2)
        x = nn.relu(conv(s(384), 3, 1, 1, use_bias=True, name="6")(x))
        x = nn.relu(conv(s(256), 3, 1, 1, use_bias=True, name="8")(x))
        x = nn.relu(conv(s(256), 3, 1, 1, use_bias=True, name="10")(x))
        return max_pool(x, 3, 2)

    @nn.nowrap
    def _classifier(self, x: Array, train: bool) -> tuple[Array, Array]:
        hidden = _scaled(4096, self.width_multiplier)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.relu(dense(hidden, name="1")(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        features = nn.relu(dense(hidden, name="4")(x))
        return dense(self.num_classes, name="6")(features), features


# ----------------------------------------------------------------------------- GoogLeNet

# torchvision's Inception blocks: name -> (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj).
_GOOGLENET_BLOCKS = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}

# Max pool (window) before a block and aux heads after one.
_GOOGLENET_POOL_BEFORE = {"4a": 3, "5a": 2}
_GOOGLENET_AUX_AFTER = {"4a": "aux1", "4d": "aux2"}

# torchvision's BasicConv2d of GoogLeNet and Inception-v3: conv, bn (eps 1e-3), relu.
_BasicConv2d = functools.partial(ConvBN, bn_eps=1e-3)


class GoogLeNetInception(nn.Module):
    """torchvision GoogLeNet ``Inception``; the "5x5" branch uses a 3x3 conv, as torchvision does."""

    ch1x1: int
    ch3x3red: int
    ch3x3: int
    ch5x5red: int
    ch5x5: int
    pool_proj: int

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        def reduce_then_3x3(y: Array, reduce: int, out: int) -> Array:
            y = _BasicConv2d(reduce, 1, name="0")(y, train)
            return _BasicConv2d(out, 3, padding=1, name="1")(y, train)

        def pool_proj(y: Array) -> Array:
            return _BasicConv2d(self.pool_proj, 1, name="1")(max_pool(y, 3, 1, 1, ceil_mode=True), train)

        return jnp.concatenate(
            [
                _BasicConv2d(self.ch1x1, 1, name="branch1")(x, train),
                Nest(reduce_then_3x3, name="branch2")(x, self.ch3x3red, self.ch3x3),
                Nest(reduce_then_3x3, name="branch3")(x, self.ch5x5red, self.ch5x5),
                Nest(pool_proj, name="branch4")(x),
            ],
            axis=-1,
        )


class GoogLeNetAux(nn.Module):
    """torchvision GoogLeNet ``InceptionAux``: 4x4 pool, 1x1 conv, ``fc1``, dropout, ``fc2``."""

    num_classes: int
    width_multiplier: float = 1.0
    dropout: float = 0.7

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        x = _BasicConv2d(_scaled(128, self.width_multiplier), 1, name="conv")(adaptive_avg_pool(x, 4), train)
        x = nn.relu(dense(_scaled(1024, self.width_multiplier), name="fc1")(_flatten_nchw(x)))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return dense(self.num_classes, name="fc2")(x)


class GoogLeNet(nn.Module):
    """torchvision ``GoogLeNet``; features 1024 wide (scaled). ``aux_logits`` adds ``aux1``
    (after 4a) and ``aux2`` (after 4d)."""

    num_classes: int = 1000
    width_multiplier: float = 1.0
    aux_logits: bool = False
    dropout: float = 0.2
    aux_dropout: float = 0.7
    input_size: ClassVar[int] = 224
    min_input_size: ClassVar[int] = 15

    @nn.compact
    def __call__(self, x: Array, train: bool = False, return_features: bool = False):
        _check_input(x, self.min_input_size, "GoogLeNet")
        s = functools.partial(_scaled, width_multiplier=self.width_multiplier)
        x = _BasicConv2d(s(64), 7, 2, 3, name="conv1")(x, train)
        x = max_pool(x, 3, 2, ceil_mode=True)
        x = _BasicConv2d(s(64), 1, name="conv2")(x, train)
        x = _BasicConv2d(s(192), 3, padding=1, name="conv3")(x, train)
        x = max_pool(x, 3, 2, ceil_mode=True)
        for block, channels in _GOOGLENET_BLOCKS.items():
            if block in _GOOGLENET_POOL_BEFORE:
                x = max_pool(x, _GOOGLENET_POOL_BEFORE[block], 2, ceil_mode=True)
            x = GoogLeNetInception(*map(s, channels), name=f"inception{block}")(x, train)
            if block in _GOOGLENET_AUX_AFTER and self.aux_logits and (train or self.is_initializing()):
                name = _GOOGLENET_AUX_AFTER[block]
                head = GoogLeNetAux(self.num_classes, self.width_multiplier, self.aux_dropout, name=name)
                self.sow("intermediates", "aux_logits", head(x, train))
        features = _global_avg_pool(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(features)
        return _outputs(dense(self.num_classes, name="fc")(x), features, return_features)


# ----------------------------------------------------------------------------- Inception-v3

_ROW_1x7 = ((1, 7), (0, 3))  # (kernel, padding) of a 1x7 conv
_COL_7x1 = ((7, 1), (3, 0))  # (kernel, padding) of a 7x1 conv


def _inception_branch(x: Array, train: bool, layers: Sequence[tuple[str, int, Any, Any]]) -> Array:
    """Chain of ``(name, out_channels, kernel, padding)`` BasicConv2d layers, stride 1."""
    for name, features, kernel, padding in layers:
        x = _BasicConv2d(features, kernel, padding=padding, name=name)(x, train)
    return x


class InceptionA(nn.Module):
    """Mixed_5b/5c/5d: 1x1, 5x5, double 3x3 and pooled-projection branches."""

    pool_features: int
    width_multiplier: float = 1.0

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        s = functools.partial(_scaled, width_multiplier=self.width_multiplier)
        return jnp.concatenate(
            [
                _inception_branch(x, train, [("branch1x1", s(64), 1, 0)]),
                _inception_branch(x, train, [("branch5x5_1", s(48), 1, 0), ("branch5x5_2", s(64), 5, 2)]),
                _inception_branch(
                    x,
                    train,
                    [
                        ("branch3x3dbl_1", s(64), 1, 0),
                        ("branch3x3dbl_2", s(96), 3, 1),
                        ("branch3x3dbl_3", s(96), 3, 1),
                    ],
                ),
                _inception_branch(avg_pool(x, 3, 1, 1), train, [("branch_pool", s(self.pool_features), 1, 0)]),
            ],
            axis=-1,
        )


class InceptionB(nn.Module):
    """Mixed_6a: grid reduction 35 -> 17."""

    width_multiplier: float = 1.0

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        s = functools.partial(_scaled, width_multiplier=self.width_multiplier)
        double = _inception_branch(x, train, [("branch3x3dbl_1", s(64), 1, 0), ("branch3x3dbl_2", s(96), 3, 1)])
        return jnp.concatenate(
            [
                _BasicConv2d(s(384), 3, 2, name="branch3x3")(x, train),
                _BasicConv2d(s(96), 3, 2, name="branch3x3dbl_3")(double, train),
                max_pool(x, 3, 2),
            ],
            axis=-1,
        )


class InceptionC(nn.Module):
    """Mixed_6b..6e: factorised 7x7 branches with ``channels_7x7`` inner channels."""

    channels_7x7: int
    width_multiplier: float = 1.0

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        s = functools.partial(_scaled, width_multiplier=self.width_multiplier)
        c7 = s(self.channels_7x7)
        return jnp.concatenate(
            [
                _inception_branch(x, train, [("branch1x1", s(192), 1, 0)]),
                _inception_branch(
                    x,
                    train,
                    [("branch7x7_1", c7, 1, 0), ("branch7x7_2", c7, *_ROW_1x7), ("branch7x7_3", s(192), *_COL_7x1)],
                ),
                _inception_branch(
                    x,
                    train,
                    [
                        ("branch7x7dbl_1", c7, 1, 0),
                        ("branch7x7dbl_2", c7, *_COL_7x1),
                        ("branch7x7dbl_3", c7, *_ROW_1x7),
                        ("branch7x7dbl_4", c7, *_COL_7x1),
                        ("branch7x7dbl_5", s(192), *_ROW_1x7),
                    ],
                ),
                _inception_branch(avg_pool(x, 3, 1, 1), train, [("branch_pool", s(192), 1, 0)]),
            ],
            axis=-1,
        )


class InceptionD(nn.Module):
    """Mixed_7a: grid reduction 17 -> 8."""

    width_multiplier: float = 1.0

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        s = functools.partial(_scaled, width_multiplier=self.width_multiplier)
        reduced = _BasicConv2d(s(192), 1, name="branch3x3_1")(x, train)
        seven = _inception_branch(
            x,
            train,
            [("branch7x7x3_1", s(192), 1, 0), ("branch7x7x3_2", s(192), *_ROW_1x7), ("branch7x7x3_3", s(192), *_COL_7x1)],
        )
        return jnp.concatenate(
            [
                _BasicConv2d(s(320), 3, 2, name="branch3x3_2")(reduced, train),
                _BasicConv2d(s(192), 3, 2, name="branch7x7x3_4")(seven, train),
                max_pool(x, 3, 2),
            ],
            axis=-1,
        )


class InceptionE(nn.Module):
    """Mixed_7b/7c: branches split into parallel 1x3 and 3x1 convs."""

    width_multiplier: float = 1.0

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        s = functools.partial(_scaled, width_multiplier=self.width_multiplier)

        def split(y: Array, prefix: str) -> list[Array]:
            return [
                _BasicConv2d(s(384), (1, 3), padding=(0, 1), name=f"{prefix}a")(y, train),
                _BasicConv2d(s(384), (3, 1), padding=(1, 0), name=f"{prefix}b")(y, train),
            ]

        single = _BasicConv2d(s(384), 1, name="branch3x3_1")(x, train)
        double = _inception_branch(x, train, [("branch3x3dbl_1", s(448), 1, 0), ("branch3x3dbl_2", s(384), 3, 1)])
        return jnp.concatenate(
            [
                _BasicConv2d(s(320), 1, name="branch1x1")(x, train),
                *split(single, "branch3x3_2"),
                *split(double, "branch3x3dbl_3"),
                _BasicConv2d(s(192), 1, name="branch_pool")(avg_pool(x, 3, 1, 1), train),
            ],
            axis=-1,
        )


class InceptionAux(nn.Module):
    """Inception-v3 ``AuxLogits`` head on the 17x17 grid (needs 299x299 inputs)."""

    num_classes: int
    width_multiplier: float = 1.0

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        x = _BasicConv2d(_scaled(128, self.width_multiplier), 1, name="conv0")(avg_pool(x, 5, 3), train)
        x = _BasicConv2d(_scaled(768, self.width_multiplier), 5, name="conv1")(x, train)
        return dense(self.num_classes, name="fc")(_global_avg_pool(x))


class InceptionV3(nn.Module):
    """torchvision ``Inception3``; features 2048 wide (scaled). ``aux_logits`` adds
    ``AuxLogits`` after Mixed_6e and raises the minimum input to 299."""

    num_classes: int = 1000
    width_multiplier: float = 1.0
    aux_logits: bool = False
    dropout: float = 0.5
    input_size: ClassVar[int] = 299

    @property
    def min_input_size(self) -> int:
        return 299 if self.aux_logits else 75

    @nn.compact
    def __call__(self, x: Array, train: bool = False, return_features: bool = False):
        _check_input(x, self.min_input_size, "InceptionV3")
        w = self.width_multiplier
        s = functools.partial(_scaled, width_multiplier=w)
        x = _BasicConv2d(s(32), 3, 2, name="Conv2d_1a_3x3")(x, train)
        x = _BasicConv2d(s(32), 3, name="Conv2d_2a_3x3")(x, train)
        x = _BasicConv2d(s(64), 3, padding=1, name="Conv2d_2b_3x3")(x, train)
        x = max_pool(x, 3, 2)
        x = _BasicConv2d(s(80), 1, name="Conv2d_3b_1x1")(x, train)
        x = _BasicConv2d(s(192), 3, name="Conv2d_4a_3x3")(x, train)
        x = max_pool(x, 3, 2)
        for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
            x = InceptionA(pool_features, w, name=name)(x, train)
        x = InceptionB(w, name="Mixed_6a")(x, train)
        for name, channels_7x7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(channels_7x7, w, name=name)(x, train)
        if self.aux_logits and (train or self.is_initializing()):
            self.sow("intermediates", "aux_logits", InceptionAux(self.num_classes, w, name="AuxLogits")(x, train))
        x = InceptionD(w, name="Mixed_7a")(x, train)
        x = InceptionE(w, name="Mixed_7b")(x, train)
        x = InceptionE(w, name="Mixed_7c")(x, train)
        features = _global_avg_pool(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(features)
        return _outputs(dense(self.num_classes, name="fc")(x), features, return_features)


# ----------------------------------------------------------------------------- DenseNet


class DenseLayer(nn.Module):
    """torchvision ``_DenseLayer``: bn-relu-1x1 conv (``bn_size * growth_rate``) -bn-relu-3x3
    conv; returns only the ``growth_rate`` new channels."""

    growth_rate: int
    bn_size: int = 4

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        x = conv(self.bn_size * self.growth_rate, 1, name="conv1")(nn.relu(batch_norm(train, name="norm1")(x)))
        return conv(self.growth_rate, 3, 1, 1, name="conv2")(nn.relu(batch_norm(train, name="norm2")(x)))


class DenseNet(nn.Module):
    """torchvision ``DenseNet``: ``features.{conv0, norm0, denseblockI.denselayerJ, transitionI,
    norm5}`` and ``classifier``; features as wide as the last block's output."""

    block_config: Sequence[int] = (6, 12, 24, 16)
    growth_rate: int = 32
    num_init_features: int = 64
    bn_size: int = 4
    num_classes: int = 1000
    width_multiplier: float = 1.0
    input_size: ClassVar[int] = 224
    min_input_size: ClassVar[int] = 29

    @nn.compact
    def __call__(self, x: Array, train: bool = False, return_features: bool = False):
        _check_input(x, self.min_input_size, "DenseNet")
        features = _global_avg_pool(nn.relu(Nest(self._features, name="features")(x, train)))
        return _outputs(dense(self.num_classes, name="classifier")(features), features, return_features)

    @nn.nowrap
    def _features(self, x: Array, train: bool) -> Array:
        growth = _scaled(self.growth_rate, self.width_multiplier)
        x = conv(_scaled(self.num_init_features, self.width_multiplier), 7, 2, 3, name="conv0")(x)
        x = max_pool(nn.relu(batch_norm(train, name="norm0")(x)), 3, 2, 1)
        for i, num_layers in enumerate(self.block_config):
            x = Nest(self._dense_block, name=f"denseblock{i + 1}")(x, num_layers, growth, train)
            if i + 1 < len(self.block_config):
                x = Nest(self._transition, name=f"transition{i + 1}")(x, train)
        return batch_norm(train, name="norm5")(x)

    @nn.nowrap
    def _dense_block(self, x: Array, num_layers: int, growth: int, train: bool) -> Array:
        for j in range(num_layers):
            new = DenseLayer(growth, self.bn_size, name=f"denselayer{j + 1}")(x, train)
            x = jnp.concatenate([x, new], axis=-1)
        return x

    @nn.nowrap
    def _transition(self, x: Array, train: bool) -> Array:
        x = conv(x.shape[-1] // 2, 1, name="conv")(nn.relu(batch_norm(train, name="norm")(x)))
        return avg_pool(x, 2, 2)


# ----------------------------------------------------------------------------- MobileNetV2


def _make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's channel rounding: nearest multiple of ``divisor``, never 10% below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


# torchvision's inverted residual setting: (expand ratio t, channels c, repeats n, stride s).
_MOBILENET_V2_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)

_ConvBNReLU6 = functools.partial(ConvBN, activation=nn.relu6, names=("0", "1"))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: ``conv.{0: 1x1 expand (if expand_ratio > 1), dw 3x3, 1x1 project, bn}``."""

    features: int
    stride: int
    expand_ratio: int

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        y = Nest(self._conv, name="conv")(x, train)
        return x + y if self.stride == 1 and x.shape[-1] == self.features else y

    @nn.nowrap
    def _conv(self, x: Array, train: bool) -> Array:
        hidden = int(round(x.shape[-1] * self.expand_ratio))
        first = 0
        if self.expand_ratio != 1:
            x = _ConvBNReLU6(hidden, 1, name="0")(x, train)
            first = 1
        x = _ConvBNReLU6(hidden, 3, self.stride, 1, groups=hidden, name=str(first))(x, train)
        x = conv(self.features, 1, name=str(first + 1))(x)
        return batch_norm(train, name=str(first + 2))(x)


class MobileNetV2(nn.Module):
    """torchvision ``MobileNetV2`` (``width_multiplier`` = its ``width_mult``): ``features.0..18``,
    ``classifier.1``; features 1280 wide (more when ``width_multiplier > 1``)."""

    num_classes: int = 1000
    width_multiplier: float = 1.0
    dropout: float = 0.2
    input_size: ClassVar[int] = 224
    min_input_size: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x: Array, train: bool = False, return_features: bool = False):
        _check_input(x, self.min_input_size, "MobileNetV2")
        features = _global_avg_pool(Nest(self._features, name="features")(x, train))
        logits = Nest(self._classifier, name="classifier")(features, train)
        return _outputs(logits, features, return_features)

    @nn.nowrap
    def _features(self, x: Array, train: bool) -> Array:
        w = self.width_multiplier
        x = _ConvBNReLU6(_make_divisible(32 * w), 3, 2, 1, name="0")(x, train)
        index = 1
        for expand_ratio, channels, repeats, stride in _MOBILENET_V2_STAGES:
            for j in range(repeats):
                features = _make_divisible(channels * w)
                x = InvertedResidual(features, stride if j == 0 else 1, expand_ratio, name=str(index))(x, train)
                index += 1
        return _ConvBNReLU6(_make_divisible(1280 * max(1.0, w)), 1, name=str(index))(x, train)

    @nn.nowrap
    def _classifier(self, x: Array, train: bool) -> Array:
        return dense(self.num_classes, name="1")(nn.Dropout(self.dropout, deterministic=not train)(x))


# ----------------------------------------------------------------------------- MNASNet

# torchvision's MNASNet stacks after the stem: (kernel, stride, expansion, repeats).
_MNASNET_STACKS = ((3, 2, 3, 3), (5, 2, 3, 3), (5, 2, 6, 3), (3, 1, 6, 2), (5, 2, 6, 4), (3, 1, 6, 1))
_MNASNET_DEPTHS = (32, 16, 24, 40, 80, 96, 192, 320)
_MNASNET_BN_MOMENTUM = 1 - 0.0003  # torchvision's momentum 0.0003, flax convention


def _round_to_multiple_of(value: float, divisor: int = 8, round_up_bias: float = 0.9) -> int:
    """torchvision MNASNet's rounding: nearest multiple of ``divisor``, never below ``round_up_bias * value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded if rounded >= round_up_bias * value else rounded + divisor


class MnasInvertedResidual(nn.Module):
    """MNASNet ``_InvertedResidual``: ``layers.{0,1: 1x1 expand, 3,4: dw kxk, 6,7: 1x1 project}``."""

    features: int
    kernel: int
    stride: int
    expansion: int
    bn_momentum: float = _MNASNET_BN_MOMENTUM

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        y = Nest(self._layers, name="layers")(x, train)
        return x + y if self.stride == 1 and x.shape[-1] == self.features else y

    @nn.nowrap
    def _layers(self, x: Array, train: bool) -> Array:
        mid = x.shape[-1] * self.expansion
        bn = functools.partial(batch_norm, train, momentum=self.bn_momentum)
        x = nn.relu(bn(name="1")(conv(mid, 1, name="0")(x)))
        x = nn.relu(bn(name="4")(conv(mid, self.kernel, self.stride, self.kernel // 2, groups=mid, name="3")(x)))
        return bn(name="7")(conv(self.features, 1, name="6")(x))


class MNASNet(nn.Module):
    """torchvision ``MNASNet`` (``width_multiplier`` = its ``alpha``): ``layers.0..16``,
    ``classifier.1``; features 1280 wide. ``bn_momentum`` is torchvision's slow 0.0003 (flax
    0.9997): pass 0.9 when training briefly from scratch."""

    num_classes: int = 1000
    width_multiplier: float = 1.0
    dropout: float = 0.2
    bn_momentum: float = _MNASNET_BN_MOMENTUM
    input_size: ClassVar[int] = 224
    min_input_size: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x: Array, train: bool = False, return_features: bool = False):
        _check_input(x, self.min_input_size, "MNASNet")
        features = _global_avg_pool(Nest(self._layers, name="layers")(x, train))
        logits = Nest(self._classifier, name="classifier")(features, train)
        return _outputs(logits, features, return_features)

    @nn.nowrap
    def _layers(self, x: Array, train: bool) -> Array:
        depths = [_round_to_multiple_of(d * self.width_multiplier) for d in _MNASNET_DEPTHS]
        bn = functools.partial(batch_norm, train, momentum=self.bn_momentum)
        x = nn.relu(bn(name="1")(conv(depths[0], 3, 2, 1, name="0")(x)))
        x = nn.relu(bn(name="4")(conv(depths[0], 3, 1, 1, groups=depths[0], name="3")(x)))
        x = bn(name="7")(conv(depths[1], 1, name="6")(x))
        for i, (stack, out) in enumerate(zip(_MNASNET_STACKS, depths[2:])):
            x = Nest(self._stack, name=str(8 + i))(x, out, *stack, train)
        return nn.relu(bn(name="15")(conv(1280, 1, name="14")(x)))

    @nn.nowrap
    def _stack(
        self, x: Array, features: int, kernel: int, stride: int, expansion: int, repeats: int, train: bool
    ) -> Array:
        for j in range(repeats):
            stride_j = stride if j == 0 else 1
            x = MnasInvertedResidual(features, kernel, stride_j, expansion, self.bn_momentum, name=str(j))(x, train)
        return x

    @nn.nowrap
    def _classifier(self, x: Array, train: bool) -> Array:
        return dense(self.num_classes, name="1")(nn.Dropout(self.dropout, deterministic=not train)(x))


# ----------------------------------------------------------------------------- registry

ARCHITECTURES: Registry[Callable[..., nn.Module]] = Registry("architecture")
ARCHITECTURES.register("resnet18", functools.partial(ResNet, BasicBlock, (2, 2, 2, 2)))
ARCHITECTURES.register("resnet50", functools.partial(ResNet, Bottleneck, (3, 4, 6, 3)))
ARCHITECTURES.register("resnet101", functools.partial(ResNet, Bottleneck, (3, 4, 23, 3)))
ARCHITECTURES.register("resnet152", functools.partial(ResNet, Bottleneck, (3, 8, 36, 3)))
ARCHITECTURES.register("alexnet", AlexNet)
ARCHITECTURES.register("googlenet", GoogLeNet)
ARCHITECTURES.register("inception_v3", InceptionV3)
ARCHITECTURES.register("densenet121", functools.partial(DenseNet, (6, 12, 24, 16)))
ARCHITECTURES.register("densenet169", functools.partial(DenseNet, (6, 12, 32, 32)))
ARCHITECTURES.register("densenet201", functools.partial(DenseNet, (6, 12, 48, 32)))
ARCHITECTURES.register("mobilenet_v2", MobileNetV2)
ARCHITECTURES.register("mnasnet1_0", MNASNet)

"""torchvision builder name -> constructor taking ``num_classes``, ``width_multiplier`` and the
family's options (``aux_logits``, ``dropout``, ...)."""


def _constructor(name: str) -> Callable[..., nn.Module]:
    return ARCHITECTURES.get(name)


def build(name: str, num_classes: int = 1000, width_multiplier: float = 1.0, **kw) -> nn.Module:
    """The ``name`` architecture with a ``num_classes`` head, channels scaled by ``width_multiplier``."""
    constructor = _constructor(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes: expected a positive integer, got {num_classes!r}")
    if (
        isinstance(width_multiplier, bool)
        or not isinstance(width_multiplier, numbers.Real)
        or not 0 < width_multiplier < np.inf
    ):
        raise ValueError(f"width_multiplier: expected a positive finite number, got {width_multiplier!r}")
    return constructor(num_classes=int(num_classes), width_multiplier=float(width_multiplier), **kw)


def graph(name: str, num_classes: int = 1000, input_side: int | None = None) -> graphs.ArchGraph:
    """The layer graph of ``build(name, num_classes)`` in inference mode, traced with
    `graphs.from_flax` on one ``input_side``-square RGB image (default: `input_size`),
    named ``name``."""
    model = build(name, num_classes)
    side = input_size(name) if input_side is None else input_side
    return graphs.from_flax(model, jnp.zeros((1, side, side, 3), jnp.float32), name, train=False)


def input_size(name: str) -> int:
    """Side of the square input torchvision's pretrained ``name`` uses: 299 for inception_v3, else 224."""
    return _constructor(name)().input_size


def min_input_size(name: str, **kw) -> int:
    """Smallest height and width ``build(name, **kw)`` accepts."""
    return _constructor(name)(**kw).min_input_size


def init_variables(model: nn.Module, x: Array, seed: int = 0) -> dict:
    """``model.init`` for inputs like ``x[N, H, W, C]``, jitted, from an ``'rbg'`` key.

    Same distributions as ``model.init(jax.random.key(seed), x)`` but not the same numbers, and
    several times faster on CPU, where XLA compiles threefry random numbers once per parameter
    shape (tens of seconds for GoogLeNet). ``'rbg'`` numbers may differ between backends.
    """
    return jax.jit(model.init)(jax.random.key(seed, impl="rbg"), x)


def num_params(model: nn.Module) -> int:
    """Number of trainable parameters of ``model`` (batch-norm running statistics excluded),
    from shapes only (``jax.eval_shape``: nothing is allocated or computed)."""
    x = jax.ShapeDtypeStruct((1, model.input_size, model.input_size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(variables["params"]))


def torch_name(path: Sequence[str]) -> str:
    """torchvision state-dict key of the flax variable at ``path`` (as from ``flatten_dict``),
    e.g. ``('layer1', '0', 'bn1', 'mean')`` -> ``'layer1.0.bn1.running_mean'``."""
    *modules, leaf = path
    if leaf not in _TORCH_LEAF_NAMES:
        raise ValueError(f"path: unknown leaf {leaf!r}; expected one of {sorted(_TORCH_LEAF_NAMES)}")
    return ".".join([*modules, _TORCH_LEAF_NAMES[leaf]])


def depthwise_as_shifts(next_fun, args, kwargs, context):
    """A flax method interceptor computing depthwise convolutions (``feature_group_count`` equal
    to the input channels, one filter each) as a sum of ``kh * kw`` shifted, scaled slices of the
    padded input: the same function and gradients, but XLA:CPU runs a vmapped grouped convolution
    (and its backward pass) several times slower than these elementwise ops. Every other call
    (and initialisation) goes through unchanged."""
    module = context.module
    if (context.method_name != "__call__" or not isinstance(module, nn.Conv) or module.feature_group_count == 1
            or module.is_initializing() or not isinstance(module.padding, (tuple, list))
            or module.kernel_dilation not in (None, 1, (1, 1)) or module.input_dilation not in (None, 1, (1, 1))):
        return next_fun(*args, **kwargs)
    x = args[0]
    kernel = module.variables["params"]["kernel"]  # [kh, kw, 1, C]
    if kernel.shape[2] != 1 or kernel.shape[3] != x.shape[-1] or module.feature_group_count != x.shape[-1]:
        return next_fun(*args, **kwargs)
    (kh, kw), (sh, sw) = kernel.shape[:2], (module.strides if isinstance(module.strides, (tuple, list))
                                             else (module.strides or 1,) * 2)
    padded = jnp.pad(x, ((0, 0), *[tuple(p) for p in module.padding], (0, 0)))
    rows, cols = (padded.shape[1] - kh) // sh + 1, (padded.shape[2] - kw) // sw + 1
    out = sum(padded[:, i:i + sh * (rows - 1) + 1:sh, j:j + sw * (cols - 1) + 1:sw, :] * kernel[i, j, 0]
              for i in range(kh) for j in range(kw))
    return out + module.variables["params"]["bias"] if module.use_bias else out
