"""A new task's labelled data, read from what a user has on disk: :func:`read_task`.

Accepted forms of ``path`` (one task each):

* an image folder with one subfolder per class (torchvision's ``ImageFolder`` convention:
  ``PATH/CLASS/IMAGE.jpg|jpeg|png``; classes are the subfolder names in sorted order, hidden
  files and folders are skipped);
* an ``.npz`` with ``images[N, H, W, 3]`` (or ``[N, H, W]``) uint8 and ``labels[N]`` int;
* an ``.npz`` of precomputed proxy features: ``features[N, P]`` float and ``labels[N]`` int
  (they must come from the zoo's proxy encoder);
* ``tfds:NAME[:SPLIT]@DATA_DIR``: a prepared TensorFlow Datasets dataset read with
  ``tfds.data_source`` (no TensorFlow needed), examples with ``image`` and ``label``.

At most ``max_examples`` examples are kept, class-balanced (as even a share per class as
the classes allow) and chosen deterministically (evenly spaced over each class's examples in
file-name order), so one task always gives one embedding. Images may differ in size: the
proxy's preprocessing resizes each one. Anything else is a :class:`TaskDataError` naming the
file or folder and what was expected.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import numpy as np

from fennec_jax.core.npz import read_npz

__all__ = ["TaskData", "TaskDataError", "IMAGE_SUFFIXES", "read_task", "balanced_subset", "write_image_folder"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_TFDS_PREFIX = "tfds:"


class TaskDataError(ValueError):
    """A task's data cannot be read as one labelled task; the message names the path and problem."""


@dataclasses.dataclass(frozen=True)
class TaskData:
    """One labelled task.

    Attributes:
      name: the task's name (the folder or file name without suffix, or the TFDS name).
      labels: ``labels[N]`` int32 in ``[0, C)``.
      classes: the C class names, ``labels`` index them.
      images: N raw images ``[H, W(, C)]`` (uint8), or None when ``features`` are given.
      features: ``features[N, P]`` proxy features, or None when ``images`` are given.
      source: where the data came from, for reports.
    """

    name: str
    labels: np.ndarray
    classes: tuple[str, ...]
    images: Sequence[np.ndarray] | None = None
    features: np.ndarray | None = None
    source: str = ""

    @property
    def num_examples(self) -> int:
        return int(self.labels.size)


