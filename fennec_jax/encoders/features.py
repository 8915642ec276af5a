"""Feature extraction for forward-pass transferability estimators.

An estimator (LogME, LEEP, ...) scores a pre-trained model on a target task from the model's
penultimate features ``features[N, D]`` on the task's ``N`` examples, their labels
``labels[N]``, and, for some estimators, the model's source-head probabilities
``probs[N, Cs]``. This module computes those arrays and stores them per model:

- `load_task_examples` turns a task's data (a ``tfds.data_source(...)`` or a dict of numpy
  arrays) into re-iterable batches of preprocessed images plus ``labels[N]``;
  `preprocess_image` is the default per-image preprocessing.
- `extract_features` runs a model's forward pass over those batches under ``jit``.
- `save_features` / `load_features` write and read ``MODEL.npz`` files (keys ``features``,
  ``labels`` and optionally ``probs``), the input of ``experiments/estimate.py``.

Memory: only one batch of inputs is on the device at a time (plus the batch in flight);
the outputs ``features[N, D]`` (and ``probs[N, Cs]``) are gathered on the host.
"""

from __future__ import annotations

import dataclasses
import functools
import io
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from fennec_jax.core import atomic_io
from fennec_jax.core.npz import read_npz
from fennec_jax.ranking import engine

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Features",
    "ImageBatches",
    "preprocess_image",
    "load_task_examples",
    "extract_features",
    "extract_features_of_models",
    "save_features",
    "load_features",
    "load_feature_dir",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Features:
    """A model's outputs on a task's ``N`` examples.

    Attributes:
      features: ``features[N, D]`` float32 penultimate-layer features.
      probs: ``probs[N, Cs]`` float32 softmax of the source head (rows sum to 1), or None
        when not requested or the model has no source head.
    """

    features: np.ndarray
    probs: np.ndarray | None = None


# ------------------------------------------------------------------------ task examples


