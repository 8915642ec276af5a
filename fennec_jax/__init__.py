"""fennec_jax: batch ranking of pre-trained models for transfer, in JAX.

Public API (details in each module's docstring):

- data: :class:`Records`, :class:`Benchmark`, :func:`load_records`, :func:`load_metadata`,
  :func:`attach_metadata`, :func:`records_from_matrix`, :class:`RecordsError`.
- bundled benchmarks: :func:`load_benchmark`, :func:`benchmark_names`, :func:`as_benchmark`.
- methods: :class:`TaskEvidence`, :func:`get_method`, :func:`method_names`, :func:`register`.
- evaluation: :func:`leave_one_task_out`; ranking: :func:`rank_tasks`, :func:`run_rank_job`.
- modules: ``metrics``, ``baselines``, ``spider`` (Model Spider, method ``spider``).
"""

__version__ = "0.1.0"

from fennec_jax import baselines, metrics, spider
from fennec_jax.benchmarks import as_benchmark, benchmark_names, load_benchmark
from fennec_jax.data import (
    Benchmark,
    Records,
    RecordsError,
    attach_metadata,
    load_metadata,
    load_records,
    records_from_matrix,
)
from fennec_jax.evaluation import leave_one_task_out
from fennec_jax.methods import TaskEvidence, get_method, method_names, register
from fennec_jax.rank_job import RankJob, run_rank_job
from fennec_jax.ranking import rank_tasks

__all__ = [
    "Benchmark",
    "Records",
    "RecordsError",
    "TaskEvidence",
    "as_benchmark",
    "attach_metadata",
    "baselines",
    "benchmark_names",
    "get_method",
    "leave_one_task_out",
    "load_benchmark",
    "load_metadata",
    "load_records",
    "method_names",
    "metrics",
    "RankJob",
    "rank_tasks",
    "run_rank_job",
    "records_from_matrix",
    "register",
    "spider",
]
