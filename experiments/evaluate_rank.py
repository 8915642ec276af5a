"""Leave-one-task-out through the ``rank`` path, on the default zoo's real data.

  ./run.sh evaluate_rank [--tasks=faces,digits_2_4] [--probes=3] [--out=runs/evaluate_rank]

For each of the builder's 20 target tasks: a zoo is fitted (``fit_zoo``, calibration
included) on the other 19 tasks' records and proxy embeddings, and the held-out task's data is
ranked by ``Zoo.rank`` exactly as ``./run.sh rank --task=...`` does (one MobileNetV2 pass over
its 64 examples, timed: the seconds per new task). Scored against the task's measured
fine-tune accuracies: weighted tau, Kendall, top-1 regret, and the coverage of the 80 %
intervals. Rows: the zoo at k = 0 (proxy only) and with ``--probes`` random probes (3 seeds);
``popularity``; and ``spider`` with proxy task tokens (the class means of the proxy features,
as Model Spider's task encoder gives it), fitted on the same history. With ``--rerank=R``
(default 10; 0 skips): the zoo's k = 0 ranking with its top R re-ranked by forward passes of the
models' real weights (``rank --rerank``; the default zoo's weights, pre-trained on first use):
at the blend weight each fold's zoo chose on its own held-out history tasks
(:func:`fennec_jax.zoo.rerank.validate_blend`; never the target), at the fixed default 0.5 and
at 1 (the estimator alone orders the top R); and the estimator over every model
(``--rerank_estimator``, LogME by default). Mean ± standard error over tasks; the per-fold
chosen weights are in the report. Writes OUT/report.json and OUT/report.md.
"""

import dataclasses
import time

import numpy as np
from absl import flags

from experiments import cli

_TASKS = flags.DEFINE_list("tasks", None, "Held-out tasks (default: all 20).")
_PROBES = flags.DEFINE_integer("probes", 3, "k for the with-probes row.", lower_bound=1)
_PROBE_SEEDS = flags.DEFINE_integer("probe_seeds", 3, "Random probe draws per task.", lower_bound=1)
_RERANK = flags.DEFINE_integer("rerank", 10, "Re-rank the zoo's top R with forward passes (0: skip).", lower_bound=0)
_RERANK_ESTIMATOR = flags.DEFINE_string("rerank_estimator", "logme", "Estimator of the re-ranking rows.")
_OUT = flags.DEFINE_string("out", "runs/evaluate_rank", "Output folder.")


def _scores(true: np.ndarray, pred: np.ndarray, low=None, high=None) -> dict:
    from fennec_jax.eval import metrics

    out = {"weighted_tau": float(metrics.weighted_tau(true, pred)), "kendall": float(metrics.kendall_tau(true, pred)),
           "top1_regret": float(metrics.top1_regret(true, pred))}
    if low is not None:
        out["coverage_80"] = float(np.mean((true >= low) & (true <= high)))
    return out


def _summary(rows: list[dict]) -> dict:
    from fennec_jax.eval.protocol import standard_error

    keys = rows[0].keys()
    values = {k: np.array([r[k] for r in rows]) for k in keys}
    return {k: {"mean": float(v.mean()), "se": standard_error(v) if v.size > 1 else None} for k, v in values.items()}


