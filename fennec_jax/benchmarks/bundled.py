"""Bundled real benchmarks, loaded by name.

Every loader returns a :class:`fennec_jax.core.records.Benchmark`. Origins, licenses and what each
loader does to its file are in ``fennec_jax/bundled/PROVENANCE.md``.

==========================  ============  =======  ============================================
name                        models        targets  history-only tasks
==========================  ============  =======  ============================================
parc_controlled             32            6        voc2007
parc_all                    71            6        voc2007
spider_single               10            8        dSprites, UTKFace, 96 rank-only tasks c0..c95
spider_multi                42            7        96 rank-only tasks t127..t222
timm_imagenet               1,267         8        --
model_recycling             2,175         36       --
nas_bench_graph             26,206        8        --
nas_bench_graph_proteins    (see data)    1        --
==========================  ============  =======  ============================================
"""

from __future__ import annotations

import csv
import functools
import importlib.resources
from collections.abc import Callable, Sequence

import numpy as np

from fennec_jax.core.records import Benchmark, Records, records_from_matrix
from fennec_jax.core.registry import Registry

__all__ = ["BENCHMARKS", "load_benchmark", "benchmark_names", "as_benchmark", "attach_task_data"]

PARC_TARGETS = ("cifar10", "oxford_pets", "cub200", "caltech101", "stanford_dogs", "nabird")
SPIDER_SINGLE_TARGETS = ("Aircraft", "Caltech101", "CIFAR10", "CIFAR100", "Cars", "DTD", "Pet", "SUN397")


def _bundled_rows(relpath: str) -> list[list[str]]:
    ref = importlib.resources.files("fennec_jax").joinpath("bundled", relpath)
    with ref.open("r", encoding="utf-8", newline="") as f:
        return [row for row in csv.reader(f) if any(cell.strip() for cell in row)]  # skip blank lines


def _wide_table(relpath: str, columns: Sequence[str] | None = None, *,
                skip: Sequence[str] = ()) -> tuple[list[str], list[str], np.ndarray]:
    """``(models, tasks, scores[T, M])`` from a wide CSV (first column = model, blank = NaN);
    the tasks are ``columns``, or every other column except those named in ``skip``."""
    rows = _bundled_rows(relpath)
    header, body = rows[0], rows[1:]
    tasks = [h for h in header[1:] if h not in skip] if columns is None else list(columns)
    cols = [header.index(t) for t in tasks]
    models = [r[0] for r in body]
    scores = np.array([[float(r[c]) if r[c] != "" else np.nan for c in cols] for r in body]).T
    return models, tasks, scores


def _benchmark(name, records, targets, eval_mask=None, task_kind=None, description=""):
    return Benchmark(
        name=name,
        records=records,
        targets=tuple(targets),
        eval_mask=records.mask.copy() if eval_mask is None else eval_mask,
        task_kind=np.array(["score"] * records.num_tasks if task_kind is None else task_kind, dtype=object),
        description=description,
    )


def _parc(name: str, relpath: str) -> Benchmark:
    rows = _bundled_rows(relpath)
    header = rows[0]
    ia, isrc, itgt, iy = (header.index(c) for c in ("Architecture", "Source Dataset", "Target Dataset", "Oracle"))
    models: dict[str, int] = {}
    tasks: dict[str, int] = {}
    cells = []
    dropped = 0
    arch_of, source_of = {}, {}
    for r in rows[1:]:
        model = f"{r[ia]}/{r[isrc]}"
        m = models.setdefault(model, len(models))
        arch_of[model], source_of[model] = r[ia], r[isrc]
        t = tasks.setdefault(r[itgt], len(tasks))
        y = float(r[iy])
        if y <= 0:  # -1 marks a run that is missing in PARC's oracles
            dropped += 1
            continue
        cells.append((t, m, y))
    scores = np.full((len(tasks), len(models)), np.nan)
    for t, m, y in cells:
        scores[t, m] = y
    names = list(models)
    records = records_from_matrix(
        names,
        list(tasks),
        scores,
        model_meta={
            "family": np.array([arch_of[n] for n in names], dtype=object),
            "source": np.array([source_of[n] for n in names], dtype=object),
        },
        dropped={"oracle <= 0 (missing run)": dropped} if dropped else {},
    )
    # Source == target cells are absent from PARC's files; exclude them explicitly anyway.
    same = np.array([[source_of[n] == t for n in names] for t in records.tasks])
    return _benchmark(
        name,
        records,
        PARC_TARGETS,
        eval_mask=records.mask & ~same,
        description=f"PARC oracles ({relpath}): fine-tuned accuracy %, models = arch/source",
    )


