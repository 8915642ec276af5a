"""Re-ranking a new task's best candidates with forward passes of their real weights.

A zoo ranks a new task from one proxy pass, without running any candidate. When the
candidates' weights are at hand, the best ``depth`` models of the ranking that have no
measured result for the task are re-scored on the task's own examples: each one's penultimate
features (and source-head probabilities) from a forward pass, scored by a forward-pass
estimator (:mod:`fennec_jax.estimators`, LogME by default). This is Model Spider's re-ranking
step (re-score the top of the list with evidence that costs a forward pass per model), with
the real models.

Blend. Inside the re-ranked set, the zoo's predicted scores and the estimator's scores are
each standardized (z-scores over the set) and the set is re-ordered by
``(1 - weight) * z_predicted + weight * z_estimator`` (``weight = 1`` orders the set by the
estimator alone, 0 keeps the zoo's order). The weight is chosen by validation inside the zoo's
history when the zoo carries it (:func:`validate_blend`, :mod:`fennec_jax.zoo.blend`: its
held-out history tasks re-ranked as a new task is), else :data:`DEFAULT_WEIGHT` = 0.5 (equal
trust in both, fixed a priori). The set keeps its places in the list: its models are re-ordered among the
slots they held, so measured results and the models below the set do not move, and the
predicted scores and intervals are left as the zoo gave them (the estimator's scores are in
their own units, shown beside them as ``rerank_score``).

Weights folder (``--weights=DIR``): ``DIR/architectures.csv``, one row per model, columns

=================  ==========================================================================
``model``          the model's name in the zoo.
``architecture``   a :mod:`fennec_jax.archs.architectures` builder (``resnet50``, ...).
``num_classes``    width of the checkpoint's classifier head.
``width``          channel width multiplier (default 1).
``preprocess``     ``imagenet`` (default: torchvision's evaluation transform, resize 256, centre
                   crop 224, ImageNet mean and std) or ``unit`` (resized to ``image_size``,
                   scaled to [0, 1], not normalised).
``image_size``     input side for ``unit`` (required there).
``source_classes`` head logits that belong to the source task (default: all); the source-head
                   probabilities of the estimators that read them are a softmax over these.
``file``           the checkpoint, relative to ``DIR`` (default: ``MODEL.safetensors``, else
                   ``MODEL.pth``), in PyTorch layout (:func:`fennec_jax.encoders.weights.load_torchvision`).
=================  ==========================================================================

Models that run alike (same architecture, head, width and preprocessing) are stacked and run
in one vmapped forward pass per batch of images, split over the devices of a mesh when one is
given (:func:`fennec_jax.encoders.features.extract_features_of_models`): with many models
this is the job that needs many accelerators.

Models of the set that the folder does not list are left where they are, and the ranking says
how many were re-scored.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import os
from collections.abc import Callable, Mapping

import flax.linen as nn
import numpy as np

from fennec_jax.archs import architectures
from fennec_jax.encoders import features as features_lib
from fennec_jax.encoders.proxy import resize_center_crop
from fennec_jax.ranking.table import RankingTable
from fennec_jax.zoo.blend import DEPTH, GRID, BlendValidation
from fennec_jax.zoo.task_data import TaskData
from fennec_jax.zoo.zoo import TaskRanking, Zoo, ZooError

__all__ = ["WeightsEntry", "read_weights_dir", "candidates", "candidate_features", "estimator_scores", "reorder",
           "rerank", "validate_blend", "forward_pass_scorer", "with_blend", "blend_weight", "DEFAULT_WEIGHT",
           "PREPROCESS"]

DEFAULT_WEIGHT = 0.5
PREPROCESS = ("imagenet", "unit")
_INDEX = "architectures.csv"
_REQUIRED = ("model", "architecture", "num_classes")
_OPTIONAL = ("width", "preprocess", "image_size", "source_classes", "file")


@dataclasses.dataclass(frozen=True)
class WeightsEntry:
    """One model's checkpoint and how to run it (module docstring: the columns)."""

    model: str
    path: str
    architecture: str
    num_classes: int
    width: float = 1.0
    preprocess: str = "imagenet"
    image_size: int | None = None
    source_classes: int | None = None


