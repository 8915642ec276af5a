"""The default zoo, and a sample task to try it on, from real data that ships in packages.

The zoo is the benchmark builder's (:mod:`fennec_jax.benchmarks.builder`, its default build):
40 small image models (5 architecture families x 8 pre-training sources) with their measured
full fine-tune accuracies on 20 target tasks (``fennec_jax/bundled/builder/records.csv``). The
targets' data is rebuilt from the packages it came from (scikit-learn's digits, scikit-image's
faces and photographs, 16 px), embedded by the MobileNetV2 proxy, and the zoo is fitted on
first use and kept in a cache folder (``$FENNEC_JAX_CACHE``, default ``~/.cache/fennec_jax``),
one per package version.

:func:`write_sample_task` writes a task the zoo has not seen (a new class subset of the
digits) as an image folder, for ``./run.sh rank --task=FOLDER``.

:func:`default_weights` gives the same 40 models' weights for ``rank --rerank``: they are
pre-trained again exactly as the default build pre-trained them (same data, configuration and
seeds; the build is deterministic), on first use (a few minutes on 2 CPU cores), and kept in the
cache as a weights folder (:mod:`fennec_jax.zoo.rerank`: torchvision-layout safetensors files
and ``architectures.csv``); :func:`default_zoo_blend` then validates the re-ranking blend on the
zoo's held-out tasks once (:mod:`fennec_jax.zoo.blend`) and caches it with the zoo.
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Callable

import numpy as np

import fennec_jax
from fennec_jax.core import atomic_io
from fennec_jax.core.checkpoint import CheckpointError
from fennec_jax.zoo.blend import DEPTH
from fennec_jax.zoo.task_data import TaskData, balanced_subset, write_image_folder
from fennec_jax.zoo.zoo import Zoo, ZooError, fit_zoo, load_zoo

__all__ = ["default_zoo_path", "default_zoo", "default_zoo_blend", "default_weights", "builder_task_data",
           "write_sample_task", "SAMPLE_CLASSES"]

IMAGE_SIZE = 16  # the default build's image side
NUM_TARGETS = 20
SAMPLE_CLASSES = (0, 3, 9)  # a digits subset that is none of the zoo's targets


def _cache(kind: str) -> str:
    cache = os.environ.get("FENNEC_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fennec_jax")
    return os.path.join(cache, kind, f"builder-{fennec_jax.__version__}")


def default_zoo_path() -> str:
    """Where the default zoo is cached: ``$FENNEC_JAX_CACHE/zoos/builder-VERSION``."""
    return _cache("zoos")


def default_weights_path() -> str:
    """Where the default zoo's weights are cached: ``$FENNEC_JAX_CACHE/weights/builder-VERSION``."""
    return _cache("weights")


def _records():
    from fennec_jax.core.records import load_records

    with importlib.resources.as_file(importlib.resources.files("fennec_jax") / "bundled" / "builder" /
                                     "records.csv") as path:
        return load_records(str(path))


def _datasets():
    from fennec_jax.benchmarks import builder

    return builder.packaged_datasets(IMAGE_SIZE)


def builder_task_data(max_examples: int = 64) -> dict[str, TaskData]:
    """``{task: TaskData}``: the training examples of the default build's 20 targets, rebuilt
    from the packaged datasets, ``max_examples`` each (class-balanced, as :func:`read_task`)."""
    from fennec_jax.benchmarks import builder

    out = {}
    for task in builder.default_targets(_datasets(), NUM_TARGETS, 100, 100):
        keep = balanced_subset(task.train_y, max_examples)
        images = (task.train_x[keep] * 255).round().astype(np.uint8)
        out[task.name] = TaskData(task.name, task.train_y[keep], tuple(str(c) for c in range(task.num_classes)),
                                  images=list(images), source=f"builder target {task.name}")
    return out


