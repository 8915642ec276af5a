"""Benchmarks: bundled real data by name (``bundled``: :func:`load_benchmark`), a user's
records as a benchmark (:func:`as_benchmark`), and ``builder``, which makes a benchmark from
real training runs on data that ships in packages."""

from fennec_jax.benchmarks.bundled import BENCHMARKS, as_benchmark, benchmark_names, load_benchmark

__all__ = ["BENCHMARKS", "as_benchmark", "benchmark_names", "load_benchmark"]