def _field(path: str, line: int, row: Mapping[str, str], name: str, kind: Callable, default=None):
    value = (row.get(name) or "").strip()
    if not value:
        if default is None and name in _REQUIRED:
            raise ZooError(f"{path}, line {line}: column {name!r} is empty; expected a value")
        return default
    try:
        out = kind(value)
    except ValueError:
        raise ZooError(f"{path}, line {line}: {name}={value!r} is not a valid {kind.__name__}") from None
    if kind in (int, float) and not out > 0:
        raise ZooError(f"{path}, line {line}: {name}={value!r}; expected a positive number")
    return out


def _entry(folder: str, path: str, line: int, row: Mapping[str, str]) -> WeightsEntry:
    model = _field(path, line, row, "model", str)
    architecture = _field(path, line, row, "architecture", str)
    if architecture not in architectures.ARCHITECTURES:
        raise ZooError(f"{path}, line {line}: architecture {architecture!r} is not one this package builds; "
                       f"expected one of {', '.join(sorted(architectures.ARCHITECTURES))}")
    preprocess = _field(path, line, row, "preprocess", str, "imagenet")
    if preprocess not in PREPROCESS:
        raise ZooError(f"{path}, line {line}: preprocess={preprocess!r}; expected one of {', '.join(PREPROCESS)}")
    image_size = _field(path, line, row, "image_size", int, 0) or None
    if preprocess == "unit" and image_size is None:
        raise ZooError(f"{path}, line {line}: preprocess=unit needs image_size")
    num_classes = _field(path, line, row, "num_classes", int)
    source_classes = _field(path, line, row, "source_classes", int, 0) or None
    if source_classes is not None and source_classes > num_classes:
        raise ZooError(f"{path}, line {line}: source_classes={source_classes} exceeds num_classes={num_classes}")
    file = _field(path, line, row, "file", str, "")
    if not file:
        file = next((f"{model}{ext}" for ext in (".safetensors", ".pth") if os.path.exists(
            os.path.join(folder, f"{model}{ext}"))), f"{model}.safetensors")
    checkpoint = os.path.join(folder, file)
    if not os.path.isfile(checkpoint):
        raise ZooError(f"{path}, line {line}: no checkpoint {checkpoint} for model {model!r}")
    return WeightsEntry(model, checkpoint, architecture, num_classes, _field(path, line, row, "width", float, 1.0),
                        preprocess, image_size, source_classes)


def read_weights_dir(folder: str) -> dict[str, WeightsEntry]:
    """``{model: WeightsEntry}`` from ``folder/architectures.csv`` (module docstring).

    Raises:
      ZooError: the folder, its index or a row is missing or malformed (one line naming the
        file, the line and what was expected).
    """
    path = os.path.join(folder, _INDEX)
    if not os.path.isdir(folder):
        raise ZooError(f"--weights: {folder} is not a folder; expected a folder with {_INDEX} and checkpoints")
    if not os.path.isfile(path):
        raise ZooError(f"{path}: not found; a weights folder lists its models in {_INDEX} "
                       f"(columns {', '.join(_REQUIRED + _OPTIONAL)})")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in _REQUIRED if c not in (reader.fieldnames or ())]
            if missing:
                raise ZooError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(_REQUIRED)}")
            entries = {}
            for line, row in enumerate(reader, start=2):
                entry = _entry(folder, path, line, row)
                if entry.model in entries:
                    raise ZooError(f"{path}, line {line}: model {entry.model!r} is listed twice")
                entries[entry.model] = entry
    except UnicodeDecodeError:
        raise ZooError(f"{path}: not UTF-8 text; expected a CSV file") from None
    if not entries:
        raise ZooError(f"{path}: lists no models")
    return entries


@functools.lru_cache(maxsize=None)
def _apply_fn(architecture: str, num_classes: int, width: float, source_classes: int | None):
    """``(model, apply_fn)``: one function per architecture shape, so the models sharing it
    share one compiled forward pass."""
    model = architectures.build(architecture, num_classes, width)
    heads = source_classes or num_classes

    def apply_fn(params, images):
        with nn.intercept_methods(architectures.depthwise_as_shifts):
            logits, feats = model.apply(params, images, return_features=True)
        return feats, logits[:, :heads]

    return apply_fn


