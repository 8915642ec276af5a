"""Ranking methods: the one protocol (``base``) and every method, registered by name.

``baselines`` (random, popularity, knn_task, family_popularity), ``fennec`` (the transfer
space), ``spider`` (Model Spider), ``estimator_methods`` (LogME, LEEP, ... as methods),
``cold_start`` (models placed by their architecture graphs), ``auto`` (the method chosen by
validation inside the history). Look methods up with
:func:`get_method` / :func:`method_names`; modules load on first look-up.
"""

from fennec_jax.methods.base import (METHODS, MethodBase, RankingMethod, VectorRankingMethod, get_method,
                                     method_from_spec, method_names, register)

__all__ = ["METHODS", "MethodBase", "RankingMethod", "VectorRankingMethod", "get_method", "method_from_spec",
           "method_names", "register"]
