"""fennec_jax: batch ranking of pre-trained models for transfer, in JAX.

The package is laid out by concept (each subpackage's docstring says more):

- ``core``: the data model (:class:`Records`, :class:`Benchmark`, :class:`TaskEvidence`), the
  one :class:`~fennec_jax.core.registry.Registry` type, ridge regression, encodings,
  checkpoints, atomic output, safe unpickling.
- ``benchmarks``: bundled real benchmarks by name, users' records as benchmarks, the builder
  of benchmarks from real training runs.
- ``methods``: the one method protocol (fit / score / score_batch / save / restore) and every
  method: baselines, ``fennec`` (transfer space), ``spider`` (Model Spider), the forward-pass
  estimators as methods, cold-start predictors from architecture graphs.
- ``estimators``: forward-pass transferability estimators (LogME, LEEP, ...), batched over models.
- ``archs``: architecture graphs, importers (Flax, ONNX, JSON lines, NAS-Bench-Graph), zoo
  definitions, graph features, the archi2vec encoder.
- ``encoders``: proxy models, task embeddings, feature extraction, pretrained weights.
- ``eval``: metrics, the one evaluation loop with its splits, reports.
- ``ranking``: the batch engine (jit / vmap / shard_map), the resumable rank job, ranking tables.
- ``zoo``: a user's zoo fitted once and ranked for any new task's data (``fit_zoo``,
  ``load_zoo``, ``Zoo.rank``), the new task's data readers, the default zoo.

Importing the package is cheap: the names below load their module on first use.
"""

import importlib

__version__ = "0.2.0"

_EXPORTS = {
    "Records": "fennec_jax.core.records",
    "Benchmark": "fennec_jax.core.records",
    "RecordsError": "fennec_jax.core.records",
    "load_records": "fennec_jax.core.records",
    "load_metadata": "fennec_jax.core.records",
    "attach_metadata": "fennec_jax.core.records",
    "records_from_matrix": "fennec_jax.core.records",
    "TaskEvidence": "fennec_jax.core.evidence",
    "Registry": "fennec_jax.core.registry",
    "load_benchmark": "fennec_jax.benchmarks.bundled",
    "benchmark_names": "fennec_jax.benchmarks.bundled",
    "as_benchmark": "fennec_jax.benchmarks.bundled",
    "get_method": "fennec_jax.methods.base",
    "method_names": "fennec_jax.methods.base",
    "register": "fennec_jax.methods.base",
    "evaluate": "fennec_jax.eval.protocol",
    "TasksOut": "fennec_jax.eval.protocol",
    "ModelsOut": "fennec_jax.eval.protocol",
    "ArchitecturesOut": "fennec_jax.eval.protocol",
    "rank_tasks": "fennec_jax.ranking.rank",
    "RankJob": "fennec_jax.ranking.rank_job",
    "run_rank_job": "fennec_jax.ranking.rank_job",
    "RankingTable": "fennec_jax.ranking.table",
    "Zoo": "fennec_jax.zoo.zoo",
    "fit_zoo": "fennec_jax.zoo.zoo",
    "load_zoo": "fennec_jax.zoo.zoo",
    "read_task": "fennec_jax.zoo.task_data",
    "default_zoo": "fennec_jax.zoo.default",
}
_SUBMODULES = {"metrics": "fennec_jax.eval.metrics", "engine": "fennec_jax.ranking.engine",
               "core": "fennec_jax.core", "benchmarks": "fennec_jax.benchmarks", "methods": "fennec_jax.methods",
               "estimators": "fennec_jax.estimators", "archs": "fennec_jax.archs", "encoders": "fennec_jax.encoders",
               "eval": "fennec_jax.eval", "ranking": "fennec_jax.ranking",
               "zoo": "fennec_jax.zoo"}

__all__ = sorted([*_EXPORTS, *_SUBMODULES])


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(_SUBMODULES[name])
    else:
        raise AttributeError(f"module 'fennec_jax' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return __all__