def _spider_single() -> Benchmark:
    models, tasks, acc = _wide_table("model_spider/single_source_finetune_acc.csv")
    rank_header = _bundled_rows("model_spider/single_source_ftrank_all_tasks.csv")[0]
    rank_tasks = [c for c in rank_header[1:] if c.startswith("c") and c[1:].isdigit()]
    rank_models, _, ranks = _wide_table("model_spider/single_source_ftrank_all_tasks.csv", rank_tasks)
    if rank_models != models:
        raise ValueError("spider_single: model order differs between the accuracy and rank files")
    records = records_from_matrix(
        models,
        tasks + rank_tasks,
        np.concatenate([acc, ranks]),
        model_meta={"family": np.array(models, dtype=object), "source": np.array(["imagenet"] * len(models), dtype=object)},
    )
    kind = ["score"] * len(tasks) + ["rank"] * len(rank_tasks)
    return _benchmark(
        "spider_single",
        records,
        SPIDER_SINGLE_TARGETS,
        task_kind=kind,
        description="Model Spider single-source zoo: fine-tuned accuracy %; dSprites/UTKFace "
        "(negative error) and 96 rank-only training tasks are history",
    )


def _spider_multi() -> Benchmark:
    models, tasks, acc = _wide_table("model_spider/multi_source_finetune_acc_42models.csv")
    rank_models, rank_tasks, ranks = _wide_table("model_spider/multi_source_ftrank_t127_t222_42models.csv")
    if rank_models != models:
        raise ValueError("spider_multi: model order differs between the accuracy and rank files")
    family, source = zip(*(m.removeprefix("FTD_").rsplit("_", 1) for m in models))
    records = records_from_matrix(
        models,
        tasks + rank_tasks,
        np.concatenate([acc, ranks]),
        model_meta={"family": np.array(family, dtype=object), "source": np.array(source, dtype=object)},
    )
    return _benchmark(
        "spider_multi",
        records,
        tasks,
        task_kind=["score"] * len(tasks) + ["rank"] * len(rank_tasks),
        description="Model Spider multi-source 42-model zoo: fine-tuned accuracy %; "
        "96 rank-only training tasks are history",
    )


def _timm() -> Benchmark:
    models, tasks, top1 = _wide_table("timm/timm_top1_matrix.csv")
    meta_rows = _bundled_rows("timm/timm_model_metadata.csv")
    header = meta_rows[0]
    by_model = {r[0]: r for r in meta_rows[1:]}

    def column(name, numeric=True):
        i = header.index(name)
        values = [by_model[m][i] if m in by_model else "" for m in models]
        if numeric:
            return np.array([float(v) if v else np.nan for v in values])
        return np.array(values, dtype=object)

    records = records_from_matrix(
        models,
        tasks,
        top1,
        model_meta={
            "family": column("family", numeric=False),
            "params_m": column("param_count"),
            "img_size": column("img_size"),
            "gmacs": column("infer_gmacs"),
            "throughput": column("infer_samples_per_sec"),
        },
        dropped={"empty cell (not evaluated by timm)": int(np.isnan(top1).sum())},
    )
    return _benchmark("timm_imagenet", records, tasks, description="timm results: top-1 % on 8 ImageNet test sets")


def _model_recycling() -> Benchmark:
    """2,175 Hugging Face checkpoints x 36 tasks (fine-tuned accuracy %, about half observed).

    Model metadata from ``models.csv`` (same model order as the score table, checked):
    ``family`` (its ``base_model``: roberta-base, bert-base-uncased or bert-base-cased; named
    ``family`` as in the other benchmarks, which the family baselines and fennec read; not
    carried twice, since the metadata encoders would count a duplicate twice), ``model_type``,
    ``params`` and ``layers`` (numeric), ``mnli_linear_probe`` (accuracy % of a linear probe on
    MNLI over the frozen checkpoint; NaN for the three base models).
    """
    models, tasks, scores = _wide_table("model_recycling/finetune_acc.csv", skip=("base_model",))
    meta_rows = _bundled_rows("model_recycling/models.csv")
    header = meta_rows[0]
    if [r[0] for r in meta_rows[1:]] != models:
        raise ValueError("model_recycling: model order differs between finetune_acc.csv and models.csv")
    columns = {name: [r[header.index(name)] for r in meta_rows[1:]] for name in header[1:]}
    numeric = {name: np.array([float(v) if v else np.nan for v in columns[name]])
               for name in ("params", "layers", "mnli_linear_probe")}
    records = records_from_matrix(
        models,
        tasks,
        scores,
        model_meta={"family": np.array(columns["base_model"], dtype=object),
                    "model_type": np.array(columns["model_type"], dtype=object), **numeric},
        dropped={"empty cell (not fine-tuned in the source)": int(np.isnan(scores).sum())},
    )
    return _benchmark(
        "model_recycling",
        records,
        tasks,
        description="IBM model-recycling: accuracy % (stsb: Spearman x 100) of 2,175 roberta-base / "
        "bert-base checkpoints fine-tuned on 36 tasks",
    )


