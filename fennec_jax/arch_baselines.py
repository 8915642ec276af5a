"""Cold-start ranking of architectures: baselines on hand-made graph features, and evaluation.

Two graph featurisations, both stateless functions of `graphs.ArchGraph` lists:

* `op_count_features`: ``x[G, len(OPS) + 3]``, how many nodes of each op type, plus the
  graph's node count, edge count and depth;
* `wl_features`: ``x[G, dim]``, counts of Weisfeiler-Lehman subtree labels
  (`wl_node_labels`, direction-aware, hashed to ``dim`` buckets; one iteration by
  default: on NAS-Bench-Graph's 6-node graphs two iterations already make labels
  nearly unique per graph, and ridge ranks worse, 0.39 vs 0.51 mean Kendall tau at
  n = 1000).

and two regressors from features to scores: ridge regression with its penalty chosen
per task by exact leave-one-out error (`fit_ridge`, `RidgeMap`), and scikit-learn
random forests. `FeatureRegression` pairs them into a cold-start method; `BASELINES`
names the three evaluated ones. `evaluate_cold_start` trains methods on n random
architectures and scores their rankings of the rest; `report_markdown` renders it.

Every cold-start method (these and `archi2vec.Archi2Vec`) shares one interface::

    state = method.fit(graphs[M], scores[T, M], mask[T, M], seed)
    pred = method.predict(state, graphs[G])      # pred[T, G], higher = better

Targets are the per-task normal scores of the observed training models' ranks
(`normal_scores`), so every task weighs the same and outliers do not dominate;
predictions are in those units (higher = better; only their order matters).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.stats

from fennec_jax import metrics
from fennec_jax.data import Records, standardize
from fennec_jax.graphs import ATTRS, OPS, ArchGraph

__all__ = [
    "op_count_features",
    "wl_node_labels",
    "wl_features",
    "normal_scores",
    "RidgeMap",
    "fit_ridge",
    "DEFAULT_L2_GRID",
    "FeatureRegression",
    "BASELINES",
    "check_graphs",
    "check_cold_start_inputs",
    "align_graphs",
    "evaluate_cold_start",
    "report_markdown",
    "hide_models",
    "model_folds",
    "family_popularity",
    "evaluate_models_out",
    "models_out_markdown",
]

# Penalties tried by `fit_ridge`, relative to the mean squared nonzero singular value of
# the standardised features (so the grid means the same at every n and width).
DEFAULT_L2_GRID = tuple(10.0 ** np.arange(-4.0, 2.5, 0.5))


# ----------------------------------------------------------------------------- features


def check_graphs(graphs: Sequence[ArchGraph]) -> None:
    """Raises ValueError unless graphs is a non-empty sequence of `ArchGraph`."""
    if isinstance(graphs, ArchGraph) or not len(graphs) or not all(isinstance(g, ArchGraph) for g in graphs):
        raise ValueError(f"graphs: expected a non-empty sequence of ArchGraph, got {type(graphs).__name__}")


def op_count_features(graphs: Sequence[ArchGraph]) -> np.ndarray:
    """``x[G, len(OPS) + 3]`` float32: per graph, the number of nodes of each op type,
    then its number of nodes, of edges, and its depth (edges on its longest path)."""
    check_graphs(graphs)
    ops, edges, graph_of_node = _concatenated(graphs)
    counts = np.bincount(graph_of_node * len(OPS) + ops, minlength=len(graphs) * len(OPS))
    depth = np.zeros(len(graphs))
    np.maximum.at(depth, graph_of_node, _longest_path_to(edges, len(ops)))
    shape = [[g.num_nodes, g.num_edges] for g in graphs]
    return np.concatenate([counts.reshape(len(graphs), len(OPS)), shape, depth[:, None]], 1).astype(np.float32)


def _concatenated(graphs: Sequence[ArchGraph]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ops[N], edges[E, 2], graph_of_node[N]) of all graphs, nodes renumbered in order."""
    sizes = np.array([g.num_nodes for g in graphs])
    offsets = np.cumsum(sizes) - sizes
    edges = np.concatenate([g.edges + offset for g, offset in zip(graphs, offsets)]).astype(np.int64)
    return np.concatenate([g.ops for g in graphs]), edges, np.repeat(np.arange(len(graphs)), sizes)


