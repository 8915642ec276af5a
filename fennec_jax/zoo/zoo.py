"""A zoo: a user's models with their fine-tuning records, fitted once, ranked for any new task.

The Fennec workflow as an object::

    zoo = fit_zoo(records, task_data={"cifar": read_task("data/cifar"), ...}, proxy="mobilenet_v2")
    zoo.save("my_zoo")
    zoo = load_zoo("my_zoo")
    ranking = zoo.rank("data/my_new_task", probes={"resnet50": 0.91})   # no candidate forward pass
    ranking.top(10)

:func:`fit_zoo` fits a ranking method on all records. When the history tasks' data is given,
each is embedded once by the proxy encoder (:mod:`fennec_jax.encoders.proxy`), so a new task
needs one proxy pass over its data and nothing else; without task data the zoo still ranks
new tasks from probes and metadata. It also calibrates the method on held-out history tasks
(:mod:`fennec_jax.zoo.calibration`), so predictions come in the records' units with intervals.

On disk a zoo is one folder: ``manifest.json`` (format, package version, method, proxy,
models, tasks: for people), ``arrays/`` (records, task embeddings and calibration as one
checksummed orbax checkpoint, :mod:`fennec_jax.core.checkpoint`, with a copy of the manifest and
the SHA-256 of the method's files) and ``method/`` (the method's own checkpoint). It is written
into a temporary folder and renamed when complete; loading refuses a zoo of another package
version or format, or one any part of which was damaged or edited, and ranking refuses data
embedded by another proxy than the zoo's.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

import fennec_jax
from fennec_jax.core import atomic_io
from fennec_jax.core.checkpoint import restore_arrays, save_arrays
from fennec_jax.core.digest import folder_digest
from fennec_jax.core.evidence import TaskEvidence
from fennec_jax.core.records import Records
from fennec_jax.methods.base import method_from_spec
from fennec_jax.ranking.table import COLUMNS, RankingTable
from fennec_jax.zoo.blend import BlendValidation
from fennec_jax.zoo.calibration import (CALIBRATION_TASKS, Calibration, fit_calibration, held_out_predictions,
                                        held_out_tasks)
from fennec_jax.zoo.task_data import TaskData, read_task

__all__ = ["FORMAT", "PROXIES", "Zoo", "ZooError", "TaskRanking", "fit_zoo", "load_zoo", "load_proxy", "embed_task",
           "read_task_folder"]

FORMAT = "fennec_jax.zoo/3"  # 2: held-out scores and the re-ranking blend's validation; 3: signed errors by task
PROXIES = ("mobilenet_v2", "clip:/path/to/checkpoint")


class ZooError(ValueError):
    """A zoo that cannot be fitted, loaded or used as asked; the message says what to do."""


# ----------------------------------------------------------------------------- proxies


def load_proxy(spec: str):
    """``(ImageProxy, id)`` for ``'mobilenet_v2'`` (torchvision's ImageNet MobileNetV2, shipped in
    a package) or ``'clip:PATH'`` (a local CLIP checkpoint folder). ``id`` names the encoder
    independently of where its files lie, so a zoo can tell whether a task was embedded by it."""
    from fennec_jax.encoders import proxy as proxy_lib

    if spec == "mobilenet_v2":
        return proxy_lib.mobilenet_v2_proxy(), "mobilenet_v2"
    if spec.startswith("clip:") and len(spec) > 5:
        path = spec[5:]
        try:
            encoder = proxy_lib.load_clip_vision(path)
        except (FileNotFoundError, ValueError) as err:
            raise ZooError(f"--proxy={spec}: cannot load the CLIP checkpoint ({err})") from None
        return encoder, f"clip:{os.path.basename(os.path.normpath(path))}:{encoder.dim}"
    raise ZooError(f"--proxy={spec!r}: expected one of {', '.join(PROXIES)}")


def embed_task(data: TaskData, encoder=None, progress: bool = False) -> np.ndarray:
    """``emb[3P + 3]`` of a task (:func:`fennec_jax.encoders.proxy.task_embedding`) from its
    precomputed proxy features, or from its images passed through ``encoder``."""
    from fennec_jax.encoders.proxy import task_embedding

    if data.features is not None:
        return task_embedding(data.features, data.labels)
    if encoder is None:
        raise ZooError(f"{data.source}: images need a proxy encoder to embed them")
    return task_embedding(encoder.embed_images(data.images, progress=progress), data.labels)


# ----------------------------------------------------------------------------- rankings


@dataclasses.dataclass(frozen=True)
class TaskRanking:
    """A new task's ranking: the table (:class:`~fennec_jax.ranking.table.RankingTable`, in
    the records' units, measured results kept), what it rests on, and the interval level.

    Attributes:
      task: the task's name.
      table: every model, predicted and measured scores, ``level`` intervals.
      evidence: what the task vector came from (``proxy``, ``probes (k)``, ``metadata``,
        ``rerank``).
      level: the intervals' coverage on held-out history tasks (two-sided).
      rerank_score: ``[M]`` the re-ranking estimator's score of each re-scored model, NaN
        elsewhere (:mod:`fennec_jax.zoo.rerank`); None when not re-ranked.
    """

    task: str
    table: RankingTable
    evidence: str
    level: float
    rerank_score: np.ndarray | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        """:data:`~fennec_jax.ranking.table.COLUMNS`, ``evidence``, and ``rerank_score`` when re-ranked."""
        return (*COLUMNS, "evidence") + (() if self.rerank_score is None else ("rerank_score",))

    def rows(self, top_k: int | None = None) -> list[tuple]:
        """The best ``top_k`` rows (all when None) as tuples of :attr:`columns`."""
        rows = [(*row, self.evidence) for row in self.table.rows(top_k)]
        if self.rerank_score is None:
            return rows
        extra = [self.rerank_score[i] for i in self.table.order()[:top_k]]
        return [(*row, "" if np.isnan(x) else float(f"{x:.6g}")) for row, x in zip(rows, extra)]

    def top(self, k: int = 10) -> list[dict]:
        """The best ``k`` models as dicts keyed by :attr:`columns`."""
        return [dict(zip(self.columns, row)) for row in self.rows(k)]


# ----------------------------------------------------------------------------- the zoo


@dataclasses.dataclass(frozen=True)
class Zoo:
    """A fitted zoo.

    Attributes:
      records: the history, ``scores[T, M]`` in the records' own units (``task_side["proxy"]``:
        the history tasks' proxy embeddings ``[T, 3P + 3]`` when task data was given).
      method_spec: the ranking method, as a registry spec (e.g. ``'fennec'``).
      method, state: the method and its state fitted on all records.
      calibration: scores -> records' units and intervals.
      proxy: the proxy encoder's id (:func:`load_proxy`), or None (no task data).
      proxy_width: P, the width of that encoder's features (0 without a proxy).
      max_examples: examples per task the embeddings use (new tasks are read the same way).
      held_out_scores: ``[H, M]`` the method's scores of each of ``calibration.held_out`` by a fit
        without that task, from its proxy alone (what the calibration was fitted on; the
        re-ranking blend is validated on it); None for a zoo without held-out tasks.
      blend: the re-ranking blend's validation (:func:`fennec_jax.zoo.rerank.validate_blend`),
        or None (``rank --rerank`` then blends at the fixed default weight).
    """

    records: Records
    method_spec: str
    method: Any
    state: Any
    calibration: Calibration
    proxy: str | None = None
    proxy_width: int = 0
    max_examples: int = 64
    held_out_scores: np.ndarray | None = None
    blend: BlendValidation | None = None

    @property
    def models(self) -> tuple[str, ...]:
        return self.records.models

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.records.tasks

    def evidence(self, *, probes: Mapping[str, float] | None = None, proxy: np.ndarray | None = None,
                 metadata: Mapping[str, Any] | None = None) -> TaskEvidence:
        """What is known of a new task, with probes given by model name (unknown names and
        non-finite scores are a ZooError)."""
        probes = dict(probes or {})
        unknown = [m for m in probes if m not in self.models]
        if unknown:
            raise ZooError(f"probes: model(s) not in the zoo: {', '.join(unknown[:5])} "
                           f"(the zoo has {len(self.models)} models, e.g. {', '.join(self.models[:3])})")
        bad = [m for m, v in probes.items() if not np.isfinite(float(v))]
        if bad:
            raise ZooError(f"probes: expected finite scores, got {', '.join(f'{m}={probes[m]}' for m in bad)}")
        index = [self.models.index(m) for m in probes]
        return TaskEvidence(np.asarray(index, int), np.asarray([float(v) for v in probes.values()]),
                            proxy=proxy, metadata=dict(metadata or {}))

    def task_proxy(self, task: str | TaskData, encoder=None, progress: bool = False) -> np.ndarray:
        """The zoo-compatible embedding of ``task`` (a path or :class:`TaskData`); images are
        embedded by ``encoder`` (default: the zoo's own proxy, loaded by id when it can be)."""
        if self.proxy is None:
            raise ZooError("--task: this zoo was fitted without task data, so it has no proxy map; rank from "
                           "--probes and --task_meta, or refit with fit_zoo --task_data")
        data = read_task(task, self.max_examples) if isinstance(task, str) else task
        if data.features is not None and data.features.shape[1] != self.proxy_width:
            raise ZooError(f"{data.source}: features are {data.features.shape[1]} wide, but this zoo's proxy "
                           f"{self.proxy} gives {self.proxy_width}")
        if data.features is None and encoder is None:
            if self.proxy != "mobilenet_v2":
                raise ZooError(f"this zoo's proxy is {self.proxy}: pass it (--proxy=clip:/path/to/checkpoint)")
            encoder, _ = load_proxy("mobilenet_v2")
        return embed_task(data, encoder, progress)

    def _new_task(self, task: str | TaskData | None, probes: Mapping[str, float] | None,
                  metadata: Mapping[str, Any] | None, encoder, progress: bool = False) -> TaskEvidence:
        """The evidence of a new task: its proxy embedding (when ``task`` gives its data), its
        name (the data's, unless ``metadata`` names it), metadata and probes."""
        proxy = None if task is None else self.task_proxy(task, encoder, progress)
        metadata = dict(metadata or {})
        if task is not None and "task" not in metadata:
            metadata["task"] = task.name if isinstance(task, TaskData) else os.path.basename(os.path.normpath(task))
        return self.evidence(probes=probes, proxy=proxy, metadata=metadata)

    def rank(self, task: str | TaskData | None = None, *, probes: Mapping[str, float] | None = None,
             metadata: Mapping[str, Any] | None = None, encoder=None, level: float = 0.8,
             progress: bool = False) -> TaskRanking:
        """Every model ranked for a new task, in the records' units with ``level`` intervals.

        Args:
          task: the task's data (a path :func:`read_task` accepts, or a :class:`TaskData`), or
            None to rank from probes and metadata alone.
          probes: ``{model name: measured score}`` for models already fine-tuned on the task.
          metadata: task metadata columns (as the records' task metadata), plus ``'task'``: its name.
          encoder: the proxy encoder to embed images with (default: the zoo's, by id).
        A task named like a zoo task shows that task's measured results as observed.
        """
        evidence = self._new_task(task, probes, metadata, encoder, progress)
        proxy, metadata = evidence.proxy, evidence.metadata
        scores = np.asarray(self.method.score(self.state, evidence), np.float64)
        predicted, low, high = self.calibration.predict(scores, proxy=proxy, probe_models=evidence.probe_models,
                                                        probe_scores=evidence.probe_scores, level=level)
        measured = np.full(len(self.models), np.nan)
        name = metadata.get("task")
        if name in self.tasks:
            t = self.tasks.index(name)
            measured[self.records.mask[t]] = self.records.scores[t, self.records.mask[t]]
        measured[evidence.probe_models] = evidence.probe_scores
        sources = [s for s, used in (("proxy", proxy is not None), (f"probes ({evidence.k})", evidence.k),
                                     ("metadata", bool(set(metadata) - {"task"}))) if used]
        table = RankingTable(self.models, predicted, measured, low, high)
        return TaskRanking(str(name or "new task"), table, " + ".join(sources) or "history only", level)

    def suggest(self, task: str | TaskData | None = None, *, budget: int = 3, policy: str = "thompson",
                probes: Mapping[str, float] | None = None, metadata: Mapping[str, Any] | None = None,
                encoder=None, seed: int = 0) -> list[dict]:
        """The next ``budget`` models to fine-tune for a new task, best first, each with its
        expected gain (:mod:`fennec_jax.methods.suggest`: ``thompson`` hunts the best model,
        ``dopt`` reduces the uncertainty about the task vector, ``mixed`` does the one then the
        other, ``random`` is the baseline).

        Returns ``[{"model", "gain", "gain_means", "predicted_score"}]``. A ZooError for a budget
        larger than the models left, an unknown or repeated probe, or a method without a
        posterior (policies other than ``random`` need fennec's, or auto's where it chose a
        fennec space).
        """
        from fennec_jax.methods import suggest as suggest_lib

        evidence = self._new_task(task, probes, metadata, encoder)
        try:
            chosen = suggest_lib.suggest(self.method, self.state, evidence, budget, policy, seed=seed)
        except ValueError as err:
            raise ZooError(f"suggest: {err}") from None
        scores = np.asarray(self.method.score(self.state, evidence), np.float64)
        predicted, _ = self.calibration.estimate(scores, proxy=evidence.proxy, probe_models=evidence.probe_models,
                                                 probe_scores=evidence.probe_scores)
        return [{"model": self.models[m], "gain": float(g), "gain_means": chosen.gain,
                 "predicted_score": float(predicted[m])} for m, g in zip(chosen.models, chosen.gains)]

    def save(self, path: str, *, overwrite: bool = False) -> None:
        """Writes the zoo folder ``path`` (see the module docstring), atomically."""
        def fill(folder: str) -> None:
            self.method.save(self.state, os.path.join(folder, "method"))
            manifest = self._manifest(folder_digest(os.path.join(folder, "method")))
            save_arrays(os.path.join(folder, "arrays"), FORMAT, manifest, self._arrays())
            atomic_io.write_json(os.path.join(folder, "manifest.json"), manifest)

        try:
            atomic_io.write_folder(path, fill, overwrite=overwrite)
        except FileExistsError:
            raise ZooError(f"{os.path.abspath(path)}: already exists (choose another folder or pass --overwrite)") from None

    def _manifest(self, method_digest: str) -> dict:
        cal = self.calibration
        return {"format": FORMAT, "fennec_jax_version": fennec_jax.__version__, "method": self.method_spec,
                "method_digest": method_digest, "proxy": self.proxy,
                "proxy_width": self.proxy_width, "max_examples": self.max_examples,
                "models": list(self.models), "tasks": list(self.tasks),
                "calibration": {"slope": cal.slope, "default_scale": list(cal.default_scale), "bounds": list(cal.bounds),
                                "held_out": list(cal.held_out), "scale_map": cal.scale_map is not None,
                                "interval_80": list(cal.quantiles(0.8)) if cal.errors.size else None,
                                "interval_80_with_probes": list(cal.quantiles(0.8, probed=True)) if cal.errors.size
                                else None},
                "rerank_blend": None if self.blend is None else self.blend.to_json()}

    def _arrays(self) -> dict[str, np.ndarray]:
        cal = self.calibration
        arrays = {"scores": np.where(self.records.mask, self.records.scores, 0.0), "mask": self.records.mask,
                  "errors": cal.errors, "groups": cal.groups, "probe_errors": cal.probe_errors,
                  "probe_groups": cal.probe_groups}
        if "proxy" in self.records.task_side:
            arrays["proxies"] = np.asarray(self.records.task_side["proxy"], np.float64)
        if cal.scale_map is not None:
            arrays.update(scale_weights=cal.scale_map.weights, scale_bias=cal.scale_map.bias,
                          scale_l2=cal.scale_map.l2)
        if self.held_out_scores is not None:
            arrays["held_out_scores"] = np.asarray(self.held_out_scores, np.float64)
        if self.blend is not None:
            arrays["blend_taus"] = self.blend.taus
        return arrays


def load_zoo(path: str) -> Zoo:
    """The zoo saved at ``path``; a ZooError (or CheckpointError) naming the path for a missing
    or corrupted folder, another package version, or an unknown format.

    Every part is checked before anything is used: ``arrays/`` by its checksum, ``manifest.json``
    against the checksummed copy in ``arrays/``, and ``method/`` against the SHA-256 of its files
    recorded there (so a method folder edited, damaged or copied from another zoo is refused)."""
    from fennec_jax.core.ridge import RidgeMap

    manifest_path = os.path.join(path, "manifest.json")
    if not os.path.isfile(manifest_path):
        raise ZooError(f"{path}: not a zoo folder (no manifest.json); make one with ./run.sh fit_zoo")
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as err:
        raise ZooError(f"{manifest_path}: unreadable ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ZooError(f"{path}: not a {FORMAT} zoo (format {found!r}); refit it with ./run.sh fit_zoo")
    if manifest.get("fennec_jax_version") != fennec_jax.__version__:
        raise ZooError(f"{path}: fitted with fennec_jax {manifest.get('fennec_jax_version')}, this is "
                       f"{fennec_jax.__version__}; refit it with ./run.sh fit_zoo")
    meta, arrays = restore_arrays(os.path.join(path, "arrays"), FORMAT, "zoo")
    stored = {key: value for key, value in meta.items() if key not in ("package_version", "arrays", "checksum")}
    if json.dumps(stored, sort_keys=True) != json.dumps(manifest, sort_keys=True):
        raise ZooError(f"{manifest_path}: differs from the zoo's checksummed metadata in arrays/ (edited or "
                       f"damaged); refit the zoo with ./run.sh fit_zoo, or restore the folder from a copy")
    if folder_digest(os.path.join(path, "method")) != meta.get("method_digest"):
        raise ZooError(f"{os.path.join(path, 'method')}: its files differ from those the zoo was saved with "
                       f"(edited, damaged or copied from another zoo); refit the zoo with ./run.sh fit_zoo")
    method = method_from_spec(meta["method"])
    state = method.restore(os.path.join(path, "method"))
    mask = arrays["mask"].astype(bool)
    task_side = {"proxy": arrays["proxies"]} if "proxies" in arrays else {}
    records = Records(tuple(meta["models"]), tuple(meta["tasks"]), np.where(mask, arrays["scores"], np.nan), mask,
                      mask.astype(int), task_side=task_side)
    cal = meta["calibration"]
    scale_map = (RidgeMap(arrays["scale_weights"], arrays["scale_bias"], arrays["scale_l2"])
                 if cal["scale_map"] else None)
    calibration = Calibration(cal["slope"], scale_map, tuple(cal["default_scale"]), arrays["errors"], arrays["groups"],
                              tuple(cal["bounds"]), tuple(cal["held_out"]), arrays["probe_errors"],
                              arrays["probe_groups"])
    blend = meta.get("rerank_blend")
    if blend is not None:
        blend = BlendValidation(blend["estimator"], tuple(blend["tasks"]), tuple(blend["grid"]), arrays["blend_taus"])
    return Zoo(records, meta["method"], method, state, calibration, meta["proxy"], meta["proxy_width"],
               meta["max_examples"], arrays.get("held_out_scores"), blend)


# ----------------------------------------------------------------------------- fitting


def fit_zoo(records: Records, *, method: str = "fennec", task_data: Mapping[str, TaskData] | None = None,
            proxy: str | None = None, encoder=None, task_proxies: np.ndarray | None = None, max_examples: int = 64,
            calibration_tasks: int = CALIBRATION_TASKS, seed: int = 0,
            log: Callable[[str], None] = lambda msg: None) -> Zoo:
    """Fits a zoo on all ``records``.

    Args:
      records: the history (every task; cells in the user's units, higher = better).
      method: a registry spec of the ranking method (default ``'fennec'``).
      task_data: ``{task: TaskData}`` for every history task, embedded by the proxy; None: no proxy.
      proxy: the proxy spec (:func:`load_proxy`; default ``'mobilenet_v2'`` when task data is given).
      encoder: an already loaded proxy encoder for ``proxy`` (skips loading it again).
      task_proxies: ``[T, 3P + 3]`` embeddings of the history tasks computed before (instead
        of ``task_data``; ``proxy`` must name their encoder).
      max_examples: examples per task embedded (new tasks are read the same way).
      calibration_tasks: at most this many history tasks are held out, one at a time, to
        calibrate predictions and intervals (each costs one fit of the method).
    """
    ranker = method_from_spec(method)
    if task_data is not None and task_proxies is not None:
        raise ValueError("give task_data or task_proxies, not both")
    proxy_id, width = None, 0
    if task_data is not None or task_proxies is not None:
        spec = proxy or "mobilenet_v2"
        if task_data is not None:
            missing = [t for t in records.tasks if t not in task_data]
            if missing:
                raise ZooError(f"--task_data: no data for task(s) {', '.join(missing[:5])}; give one subfolder or "
                               f".npz per records task (or leave --task_data out)")
            if encoder is None and not all(task_data[t].features is not None for t in records.tasks):
                encoder, proxy_id = load_proxy(spec)
            rows = []
            for i, t in enumerate(records.tasks):
                log(f"embedding task {i + 1}/{records.num_tasks}: {t}")
                rows.append(embed_task(task_data[t], encoder))
            task_proxies = np.stack(rows)
        if proxy_id is None:
            proxy_id = spec if spec == "mobilenet_v2" else load_proxy(spec)[1]
        task_proxies = np.asarray(task_proxies, np.float64)
        if task_proxies.ndim != 2 or task_proxies.shape[0] != records.num_tasks:
            raise ValueError(f"task_proxies: expected [T={records.num_tasks}, 3P + 3], got {task_proxies.shape}")
        width = (task_proxies.shape[1] - 3) // 3
        records = dataclasses.replace(records, task_side={**records.task_side, "proxy": task_proxies})
    held_out = held_out_tasks(records, calibration_tasks)
    predictions, probed = held_out_predictions(
        ranker, records, held_out, seed=seed, log=log,
        evidence=lambda t: {"proxy": records.task_side["proxy"][t] if width else None,
                            "metadata": records.task_metadata(t)})
    log(f"fitting {method} on {records.num_models} models x {records.num_tasks} tasks")
    state = ranker.fit(records, seed=seed)
    calibration = fit_calibration(records, records.task_side.get("proxy"), held_out, predictions, probed)
    return Zoo(records, method, ranker, state, calibration, proxy_id, width, max_examples,
               predictions if held_out else None)


def read_task_folder(folder: str, tasks: Sequence[str], max_examples: int = 64,
                     log: Callable[[str], None] = lambda msg: None) -> dict[str, TaskData]:
    """``{task: TaskData}`` from ``folder/TASK`` (an image folder) or ``folder/TASK.npz`` for
    each of ``tasks``; a ZooError names the tasks without data."""
    if not os.path.isdir(folder):
        raise ZooError(f"--task_data={folder}: no such folder (expected one subfolder or .npz per task)")
    found, missing = {}, []
    for task in tasks:
        for candidate in (os.path.join(folder, task), os.path.join(folder, task + ".npz")):
            if os.path.exists(candidate):
                log(f"reading task data {task}")
                found[task] = read_task(candidate, max_examples)
                break
        else:
            missing.append(task)
    if missing:
        raise ZooError(f"--task_data={folder}: no subfolder or .npz for task(s) {', '.join(missing[:5])}"
                       + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    return found

