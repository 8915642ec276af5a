"""Cold-start evaluation: predict held-out architectures' task scores from their graphs alone.

  ./run.sh evaluate_archs --benchmark=nas_bench_graph \
      --methods=archi2vec,archi2vec_ssl,graph_regression:features=opcount,graph_regression:features=both+regressor=forest \
      --train=100,1000 --seeds=3 --out=runs/archs_nas_bench_graph
  ./run.sh evaluate_archs --records=records.csv --graphs=graphs.jsonl --methods=archi2vec,graph_regression
  ./run.sh evaluate_archs --benchmark=nas_bench_graph --max_models=3000 --export=runs/nbg_renamed --rename_ops

For each train size n and seed, every method sees the records of the same n random
architectures and ranks all the others (the architectures-out split of
fennec_jax.eval.protocol). archi2vec_ssl is archi2vec started from an encoder pretrained
self-supervised on every graph (--ssl). Writes OUT/report.json, OUT/report.md and
OUT/report.html (figures: means against n with standard errors over seeds, per-task bars,
--scatter_method's predicted against true scores) and prints the mean table. Graphs of
--graphs without records are used by the pre-training only.

--export writes the benchmark (after --max_models) as the files a --records / --graphs run
reads, EXPORT/records.csv and EXPORT/graphs.jsonl, instead of evaluating; with --rename_ops
every op type is written under an opaque name no reader knows (``op_`` + 8 hex digits of its
name's SHA-256: a fixed bijection), so a run on the export checks that a file in a user's own
op names ranks as the native graphs do (same splits: the models keep their order).
"""

import dataclasses
import hashlib
import os
import time

import numpy as np
from absl import flags, logging
from tqdm import tqdm

from experiments import cli
from fennec_jax.archs import archi2vec, graphs, nas_bench_graph
from fennec_jax.benchmarks.bundled import as_benchmark, load_benchmark
from fennec_jax.core import atomic_io
from fennec_jax.core.records import load_records
from fennec_jax.core.registry import parse_spec
from fennec_jax.eval import protocol, reports
from fennec_jax.methods.base import get_method

_BENCHMARK = flags.DEFINE_enum("benchmark", None, ["nas_bench_graph"], "Bundled benchmark with architecture graphs.")
_RECORDS = flags.DEFINE_string("records", None, "A long table model,task,score (CSV or Parquet); needs --graphs.")
_GRAPHS = flags.DEFINE_string("graphs", None, "Architecture graphs, JSON lines (graphs.load_jsonl), named by model.")
_METHODS = flags.DEFINE_list("methods", ["archi2vec", "archi2vec_ssl", "graph_regression:features=opcount",
                                         "graph_regression:features=wl",
                                         "graph_regression:features=both+regressor=forest"],
                             "Method specs (graph-based cold-start methods); archi2vec_ssl: archi2vec from a "
                             "pretrained encoder.")
_TRAIN = flags.DEFINE_list("train", ["100", "1000"], "Numbers n of training architectures.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Random training sets per n.", lower_bound=1)
_MAX_MODELS = flags.DEFINE_integer("max_models", 0, "Evaluate (and pre-train) on a random subset of this many "
                                   "models (0: all).", lower_bound=0)
_EPOCHS = flags.DEFINE_float("epochs", archi2vec.Archi2VecConfig.epochs, "archi2vec supervised epochs.")
_PRETRAIN_EPOCHS = flags.DEFINE_float("pretrain_epochs", archi2vec.Archi2VecConfig.pretrain_epochs,
                                      "archi2vec_ssl self-supervised epochs over all graphs.")
_ENSEMBLE = flags.DEFINE_integer("ensemble", archi2vec.Archi2VecConfig.ensemble, "archi2vec ensemble members.",
                                 lower_bound=1)
_SSL = flags.DEFINE_enum("ssl", archi2vec.Archi2VecConfig.ssl_objective, list(archi2vec.SSL_OBJECTIVES),
                         "archi2vec_ssl's self-supervised objective.")
_SCATTER = flags.DEFINE_string("scatter_method", None, "Method whose seed-0 predictions of the held-out models the "
                               "report keeps and plots against the true scores (default: the last of --methods; "
                               "empty: none).")
_OUT = flags.DEFINE_string("out", "runs/evaluate_archs", "Output folder.")
_EXPORT = flags.DEFINE_string("export", None, "Write the benchmark as EXPORT/records.csv and EXPORT/graphs.jsonl "
                              "(what --records / --graphs read) instead of evaluating.")
_RENAME_OPS = flags.DEFINE_bool("rename_ops", False, "With --export: write every op type under an opaque name "
                                "outside the built-in ones (a fixed bijection).")


def _load():
    """(benchmark whose records carry model_side['graph'], all graphs of the zoo)."""
    if _BENCHMARK.value:
        records = load_benchmark(_BENCHMARK.value).records
        zoo = graphs.from_nas_bench_graph_table(nas_bench_graph.load_table())
        # Benchmark models are named by hash, their graphs nas_bench_graph:<hash>.
        names, source, name = [f"nas_bench_graph:{m}" for m in records.models], "the NAS-Bench-Graph table", _BENCHMARK.value
    else:
        records = load_records(_RECORDS.value)
        zoo, source, name = graphs.load_jsonl(_GRAPHS.value), _GRAPHS.value, _RECORDS.value
        names = records.models
    try:
        model_graphs = graphs.align_graphs(names, zoo, source)
    except ValueError as err:
        raise cli.InputError(str(err)) from None
    records = dataclasses.replace(records, model_side={"graph": model_graphs})
    return as_benchmark(records, name=name), zoo


