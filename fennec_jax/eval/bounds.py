"""Bounds on leave-one-task-out ranking with k probes (issue #15): what a low-rank model, a
lucky probe set or the single best-matching history task could reach, beside the anchor.

``./run.sh bounds --benchmark=NAME`` (``experiments/bounds.py``) runs it on a bundled benchmark.

Same folds, probe draws and scored models as ``fennec_jax.eval.protocol.TasksOut``
(history = the other targets; ``protocol.probe_draw(candidates, k, seed, task)``; metrics from
``metrics.ranking_metrics`` on the raw scores of the target's evaluated models that are not
probes; mean over seeds per task, then mean ± standard error over tasks). All factor models
work on per-task z-scores (``records.standardize``: population std over the observed cells;
``--transform=normal``: normal scores of the ranks instead, ``records.normal_scores``).
Rows:

* ``popularity``, ``source_score``: the registered fixed rankings, recomputed here as a check
  that the folds, draws and metrics match the evaluation loop.
* ``anchor``: low-rank r = ``--anchor_rank`` factors of the history (masked ALS, target
  hidden), the model factors V[M, r] fixed; the target's task vector is the Gaussian posterior
  mean (a generalised ridge) given the k probes' true z-scores: prior mean and covariance =
  the mean and covariance of the history tasks' least-squares vectors on V, noise variance =
  the history's mean residual variance. k = 0 gives V @ prior mean (a rank-r popularity).
  The probes' z-scores use the target's mean and std over all its observed models (hindsight
  on the target's scale only; a user would not know them).
* ``anchor+lp``: the same with the MNLI linear probe (``mnli_linear_probe``, z-scored over the
  target's evaluated models, missing = 0) appended to V as one more fixed model feature.
* ``best of N sets`` / ``90th pct set`` (``--hindsight_sets`` = N): per task and k, N random
  k-probe sets (not the protocol's draws) scored by the anchor; the set with the highest
  weighted tau, and the sets at the 90th and 50th percentiles of weighted tau (the regret is that
  set's; the median set checks that these sets are drawn like the protocol's).
  k = 0 has no probes to choose: the anchor's value.
* ``oracle r=R``: masked ALS of rank R fitted to every observed cell, the target's included;
  the target's row of the reconstruction, scored on the non-probe models of each draw. An upper
  bound for "low-rank factors + a task vector from probes".
* ``nearest task (hindsight)``: the history task with the highest Pearson correlation to the
  target's z-scores over their common observed models; ranking by its z-scores (models it did
  not observe: its rank-r history completion). The mean of that maximal correlation is in
  ``signal``.
* ``best history task (hindsight)``: the history task whose z-scores rank the target best
  by weighted tau over all the target's evaluated models (the best single fixed ranking taken
  from one history task, chosen with hindsight).

"""

from __future__ import annotations

import numpy as np

from fennec_jax.core.evidence import TaskEvidence
from fennec_jax.core.records import Benchmark
from fennec_jax.eval import metrics, protocol
from fennec_jax.methods.base import get_method
from fennec_jax.methods.baselines import popularity_scores

__all__ = ["bounds", "table", "masked_als", "task_prior", "posterior_predictions", "ROW_ORDER"]

SET_SEED = 15_000  # the hindsight probe sets' rng: default_rng([SET_SEED, task, k]), apart from the protocol's
REPORTED = ("weighted_tau", "top1_regret")


# ----------------------------------------------------------------------------- factor models