def preprocess_image(image, *, size: int | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """One image ``[H, W]`` or ``[H, W, C]`` -> float32 ``[S, S, len(mean)]``, normalised.

    Steps: integer images are scaled by their dtype's maximum (uint8 / 255) to [0, 1]
    (float images are taken to be in [0, 1] already); with ``size``, the image is resized
    to ``size x size`` (bilinear with antialiasing, Pillow; aspect ratio is not kept);
    a single channel is repeated to ``len(mean)`` channels; then ``(x - mean) / std`` per
    channel. ``size=None`` keeps ``H x W``.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise ValueError(f"image: expected shape [H, W] or [H, W, C], got {image.shape}")
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    if mean.ndim != 1 or mean.shape != std.shape or np.any(std <= 0):
        raise ValueError(f"mean, std: expected equal-length sequences with std > 0, got "
                         f"{mean.tolist()} and {std.tolist()}")
    channels = image.shape[-1]
    if channels not in (1, mean.size):
        raise ValueError(f"image: has {channels} channels, expected 1 or len(mean) = {mean.size}")
    if np.issubdtype(image.dtype, np.integer):
        image = image.astype(np.float32) / np.iinfo(image.dtype).max
    else:
        image = image.astype(np.float32)
    if size is not None and image.shape[:2] != (size, size):
        image = _resize(image, size)
    if channels == 1:
        image = np.repeat(image, mean.size, axis=-1)
    return (image - mean) / std


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """float32 ``image[H, W, C]`` -> ``[size, size, C]``, per-channel bilinear (Pillow)."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("preprocess_image(size=...) needs Pillow: pip install pillow") from None
    channels = [Image.fromarray(image[..., c]).resize((size, size), Image.BILINEAR)
                for c in range(image.shape[-1])]
    return np.stack([np.asarray(c, np.float32) for c in channels], axis=-1)


@dataclasses.dataclass(frozen=True)
class ImageBatches:
    """Re-iterable preprocessed images of a task, read from ``source`` one batch at a time.

    Iterating yields float32 ``images[B, ...]`` with ``B = batch_size`` (the last batch may
    be smaller), in the order of ``indices``. Each iteration re-reads ``source``, so the same
    object serves every model. Build it with `load_task_examples`.
    """

    source: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]]
    indices: np.ndarray
    image_key: str
    preprocess: Callable[[np.ndarray], np.ndarray]
    batch_size: int

    @property
    def num_examples(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[np.ndarray]:
        for start in range(0, len(self.indices), self.batch_size):
            chunk = self.indices[start:start + self.batch_size]
            raw = _read(self.source, chunk, self.image_key)
            yield np.stack([self.preprocess(image) for image in raw])


def _read(source, indices: np.ndarray, key: str) -> Sequence:
    """``source[key]`` at ``indices``: a column slice of a dict of arrays, or one record per
    index of a random-access sequence of example dicts (e.g. a tfds data source)."""
    if isinstance(source, Mapping):
        return np.asarray(source[key])[indices]
    return [source[int(i)][key] for i in indices]


def load_task_examples(
    source,
    *,
    image_key: str = "image",
    label_key: str = "label",
    indices: Sequence[int] | None = None,
    preprocess: Callable[[np.ndarray], np.ndarray] = preprocess_image,
    batch_size: int = 256,
) -> tuple[ImageBatches, np.ndarray]:
    """A task's examples as ``(images, labels[N])``, images preprocessed lazily.

    Args:
      source: ``tfds.data_source(name, split=..., data_dir=...)`` (or any random-access
        sequence of example dicts), or a dict of numpy arrays ``{image_key: images[N, ...],
        label_key: labels[N]}``.
      image_key, label_key: the example keys of the image and of its integer class label.
      indices: which examples to use, in this order (default: all). Use it to subsample.
      preprocess: per-image function ``image -> float32 array``; every image must come out
        with the same shape. Default: `preprocess_image` (no resize, ImageNet statistics);
        bind other settings with ``functools.partial(preprocess_image, size=224)``.
      batch_size: examples read and preprocessed per step on the host.

    Returns:
      ``images``: an `ImageBatches` to pass to `extract_features` (re-iterable, reads
      ``source`` again on each pass); ``labels[N]`` int32.

    Labels are read up front. For a sequence source this reads (and decodes) every selected
    record once more than the image passes do.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    if isinstance(source, Mapping):
        for key in (image_key, label_key):
            if key not in source:
                raise ValueError(f"source: has no key {key!r} (keys: {sorted(source)})")
        num_records = len(source[label_key])
        if len(source[image_key]) != num_records:
            raise ValueError(f"source: {len(source[image_key])} images but {num_records} labels")
    elif hasattr(source, "__len__") and hasattr(source, "__getitem__"):
        num_records = len(source)
    else:
        raise ValueError("source: expected a dict of arrays or a random-access sequence of "
                         f"example dicts (e.g. tfds.data_source), got {type(source).__name__}")
    indices = np.arange(num_records) if indices is None else np.asarray(indices)
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"indices: expected a 1-D integer sequence, got {indices.dtype} "
                         f"shape {indices.shape}")
    if indices.size and (indices.min() < 0 or indices.max() >= num_records):
        raise ValueError(f"indices: expected values in [0, {num_records}), got "
                         f"[{indices.min()}, {indices.max()}]")
    try:
        labels = _as_labels(_read(source, indices, label_key), "source labels")
    except KeyError:
        raise ValueError(f"source: examples have no key {label_key!r}") from None
    images = ImageBatches(source, indices, image_key, preprocess, batch_size)
    return images, labels


def _as_labels(labels, where: str) -> np.ndarray:
    """``labels[N]`` as int32, else ValueError naming ``where``."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise ValueError(f"{where}: expected 1-D integer class labels, got dtype {labels.dtype} "
                         f"shape {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{where}: expected labels >= 0, got {labels.min()}")
    return labels.astype(np.int32)


# ---------------------------------------------------------------------- forward passes



