"""Pretrained weights from local files, without a hub and without torch.

Reading (every reader returns ``state_dict: dict[str, np.ndarray]`` or a tree holding arrays):

- PyTorch checkpoints (``.pth`` / ``.pt`` / ``.bin``) in both of ``torch.save``'s formats:
  the zip format (torch >= 1.6: an archive with ``<root>/data.pkl`` and one raw storage per
  ``<root>/data/<key>``) and the legacy format (five concatenated pickles -- magic number,
  protocol version, system info, the object, the storage keys -- then each storage as an
  int64 element count and its raw bytes). The object pickle is read through
  :mod:`fennec_jax.core.safe_pickle`, admitting only :data:`TORCH_GLOBALS` (the tensor-rebuild
  functions, the storage types and ``collections.OrderedDict``); the torch names are served by
  numpy stand-ins, so torch is never imported. Any other global (a pickled module, a
  ``os.system`` gadget) raises :class:`~fennec_jax.core.safe_pickle.UnsafePickleError` before
  anything is imported or called. Tensors are bounds-checked against their storage.
- safetensors files, read and written with the ``safetensors`` package's NumPy API
  (:func:`read_safetensors`, :func:`write_safetensors`); float8 tensors, which that API
  cannot return, are read here at the offsets the library validated.

Layout (:func:`to_flax`): a Flax variable tree is filled from a state dict by naming each Flax
leaf with its PyTorch key (:func:`torch_key`): module paths are joined with dots, and the leaf
``params/kernel``, ``params/scale`` and ``params/embedding`` become ``weight``,
``batch_stats/mean`` and ``batch_stats/var`` become ``running_mean`` and ``running_var``; other
parameter names (``bias``, ``class_embedding``) are kept. Kernels change layout: a convolution
``weight[O, I/groups, *spatial]`` becomes ``kernel[*spatial, I/groups, O]`` (depthwise
convolutions included: ``[C, 1, kh, kw]`` -> ``[kh, kw, 1, C]``) and a linear
``weight[out, in]`` becomes ``kernel[in, out]``. ``num_batches_tracked`` entries are ignored. A
checkpoint that does not fit raises :class:`CheckpointMismatchError` listing every missing,
unexpected and wrongly shaped key.

:func:`load_torchvision` does both for the :mod:`fennec_jax.archs.architectures` models, whose module
names mirror torchvision's state-dict keys.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import struct
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy
from flax import traverse_util

from fennec_jax.archs import architectures
from fennec_jax.core import atomic_io
from fennec_jax.core import safe_pickle
from fennec_jax.core.errors import describe

__all__ = [
    "TORCH_GLOBALS",
    "CheckpointMismatchError",
    "read_torch",
    "read_safetensors",
    "from_flax",
    "write_safetensors",
    "read_state_dict",
    "torch_key",
    "to_flax",
    "variable_shapes",
    "load_torchvision",
]

# ------------------------------------------------------------------------------ torch pickles

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """Stand-in for ``torch.<Type>Storage`` inside a pickle."""

    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _StorageRef:
    """A storage named in a pickle: ``numel`` elements from element ``offset`` of root storage ``key``."""

    key: str
    dtype: np.dtype
    numel: int
    offset: int = 0


@dataclasses.dataclass(frozen=True)
class _TensorRef:
    """A tensor rebuilt by a pickle, materialised once the storages have been read."""

    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *_unused) -> _TensorRef:
    """Stand-in for ``torch._utils._rebuild_tensor(_v2)``; ``requires_grad``, hooks and metadata dropped."""
    if not isinstance(storage, _StorageRef):
        raise ValueError(f"tensor storage is a {type(storage).__name__}, not a storage reference")
    return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data, *_unused):
    """Stand-in for ``torch._utils._rebuild_parameter(_with_state)``: the tensor itself."""
    return data


_TORCH_SUBSTITUTES: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
}

TORCH_GLOBALS: frozenset[tuple[str, str]] = frozenset({*_TORCH_SUBSTITUTES, ("collections", "OrderedDict")})
"""The ``(module, name)`` globals a checkpoint pickle may reference; everything else is refused."""


class _StorageCollector:
    """``persistent_load`` for torch pickles: turns storage ids into :class:`_StorageRef`s.

    Persistent ids are ``('storage', storage_type, key, location, numel)``, legacy ones with a
    sixth entry ``view_metadata = None | (view_key, offset, numel)``.
    """

    def __init__(self, source: str):
        self.source = source
        self.root_sizes: dict[str, tuple[np.dtype, int]] = {}

    def __call__(self, pid) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise ValueError(f"{self.source}: unsupported persistent id {pid!r:.200}")
        _, storage_type, key, _location, numel, *view = pid
        if not isinstance(storage_type, _StorageType):
            raise ValueError(f"{self.source}: storage {key!r} has an unsupported type {storage_type!r:.100}")
        key = str(key)
        known = self.root_sizes.setdefault(key, (storage_type.dtype, int(numel)))
        if known != (storage_type.dtype, int(numel)):
            raise ValueError(f"{self.source}: storage {key!r} is declared twice with different types or sizes")
        if view and view[0] is not None:
            _view_key, offset, view_numel = view[0]
            return _StorageRef(key, storage_type.dtype, int(view_numel), int(offset))
        return _StorageRef(key, storage_type.dtype, int(numel))


def _materialise(tree, storages: Mapping[str, np.ndarray], source: str):
    """``tree`` with every :class:`_TensorRef` replaced by a numpy array copied out of ``storages``."""
    if isinstance(tree, _TensorRef):
        return _tensor(tree, storages[tree.storage.key], source)
    if isinstance(tree, Mapping):
        return {key: _materialise(value, storages, source) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_materialise(value, storages, source) for value in tree)
    return tree


def _tensor(ref: _TensorRef, root: np.ndarray, source: str) -> np.ndarray:
    """The strided view ``ref`` of storage ``root``, copied; ValueError if it reaches outside the storage."""
    storage = ref.storage
    if len(ref.shape) != len(ref.stride) or any(s < 0 for s in (*ref.shape, *ref.stride)) or ref.offset < 0:
        raise ValueError(f"{source}: invalid tensor shape {ref.shape} / stride {ref.stride} / offset {ref.offset}")
    if storage.offset < 0 or storage.offset + storage.numel > root.size:
        raise ValueError(f"{source}: storage view of {storage.key!r} reaches outside its {root.size} elements")
    view = root[storage.offset:storage.offset + storage.numel]
    if 0 in ref.shape:
        return np.zeros(ref.shape, view.dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
    if last >= view.size:
        raise ValueError(
            f"{source}: tensor of shape {ref.shape} (stride {ref.stride}, offset {ref.offset}) reaches element "
            f"{last} of storage {storage.key!r}, which has {view.size}"
        )
    strides = tuple(s * view.itemsize for s in ref.stride)
    strided = np.lib.stride_tricks.as_strided(view[ref.offset:], ref.shape, strides, writeable=False)
    return np.array(strided)


def _storage_array(data: bytes, dtype: np.dtype, numel: int, key: str, source: str) -> np.ndarray:
    if len(data) != numel * dtype.itemsize:
        raise ValueError(
            f"{source}: storage {key!r} has {len(data)} bytes, expected {numel} x {dtype.itemsize} "
            f"({dtype.name})"
        )
    return np.frombuffer(data, dtype)


def _read_zip(data: bytes, source: str):
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - zipfile raises many types for a corrupt directory
        raise ValueError(f"{source}: not a readable zip archive ({describe(exc)}); expected a file written by "
                         f"torch.save") from None

    def read(name: str) -> bytes:
        try:
            return archive.read(name)
        except KeyError:
            raise ValueError(f"{source}: {name} is missing from the archive") from None
        except Exception as exc:  # noqa: BLE001 - zipfile / zlib errors of a damaged member
            raise ValueError(f"{source}: zip member {name} is unreadable ({describe(exc)})") from None

    with archive:
        names = archive.namelist()
        unsafe = [n for n in names if n.startswith(("/", "\\")) or ".." in n.replace("\\", "/").split("/")]
        if unsafe:  # never extracted, but no torch.save writes such names: refuse the archive
            raise ValueError(f"{source}: refused a zip member named {unsafe[0]!r:.200} (an absolute path or one "
                             f"with '..'); expected a torch.save archive")
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{source}: a torch zip checkpoint has one <root>/data.pkl, found {pickles}")
        root = pickles[0][: -len("data.pkl")]
        if f"{root}byteorder" in names and read(f"{root}byteorder").strip() != b"little":
            raise ValueError(f"{source}: big-endian checkpoints are not supported")
        collector = _StorageCollector(source)
        obj = safe_pickle.load_stream(
            io.BytesIO(read(pickles[0])),
            TORCH_GLOBALS,
            source=source,
            substitutes=_TORCH_SUBSTITUTES,
            persistent_load=collector,
        )
        storages = {key: _storage_array(read(f"{root}data/{key}"), dtype, numel, key, source)
                    for key, (dtype, numel) in collector.root_sizes.items()}
    return _materialise(obj, storages, source)


def _read_legacy(data: bytes, source: str):
    stream = io.BytesIO(data)

    def plain_pickle():
        return safe_pickle.load_stream(stream, (), source=source)

    if plain_pickle() != _LEGACY_MAGIC:
        raise ValueError(f"{source}: not a torch checkpoint (no zip archive and no legacy magic number)")
    protocol = plain_pickle()
    if protocol != _LEGACY_PROTOCOL:
        raise ValueError(f"{source}: unsupported legacy protocol version {protocol!r}")
    sys_info = plain_pickle()
    if not isinstance(sys_info, Mapping) or not sys_info.get("little_endian", False):
        raise ValueError(f"{source}: only little-endian legacy checkpoints are supported (sys info {sys_info!r:.200})")
    collector = _StorageCollector(source)
    obj = safe_pickle.load_stream(
        stream, TORCH_GLOBALS, source=source, substitutes=_TORCH_SUBSTITUTES, persistent_load=collector
    )
    keys = plain_pickle()
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(collector.root_sizes):
        raise ValueError(f"{source}: the storage key list does not match the storages the pickle uses")
    storages = {}
    for key in map(str, keys):
        dtype, numel = collector.root_sizes[key]
        header = stream.read(8)
        if len(header) != 8 or struct.unpack("<q", header)[0] != numel:
            raise ValueError(f"{source}: storage {key!r} is truncated or has the wrong element count")
        storages[key] = _storage_array(stream.read(numel * dtype.itemsize), dtype, numel, key, source)
    if stream.read(1):
        raise ValueError(f"{source}: unexpected bytes after the last storage")
    return _materialise(obj, storages, source)


def read_torch(path: str | os.PathLike):
    """The object saved by ``torch.save`` at ``path``, tensors as numpy arrays (torch not needed).

    Dicts (``OrderedDict`` included) come back as plain dicts in the same order; lists, tuples
    and scalars as they are. bfloat16 tensors use ``ml_dtypes.bfloat16``.

    Raises:
      UnsafePickleError: the pickle references a global outside :data:`TORCH_GLOBALS`.
      ValueError: one line naming the file: not a torch checkpoint, corrupt, truncated, a zip
        member named with an absolute path or ``..``, or a tensor outside its storage.
    """
    source = os.fspath(path)
    with open(path, "rb") as file:
        data = file.read()
    try:
        return _read_zip(data, source) if data.startswith(b"PK\x03\x04") else _read_legacy(data, source)
    except RecursionError:  # a pickle nesting lists millions deep
        raise ValueError(f"{source}: objects nested too deeply; expected a file written by torch.save") from None


# ------------------------------------------------------------------------------ safetensors

_SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64),
    "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_SAFETENSORS_NAMES = {dtype: name for name, dtype in _SAFETENSORS_DTYPES.items()}
# The dtypes safetensors' NumPy API returns itself; it cannot return the float8 ones (numpy has no
# float8 type, and the library looks them up in numpy), so those are read here, with ml_dtypes.
_LIBRARY_DTYPES = frozenset(_SAFETENSORS_DTYPES) - {"F8_E4M3", "F8_E5M2"}


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``name -> array`` of a ``.safetensors`` file, in the order of their bytes in the file
    (``__metadata__`` skipped), read with the ``safetensors`` package.

    The library checks the header before anything is allocated (its size, at most 100 MB, and
    every tensor's bytes against its shape and dtype and against the file: the buffer must be
    covered exactly). float8 tensors, which its NumPy API cannot return, are read from the file
    at the offsets it validated. ValueError naming the file for anything that is not a
    safetensors file or holds a dtype outside ``F64 ... BOOL``, ``BF16``, ``F8_E4M3``, ``F8_E5M2``.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as file:
            head = file.read(8)
        with safetensors.safe_open(source, framework="np") as file:
            tensors, offset = {}, 8 + struct.unpack("<Q", head)[0]
            for name in file.offset_keys():
                view = file.get_slice(name)
                code, shape = view.get_dtype(), tuple(view.get_shape())
                if code not in _SAFETENSORS_DTYPES:
                    raise ValueError(f"{source}: tensor {name!r} has dtype {code}; expected one of "
                                     f"{', '.join(sorted(_SAFETENSORS_DTYPES))}")
                dtype, count = _SAFETENSORS_DTYPES[code], math.prod(shape)
                if code in _LIBRARY_DTYPES:
                    tensors[name] = file.get_tensor(name)
                else:  # bytes [offset, offset + size) of this tensor: the library checked they are its own
                    tensors[name] = np.fromfile(source, dtype, count, offset=offset).reshape(shape)
                offset += count * dtype.itemsize
    except safetensors.SafetensorError as exc:
        raise ValueError(f"{source}: not a valid safetensors file ({describe(exc)}); expected an 8-byte header "
                         f"length, a JSON header and the tensors' bytes") from None
    return tensors


def write_safetensors(
    path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> None:
    """Writes ``tensors`` (name -> array; any byte order, stored little-endian) as a safetensors
    file with the ``safetensors`` package, atomically."""
    arrays = {}
    for name, value in tensors.items():
        arrays[name] = np.ascontiguousarray(value)
        if arrays[name].dtype.newbyteorder("=") not in _SAFETENSORS_NAMES:
            raise ValueError(f"tensors[{name!r}]: dtype {arrays[name].dtype} has no safetensors name; expected one "
                             f"of {', '.join(sorted(_SAFETENSORS_DTYPES))}")
    data = safetensors.numpy.save(arrays, dict(metadata) if metadata else None)
    atomic_io.write_bytes(os.fspath(path), data)


def read_state_dict(path: str | os.PathLike, key: str | None = None) -> dict[str, np.ndarray]:
    """``name -> array`` from a safetensors file or a torch checkpoint (format from the content).

    Args:
      path: the file.
      key: for a torch checkpoint that wraps its state dict (``{'state_dict': ..., 'epoch': ...}``),
        the entry holding it.

    Raises:
      ValueError: the file holds something other than a flat ``str -> tensor`` mapping (the
        message lists the top-level entries, to choose ``key``).
    """
    source = os.fspath(path)
    with open(path, "rb") as file:
        head = file.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        if key is not None:
            raise ValueError(f"key: a safetensors file ({source}) holds one flat state dict; got key={key!r}")
        return read_safetensors(path)
    obj = read_torch(path)
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            entries = sorted(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
            raise ValueError(f"key: {source} has no entry {key!r}; it holds {entries}")
        obj = obj[key]
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items()
    ):
        entries = {str(k): type(v).__name__ for k, v in obj.items()} if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"{source}: expected a state dict (str -> tensor); found {entries!s:.500} (pass key=...)")
    return dict(obj)


# ------------------------------------------------------------------------------ Flax layout

_PARAM_LEAVES = {"kernel": "weight", "scale": "weight", "embedding": "weight"}
_BATCH_STAT_LEAVES = {"mean": "running_mean", "var": "running_var"}
_IGNORED_SUFFIX = ".num_batches_tracked"


def torch_key(collection: str, path: tuple[str, ...]) -> str:
    """PyTorch state-dict key of the Flax variable ``variables[collection][path[0]]...[path[-1]]``.

    ``('params', ('features', '0', '0', 'kernel'))`` -> ``'features.0.0.weight'``;
    ``('batch_stats', ('bn1', 'mean'))`` -> ``'bn1.running_mean'``.
    """
    *modules, leaf = path
    if collection == "params":
        return ".".join([*modules, _PARAM_LEAVES.get(leaf, leaf)])
    if collection == "batch_stats" and leaf in _BATCH_STAT_LEAVES:
        return ".".join([*modules, _BATCH_STAT_LEAVES[leaf]])
    raise ValueError(f"collection: no PyTorch name for variable {collection}/{'/'.join(path)}")


def _from_torch_layout(array: np.ndarray, leaf: str) -> np.ndarray:
    """A PyTorch ``weight`` as the Flax leaf ``leaf``: kernels ``[O, I, *spatial]`` -> ``[*spatial, I, O]``."""
    if leaf == "kernel" and array.ndim >= 2:
        return np.transpose(array, (*range(2, array.ndim), 1, 0))
    return array


def _torch_axes(leaf: str, ndim: int) -> tuple[int, ...]:
    """The axes of the Flax leaf ``leaf`` in PyTorch order: the inverse of :func:`_from_torch_layout`."""
    if leaf == "kernel" and ndim >= 2:
        return (ndim - 1, ndim - 2, *range(ndim - 2))
    return tuple(range(ndim))


def _torch_shape(shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
    """Inverse of :func:`_from_torch_layout` on shapes."""
    return tuple(shape[axis] for axis in _torch_axes(leaf, len(shape)))


class CheckpointMismatchError(ValueError):
    """A state dict does not fit a Flax variable tree; ``missing``, ``unexpected``, ``wrong_shape`` say how."""

    def __init__(self, source: str, missing, unexpected, wrong_shape):
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        self.wrong_shape = dict(sorted(wrong_shape.items()))
        lines = [f"{source} does not fit the architecture:"]
        if self.missing:
            lines.append(f"  missing from the checkpoint ({len(self.missing)}): " + ", ".join(self.missing))
        if self.unexpected:
            lines.append(f"  not in the architecture ({len(self.unexpected)}): " + ", ".join(self.unexpected))
        for key, (found, expected) in self.wrong_shape.items():
            lines.append(f"  {key}: checkpoint shape {list(found)}, architecture expects {list(expected)}")
        super().__init__("\n".join(lines))


def variable_shapes(model: nn.Module, *example_inputs, **kwargs) -> dict:
    """``variables`` of ``model.init(key, *example_inputs, **kwargs)`` as ``jax.ShapeDtypeStruct`` leaves,
    from shapes only (nothing is computed)."""
    return jax.eval_shape(lambda *xs: model.init(jax.random.key(0), *xs, **kwargs), *example_inputs)


def to_flax(
    state_dict: Mapping[str, np.ndarray],
    template: Mapping[str, Any],
    *,
    key_fn: Callable[[str, tuple[str, ...]], str] = torch_key,
    source: str = "checkpoint",
) -> dict:
    """Fills the Flax variable tree ``template`` from a PyTorch-layout ``state_dict``.

    Args:
      state_dict: ``key -> array`` in PyTorch layout; keys ending in ``num_batches_tracked``
        are ignored, every other key must be used.
      template: ``{collection: nested dict}`` with array or ``jax.ShapeDtypeStruct`` leaves
        (e.g. from :func:`variable_shapes`); fixes the tree, the shapes and the dtypes.
      key_fn: ``(collection, path) -> state-dict key`` (default :func:`torch_key`).
      source: name of the checkpoint in error messages.

    Returns:
      ``{collection: nested dict of numpy arrays}`` shaped and typed like ``template``.

    Raises:
      CheckpointMismatchError: some template variable has no key, some key has no variable,
        or shapes differ (reported in PyTorch layout); all differences are listed at once.
    """
    flat = traverse_util.flatten_dict(dict(template))
    values, missing, wrong_shape, used = {}, [], {}, set()
    for (collection, *path), leaf_spec in flat.items():
        key = key_fn(collection, tuple(path))
        expected = _torch_shape(tuple(leaf_spec.shape), path[-1])
        if key not in state_dict:
            missing.append(key)
            continue
        used.add(key)
        array = np.asarray(state_dict[key])
        if array.shape != expected:
            wrong_shape[key] = (array.shape, expected)
            continue
        values[(collection, *path)] = _from_torch_layout(array, path[-1]).astype(leaf_spec.dtype)
    unexpected = [k for k in state_dict if k not in used and not k.endswith(_IGNORED_SUFFIX)]
    if missing or unexpected or wrong_shape:
        raise CheckpointMismatchError(source, missing, unexpected, wrong_shape)
    return traverse_util.unflatten_dict(values)


def from_flax(variables: Mapping[str, Any], *, key_fn: Callable[[str, tuple[str, ...]], str] = torch_key
              ) -> dict[str, np.ndarray]:
    """The PyTorch-layout state dict of a Flax variable tree: the inverse of :func:`to_flax`.

    ``to_flax(from_flax(v), v)`` gives ``v`` back; kernels ``[*spatial, I, O]`` become
    ``weight[O, I, *spatial]``. For writing a model's weights where torchvision-layout
    checkpoints are expected (:func:`write_safetensors`).
    """
    out = {}
    for (collection, *path), leaf in traverse_util.flatten_dict(dict(variables)).items():
        array = np.asarray(leaf)
        out[key_fn(collection, tuple(path))] = np.ascontiguousarray(array.transpose(_torch_axes(path[-1], array.ndim)))
    return out


def load_torchvision(
    name: str, path: str | os.PathLike, num_classes: int = 1000, key: str | None = None, **build_kw
) -> tuple[nn.Module, dict]:
    """A :mod:`fennec_jax.archs.architectures` model and its variables from a torchvision checkpoint.

    Args:
      name: torchvision builder name (``'mobilenet_v2'``, ``'resnet50'``, ...; see
        ``architectures.ARCHITECTURES``).
      path: the checkpoint (torch zip or legacy format, or safetensors).
      num_classes: size of the checkpoint's classifier head.
      key: entry of a wrapped checkpoint holding the state dict (see :func:`read_state_dict`).
      **build_kw: passed to ``architectures.build`` (e.g. ``aux_logits=True`` for a GoogLeNet
        checkpoint with auxiliary heads).

    Returns:
      ``(model, variables)`` with ``variables = {'params': ..., 'batch_stats': ...}`` as numpy
      arrays; ``model.apply(variables, x[N, H, W, 3])`` gives the logits.

    Raises:
      CheckpointMismatchError: the checkpoint does not fit the architecture (with the list of
        differences).
    """
    model = architectures.build(name, num_classes, **build_kw)
    side = architectures.input_size(name)
    template = variable_shapes(model, jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32))
    state_dict = read_state_dict(path, key)
    return model, to_flax(state_dict, template, source=os.fspath(path))
