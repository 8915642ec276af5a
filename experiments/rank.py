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

import os
import time

from absl import flags

from experiments import cli, zoo_flags

_TOP_K = flags.DEFINE_integer("top_k", None, "Keep the best K models in the outputs (default: all).", lower_bound=1)
_LEVEL = flags.DEFINE_float("level", 0.8, "Coverage of the intervals (two-sided).", lower_bound=0.01, upper_bound=0.99)
_OUT = flags.DEFINE_string("out", None, "Output folder (default: runs/rank/TASK).")


def main():
    from fennec_jax.zoo.report import write_ranking

    start = time.perf_counter()
    if zoo_flags.TASK.value is None and not zoo_flags.PROBES.value and not zoo_flags.TASK_META.value:
        raise cli.InputError("give --task (the new task's data), --probes or --task_meta; see --help")
    zoo, encoder, probes, metadata = zoo_flags.task_inputs()
    ranking = zoo.rank(zoo_flags.TASK.value, probes=probes, metadata=metadata, encoder=encoder, level=_LEVEL.value,
                       progress=True)
    out = _OUT.value or os.path.join("runs", "rank", ranking.task)
    paths = write_ranking(out, ranking, zoo_flags.zoo_name(), _TOP_K.value)
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
