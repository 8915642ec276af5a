"""Benchmark: `suggest` (fennec_jax.methods.suggest) over a zoo the size of NAS-Bench-Graph.

The issue's figure: a suggestion over 26,206 models answers in under a second on a CPU. A
method with a synthetic linear posterior (``scores[M] = features[M, D] @ v + offsets[M]``, two
probes already measured) stands in for a fitted fennec space, so the time is the policy's own,
not a fit's. Each policy is timed warm (after one call), median of ``--repeats`` calls, against
a baseline measured in the same run: ranking the models by their posterior mean (one argsort),
what answering without a suggestion costs.

  python -m experiments.bench_suggest --models=26206 --dim=7 --budget=3 --out=bench/suggest.json
"""

import dataclasses
import statistics
import time

import numpy as np
from absl import app, flags

from experiments.machine import device_description
from fennec_jax.core import atomic_io
from fennec_jax.core.evidence import TaskEvidence
from fennec_jax.methods import suggest as suggest_lib

_MODELS = flags.DEFINE_integer("models", 26206, "Models in the zoo.", lower_bound=10)
_DIM = flags.DEFINE_integer("dim", 7, "Dims of the task vector.", lower_bound=1)
_BUDGET = flags.DEFINE_integer("budget", 3, "Models to suggest.", lower_bound=1)
_POLICIES = flags.DEFINE_list("policies", ["random", "dopt", "thompson", "thompson:batch=true"], "Policy specs.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per policy (median reported).", lower_bound=1)
_OUT = flags.DEFINE_string("out", None, "JSON file for the results (optional).")


@dataclasses.dataclass(frozen=True)
class _SyntheticLinear:
    """A method whose state is ``(features[M, D], offsets[M], mean[D])`` and whose posterior is
    the ridge of the probes (as fennec's, :meth:`fennec_jax.methods.fennec.Fennec.task_posterior`)."""

    l2: float = 1.0
    noise: float = 0.1

    def score(self, state, evidence):
        features, offsets, mean = state
        return features @ mean + offsets

    def task_posterior(self, state, evidence):
        features, _, _ = state
        precision = suggest_lib.probe_precision(features, evidence.probe_models, self.l2)
        return suggest_lib.LinearPosterior(self.score(state, evidence), features, evidence.probe_models,
                                           precision, self.noise)


def _median_seconds(call, repeats):
    call()  # warm
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    state = (rng.normal(size=(_MODELS.value, _DIM.value)), rng.normal(size=_MODELS.value), rng.normal(size=_DIM.value))
    method = _SyntheticLinear()
    probes = rng.choice(_MODELS.value, 2, replace=False)
    evidence = TaskEvidence(probes, rng.normal(size=2))
    baseline = _median_seconds(lambda: np.argsort(-method.score(state, evidence)), _REPEATS.value)
    print(f"device: {device_description()}; {_MODELS.value} models, D = {_DIM.value}, budget {_BUDGET.value}")
    print(f"baseline (rank by posterior mean): {baseline * 1e3:.2f} ms")
    results = {"device": device_description(), "models": _MODELS.value, "dim": _DIM.value, "budget": _BUDGET.value,
               "repeats": _REPEATS.value, "baseline_rank_seconds": baseline, "policies": {}}
    for spec in _POLICIES.value:
        seconds = _median_seconds(lambda: suggest_lib.suggest(method, state, evidence, _BUDGET.value, spec),
                                  _REPEATS.value)
        results["policies"][spec] = {"seconds": seconds, "ratio_to_baseline": seconds / baseline}
        print(f"{spec}: {seconds:.3f} s ({seconds / baseline:.0f}x the baseline)")
    if _OUT.value:
        atomic_io.write_json(_OUT.value, results)
        print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