def _variables(entry: WeightsEntry):
    """The model's variables read from its checkpoint (ZooError naming it if they do not fit)."""
    from fennec_jax.encoders import weights

    try:
        return weights.load_torchvision(entry.architecture, entry.path, entry.num_classes,
                                        width_multiplier=entry.width)[1]
    except (ValueError, OSError) as e:
        raise ZooError(f"{entry.path}: cannot load model {entry.model!r} as {entry.architecture}: "
                       f"{str(e).splitlines()[0]}") from None


def _preprocess(entry: WeightsEntry) -> Callable[[np.ndarray], np.ndarray]:
    if entry.preprocess == "unit":
        return functools.partial(features_lib.preprocess_image, size=entry.image_size, mean=(0.0,) * 3,
                                 std=(1.0,) * 3)
    return functools.partial(resize_center_crop, resize=256, crop=224, mean=features_lib.IMAGENET_MEAN,
                             std=features_lib.IMAGENET_STD)


def _zscores(x: np.ndarray) -> np.ndarray:
    spread = x.std()
    return (x - x.mean()) / spread if spread > 0 else np.zeros_like(x)


def candidates(ranking: TaskRanking, depth: int, available) -> list[int]:
    """Indices of the models to re-score: of the ``depth`` best models of ``ranking`` without a
    measured result, those in ``available`` (names with weights)."""
    if depth < 2:
        raise ZooError(f"--rerank: expected at least 2 models to re-rank, got {depth}")
    table = ranking.table
    unmeasured = [int(i) for i in table.order() if not table.observed[i]]
    chosen = [i for i in unmeasured[:depth] if table.models[i] in available]
    if len(chosen) < 2:
        raise ZooError(f"--weights: {len(chosen)} of the top {depth} unmeasured models have checkpoints listed; "
                       f"need at least 2 to re-rank")
    return chosen


def candidate_features(entries, data: TaskData, progress: Callable[[str], None] = lambda msg: None, *,
                       mesh=None, batch_size: int = 32) -> list[features_lib.Features]:
    """Each entry's features and source-head probabilities on ``data``'s images, in the
    entries' order. Models that run alike (architecture, head, width, preprocessing) go
    through one vmapped forward pass together (:func:`fennec_jax.encoders.features.
    extract_features_of_models`), split over ``mesh``'s devices when given."""
    import jax

    if data.images is None:
        raise ZooError(f"{data.source or data.name}: re-ranking runs the candidates on the task's images; this task "
                       f"gives proxy features only")
    groups: dict[tuple, list[int]] = {}
    for i, entry in enumerate(entries):
        key = (entry.architecture, entry.num_classes, entry.width, entry.source_classes, entry.preprocess,
               entry.image_size)
        groups.setdefault(key, []).append(i)
    out: list[features_lib.Features | None] = [None] * len(entries)
    for key, members in groups.items():
        first = entries[members[0]]
        stacked = jax.tree_util.tree_map(lambda *leaves: np.stack(leaves),
                                         *(_variables(entries[i]) for i in members))
        images = np.stack([_preprocess(first)(image) for image in data.images])
        found = features_lib.extract_features_of_models(
            _apply_fn(first.architecture, first.num_classes, first.width, first.source_classes), stacked, images,
            batch_size, with_probs=True, mesh=mesh)
        for j, i in enumerate(members):
            out[i] = features_lib.Features(found.features[j], found.probs[j])
        progress(f"re-rank forward passes: {len(members)} {first.architecture} model(s) "
                 f"({sum(f is not None for f in out)}/{len(entries)})")
    return out


def _check_estimator(estimator: str) -> None:
    from fennec_jax.estimators import registry

    if estimator not in registry.method_names():
        raise ZooError(f"--rerank_estimator: unknown estimator {estimator!r}; "
                       f"choose from {', '.join(registry.method_names())}")


