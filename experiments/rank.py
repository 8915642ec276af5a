"""Ranks a zoo's models for a new task from its data: which models to fine-tune first.

  ./run.sh sample_task --out=my_task                # a sample task (an image folder) to try it on
  ./run.sh rank --task=my_task --out=runs/rank      # the default zoo, fitted on first use
  ./run.sh rank --zoo=my_zoo --task=data/flowers --probes=resnet50=0.91,vit_b16=0.88 --top_k=20
  ./run.sh rank --zoo=my_zoo --task=feats.npz --task_meta=domain=medical
  ./run.sh rank --task=my_task --rerank=10           # re-rank the top 10 with forward passes (default zoo's weights)
  ./run.sh rank --zoo=my_zoo --task=data/flowers --rerank=10 --weights=my_weights --rerank_estimator=leep

--task: an image folder (one subfolder per class, jpg/png), an .npz with images[N, H, W, 3]
uint8 and labels[N], an .npz of proxy features (features[N, P], labels[N]), or
tfds:NAME[:SPLIT]@DATA_DIR. The task's data passes once through the zoo's proxy encoder; no
candidate model runs. --probes: measured scores of models already fine-tuned on the task
(model=score,... or a CSV file with columns model,score), in the zoo's units.
--rerank=R: the R best models without a measured result are run on the task's images with
their real weights (--weights=DIR: architectures.csv + PyTorch-layout .safetensors / .pth, see
fennec_jax/zoo/rerank.py; the default zoo's own weights are pre-trained on first use) and
re-ordered in their places by a blend of the zoo's prediction and the estimator's score
(--rerank_estimator, LogME by default) at the weight the zoo chose on its held-out history tasks
(fit_zoo --weights; the default zoo validates it on first use), else an equal blend; the table
gains a rerank_score column.
Writes OUT/ranking.csv (rank, model, predicted_score, interval_low, interval_high, observed,
measured_score, evidence), OUT/report.md and OUT/report.html, and prints the top 10.
"""

import os
import sys
import time

from absl import flags

from experiments import cli, zoo_flags
from fennec_jax.zoo import rerank

_TOP_K = flags.DEFINE_integer("top_k", None, "Keep the best K models in the outputs (default: all).", lower_bound=1)
_LEVEL = flags.DEFINE_float("level", 0.8, "Coverage of the intervals (two-sided).", lower_bound=0.01, upper_bound=0.99)
_RERANK = flags.DEFINE_integer("rerank", 0, "Re-rank the best R unmeasured models with forward passes (0: off).",
                               lower_bound=0)
_WEIGHTS = flags.DEFINE_string("weights", None, "Weights folder for --rerank (architectures.csv + checkpoints); "
                               "default with the default zoo: its own models' weights.")
_RERANK_ESTIMATOR = flags.DEFINE_string("rerank_estimator", "logme", "Forward-pass estimator for --rerank.")
_RERANK_WEIGHT = flags.DEFINE_float("rerank_weight", None, "The estimator's weight in the --rerank blend "
                                    "(1: the estimator alone orders the re-ranked models; default: the weight the "
                                    "zoo validated on its held-out history tasks, else 0.5).", lower_bound=0.0,
                                    upper_bound=1.0)
_OUT = flags.DEFINE_string("out", None, "Output folder (default: runs/rank/TASK).")


def _rerank_inputs(task, zoo):
    """The task's data (read once, for the proxy pass and the forward passes) and the weights."""
    from fennec_jax.zoo import default
    from fennec_jax.zoo.task_data import read_task

    if task is None:
        raise cli.InputError("--rerank: needs --task (the candidates run on the task's images)")
    if _WEIGHTS.value is None and zoo_flags.ZOO.value is not None:
        raise cli.InputError("--rerank: give --weights=DIR (the zoo's models' checkpoints, see --help)")
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    folder = _WEIGHTS.value or default.default_weights(log)
    if _WEIGHTS.value is None and _RERANK_WEIGHT.value is None:
        zoo = default.default_zoo_blend(zoo, folder, depth=_RERANK.value, estimator=_RERANK_ESTIMATOR.value, log=log)
    weight, why = ((_RERANK_WEIGHT.value, "weight given by --rerank_weight") if _RERANK_WEIGHT.value is not None
                   else rerank.blend_weight(zoo, _RERANK.value, _RERANK_ESTIMATOR.value))
    print(f"re-ranking the top {_RERANK.value}: {why}", file=sys.stderr, flush=True)
    return read_task(task, zoo.max_examples), rerank.read_weights_dir(folder), weight


def main():
    from fennec_jax.zoo.report import write_ranking

    start = time.perf_counter()
    if zoo_flags.TASK.value is None and not zoo_flags.PROBES.value and not zoo_flags.TASK_META.value:
        raise cli.InputError("give --task (the new task's data), --probes or --task_meta; see --help")
    zoo, encoder, probes, metadata = zoo_flags.task_inputs()
    task = zoo_flags.TASK.value
    if _RERANK.value:
        task, weights, weight = _rerank_inputs(task, zoo)
    ranking = zoo.rank(task, probes=probes, metadata=metadata, encoder=encoder, level=_LEVEL.value, progress=True)
    if _RERANK.value:
        import jax

        from fennec_jax.ranking import engine

        ranking = rerank.rerank(ranking, task, weights, _RERANK.value, estimator=_RERANK_ESTIMATOR.value,
                                weight=weight, progress=lambda msg: print(msg, file=sys.stderr),
                                mesh=engine.make_mesh() if jax.device_count() > 1 else None)
    out = _OUT.value or os.path.join("runs", "rank", ranking.task)
    paths = write_ranking(out, ranking, zoo_flags.zoo_name(), _TOP_K.value)
    print(f"{ranking.task}: {len(zoo.models)} models ranked from {ranking.evidence} "
          f"in {time.perf_counter() - start:.1f} s; top 10 ({ranking.level:.0%} intervals, records' units):")
    reranked = ranking.rerank_score is not None
    print(f"{'rank':>4}  {'model':<40} {'predicted':>9}  {'interval':<19} {'measured':<9}"
          + (f" {_RERANK_ESTIMATOR.value}" if reranked else ""))
    for row in ranking.top(10):
        interval = f"[{row['interval_low']:.3g}, {row['interval_high']:.3g}]" if row["interval_low"] != "" else ""
        print(f"{row['rank']:>4}  {row['model']:<40} {row['predicted_score']:>9.4g}  {interval:<19} "
              f"{row['measured_score']!s:<9}" + (f" {row['rerank_score']}" if reranked else ""))
    print("wrote " + ", ".join(paths))


if __name__ == "__main__":
    cli.run(main)
