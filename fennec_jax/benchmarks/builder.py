"""Build a model-selection benchmark from real training runs: a zoo, target tasks, fine-tuning.

A *zoo* is every architecture family in :class:`ZooSpec` pre-trained on every source task
(model ``family@source``), so models differ by architecture and by source, as in PARC and
Model Spider. Each model is then fine-tuned on every target task (a full fine-tune, and a
linear probe on its frozen features, for ``seeds`` seeds each) and its test accuracy recorded::

    datasets = packaged_datasets(image_size=32)          # digits, faces, image patches
    sources = default_sources(datasets)                  # Task per source
    targets = default_targets(datasets)                  # Task per target (class sub-problems)
    result = build_benchmark(out_dir, spec, sources, targets, config)

Training is vmapped: the models of one family share one parameter shape (every head is
``spec.head_classes`` wide; a task with fewer classes masks the extra logits), so their
parameter trees are stacked and one jitted, vmapped Adam step trains them all. Pre-training:
each model on its own source. Fine-tuning: every (target, seed, model) run of a group of
``config.targets_per_group`` targets at once (the last group padded with repeats, so one compile
serves every group). Depthwise convolutions (MobileNetV2, MNASNet) run as shifted
multiply-adds (:func:`architectures.depthwise_as_shifts`): XLA:CPU's vmapped grouped convolution and its
gradient are several times slower.

Stages and resume: each finished stage (``pretrain/FAMILY``, ``target/FAMILY/groupNNN``,
``proxy/TASK``) is written atomically as ``OUT/stages/....npz``; a rerun loads finished stages
and computes only the rest, so a killed run resumes at the last finished stage (``max_stages``
stops a run on purpose after that many newly computed stages).

Outputs in ``OUT``: ``records.csv`` (model,task,score: full fine-tune test accuracy, mean over
seeds), ``records_linear_probe.csv`` (the same for linear probes), ``runs.csv`` (every seed of
both protocols), ``graphs.jsonl`` (each family's layer graph, :func:`fennec_jax.archs.graphs.from_flax`),
``features/TASK/MODEL.npz`` (pre-trained models' features and source-head probabilities on the
target's training examples, for the estimators), ``proxy.npz`` (MobileNetV2 task embeddings).
``./run.sh evaluate --records=OUT/records.csv --proxies=OUT/proxy.npz --features=OUT/features``
then compares methods on it (the proxy and features reach the methods as evidence);
:func:`ground_truth_summary` says how far the records rise above seed noise, and
:func:`forward_seconds` times a full-size model's forward pass (an estimator's cost at real scale).

Task data: :func:`packaged_datasets` uses real data that ships inside packages (scikit-learn's
8x8 digits, scikit-image's LFW faces-vs-non-faces subset and patches of its sample photographs);
:func:`arrays_from_source` reads a ``tfds.data_source`` (or any random-access sequence of
example dicts) for users who have the datasets.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence

import jax
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax

from fennec_jax.archs import architectures
from fennec_jax.core import atomic_io
from fennec_jax.encoders import features as features_lib
from fennec_jax.archs import graphs
from fennec_jax.eval import metrics
from fennec_jax.core.records import Records, records_from_matrix

__all__ = [
    "Task",
    "ZooSpec",
    "TrainConfig",
    "BuildResult",
    "packaged_datasets",
    "arrays_from_source",
    "class_subset_task",
    "default_sources",
    "default_targets",
    "build_benchmark",
    "model_names",
    "pretrain_family",
    "ground_truth_summary",
    "forward_seconds",
    "finetune_accuracy",
]

_HEAD_KEYS = ("fc", "classifier")  # the final linear layer of every family used here
_MASKED_LOGIT = -1e9
_PATCH_IMAGES = ("brick", "grass", "gravel", "coins", "moon", "page", "text", "camera", "cell",
                 "astronaut", "coffee", "hubble_deep_field")


# ----------------------------------------------------------------------------- specs and tasks


@dataclasses.dataclass(frozen=True)
class Task:
    """One classification task on square images.

    Attributes:
      name: task name (records' ``task`` column; a file name, so no ``/``).
      train_x, test_x: ``images[N, S, S, 3]`` float32 in [0, 1].
      train_y, test_y: ``labels[N]`` int32 in ``[0, num_classes)``.
      num_classes: C.
    """

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int

    def __post_init__(self):
        if not self.name or "/" in self.name:
            raise ValueError(f"Task.name: expected a non-empty name without '/', got {self.name!r}")
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] != x.shape[2] or x.shape[0] != y.shape[0]:
                raise ValueError(f"Task {self.name!r}: {split}_x must be [N, S, S, 3] with N = len({split}_y), "
                                 f"got {x.shape} and {y.shape}")
            if y.size and (y.min() < 0 or y.max() >= self.num_classes):
                raise ValueError(f"Task {self.name!r}: {split}_y must lie in [0, {self.num_classes})")

    @property
    def image_size(self) -> int:
        return self.train_x.shape[1]


@dataclasses.dataclass(frozen=True)
class ZooSpec:
    """Which models the zoo holds: every family pre-trained on every source.

    Attributes:
      families: architecture names (:data:`fennec_jax.archs.architectures.ARCHITECTURES`).
      width: channel ``width_multiplier`` of every model.
      head_classes: width of every head (at least the classes of any source or target task).
    """

    families: tuple[str, ...] = ("resnet18", "resnet50", "mobilenet_v2", "mnasnet1_0", "googlenet")
    width: float = 0.0625
    head_classes: int = 10

    def model(self, family: str) -> "architectures.nn.Module":
        kw = {"bn_momentum": 0.9} if family.startswith("mnasnet") else {}  # quick training
        return architectures.build(family, self.head_classes, self.width, **kw)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Sizes of the runs (all training is Adam on softmax cross-entropy, batch ``batch_size``).

    Attributes:
      pretrain_steps, pretrain_lr, batch_size: pre-training on the source task.
      finetune_steps, finetune_lr, finetune_batch_size: full fine-tune (all parameters, new
        zero head) per target.
      probe_steps, probe_lr: linear probe (full batch on frozen, standardised features).
      seeds: fine-tuning and probe seeds per (model, target).
      targets_per_group: targets whose fine-tunes (every model, every seed) train together
        under one vmapped step; one resumable stage per group and family (the last group is
        padded with repeats of its last target, so that one compile serves every group).
      seed: pre-training seed (initialisation and batch order).
    """

    pretrain_steps: int = 200
    pretrain_lr: float = 3e-3
    batch_size: int = 32
    finetune_steps: int = 20
    finetune_lr: float = 1e-3
    finetune_batch_size: int = 16
    probe_steps: int = 200
    probe_lr: float = 1e-2
    seeds: int = 2
    targets_per_group: int = 4
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class BuildResult:
    """What :func:`build_benchmark` produced.

    Attributes:
      complete: False when it stopped at ``max_stages`` (no records written yet).
      stages_computed: stages computed in this call (the rest were loaded).
      records: full fine-tune records (None when incomplete).
      linear_probe: linear-probe records (None when incomplete).
      extract_seconds: ``{task: s}`` forward pass of every model over the task's training
        examples (compile excluded), for the estimators' cost.
      proxy_seconds: ``{task: s}`` MobileNetV2 embedding of the task's proxy examples.
      finetune_runs, probe_runs: ``acc[T, M, seeds]`` test accuracy of every run (None when
        incomplete).
    """

    complete: bool
    stages_computed: int
    records: Records | None = None
    linear_probe: Records | None = None
    extract_seconds: Mapping[str, float] = dataclasses.field(default_factory=dict)
    proxy_seconds: Mapping[str, float] = dataclasses.field(default_factory=dict)
    finetune_runs: np.ndarray | None = None
    probe_runs: np.ndarray | None = None


# ----------------------------------------------------------------------------- data


def _square(images: np.ndarray, size: int) -> np.ndarray:
    """``images[N, H, W]`` in [0, 1] -> ``[N, size, size, 3]`` float32 (bilinear, grey repeated)."""
    x = jnp.asarray(images, jnp.float32)[..., None]
    x = jax.image.resize(x, (x.shape[0], size, size, 1), "bilinear")
    return np.repeat(np.clip(np.asarray(x), 0.0, 1.0), 3, axis=-1)


def _grey(image: np.ndarray) -> np.ndarray:
    """An 8-bit photo (grey, RGB or RGBA) -> float32 ``[H, W]`` in [0, 1]."""
    image = np.asarray(image, np.float32) / 255.0
    return image[..., :3].mean(-1) if image.ndim == 3 else image


def _patches(image: np.ndarray, count: int, window: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random ``window x window`` crops of ``image[H, W]``."""
    rows = rng.integers(0, image.shape[0] - window + 1, count)
    cols = rng.integers(0, image.shape[1] - window + 1, count)
    return np.stack([image[r:r + window, c:c + window] for r, c in zip(rows, cols)])


def packaged_datasets(image_size: int = 32, patches_per_image: int = 150, patch_window: int = 48,
                      seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Real image data shipped inside scikit-learn and scikit-image, as ``{name: (images[N, S, S, 3]
    float32 in [0, 1], labels[N] int32)}`` with ``S = image_size``.

    - ``digits``: scikit-learn's ``load_digits`` (1797 handwritten 8x8 digits, 10 classes).
    - ``faces``: scikit-image's ``lfw_subset`` (100 LFW faces, label 1, and 100 non-face
      25x25 patches, label 0).
    - ``patches``: ``patches_per_image`` random ``patch_window``-wide crops of each of 12
      scikit-image sample photographs (brick, grass, gravel, coins, moon, page, text, camera,
      cell, astronaut, coffee, Hubble deep field), greyscale; the class is the photograph.
    """
    try:
        from sklearn.datasets import load_digits
        from skimage import data as skdata
    except ImportError:
        raise ImportError("packaged_datasets needs scikit-learn and scikit-image: "
                          "pip install scikit-learn==1.9.1 scikit-image==0.26.0") from None
    digits = load_digits()
    faces = skdata.lfw_subset()
    rng = np.random.default_rng(seed)
    crops = [_patches(_grey(getattr(skdata, name)()), patches_per_image, patch_window, rng) for name in _PATCH_IMAGES]
    return {
        "digits": (_square(digits.images / 16.0, image_size), digits.target.astype(np.int32)),
        "faces": (_square(faces, image_size), (np.arange(len(faces)) < 100).astype(np.int32)),
        "patches": (_square(np.concatenate(crops), image_size),
                    np.repeat(np.arange(len(_PATCH_IMAGES)), patches_per_image).astype(np.int32)),
    }


def arrays_from_source(source, image_size: int, *, image_key: str = "image", label_key: str = "label",
                       limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images[N, S, S, 3] float32 in [0, 1], labels[N] int32)`` from a ``tfds.data_source(...)``
    (or any random-access sequence of example dicts with uint8 images ``[H, W(, C)]``), the
    first ``limit`` examples (default all), resized to ``image_size``."""
    if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
        raise ValueError(f"source: expected a random-access sequence of example dicts (e.g. tfds.data_source), "
                         f"got {type(source).__name__}")
    count = len(source) if limit is None else min(limit, len(source))
    if count == 0:
        raise ValueError("source: has no examples")
    images, labels = [], []
    for i in range(count):
        example = source[i]
        if image_key not in example or label_key not in example:
            raise ValueError(f"source[{i}]: expected keys {image_key!r} and {label_key!r}, got {sorted(example)}")
        images.append(_grey(example[image_key]))
        labels.append(int(example[label_key]))
    shapes = {im.shape for im in images}
    if len(shapes) != 1:  # varying sizes: resize one by one
        return np.concatenate([_square(im[None], image_size) for im in images]), np.asarray(labels, np.int32)
    return _square(np.stack(images), image_size), np.asarray(labels, np.int32)


def class_subset_task(name: str, images: np.ndarray, labels: np.ndarray, classes: Sequence[int],
                      num_train: int, num_test: int, seed: int) -> Task:
    """The sub-problem of ``(images[N, ...], labels[N])`` on ``classes`` (relabelled 0..k-1 in that
    order), ``num_train`` training and ``num_test`` test examples drawn class-balanced without
    replacement (with replacement for a class too small), disjoint when the data allow."""
    classes = [int(c) for c in classes]
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise ValueError(f"classes: expected at least 2 distinct classes, got {classes}")
    rng = np.random.default_rng([seed, *classes])
    train, test = [], []
    for new, c in enumerate(classes):
        pool = rng.permutation(np.flatnonzero(labels == c))
        if pool.size == 0:
            raise ValueError(f"classes: class {c} has no examples")
        n_tr = num_train // len(classes) + (new < num_train % len(classes))
        n_te = num_test // len(classes) + (new < num_test % len(classes))
        if pool.size >= n_tr + n_te:
            train.append(pool[:n_tr]), test.append(pool[n_tr:n_tr + n_te])
        else:  # too few: split the pool in proportion, then repeat
            cut = max(1, min(pool.size - 1, round(pool.size * n_tr / (n_tr + n_te))))
            train.append(rng.choice(pool[:cut], n_tr)), test.append(rng.choice(pool[cut:] if cut < pool.size else pool, n_te))
    relabel = np.full(labels.max() + 1, -1, np.int32)
    relabel[classes] = np.arange(len(classes))
    tr, te = rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))
    return Task(name, images[tr], relabel[labels[tr]], images[te], relabel[labels[te]], len(classes))


# The default sources: (name, dataset, classes); each is a pre-training task of its own.
_DEFAULT_SOURCES = (
    ("src_digits_0to4", "digits", (0, 1, 2, 3, 4)),
    ("src_digits_5to9", "digits", (5, 6, 7, 8, 9)),
    ("src_digits_all", "digits", tuple(range(10))),
    ("src_patches_a", "patches", (0, 1, 2, 3, 4, 5)),
    ("src_patches_b", "patches", (6, 7, 8, 9, 10, 11)),
    ("src_patches_all", "patches", tuple(range(10))),
    ("src_faces", "faces", (0, 1)),
    ("src_digits_even", "digits", (0, 2, 4, 6, 8)),
)


def default_sources(datasets: Mapping[str, tuple[np.ndarray, np.ndarray]], num_sources: int = 8,
                    num_examples: int = 600, seed: int = 0) -> list[Task]:
    """The first ``num_sources`` of 8 pre-training tasks (digits 0-4, 5-9, all; patches of
    photographs 0-5, 6-11, 0-9; faces vs non-faces; even digits), ``num_examples`` training
    examples each (class-balanced, repeated where a class is too small)."""
    if not 1 <= num_sources <= len(_DEFAULT_SOURCES):
        raise ValueError(f"num_sources: expected 1..{len(_DEFAULT_SOURCES)}, got {num_sources}")
    return [class_subset_task(name, *datasets[data], classes, num_examples, 0, seed)
            for name, data, classes in _DEFAULT_SOURCES[:num_sources]]


def default_targets(datasets: Mapping[str, tuple[np.ndarray, np.ndarray]], num_targets: int = 24,
                    num_train: int = 100, num_test: int = 100, seed: int = 1) -> list[Task]:
    """``num_targets`` target tasks: faces vs non-faces, then k-way class subsets (k in 2, 3, 5,
    as Model Spider samples its tasks) alternating between digits and photo patches, classes drawn
    from ``seed``; ``num_train`` / ``num_test`` examples each."""
    if num_targets < 1:
        raise ValueError(f"num_targets: expected >= 1, got {num_targets}")
    rng = np.random.default_rng(seed)
    tasks = [class_subset_task("faces", *datasets["faces"], (0, 1), num_train, num_test, seed)]
    seen = set()
    while len(tasks) < num_targets:
        data = ("digits", "patches")[len(tasks) % 2]
        k = int(rng.choice([2, 3, 5]))
        classes = tuple(sorted(rng.choice(np.unique(datasets[data][1]), k, replace=False).tolist()))
        if (data, classes) in seen:
            continue
        seen.add((data, classes))
        name = f"{data}_{'_'.join(map(str, classes))}"
        tasks.append(class_subset_task(name, *datasets[data], classes, num_train, num_test, seed))
    return tasks


# ----------------------------------------------------------------------------- vmapped training


def _masked(logits: jax.Array, num_classes) -> jax.Array:
    """``logits[..., H]`` with the classes ``>= num_classes`` masked out."""
    return jnp.where(jnp.arange(logits.shape[-1]) < num_classes, logits, _MASKED_LOGIT)


def _apply(model, variables, images, **kwargs):
    """``model.apply`` with depthwise convolutions computed by :func:`architectures.depthwise_as_shifts`."""
    with nn.intercept_methods(architectures.depthwise_as_shifts):
        return model.apply(variables, images, **kwargs)


def _step(model, variables, opt_state, images, labels, num_classes, learning_rate, key):
    """One Adam step of one model on ``images[B, S, S, 3]``, ``labels[B]``; logits of classes
    ``>= num_classes`` masked. Returns ``(variables, opt_state)``."""

    def loss_fn(params):
        logits, new = _apply(model, {"params": params, "batch_stats": variables["batch_stats"]}, images, train=True,
                             mutable=["batch_stats"], rngs={"dropout": key})
        loss = optax.softmax_cross_entropy_with_integer_labels(_masked(logits, num_classes), labels).mean()
        return loss, new["batch_stats"]

    grads, stats = jax.grad(loss_fn, has_aux=True)(variables["params"])
    updates, opt_state = _ADAM.update(grads, opt_state)
    params = jax.tree_util.tree_map(lambda p, u: p - learning_rate * u, variables["params"], updates)
    return {"params": params, "batch_stats": stats}, opt_state


_ADAM = optax.scale_by_adam()


@functools.lru_cache(maxsize=None)
def _stepper(model):
    """Jitted :func:`_step` vmapped over stacked models (one compile per family serves both
    pre-training and fine-tuning: the learning rate is an argument)."""
    return jax.jit(jax.vmap(functools.partial(_step, model), in_axes=(0, 0, 0, 0, 0, None, 0)))


def _train(model, variables, images, labels, num_classes, batches, learning_rate: float, seed: int):
    """Stacked ``variables[M]`` trained by Adam, model m on ``images[m][batches[m, step]]`` for
    each step of ``batches[M, steps, B]``; ``images[M, N, S, S, 3]``, ``labels[M, N]``."""
    step = _stepper(model)
    opt_state = jax.vmap(_ADAM.init)(variables["params"])
    rows = np.arange(batches.shape[0])[:, None]
    num_classes = jnp.asarray(num_classes)
    for i in range(batches.shape[1]):
        index = batches[:, i]
        variables, opt_state = step(variables, opt_state, images[rows, index], labels[rows, index], num_classes,
                                    jnp.float32(learning_rate), _keys(seed * 100003 + i, batches.shape[0]))
    return variables


@functools.lru_cache(maxsize=None)
def _forward(model, shared_images: bool):
    """Jitted ``(variables[M], images) -> (logits[M, N, H], features[M, N, D])`` in eval mode;
    ``images[N, S, S, 3]`` shared by all models, or ``images[M, N, S, S, 3]`` one set per model."""
    apply = lambda v, x: _apply(model, v, x, train=False, return_features=True)
    return jax.jit(jax.vmap(apply, in_axes=(0, None if shared_images else 0)))


@functools.lru_cache(maxsize=None)
def _initialiser(model, image_size: int):
    x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return jax.jit(jax.vmap(lambda key: model.init(key, x)))


def _batches(rng: np.random.Generator, num_examples: int, steps: int, batch_size: int) -> np.ndarray:
    """``index[steps, batch_size]``: epochs of shuffled example indices."""
    epochs = -(-steps * batch_size // num_examples)
    order = np.concatenate([rng.permutation(num_examples) for _ in range(epochs)])
    return order[:steps * batch_size].reshape(steps, batch_size).astype(np.int32)


def _keys(seed: int, count: int) -> jax.Array:
    return jax.random.split(jax.random.key(seed, impl="rbg"), count)


def _zero_head(variables):
    """Variables with the head (``fc`` / ``classifier`` subtree) zeroed: a fresh task head."""
    params = dict(variables["params"])
    for key in _HEAD_KEYS:
        if key in params:
            params[key] = jax.tree_util.tree_map(jnp.zeros_like, params[key])
            return {**variables, "params": params}
    raise ValueError(f"variables: no head among {_HEAD_KEYS} in {sorted(params)}")


def pretrain_family(spec: ZooSpec, family: str, sources: Sequence[Task], config: TrainConfig):
    """Stacked variables (leading axis = ``sources``) of ``family`` pre-trained on each source."""
    sizes = {(t.train_x.shape, t.image_size) for t in sources}
    if len(sizes) != 1:
        raise ValueError(f"sources: every source must have the same train_x shape, got {sorted(sizes)}")
    model = spec.model(family)
    size = sources[0].image_size
    variables = _initialiser(model, size)(_keys(config.seed, len(sources)))
    rng = np.random.default_rng(config.seed)
    batches = np.stack([_batches(rng, t.train_x.shape[0], config.pretrain_steps, config.batch_size) for t in sources])
    return _train(model, variables, np.stack([t.train_x for t in sources]), np.stack([t.train_y for t in sources]),
                  [t.num_classes for t in sources], batches, config.pretrain_lr, config.seed + 1)


def _accuracy(logits: np.ndarray, labels: np.ndarray, num_classes) -> np.ndarray:
    """``acc[M]`` of ``logits[M, N, H]`` against ``labels[(M,) N]``, model m restricted to its first
    ``num_classes[m]`` classes (or a shared int)."""
    masked = np.where(np.arange(logits.shape[-1]) < np.reshape(num_classes, (-1, 1, 1)), logits, -np.inf)
    return (np.argmax(masked, -1) == labels).mean(-1)


def finetune_accuracy(spec: ZooSpec, family: str, pretrained, targets: Sequence[Task], config: TrainConfig) -> np.ndarray:
    """``acc[G, seeds, M]``: test accuracy of each stacked pre-trained model after a full fine-tune
    (all parameters, zeroed head) on each of ``targets`` (same train / test sizes) for each seed.
    All ``G * seeds * M`` runs train together under one vmapped step; seed s draws the same
    batch order for every model and target."""
    sizes = {(t.train_x.shape, t.test_x.shape) for t in targets}
    if len(sizes) != 1:
        raise ValueError(f"targets: a fine-tuning group needs equal train / test shapes, got {sorted(sizes)}")
    model = spec.model(family)
    num_models = jax.tree_util.tree_leaves(pretrained)[0].shape[0]
    runs = len(targets) * config.seeds  # run (g, s, m) = target g, seed s, model m, m fastest
    per_run = lambda arrays: np.repeat(np.stack(arrays), config.seeds * num_models, 0)
    variables = jax.tree_util.tree_map(lambda a: jnp.tile(a, (runs,) + (1,) * (a.ndim - 1)),
                                       jax.vmap(_zero_head)(pretrained))
    batches = np.stack([_batches(np.random.default_rng([s, 7]), targets[0].train_x.shape[0], config.finetune_steps,
                                 config.finetune_batch_size) for s in range(config.seeds)])
    num_classes = per_run([np.int32(t.num_classes) for t in targets])
    tuned = _train(model, variables, per_run([t.train_x for t in targets]), per_run([t.train_y for t in targets]),
                   num_classes, np.tile(np.repeat(batches, num_models, 0), (len(targets), 1, 1)), config.finetune_lr,
                   config.seed + 2)
    logits, _ = _forward(model, False)(tuned, per_run([t.test_x for t in targets]))
    acc = _accuracy(np.asarray(logits), per_run([t.test_y for t in targets]), num_classes)
    return acc.reshape(len(targets), config.seeds, num_models)


@functools.partial(jax.jit, static_argnames=("width", "steps", "learning_rate"))
def _linear_probe(train_f, train_y, test_f, test_y, key, num_classes, *, width, steps, learning_rate):
    """``acc[M]`` of softmax heads ``width`` wide (logits ``>= num_classes`` masked, so one compile
    serves every target) trained full-batch on ``train_f[M, N, D]`` (standardised with the
    training statistics), tested on ``test_f[M, N', D]``."""
    mean, std = train_f.mean(1, keepdims=True), train_f.std(1, keepdims=True) + 1e-6
    train_f, test_f = (train_f - mean) / std, (test_f - mean) / std
    opt = optax.adam(learning_rate)

    def fit(x, key):
        w = {"w": 0.01 * jax.random.normal(key, (x.shape[-1], width)), "b": jnp.zeros(width)}
        loss = lambda w: optax.softmax_cross_entropy_with_integer_labels(
            _masked(x @ w["w"] + w["b"], num_classes), train_y).mean()

        def step(carry, _):
            w, state = carry
            updates, state = opt.update(jax.grad(loss)(w), state, w)
            return (optax.apply_updates(w, updates), state), None

        (w, _), _ = jax.lax.scan(step, (w, opt.init(w)), None, length=steps)
        return w

    heads = jax.vmap(fit)(train_f, jax.random.split(key, train_f.shape[0]))
    logits = _masked(jnp.einsum("mnd,mdc->mnc", test_f, heads["w"]) + heads["b"][:, None], num_classes)
    return (jnp.argmax(logits, -1) == test_y).mean(-1)


# ----------------------------------------------------------------------------- stages


def _stage_path(out_dir: str, stage: str) -> str:
    return os.path.join(out_dir, "stages", *stage.split("/")) + ".npz"


def _load_stage(out_dir: str, stage: str) -> dict[str, np.ndarray] | None:
    path = _stage_path(out_dir, stage)
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: unreadable stage file ({error}); delete it to recompute the stage") from None


def _save_npz(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_io.write_bytes(path, buf.getvalue())


def _flatten(tree) -> dict[str, np.ndarray]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def _unflatten(like, arrays: Mapping[str, np.ndarray]):
    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(arrays[jax.tree_util.keystr(p)]) for p, _ in paths])


def _check_same_build(out_dir: str, spec: ZooSpec, sources, targets, config: TrainConfig) -> None:
    """Writes ``out_dir/build.json`` (what the stages depend on), or, when it exists, checks that
    this build matches it: stages of another build must not be mixed in. Families may differ
    (their stages are separate)."""
    import json

    build = {"width": spec.width, "head_classes": spec.head_classes, "config": dataclasses.asdict(config),
             "sources": [[t.name, list(t.train_x.shape)] for t in sources],
             "targets": [[t.name, list(t.train_x.shape), list(t.test_x.shape)] for t in targets]}
    path = os.path.join(out_dir, "build.json")
    if not os.path.exists(path):
        atomic_io.write_json(path, build)
        return
    with open(path) as f:
        previous = json.load(f)
    if previous != json.loads(json.dumps(build)):
        changed = sorted(k for k in build if previous.get(k) != json.loads(json.dumps(build[k])))
        raise ValueError(f"{path}: out_dir holds stages of a different build (differs in {changed}); "
                         "use a new out_dir or delete it")


class _StageLimit(Exception):
    """Raised inside :func:`build_benchmark` when ``max_stages`` stages have been computed."""


# ----------------------------------------------------------------------------- the build


def _check_spec(spec: ZooSpec, sources: Sequence[Task], targets: Sequence[Task]) -> None:
    names = [t.name for t in targets]
    if len(set(names)) != len(names) or len({t.name for t in sources}) != len(sources):
        raise ValueError("sources, targets: task names must be unique")
    if not spec.families or not sources or not targets:
        raise ValueError("spec.families, sources and targets must all be non-empty")
    for task in [*sources, *targets]:
        if task.num_classes > spec.head_classes:
            raise ValueError(f"spec.head_classes: {spec.head_classes} < {task.num_classes} classes of {task.name!r}")
        for family in spec.families:
            if task.image_size < architectures.min_input_size(family):
                raise ValueError(f"{task.name}: images {task.image_size} wide, {family} needs >= "
                                 f"{architectures.min_input_size(family)}")


def model_names(spec: ZooSpec, sources: Sequence[Task]) -> list[str]:
    """``family@source`` for every family (outer) and source (inner)."""
    return [f"{family}@{source.name}" for family in spec.families for source in sources]


def build_benchmark(out_dir: str, spec: ZooSpec, sources: Sequence[Task], targets: Sequence[Task],
                    config: TrainConfig = TrainConfig(), *, proxy=None, proxy_examples: int = 64,
                    max_stages: int | None = None, progress: Callable[[str], None] | None = None) -> BuildResult:
    """Pre-trains the zoo, fine-tunes and probes it on every target, writes the outputs in ``out_dir``
    (see the module docstring), resuming from finished stages.

    Args:
      proxy: an :class:`fennec_jax.encoders.proxy.ImageProxy` (e.g. ``mobilenet_v2_proxy()``) to embed each
        target's first ``proxy_examples`` training examples into ``proxy.npz`` (``tasks[T]``,
        ``embeddings[T, 3P + 3]``, ``proxy.task_embedding``); None skips it.
      max_stages: stop after computing this many stages (None: run to the end).
      progress: called with a line per finished stage.
    """
    _check_spec(spec, sources, targets)
    _check_same_build(out_dir, spec, sources, targets, config)
    say = progress or (lambda _: None)
    computed = 0

    def run_stage(stage: str, compute: Callable[[], Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        nonlocal computed
        done = _load_stage(out_dir, stage)
        if done is not None:
            return done
        if max_stages is not None and computed >= max_stages:
            raise _StageLimit
        start = time.perf_counter()
        arrays = dict(compute())
        _save_npz(_stage_path(out_dir, stage), arrays)
        computed += 1
        say(f"{stage}: {time.perf_counter() - start:.1f} s")
        return arrays

    models = model_names(spec, sources)
    num_sources = len(sources)
    finetune = np.full((len(targets), len(models), config.seeds), np.nan)
    probe = np.full_like(finetune, np.nan)
    extract_seconds = {t.name: 0.0 for t in targets}
    try:
        for f, family in enumerate(spec.families):
            model = spec.model(family)
            like = jax.eval_shape(_initialiser(model, sources[0].image_size), _keys(0, num_sources))
            stage = run_stage(f"pretrain/{family}", lambda: _flatten(pretrain_family(spec, family, sources, config)))
            pretrained = _unflatten(like, stage)
            cols = slice(f * num_sources, (f + 1) * num_sources)
            for g, group in enumerate(_groups(len(targets), config.targets_per_group)):
                out = run_stage(f"target/{family}/group{g:03d}",
                                lambda: _target_stage(out_dir, spec, family, pretrained, sources,
                                                      [targets[t] for t in group], config, models[cols]))
                for i, t in enumerate(group[:len(set(group))]):
                    finetune[t, cols], probe[t, cols] = out["finetune"][i], out["probe"][i]
                    extract_seconds[targets[t].name] += float(out["extract_seconds"])
        proxy_seconds = {}
        if proxy is not None:
            embeddings = []
            for target in targets:
                out = run_stage(f"proxy/{target.name}", lambda: _proxy_stage(proxy, target, proxy_examples))
                embeddings.append(out["embedding"])
                proxy_seconds[target.name] = float(out["seconds"])
            _save_npz(os.path.join(out_dir, "proxy.npz"),
                      {"tasks": np.asarray([t.name for t in targets]), "embeddings": np.stack(embeddings)})
    except _StageLimit:
        return BuildResult(False, computed)
    task_names = [t.name for t in targets]
    model_meta = {"family": np.asarray([m.split("@")[0] for m in models]),
                  "source": np.asarray([m.split("@")[1] for m in models])}
    task_meta = {"classes": np.asarray([float(t.num_classes) for t in targets])}
    records = records_from_matrix(models, task_names, finetune.mean(-1), model_meta=model_meta, task_meta=task_meta)
    linear = records_from_matrix(models, task_names, probe.mean(-1), model_meta=model_meta, task_meta=task_meta)
    _write_outputs(out_dir, spec, sources[0].image_size, models, task_names, finetune, probe)
    return BuildResult(True, computed, records, linear, extract_seconds, proxy_seconds, finetune, probe)


def _groups(num_targets: int, size: int) -> list[list[int]]:
    """Target indices in groups of ``size``, the last one padded with repeats of its last index."""
    if size < 1:
        raise ValueError(f"config.targets_per_group: expected >= 1, got {size}")
    groups = [list(range(i, min(i + size, num_targets))) for i in range(0, num_targets, size)]
    groups[-1] += [groups[-1][-1]] * (size - len(groups[-1])) if len(groups) > 1 else []
    return groups


def _target_stage(out_dir, spec, family, pretrained, sources, targets, config, models) -> dict[str, np.ndarray]:
    """For a group of targets: the pre-trained models' features (saved per model and target),
    fine-tune accuracies ``[G, M_family, seeds]`` (padding repeats included, see :func:`_groups`),
    linear-probe accuracies of the distinct targets, and the seconds of a forward pass of every
    model over one target's training examples (compile excluded)."""
    model = spec.model(family)
    forward = _forward(model, True)
    jax.block_until_ready(forward(pretrained, targets[0].train_x))  # compile (or cache hit) outside the timing
    start = time.perf_counter()
    first = jax.block_until_ready(forward(pretrained, targets[0].train_x))
    extract = time.perf_counter() - start
    distinct = targets[: len({id(t) for t in targets})]  # padding repeats the last target at the end
    probe = []
    for i, target in enumerate(distinct):
        logits, train_f = (np.asarray(a) for a in (first if i == 0 else forward(pretrained, target.train_x)))
        _, test_f = forward(pretrained, target.test_x)
        for m, (name, source) in enumerate(zip(models, sources)):
            source_logits = logits[m, :, :source.num_classes].astype(np.float64)
            probs = np.exp(source_logits - source_logits.max(-1, keepdims=True))
            features_lib.save_features(os.path.join(out_dir, "features", target.name, f"{name}.npz"), train_f[m],
                                       target.train_y, (probs / probs.sum(-1, keepdims=True)).astype(np.float32))
        probe.append(np.stack([np.asarray(_linear_probe(
            train_f, target.train_y, test_f, target.test_y, _keys(s, 1)[0], target.num_classes,
            width=spec.head_classes, steps=config.probe_steps, learning_rate=config.probe_lr))
            for s in range(config.seeds)], -1))
    tuned = finetune_accuracy(spec, family, pretrained, targets, config)  # [G, seeds, M]
    return {"finetune": tuned.transpose(0, 2, 1), "probe": np.stack(probe), "extract_seconds": np.float64(extract)}


@functools.lru_cache(maxsize=None)
def _proxy_forward(apply_fn):
    """Jitted proxy features (the proxy's own fast path for depthwise convolutions, as the
    candidates' forward passes use, so their costs compare)."""
    return jax.jit(lambda params, images: apply_fn(params, images)[0])


def _proxy_stage(proxy, target: Task, num_examples: int, batch_size: int = 32) -> dict[str, np.ndarray]:
    """The target's proxy task embedding from its first ``num_examples`` training examples, and
    the seconds it took (preprocessing, forward passes, summary; compile excluded)."""
    from fennec_jax.encoders.proxy import task_embedding

    images = (target.train_x[:num_examples] * 255).round().astype(np.uint8)
    forward = _proxy_forward(proxy.apply_fn)
    shape = (batch_size, *proxy.preprocess(images[0]).shape)
    jax.block_until_ready(forward(proxy.params, np.zeros(shape, np.float32)))  # compile outside the timing
    start = time.perf_counter()
    feats = []
    for i in range(0, len(images), batch_size):
        batch = np.stack([proxy.preprocess(image) for image in images[i:i + batch_size]])
        padded = np.concatenate([batch, np.zeros((batch_size - len(batch), *shape[1:]), np.float32)])
        feats.append(np.asarray(forward(proxy.params, padded))[:len(batch)])
    embedding = task_embedding(np.concatenate(feats), target.train_y[:num_examples])
    return {"embedding": embedding, "seconds": np.float64(time.perf_counter() - start)}


def _write_outputs(out_dir, spec, image_size, models, tasks, finetune, probe) -> None:
    """records.csv, records_linear_probe.csv, runs.csv and graphs.jsonl."""
    for path, acc in (("records.csv", finetune), ("records_linear_probe.csv", probe)):
        rows = [(m, t, f"{acc[ti, mi].mean():.6f}") for ti, t in enumerate(tasks) for mi, m in enumerate(models)]
        atomic_io.write_csv(os.path.join(out_dir, path), ("model", "task", "score"), rows)
    runs = [(m, t, protocol, s, f"{acc[ti, mi, s]:.6f}")
            for protocol, acc in (("finetune", finetune), ("linear_probe", probe))
            for ti, t in enumerate(tasks) for mi, m in enumerate(models) for s in range(acc.shape[-1])]
    atomic_io.write_csv(os.path.join(out_dir, "runs.csv"), ("model", "task", "protocol", "seed", "score"), runs)
    x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    family_graphs = {family: graphs.from_flax(spec.model(family), x, name=family, train=False)
                     for family in spec.families}
    zoo = [dataclasses.replace(family_graphs[m.split("@")[0]], name=m) for m in models]
    graphs.save_jsonl(zoo, os.path.join(out_dir, "graphs.jsonl"))


# ----------------------------------------------------------------------------- ground truth and cost


def ground_truth_summary(runs: np.ndarray) -> dict[str, float]:
    """How informative ``acc[T, M, seeds]`` (e.g. :attr:`BuildResult.finetune_runs`) is as ground truth:
    ``spread`` (median over tasks of max - min of the seed-mean accuracy over models),
    ``std_over_models`` (median over tasks), ``seed_noise`` (median |seed 0 - seed 1|), and
    ``seed_kendall`` (mean over tasks of Kendall's tau between seed 0's and seed 1's accuracies
    across models: whether the ranking is reproducible rather than noise; NaN for one seed)."""
    runs = np.asarray(runs, np.float64)
    if runs.ndim != 3:
        raise ValueError(f"runs: expected acc[T, M, seeds], got shape {runs.shape}")
    mean = runs.mean(-1)
    summary = {"spread": float(np.median(mean.max(1) - mean.min(1))),
               "std_over_models": float(np.median(mean.std(1))),
               "seed_noise": float("nan"), "seed_kendall": float("nan")}
    if runs.shape[-1] > 1:
        summary["seed_noise"] = float(np.median(np.abs(runs[..., 0] - runs[..., 1])))
        summary["seed_kendall"] = float(np.nanmean(np.asarray(metrics.kendall_tau(runs[..., 0], runs[..., 1]))))
    return summary


def forward_seconds(family: str, num_images: int, *, image_size: int = 224, width: float = 1.0,
                    num_classes: int = 1000, batch_size: int = 32, seed: int = 0) -> float:
    """Seconds of an eval-mode forward pass of one ``family`` model (random weights: the same
    FLOPs as trained ones) over ``num_images`` images ``image_size`` wide, in batches of
    at most ``batch_size`` (equal batches, so at most ``batches - 1`` padded images), compile
    excluded: the cost one candidate adds to a forward-pass estimator at real scale."""
    model = architectures.build(family, num_classes, width)
    size = max(image_size, architectures.min_input_size(family))
    variables = jax.jit(model.init)(_keys(seed, 1)[0], jnp.zeros((1, size, size, 3), jnp.float32))
    forward = jax.jit(lambda v, x: _apply(model, v, x, train=False, return_features=True))
    batches = -(-num_images // batch_size)
    batch = jax.random.uniform(_keys(seed + 1, 1)[0], (-(-num_images // batches), size, size, 3))
    jax.block_until_ready(forward(variables, batch))  # compile
    start = time.perf_counter()
    for _ in range(batches):
        jax.block_until_ready(forward(variables, batch))
    return time.perf_counter() - start