def _nas_bench_graph(datasets: Sequence[str] | None, name: str) -> Benchmark:
    from fennec_jax.archs import nas_bench_graph

    table = nas_bench_graph.load_table(datasets)
    models = [str(h) for h in table.arch_hashes]
    scores = np.asarray(table.scores, dtype=np.float64).T
    # params (millions) and latency (s) are per dataset (input widths differ): keep the mean.
    meta = {key: np.nanmean(getattr(table, key), axis=1) for key in ("params", "latency")}
    missing = int(np.isnan(scores).sum())
    records = records_from_matrix(
        models,
        list(table.datasets),
        scores,
        model_meta=meta,
        dropped={"missing entry": missing} if missing else {},
    )
    return _benchmark(
        name, records, records.tasks, description="NAS-Bench-Graph (PyPI nas-bench-graph): test accuracy"
    )


BENCHMARKS: Registry[Callable[[], Benchmark]] = Registry("benchmark")
BENCHMARKS.register("parc_controlled", lambda: _parc("parc_controlled", "parc/controlled.csv"))
BENCHMARKS.register("parc_all", lambda: _parc("parc_all", "parc/all.csv"))
BENCHMARKS.register("spider_single", _spider_single)
BENCHMARKS.register("spider_multi", _spider_multi)
BENCHMARKS.register("timm_imagenet", _timm)
BENCHMARKS.register("model_recycling", _model_recycling)
BENCHMARKS.register("nas_bench_graph", lambda: _nas_bench_graph(None, "nas_bench_graph"))
BENCHMARKS.register("nas_bench_graph_proteins", lambda: _nas_bench_graph(["proteins"], "nas_bench_graph_proteins"))



def benchmark_names() -> tuple[str, ...]:
    return BENCHMARKS.names()


@functools.lru_cache(maxsize=None)
def load_benchmark(name: str) -> Benchmark:
    """The bundled benchmark ``name`` (one of :func:`benchmark_names`), cached per process."""
    return BENCHMARKS.get(name)()


def as_benchmark(records: Records, name: str = "records", targets: Sequence[str] | None = None) -> Benchmark:
    """A user's records as a benchmark whose targets are all tasks (or ``targets``)."""
    return _benchmark(name, records, records.tasks if targets is None else targets)


def attach_task_data(benchmark: Benchmark, *, proxies: str | None = None, features_dir: str | None = None) -> Benchmark:
    """``benchmark`` with what a user may know of its tasks' data attached:

    * ``proxies``: an ``.npz`` with ``tasks[T]`` and ``embeddings[T, P]`` (the builder's
      ``proxy.npz``): each task's proxy embedding, as ``records.task_side["proxy"]``;
    * ``features_dir``: a folder ``TASK/MODEL.npz`` of every model's forward-pass features on
      each task's examples (the builder's ``features/``), loaded on demand as
      ``benchmark.features(task)`` for the forward-pass estimators.

    ValueError naming the file and the task for a task without a proxy row or a folder.
    """
    import dataclasses
    import os

    records = benchmark.records
    if proxies is not None:
        with np.load(proxies, allow_pickle=False) as data:
            if "tasks" not in data or "embeddings" not in data:
                raise ValueError(f"{proxies}: expected arrays 'tasks' and 'embeddings'")
            names, embeddings = [str(n) for n in data["tasks"]], np.asarray(data["embeddings"], np.float64)
        missing = [t for t in records.tasks if t not in names]
        if missing:
            raise ValueError(f"{proxies}: no proxy embedding for task(s) {missing[:5]}")
        rows = embeddings[[names.index(t) for t in records.tasks]]
        records = dataclasses.replace(records, task_side={**records.task_side, "proxy": rows})
    features = benchmark.features
    if features_dir is not None:
        missing = [t for t in records.tasks if not os.path.isdir(os.path.join(features_dir, t))]
        if missing:
            raise ValueError(f"{features_dir}: no feature folder for task(s) {missing[:5]}")
        features = functools.partial(_feature_folder, features_dir, records.models)
    return dataclasses.replace(benchmark, records=records, features=features)


def _feature_folder(features_dir: str, models: Sequence[str], task: str) -> dict:
    """``Benchmark.features`` from ``features_dir/TASK/MODEL.npz``, models in ``models`` order."""
    import os

    from fennec_jax.encoders.features import load_feature_dir

    _, feats, labels, probs = load_feature_dir(os.path.join(features_dir, task), models)
    return {"model_features": feats, "labels": labels, "model_probs": probs}