def _longest_path_to(edges: np.ndarray, num_nodes: int) -> np.ndarray:
    """[N] edges on the longest path ending at each node (Bellman-Ford style relaxation,
    at most N rounds, so a cycle cannot loop forever)."""
    depth = np.zeros(num_nodes)
    for _ in range(num_nodes):
        before = depth.copy()
        np.maximum.at(depth, edges[:, 1], depth[edges[:, 0]] + 1)
        if (depth == before).all():
            break
    return depth


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a well-spread uint64 hash of uint64[...] (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def wl_node_labels(graphs: Sequence[ArchGraph], iterations: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Weisfeiler-Lehman subtree labels of every node, as 64-bit hashes.

    Label 0 of a node hashes its op and its attributes (log2 of each present value,
    rounded to halves, so 64 and 65 channels share a label but 64 and 128 do not).
    Label k + 1 hashes label k with the multiset of the labels k of its predecessors
    and, separately, of its successors, so edge direction matters. Multisets are hashed
    as sums of per-element hashes, so labels do not depend on node order.

    Returns:
      (labels, graph_of_node): labels uint64[N, iterations + 1] for the N nodes of all
      graphs concatenated in order (the node order of `graphs.to_graphs_tuple`), and
      graph_of_node int[N].
    """
    check_graphs(graphs)
    if not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations: expected an int >= 0, got {iterations!r}")
    ops, edges, graph_of_node = _concatenated(graphs)
    attrs = np.concatenate([g.attrs for g in graphs])
    present = np.concatenate([g.attr_mask for g in graphs])
    levels = np.rint(2 * np.log2(1 + attrs.astype(np.float64))).astype(np.uint64)
    attr_ids = np.arange(1, len(ATTRS) + 1, dtype=np.uint64)
    attr_hashes = np.where(present, _mix((attr_ids << np.uint64(32)) | levels), np.uint64(0))
    label = _mix(_mix(ops.astype(np.uint64) + np.uint64(1)) + attr_hashes.sum(1, dtype=np.uint64))
    labels = [label]
    in_salt, out_salt = np.uint64(0x51ED27), np.uint64(0xA5A5A5)
    for _ in range(iterations):
        from_preds = np.zeros_like(label)
        from_succs = np.zeros_like(label)
        np.add.at(from_preds, edges[:, 1], _mix(label[edges[:, 0]] ^ in_salt))
        np.add.at(from_succs, edges[:, 0], _mix(label[edges[:, 1]] ^ out_salt))
        label = _mix(label + _mix(from_preds ^ in_salt) * np.uint64(3) + _mix(from_succs ^ out_salt) * np.uint64(5))
        labels.append(label)
    return np.stack(labels, 1), graph_of_node


def wl_features(graphs: Sequence[ArchGraph], iterations: int = 1, dim: int = 4096) -> np.ndarray:
    """``x[G, dim]`` float32: per graph, how many of its WL labels (all iterations,
    `wl_node_labels`) fall in each of ``dim`` hash buckets."""
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim: expected an int >= 1, got {dim!r}")
    labels, graph_of_node = wl_node_labels(graphs, iterations)
    buckets = (labels % np.uint64(dim)).astype(np.int64)
    flat = (graph_of_node[:, None] * dim + buckets).ravel()
    return np.bincount(flat, minlength=len(graphs) * dim).reshape(len(graphs), dim).astype(np.float32)


# ----------------------------------------------------------------------------- targets


def check_cold_start_inputs(graphs: Sequence[ArchGraph], scores: np.ndarray, mask: np.ndarray | None):
    """Validates ``fit`` arguments; returns (scores float64[T, M], mask bool[T, M])."""
    check_graphs(graphs)
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2 or scores.shape[1] != len(graphs):
        raise ValueError(f"scores: expected shape [T, M] with M = {len(graphs)} graphs, got {scores.shape}")
    mask = np.isfinite(scores) if mask is None else np.asarray(mask)
    if mask.shape != scores.shape or mask.dtype != np.bool_:
        raise ValueError(f"mask: expected a bool array of shape {scores.shape}, got {mask.dtype} {mask.shape}")
    if not np.isfinite(scores[mask]).all():
        raise ValueError("scores: non-finite values inside mask")
    few = np.flatnonzero(mask.sum(1) < 2)
    if len(few):
        raise ValueError(f"scores: tasks {few.tolist()} have fewer than 2 observed models; need 2 to standardise")
    return scores, mask


def normal_scores(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """z[T, M]: per task, the standard normal quantiles of the observed models' ranks.

    ``z = Phi^-1((rank - 0.5) / n)`` with average ranks for ties, over the n observed
    models of the task; 0 outside ``mask``. Robust to the long lower tails of accuracy
    tables (a few failed architectures no longer dominate a squared loss).
    """
    z = np.zeros(scores.shape)
    for t, observed in enumerate(mask):
        ranks = scipy.stats.rankdata(scores[t, observed])
        z[t, observed] = scipy.stats.norm.ppf((ranks - 0.5) / len(ranks))
    return z


# ----------------------------------------------------------------------------- regressors


@dataclasses.dataclass(frozen=True)
class RidgeMap:
    """Affine map ``y[G, D] = x[G, F] @ weights + bias``, fitted by `fit_ridge`.

    Attributes:
      weights: [F, D].
      bias: [D].
      l2: [D] the relative penalty each output column was fitted with.
    """

    weights: np.ndarray
    bias: np.ndarray
    l2: np.ndarray

    def apply(self, x: np.ndarray) -> np.ndarray:
        """y[G, D] for features x[G, F]."""
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.weights):
            raise ValueError(f"x: expected shape [G, {len(self.weights)}], got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("x: must be finite")
        return x @ self.weights + self.bias


def fit_ridge(
    x: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray | None = None,
    l2: float | Sequence[float] = DEFAULT_L2_GRID,
) -> RidgeMap:
    """Ridge regression of each column of ``y[M, D]`` on ``x[M, F]``, intercept unpenalised.

    Features are scaled to unit variance inside the fit (the returned map takes raw
    features). With several ``l2`` values, each output column gets the one with the
    lowest exact leave-one-out squared error (closed form from the SVD, no refits).
    ``l2`` is relative to the mean squared nonzero singular value of the centred, scaled
    features: 1.0 weighs the penalty like an average direction of the data.

    Args:
      x: [M, F] finite features, M >= 2.
      y: [M, D] targets; entries outside ``mask`` are ignored.
      mask: optional bool [M, D] observed targets (default all). Columns with different
        masks are fitted on their own observed rows.
      l2: one relative penalty > 0, or a grid of them.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) < 2:
        raise ValueError(f"x, y: expected [M, F] and [M, D] with the same M >= 2, got {x.shape} and {y.shape}")
    mask = np.ones(y.shape, bool) if mask is None else np.asarray(mask, bool)
    if mask.shape != y.shape:
        raise ValueError(f"mask: expected shape {y.shape}, got {mask.shape}")
    if not np.isfinite(x).all() or not np.isfinite(y[mask]).all():
        raise ValueError("x, y: must be finite (y inside mask)")
    grid = np.atleast_1d(np.asarray(l2, np.float64))
    if grid.ndim != 1 or not len(grid) or not (np.isfinite(grid) & (grid > 0)).all():
        raise ValueError(f"l2: expected positive finite penalties, got {l2!r}")
    weights = np.zeros((x.shape[1], y.shape[1]))
    bias, chosen = np.zeros(y.shape[1]), np.zeros(y.shape[1])
    # One SVD per distinct column mask (one in all when every target is observed).
    patterns, column_pattern = np.unique(mask.T, axis=0, return_inverse=True)
    for p, rows in enumerate(patterns):
        columns = np.flatnonzero(column_pattern.ravel() == p)
        if rows.sum() < 2:
            raise ValueError(f"y: columns {columns.tolist()} have fewer than 2 observed rows")
        weights[:, columns], bias[columns], chosen[columns] = _ridge_columns(x[rows], y[rows][:, columns], grid)
    return RidgeMap(weights, bias, chosen)


def _ridge_columns(x, y, grid):
    """(weights[F, D], bias[D], l2[D]) of ridge fits with leave-one-out choice of l2."""
    x_mean, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    xs = (x - x_mean) / scale
    y_mean = y.mean(0)
    yc = y - y_mean
    u, s, vt = _thin_svd(xs)
    alphas = grid * max((s**2).mean(), 1e-12)  # [A]
    shrink = s**2 / (s**2 + alphas[:, None])  # [A, K]
    uty = u.T @ yc  # [K, D]
    fitted = np.einsum("ik,ak,kd->aid", u, shrink, uty)  # [A, M, D]
    # Leave-one-out residual of a linear smoother: r_i / (1 - H_ii), with the intercept's 1/M.
    hat = (u**2) @ shrink.T + 1.0 / len(x)  # [M, A]
    loo = ((yc[None] - fitted) / (1.0 - hat.T[:, :, None])) ** 2
    best = loo.mean(1).argmin(0)  # [D]
    coef = vt.T @ ((s / (s**2 + alphas[best][:, None])).T * uty) / scale[:, None]  # [F, D]
    return coef, y_mean - x_mean @ coef, grid[best]


def _thin_svd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u[M, K], s[K], vt[K, F]) of x[M, F], from the eigendecomposition of the smaller
    Gram matrix (much faster than an SVD when F >> M or M >> F); directions with
    negligible singular values are dropped (ridge shrinks them to zero anyway)."""
    wide = x.shape[1] > x.shape[0]
    evals, evecs = np.linalg.eigh(x @ x.T if wide else x.T @ x)
    keep = evals > 1e-10 * max(evals.max(), 1e-300)
    s, evecs = np.sqrt(evals[keep]), evecs[:, keep]
    if wide:
        return evecs, s, (evecs.T @ x) / s[:, None]
    return (x @ evecs) / s, s, evecs.T


def _fit_forests(x: np.ndarray, y: np.ndarray, mask: np.ndarray, seed: int, trees: int) -> list:
    """One random forest per column of y[M, D], on that column's observed rows (per-task
    forests rank clearly better than one multi-output forest: 0.607 vs 0.588 mean Kendall
    tau on NAS-Bench-Graph at n = 1000)."""
    from sklearn.ensemble import RandomForestRegressor  # imported on use: sklearn is slow to import

    return [
        RandomForestRegressor(n_estimators=trees, max_features=0.3, min_samples_leaf=2, random_state=seed)
        .fit(x[mask[:, d]], y[mask[:, d], d])
        for d in range(y.shape[1])
    ]


# ----------------------------------------------------------------------------- methods


@dataclasses.dataclass(frozen=True)
class FeatureRegression:
    """Cold-start method: graph features -> standardised task scores (module docstring).

    Attributes:
      featurize: graphs[G] -> features[G, F].
      regressor: ``"ridge"`` (`fit_ridge`, l2 by leave-one-out) or ``"forest"``
        (scikit-learn random forests, one per task).
      trees: number of trees of each forest.
    """

    featurize: Callable[[Sequence[ArchGraph]], np.ndarray]
    regressor: str = "ridge"
    trees: int = 100

    def __post_init__(self):
        if self.regressor not in ("ridge", "forest"):
            raise ValueError(f"regressor: expected 'ridge' or 'forest', got {self.regressor!r}")

    def fit(self, graphs: Sequence[ArchGraph], scores: np.ndarray, mask: np.ndarray | None = None, seed: int = 0):
        scores, mask = check_cold_start_inputs(graphs, scores, mask)
        x, z = self.featurize(graphs), normal_scores(scores, mask).T
        if self.regressor == "ridge":
            return fit_ridge(x, z, mask.T)
        return _fit_forests(x, z, mask.T, seed, self.trees)

    def predict(self, state, graphs: Sequence[ArchGraph]) -> np.ndarray:
        """pred[T, G]: predicted normal scores (`normal_scores` units), higher = better."""
        x = self.featurize(graphs)
        if self.regressor == "ridge":
            return state.apply(x).T
        return np.stack([forest.predict(x) for forest in state])


def _both_features(graphs: Sequence[ArchGraph]) -> np.ndarray:
    return np.concatenate([op_count_features(graphs), wl_features(graphs)], 1)


BASELINES = {
    "opcount_ridge": FeatureRegression(op_count_features, "ridge"),
    "wl_ridge": FeatureRegression(wl_features, "ridge"),
    "both_rf": FeatureRegression(_both_features, "forest"),
}


# ----------------------------------------------------------------------------- evaluation


def align_graphs(models: Sequence[str], graphs: Sequence[ArchGraph], source: str) -> list[ArchGraph]:
    """The graph of each model, in the order of ``models``, matched by name.

    Graphs of models not in ``models`` are allowed (a zoo may have graphs without records).

    Raises:
      ValueError: a graph name occurs twice in ``source``, or a model has no graph there
        (the message names the model and ``source``).
    """
    by_name: dict[str, ArchGraph] = {}
    for graph in graphs:
        if graph.name in by_name:
            raise ValueError(f"{source}: graph {graph.name!r} occurs twice")
        by_name[graph.name] = graph
    missing = [m for m in models if m not in by_name]
    if missing:
        raise ValueError(f"{source}: no graph for model {missing[0]!r}"
                         + (f" (and {len(missing) - 1} more models)" if len(missing) > 1 else ""))
    return [by_name[m] for m in models]


def evaluate_cold_start(
    methods: Mapping[str, Any],
    graphs: Sequence[ArchGraph],
    scores: np.ndarray,
    tasks: Sequence[str],
    train_sizes: Sequence[int],
    seeds: int,
    mask: np.ndarray | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Cold-start evaluation: fit on n random architectures, rank all the others.

    For each train size n and seed s, the same random n of the M models (drawn with
    ``numpy.random.default_rng(s)``) train every method on all their task scores; each
    method then predicts the held-out M - n models, scored per task by Kendall's tau-b
    and Spearman's rho over the held-out models observed on that task.

    Args:
      methods: name -> method with ``fit(graphs, scores, mask, seed)`` and
        ``predict(state, graphs) -> pred[T, G]`` (module docstring).
      graphs: [M] architectures, in the order of the columns of scores.
      scores: [T, M] task scores (higher = better), NaN where missing.
      tasks: [T] task names.
      train_sizes: each n in [2, M - 2].
      seeds: number of random train sets per n.
      mask: optional bool [T, M] observed scores (default: finite entries).
      progress: called with a short label after each fit.

    Returns:
      ``{"results": {method: {str(n): {"mean": {"kendall", "spearman"}, "per_task":
      {task: {"kendall", "spearman"}}, "seed_means": {"kendall": [S], "spearman": [S]},
      "fit_predict_seconds": float}}}, "num_models", "tasks", "train_sizes", "seeds"}``;
      values are means over seeds (and over tasks for "mean").
    """
    scores, mask = check_cold_start_inputs(graphs, scores, mask)
    if len(tasks) != len(scores):
        raise ValueError(f"tasks: expected {len(scores)} names, got {len(tasks)}")
    num_models = len(graphs)
    sizes = [int(n) for n in train_sizes]
    if not sizes or any(not 2 <= n <= num_models - 2 for n in sizes):
        raise ValueError(f"train_sizes: expected sizes in [2, {num_models - 2}], got {list(train_sizes)}")
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds: expected an int >= 1, got {seeds!r}")
    results: dict = {name: {} for name in methods}
    for n in sizes:
        values = {name: np.zeros((seeds, 2, len(tasks))) for name in methods}  # [S, kendall|spearman, T]
        seconds = dict.fromkeys(methods, 0.0)
        for seed in range(seeds):
            order = np.random.default_rng(seed).permutation(num_models)
            train, test = order[:n], order[n:]
            train_graphs, test_graphs = [graphs[i] for i in train], [graphs[i] for i in test]
            true, test_mask = scores[:, test], mask[:, test]
            for name, method in methods.items():
                start = time.perf_counter()
                state = method.fit(train_graphs, scores[:, train], mask[:, train], seed)
                pred = np.asarray(method.predict(state, test_graphs), np.float64)
                seconds[name] += time.perf_counter() - start
                if pred.shape != true.shape or not np.isfinite(pred).all():
                    raise ValueError(f"method {name!r}: expected finite predictions of shape {true.shape}, "
                                     f"got {pred.shape}")
                filled = np.where(test_mask, true, 0.0)
                values[name][seed, 0] = metrics.kendall_tau(filled, pred, test_mask)
                values[name][seed, 1] = metrics.spearman(filled, pred, test_mask)
                if progress is not None:
                    progress(f"{name} n={n} seed={seed}")
        for name in methods:
            per_seed = values[name]
            by_task = per_seed.mean(0)  # [2, T]
            results[name][str(n)] = {
                "mean": {"kendall": float(by_task[0].mean()), "spearman": float(by_task[1].mean())},
                "per_task": {task: {"kendall": float(by_task[0, t]), "spearman": float(by_task[1, t])}
                             for t, task in enumerate(tasks)},
                "seed_means": {"kendall": per_seed[:, 0].mean(1).tolist(), "spearman": per_seed[:, 1].mean(1).tolist()},
                "fit_predict_seconds": seconds[name],
            }
    return {"results": results, "num_models": num_models, "tasks": list(tasks), "train_sizes": sizes, "seeds": seeds}