def masked_als(z: np.ndarray, mask: np.ndarray, rank: int, l2: float = 1e-3, iters: int = 200,
               tol: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """``(U[T, r], V[M, r])`` minimising the squared error of ``U @ V.T`` on the ``mask``ed
    cells of ``z[T, M]`` plus ``l2 * (|U|^2 + |V|^2)``: alternating exact ridge solves, started
    from the truncated SVD of the zero-filled matrix (deterministic). Models (tasks) with no
    observed cell get zero factors."""
    w = mask.astype(np.float64)
    zf = np.where(mask, z, 0.0)
    rank = min(rank, *zf.shape)
    u, s, vt = np.linalg.svd(zf, full_matrices=False)
    U, V = u[:, :rank] * np.sqrt(s[:rank]), vt[:rank].T * np.sqrt(s[:rank])
    eye = l2 * np.eye(rank)
    last = np.inf
    for _ in range(iters):
        U = np.linalg.solve(np.einsum("tm,mr,ms->trs", w, V, V) + eye, (zf @ V)[..., None])[..., 0]
        V = np.linalg.solve(np.einsum("tm,tr,ts->mrs", w, U, U) + eye, (zf.T @ U)[..., None])[..., 0]
        loss = float((w * (zf - U @ V.T) ** 2).sum() + l2 * ((U ** 2).sum() + (V ** 2).sum()))
        if last - loss <= tol * max(loss, 1.0):
            break
        last = loss
    return U, V


def task_prior(z: np.ndarray, mask: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """``(mean[r], cov[r, r], noise)``: the mean and covariance (ddof = 1) over the tasks of
    ``z[T, M]`` of their least-squares vectors on ``features[M, r]`` over their observed models,
    and the tasks' mean residual variance."""
    vectors, residuals = [], []
    for row, seen in zip(z, mask):
        x, y = features[seen], row[seen]
        w = np.linalg.lstsq(x, y, rcond=None)[0]
        vectors.append(w)
        residuals.append(np.mean((y - x @ w) ** 2))
    vectors = np.asarray(vectors)
    cov = np.cov(vectors.T, ddof=1).reshape(features.shape[1], features.shape[1])
    return vectors.mean(0), cov + 1e-9 * np.eye(len(cov)), float(np.mean(residuals))


def posterior_predictions(features: np.ndarray, prior: tuple, probes: np.ndarray, probe_z: np.ndarray) -> np.ndarray:
    """``pred[B, M]`` = ``features @ w_b`` with ``w_b`` the posterior mean of the task vector
    given the probe z-scores ``probe_z[B, k]`` of models ``probes[B, k]`` (``prior`` from
    :func:`task_prior`); k = 0 gives the prior mean for every row."""
    mean, cov, noise = prior
    batch, k = probes.shape
    if k == 0:
        return np.broadcast_to(features @ mean, (batch, len(features))).copy()
    x = features[probes]  # [B, k, r]
    gram = np.einsum("bkr,rs,bjs->bkj", x, cov, x) + noise * np.eye(k)
    resid = probe_z - x @ mean
    w = mean + np.einsum("rs,bks,bk->br", cov, x, np.linalg.solve(gram, resid[..., None])[..., 0])
    return w @ features.T


# ----------------------------------------------------------------------------- scoring


def _metrics(true: np.ndarray, pred: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
    """``{weighted_tau, top1_regret}[B]`` of ``pred[B, N]`` against ``true[N]`` over ``valid[B, N]``."""
    values = metrics.ranking_metrics(np.broadcast_to(true, pred.shape), pred, valid)
    return {key: np.asarray(values[key], dtype=np.float64) for key in REPORTED}


def bounds(benchmark: Benchmark, probes=(0, 3, 5), seeds: int = 10, oracle_ranks=(1, 3, 5, 10), anchor_rank: int = 5,
           hindsight_sets: int = 200, l2: float = 1e-3, lp_column: str | None = "mnli_linear_probe",
           transform: str = "z", held_out=None, progress=print) -> dict:
    """Every row of the module docstring on ``benchmark`` (history = the other targets):
    ``{"rows": {ROW: {K: {"per_task": {TASK: {metric: v}}, "mean": {...}, "se": {...}}}},
    "signal": {...}, "config": {...}}``. ``lp_column``: the model metadata column of the
    ``anchor+lp`` and ``source_score`` rows (None or absent from the metadata: no such rows).
    ``transform``: ``'z'`` (z-scores, the default) or ``'normal'`` (normal scores of the
    ranks) for every factor-model row and the Pearson signal.
    ``held_out``: names of the targets held out in turn (default: all), as ``TasksOut.held_out``."""
    records = benchmark.records
    probes = tuple(int(k) for k in probes)
    z_all = records.transformed(transform)
    targets = benchmark.target_indices
    if held_out is not None:  # a subset of the targets held out in turn; history unchanged
        targets = [t for t in targets if records.tasks[t] in set(held_out)]
    pool = benchmark.history_tasks("targets")
    oracles = {}
    for rank in oracle_ranks:
        U, V = masked_als(z_all, records.mask, rank, l2)
        oracles[f"oracle r={rank}"] = U @ V.T
    lp = None
    if lp_column and lp_column in records.model_meta:
        lp = np.asarray(records.model_meta[lp_column], dtype=np.float64)
    source = get_method("source_score") if lp is not None else None
    rows: dict[str, dict[int, dict]] = {}
    signal = {"max_pearson": {}, "nearest": {}, "popularity_pearson": {}, "best_task": {}}

    def record(row, k, task, values):
        entry = rows.setdefault(row, {}).setdefault(k, {"per_task": {}})
        entry["per_task"][task] = {key: float(np.nanmean(v)) for key, v in values.items()}

    for ti in targets:
        task = records.tasks[ti]
        hist_idx = pool[pool != ti]
        hist = records.select_tasks(hist_idx)
        z_hist, m_hist = z_all[hist_idx], records.mask[hist_idx]
        cand = np.flatnonzero(benchmark.eval_mask[ti])
        true = records.scores[ti, cand]
        z_t = z_all[ti, cand]
        # Fixed predictions over the candidates, each scored on every (k, seed) draw.
        fixed = {"popularity": popularity_scores(hist)[cand]}
        if source is not None:
            fixed["source_score"] = np.asarray(source.score(source.fit(hist), TaskEvidence()), np.float64)[cand]
        for name, recon in oracles.items():
            fixed[name] = recon[ti, cand]
        U, V = masked_als(z_hist, m_hist, anchor_rank, l2)
        completed = np.where(m_hist, z_hist, U @ V.T)
        # Hindsight nearest task by Pearson over common observed models.
        corr = np.full(len(hist_idx), -np.inf)
        for j in range(len(hist_idx)):
            common = records.mask[ti] & m_hist[j]
            if common.sum() >= 3:
                corr[j] = np.corrcoef(z_all[ti, common], z_hist[j, common])[0, 1]
        nearest = int(np.argmax(corr))
        signal["max_pearson"][task] = float(corr[nearest])
        signal["nearest"][task] = records.tasks[hist_idx[nearest]]
        signal["popularity_pearson"][task] = float(np.corrcoef(z_t, fixed["popularity"])[0, 1])
        fixed["nearest task (hindsight)"] = completed[nearest, cand]
        whole = np.ones((len(hist_idx), len(cand)), bool)
        tau_by_task = _metrics(true, completed[:, cand], whole)["weighted_tau"]
        best = int(np.nanargmax(tau_by_task))
        signal["best_task"][task] = records.tasks[hist_idx[best]]
        fixed["best history task (hindsight)"] = completed[best, cand]
        # The anchor and anchor+lp.
        models = {"anchor": (V[cand], task_prior(z_hist[:, cand], m_hist[:, cand], V[cand]))}
        if lp is not None:
            lp_c = lp[cand]
            ok = np.isfinite(lp_c)
            lp_z = np.zeros(len(cand))
            if ok.sum() >= 2 and lp_c[ok].std() > 0:
                lp_z[ok] = (lp_c[ok] - lp_c[ok].mean()) / lp_c[ok].std()
            feats = np.column_stack([V[cand], lp_z])
            models["anchor+lp"] = (feats, task_prior(z_hist[:, cand], m_hist[:, cand], feats))
        for k in probes:
            draws = np.stack([np.searchsorted(cand, protocol.probe_draw(cand, k, s, int(ti))) for s in range(seeds)])
            valid = np.ones((seeds, len(cand)), bool)
            np.put_along_axis(valid, draws, False, axis=1)
            for name, pred in fixed.items():
                record(name, k, task, _metrics(true, np.broadcast_to(pred, valid.shape), valid))
            for name, (feats, prior) in models.items():
                pred = posterior_predictions(feats, prior, draws, z_t[draws])
                record(name, k, task, _metrics(true, pred, valid))
            # Hindsight over many probe sets: the best, 90th percentile and median set (anchor only).
            set_rows = {f"anchor, best of {hindsight_sets} sets": 1.0, "anchor, 90th pct set": 0.9,
                        "anchor, median set": 0.5}
            if k == 0:  # no probes to choose: the anchor's own value
                for name in set_rows:
                    rows.setdefault(name, {}).setdefault(0, {"per_task": {}})["per_task"][task] = dict(
                        rows["anchor"][0]["per_task"][task])
                continue
            rng = np.random.default_rng([SET_SEED, int(ti), k])
            sets = np.sort(np.argsort(rng.random((hindsight_sets, len(cand))), axis=1)[:, :k], axis=1)
            set_valid = np.ones((hindsight_sets, len(cand)), bool)
            np.put_along_axis(set_valid, sets, False, axis=1)
            feats, prior = models["anchor"]
            values = _metrics(true, posterior_predictions(feats, prior, sets, z_t[sets]), set_valid)
            order = np.argsort(np.nan_to_num(values["weighted_tau"], nan=-np.inf), kind="stable")
            for name, quantile in set_rows.items():
                pick = order[int(round(quantile * (hindsight_sets - 1)))]
                record(name, k, task, {key: v[pick:pick + 1] for key, v in values.items()})
        progress(f"{benchmark.name}: {task} done")

    for by_k in rows.values():
        for entry in by_k.values():
            per = list(entry["per_task"].values())
            entry["mean"] = {key: float(np.nanmean([p[key] for p in per])) for key in REPORTED}
            entry["se"] = {key: protocol.standard_error([p[key] for p in per]) for key in REPORTED}
    pearson = np.array(list(signal["max_pearson"].values()))
    pop = np.array(list(signal["popularity_pearson"].values()))
    signal["summary"] = {"max_pearson_mean": float(pearson.mean()), "max_pearson_se": protocol.standard_error(pearson),
                         "max_pearson_min": float(pearson.min()), "max_pearson_median": float(np.median(pearson)),
                         "popularity_pearson_mean": float(pop.mean()),
                         "popularity_pearson_se": protocol.standard_error(pop)}
    config = {"benchmark": benchmark.name, "probes": list(probes), "seeds": seeds, "oracle_ranks": list(oracle_ranks),
              "anchor_rank": anchor_rank, "hindsight_sets": hindsight_sets, "l2": l2, "history": "targets",
              "lp_column": lp_column if lp is not None else None, "set_seed": SET_SEED, "transform": transform}
    return {"config": config, "rows": rows, "signal": signal}


ROW_ORDER = ("popularity", "source_score", "anchor", "anchor+lp", "anchor, best of {n} sets", "anchor, 90th pct set",
             "anchor, median set", "oracle r={r}", "nearest task (hindsight)", "best history task (hindsight)")


def table(result: dict) -> str:
    """The markdown table: weighted tau ± se per k, and top-1 regret ± se per k."""
    rows, ks = result["rows"], result["config"]["probes"]
    names = []
    for pattern in ROW_ORDER:
        if "{r}" in pattern:
            names += [pattern.format(r=r) for r in result["config"]["oracle_ranks"]]
        else:
            names.append(pattern.format(n=result["config"]["hindsight_sets"]))
    head = ["row"] + [f"w.tau k = {k}" for k in ks] + [f"regret k = {k}" for k in ks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        if name not in rows:
            continue
        by_k = {int(k): v for k, v in rows[name].items()}
        cells = [f"{by_k[k]['mean']['weighted_tau']:.3f} ± {by_k[k]['se']['weighted_tau']:.3f}" for k in ks]
        cells += [f"{by_k[k]['mean']['top1_regret']:.1f} ± {by_k[k]['se']['top1_regret']:.1f}" for k in ks]
        lines.append("| " + " | ".join([name] + cells) + " |")
    s = result["signal"]["summary"]
    scores = {"z": "z-scores", "normal": "normal scores"}[result["config"].get("transform", "z")]
    lines += ["", f"Max Pearson (target vs its best-matching history task, {scores}, common observed models): "
                  f"mean {s['max_pearson_mean']:.3f} ± {s['max_pearson_se']:.3f}, "
                  f"median {s['max_pearson_median']:.3f}, min {s['max_pearson_min']:.3f}; "
                  f"Pearson with popularity: {s['popularity_pearson_mean']:.3f} ± "
                  f"{s['popularity_pearson_se']:.3f}."]
    return "\n".join(lines) + "\n"
