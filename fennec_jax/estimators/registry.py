"""Every estimator by name: what it reads, whether it is relative to the candidate set, and
one entry point for one model (:func:`score`) or many (:func:`score_models`)."""

import dataclasses
from typing import Callable

from fennec_jax.core.registry import Registry
from fennec_jax.estimators import _batch
from fennec_jax.estimators.etran import etran, etran_models
from fennec_jax.estimators.gbc import gbc, gbc_diagonal, gbc_diagonal_core, gbc_spherical_core
from fennec_jax.estimators.hscore import hscore, hscore_core, hscore_reg, hscore_reg_core
from fennec_jax.estimators.leep import leep, leep_core, nce, nce_core, nleep, nleep_models
from fennec_jax.estimators.logme import logme, logme_core
from fennec_jax.estimators.ncti import ncti, ncti_models
from fennec_jax.estimators.pactran import (pactran_dir, pactran_dir_core, pactran_gauss,
                                           pactran_gauss_core)
from fennec_jax.estimators.parc import parc, parc_models
from fennec_jax.estimators.sfda import sfda, sfda_core
from fennec_jax.estimators.transrate import transrate, transrate_models


@dataclasses.dataclass(frozen=True)
class Estimator:
    """One registered estimator.

    name: registry key.
    variant: the published variant implemented (details in ``function``'s docstring).
    inputs: what it reads: ("features", "labels") or ("probs", "labels").
    candidate_normalised: True when a model's score depends on the other candidates
      (min-max normalised components); one model alone then scores 0.
    function: ``function(features, labels[, probs], **options) -> float`` for one model.
    models: ``models(features_list, labels, probs_list, **options) -> scores[M]``.
    """

    name: str
    variant: str
    inputs: tuple
    candidate_normalised: bool
    function: Callable
    models: Callable

    @property
    def needs_probs(self):
        return "probs" in self.inputs


def _core_models(core, name, inputs):
    """``models`` for an estimator that is one vmappable core."""
    uses = tuple(i for i in inputs if i != "labels")

    def models(features_list, labels, probs_list=None, *, num_classes=None,
               batch_size=None):
        return _batch.run(core, name, features_list, labels, probs_list,
                          num_classes=num_classes, uses=uses, batch_size=batch_size)

    return models


_FEATURES = ("features", "labels")
_PROBS = ("probs", "labels")


def _entry(name, variant, inputs, function, models=None, core=None, normalised=False):
    return Estimator(name, variant, inputs, normalised, function,
                     models or _core_models(core, name, inputs))


ESTIMATORS: Registry[Estimator] = Registry("estimator")
for _estimator in [
    _entry("logme", "LogME fixed-point (You et al. 2021/2022), float64", _FEATURES,
           logme, core=logme_core),
    _entry("leep", "LEEP (Nguyen et al. 2020)", _PROBS, leep, core=leep_core),
    _entry("nce", "NCE with hard source labels (Tran et al. 2019)", _PROBS, nce,
           core=nce_core),
    _entry("hscore", "H-Score (Bao et al. 2019), float64", _FEATURES, hscore,
           core=hscore_core),
    _entry("hscore_reg", "Ledoit-Wolf shrinkage H-Score (Ibrahim et al. 2022)", _FEATURES,
           hscore_reg, core=hscore_reg_core),
    _entry("nleep", "N-LEEP: PCA 80%, GMM 5C, LEEP with log (Li et al. 2021)", _FEATURES,
           nleep, models=nleep_models),
    _entry("transrate", "TransRate, eps = 1e-4 (Huang et al. 2022)", _FEATURES,
           transrate, models=transrate_models),
    _entry("gbc", "GBC, spherical Gaussians (Pandy et al. 2022)", _FEATURES, gbc,
           core=gbc_spherical_core),
    _entry("gbc_diagonal", "GBC, diagonal Gaussians (Pandy et al. 2022)", _FEATURES,
           gbc_diagonal, core=gbc_diagonal_core),
    _entry("parc", "PARC without PCA (Bolya et al. 2021)", _FEATURES, parc,
           models=parc_models),
    _entry("sfda", "SFDA with ConfMix, no log (Shao et al. 2022)", _FEATURES, sfda,
           core=sfda_core),
    _entry("ncti", "NCTI: minmax(ncc) + minmax(seli) - minmax(vc) (Wang et al. 2023)",
           _FEATURES, ncti, models=ncti_models, normalised=True),
    _entry("etran", "ETran: 0.15 minmax(energy) + 0.85 minmax(lda) (Gholami et al. 2023)",
           _FEATURES, etran, models=etran_models, normalised=True),
    _entry("pactran_gauss", "-PACTran-Gaussian, lda_factor 1, s2 = 100/D (Ding et al. 2022)",
           _FEATURES, pactran_gauss, core=pactran_gauss_core),
    _entry("pactran_dir", "-PACTran-Dirichlet, alpha = 1 (Ding et al. 2022)", _PROBS,
           pactran_dir, core=pactran_dir_core),
]:
    ESTIMATORS.register(_estimator.name, _estimator)


def method_names():
    """Registered estimator names, in registry order."""
    return list(ESTIMATORS.names())


def get(name):
    """The :class:`Estimator` called ``name``; ValueError listing the names otherwise."""
    return ESTIMATORS.get(name)


def needs_probs(name):
    """Whether estimator ``name`` reads source-head probabilities."""
    return get(name).needs_probs


def score(name, features, labels, probs=None, **options):
    """Score of one model (higher = better) by estimator ``name``.

    ``features[N, D]``, ``labels[N]`` in ``[0, C)``, ``probs[N, Cs]`` (source-head softmax)
    for the estimators that need it. ``options`` go to the estimator (``num_classes`` for
    all; ``seed`` for nleep; ``pca_dims``, ``max_samples``, ``seed`` for parc). Estimators
    normalised across a candidate set return 0 for one model: use :func:`score_models`.
    """
    estimator = get(name)
    if estimator.needs_probs:
        if probs is None:
            raise ValueError(f"{name} needs source-head probabilities: pass probs[N, Cs]")
        return estimator.function(features, labels, probs, **options)
    return estimator.function(features, labels, **options)


def score_models(name, features_list, labels, probs_list=None, *, mesh=None, **options):
    """``scores[M]`` (NumPy float64) of many models on one task by estimator ``name``.

    ``features_list``: M arrays ``[N, D_m]`` (widths may differ; they are zero-padded and
    masked); ``labels[N]`` shared; ``probs_list``: M arrays ``[N, Cs_m]`` for estimators
    that need them. Models of similar width are scored in one vmapped call; candidate-set
    estimators (ncti, etran) are normalised over these M models. ``options`` as in
    :func:`score`, plus ``batch_size``: models mapped together per step (default: all at
    once on accelerators, one at a time in a compiled loop on CPU, where that is faster;
    a 3-D ``jax.Array`` of equally wide models is used without a copy). JAX arrays (a 3-D
    one, or a list of 2-D ones) are stacked on their devices, never copied to the host.

    ``mesh``: a `jax.sharding.Mesh` with a ``"models"`` axis
    (``fennec_jax.ranking.engine.make_mesh``): each of its devices scores its share of the
    models (every estimator but parc, which maps its own loop). Over several processes
    (``fennec_jax.ranking.distributed``) every process passes the same inputs, or JAX
    arrays on the global mesh, and gets all M scores.
    """
    with _batch.sharded(mesh):
        return get(name).models(features_list, labels, probs_list, **options)
