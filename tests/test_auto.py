"""``auto``: the method chosen per k by nested validation inside the history."""

import dataclasses

import numpy as np
import pytest

from fennec_jax.core.checkpoint import CheckpointError
from fennec_jax.core.evidence import TaskEvidence
from fennec_jax.core.records import records_from_matrix
from fennec_jax.methods.auto import Auto, report
from fennec_jax.methods.base import get_method, method_from_spec, method_names

CHEAP = "popularity/knn_task"


def _zoo(clusters: int, tasks: int = 12, models: int = 30, noise: float = 0.1, seed: int = 0, meta=None):
    """Tasks in ``clusters`` groups, each ranking the models by its own quality vector."""
    rng = np.random.default_rng(seed)
    quality = rng.normal(size=(clusters, models))
    scores = quality[np.arange(tasks) % clusters] + noise * rng.normal(size=(tasks, models))
    return records_from_matrix([f"m{m}" for m in range(models)], [f"t{t}" for t in range(tasks)], scores,
                               model_meta=meta)


def test_registered_and_configured_from_a_spec():
    assert "auto" in method_names()
    method = method_from_spec("auto:candidates=popularity/knn_task/fennec:preset=mf&steps=50+probes=3/0+folds=3")
    assert isinstance(method, Auto)
    assert method.candidates == ("popularity", "knn_task", "fennec:preset=mf&steps=50")
    assert method.probes == (0, 3) and method.folds == 3
    labels = [c.label for c in method.candidate_list()]
    assert labels == ["popularity", "knn_task", "fennec:preset=mf&steps=50"]
    assert method.candidate_list()[2].method.space_configs[0].steps == 50
    assert get_method("auto", candidates="popularity|knn_task").candidates == ("popularity", "knn_task")


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="own candidate"):
        get_method("auto", candidates="popularity/auto")
    with pytest.raises(ValueError, match="unknown candidate"):
        get_method("auto", candidates="popularity/nope").candidate_list()
    with pytest.raises(ValueError, match="folds"):
        get_method("auto", folds="1")


def test_fennec_grid_is_validated_as_its_configurations():
    cands = get_method("auto", candidates="popularity/fennec").candidate_list()
    grid = [c for c in cands if c.spec == "fennec"]
    assert len(grid) == 24 and len({c.group for c in grid}) == 3  # 3 fits, 8 score-time variants each
    assert grid[0].label == "fennec[d=0,d_data=0,probe_l2=1,affinity=0.4]"


def test_picks_knn_when_tasks_form_clusters_and_popularity_otherwise():
    history = _zoo(clusters=3)
    auto = get_method("auto", candidates=CHEAP)
    state = auto.fit(history, seed=0)
    assert state.reference == "popularity"
    assert state.choice(0) == "popularity"  # knn_task is popularity below 2 probes
    assert state.choice(3) == state.choice(5) == "knn_task"
    row = next(r for r in state.table if r["candidate"] == "knn_task" and r["k"] == 3)
    assert row["diff"] > row["diff_se"] and row["tasks"] == 12
    # One ranking shared by every task: nothing beats popularity by the margin.
    same = auto.fit(_zoo(clusters=1, noise=0.3), seed=0)
    assert same.chosen == ("popularity",) * 3
    text = report(state)
    assert "k = 3: knn_task" in text and "12 held-out tasks in 5 folds" in text


def test_score_uses_the_choice_for_the_nearest_validated_k():
    history = _zoo(clusters=3)
    auto = get_method("auto", candidates=CHEAP)
    state = auto.fit(history, seed=0)
    new = _zoo(clusters=3, tasks=13)  # task 12 is in cluster 0 with other noise
    true = new.scores[12]
    pop, knn = get_method("popularity"), get_method("knn_task")
    for k, expected in ((0, pop), (1, pop), (2, knn), (4, knn), (9, knn)):
        probes = np.arange(k)
        ev = TaskEvidence(probes, true[probes])
        want = expected.score(expected.fit(history), ev)
        np.testing.assert_allclose(auto.score(state, ev), want)
    evs = [TaskEvidence(np.arange(k), true[:k]) for k in (3, 0, 5)]
    np.testing.assert_allclose(auto.score_batch(state, evs), np.stack([auto.score(state, ev) for ev in evs]))


def test_missing_evidence_candidates_are_left_out_and_said_so():
    history = _zoo(clusters=1, noise=0.3)
    state = get_method("auto", candidates="popularity/size/knn_task").fit(history)
    assert "size" in state.skipped and "size" not in state.states
    assert "left out size" in report(state)
    # With a size column that is the models' quality, size is validated and wins.
    quality = history.scores.mean(0)
    sized = dataclasses.replace(history, model_meta={"params": quality.copy()})
    state = get_method("auto", candidates="popularity/size").fit(sized)
    assert "size" not in state.skipped
    assert {r["candidate"] for r in state.table} == {"popularity", "size"}


