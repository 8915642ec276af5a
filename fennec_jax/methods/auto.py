"""``auto``: the ranking method chosen for the zoo at hand by validation inside its history.

A user's zoo is not the benchmarks a method was tuned on: which method ranks best (popularity,
neighbours over the probes, a transfer space with or without side information, a fixed
ranking by model size or source score) depends on the zoo and on k, the number of probe
fine-tunes the user brings. ``auto`` decides from the history alone::

    auto = get_method("auto")                        # or auto:candidates=popularity/knn_task+probes=0/3
    state = auto.fit(history, seed=0)                # validates every candidate, fits the chosen ones
    print(auto.report(state))                        # what was chosen per k, and the figures behind it
    scores = auto.score(state, evidence)             # the choice for evidence.k scores the task

**Nested validation.** The history tasks with at least ``max(probes) + 3`` observed models
are split at random into ``folds`` groups (at most one per task), so each is held out once.
For each group, every candidate is fitted on the history without those tasks (``seed`` as
given), and each held-out task is scored exactly as a new task is: its name, metadata and
proxy embedding, plus k probe models drawn at random with their true scores
(:func:`fennec_jax.eval.protocol.validation_draws`: one draw at k = 0, ``draws`` draws for each
k > 0 of ``probes``; the same draws for every candidate). The weighted tau over the task's
observed non-probe models (:func:`~fennec_jax.eval.protocol.validation_tau`, undefined draws
left out), averaged over draws, gives ``tau[k, candidate, task]``. With more than
``validation_models`` models the validation runs on a random subset of that many (fennec's
own validation does the same). ``fit`` sees only the records it is given: under the evaluation
loop those never hold the task being ranked.

**The choice, per k.** The reference is the first candidate that was fitted and scored on
every fold (``popularity`` by default: the simplest). The configurations of one spec (the
``fennec`` grid) first compete among themselves on the mean over all validated k, as fennec's
own validation chooses; only the best enters the choice, so 24 grid configurations do not
get 24 chances to beat the reference by luck. A candidate is eligible at k when its mean
paired difference to the reference over the held-out tasks exceeds ``margin`` (default 1)
standard errors of that difference and ``min_gain`` (0.005 weighted tau: candidates equal to
the reference up to rounding, as every default one is at k = 0 without metadata, do not
displace it). The chosen candidate is the eligible one with the largest mean difference, else
the reference; ties keep the earlier candidate. With fewer than 3 history tasks or fewer than
2 that can be held out nothing is validated and the first candidate that fits is chosen.
Only the chosen candidates are fitted on the full history (a transfer space fitted on the
full history along with the folds is reused). At score time the choice for the validated k
nearest to ``evidence.k`` (ties: the smaller) scores the task: with the default probes
(0, 3, 5), k = 1 uses the k = 0 choice (every default candidate treats one probe like none:
one score carries no ranking), k = 2 and 4 that of 3, k > 5 that of 5.

**Candidates** are method specs (``NAME`` or ``NAME:key=value``; inside a candidate, ``&``
separates its config items, since ``+`` separates auto's own; ``/`` or ``|`` separate the
candidates). Default: ``popularity``, ``knn_task``, ``fennec`` (the grid preset),
``fennec:preset=mf``, ``size``, ``source_score``, and ``popularity`` and ``knn_task`` on
rank-based normal scores (``transform=normal``: a task's order kept, its spacing forgotten, so
a long lower tail of failed fine-tunes does not dominate the average; whether that helps
depends on the zoo, so validation decides). A candidate whose ``fit`` (or ``score``)
raises :class:`~fennec_jax.core.evidence.MissingEvidenceError` (``size`` without a size column,
``source_score`` without a source score, an estimator without features) is left out where it
raises (on that fold, or everywhere) and the report says why; default candidates that are not
registered are left out silently. The ``fennec`` grid is validated as its configurations
(``fennec[d=..,d_data=..,probe_l2=..,affinity=..]``); configurations that differ only at score
time share one fit, and every fold of a transfer space plus its fit on the full history run as
one vmapped batch with fennec's own fitting functions (one compilation per array shape; the
grid costs what one ``fennec`` fit costs). Transfer spaces see the held-out tasks hidden by
their mask, as fennec's own validation hides them (no scores; name and metadata stay, which a
new task has too); other candidates, and all of them when the history carries proxy
embeddings (a proxy map would be fitted to the hidden tasks too), see them removed.

State (:class:`AutoState`): the validated k, the chosen candidate per k, the validation table
(mean ± se of the weighted tau per candidate per k, and the paired difference to the
reference ± se), the candidates left out and why, and the chosen candidates' states. ``save``
writes ``auto/`` (an orbax checkpoint of the table and choices) and ``methods/<i>/`` (each
chosen candidate's own checkpoint) into one folder, atomically; ``restore`` rebuilds the
candidates from this method's configuration and refuses a checkpoint made with others.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from fennec_jax.core.evidence import MissingEvidenceError, TaskEvidence
from fennec_jax.core.records import Records
from fennec_jax.methods.base import MethodBase, register

__all__ = ["Auto", "AutoState", "DEFAULT_CANDIDATES", "FORMAT", "report"]

DEFAULT_CANDIDATES = ("popularity", "knn_task", "fennec", "fennec:preset=mf", "size", "source_score",
                      "popularity:transform=normal", "knn_task:transform=normal")
FORMAT = "fennec_jax.auto/1"


@dataclasses.dataclass(frozen=True)
class _Candidate:
    """One validated candidate, from the method spec ``spec`` (whose method is ``base``).
    ``method`` scores it; ``group`` names its fit (candidates of one group share one fit of
    ``fit_method``); for a transfer space (``space``) ``config`` is its fennec ``SpaceConfig``,
    which replaces the fitted space's config (grid configurations differing only at score time
    share a fit)."""

    label: str
    spec: str
    base: Any
    method: Any
    fit_method: Any
    config: Any = None
    space: bool = False

    @property
    def group(self) -> str:
        return f"{self.spec}#{self.config.fit_key()}" if self.space else self.label

    def derive(self, state):
        return state if self.config is None else dataclasses.replace(state, config=self.config)


@dataclasses.dataclass(frozen=True)
class AutoState:
    """What ``auto`` chose and why.

    Attributes:
      probes: the validated values of k, ascending.
      chosen: the chosen candidate's label per k of ``probes``.
      reference: the candidate every other must beat (the first available one).
      table: one row per (candidate, k): ``{"candidate", "k", "mean", "se", "diff", "diff_se",
        "tasks"}``: weighted tau mean and standard error over the held-out tasks, and the mean
        paired difference to the reference with its standard error (NaN where undefined).
      skipped: candidate label -> why it was left out (entirely or on some folds).
      validation: ``{"folds", "held_out", "models", "draws", "margin", "min_gain"}`` (0 folds: no
        validation).
      methods, states: label -> method and its fitted state, for the chosen candidates.
    """

    probes: tuple[int, ...]
    chosen: tuple[str, ...]
    reference: str
    table: tuple[dict, ...]
    skipped: dict
    validation: dict
    methods: dict
    states: dict

    def choice(self, k: int) -> str:
        """The chosen label for a task with k probes: that of the nearest validated k (ties: the smaller)."""
        i = min(range(len(self.probes)), key=lambda j: (abs(self.probes[j] - k), self.probes[j]))
        return self.chosen[i]


@register("auto")
@dataclasses.dataclass(frozen=True)
class Auto(MethodBase):
    """The method chosen per k by nested validation inside the history (module docstring).

    Configuration: ``candidates`` (method specs, the first is the reference; on the command
    line ``/`` or ``|`` between them, ``&`` between a candidate's own config items),
    ``probes`` (the k validated), ``folds`` (groups of held-out history tasks), ``draws``
    (probe draws per held-out task and k > 0), ``validation_models`` (model subset for the
    validation), ``margin`` (standard errors a candidate must beat the reference by) and
    ``min_gain`` (the weighted tau it must beat it by in any case).
    """

    candidates: tuple[str, ...] = DEFAULT_CANDIDATES
    probes: tuple[int, ...] = (0, 3, 5)
    folds: int = 5
    draws: int = 2
    validation_models: int = 1024
    margin: float = 1.0
    min_gain: float = 0.005
    name: str = "auto"

    def __post_init__(self):
        specs = tuple(s.strip() for c in self.candidates for s in str(c).split("|") if s.strip())
        object.__setattr__(self, "candidates", specs)
        object.__setattr__(self, "probes", tuple(sorted({int(k) for k in self.probes})))
        if not specs:
            raise ValueError("auto: candidates must name at least one method")
        if any(s.partition(":")[0].strip() == "auto" for s in specs):
            raise ValueError("auto: 'auto' cannot be its own candidate")
        if not self.probes or self.probes[0] < 0:
            raise ValueError(f"auto: probes must be non-negative integers, got {self.probes}")
        if self.folds < 2 or self.draws < 1 or self.validation_models < 2:
            raise ValueError(f"auto: need folds >= 2, draws >= 1, validation_models >= 2; got folds={self.folds}, "
                             f"draws={self.draws}, validation_models={self.validation_models}")
        if not (np.isfinite(self.margin) and self.margin >= 0 and np.isfinite(self.min_gain) and self.min_gain >= 0):
            raise ValueError(f"auto: margin and min_gain must be finite and >= 0, got {self.margin}, {self.min_gain}")

    # ------------------------------------------------------------------ candidates

    def candidate_list(self) -> list[_Candidate]:
        """The candidates in order, the fennec grid expanded into its configurations."""
        from fennec_jax.methods.base import METHODS, method_from_spec
        from fennec_jax.methods.fennec import Fennec

        out = []
        for spec in self.candidates:
            name = spec.partition(":")[0].strip()
            if name not in METHODS:
                if self.candidates == DEFAULT_CANDIDATES:
                    continue  # a default baseline not registered in this version
                raise ValueError(f"auto: unknown candidate method {name!r} in {spec!r}")
            method = method_from_spec(spec.replace("&", "+"))
            if isinstance(method, Fennec):
                configs = method.space_configs
                for c in configs:
                    label = spec if len(configs) == 1 else (f"{spec}[d={c.d},d_data={c.d_data},probe_l2={c.probe_l2:g},"
                                                            f"affinity={c.affinity_weight:g}]")
                    first = next(x for x in configs if x.fit_key() == c.fit_key())
                    out.append(_Candidate(label, spec, method, dataclasses.replace(method, configs=(c,), name=label),
                                          dataclasses.replace(method, configs=(first,)), c, True))
            else:
                out.append(_Candidate(spec, spec, method, method, method))
        if len({c.label for c in out}) != len(out):
            raise ValueError(f"auto: candidates repeat: {list(self.candidates)}")
        if not out:
            raise ValueError(f"auto: none of the candidates {list(self.candidates)} is registered")
        return out

    # ------------------------------------------------------------------ fit

    def fit(self, history: Records, seed: int = 0) -> AutoState:
        cands = self.candidate_list()
        skipped: dict[str, str] = {}
        tau, complete, held_out, num_folds, num_models, full = self._validate(history, cands, seed, skipped)
        rows, orders = [], []
        ref = next((c for c in range(len(cands)) if complete[c]), None) if tau.size else None
        # A spec's configurations (the fennec grid) compete among themselves on every k pooled,
        # as fennec's own validation chooses; only the spec's best enters the choice per k.
        pooled = np.zeros(len(cands))
        if tau.size:
            ok = np.isfinite(tau)
            with np.errstate(invalid="ignore", divide="ignore"):
                per_k = np.where(ok, tau, 0.0).sum(2) / ok.sum(2)  # [K, C], NaN where no task
                pooled = np.where(np.isfinite(per_k), per_k, 0.0).sum(0) / np.isfinite(per_k).sum(0)
        best = {}
        for c, cand in enumerate(cands):
            b = best.get(cand.spec)
            if b is None or np.nan_to_num(pooled[c], nan=-np.inf) > np.nan_to_num(pooled[b], nan=-np.inf):
                best[cand.spec] = c
        for ki, k in enumerate(self.probes):
            ranked = []
            for c, cand in enumerate(cands):
                row = _row(tau[ki, c] if tau.size else np.zeros(0), tau[ki, ref] if ref is not None else None)
                rows.append({"candidate": cand.label, "k": int(k), **row, "competes": best[cand.spec] == c})
                if (ref is not None and c != ref and best[cand.spec] == c and row["tasks"] >= 2
                        and row["diff"] > max(self.margin * row["diff_se"], self.min_gain)):
                    ranked.append((-row["diff"], c))
            order = [c for _, c in sorted(ranked)] + ([ref] if ref is not None else [])
            orders.append(order + [c for c in range(len(cands)) if c not in order])
        methods, states, chosen = {}, {}, []
        for order in orders:  # the first of each k's order that fits the full history
            for c in order:
                cand = cands[c]
                if cand.group not in full:
                    try:
                        full[cand.group] = cand.fit_method.fit(history, seed=seed)
                    except MissingEvidenceError as err:
                        full[cand.group] = None
                        skipped.setdefault(cand.label, f"fit on the full history: {err}")
                if full[cand.group] is not None:
                    methods[cand.label], states[cand.label] = cand.method, cand.derive(full[cand.group])
                    chosen.append(cand.label)
                    break
            else:
                raise MissingEvidenceError(f"auto: no candidate of {list(self.candidates)} can be fitted "
                                           f"on this history: {skipped}")
        reference = cands[ref].label if ref is not None else chosen[0]
        validation = {"folds": int(num_folds), "held_out": int(held_out), "models": int(num_models),
                      "draws": int(self.draws), "margin": float(self.margin), "min_gain": float(self.min_gain)}
        return AutoState(probes=self.probes, chosen=tuple(chosen), reference=reference, table=tuple(rows),
                         skipped=skipped, validation=validation, methods=methods, states=states)

    def _validate(self, history: Records, cands: list[_Candidate], seed: int, skipped: dict):
        """``(tau[K, C, E], complete[C], E, folds, models, full)``: per-task validation weighted
        tau over the E held-out tasks (NaN: the candidate left out there, or every draw
        undefined); which candidates were fitted and scored on every fold (``tau`` empty without
        validation); and ``full``: fit group -> state fitted on the full history along the way
        (transfer spaces, when the validation used every model)."""
        from fennec_jax.eval.protocol import validation_draws

        rng = np.random.default_rng([seed, 23])
        valid = history
        if history.num_models > self.validation_models:
            keep = np.sort(rng.choice(history.num_models, self.validation_models, replace=False))
            valid = history.select_models(keep)
        eligible = np.flatnonzero(valid.mask.sum(1) >= max(self.probes) + 3)
        if history.num_tasks < 3 or eligible.size < 2:
            return np.zeros(0), np.zeros(len(cands), bool), 0, 0, valid.num_models, {}
        folds = np.array_split(rng.permutation(eligible), min(self.folds, eligible.size))
        # Transfer spaces: every fold (held-out tasks hidden by their mask) and the full history
        # in one batch per spec, as fennec's own validation fits its grid. Not with proxy
        # embeddings: the proxy map would be fitted to the hidden tasks' vectors too.
        spaces: dict[str, dict | None] = {}
        if "proxy" not in valid.task_side:
            masks = np.repeat(valid.mask[None], 1 + len(folds), 0)
            for f, fold in enumerate(folds, start=1):
                masks[f, fold] = False
            for cand in cands:
                if cand.space and cand.spec not in spaces:
                    try:
                        spaces[cand.spec] = _space_batch(cand.base, valid, masks, seed)
                    except MissingEvidenceError as err:
                        spaces[cand.spec] = None
                        skipped.setdefault(cand.label, str(err))
        column = {int(t): e for e, t in enumerate(eligible)}
        kindex = {k: i for i, k in enumerate(self.probes)}
        num_k, num_c, num_e = len(self.probes), len(cands), eligible.size
        tau = np.full((num_k, num_c, num_e), np.nan)
        complete = np.ones(num_c, bool)  # fitted and scored on every fold
        truth = np.where(valid.mask, valid.scores, 0.0)
        for f, fold in enumerate(folds, start=1):
            inner = valid.select_tasks(np.setdiff1d(np.arange(valid.num_tasks), fold))
            evidences, trues, valids, groups = [], [], [], []  # groups: k index * E + held-out column
            for t in fold:
                observed = np.flatnonzero(valid.mask[t])
                extra = {"metadata": valid.task_metadata(int(t))}
                if "proxy" in valid.task_side:
                    extra["proxy"] = np.asarray(valid.task_side["proxy"][t])
                for d, (k, draw) in enumerate(validation_draws(rng, observed, self.probes, self.draws)):
                    evidences.append(TaskEvidence(draw, valid.scores[t, draw], seed=d, **extra))
                    mask = valid.mask[t].copy()
                    mask[draw] = False
                    trues.append(truth[t])
                    valids.append(mask)
                    groups.append(kindex[k] * num_e + column[int(t)])
            fitted: dict[str, Any] = {}
            preds, done = {}, {}
            names = [valid.tasks[t] for t in fold]
            for c, cand in enumerate(cands):
                if cand.group not in fitted:
                    if cand.space and cand.spec in spaces:
                        batch = spaces[cand.spec]
                        fitted[cand.group] = None if batch is None else batch[cand.config.fit_key()][f]
                    else:
                        try:
                            fitted[cand.group] = cand.fit_method.fit(inner, seed=seed)
                        except MissingEvidenceError as err:
                            fitted[cand.group] = None
                            skipped.setdefault(cand.label, str(err))
                if fitted[cand.group] is None:
                    complete[c] = False
                    continue
                key = cand.label
                if cand.space:  # configurations whose affinity term is 0 on every held-out task score alike
                    space = fitted[cand.group]
                    active = any(np.any(space.affinity(name)) for name in names)
                    key = (cand.group, cand.config.probe_l2, cand.config.affinity_weight if active else None)
                    if key in done:
                        preds[c] = done[key]
                        continue
                try:
                    pred = np.asarray(cand.method.score_batch(cand.derive(fitted[cand.group]), evidences), np.float64)
                except MissingEvidenceError as err:
                    skipped.setdefault(cand.label, str(err))
                    complete[c] = False
                    continue
                if pred.shape != (len(evidences), valid.num_models) or not np.isfinite(pred).all():
                    raise ValueError(f"auto: candidate {cand.label!r} returned scores of shape {pred.shape} "
                                     f"(expected {(len(evidences), valid.num_models)}) or non-finite scores")
                preds[c] = done[key] = pred
            for c, values in _draw_taus(preds, trues, valids).items():
                ok = np.isfinite(values)
                size = num_k * num_e
                with np.errstate(invalid="ignore", divide="ignore"):
                    mean = np.bincount(groups, np.where(ok, values, 0.0), size) / np.bincount(groups, ok, size)
                in_fold = np.bincount(groups, minlength=size) > 0
                tau[:, c, :] = np.where(in_fold.reshape(num_k, num_e), mean.reshape(num_k, num_e), tau[:, c, :])
        full = {}
        if valid is history:
            full = {f"{spec}#{key}": batch[key][0] for spec, batch in spaces.items() if batch for key in batch}
        return tau, complete, num_e, len(folds), valid.num_models, full

    # ------------------------------------------------------------------ score

    def score(self, state: AutoState, evidence: TaskEvidence) -> np.ndarray:
        label = state.choice(evidence.k)
        return np.asarray(state.methods[label].score(state.states[label], evidence), dtype=np.float64)

    def task_posterior(self, state: AutoState, evidence: TaskEvidence):
        """The posterior over the task vector of the candidate chosen for ``evidence.k``
        (:mod:`fennec_jax.methods.suggest`: a fennec space gives one); an
        UnsupportedPolicyError when that candidate gives none (popularity, knn_task, ...)."""
        from fennec_jax.methods.suggest import UnsupportedPolicyError

        label = state.choice(evidence.k)
        if not hasattr(state.methods[label], "task_posterior"):
            raise UnsupportedPolicyError(
                f"auto chose {label} for a task with {evidence.k} probe(s), and it gives no posterior over the task "
                f"vector; use the random policy, or a zoo fitted with a fennec method")
        return state.methods[label].task_posterior(state.states[label], evidence)

    def score_batch(self, state: AutoState, evidences: Sequence[TaskEvidence]) -> np.ndarray:
        if not evidences:
            raise ValueError("evidences: expected at least one task")
        labels = [state.choice(ev.k) for ev in evidences]
        out = [None] * len(evidences)
        for label in dict.fromkeys(labels):
            index = [i for i, lab in enumerate(labels) if lab == label]
            scores = np.asarray(state.methods[label].score_batch(state.states[label], [evidences[i] for i in index]),
                                dtype=np.float64)
            for i, row in zip(index, scores):
                out[i] = row
        return np.stack(out)

    def report(self, state: AutoState) -> str:
        return report(state)

    # ------------------------------------------------------------------ checkpoints

    def save(self, state: AutoState, path: str, *, overwrite: bool = True) -> None:
        from fennec_jax.core import atomic_io
        from fennec_jax.core.checkpoint import CheckpointError, save_arrays

        labels = list(state.states)
        meta = {"candidates": list(self.candidates), "probes": list(state.probes), "chosen": list(state.chosen),
                "reference": state.reference, "table": [_json_row(r) for r in state.table],
                "skipped": dict(state.skipped), "validation": dict(state.validation), "labels": labels}

        def fill(folder: str) -> None:
            save_arrays(os.path.join(folder, "auto"), FORMAT, meta, {})
            for i, label in enumerate(labels):
                state.methods[label].save(state.states[label], os.path.join(folder, "methods", str(i)))

        try:
            atomic_io.write_folder(path, fill, overwrite=overwrite)
        except FileExistsError:
            raise CheckpointError(f"{os.path.abspath(path)}: already exists (pass overwrite=True to replace it)") from None

    def restore(self, path: str) -> AutoState:
        from fennec_jax.core.checkpoint import CheckpointError, restore_arrays

        path = os.path.abspath(path)
        meta, _ = restore_arrays(os.path.join(path, "auto"), FORMAT, "auto")
        if tuple(meta["candidates"]) != self.candidates:
            raise CheckpointError(f"{path}: saved by auto with candidates {meta['candidates']}, this one has "
                                  f"{list(self.candidates)}; refit")
        by_label = {c.label: c.method for c in self.candidate_list()}
        missing = [label for label in meta["labels"] if label not in by_label]
        if missing:
            raise CheckpointError(f"{path}: chosen candidates {missing} are not candidates of this auto; refit")
        methods = {label: by_label[label] for label in meta["labels"]}
        states = {label: methods[label].restore(os.path.join(path, "methods", str(i)))
                  for i, label in enumerate(meta["labels"])}
        return AutoState(probes=tuple(int(k) for k in meta["probes"]), chosen=tuple(meta["chosen"]),
                         reference=meta["reference"], table=tuple(_from_json_row(r) for r in meta["table"]),
                         skipped=dict(meta["skipped"]), validation=dict(meta["validation"]),
                         methods=methods, states=states)


def _space_batch(method, history: Records, masks: np.ndarray, seed: int) -> dict:
    """``{fit_key: [TransferSpace per mask]}``: every configuration group of the fennec
    ``method`` fitted to ``history`` under each of ``masks[F, T, M]``, all in one vmapped batch
    (one compilation per shape), with fennec's own fitting functions, as its ``fit`` would
    prepare the history (metadata dropped, model features, side information)."""
    from fennec_jax.methods import fennec

    if method.drop_model_meta:
        history = dataclasses.replace(history, model_meta={k: v for k, v in history.model_meta.items()
                                                           if k not in method.drop_model_meta})
    features = None if method.model_features is None else method.model_features(history.models)
    side_info = fennec.PRESETS[method.preset][1] if method.side_info is None else method.side_info
    configs = method.space_configs
    design = fennec._design(history, configs[0].nonneg, side_info, features)
    keys = list(dict.fromkeys(c.fit_key() for c in configs))
    fit_configs = [next(c for c in configs if c.fit_key() == key) for key in keys]
    fits = fennec._run_fits(design, fit_configs, masks, seed)
    return {key: [fennec._space_from_fit(design, history, config, fit, mask) for fit, mask in zip(fits[g], masks)]
            for g, (key, config) in enumerate(zip(keys, fit_configs))}


def _draw_taus(preds: dict, trues: list, valids: list) -> dict:
    """``{candidate: tau[D]}``: the weighted tau of each candidate's prediction for each draw
    (NaN where undefined), by :func:`~fennec_jax.eval.protocol.validation_tau` with one group
    per draw. Equal predictions of a draw (every default candidate at k = 0, grid
    configurations that differ only where the task is no source dataset) are scored once;
    the rows are padded to a power of two, so the metric compiles for few shapes."""
    from fennec_jax.eval.protocol import validation_tau

    rows: dict[tuple[int, bytes], int] = {}
    unique, draw_of, index = [], [], {}
    for c, pred in preds.items():
        index[c] = np.empty(len(pred), int)
        for i, row in enumerate(pred):
            u = rows.setdefault((i, row.tobytes()), len(rows))
            if u == len(unique):
                unique.append(row)
                draw_of.append(i)
            index[c][i] = u
    if not unique:
        return {}
    # Only a draw's valid models enter its tau: each row is cut to them (padded with masked
    # entries to a multiple of 128 columns), so sparse records cost what their observed cells do.
    n = len(unique)
    rows_n = max(16, 1 << (n - 1).bit_length())
    width = max(int(valids[i].sum()) for i in draw_of)
    width = min(-(-max(width, 2) // 128) * 128, len(valids[0]))
    true_c, pred_c, keep_c = np.zeros((rows_n, width)), np.zeros((rows_n, width)), np.zeros((rows_n, width), bool)
    for j, (i, pred) in enumerate(zip(draw_of, unique)):
        cols = np.flatnonzero(valids[i])
        true_c[j, : cols.size], pred_c[j, : cols.size], keep_c[j, : cols.size] = trues[i][cols], pred[cols], True
    with np.errstate(invalid="ignore", divide="ignore"):
        taus = validation_tau(list(true_c), list(pred_c), list(keep_c), np.arange(rows_n), skip_undefined=True)[:n]
    return {c: taus[u] for c, u in index.items()}


def _row(values: np.ndarray, reference: np.ndarray | None) -> dict:
    """Mean ± se of one candidate's per-task values, and of its paired difference to the reference."""
    from fennec_jax.eval.protocol import standard_error

    ok = np.isfinite(values)
    n = int(ok.sum())
    mean = float(values[ok].mean()) if n else float("nan")
    se = standard_error(values)
    diff = diff_se = float("nan")
    if reference is not None:
        both = ok & np.isfinite(reference)
        d = values[both] - reference[both]
        if d.size:
            diff = float(d.mean())
        diff_se = standard_error(d)
        n = int(both.sum())
    return {"mean": mean, "se": se, "diff": diff, "diff_se": diff_se, "tasks": n}


def _json_row(row: dict) -> dict:
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}