def report_markdown(report: dict) -> str:
    """Markdown tables of an `evaluate_cold_start` report: mean Kendall tau (± std over
    seeds) and Spearman rho per method and train size, then Kendall tau per task."""
    sizes = [str(n) for n in report["train_sizes"]]
    lines = [
        f"# Cold-start ranking of held-out architectures ({report['num_models']} models, "
        f"{len(report['tasks'])} tasks, {report['seeds']} seeds)",
        "",
        "Mean over tasks of Kendall tau-b (± std over seeds) / Spearman rho on the held-out models.",
        "",
        "| method | " + " | ".join(f"n = {n}" for n in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for name, by_size in report["results"].items():
        cells = []
        for n in sizes:
            row = by_size[n]
            cells.append(f"{row['mean']['kendall']:.3f} ± {np.std(row['seed_means']['kendall']):.3f} / "
                         f"{row['mean']['spearman']:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Per task (Kendall tau-b)", ""]
    header = [f"{name} n={n}" for name in report["results"] for n in sizes]
    lines += ["| task | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for task in report["tasks"]:
        cells = [f"{report['results'][name][n]['per_task'][task]['kendall']:.3f}"
                 for name in report["results"] for n in sizes]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- models without records


def hide_models(records: Records, hidden: np.ndarray) -> Records:
    """``records`` with every cell of the models ``hidden`` (indices) unobserved; the
    models stay (names, metadata), so a method can still place them from side information."""
    mask, scores, counts = records.mask.copy(), records.scores.copy(), records.counts.copy()
    mask[:, hidden], scores[:, hidden], counts[:, hidden] = False, np.nan, 0
    return dataclasses.replace(records, scores=scores, mask=mask, counts=counts)


def model_folds(num_models: int, num_folds: int, seed: int, groups: Sequence[str] | None = None) -> list[np.ndarray]:
    """Index arrays partitioning range(num_models): ``num_folds`` random folds of near-equal
    size, or with ``groups[M]`` one fold per distinct group (e.g. per architecture family)."""
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (num_models,):
            raise ValueError(f"groups: expected {num_models} labels, got shape {groups.shape}")
        return [np.flatnonzero(groups == g) for g in dict.fromkeys(groups.tolist())]
    if not 2 <= num_folds <= num_models:
        raise ValueError(f"num_folds: expected 2..{num_models}, got {num_folds}")
    order = np.random.default_rng(seed).permutation(num_models)
    return [np.sort(fold) for fold in np.array_split(order, num_folds)]


def family_popularity(history: Records, family: Sequence[str], embeddings: np.ndarray | None = None) -> np.ndarray:
    """``pred[T, M]``: each model's score on each task predicted as the mean z-score
    (`data.standardize`) of the observed models of its family on that task; for a family
    with no observed model, the family whose mean graph embedding (``embeddings[M, E]``) is
    nearest (Euclidean), or without embeddings the mean over all observed models."""
    family = np.asarray(family)
    if family.shape != (history.num_models,):
        raise ValueError(f"family: expected {history.num_models} labels, got shape {family.shape}")
    z = np.where(history.mask, standardize(history.scores, history.mask), 0.0)
    seen = history.mask.any(0)
    names = list(dict.fromkeys(family.tolist()))
    means, centres = {}, {}
    for name in names:
        members = (family == name) & seen
        if members.any():
            means[name] = z[:, members].sum(1) / np.maximum(history.mask[:, members].sum(1), 1)
            if embeddings is not None:
                centres[name] = np.asarray(embeddings)[members].mean(0)
    overall = z.sum(1) / np.maximum(history.mask.sum(1), 1)
    pred = np.zeros(history.scores.shape)
    for m, name in enumerate(family):
        if name not in means and centres:
            name = min(centres, key=lambda f: np.linalg.norm(centres[f] - np.asarray(embeddings)[m]))
        pred[:, m] = means.get(name, overall)
    return pred


def evaluate_models_out(
    records: Records,
    predictors: Mapping[str, Callable[[Records], np.ndarray]],
    folds: Sequence[np.ndarray],
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Cold-start models: for each fold, every cell of its models is hidden (`hide_models`)
    and each predictor, given that history, predicts ``pred[T, M]``; the fold's columns are
    kept. Scores each predictor's assembled predictions against the records, per task over
    the models observed on it: Kendall tau-b and weighted tau (`metrics`).

    Returns:
      ``{"results": {name: {"mean": {"kendall", "weighted_tau"}, "per_task": {task:
      {"kendall", "weighted_tau"}}, "seconds": float}}, "num_models", "tasks", "folds"}``
      (means over tasks with at least 2 observed models).
    """
    if not folds or np.sort(np.concatenate(folds)).tolist() != list(range(records.num_models)):
        raise ValueError(f"folds: expected a partition of the {records.num_models} models")
    results = {}
    for name, predictor in predictors.items():
        pred, seconds = np.zeros(records.scores.shape), 0.0
        for i, fold in enumerate(folds):
            start = time.perf_counter()
            fold_pred = np.asarray(predictor(hide_models(records, fold)), np.float64)
            seconds += time.perf_counter() - start
            if fold_pred.shape != pred.shape or not np.isfinite(fold_pred[:, fold]).all():
                raise ValueError(f"predictor {name!r}: expected finite predictions of shape {pred.shape}")
            pred[:, fold] = fold_pred[:, fold]
            if progress is not None:
                progress(f"{name} fold {i}")
        true = np.where(records.mask, records.scores, 0.0)
        kendall = np.asarray(metrics.kendall_tau(true, pred, records.mask), np.float64)
        weighted = np.asarray(metrics.weighted_tau(true, pred, records.mask), np.float64)
        scored = records.mask.sum(1) >= 2
        results[name] = {
            "mean": {"kendall": float(kendall[scored].mean()), "weighted_tau": float(weighted[scored].mean())},
            "per_task": {task: {"kendall": float(kendall[t]), "weighted_tau": float(weighted[t])}
                         for t, task in enumerate(records.tasks) if scored[t]},
            "seconds": seconds,
        }
    return {"results": results, "num_models": records.num_models, "tasks": list(records.tasks),
            "folds": [fold.tolist() for fold in folds]}


def models_out_markdown(report: dict) -> str:
    """Markdown table of an `evaluate_models_out` report: per predictor, the mean over tasks
    of Kendall tau-b and weighted tau, and its fit + predict seconds."""
    lines = [
        "| predictor | Kendall tau | weighted tau | seconds |",
        "|---|---|---|---|",
    ]
    for name, row in report["results"].items():
        lines.append(f"| {name} | {row['mean']['kendall']:.3f} | {row['mean']['weighted_tau']:.3f} | "
                     f"{row['seconds']:.1f} |")
    return "\n".join(lines) + "\n"
