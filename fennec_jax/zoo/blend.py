"""The re-ranking blend weight, chosen by validation inside a zoo's own history.

``rank --rerank=R`` re-orders the zoo's best R unmeasured models by
``(1 - w) * z(predicted) + w * z(estimator)`` (:mod:`fennec_jax.zoo.rerank`). How much to
trust the forward-pass estimator against the zoo depends on the zoo, its proxy and the
estimator, so ``w`` is chosen where the answer is known without looking at any new task: on
the history tasks the zoo held out to calibrate itself (:mod:`fennec_jax.zoo.calibration`).
Each of them was ranked by a fit without it, from its proxy alone, exactly as a new task is;
its best ``depth`` models are run on its data and scored by the estimator, and for every
``R <= depth`` and every ``w`` of :data:`GRID` the re-ordered ranking is scored against the
task's measured results by weighted tau (:func:`fennec_jax.eval.metrics.weighted_tau`, all
the task's observed models).

:meth:`BlendValidation.choose` picks, for a given R, the ``w`` with the largest mean gain in
weighted tau over the zoo's own order (``w = 0``) across the held-out tasks; ties go to the
smaller ``w`` (less trust in the estimator when the history cannot tell). The rule is fixed
here, before any figure was seen; the grid's ends are the zoo alone (0) and the estimator alone
(1).
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["GRID", "DEPTH", "BlendValidation", "BlendChoice"]

GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
DEPTH = 10  # re-ranking depths 2 .. DEPTH are validated unless a deeper one is asked


@dataclasses.dataclass(frozen=True)
class BlendChoice:
    """The weight chosen for one re-ranking depth, with the validation figures behind it.

    Attributes:
      weight: the estimator's weight ``w`` in the blend.
      gain: mean over the held-out tasks of the weighted-tau change from re-ranking with it.
      se: that mean's standard error over tasks (``ddof=1``; NaN with one task).
      tasks: how many held-out history tasks it rests on.
    """

    weight: float
    gain: float
    se: float
    tasks: int

    def describe(self, depth: int) -> str:
        return (f"weight {self.weight:g} chosen on {self.tasks} held-out history tasks "
                f"(top {depth}: weighted tau {self.gain:+.3f} ± {self.se:.3f} over the zoo's order)")


@dataclasses.dataclass(frozen=True)
class BlendValidation:
    """Weighted taus of held-out history tasks re-ranked at each depth and weight.

    Attributes:
      estimator: the forward-pass estimator the figures are for (``'logme'``, ...).
      tasks: the held-out history tasks ``[H]``.
      grid: the weights tried ``[G]`` (:data:`GRID`); ``grid[0]`` is 0, the zoo's own order.
      taus: ``taus[D - 1, G, H]``: weighted tau of task h's ranking with its best
        ``R = 2 .. D`` models re-ordered at weight ``grid[g]`` (row ``R - 2``); D is the deepest
        re-ranking validated.
    """

    estimator: str
    tasks: tuple[str, ...]
    grid: tuple[float, ...]
    taus: np.ndarray

    def __post_init__(self):
        taus = np.asarray(self.taus, np.float64)
        if taus.ndim != 3 or taus.shape[1:] != (len(self.grid), len(self.tasks)) or self.grid[0] != 0.0:
            raise ValueError(f"BlendValidation: taus must be [depth - 1, {len(self.grid)}, {len(self.tasks)}] "
                             f"with grid[0] = 0, got {taus.shape} and grid {self.grid}")
        object.__setattr__(self, "taus", taus)

    @property
    def depth(self) -> int:
        """The deepest re-ranking validated."""
        return self.taus.shape[0] + 1

    def choose(self, depth: int) -> BlendChoice:
        """The weight for re-ranking the best ``depth`` models (module docstring: the rule)."""
        if not 2 <= depth <= self.depth:
            raise ValueError(f"depth: validated for 2 to {self.depth} models, got {depth}")
        from fennec_jax.eval.protocol import standard_error

        gains = self.taus[depth - 2] - self.taus[depth - 2, :1]  # [G, H] against the zoo's order
        means = gains.mean(axis=1)
        best = int(np.flatnonzero(means >= means.max() - 1e-12)[0])  # ties: the smallest weight
        return BlendChoice(float(self.grid[best]), float(means[best]), standard_error(gains[best]), gains.shape[1])

    def to_json(self) -> dict:
        """The manifest entry (the figures themselves go in the zoo's checksummed arrays)."""
        return {"estimator": self.estimator, "tasks": list(self.tasks), "grid": list(self.grid),
                "depth": self.depth}
