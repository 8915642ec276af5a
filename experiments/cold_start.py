"""Cold-start models in the transfer space: a model's records hidden, its architecture graph known.

  .venv/bin/python experiments/cold_start.py --benchmark=spider_multi,parc_all \
      --protocol=leave_models_out --folds=7 --pretrain_epochs=100 --out=runs/cold_start

Each model's graph is traced from its family's Flax definition (`architectures.graph`,
family = the records' model metadata ``family``); models whose family has no definition are
left out (coverage is printed). An archi2vec encoder is pre-trained self-supervised on the
graphs of every defined architecture (``--ssl``), then for each fold (``leave_models_out``:
random folds of models; ``leave_family_out``: one fold per family) every cell of the fold's
models is hidden and each predictor predicts their scores on every task:

* family_popularity: mean z-score of the visible models of the model's family (a hidden
  family: the visible family with the nearest mean graph embedding);
* fennec: the transfer space with model metadata (family, source dataset);
* fennec_arch: the transfer space with the graph embedding and the source dataset (no family
  column): vector = map(graph embedding, metadata) + residual for models with records;
* fennec_arch_family: the same plus the family column;
* fennec_with_records (reference): the transfer space fitted with every record visible.

Writes OUT/<benchmark>/report.json and report.md, prints the tables.
"""

import dataclasses
import os
import time

import numpy as np
from absl import app, flags, logging

from cli import by_name  # experiments/cli.py, beside this program
from fennec_jax import arch_baselines, archi2vec, architectures, atomic_io
from fennec_jax.benchmarks import load_benchmark
from fennec_jax.transfer_space import Fennec, select_models

_BENCHMARK = flags.DEFINE_list("benchmark", ["spider_multi", "parc_all"], "Bundled benchmarks with a family column.")
_PROTOCOL = flags.DEFINE_enum("protocol", "leave_models_out", ["leave_models_out", "leave_family_out"],
                              "Random folds of models, or one fold per architecture family.")
_FOLDS = flags.DEFINE_integer("folds", 7, "Folds for leave_models_out.", lower_bound=2)
_SEED = flags.DEFINE_integer("seed", 0, "Folds, encoder and space seed.")
_SSL = flags.DEFINE_enum("ssl", "contrastive", list(archi2vec.SSL_OBJECTIVES), "Encoder pre-training objective.")
_PRETRAIN_EPOCHS = flags.DEFINE_float("pretrain_epochs", 100.0, "Encoder pre-training passes over the graphs.")
_OUT = flags.DEFINE_string("out", "runs/cold_start", "Output folder.")

# A small encoder: the zoo has a dozen distinct graphs.
ENCODER = archi2vec.Archi2VecConfig(hidden=32, embed_dim=8, rounds=3, heads=2, ensemble=1, batch_size=16)


def _space_scores(method: Fennec, seed: int, drop: tuple[str, ...] = ()):
    """Predictor: history -> pred[T, M] of the fitted transfer space (``drop``: model metadata columns left out)."""

    def predict(history):
        if drop:
            history = dataclasses.replace(history, model_meta={k: v for k, v in history.model_meta.items()
                                                               if k not in drop})
        space = method.fit(history, seed)
        return np.stack([space.scores(vec) for vec in space.task_vecs])

    return predict


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    # Names and columns checked before the minutes of pre-training, not after.
    zoo_records = {name: by_name(load_benchmark, name, "benchmark").records for name in _BENCHMARK.value}
    for name, records in zoo_records.items():
        if "family" not in records.model_meta:
            raise app.UsageError(f"--benchmark={name}: its records have no model metadata column 'family'")
    start = time.perf_counter()
    zoo = {name: architectures.graph(name) for name in architectures.ARCHITECTURES}
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
        records = select_models(records, np.flatnonzero(covered))
        family = family[covered]
        graphs = {m: zoo[f] for m, f in zip(records.models, family)}
        embeddings = archi2vec.GraphFeatures(encoder, graphs)(records.models)
        groups = family if _PROTOCOL.value == "leave_family_out" else None
        folds = arch_baselines.model_folds(records.num_models, _FOLDS.value, _SEED.value, groups)
        reference = _space_scores(Fennec(), _SEED.value)(records)
        predictors = {
            "family_popularity": lambda history: arch_baselines.family_popularity(history, family, embeddings),
            "fennec": _space_scores(Fennec(), _SEED.value),
            "fennec_arch": _space_scores(archi2vec.fennec_arch(graphs, encoder), _SEED.value, drop=("family",)),
            "fennec_arch_family": _space_scores(archi2vec.fennec_arch(graphs, encoder), _SEED.value),
            "fennec_with_records (reference)": lambda history: reference,
        }
        report = arch_baselines.evaluate_models_out(records, predictors, folds)
        report.update(benchmark=benchmark, protocol=_PROTOCOL.value, families=sorted(set(family.tolist())),
                      coverage={"with_graph": int(covered.sum()), "models": len(covered), "missing": missing},
                      encoder={"config": dataclasses.asdict(config), "loss_first": float(losses[0].mean()),
                               "loss_last": float(losses[-1].mean())},
                      wall_seconds=time.perf_counter() - start)
        markdown = (f"# Cold-start models, {benchmark}, {_PROTOCOL.value} ({len(folds)} folds, "
                    f"{records.num_models} models, {records.num_tasks} tasks)\n\n"
                    "Mean over tasks of Kendall tau-b / weighted tau between each model's true scores and "
                    "those predicted while its records were hidden.\n\n" + arch_baselines.models_out_markdown(report))
        out = os.path.join(_OUT.value, benchmark)
        atomic_io.write_json(os.path.join(out, "report.json"), report)
        atomic_io.write_text(os.path.join(out, "report.md"), markdown)
        print(markdown)
    print(f"wall time {time.perf_counter() - start:.1f} s; wrote {_OUT.value}/<benchmark>/report.json and report.md")


if __name__ == "__main__":
    app.run(main)
