"""Forward-pass transferability estimators on extracted features, one task, many models.

  ./run.sh estimate --features=runs/features/cifar10 --methods=logme,leep,nce \
      --out=runs/estimate/cifar10 [--records=finetune.csv --task=cifar10]

--features is a folder of MODEL.npz files (keys features[N, D], labels[N], optional
probs[N, Cs]; see fennec_jax.encoders.features.save_features), one per model, all on the same
examples. Methods that need source-head probabilities (e.g. leep, nce) score only the
models whose files have probs; the others are listed as skipped.

Writes OUT/scores.csv (model,method,score), OUT/ranking.csv (method,rank,model,score; rank 1
= highest score) and OUT/report.json. With --records (a model,task,score table of true
fine-tune results) each method's scores are compared with the true scores of --task (needed
when the records hold several tasks): weighted tau, Kendall tau, Spearman, Pearson and top-1
regret (fennec_jax.eval.metrics.ranking_metrics).
"""

import os
import time

import numpy as np
from absl import flags, logging

from experiments import cli

from fennec_jax.core import atomic_io
from fennec_jax import estimators
from fennec_jax.eval import metrics
from fennec_jax.core.records import load_records
from fennec_jax.encoders.features import load_feature_dir

_FEATURES = flags.DEFINE_string("features", None, "Folder of MODEL.npz feature files.")
_METHODS = flags.DEFINE_list("methods", None, "Estimators to run, comma separated "
                             "(default: all).")
_OUT = flags.DEFINE_string("out", "runs/estimate", "Output folder.")
_RECORDS = flags.DEFINE_string("records", None, "Optional table model,task,score of true "
                               "fine-tune results to evaluate the estimators against.")
_TASK = flags.DEFINE_string("task", None, "Task of --records that the features belong to "
                            "(needed when the records have several tasks).")


def score_methods(methods, models, features_list, labels, probs_list):
    """``{method: {"variant", "models", "scores", "skipped", "seconds"}}``: each method's
    scores of the models it can score (all, or those with probs), batched with
    ``estimators.score_models``."""
    results = {}
    for name in methods:
        uses_probs = estimators.needs_probs(name)
        keep = [i for i, probs in enumerate(probs_list) if probs is not None or not uses_probs]
        skipped = [model for i, model in enumerate(models) if i not in keep]
        if skipped:
            logging.warning("%s needs probs; skipping %d model(s) without them: %s", name,
                            len(skipped), ", ".join(skipped))
        start = time.perf_counter()
        scores = np.asarray(estimators.score_models(
            name, [features_list[i] for i in keep], labels,
            [probs_list[i] for i in keep] if uses_probs else None))
        seconds = time.perf_counter() - start
        bad = [models[i] for i, s in zip(keep, scores) if not np.isfinite(s)]
        if bad:
            raise ValueError(f"{name} gave a non-finite score for model(s) {', '.join(bad)}")
        results[name] = {"variant": estimators.get(name).variant,
                         "models": [models[i] for i in keep], "scores": scores.tolist(),
                         "skipped": skipped, "seconds": seconds}
    return results


def true_scores(records_path, task, models):
    """``(task, true[M])``: the records' scores of ``models`` on ``task`` (which may be None
    when the records have one task)."""
    records = load_records(records_path)
    if task is None:
        if records.num_tasks != 1:
            raise ValueError(f"--records={records_path} has {records.num_tasks} tasks; name "
                             f"the one the features belong to with --task "
                             f"({', '.join(records.tasks)})")
        task = records.tasks[0]
    elif task not in records.tasks:
        raise ValueError(f"--task={task} is not a task of --records={records_path} "
                         f"({', '.join(records.tasks)})")
    row = records.task_index(task)
    columns = []
    for model in models:
        column = records.models.index(model) if model in records.models else None
        if column is None or not records.mask[row, column]:
            raise ValueError(f"{model}.npz in --features has no score for task {task} in "
                             f"--records={records_path}")
        columns.append(column)
    return task, records.scores[row, columns]


def compare(results, models, true):
    """Adds ``"metrics"``: each method's ranking metrics against ``true[M]``."""
    for result in results.values():
        scored = true[[models.index(model) for model in result["models"]]]
        values = metrics.ranking_metrics(scored, np.asarray(result["scores"]))
        # null (not NaN, which is not JSON) where undefined: fewer than two models scored.
        result["metrics"] = {key: float(value) if np.isfinite(value) else None
                             for key, value in values.items()}


def write_outputs(out, results, report):
    rows = [(model, name, score) for name, result in results.items()
            for model, score in zip(result["models"], result["scores"])]
    atomic_io.write_csv(os.path.join(out, "scores.csv"), ("model", "method", "score"), rows)
    ranking = []
    for name, result in results.items():
        order = np.argsort(-np.asarray(result["scores"]), kind="stable")
        ranking += [(name, rank + 1, result["models"][i], result["scores"][i])
                    for rank, i in enumerate(order)]
    atomic_io.write_csv(os.path.join(out, "ranking.csv"), ("method", "rank", "model", "score"),
                        ranking)
    atomic_io.write_json(os.path.join(out, "report.json"), report)


def run(features_dir, methods, out, records=None, task=None):
    """The whole program without flags; returns the report it writes."""
    known = estimators.method_names()
    methods = list(methods or known)
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ValueError(f"--methods: unknown estimator(s) {', '.join(unknown)}; known: "
                         f"{', '.join(known)}")
    if task is not None and records is None:
        raise ValueError("--task needs --records")
    models, features_list, labels, probs_list = load_feature_dir(features_dir)
    needing_probs = [name for name in methods if estimators.needs_probs(name)]
    if needing_probs and all(probs is None for probs in probs_list):
        raise ValueError(f"--methods: {', '.join(needing_probs)} need source-head "
                         f"probabilities, but no feature file in --features={features_dir} "
                         "has probs")
    if records is not None:  # checked before the (slow) scoring
        task, true = true_scores(records, task, models)
    results = score_methods(methods, models, features_list, labels, probs_list)
    report = {"features": features_dir, "models": models, "num_examples": int(labels.size),
              "num_classes": int(np.unique(labels).size), "methods": results}
    if records is not None:
        compare(results, models, true)
        report.update(records=records, task=task)
    write_outputs(out, results, report)
    return report


def main():
    if not _FEATURES.value:
        raise cli.InputError("--features is required")
    try:
        report = run(_FEATURES.value, _METHODS.value, _OUT.value, _RECORDS.value, _TASK.value)
    except ValueError as error:  # bad input: one line and exit status 1
        raise cli.InputError(str(error)) from None
    print(f"{len(report['models'])} models, {report['num_examples']} examples, "
          f"{report['num_classes']} classes")
    for name, result in report["methods"].items():
        line = f"{name:>14}: {len(result['models'])} models in {result['seconds']:.2f} s"
        if "metrics" in result:
            line += "  " + "  ".join(f"{k} {v:+.3f}" for k, v in result["metrics"].items()
                                     if v is not None)
        print(line)
    print(f"wrote {_OUT.value}/scores.csv, ranking.csv and report.json")


if __name__ == "__main__":
    cli.run(main)
