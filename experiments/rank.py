"""Ranks a zoo's models for a new task from its data: which models to fine-tune first.

  ./run.sh sample_task --out=my_task                # a sample task (an image folder) to try it on
  ./run.sh rank --task=my_task --out=runs/rank      # the default zoo, fitted on first use
  ./run.sh rank --zoo=my_zoo --task=data/flowers --probes=resnet50=0.91,vit_b16=0.88 --top_k=20
  ./run.sh rank --zoo=my_zoo --task=feats.npz --task_meta=domain=medical

--task: an image folder (one subfolder per class, jpg/png), an .npz with images[N, H, W, 3]
uint8 and labels[N], an .npz of proxy features (features[N, P], labels[N]), or
tfds:NAME[:SPLIT]@DATA_DIR. The task's data passes once through the zoo's proxy encoder; no
candidate model runs. --probes: measured scores of models already fine-tuned on the task
(model=score,... or a CSV file with columns model,score), in the zoo's units.
Writes OUT/ranking.csv (rank, model, predicted_score, interval_low, interval_high, observed,
measured_score, evidence), OUT/report.md and OUT/report.html, and prints the top 10.
"""

import csv
import os
import sys
import time

from absl import flags

from experiments import cli
from fennec_jax.core.registry import parse_config
from fennec_jax.zoo.zoo import PROXIES, load_proxy, load_zoo

_ZOO = flags.DEFINE_string("zoo", None, "Zoo folder from ./run.sh fit_zoo (default: the bundled default zoo).")
_TASK = flags.DEFINE_string("task", None, "The new task's data (see above); leave out to rank from probes alone.")
_PROBES = flags.DEFINE_string("probes", None, "model=score,... or a CSV file with columns model,score.")
_TASK_META = flags.DEFINE_string("task_meta", None, "key=value,... task metadata (as the zoo's task metadata).")
_PROXY = flags.DEFINE_string("proxy", None, f"Proxy encoder ({' | '.join(PROXIES)}); default: the zoo's own.")
_TOP_K = flags.DEFINE_integer("top_k", None, "Keep the best K models in the outputs (default: all).", lower_bound=1)
_LEVEL = flags.DEFINE_float("level", 0.8, "Coverage of the intervals (two-sided).", lower_bound=0.01, upper_bound=0.99)
_OUT = flags.DEFINE_string("out", None, "Output folder (default: runs/rank/TASK).")


def _probes(text: str | None) -> dict[str, float]:
    """``{model: score}`` from ``model=score,...`` or a CSV file with columns model,score."""
    if not text:
        return {}
    if os.path.isfile(text):
        try:
            with open(text, newline="", encoding="utf-8-sig") as f:
                rows = list(csv.DictReader(f))
        except UnicodeDecodeError:
            raise cli.InputError(f"--probes={text}: expected a UTF-8 CSV file") from None
        if not rows or not {"model", "score"} <= set(rows[0]):
            raise cli.InputError(f"--probes={text}: expected a CSV with columns model,score")
        items = [(row["model"], row["score"], f"{text} line {i + 2}") for i, row in enumerate(rows)]
    else:
        items = []
        for item in filter(None, (part.strip() for part in text.split(","))):
            model, sep, score = item.rpartition("=")
            if not sep or not model:
                raise cli.InputError(f"--probes: {item!r} is not model=score; expected model=score,... or a CSV file")
            items.append((model, score, f"--probes {item}"))
    out = {}
    for model, score, where in items:
        if model in out:
            raise cli.InputError(f"{where}: model {model!r} given twice")
        try:
            out[model] = float(score)
        except (TypeError, ValueError):
            raise cli.InputError(f"{where}: score {score!r} is not a number") from None
    return out


def main():
    from fennec_jax.zoo.default import default_zoo
    from fennec_jax.zoo.report import write_ranking

    start = time.perf_counter()
    probes = _probes(_PROBES.value)
    try:
        metadata = parse_config(_TASK_META.value)
    except ValueError as err:
        raise cli.InputError(f"--task_meta: {err}") from None
    if _TASK.value is None and not probes and not metadata:
        raise cli.InputError("give --task (the new task's data), --probes or --task_meta; see --help")
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    zoo = default_zoo(log) if _ZOO.value is None else load_zoo(_ZOO.value)
    encoder = None
    if _PROXY.value is not None:
        encoder, proxy_id = load_proxy(_PROXY.value)
        if zoo.proxy is not None and proxy_id != zoo.proxy:
            raise cli.InputError(f"--proxy={_PROXY.value}: the zoo was fitted with proxy {zoo.proxy}; its task map "
                                 f"only reads that encoder's embeddings (leave --proxy out, or refit the zoo)")
    ranking = zoo.rank(_TASK.value, probes=probes, metadata=metadata, encoder=encoder, level=_LEVEL.value,
                       progress=True)
    out = _OUT.value or os.path.join("runs", "rank", ranking.task)
    zoo_name = _ZOO.value or "default (builder: 40 models x 20 tasks)"
    paths = write_ranking(out, ranking, zoo_name, _TOP_K.value)
    print(f"{ranking.task}: {len(zoo.models)} models ranked from {ranking.evidence} "
          f"in {time.perf_counter() - start:.1f} s; top 10 ({ranking.level:.0%} intervals, records' units):")
    print(f"{'rank':>4}  {'model':<40} {'predicted':>9}  {'interval':<19} measured")
    for row in ranking.top(10):
        interval = f"[{row['interval_low']:.3g}, {row['interval_high']:.3g}]" if row["interval_low"] != "" else ""
        print(f"{row['rank']:>4}  {row['model']:<40} {row['predicted_score']:>9.4g}  {interval:<19} "
              f"{row['measured_score']}")
    print("wrote " + ", ".join(paths))


if __name__ == "__main__":
    cli.run(main)