def test_no_validation_with_too_few_tasks():
    history = _zoo(clusters=2, tasks=2)
    state = get_method("auto", candidates=CHEAP).fit(history)
    assert state.validation["folds"] == 0 and state.chosen == ("popularity",) * 3
    assert "no validation possible" in report(state)


def test_save_restore_round_trip(tmp_path):
    history = _zoo(clusters=3)
    auto = get_method("auto", candidates=CHEAP)
    state = auto.fit(history, seed=0)
    auto.save(state, str(tmp_path / "auto"))
    restored = auto.restore(str(tmp_path / "auto"))
    assert restored.chosen == state.chosen and report(restored) == report(state)
    true = history.scores[0]
    for k in (0, 3):
        ev = TaskEvidence(np.arange(k), true[:k])
        np.testing.assert_array_equal(auto.restore(str(tmp_path / "auto")).methods[state.choice(k)].score(
            restored.states[state.choice(k)], ev), auto.score(state, ev))
    auto.save(state, str(tmp_path / "auto"))  # overwrite
    with pytest.raises(CheckpointError, match="already exists"):
        auto.save(state, str(tmp_path / "auto"), overwrite=False)
    with pytest.raises(CheckpointError, match="candidates"):
        get_method("auto", candidates="popularity").restore(str(tmp_path / "auto"))


def test_transfer_space_candidates_fit_once_per_batch_and_round_trip(tmp_path):
    """A fennec candidate: folds and the full history fitted in one batch; the chosen
    configuration's state saves and restores to identical scores."""
    history = _zoo(clusters=2, tasks=8, models=20)
    auto = get_method("auto", candidates="popularity/fennec:preset=mf&steps=200", probes=(0, 3), folds=3)
    state = auto.fit(history, seed=0)
    assert state.chosen[1] == "fennec:preset=mf&steps=200"
    again = auto.fit(history, seed=0)
    ev = TaskEvidence(np.array([1, 4, 7]), history.scores[0, [1, 4, 7]])
    np.testing.assert_array_equal(auto.score(again, ev), auto.score(state, ev))
    auto.save(state, str(tmp_path / "a"))
    np.testing.assert_array_equal(auto.score(auto.restore(str(tmp_path / "a")), ev), auto.score(state, ev))


def test_auto_choices_command_records_each_fold_and_refuses_other_methods(tmp_path):
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = lambda *args: subprocess.run([sys.executable, "-m", "experiments.auto_choices", *args], cwd=root,  # noqa: E731
                                       capture_output=True, text=True, timeout=600)
    done = run("--benchmark=parc_controlled", f"--method=auto:candidates={CHEAP}", f"--out={tmp_path}")
    assert done.returncode == 0, done.stderr
    choices = json.load(open(tmp_path / "choices.json"))["parc_controlled"]
    assert len(choices) == 6 and all(set(by_k) == {"0", "3", "5"} for by_k in choices.values())
    assert all(label in CHEAP.split("/") for by_k in choices.values() for label in by_k.values())
    assert "parc_controlled, history targets, k = 3:" in done.stdout
    refused = run("--benchmark=parc_controlled", "--method=popularity", f"--out={tmp_path}/no")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == ("error: --method=popularity: expected an auto spec (auto or "
                                                       "auto:candidates=...)")


def test_suggest_through_auto_uses_the_chosen_candidates_posterior():
    from fennec_jax.methods import suggest

    records = _zoo(clusters=2)
    space = Auto(candidates=("fennec:preset=mf&steps=40",))
    state = space.fit(records)
    evidence = TaskEvidence(np.array([0, 1]), records.scores[0, [0, 1]])
    posterior = space.task_posterior(state, evidence)
    label = state.choice(evidence.k)
    expected = state.methods[label].task_posterior(state.states[label], evidence)
    np.testing.assert_array_equal(posterior.scores, expected.scores)
    picks = suggest.suggest(space, state, evidence, 3, "dopt")
    assert len(set(picks.models.tolist())) == 3 and not set(picks.models.tolist()) & {0, 1}
    plain = Auto(candidates=("popularity",))
    with pytest.raises(suggest.UnsupportedPolicyError, match="auto chose popularity for a task with 2 probe"):
        suggest.suggest(plain, plain.fit(records), evidence, 2, "thompson")
    assert len(suggest.suggest(plain, plain.fit(records), evidence, 2, "random").models) == 2
