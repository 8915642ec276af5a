"""Cold-start models in the transfer space: a model's records hidden, its architecture graph known.

  ./run.sh cold_start --benchmark=spider_multi,parc_all --protocol=leave_models_out --folds=7 \
      --pretrain_epochs=100 --out=runs/cold_start

Each model's graph is traced from its family's Flax definition (`archs.architectures.graph`,
family = the records' model metadata ``family``); models whose family has no definition are
left out (coverage is printed). An archi2vec encoder is pre-trained self-supervised on the
graphs of every defined architecture (``--ssl``), then the models-out split of
fennec_jax.eval.protocol (``leave_models_out``: random folds of models; ``leave_family_out``:
one fold per family) hides every cell of a fold's models and each method predicts them:

* family_popularity: mean z-score of the visible models of the model's family (a hidden
  family: the visible family with the nearest mean graph embedding);
* fennec: the transfer space with model metadata (family, source dataset);
* fennec_arch: the transfer space with the graph embedding and the source dataset (no family
  column); fennec_arch_family: the same plus the family column;
* fennec_with_records (reference): the transfer space fitted with every record visible.

Writes OUT/<benchmark>/report.json, report.md and report.html (figures: means with standard
errors over tasks, per-task bars, --scatter_method's predicted against true scores), prints
the tables.
"""

import dataclasses
import os
import time

import numpy as np
from absl import flags

from experiments import cli
from fennec_jax.archs import archi2vec, architectures
from fennec_jax.benchmarks.bundled import as_benchmark, load_benchmark
from fennec_jax.eval import protocol, reports
from fennec_jax.methods.base import get_method
from fennec_jax.methods.cold_start import GraphFeatures, fennec_arch
from fennec_jax.methods.fennec import Fennec

_BENCHMARK = flags.DEFINE_list("benchmark", ["spider_multi", "parc_all"], "Bundled benchmarks with a family column.")
_PROTOCOL = flags.DEFINE_enum("protocol", "leave_models_out", ["leave_models_out", "leave_family_out"],
                              "Random folds of models, or one fold per architecture family.")
_FOLDS = flags.DEFINE_integer("folds", 7, "Folds for leave_models_out.", lower_bound=2)
_SEED = flags.DEFINE_integer("seed", 0, "Folds, encoder and space seed.")
_SSL = flags.DEFINE_enum("ssl", "contrastive", list(archi2vec.SSL_OBJECTIVES), "Encoder pre-training objective.")
_PRETRAIN_EPOCHS = flags.DEFINE_float("pretrain_epochs", 100.0, "Encoder pre-training passes over the graphs.")
_SCATTER = flags.DEFINE_enum("scatter_method", "fennec_arch", ["", "family_popularity", "fennec", "fennec_arch",
                                                               "fennec_arch_family"],
                             "Method whose predictions the report plots against the true scores (empty: none).")
_OUT = flags.DEFINE_string("out", "runs/cold_start", "Output folder.")

# A small encoder: the zoo has a dozen distinct graphs.
ENCODER = archi2vec.Archi2VecConfig(hidden=32, embed_dim=8, rounds=3, heads=2, ensemble=1, batch_size=16)


def main():
    # Names and columns checked before the minutes of pre-training, not after.
    zoo_records = {name: cli.by_name(load_benchmark, name, "benchmark").records for name in _BENCHMARK.value}
    for name, records in zoo_records.items():
        if "family" not in records.model_meta:
            raise cli.InputError(f"--benchmark={name}: its records have no model metadata column 'family'")
    start = time.perf_counter()
    zoo = {name: architectures.graph(name) for name in architectures.ARCHITECTURES.names()}
    config = dataclasses.replace(ENCODER, ssl_objective=_SSL.value, pretrain_epochs=_PRETRAIN_EPOCHS.value)
    encoder, losses = archi2vec.pretrain(list(zoo.values()), config, seed=_SEED.value)
    print(f"encoder: {_SSL.value} pre-training on {len(zoo)} traced architectures, {len(losses)} steps, "
          f"loss {losses[0].mean():.3f} -> {losses[-1].mean():.3f} ({time.perf_counter() - start:.1f} s)")

    for benchmark, records in zoo_records.items():
        family = np.asarray(records.model_meta["family"]).astype(str)
        covered = np.isin(family, list(zoo))
        missing = sorted(set(family[~covered].tolist()))
        print(f"\n## {benchmark}: {covered.sum()} of {len(family)} models have a graph"
              + (f"; no definition for families {missing}" if missing else ""))
        records = records.select_models(np.flatnonzero(covered))
        family = family[covered]
        graphs = {m: zoo[f] for m, f in zip(records.models, family)}
        embeddings = GraphFeatures(encoder, graphs)(records.models)
        records = dataclasses.replace(records, model_side={"graph": [graphs[m] for m in records.models],
                                                           "embedding": list(embeddings)})
        bench = as_benchmark(records, name=benchmark)
        groups = family if _PROTOCOL.value == "leave_family_out" else None
        folds = protocol.model_folds(records.num_models, _FOLDS.value, _SEED.value, groups)
        methods = {
            "family_popularity": get_method("family_popularity"),
            "fennec": Fennec(),
            "fennec_arch": fennec_arch(graphs, encoder, drop_model_meta=("family",)),
            "fennec_arch_family": dataclasses.replace(fennec_arch(graphs, encoder), name="fennec_arch_family"),
        }
        report = protocol.evaluate(bench, methods, protocol.ModelsOut(tuple(folds), label=_PROTOCOL.value),
                                   keep_predictions=_SCATTER.value or None)
        # Reference: the same space fitted with every record visible (no fold hidden).
        reference = protocol.evaluate(bench, {"fennec_with_records (reference)": Fennec()},
                                      protocol.ModelsOut((np.arange(records.num_models),), hide=False))
        report["results"].update(reference["results"])
        report["seconds"].update(reference["seconds"])
        report.update(families=sorted(set(family.tolist())),
                      coverage={"with_graph": int(covered.sum()), "models": len(covered), "missing": missing},
                      encoder={"config": dataclasses.asdict(config), "loss_first": float(losses[0].mean()),
                               "loss_last": float(losses[-1].mean())},
                      wall_seconds=time.perf_counter() - start)
        markdown = reports.write_report(
            os.path.join(_OUT.value, benchmark), report,
            title=f"Cold-start models, {benchmark}, {_PROTOCOL.value} ({len(folds)} folds, {records.num_models} "
                  f"models, {records.num_tasks} tasks)",
            notes=["Per task: Kendall tau-b / weighted tau between each model's true scores and those predicted "
                   "while its records were hidden."])
        print(markdown)
    print(f"wall time {time.perf_counter() - start:.1f} s; wrote {_OUT.value}/<benchmark>/report.json, report.md "
          f"and report.html")


if __name__ == "__main__":
    cli.run(main)
