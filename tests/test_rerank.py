"""Re-ranking a new task's top candidates with forward passes of their weights (fennec_jax.zoo.rerank)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fennec_jax.archs import architectures
from fennec_jax.core import atomic_io
from fennec_jax.encoders import weights
from fennec_jax.estimators import registry
from fennec_jax.ranking.table import RankingTable
from fennec_jax.zoo import rerank
from fennec_jax.zoo.task_data import TaskData
from fennec_jax.zoo.zoo import TaskRanking, ZooError
from forced_devices import run_on_cpu_devices

_SIDE = 16
_WIDTH = 0.0625


def _variables(seed):
    model = architectures.build("resnet18", 10, _WIDTH)
    return model, jax.tree_util.tree_map(np.asarray, model.init(jax.random.key(seed), jnp.zeros((1, _SIDE, _SIDE, 3))))


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """Three resnet18 models (random weights, 16 px, 'unit' preprocessing) as a weights folder."""
    folder = str(tmp_path_factory.mktemp("weights"))
    rows = []
    for i, name in enumerate(("a", "b", "c")):
        _, variables = _variables(i)
        weights.write_safetensors(os.path.join(folder, f"{name}.safetensors"), weights.from_flax(variables))
        rows.append((name, "resnet18", 10, _WIDTH, "unit", _SIDE, 4))
    atomic_io.write_csv(os.path.join(folder, "architectures.csv"),
                        ("model", "architecture", "num_classes", "width", "preprocess", "image_size",
                         "source_classes"), rows)
    return folder


@pytest.fixture(scope="module")
def task():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(18, _SIDE, _SIDE, 3), dtype=np.uint8)
    return TaskData("t", np.repeat(np.arange(3), 6).astype(np.int32), ("0", "1", "2"), images=list(images))


def _ranking(models, predicted, measured=None):
    measured = np.full(len(models), np.nan) if measured is None else np.asarray(measured, float)
    return TaskRanking("t", RankingTable(tuple(models), np.asarray(predicted, float), measured), "proxy", 0.8)


def test_from_flax_inverts_to_flax():
    model, variables = _variables(0)
    template = weights.variable_shapes(model, jax.ShapeDtypeStruct((1, _SIDE, _SIDE, 3), jnp.float32))
    back = weights.to_flax(weights.from_flax(variables), template)
    for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(variables), jax.tree_util.tree_leaves_with_path(back)):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def test_candidate_features_are_the_models_own(weights_dir, task):
    """The checkpoint read back runs as the model it was written from: same features, and
    probabilities over the first ``source_classes`` logits."""
    entries = rerank.read_weights_dir(weights_dir)
    (got,) = rerank.candidate_features([entries["b"]], task)
    model, variables = _variables(1)
    x = np.stack(task.images).astype(np.float32) / 255
    logits, feats = model.apply(variables, x, return_features=True)
    np.testing.assert_allclose(got.features, feats, rtol=1e-4, atol=1e-5)
    logits = np.asarray(logits)[:, :4].astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(got.probs, probs / probs.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)


def test_models_run_together_as_each_alone(weights_dir, task):
    """Three models stacked in one vmapped pass give each one's own features, in order."""
    entries = rerank.read_weights_dir(weights_dir)
    together = rerank.candidate_features([entries[m] for m in "cab"], task)
    for name, got in zip("cab", together):
        (alone,) = rerank.candidate_features([entries[name]], task)
        np.testing.assert_allclose(got.features, alone.features, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got.probs, alone.probs, rtol=1e-5, atol=1e-7)


_SHARDED = """
import json, sys
import numpy as np
from fennec_jax.ranking import engine
from fennec_jax.zoo import rerank
from fennec_jax.zoo.task_data import TaskData
folder = sys.argv[1]
images = np.random.default_rng(0).integers(0, 256, size=(10, 16, 16, 3), dtype=np.uint8)
task = TaskData("t", np.repeat(np.arange(2), 5).astype(np.int32), ("0", "1"), images=list(images))
entries = [rerank.read_weights_dir(folder)[m] for m in "abc"]
mesh = engine.make_mesh()
split = rerank.candidate_features(entries, task, mesh=mesh, batch_size=4)
whole = rerank.candidate_features(entries, task, batch_size=4)
print(json.dumps({"devices": int(mesh.size), "diff": max(float(np.abs(a.features - b.features).max())
                                                      for a, b in zip(split, whole)),
                  "scores": rerank.estimator_scores("logme", split, task.labels, mesh=mesh).tolist(),
                  "reference": rerank.estimator_scores("logme", whole, task.labels).tolist()}))
"""


