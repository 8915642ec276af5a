"""The data model and the small shared pieces every other part builds on.

``records`` (:class:`Records` of models x tasks, :class:`Benchmark`, loading tables),
``evidence`` (:class:`TaskEvidence`), ``registry`` (the one :class:`Registry` type), ``ridge``
(ridge regression and affine maps), ``encoding`` (metadata -> features), ``checkpoint``
(versioned, checksummed orbax folders), ``atomic_io`` (atomic file output), ``safe_pickle``
(a restricted unpickler). Import the modules themselves (``from fennec_jax.core.records import
Records``).
"""