def estimator_scores(estimator: str, feats: list[features_lib.Features], labels: np.ndarray, *,
                     mesh=None) -> np.ndarray:
    """``scores[R]`` of ``estimator`` for the models whose features are ``feats`` (scored
    over ``mesh``'s devices when given)."""
    from fennec_jax.estimators import registry

    _check_estimator(estimator)
    probs = [np.asarray(f.probs, np.float32) for f in feats] if registry.needs_probs(estimator) else None
    return np.asarray(registry.score_models(estimator, [np.asarray(f.features, np.float32) for f in feats],
                                            labels, probs, mesh=mesh), np.float64)


def reorder(ranking: TaskRanking, chosen: list[int], scores: np.ndarray, *, weight: float = DEFAULT_WEIGHT,
            label: str = "rerank") -> TaskRanking:
    """``ranking`` with the models ``chosen`` re-ordered in their slots by the blend of their
    predicted scores and ``scores[R]`` (module docstring); ``label`` is added to its evidence."""
    if not 0.0 <= weight <= 1.0:
        raise ZooError(f"--rerank_weight: expected a number in [0, 1], got {weight}")
    table = ranking.table
    order = table.order()
    blended = (1.0 - weight) * _zscores(table.predicted[chosen]) + weight * _zscores(scores)
    names = np.array([table.models[i] for i in chosen])
    fixed = order.copy()
    fixed[np.flatnonzero(np.isin(order, chosen))] = np.array(chosen)[np.lexsort((names, -blended))]
    rerank_score = np.full(len(table.models), np.nan)
    rerank_score[chosen] = scores
    return dataclasses.replace(ranking, table=dataclasses.replace(table, fixed_order=fixed),
                               rerank_score=rerank_score, evidence=f"{ranking.evidence} + {label}")


def rerank(ranking: TaskRanking, data: TaskData, weights: Mapping[str, WeightsEntry], depth: int, *,
           estimator: str = "logme", weight: float = DEFAULT_WEIGHT,
           progress: Callable[[str], None] = lambda msg: None, mesh=None) -> TaskRanking:
    """``ranking`` with its best ``depth`` unmeasured models re-scored by ``estimator`` on
    ``data``'s examples and re-ordered in their slots (module docstring).

    Args:
      ranking: a zoo's ranking of the task (:meth:`fennec_jax.zoo.zoo.Zoo.rank`).
      data: the task's labelled images (proxy features alone cannot be re-ranked).
      weights: the candidates' checkpoints (:func:`read_weights_dir`).
      depth: how many candidates to re-score (R >= 2).
      estimator: a registered estimator name (:func:`fennec_jax.estimators.registry.method_names`).
      weight: the estimator's weight in the blend, in [0, 1].
      progress: called with a line per group of models run together.
      mesh: split the forward passes and the estimator's scoring over its devices
        (``"models"`` axis, e.g. ``engine.make_mesh()``).
    """
    _check_estimator(estimator)  # before the forward passes
    chosen = candidates(ranking, depth, weights)
    feats = candidate_features([weights[ranking.table.models[i]] for i in chosen], data, progress, mesh=mesh)
    scores = estimator_scores(estimator, feats, data.labels, mesh=mesh)
    return reorder(ranking, chosen, scores, weight=weight,
                   label=f"rerank ({estimator}, {len(chosen)} models, weight {weight:g})")


def blend_weight(zoo: Zoo, depth: int, estimator: str) -> tuple[float, str]:
    """``(weight, why)``: the zoo's validated weight for re-ranking ``depth`` models with
    ``estimator`` (:meth:`fennec_jax.zoo.blend.BlendValidation.choose`), or
    :data:`DEFAULT_WEIGHT` with the reason none applies."""
    validation = zoo.blend
    if validation is None:
        return DEFAULT_WEIGHT, (f"weight {DEFAULT_WEIGHT:g} (not validated: fit the zoo with --weights to choose it "
                                f"on its history)")
    if validation.estimator != estimator or depth > validation.depth:
        return DEFAULT_WEIGHT, (f"weight {DEFAULT_WEIGHT:g} (the zoo validated {validation.estimator} up to "
                                f"{validation.depth} models, not {estimator} with {depth})")
    choice = validation.choose(depth)
    return choice.weight, choice.describe(depth)