def _forward(params, images, *, apply_fn, with_probs: bool):
    """``(features[B, D], probs[B, Cs] or None)`` of one batch, in at least float32."""
    features, logits = apply_fn(params, images)
    batch = images.shape[0]
    if features.ndim != 2 or features.shape[0] != batch:
        raise ValueError(f"apply_fn: expected penultimate features [B={batch}, D], got shape "
                         f"{features.shape}")
    features = features.astype(jnp.promote_types(features.dtype, jnp.float32))
    if not with_probs:
        return features, None
    if logits is None:
        raise ValueError("with_probs=True but apply_fn returned no logits (None): the model "
                         "has no source head")
    if logits.ndim != 2 or logits.shape[0] != batch:
        raise ValueError(f"apply_fn: expected logits [B={batch}, Cs], got shape {logits.shape}")
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    return features, jax.nn.softmax(logits, axis=-1)


def _fixed_batches(examples, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """``(batch[batch_size, ...], valid)`` pairs covering ``examples`` in order.

    ``examples`` is an array ``images[N, ...]`` (sliced) or an iterable of batches of any
    sizes (re-cut). The last batch is zero-padded to ``batch_size``; ``valid`` counts its
    real rows. At most about two batches are held at a time.
    """
    if hasattr(examples, "shape"):
        batches = (examples[s:s + batch_size] for s in range(0, examples.shape[0], batch_size))
    else:
        batches = iter(examples)
    pending, count, example_shape = [], 0, None
    for batch in batches:
        batch = np.asarray(batch)
        if example_shape is None:
            example_shape = batch.shape[1:]
        if batch.ndim == 0 or batch.shape[1:] != example_shape:
            raise ValueError(f"examples: every batch must have shape [B, *{example_shape}], got "
                             f"{batch.shape}")
        pending.append(batch)
        count += batch.shape[0]
        while count >= batch_size:
            joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
            yield joined[:batch_size], batch_size
            rest = joined[batch_size:]
            pending, count = ([rest] if len(rest) else []), len(rest)
    if count:
        joined = np.concatenate(pending)
        padding = np.zeros((batch_size - count, *joined.shape[1:]), joined.dtype)
        yield np.concatenate([joined, padding]), count


@functools.lru_cache(maxsize=64)
def _jitted_forward(apply_fn: Callable, with_probs: bool) -> Callable:
    """One jitted forward per (apply_fn, with_probs), so repeated calls reuse the compilation."""
    return jax.jit(functools.partial(_forward, apply_fn=apply_fn, with_probs=with_probs))


def extract_features(
    apply_fn: Callable,
    params,
    examples: ImageBatches | Iterable[np.ndarray] | np.ndarray,
    batch_size: int,
    *,
    with_probs: bool = False,
    progress: bool = True,
) -> Features:
    """Penultimate features (and source-head probabilities) of a model on a task.

    Args:
      apply_fn: ``apply_fn(params, images[B, ...]) -> (features[B, D], logits[B, Cs] or
        None)``; pure and traceable. Each example's output must not depend on the other
        examples in its batch (e.g. batch norm in inference mode), so results do not depend
        on ``batch_size``.
      params: the model's parameters (a pytree), passed to ``apply_fn``.
      examples: the task's images: an `ImageBatches` from `load_task_examples`, any
        iterable of batches ``images[b, ...]`` (sizes may vary), or an array
        ``images[N, ...]``.
      batch_size: examples per forward pass. Inputs are re-cut to exactly this size and the
        last batch is zero-padded, so ``apply_fn`` compiles once per call; padded rows are
        dropped.
      with_probs: also return ``softmax(logits)``; ValueError if ``apply_fn`` gives None.
      progress: show a tqdm progress bar.

    Returns:
      `Features` with ``features[N, D]`` and ``probs[N, Cs]`` (or None), float32 or wider,
      on the host. ValueError if there are no examples or an output is NaN or infinite.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    forward = _jitted_forward(apply_fn, with_probs)
    if isinstance(examples, ImageBatches):
        total = examples.num_examples
    else:
        total = examples.shape[0] if hasattr(examples, "shape") else None
    features, probs = [], []

    def gather(outputs, valid):  # device -> host, dropping padded rows
        features.append(np.asarray(outputs[0])[:valid])
        if with_probs:
            probs.append(np.asarray(outputs[1])[:valid])

    with tqdm(total=total, unit="example", desc="features", disable=not progress) as bar:
        in_flight = None  # gathered one step late, so the next batch is read meanwhile
        for batch, valid in _fixed_batches(examples, batch_size):
            outputs = forward(params, batch)
            if in_flight is not None:
                gather(*in_flight)
                bar.update(in_flight[1])
            in_flight = (outputs, valid)
        if in_flight is None:
            raise ValueError("examples: no examples")
        gather(*in_flight)
        bar.update(in_flight[1])
    return _finite(Features(np.concatenate(features), np.concatenate(probs) if with_probs else None))


@functools.lru_cache(maxsize=64)
def _jitted_forward_of_models(apply_fn: Callable, with_probs: bool, mesh) -> Callable:
    """:func:`_forward` vmapped over a leading model axis of the parameters (the images
    shared), jitted; with a mesh, its outputs replicated (every process reads them whole)."""
    forward = jax.vmap(functools.partial(_forward, apply_fn=apply_fn, with_probs=with_probs), in_axes=(0, None))
    if mesh is None:
        return jax.jit(forward)
    # Each device maps its own models (shard_map): left to the SPMD partitioner, the vmapped
    # convolutions of a model split over devices computed wrong features (measured: off by 3).
    return engine.jit_split_over_models(forward, mesh)


def extract_features_of_models(
    apply_fn: Callable,
    stacked_params,
    examples: Iterable[np.ndarray] | np.ndarray,
    batch_size: int,
    *,
    with_probs: bool = False,
    mesh=None,
    progress: bool = False,
) -> Features:
    """Features (and source-head probabilities) of M models of one architecture on one
    task: one vmapped forward pass of all of them per batch of examples.

    This is the forward-pass work of the estimators, the job that grows with the zoo: with a
    ``mesh`` (a ``jax.sharding.Mesh`` with a ``"models"`` axis, e.g.
    :func:`fennec_jax.ranking.engine.make_mesh`, across processes after
    :func:`fennec_jax.ranking.distributed.initialize`) the models are split over its devices,
    each device running its share (the model count padded to a multiple of the devices by
    repeating the last model), and every process gets the whole result.

    Args:
      apply_fn: as for :func:`extract_features`, for one model's parameters.
      stacked_params: the M models' parameters, one pytree whose leaves are stacked on a
        leading model axis ``[M, ...]``.
      examples, batch_size, with_probs, progress: as for :func:`extract_features`.

    Returns:
      `Features` with ``features[M, N, D]`` and ``probs[M, N, Cs]`` (or None), on the host.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    leaves = jax.tree_util.tree_leaves(stacked_params)
    counts = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if not leaves or len(counts) != 1 or None in counts:
        raise ValueError(f"stacked_params: expected every leaf stacked on one leading model axis, got leading "
                         f"sizes {sorted(map(str, counts))}")
    (num_models,) = counts
    params = stacked_params
    if mesh is not None:
        if engine.MODELS_AXIS not in mesh.axis_names:
            raise ValueError(f"mesh: expected an axis named {engine.MODELS_AXIS!r}, got axes {mesh.axis_names}")
        pad = -num_models % mesh.shape[engine.MODELS_AXIS]
        params = jax.tree_util.tree_map(
            lambda leaf: np.concatenate([np.asarray(leaf), np.repeat(np.asarray(leaf)[-1:], pad, 0)]), params)
        params = jax.device_put(params, NamedSharding(mesh, PartitionSpec(engine.MODELS_AXIS)))
    forward = _jitted_forward_of_models(apply_fn, with_probs, mesh)
    features, probs = [], []
    with tqdm(total=getattr(examples, "shape", (None,))[0], unit="example", desc="features",
              disable=not progress) as bar:
        for batch, valid in _fixed_batches(examples, batch_size):
            out_features, out_probs = forward(params, batch)
            features.append(np.asarray(out_features)[:num_models, :valid])
            if with_probs:
                probs.append(np.asarray(out_probs)[:num_models, :valid])
            bar.update(valid)
    if not features:
        raise ValueError("examples: no examples")
    return _finite(Features(np.concatenate(features, 1), np.concatenate(probs, 1) if with_probs else None))


def _finite(result: Features) -> Features:
    """``result``, or ValueError if the model produced a NaN or infinity."""
    for name in ("features", "probs"):
        values = getattr(result, name)
        if values is not None and not np.all(np.isfinite(values)):
            raise ValueError(f"apply_fn: produced NaN or infinite {name}")
    return result


# ------------------------------------------------------------------------ feature files

_FEATURE_KEYS = ("features", "labels", "probs")


def _check_arrays(where: str, features, labels, probs):
    """Validated ``(features[N, D] float, labels[N] int32, probs[N, Cs] float or None)``."""
    features = np.asarray(features)
    if features.ndim != 2 or not np.issubdtype(features.dtype, np.floating):
        raise ValueError(f"{where}: features must be a 2-D float array [N, D], got dtype "
                         f"{features.dtype} shape {features.shape}")
    labels = _as_labels(labels, f"{where}: labels")
    if labels.shape[0] != features.shape[0]:
        raise ValueError(f"{where}: features has N = {features.shape[0]} rows but labels has "
                         f"{labels.shape[0]}")
    arrays = {"features": features}
    if probs is not None:
        probs = np.asarray(probs)
        if probs.ndim != 2 or probs.shape[0] != features.shape[0] or not np.issubdtype(
                probs.dtype, np.floating):
            raise ValueError(f"{where}: probs must be a float array [N = {features.shape[0]}, "
                             f"Cs], got dtype {probs.dtype} shape {probs.shape}")
        arrays["probs"] = probs
    for name, values in arrays.items():
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{where}: {name} has NaN or infinite values")
    if probs is not None and (np.any(probs < 0) or not np.allclose(probs.sum(-1), 1, atol=1e-3)):
        raise ValueError(f"{where}: probs rows must be probabilities (>= 0, summing to 1)")
    return features, labels, probs


def save_features(path: str, features, labels, probs=None) -> None:
    """Writes ``features[N, D]``, ``labels[N]`` and optional ``probs[N, Cs]`` to the
    ``.npz`` file ``path`` (conventionally ``DIR/MODEL.npz``), atomically: a reader sees
    the old file or the complete new one. ValueError on invalid arrays."""
    features, labels, probs = _check_arrays(f"save_features({path!r})", features, labels, probs)
    arrays = {"features": features, "labels": labels}
    if probs is not None:
        arrays["probs"] = probs
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_io.write_bytes(path, buf.getvalue())


def load_features(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Reads a file written by `save_features`: ``(features[N, D], labels[N] int32,
    probs[N, Cs] or None)``. ValueError naming ``path`` if it is not such a file, a key is
    missing or unexpected, the row counts differ, or a value is NaN or infinite."""
    arrays = read_npz(path)
    missing = [key for key in ("features", "labels") if key not in arrays]
    unexpected = sorted(set(arrays) - set(_FEATURE_KEYS))
    if missing or unexpected:
        raise ValueError(f"{path}: expected keys features, labels[, probs]; missing {missing}, "
                         f"unexpected {unexpected}")
    return _check_arrays(path, arrays["features"], arrays["labels"], arrays.get("probs"))


def load_feature_dir(folder: str, models: Sequence[str] | None = None):
    """``(models, features_list, labels[N], probs_list)`` from ``folder/MODEL.npz`` files
    (:func:`save_features`), one per model, all on the same examples: every file in the
    folder sorted by name, or the given ``models`` in that order. ``probs_list`` holds None
    for models without probs. ValueError naming the file for a missing file, a bad file, or
    labels that differ between files."""
    import glob
    import os

    if models is None:
        paths = sorted(glob.glob(os.path.join(folder, "*.npz")))
        if not paths:
            raise ValueError(f"{folder}: no MODEL.npz feature files found")
    else:
        paths = [os.path.join(folder, f"{model}.npz") for model in models]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise ValueError(f"{missing[0]}: no such feature file" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    names, features_list, probs_list, labels, first = [], [], [], None, None
    for path in paths:
        features, file_labels, probs = load_features(path)
        if labels is None:
            labels, first = file_labels, path
        elif not np.array_equal(file_labels, labels):
            raise ValueError(f"{path}: labels differ from those in {first}; every model's "
                             "features must be on the same examples")
        names.append(os.path.basename(path)[: -len(".npz")])
        features_list.append(features)
        probs_list.append(probs)
    return names, features_list, labels, probs_list