def test_forward_passes_split_over_devices_equal_one_device(weights_dir):
    """3 models over 4 forced CPU devices (padded to 4): the features and the LogME scores
    equal the one-device run's (to float32 rounding: each device sums in its own order)."""
    results = run_on_cpu_devices(_SHARDED.replace("sys.argv[1]", repr(weights_dir)))
    assert results["devices"] == 4
    assert results["diff"] <= 1e-5
    np.testing.assert_allclose(results["scores"], results["reference"], rtol=1e-6)


def test_rerank_reorders_the_top_in_their_slots(weights_dir, task):
    # x is measured (rank 1 by its score); a, b, c are the top unmeasured; d has no weights.
    ranking = _ranking(["x", "a", "b", "c", "d"], [0.0, 0.9, 0.8, 0.7, 0.1], [1.0, np.nan, np.nan, np.nan, np.nan])
    out = rerank.rerank(ranking, task, rerank.read_weights_dir(weights_dir), 3, weight=1.0)
    feats = rerank.candidate_features([rerank.read_weights_dir(weights_dir)[m] for m in "abc"], task)
    logme = registry.score_models("logme", [f.features for f in feats], task.labels)
    order = [out.table.models[i] for i in out.table.order()]
    assert order[0] == "x" and order[4] == "d"  # the measured model and the rest keep their places
    assert order[1:4] == [m for _, m in sorted(zip(-np.asarray(logme), "abc"))]  # weight 1: the estimator's order
    rows = out.rows()
    assert out.columns[-1] == "rerank_score" and rows[0][-1] == "" and rows[4][-1] == ""
    np.testing.assert_allclose(sorted(r[-1] for r in rows[1:4]), sorted(np.asarray(logme)), rtol=1e-5)
    assert "rerank (logme, 3 models, weight 1)" in out.evidence
    # weight 0 keeps the zoo's order
    kept = rerank.reorder(ranking, [1, 2, 3], np.asarray(logme), weight=0.0)
    assert [kept.table.models[i] for i in kept.table.order()] == ["x", "a", "b", "c", "d"]


def test_rerank_skips_models_without_weights(weights_dir, task):
    ranking = _ranking(["a", "q", "b"], [0.9, 0.8, 0.7])
    chosen = rerank.candidates(ranking, 3, rerank.read_weights_dir(weights_dir))
    assert chosen == [0, 2]
    with pytest.raises(ZooError, match="1 of the top 2"):
        rerank.candidates(ranking, 2, rerank.read_weights_dir(weights_dir))


@pytest.mark.parametrize("content, match", [
    (None, "architectures.csv: not found"),
    ("model,num_classes\na,10\n", "missing column"),
    ("model,architecture,num_classes\na,vgg99,10\n", "architecture 'vgg99'"),
    ("model,architecture,num_classes\na,resnet18,ten\n", "num_classes='ten'"),
    ("model,architecture,num_classes,preprocess\na,resnet18,10,unit\n", "needs image_size"),
    ("model,architecture,num_classes\nzz,resnet18,10\n", "no checkpoint"),
    ("model,architecture,num_classes\na,resnet18,10\na,resnet18,10\n", "listed twice"),
])
def test_bad_weights_folder(tmp_path, content, match):
    (tmp_path / "a.safetensors").write_bytes(b"")
    if content is not None:
        (tmp_path / "architectures.csv").write_text(content)
    with pytest.raises(ZooError, match=match):
        rerank.read_weights_dir(str(tmp_path))


def test_bad_rerank_arguments(weights_dir, task):
    ranking = _ranking(["a", "b", "c"], [0.9, 0.8, 0.7])
    entries = rerank.read_weights_dir(weights_dir)
    with pytest.raises(ZooError, match="unknown estimator 'nope'"):
        rerank.rerank(ranking, task, entries, 3, estimator="nope")
    with pytest.raises(ZooError, match="at least 2"):
        rerank.rerank(ranking, task, entries, 1)
    with pytest.raises(ZooError, match="proxy features only"):
        rerank.rerank(ranking, TaskData("f", task.labels, task.classes, features=np.zeros((18, 4))), entries, 3)
    with pytest.raises(ZooError, match="in \\[0, 1\\]"):
        rerank.reorder(ranking, [0, 1], np.zeros(2), weight=2.0)
