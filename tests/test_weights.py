"""Tests for fennec_jax.encoders.weights: torch checkpoints (zip and legacy) and safetensors read without
torch, refused when malicious, and laid out as Flax variables that compute what torch computes."""

import collections
import io
import json
import os
import pickle
import struct
import sys
import types
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util

from fennec_jax.archs import architectures
from fennec_jax.core import safe_pickle
from fennec_jax.encoders import weights

# ------------------------------------------------------------------ a hand-made torch.save


class _Storage:
    """A torch storage: ``numel`` elements of ``array``'s dtype, saved once under ``key``."""

    def __init__(self, key, array):
        self.key, self.array = key, np.ascontiguousarray(array).reshape(-1)


class _Tensor:
    """Pickles as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``."""

    def __init__(self, storage, offset, shape, stride, parameter=False):
        self.storage, self.offset, self.shape, self.stride, self.parameter = storage, offset, shape, stride, parameter

    def __reduce__(self):
        fake = sys.modules["torch._utils"]
        tensor = (fake._rebuild_tensor_v2, (self.storage, self.offset, self.shape, self.stride, False, collections.OrderedDict()))
        if self.parameter:
            return fake._rebuild_parameter, (_Reduced(*tensor), True, collections.OrderedDict())
        return tensor


class _Reduced:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


_STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage",
                  np.dtype(ml_dtypes.bfloat16): "BFloat16Storage", np.dtype(np.float16): "HalfStorage"}