def _from_json_row(row: dict) -> dict:
    return {k: (float("nan") if v is None else v) for k, v in row.items()}


def report(state: AutoState) -> str:
    """What ``auto`` chose per k and the validation figures behind the choice (plain text):
    for each competing candidate (a fennec grid by its best configuration), the weighted tau
    mean ± se over held-out history tasks and the paired difference to the reference ± se."""
    v = state.validation
    lines = []
    if not v["folds"]:
        lines.append(f"auto: no validation possible (too few history tasks); {state.reference} at every k")
    else:
        lines.append(f"auto: nested validation inside the history: {v['held_out']} held-out tasks in {v['folds']} "
                     f"folds, {v['models']} models, {v['draws']} probe draws per task and k > 0; weighted tau "
                     f"mean ± se over held-out tasks; a candidate must beat {state.reference} by more than "
                     f"{v['margin']:g} se of the paired difference and {v['min_gain']:g}")
    for k, label in zip(state.probes, state.chosen):
        row = next((r for r in state.table if r["candidate"] == label and r["k"] == k), None)
        why = ""
        if row is not None and label != state.reference and np.isfinite(row["diff"]):
            why = f"  ({row['diff']:+.3f} ± {row['diff_se']:.3f} over {state.reference})"
        elif label == state.reference and v["folds"]:
            why = "  (no candidate beats it by the margin)"
        lines.append(f"  k = {k}: {label}{why}")
    if v["folds"]:
        lines.append(f"  {'candidate':<52}{'k':>3}{'mean':>8}{'se':>7}{'diff':>9}{'se':>7}{'tasks':>6}")
        for r in state.table:
            if r.get("competes", True) and r["tasks"]:
                lines.append(f"  {r['candidate']:<52}{r['k']:>3}{r['mean']:>8.3f}{r['se']:>7.3f}{r['diff']:>+9.3f}"
                             f"{r['diff_se']:>7.3f}{r['tasks']:>6}")
    for label, why in state.skipped.items():
        lines.append(f"  left out {label}: {why.splitlines()[0][:160]}")
    return "\n".join(lines)
