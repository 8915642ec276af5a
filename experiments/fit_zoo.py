"""Fits a zoo from a user's fine-tuning records, for ./run.sh rank.

  ./run.sh fit_zoo --records=records.csv --out=my_zoo
  ./run.sh fit_zoo --records=records.csv --model_meta=models.csv --task_data=data/ --out=my_zoo
  ./run.sh fit_zoo --records=records.csv --task_data=data/ --proxy=clip:/ckpt/clip-vit-large-patch14 --out=my_zoo

--records: model,task,score rows (or a wide table: model, then one column per task), higher =
better. --task_data: one subfolder (an image folder, one subfolder per class) or TASK.npz per
records task; each is embedded once by --proxy, so new tasks can be ranked from their data.
Without it the zoo ranks new tasks from probes and metadata. --graphs: the models'
architecture graphs (JSON lines), for graph-based methods (--method=graph_regression, ...).
Writes one versioned, checksummed zoo folder OUT (manifest.json, arrays/, method/).
"""

import dataclasses
import sys
import time

from absl import flags

from experiments import cli
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
    task_data = None
    if _TASK_DATA.value:
        task_data = read_task_folder(_TASK_DATA.value, records.tasks, _MAX_EXAMPLES.value, log)
    zoo = fit_zoo(records, method=spec, task_data=task_data, proxy=_PROXY.value if task_data else None,
                  max_examples=_MAX_EXAMPLES.value, log=log)
    zoo.save(_OUT.value, overwrite=_OVERWRITE.value)
    q = zoo.calibration.quantile(0.8) if zoo.calibration.errors.size else float("nan")
    print(f"wrote zoo {_OUT.value}: {len(zoo.models)} models x {len(zoo.tasks)} tasks, method {spec}, proxy "
          f"{zoo.proxy or 'none (ranks from probes and metadata)'}; 80% intervals +- {q:.2f} task std "
          f"(held-out {len(zoo.calibration.held_out)} tasks); {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    cli.run(main)