@pytest.fixture
def fake_torch(monkeypatch):
    """Registers stand-in ``torch`` / ``torch._utils`` modules so pickle writes torch's global names."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    for name in _STORAGE_NAMES.values():
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    for name in ("_rebuild_tensor_v2", "_rebuild_parameter"):
        func = lambda *args: None
        func.__module__, func.__name__, func.__qualname__ = "torch._utils", name, name
        setattr(utils, name, func)
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


def _pickle_object(obj, storages, legacy):
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=2)

    def persistent_id(value):
        if not isinstance(value, _Storage):
            return None
        storages[value.key] = value
        storage_type = getattr(sys.modules["torch"], _STORAGE_NAMES[value.array.dtype])
        pid = ("storage", storage_type, value.key, "cpu", value.array.size)
        return (*pid, None) if legacy else pid

    pickler.persistent_id = persistent_id
    pickler.dump(obj)
    return buffer.getvalue()


def save_zip(path, obj):
    """``torch.save(obj, path)`` in the zip format (torch >= 1.6)."""
    storages = {}
    data = _pickle_object(obj, storages, legacy=False)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data)
        archive.writestr("archive/byteorder", "little")
        for key, storage in storages.items():
            archive.writestr(f"archive/data/{key}", storage.array.tobytes())
        archive.writestr("archive/version", "3\n")
    return path


def save_legacy(path, obj, data_pickle=None):
    """``torch.save(obj, path, _use_new_zipfile_serialization=False)``."""
    storages = {}
    data = data_pickle if data_pickle is not None else _pickle_object(obj, storages, legacy=True)
    out = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                                   "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(header, out, protocol=2)
    out.write(data)
    keys = sorted(storages)
    pickle.dump(keys, out, protocol=2)
    for key in keys:
        out.write(struct.pack("<q", storages[key].array.size) + storages[key].array.tobytes())
    path.write_bytes(out.getvalue())
    return path


def _example():
    """``(obj, expected)``: a state dict exercising strides, offsets, shared storage, dtypes."""
    rng = np.random.default_rng(0)
    floats = rng.normal(size=20).astype(np.float32)
    shared = _Storage("0", floats)
    longs = _Storage("1", np.arange(4, dtype=np.int64))
    bf16 = _Storage("2", np.array([1.5, -2.0, 0.25], dtype=ml_dtypes.bfloat16))
    obj = collections.OrderedDict(
        [
            ("conv.weight", _Tensor(shared, 0, (2, 1, 2, 2), (4, 4, 2, 1), parameter=True)),
            ("fc.weight_t", _Tensor(shared, 8, (3, 4), (1, 3))),  # a transposed view
            ("bn.num_batches_tracked", _Tensor(longs, 3, (), ())),
            ("ids", _Tensor(longs, 0, (4,), (1,))),
            ("half", _Tensor(bf16, 1, (2,), (1,))),
        ]
    )
    expected = {
        "conv.weight": floats[:8].reshape(2, 1, 2, 2),
        "fc.weight_t": floats[8:20].reshape(4, 3).T,
        "bn.num_batches_tracked": np.array(3, np.int64),
        "ids": np.arange(4, dtype=np.int64),
        "half": np.array([-2.0, 0.25], dtype=ml_dtypes.bfloat16),
    }
    return obj, expected


@pytest.mark.parametrize("save", [save_zip, save_legacy])
def test_reads_torch_checkpoints_both_formats(tmp_path, fake_torch, save):
    obj, expected = _example()
    path = save(tmp_path / "model.pth", obj)
    state = weights.read_state_dict(path)
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert state[key].dtype == value.dtype and state[key].shape == value.shape, key
        np.testing.assert_array_equal(state[key], value, err_msg=key)


def test_reads_wrapped_checkpoint_with_key(tmp_path, fake_torch):
    obj, expected = _example()
    path = save_zip(tmp_path / "ckpt.pth", {"epoch": 7, "state_dict": obj})
    with pytest.raises(ValueError, match="pass key"):
        weights.read_state_dict(path)
    np.testing.assert_array_equal(weights.read_state_dict(path, key="state_dict")["ids"], expected["ids"])
    with pytest.raises(ValueError, match=r"no entry 'model'.*\['epoch', 'state_dict'\]"):
        weights.read_state_dict(path, key="model")
    assert weights.read_torch(path)["epoch"] == 7


def test_tensor_outside_its_storage_is_refused(tmp_path, fake_torch):
    storage = _Storage("0", np.zeros(4, np.float32))
    path = save_zip(tmp_path / "bad.pth", {"w": _Tensor(storage, 2, (2, 2), (2, 1))})
    with pytest.raises(ValueError, match="reaches element 5 of storage '0', which has 4"):
        weights.read_torch(path)


class _System:
    def __reduce__(self):
        return os.system, ("touch pwned",)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_malicious_pickle_in_checkpoint_is_refused_unrun(tmp_path, fake_torch, monkeypatch, fmt):
    monkeypatch.chdir(tmp_path)
    payload = pickle.dumps({"w": _System()}, protocol=2)
    path = tmp_path / "evil.pth"
    if fmt == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", payload)
    else:
        save_legacy(path, None, data_pickle=payload)
    with pytest.raises(safe_pickle.UnsafePickleError, match="system"):
        weights.read_state_dict(path)
    assert not (tmp_path / "pwned").exists()


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(ValueError, match="legacy magic number"):
        weights.read_torch(path)


# ------------------------------------------------------------------ safetensors


def test_reads_handwritten_safetensors(tmp_path):
    f32 = np.arange(6, dtype=np.float32).reshape(2, 3)
    f16 = np.array([0.5, -1.0], np.float16)
    bf16 = np.array([[3.0, -0.125]], ml_dtypes.bfloat16)
    i64 = np.array([-1, 2**40], np.int64)
    header, buffers, offset = {"__metadata__": {"format": "pt"}}, b"", 0
    for name, code, array in (("a", "F32", f32), ("b", "F16", f16), ("c", "BF16", bf16), ("d", "I64", i64)):
        raw = array.tobytes()
        header[name] = {"dtype": code, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        buffers += raw
        offset += len(raw)
    encoded = json.dumps(header).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + buffers)
    tensors = weights.read_safetensors(path)
    assert list(tensors) == ["a", "b", "c", "d"]
    for got, want in zip(tensors.values(), (f32, f16, bf16, i64)):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    assert weights.read_state_dict(path).keys() == tensors.keys()  # detected by content


def test_safetensors_roundtrip_and_bad_offsets(tmp_path):
    tensors = {"x": np.ones((2, 2), np.float32), "y": np.array([True, False]), "z": np.zeros((0, 3), np.int32)}
    path = tmp_path / "t.safetensors"
    weights.write_safetensors(path, tensors, {"format": "pt"})
    raw = path.read_bytes()
    assert struct.unpack("<Q", raw[:8])[0] % 8 == 0
    back = weights.read_safetensors(path)
    for key in tensors:
        np.testing.assert_array_equal(back[key], tensors[key])
    header = json.dumps({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    with pytest.raises(ValueError, match=r"t.safetensors: not a valid safetensors file \(.*offset"):
        weights.read_safetensors(path)


def test_safetensors_float8_and_big_endian_through_the_library(tmp_path):
    # float8 is the one part read by hand (safetensors' NumPy API has no float8); big-endian arrays
    # are stored little-endian by the library. Tensors come back in the order of their bytes.
    tensors = {"e4m3": np.array([0.5, -2.0, 448.0], ml_dtypes.float8_e4m3fn),
               "big": np.arange(3, dtype=">i4"), "e5m2": np.array([[1.0, -0.25]], ml_dtypes.float8_e5m2),
               "f32": np.linspace(0, 1, 5, dtype=np.float32)}
    path = tmp_path / "f8.safetensors"
    weights.write_safetensors(path, tensors)
    back = weights.read_safetensors(path)
    assert sorted(back) == sorted(tensors)
    for name, value in tensors.items():
        assert back[name].dtype == value.dtype.newbyteorder("=") and np.array_equal(back[name], value), name
    with pytest.raises(ValueError, match=r"tensors\['obj'\]: dtype object has no safetensors name"):
        weights.write_safetensors(tmp_path / "bad.safetensors", {"obj": np.array([None])})
    assert not (tmp_path / "bad.safetensors").exists()


# ------------------------------------------------------------------ layout, layer by layer


def _conv_reference(x_nchw, w_oihw, stride, padding, groups):
    """Direct torch ``conv2d`` (cross-correlation) in numpy."""
    n, c, h, w = x_nchw.shape
    o, cg, kh, kw = w_oihw.shape
    x = np.pad(x_nchw, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh, ow = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    out = np.zeros((n, o, oh, ow))
    per_group = o // groups
    for oc in range(o):
        g = oc // per_group
        for i in range(oh):
            for j in range(ow):
                patch = x[:, g * cg:(g + 1) * cg, i * stride:i * stride + kh, j * stride:j * stride + kw]
                out[:, oc, i, j] = np.sum(patch * w_oihw[oc], axis=(1, 2, 3))
    return out


@pytest.mark.parametrize("groups", [1, 4])  # groups == channels: depthwise
def test_conv_in_torch_layout_matches_flax_after_conversion(groups):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 4, 7, 6)).astype(np.float32)
    w = rng.normal(size=(4, 4 // groups, 3, 3)).astype(np.float32)
    reference = _conv_reference(x, w, stride=2, padding=1, groups=groups)
    torch_lax = jax.lax.conv_general_dilated(x, w, (2, 2), [(1, 1), (1, 1)], dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                             feature_group_count=groups)
    np.testing.assert_allclose(torch_lax, reference, rtol=1e-5, atol=1e-5)

    module = architectures.conv(4, 3, stride=2, padding=1, groups=groups, name="0")
    template = weights.variable_shapes(module, jax.ShapeDtypeStruct((1, 7, 6, 4), jnp.float32))
    variables = weights.to_flax({"weight": w}, template)
    assert variables["params"]["kernel"].shape == (3, 3, 4 // groups, 4)
    flax_out = module.apply(variables, x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(flax_out, reference, rtol=1e-5, atol=1e-5)


def test_linear_and_batch_norm_match_torch_semantics():
    rng = np.random.default_rng(2)

    class Head(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.BatchNorm(use_running_average=True, epsilon=1e-5, name="bn")(x)
            return nn.Dense(3, name="fc")(x)

    x = rng.normal(size=(5, 4)).astype(np.float32)
    state = {
        "bn.weight": rng.uniform(0.5, 2, 4), "bn.bias": rng.normal(size=4),
        "bn.running_mean": rng.normal(size=4), "bn.running_var": rng.uniform(0.5, 2, 4),
        "bn.num_batches_tracked": np.array(10),
        "fc.weight": rng.normal(size=(3, 4)), "fc.bias": rng.normal(size=3),
    }
    state = {k: np.asarray(v, np.float32) if k != "bn.num_batches_tracked" else v for k, v in state.items()}
    template = weights.variable_shapes(Head(), jax.ShapeDtypeStruct((1, 4), jnp.float32))
    variables = weights.to_flax(state, template)
    normed = (x - state["bn.running_mean"]) / np.sqrt(state["bn.running_var"] + 1e-5) * state["bn.weight"] + state["bn.bias"]
    reference = normed @ state["fc.weight"].T + state["fc.bias"]  # torch.nn.Linear: x W^T + b
    np.testing.assert_allclose(Head().apply(variables, x), reference, rtol=1e-5, atol=1e-5)
    assert weights.torch_key("batch_stats", ("bn", "var")) == "bn.running_var"
    assert weights.torch_key("params", ("emb", "embedding")) == "emb.weight"


def test_mismatch_report_lists_every_difference():
    model = architectures.build("resnet18", num_classes=10, width_multiplier=0.125)
    template = weights.variable_shapes(model, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    flat = traverse_util.flatten_dict(template)
    state = {}
    for (collection, *path), spec in flat.items():
        shape = spec.shape if path[-1] != "kernel" else (*spec.shape[::-1][:2], *spec.shape[:-2])
        state[weights.torch_key(collection, tuple(path))] = np.zeros(shape, np.float32)
    del state["layer1.0.bn1.running_mean"]
    state["fc.weight"] = np.zeros((1000, 64), np.float32)
    state["head.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(weights.CheckpointMismatchError) as info:
        weights.to_flax(state, template, source="ckpt.pth")
    err = info.value
    assert err.missing == ["layer1.0.bn1.running_mean"]
    assert err.unexpected == ["head.extra.weight"]
    assert err.wrong_shape == {"fc.weight": ((1000, 64), (10, 64))}
    message = str(err)
    assert "ckpt.pth does not fit" in message and "fc.weight: checkpoint shape [1000, 64], architecture expects [10, 64]" in message


def test_load_torchvision_resnet_from_zip_checkpoint(tmp_path, fake_torch):
    model = architectures.build("resnet18", num_classes=10, width_multiplier=0.125)
    x = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype(np.float32)
    template = weights.variable_shapes(model, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    rng = np.random.default_rng(4)  # random values (variances positive) rather than a slow-to-compile init
    variables = jax.tree_util.tree_map(lambda s: rng.uniform(0.5, 1.5, s.shape).astype(np.float32), template)
    state, key = collections.OrderedDict(), 0
    for (collection, *path), value in traverse_util.flatten_dict(variables).items():
        value = np.asarray(value)
        if path[-1] == "kernel":  # to torch layout: [*spatial, I, O] -> [O, I, *spatial]
            value = np.transpose(value, (value.ndim - 1, value.ndim - 2, *range(value.ndim - 2)))
        storage = _Storage(str(key), value)
        strides = tuple(int(s) // value.itemsize for s in np.ascontiguousarray(value).strides)
        state[weights.torch_key(collection, tuple(path))] = _Tensor(storage, 0, value.shape, strides)
        key += 1
    state["bn1.num_batches_tracked"] = _Tensor(_Storage(str(key), np.array([5], np.int64)), 0, (), ())
    path = save_zip(tmp_path / "resnet18.pth", state)
    loaded_model, loaded = weights.load_torchvision("resnet18", path, num_classes=10, width_multiplier=0.125)
    assert loaded_model == model
    apply = jax.jit(model.apply)  # one compilation for both variable trees
    expected = apply(variables, x)
    assert np.all(np.isfinite(expected))
    np.testing.assert_allclose(apply(loaded, x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(weights.CheckpointMismatchError, match="fc.weight: checkpoint shape \\[10, 64\\]"):
        weights.load_torchvision("resnet18", path, num_classes=7, width_multiplier=0.125)