def default_zoo(log: Callable[[str], None] = lambda msg: None) -> Zoo:
    """The default zoo: loaded from the cache, or fitted (about a minute on 2 CPU cores) and cached."""
    path = default_zoo_path()
    if os.path.isdir(path):
        try:
            return load_zoo(path)
        except (ZooError, CheckpointError) as err:
            log(f"the cached default zoo cannot be used ({err}); fitting it again")
    log(f"fitting the default zoo once (cached in {path})")
    records = _records()
    log("rebuilding the 20 target tasks' data from scikit-learn / scikit-image")
    zoo = fit_zoo(records, task_data=builder_task_data(), proxy="mobilenet_v2", log=log)
    zoo.save(path, overwrite=True)
    return zoo


def default_zoo_blend(zoo: Zoo, weights_folder: str, *, depth: int, estimator: str = "logme",
                      log: Callable[[str], None] = lambda msg: None) -> Zoo:
    """The default zoo with its re-ranking blend validated for ``estimator`` up to ``depth``
    models (:func:`fennec_jax.zoo.rerank.with_blend`, on the builder targets' data rebuilt from
    the packages): ``zoo`` itself when it already is, else validated once (a forward pass of
    ``depth`` models on each held-out task) and cached with the zoo."""
    from fennec_jax.zoo import rerank

    if zoo.blend is not None and zoo.blend.estimator == estimator and zoo.blend.depth >= depth:
        return zoo
    log(f"validating the re-ranking blend on the default zoo's held-out tasks (once; cached in {default_zoo_path()})")
    zoo = rerank.with_blend(zoo, builder_task_data(zoo.max_examples), rerank.read_weights_dir(weights_folder),
                            depth=max(depth, DEPTH), estimator=estimator, progress=log)
    zoo.save(default_zoo_path(), overwrite=True)
    return zoo


def default_weights(log: Callable[[str], None] = lambda msg: None) -> str:
    """The folder of the default zoo's model weights (module docstring): cached, or pre-trained
    and written on first use; returns its path."""
    import jax

    from fennec_jax.benchmarks import builder
    from fennec_jax.encoders import weights

    path = default_weights_path()
    if os.path.isfile(os.path.join(path, "architectures.csv")):
        return path
    spec, config = builder.ZooSpec(), builder.TrainConfig()
    sources = builder.default_sources(_datasets())  # the default build's 8 sources, 600 examples each

    names = iter(builder.model_names(spec, sources))  # family (outer) by source (inner)

    def fill(folder: str) -> None:
        rows = []
        for family in spec.families:
            log(f"pre-training the {len(sources)} {family} models of the default zoo (once; cached in {path})")
            stacked = builder.pretrain_family(spec, family, sources, config)  # leaves [sources, ...]
            for i, source in enumerate(sources):
                name = next(names)
                one = jax.tree_util.tree_map(lambda leaf: np.asarray(leaf[i]), stacked)
                weights.write_safetensors(os.path.join(folder, f"{name}.safetensors"), weights.from_flax(one))
                rows.append((name, family, spec.head_classes, spec.width, "unit", IMAGE_SIZE, source.num_classes))
        atomic_io.write_csv(os.path.join(folder, "architectures.csv"),
                            ("model", "architecture", "num_classes", "width", "preprocess", "image_size",
                             "source_classes"), rows)

    atomic_io.write_folder(path, fill, overwrite=True)
    return path


def write_sample_task(out: str, classes: tuple[int, ...] = SAMPLE_CLASSES, per_class: int = 30) -> str:
    """Writes a new task (handwritten digits of ``classes``, ``per_class`` images each, 16 px
    PNGs) as an image folder ``out/digit_C/NNNNN.png``; returns ``out``."""
    images, labels = _datasets()["digits"]
    picks = [np.flatnonzero(labels == c)[-per_class:] for c in classes]  # the last ones: a fixed choice
    index = np.concatenate(picks)
    relabel = {c: i for i, c in enumerate(classes)}
    write_image_folder(out, images[index], np.array([relabel[int(y)] for y in labels[index]]),
                       [f"digit_{c}" for c in classes])
    return out
