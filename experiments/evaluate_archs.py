"""Cold-start evaluation: predict held-out architectures' task scores from their graphs alone.

  ./run.sh evaluate_archs --benchmark=nas_bench_graph \
      --methods=archi2vec,archi2vec_ssl,opcount_ridge,wl_ridge,both_rf --train=100,1000 --seeds=3 \
      --out=runs/archs_nas_bench_graph
  ./run.sh evaluate_archs --records=records.csv --graphs=graphs.jsonl --methods=archi2vec,opcount_ridge

For each train size n and seed, every method trains on the same n random architectures
(all their task scores) and ranks all the others. Writes OUT/report.json
({"results": {method: {n: {"mean": {"kendall", "spearman"}, "per_task": ...}}}}) and
OUT/report.md, and prints the mean table. Graphs of --graphs without records are used by
archi2vec_ssl's self-supervised pre-training only.
"""

import dataclasses
import os
import time

import numpy as np
from absl import app, flags, logging
from tqdm import tqdm

from fennec_jax import arch_baselines, archi2vec, atomic_io, graphs, nas_bench_graph
from fennec_jax.benchmarks import load_benchmark
from fennec_jax.data import load_records

_METHODS_HELP = ("archi2vec (supervised only), archi2vec_ssl (self-supervised pre-training on every graph "
                 "first), " + ", ".join(arch_baselines.BASELINES))

_BENCHMARK = flags.DEFINE_enum("benchmark", None, ["nas_bench_graph"], "Bundled benchmark with architecture graphs.")
_RECORDS = flags.DEFINE_string("records", None, "A long table model,task,score (CSV or Parquet); needs --graphs.")
_GRAPHS = flags.DEFINE_string("graphs", None, "Architecture graphs, JSON lines (graphs.load_jsonl), named by model.")
_METHODS = flags.DEFINE_list("methods", ["archi2vec", "archi2vec_ssl", *arch_baselines.BASELINES], _METHODS_HELP)
_TRAIN = flags.DEFINE_list("train", ["100", "1000"], "Numbers n of training architectures.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Random training sets per n.", lower_bound=1)
_MAX_MODELS = flags.DEFINE_integer("max_models", 0, "Evaluate (and pre-train) on a random subset of this many "
                                   "models (0: all).",
                                   lower_bound=0)
_EPOCHS = flags.DEFINE_float("epochs", archi2vec.Archi2VecConfig.epochs, "archi2vec supervised epochs.")
_PRETRAIN_EPOCHS = flags.DEFINE_float("pretrain_epochs", archi2vec.Archi2VecConfig.pretrain_epochs,
                                      "archi2vec_ssl self-supervised epochs over all graphs.")
_ENSEMBLE = flags.DEFINE_integer("ensemble", archi2vec.Archi2VecConfig.ensemble, "archi2vec ensemble members.",
                                 lower_bound=1)
_SSL = flags.DEFINE_enum("ssl", archi2vec.Archi2VecConfig.ssl_objective, list(archi2vec.SSL_OBJECTIVES),
                         "archi2vec_ssl's self-supervised objective.")
_OUT = flags.DEFINE_string("out", "runs/evaluate_archs", "Output folder.")


def _load():
    """(name, models' graphs[M], scores[T, M], tasks, all graphs of the zoo)."""
    if _BENCHMARK.value:
        records = load_benchmark(_BENCHMARK.value).records
        zoo = graphs.from_nas_bench_graph_table(nas_bench_graph.load_table())
        # Benchmark models are named by hash, their graphs nas_bench_graph:<hash>.
        graph_names = [f"nas_bench_graph:{model}" for model in records.models]
        source, name = "the NAS-Bench-Graph table", _BENCHMARK.value
    else:
        records = load_records(_RECORDS.value)
        zoo, source, name = graphs.load_jsonl(_GRAPHS.value), _GRAPHS.value, os.path.basename(_RECORDS.value)
        graph_names = records.models
    model_graphs = arch_baselines.align_graphs(graph_names, zoo, source)
    return name, model_graphs, np.where(records.mask, records.scores, np.nan), records.tasks, zoo


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if bool(_BENCHMARK.value) == bool(_RECORDS.value):
        raise app.UsageError("give exactly one of --benchmark or --records (with --graphs)")
    if bool(_RECORDS.value) != bool(_GRAPHS.value):
        raise app.UsageError("--records and --graphs go together")
    try:
        train_sizes = [int(n) for n in _TRAIN.value]
    except ValueError:
        raise app.UsageError(f"--train must be integers, got {_TRAIN.value}") from None
    known = ["archi2vec", "archi2vec_ssl", *arch_baselines.BASELINES]
    unknown = [m for m in _METHODS.value if m not in known]
    if unknown:
        raise app.UsageError(f"--methods: unknown {unknown}; expected names from {known}")

    start = time.perf_counter()
    name, model_graphs, scores, tasks, zoo = _load()
    if _MAX_MODELS.value and _MAX_MODELS.value < len(model_graphs):
        keep = np.sort(np.random.default_rng(0).permutation(len(model_graphs))[: _MAX_MODELS.value])
        model_graphs, scores = [model_graphs[i] for i in keep], scores[:, keep]
        zoo = model_graphs
    logging.info("%s: %d models with graphs, %d tasks, %d graphs in the zoo", name, len(model_graphs), len(tasks),
                 len(zoo))

    config = archi2vec.Archi2VecConfig(epochs=_EPOCHS.value, pretrain_epochs=_PRETRAIN_EPOCHS.value,
                                       ensemble=_ENSEMBLE.value, ssl_objective=_SSL.value)
    methods, pretrain_seconds = {}, None
    for method in _METHODS.value:
        if method == "archi2vec":
            methods[method] = archi2vec.Archi2Vec(config)
        elif method == "archi2vec_ssl":
            began = time.perf_counter()
            pretrained, losses = archi2vec.pretrain(zoo, config, seed=0)
            pretrain_seconds = time.perf_counter() - began
            logging.info("pre-trained on %d graphs in %.1f s, WL loss %.3f -> %.3f", len(zoo), pretrain_seconds,
                         losses[0].mean(), losses[-1].mean())
            methods[method] = archi2vec.Archi2Vec(config, pretrained)
        else:
            methods[method] = arch_baselines.BASELINES[method]

    total = len(train_sizes) * _SEEDS.value * len(methods)
    with tqdm(total=total, desc=name, unit="fit") as bar:
        report = arch_baselines.evaluate_cold_start(
            methods, model_graphs, scores, tasks, train_sizes, _SEEDS.value, progress=lambda label: bar.update(1))
    report.update(
        benchmark=name,
        archi2vec_config=dataclasses.asdict(config),
        pretrain_seconds=pretrain_seconds,
        wall_seconds=time.perf_counter() - start,
    )
    atomic_io.write_json(os.path.join(_OUT.value, "report.json"), report)
    markdown = arch_baselines.report_markdown(report)
    atomic_io.write_text(os.path.join(_OUT.value, "report.md"), markdown)
    print(markdown.split("## Per task")[0])
    print(f"wall time {report['wall_seconds']:.1f} s; wrote {_OUT.value}/report.json and report.md")


if __name__ == "__main__":
    app.run(main)