def main():
    import os

    from fennec_jax.core import atomic_io
    from fennec_jax.core.evidence import TaskEvidence
    from fennec_jax.encoders.proxy import task_embedding
    from fennec_jax.methods.base import get_method
    from fennec_jax.zoo import default, rerank
    from fennec_jax.zoo.zoo import fit_zoo, load_proxy

    records = default._records()
    data = default.builder_task_data()
    encoder, _ = load_proxy("mobilenet_v2")
    # Every task's proxy features once: the history side of each zoo.
    feats = {t: encoder.embed_images(data[t].images) for t in records.tasks}
    embeddings = np.stack([task_embedding(feats[t], data[t].labels) for t in records.tasks])
    class_means = {t: np.stack([feats[t][data[t].labels == c].mean(0) for c in np.unique(data[t].labels)])
                   for t in records.tasks}
    held = _TASKS.value or list(records.tasks)
    rows = {"fennec zoo k=0 (proxy)": [], f"fennec zoo k={_PROBES.value} (proxy + probes)": [], "popularity": [],
            "spider (proxy class-mean tokens)": []}
    estimator, depth = _RERANK_ESTIMATOR.value, _RERANK.value
    validated = f"zoo k=0 + rerank top {depth} ({estimator}, weight validated in the history)"
    reranked = {f"zoo k=0 + rerank top {depth} ({estimator}, weight {w})": w for w in (rerank.DEFAULT_WEIGHT, 1.0)}
    every_model, chosen_weights = {}, []
    if depth:
        entries = rerank.read_weights_dir(default.default_weights(log=print))
        rows.update({validated: [], **{name: [] for name in reranked}, f"{estimator} (every model)": []})
        for t in records.tasks:  # each model's estimator score on each task: one forward pass each
            feats = rerank.candidate_features([entries[m] for m in records.models], data[t])
            every_model[t] = rerank.estimator_scores(estimator, feats, data[t].labels)
        index = {m: i for i, m in enumerate(records.models)}
        scorer = lambda task, names: every_model[task][[index[m] for m in names]]  # noqa: E731
    seconds, fit_seconds = [], []
    for i, name in enumerate(held):
        if name not in records.tasks:
            raise cli.InputError(f"--tasks: unknown task {name!r}; known: {', '.join(records.tasks)}")
        t = records.tasks.index(name)
        rest = [j for j in range(records.num_tasks) if j != t]
        history = records.select_tasks(rest)
        observed = records.mask[t]
        true = records.scores[t, observed]
        start = time.perf_counter()
        zoo = fit_zoo(history, task_proxies=embeddings[rest], proxy="mobilenet_v2")
        fit_seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        ranking = zoo.rank(data[name], encoder=encoder)  # the proxy pass over the task's data, as `rank` does
        seconds.append(time.perf_counter() - start)
        table = ranking.table
        rows["fennec zoo k=0 (proxy)"].append(_scores(true, table.predicted[observed], table.low[observed],
                                                      table.high[observed]))
        if depth:
            every = every_model[name]
            rows[f"{estimator} (every model)"].append(_scores(true, every[observed]))
            chosen = rerank.candidates(ranking, depth, entries)
            top = every[chosen]
            choice = rerank.validate_blend(zoo, scorer, entries, depth=depth, estimator=estimator).choose(depth)
            chosen_weights.append(dataclasses.asdict(choice))
            for label, weight in ((validated, choice.weight), *reranked.items()):
                ranked = rerank.reorder(ranking, chosen, top, weight=weight).table.order_scores()
                rows[label].append(_scores(true, ranked[observed]))
        probe_rows = []
        for seed in range(_PROBE_SEEDS.value):
            picks = np.random.default_rng([seed, t]).choice(np.flatnonzero(observed), _PROBES.value, replace=False)
            probed = zoo.rank(data[name], encoder=encoder,
                              probes={records.models[m]: records.scores[t, m] for m in picks}).table
            rest_models = observed.copy()
            rest_models[picks] = False
            probe_rows.append(_scores(records.scores[t, rest_models], probed.predicted[rest_models],
                                      probed.low[rest_models], probed.high[rest_models]))
        rows[f"fennec zoo k={_PROBES.value} (proxy + probes)"].append(
            {k: float(np.mean([r[k] for r in probe_rows])) for k in probe_rows[0]})
        popularity = get_method("popularity")
        pop = popularity.score(popularity.fit(history), TaskEvidence(metadata={"task": name}))
        rows["popularity"].append(_scores(true, np.asarray(pop)[observed]))
        spider = dataclasses.replace(get_method("spider"),
                                     task_proxies={records.tasks[j]: class_means[records.tasks[j]] for j in rest})
        pred = spider.score(spider.fit(history), TaskEvidence(proxy=class_means[name], metadata={"task": name}))
        rows["spider (proxy class-mean tokens)"].append(_scores(true, np.asarray(pred)[observed]))
        print(f"{i + 1}/{len(held)} {name}: zoo w.tau {rows['fennec zoo k=0 (proxy)'][-1]['weighted_tau']:.3f}, "
              f"spider {rows['spider (proxy class-mean tokens)'][-1]['weighted_tau']:.3f}, rank {seconds[-1]:.2f} s",
              flush=True)
    report = {"tasks": held, "models": records.num_models, "rows": {k: _summary(v) for k, v in rows.items()},
              "per_task": rows, "rank_seconds": {"median": float(np.median(seconds)), "max": float(np.max(seconds))},
              "fit_zoo_seconds": {"median": float(np.median(fit_seconds))},
              "validated_blend": dict(zip(held, chosen_weights))}
    lines = [f"# Leave-one-task-out through `Zoo.rank` ({len(held)} tasks, {records.num_models} models)", "",
             "| method | weighted tau | Kendall | top-1 regret | 80 % coverage |", "|---|---|---|---|---|"]
    for name, summary in report["rows"].items():
        cells = [f"{summary[k]['mean']:.3f} ± {summary[k]['se']:.3f}" if k in summary and summary[k]["se"] is not None
                 else (f"{summary[k]['mean']:.3f}" if k in summary else "n/a")
                 for k in ("weighted_tau", "kendall", "top1_regret", "coverage_80")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Rank seconds per new task (proxy pass included, encoder loaded once): median "
              f"{report['rank_seconds']['median']:.2f}, max {report['rank_seconds']['max']:.2f}; fit_zoo median "
              f"{report['fit_zoo_seconds']['median']:.1f} s."]
    if chosen_weights:
        picked = [c["weight"] for c in chosen_weights]
        lines.append(f"Blend weights chosen in the folds' histories: "
                     + ", ".join(f"{w:g} ({picked.count(w)} folds)" for w in sorted(set(picked))) + ".")
    os.makedirs(_OUT.value, exist_ok=True)
    atomic_io.write_json(os.path.join(_OUT.value, "report.json"), report)
    atomic_io.write_text(os.path.join(_OUT.value, "report.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    cli.run(main)