def balanced_subset(labels: np.ndarray, max_examples: int) -> np.ndarray:
    """Indices (sorted) of at most ``max_examples`` examples, class-balanced: each class gets
    ``max_examples // C`` (the first classes one more for the remainder; a small class gives
    what it has and the rest is shared out), evenly spaced over the class's examples."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if labels.size <= max_examples:
        return np.arange(labels.size)
    members = [np.flatnonzero(labels == c) for c in classes]
    quota = np.zeros(len(classes), int)
    left = max_examples
    while left > 0:  # water-filling: small classes give all they have
        open_ = [i for i in range(len(classes)) if quota[i] < members[i].size]
        share, extra = divmod(left, len(open_))
        for j, i in enumerate(open_):
            quota[i] = min(members[i].size, quota[i] + share + (j < extra))
        left = max_examples - int(quota.sum())
    picks = [m[np.linspace(0, m.size - 1, q).round().astype(int)] for m, q in zip(members, quota) if q]
    return np.sort(np.concatenate(picks))


def _check_labels(where: str, labels: np.ndarray, n: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise TaskDataError(f"{where}: expected integer 'labels' of shape [{n}], got {labels.dtype} {labels.shape}")
    if np.unique(labels).size < 2:
        raise TaskDataError(f"{where}: expected at least 2 classes, got {np.unique(labels).size}")
    return labels


def _from_npz(path: str, max_examples: int) -> TaskData:
    try:
        arrays = read_npz(path)
    except ValueError as err:
        raise TaskDataError(str(err)) from None
    if "labels" not in arrays or not ({"images", "features"} & set(arrays)):
        raise TaskDataError(f"{path}: expected arrays 'labels' and either 'images' [N, H, W, 3] uint8 or "
                            f"'features' [N, P]; found {sorted(arrays)}")
    name = os.path.splitext(os.path.basename(path))[0]
    if "features" in arrays:
        feats = arrays["features"]
        if feats.ndim != 2 or feats.shape[0] == 0 or not np.issubdtype(feats.dtype, np.floating):
            raise TaskDataError(f"{path}: expected 'features' float [N, P] with N >= 1, got {feats.dtype} {feats.shape}")
        if not np.all(np.isfinite(feats)):
            raise TaskDataError(f"{path}: 'features' must be finite")
        labels = _check_labels(path, arrays["labels"], feats.shape[0])
        keep = balanced_subset(labels, max_examples)
        _, index = np.unique(labels, return_inverse=True)
        return TaskData(name, index[keep].astype(np.int32), tuple(str(c) for c in np.unique(labels)),
                        features=feats[keep].astype(np.float64), source=path)
    images = arrays["images"]
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or images.shape[0] == 0 or (
            images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise TaskDataError(f"{path}: expected 'images' uint8 [N, H, W, 3] or [N, H, W] with N >= 1, "
                            f"got {images.dtype} {images.shape}")
    labels = _check_labels(path, arrays["labels"], images.shape[0])
    keep = balanced_subset(labels, max_examples)
    _, index = np.unique(labels, return_inverse=True)
    return TaskData(name, index[keep].astype(np.int32), tuple(str(c) for c in np.unique(labels)),
                    images=list(images[keep]), source=path)


def _read_image(path: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise TaskDataError(f"{path}: unreadable or truncated image ({err})") from None


def _from_folder(path: str, max_examples: int, progress: Callable[[int, int], None]) -> TaskData:
    classes = sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    files, labels = [], []
    for c, cls in enumerate(classes):
        folder = os.path.join(path, cls)
        names = sorted(n for n in os.listdir(folder)
                       if not n.startswith(".") and n.lower().endswith(IMAGE_SUFFIXES))
        files += [os.path.join(folder, n) for n in names]
        labels += [c] * len(names)
    if not files:
        raise TaskDataError(f"{path}: expected an image folder with one subfolder per class holding "
                            f"{'/'.join(s[1:] for s in IMAGE_SUFFIXES)} images; found no images"
                            + (f" in its {len(classes)} subfolder(s)" if classes else " and no subfolders"))
    used = sorted({labels[i] for i in range(len(labels))})
    if len(used) < 2:
        raise TaskDataError(f"{path}: expected at least 2 classes (subfolders with images), found only "
                            f"{classes[used[0]]!r}")
    labels = np.asarray(labels, np.int32)
    keep = balanced_subset(labels, max_examples)
    images = []
    for i, idx in enumerate(keep):
        images.append(_read_image(files[idx]))
        progress(i + 1, keep.size)
    _, index = np.unique(labels[keep], return_inverse=True)
    return TaskData(os.path.basename(os.path.normpath(path)), index.astype(np.int32),
                    tuple(classes[c] for c in used), images=images, source=path)


def _from_tfds(spec: str, max_examples: int, progress: Callable[[int, int], None]) -> TaskData:
    body = spec[len(_TFDS_PREFIX):]
    name_split, sep, data_dir = body.partition("@")
    if not sep or not name_split or not data_dir:
        raise TaskDataError(f"--task {spec!r}: expected tfds:NAME[:SPLIT]@DATA_DIR")
    name, _, split = name_split.partition(":")
    import tensorflow_datasets as tfds

    try:
        source = tfds.data_source(name, split=split or "train", data_dir=data_dir)
    except Exception as err:  # tfds raises many types for a missing / unprepared dataset
        raise TaskDataError(f"--task {spec!r}: cannot open the prepared dataset ({type(err).__name__}: {err})") from None
    count = min(len(source), 20 * max_examples)
    if count == 0:
        raise TaskDataError(f"--task {spec!r}: the split has no examples")
    try:
        labels = np.asarray([int(source[i]["label"]) for i in range(count)], np.int64)
    except KeyError:
        raise TaskDataError(f"--task {spec!r}: examples need 'image' and 'label' keys") from None
    labels = _check_labels(f"--task {spec!r}", labels, count)
    keep = balanced_subset(labels, max_examples)
    images = []
    for i, idx in enumerate(keep):
        images.append(np.asarray(source[int(idx)]["image"]))
        progress(i + 1, keep.size)
    _, index = np.unique(labels[keep], return_inverse=True)
    return TaskData(f"{name.replace('/', '_')}_{split or 'train'}", index.astype(np.int32),
                    tuple(str(c) for c in np.unique(labels[keep])), images=images, source=spec)


def read_task(path: str, max_examples: int = 64,
              progress: Callable[[int, int], None] = lambda done, total: None) -> TaskData:
    """The labelled task at ``path`` (see the module docstring for the accepted forms), at most
    ``max_examples`` examples, class-balanced. ``progress(done, total)`` is called per image read.

    Raises:
      TaskDataError: naming the path and what was expected, for a missing path, an empty
        folder, a single class, an unreadable or truncated image, a bad ``.npz``.
    """
    if not isinstance(max_examples, int) or max_examples < 2:
        raise ValueError(f"max_examples: expected an int >= 2, got {max_examples!r}")
    if path.startswith(_TFDS_PREFIX):
        return _from_tfds(path, max_examples, progress)
    if os.path.isdir(path):
        return _from_folder(path, max_examples, progress)
    if not os.path.exists(path):
        raise TaskDataError(f"{path}: no such file or folder (expected an image folder, an .npz or tfds:NAME@DIR)")
    if path.endswith(".npz"):
        return _from_npz(path, max_examples)
    raise TaskDataError(f"{path}: expected an image folder (one subfolder per class), an .npz with images or "
                        f"features and labels, or tfds:NAME[:SPLIT]@DATA_DIR")


def write_image_folder(out: str, images: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> None:
    """Writes ``images[N, H, W(, 3)]`` (float in [0, 1] or uint8) as ``OUT/CLASS/NNNNN.png``, the
    layout :func:`read_task` reads; ``labels[N]`` index ``classes``. ``OUT`` must not exist
    (written into a temporary folder, renamed when complete)."""
    from PIL import Image

    from fennec_jax.core import atomic_io

    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)

    def fill(folder: str) -> None:
        for i, (image, label) in enumerate(zip(images, labels)):
            os.makedirs(os.path.join(folder, classes[int(label)]), exist_ok=True)
            Image.fromarray(image).save(os.path.join(folder, classes[int(label)], f"{i:05d}.png"))

    try:
        atomic_io.write_folder(out, fill)
    except FileExistsError:
        raise FileExistsError(f"{out}: already exists; choose a new folder") from None