def forward_pass_scorer(task_data: Mapping[str, TaskData], weights: Mapping[str, WeightsEntry], estimator: str, *,
                        progress: Callable[[str], None] = lambda msg: None, mesh=None):
    """``scorer(task, names) -> scores[R]``: ``estimator`` over the forward passes of the models
    ``names`` on ``task_data[task]``'s images (the scorer :func:`validate_blend` takes)."""
    _check_estimator(estimator)

    def scorer(task: str, names) -> np.ndarray:
        feats = candidate_features([weights[name] for name in names], task_data[task], progress, mesh=mesh)
        return estimator_scores(estimator, feats, task_data[task].labels, mesh=mesh)

    return scorer


def validate_blend(zoo: Zoo, scorer: Callable[[str, list[str]], np.ndarray], available, *, depth: int = DEPTH,
                   estimator: str = "logme", progress: Callable[[str], None] = lambda msg: None) -> BlendValidation:
    """Weighted taus of the zoo's held-out history tasks re-ranked at depths ``2 .. depth`` and
    each weight of :data:`fennec_jax.zoo.blend.GRID` (that module's docstring).

    Each held-out task is ranked from the scores of the fit without it (``zoo.held_out_scores``)
    in the records' units, as a new task is; its best ``depth`` models in ``available`` (names
    with weights) are scored by ``scorer(task, names) -> scores[R]`` (e.g.
    :func:`forward_pass_scorer`) and re-ordered by :func:`reorder`.
    """
    from fennec_jax.eval.metrics import weighted_tau

    calibration, records = zoo.calibration, zoo.records
    if zoo.held_out_scores is None or not calibration.held_out:
        raise ZooError("--weights: this zoo has no held-out history tasks to validate the re-ranking on "
                       "(it needs at least 3 tasks); pass --rerank_weight instead")
    proxies = records.task_side.get("proxy")
    taus = np.zeros((depth - 1, len(GRID), len(calibration.held_out)))
    for h, task in enumerate(calibration.held_out):
        progress(f"validating the re-ranking blend on held-out task {h + 1}/{len(calibration.held_out)}: {task}")
        t = records.tasks.index(task)
        predicted, _ = calibration.estimate(zoo.held_out_scores[h], proxy=None if proxies is None else proxies[t])
        unknown = np.full(len(records.models), np.nan)
        ranking = TaskRanking(task, RankingTable(records.models, predicted, unknown), "proxy", 0.0)
        chosen = candidates(ranking, depth, available)
        scores = scorer(task, [records.models[i] for i in chosen])
        observed = records.mask[t]
        for r in range(2, depth + 1):
            for g, weight in enumerate(GRID):
                ranked = reorder(ranking, chosen[:r], scores[:r], weight=weight).table.order_scores()
                taus[r - 2, g, h] = weighted_tau(records.scores[t, observed], ranked[observed])
    return BlendValidation(estimator, tuple(calibration.held_out), GRID, taus)


def with_blend(zoo: Zoo, task_data: Mapping[str, TaskData], weights: Mapping[str, WeightsEntry], *, depth: int = DEPTH,
               estimator: str = "logme", progress: Callable[[str], None] = lambda msg: None, mesh=None) -> Zoo:
    """``zoo`` carrying the re-ranking blend validated on its held-out history tasks, whose data
    ``task_data`` gives (:func:`validate_blend` over forward passes of ``weights``)."""
    missing = [t for t in zoo.calibration.held_out if t not in task_data]
    if missing:
        raise ZooError(f"--weights: validating the re-ranking needs the data of the held-out history tasks; "
                       f"none for {', '.join(missing[:5])}")
    scorer = forward_pass_scorer(task_data, weights, estimator, mesh=mesh)
    return dataclasses.replace(zoo, blend=validate_blend(zoo, scorer, weights, depth=depth, estimator=estimator,
                                                         progress=progress))
