"""Fits a zoo from a user's fine-tuning records, for ./run.sh rank.

  ./run.sh fit_zoo --records=records.csv --out=my_zoo
  ./run.sh fit_zoo --records=records.csv --model_meta=models.csv --task_data=data/ --out=my_zoo
  ./run.sh fit_zoo --records=records.csv --task_data=data/ --proxy=clip:/ckpt/clip-vit-large-patch14 --out=my_zoo

--records: model,task,score rows (or a wide table: model, then one column per task), higher =
better. --task_data: one subfolder (an image folder, one subfolder per class) or TASK.npz per
records task; each is embedded once by --proxy, so new tasks can be ranked from their data.
Without it the zoo ranks new tasks from probes and metadata. --weights (with --task_data): the
models' checkpoints (see ./run.sh rank --help); the blend weight of rank --rerank is then chosen
on the zoo's held-out history tasks, re-ranked up to --rerank_depth models with their real
forward passes (fennec_jax/zoo/blend.py). --graphs: the models'
architecture graphs (JSON lines), for graph-based methods (--method=graph_regression, ...).
Writes one versioned, checksummed zoo folder OUT (manifest.json, arrays/, method/).
"""

import dataclasses
import sys
import time

from absl import flags

from experiments import cli
from fennec_jax.zoo.blend import DEPTH
from fennec_jax.zoo.zoo import PROXIES, fit_zoo, read_task_folder

_RECORDS = flags.DEFINE_string("records", None, "Records table (CSV).", required=True)
_MODEL_META = flags.DEFINE_string("model_meta", None, "Model metadata table (column model, then any).")
_TASK_META = flags.DEFINE_string("task_meta", None, "Task metadata table (column task, then any).")
_TASK_DATA = flags.DEFINE_string("task_data", None, "Folder with one subfolder or TASK.npz per records task.")
_GRAPHS = flags.DEFINE_string("graphs", None, "Architecture graphs of the models (JSON lines, one per model).")
_METHOD = flags.DEFINE_string("method", "fennec", "Ranking method: NAME or NAME:key=value+...")
_METHOD_CONFIG = flags.DEFINE_string("method_config", None, "key=value,... configuration of --method.")
_PROXY = flags.DEFINE_string("proxy", "mobilenet_v2", f"Proxy encoder for --task_data ({' | '.join(PROXIES)}).")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", 64, "Examples per task embedded (class-balanced).", lower_bound=2)
_WEIGHTS = flags.DEFINE_string("weights", None, "Checkpoints of the models (architectures.csv + files), to validate "
                               "rank --rerank's blend on the history (needs --task_data).")
_RERANK_DEPTH = flags.DEFINE_integer("rerank_depth", DEPTH, "With --weights: validate re-ranking 2 to this many "
                                     "models.", lower_bound=2)
_RERANK_ESTIMATOR = flags.DEFINE_string("rerank_estimator", "logme", "With --weights: the re-ranking estimator.")
_OUT = flags.DEFINE_string("out", None, "Zoo folder to write.", required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing zoo folder.")


def main():
    import os

    from fennec_jax.archs.graphs import align_graphs, load_jsonl

    start = time.perf_counter()
    if os.path.exists(_OUT.value) and not _OVERWRITE.value:
        raise cli.InputError(f"--out={_OUT.value}: already exists (choose another folder or pass --overwrite)")
    (spec,) = cli.methods_from_flags([_METHOD.value], _METHOD_CONFIG.value, flag="method")
    records = cli.records_benchmark(_RECORDS.value, _MODEL_META.value, _TASK_META.value).records
    if _GRAPHS.value:
        try:
            graphs = align_graphs(records.models, load_jsonl(_GRAPHS.value), _GRAPHS.value)
        except (OSError, ValueError) as err:
            raise cli.InputError(f"--graphs: {err}") from None
        records = dataclasses.replace(records, model_side={**records.model_side, "graph": graphs})
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    weights = None
    if _WEIGHTS.value:
        from fennec_jax.zoo import rerank

        if not _TASK_DATA.value:
            raise cli.InputError("--weights: validating the re-ranking runs the models on the history tasks' data; "
                                 "give --task_data too")
        weights = rerank.read_weights_dir(_WEIGHTS.value)
    task_data = None
    if _TASK_DATA.value:
        task_data = read_task_folder(_TASK_DATA.value, records.tasks, _MAX_EXAMPLES.value, log)
    zoo = fit_zoo(records, method=spec, task_data=task_data, proxy=_PROXY.value if task_data else None,
                  max_examples=_MAX_EXAMPLES.value, log=log)
    if weights is not None:
        zoo = rerank.with_blend(zoo, task_data, weights, depth=_RERANK_DEPTH.value,
                                estimator=_RERANK_ESTIMATOR.value, progress=log)
    zoo.save(_OUT.value, overwrite=_OVERWRITE.value)
    low, high = zoo.calibration.quantiles(0.8) if zoo.calibration.errors.size else (float("nan"),) * 2
    print(f"wrote zoo {_OUT.value}: {len(zoo.models)} models x {len(zoo.tasks)} tasks, method {spec}, proxy "
          f"{zoo.proxy or 'none (ranks from probes and metadata)'}; 80% intervals {low:+.2f} to {high:+.2f} task std "
          f"(held-out {len(zoo.calibration.held_out)} tasks); {time.perf_counter() - start:.1f} s")
    if zoo.blend is not None:
        print(f"re-ranking blend for rank --rerank={_RERANK_DEPTH.value}: "
              f"{zoo.blend.choose(_RERANK_DEPTH.value).describe(_RERANK_DEPTH.value)}")


if __name__ == "__main__":
    cli.run(main)
