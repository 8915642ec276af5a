"""Forward-pass transferability estimators: score pre-trained models on a target task from
their features (and, for some, their source-head probabilities), higher = better.

One model: ``score(name, features[N, D], labels[N], probs=None)``; many models on one task
in vmapped calls: ``score_models(name, features_list, labels, probs_list=None) -> scores[M]``.
``ESTIMATORS`` lists each estimator's published variant, inputs and whether it is
normalised across the candidate set. Every estimator runs in float64 inside a local
``jax.enable_x64`` scope and checks its inputs (ValueError naming the argument).

``fennec_jax.estimators.reference`` (not imported here: it loads SciPy and scikit-learn)
holds plain NumPy float64 references of every estimator, which the tests check these
against and ``experiments/bench_estimators.py`` times them against.
"""

from fennec_jax.estimators.etran import etran, etran_components
from fennec_jax.estimators.gbc import gbc, gbc_diagonal
from fennec_jax.estimators.hscore import hscore, hscore_reg
from fennec_jax.estimators.leep import leep, nce, nleep
from fennec_jax.estimators.logme import logme
from fennec_jax.estimators.ncti import ncti, ncti_components
from fennec_jax.estimators.pactran import pactran_dir, pactran_gauss
from fennec_jax.estimators.parc import parc
from fennec_jax.estimators.registry import (ESTIMATORS, Estimator, get, method_names,
                                            needs_probs, score, score_models)
from fennec_jax.estimators.sfda import sfda
from fennec_jax.estimators.transrate import transrate

__all__ = [
    "ESTIMATORS", "Estimator", "etran", "etran_components", "gbc", "gbc_diagonal", "get",
    "hscore", "hscore_reg", "leep", "logme", "method_names", "nce", "ncti",
    "ncti_components", "needs_probs", "nleep", "pactran_dir", "pactran_gauss", "parc",
    "score", "score_models", "sfda", "transrate",
]
