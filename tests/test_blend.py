"""The re-ranking blend weight chosen on a zoo's held-out history tasks (fennec_jax.zoo.blend,
rerank.validate_blend / blend_weight)."""

import subprocess
import sys

import numpy as np
import pytest

from fennec_jax.zoo import rerank
from fennec_jax.zoo.blend import GRID, BlendValidation
from fennec_jax.zoo.zoo import ZooError, fit_zoo, load_zoo
from test_zoo import ROOT, _world

DEPTH = 6


@pytest.fixture(scope="module")
def zoo():
    records, data, _ = _world()
    return fit_zoo(records, method="fennec:preset=mf", task_data={t: data[t] for t in records.tasks},
                   calibration_tasks=4)


def _true_scorer(zoo, sign):
    """An estimator that knows the held-out tasks' measured scores (sign 1) or their reverse (-1)."""
    records = zoo.records

    def scorer(task, names):
        t = records.tasks.index(task)
        return sign * records.scores[t, [records.models.index(n) for n in names]]

    return scorer


def test_choose_takes_the_best_mean_gain_and_the_smaller_weight_on_ties():
    taus = np.zeros((2, len(GRID), 3))
    taus[0, 3] = [0.1, 0.2, 0.0]  # depth 2: weight 0.75 gains 0.1 on average
    taus[1, 1:] = 0.05  # depth 3: every weight above 0 ties
    validation = BlendValidation("logme", ("a", "b", "c"), GRID, taus)
    first = validation.choose(2)
    assert (first.weight, first.tasks) == (0.75, 3) and first.gain == pytest.approx(0.1)
    assert first.se == pytest.approx(np.std([0.1, 0.2, 0.0], ddof=1) / np.sqrt(3))
    assert validation.choose(3).weight == 0.25
    assert validation.depth == 3
    with pytest.raises(ValueError, match="validated for 2 to 3"):
        validation.choose(4)
    with pytest.raises(ValueError, match="taus must be"):
        BlendValidation("logme", ("a",), GRID, np.zeros((2, len(GRID), 3)))


def test_held_out_tasks_choose_the_estimator_that_knows_them_and_refuse_its_reverse(zoo):
    assert zoo.held_out_scores.shape == (len(zoo.calibration.held_out), len(zoo.models))
    knows = rerank.validate_blend(zoo, _true_scorer(zoo, 1), zoo.models, depth=DEPTH)
    choice = knows.choose(DEPTH)
    assert choice.weight == 1.0 and choice.gain > 0 and choice.tasks == 4
    # more models re-ordered by the truth can only help the mean here: the full depth gains the most
    assert knows.taus[-1, -1].mean() >= knows.taus[0, -1].mean()
    reverse = rerank.validate_blend(zoo, _true_scorer(zoo, -1), zoo.models, depth=DEPTH).choose(DEPTH)
    assert reverse.weight == 0.0 and reverse.gain == 0.0


def test_the_validation_travels_with_the_zoo_and_sets_the_weight(zoo, tmp_path):
    validated = rerank.validate_blend(zoo, _true_scorer(zoo, 1), zoo.models, depth=DEPTH)
    zoo = zoo.__class__(**{**zoo.__dict__, "blend": validated})
    zoo.save(str(tmp_path / "zoo"))
    loaded = load_zoo(str(tmp_path / "zoo"))
    np.testing.assert_array_equal(loaded.blend.taus, validated.taus)
    np.testing.assert_array_equal(loaded.held_out_scores, zoo.held_out_scores)
    assert loaded.blend.tasks == validated.tasks
    weight, why = rerank.blend_weight(loaded, DEPTH, "logme")
    assert weight == 1.0 and "chosen on 4 held-out history tasks" in why
    assert rerank.blend_weight(loaded, DEPTH + 1, "logme")[0] == rerank.DEFAULT_WEIGHT
    assert rerank.blend_weight(loaded, DEPTH, "leep")[1].startswith("weight 0.5 (the zoo validated logme")


def test_a_zoo_without_held_out_tasks_cannot_validate(zoo):
    bare = zoo.__class__(**{**zoo.__dict__, "held_out_scores": None})
    with pytest.raises(ZooError, match="no held-out history tasks"):
        rerank.validate_blend(bare, _true_scorer(zoo, 1), zoo.models, depth=DEPTH)
    assert "not validated" in rerank.blend_weight(bare, DEPTH, "logme")[1]


def test_fit_zoo_weights_needs_task_data(tmp_path):
    records = tmp_path / "records.csv"
    records.write_text("model,task,score\na,t1,0.5\nb,t1,0.6\na,t2,0.4\nb,t2,0.7\n")
    weights = tmp_path / "w"
    weights.mkdir()
    out = subprocess.run([sys.executable, "-m", "experiments.fit_zoo", f"--records={records}",
                          f"--weights={weights}", f"--out={tmp_path / 'zoo'}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == ("error: --weights: validating the re-ranking runs the models on "
                                                   "the history tasks' data; give --task_data too")
    assert not (tmp_path / "zoo").exists()
