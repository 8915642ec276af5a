"""What `auto` chooses in each leave-one-task-out fold of bundled benchmarks.

  ./run.sh auto_choices --benchmark=parc_controlled,model_recycling --history=targets

For each target task of each benchmark, `auto` (its default candidates, or --method's
configuration) is fitted on the history without that task, exactly as `evaluate` fits it, and
its choice per validated k is recorded. Prints, per benchmark and k, how many folds chose each
candidate, and writes OUT/choices.json ({benchmark: {task: {k: label}}}).
"""

import collections
import os

from absl import flags
from tqdm import tqdm

from experiments import cli
from fennec_jax.benchmarks.bundled import load_benchmark

_BENCHMARK = flags.DEFINE_list("benchmark", None, "Bundled benchmark name(s), comma separated.", required=True)
_HISTORY = flags.DEFINE_enum("history", "targets", ["targets", "all"], "History of each fold, as evaluate's.")
_METHOD = flags.DEFINE_string("method", "auto", "An auto spec, e.g. auto:candidates=popularity/knn_task.")
_OUT = flags.DEFINE_string("out", "runs/auto_choices", "Output folder.")


def main():
    from fennec_jax.core import atomic_io
    from fennec_jax.methods.auto import Auto

    (method,) = cli.methods_from_flags([_METHOD.value], None, flag="method").values()
    if not isinstance(method, Auto):
        raise cli.InputError(f"--method={_METHOD.value}: expected an auto spec (auto or auto:candidates=...)")
    choices = {}
    for name in _BENCHMARK.value:
        bench = cli.by_name(load_benchmark, name, "benchmark")
        pool = bench.history_tasks(_HISTORY.value)
        choices[name] = {}
        for t in tqdm(bench.target_indices, desc=name, unit="fold"):
            state = method.fit(bench.records.select_tasks(pool[pool != t]), seed=0)
            choices[name][bench.records.tasks[t]] = {str(k): label for k, label in zip(state.probes, state.chosen)}
        counts = collections.defaultdict(collections.Counter)
        for by_k in choices[name].values():
            for k, label in by_k.items():
                counts[k][label] += 1
        for k in sorted(counts, key=int):
            print(f"{name}, history {_HISTORY.value}, k = {k}: "
                  + ", ".join(f"{label} {n}" for label, n in counts[k].most_common()))
    atomic_io.write_json(os.path.join(_OUT.value, "choices.json"), choices)
    print(f"wrote {os.path.join(_OUT.value, 'choices.json')}")


if __name__ == "__main__":
    cli.run(main)