def _renamed_op(name: str) -> str:
    """The opaque name --rename_ops writes for op type ``name``."""
    return "op_" + hashlib.sha256(name.encode()).hexdigest()[:8]


def _export(bench, folder: str, rename: bool) -> None:
    """Writes bench's records (long, models in order) and graphs (named by model) for --records / --graphs."""
    records = bench.records
    os.makedirs(folder, exist_ok=True)
    rows = [(model, task, float(records.scores[t, m])) for m, model in enumerate(records.models)
            for t, task in enumerate(records.tasks) if records.mask[t, m]]
    atomic_io.write_csv(os.path.join(folder, "records.csv"), ("model", "task", "score"), rows)
    written = []
    for model, graph in zip(records.models, records.model_side["graph"]):
        ops = [_renamed_op(op) if rename else op for op in graph.op_names]
        extra = sorted({op for op in ops if op not in graphs.OPS})
        attrs = [graph.node_attrs(i) for i in range(graph.num_nodes)]
        written.append(graphs.ArchGraph.from_ops(model, ops, graph.edges, attrs, extra_ops=extra))
    graphs.save_jsonl(written, os.path.join(folder, "graphs.jsonl"))
    print(f"wrote {records.num_models} models x {records.num_tasks} tasks to {folder}/records.csv and graphs.jsonl"
          + (f" (op types renamed: {', '.join(sorted(graphs.OpVocabulary.from_graphs(written).extra))})"
             if rename else ""))


def main():
    if bool(_BENCHMARK.value) == bool(_RECORDS.value):
        raise cli.InputError("give exactly one of --benchmark or --records (with --graphs)")
    if bool(_RECORDS.value) != bool(_GRAPHS.value):
        raise cli.InputError("--records and --graphs go together")
    if _RENAME_OPS.value and not _EXPORT.value:
        raise cli.InputError("--rename_ops goes with --export")
    try:
        train_sizes = tuple(int(n) for n in _TRAIN.value)
    except ValueError:
        raise cli.InputError(f"--train must be integers, got {_TRAIN.value}") from None
    config = {"epochs": _EPOCHS.value, "pretrain_epochs": _PRETRAIN_EPOCHS.value, "ensemble": _ENSEMBLE.value,
              "ssl_objective": _SSL.value}
    methods = {}
    for spec in _METHODS.value:
        name, spec_config = parse_spec(spec)
        if name == "archi2vec_ssl":
            continue  # built after the pre-training below
        if name == "archi2vec":  # the archi2vec flags are defaults under the spec's own configuration
            methods[spec] = dataclasses.replace(get_method(name, **{**config, **spec_config}), name=spec)
        else:
            methods.update(cli.methods_from_flags([spec], None))

    start = time.perf_counter()
    bench, zoo = _load()
    if _MAX_MODELS.value and _MAX_MODELS.value < bench.records.num_models:
        keep = np.sort(np.random.default_rng(0).permutation(bench.records.num_models)[: _MAX_MODELS.value])
        bench = as_benchmark(bench.records.select_models(keep), name=bench.name)
        zoo = bench.records.model_side["graph"]
    if _EXPORT.value:
        _export(bench, _EXPORT.value, _RENAME_OPS.value)
        return
    pretrain_seconds = None
    if "archi2vec_ssl" in _METHODS.value:
        began = time.perf_counter()
        a2v_config = archi2vec.Archi2VecConfig(**config)
        pretrained, losses = archi2vec.pretrain(zoo, a2v_config, seed=0)
        pretrain_seconds = time.perf_counter() - began
        logging.info("pre-trained on %d graphs in %.1f s, loss %.3f -> %.3f", len(zoo), pretrain_seconds,
                     losses[0].mean(), losses[-1].mean())
        methods["archi2vec_ssl"] = dataclasses.replace(get_method("archi2vec", pretrained=pretrained, **config),
                                                       name="archi2vec_ssl")
    split = protocol.ArchitecturesOut(train_sizes=train_sizes, seeds=_SEEDS.value)
    keep = list(methods)[-1] if _SCATTER.value is None else (_SCATTER.value or None)
    with tqdm(total=len(train_sizes) * _SEEDS.value * len(methods), desc=bench.name, unit="fit") as bar:
        try:
            report = protocol.evaluate(bench, methods, split, progress=lambda msg: bar.update(1),
                                       keep_predictions=keep)
        except ValueError as err:
            raise cli.InputError(str(err)) from None
    report.update(archi2vec_config=config, pretrain_seconds=pretrain_seconds,
                  wall_seconds=time.perf_counter() - start)
    markdown = reports.write_report(_OUT.value, report, title=f"{bench.name} ({bench.records.num_models} models)")
    print(markdown.split("## Per task")[0])
    print(f"wall time {report['wall_seconds']:.1f} s; wrote {_OUT.value}/report.json, report.md and report.html")


if __name__ == "__main__":
    cli.run(main)
