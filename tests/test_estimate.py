"""End to end: experiments/estimate.py on synthetic models whose features are more or less
informative of the labels, with a records table of true fine-tune scores."""

import csv
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fennec_jax import estimators
from fennec_jax.eval import metrics
from fennec_jax.encoders.features import load_features, save_features

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "estimate.py")
NUM_EXAMPLES, NUM_CLASSES, NUM_SOURCE_CLASSES = 240, 4, 6
# Model name -> (signal strength, feature dimension, has a source head).
MODELS = {
    "m_noise": (0.0, 16, True),
    "m_weak": (0.4, 24, True),
    "m_mid": (1.0, 16, False),
    "m_good": (2.0, 24, True),
    "m_best": (4.0, 16, True),
}


def _spec_module():
    spec = importlib.util.spec_from_file_location("estimate_program", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


estimate = _spec_module()


def _synthetic_model(rng, labels, signal, dim, has_head):
    """Features: class means of norm ``signal`` plus unit noise; probs: a source head whose
    logits point (with strength ``signal``) at source class ``label``."""
    means = rng.normal(size=(NUM_CLASSES, dim))
    means *= signal / np.linalg.norm(means, axis=1, keepdims=True)
    features = means[labels] + rng.normal(size=(len(labels), dim))
    if not has_head:
        return features.astype(np.float32), None
    logits = rng.normal(size=(len(labels), NUM_SOURCE_CLASSES))
    logits[np.arange(len(labels)), labels] += 2 * signal
    probs = np.exp(logits - logits.max(1, keepdims=True))
    return features.astype(np.float32), probs / probs.sum(1, keepdims=True)


@pytest.fixture
def feature_dir(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(NUM_EXAMPLES) % NUM_CLASSES
    folder = tmp_path / "features"
    for model, (signal, dim, has_head) in MODELS.items():
        features, probs = _synthetic_model(rng, labels, signal, dim, has_head)
        save_features(str(folder / f"{model}.npz"), features, labels, probs)
    return folder


@pytest.fixture
def records_csv(tmp_path):
    """True scores grow with the signal; a second task whose order is reversed."""
    path = tmp_path / "records.csv"
    rows = ["model,task,score"]
    for i, model in enumerate(MODELS):
        rows += [f"{model},task_a,{50 + 10 * i}", f"{model},task_b,{90 - 10 * i}"]
    rows.append("unrelated_model,task_a,99")  # models without features are ignored
    path.write_text("\n".join(rows) + "\n")
    return path


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_end_to_end_command_line(feature_dir, records_csv, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "experiments.estimate", f"--features={feature_dir}", "--methods=logme,leep",
         f"--out={out}", f"--records={records_csv}", "--task=task_a"],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "m_mid" in result.stderr and "skipping" in result.stderr  # leep needs probs

    scores = _read_csv(out / "scores.csv")
    by_method = {}
    for row in scores:
        by_method.setdefault(row["method"], {})[row["model"]] = float(row["score"])
    assert set(by_method["logme"]) == set(MODELS)
    assert set(by_method["leep"]) == set(MODELS) - {"m_mid"}
    # Same values as calling the estimators directly on the saved files.
    features, labels, probs = load_features(str(feature_dir / "m_good.npz"))
    np.testing.assert_allclose(by_method["logme"]["m_good"],
                               estimators.score("logme", features, labels), rtol=1e-5)
    np.testing.assert_allclose(by_method["leep"]["m_good"],
                               estimators.score("leep", features, labels, probs), rtol=1e-5)

    ranking = _read_csv(out / "ranking.csv")
    logme_ranking = [r for r in ranking if r["method"] == "logme"]
    assert [int(r["rank"]) for r in logme_ranking] == [1, 2, 3, 4, 5]
    ranked_scores = [float(r["score"]) for r in logme_ranking]
    assert ranked_scores == sorted(ranked_scores, reverse=True)

    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "task_a" and report["num_examples"] == NUM_EXAMPLES
    assert report["num_classes"] == NUM_CLASSES
    assert report["methods"]["leep"]["skipped"] == ["m_mid"]
    true = {model: 50 + 10 * i for i, model in enumerate(MODELS)}
    for method in ("logme", "leep"):
        models = report["methods"][method]["models"]
        expected = metrics.ranking_metrics(np.array([true[m] for m in models], float),
                                           np.array([by_method[method][m] for m in models]))
        for key, value in report["methods"][method]["metrics"].items():
            np.testing.assert_allclose(value, float(expected[key]), rtol=1e-5, atol=1e-6)
        # The features were made more informative exactly as the true scores grow.
        assert report["methods"][method]["metrics"]["weighted_tau"] > 0.8


def test_without_records(feature_dir, tmp_path):
    report = estimate.run(str(feature_dir), ["logme"], str(tmp_path / "out"))
    assert "task" not in report and "metrics" not in report["methods"]["logme"]
    assert report["models"] == sorted(MODELS)


def test_bad_inputs_name_the_flag_or_file(feature_dir, records_csv, tmp_path):
    out = str(tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty: no MODEL.npz feature files found"):
        estimate.run(str(empty), ["logme"], out)
    with pytest.raises(ValueError, match="--methods: unknown estimator.*not_a_method"):
        estimate.run(str(feature_dir), ["logme", "not_a_method"], out)
    with pytest.raises(ValueError, match="several tasks|2 tasks.*--task"):
        estimate.run(str(feature_dir), ["logme"], out, records=str(records_csv))
    with pytest.raises(ValueError, match="--task=task_z"):
        estimate.run(str(feature_dir), ["logme"], out, records=str(records_csv), task="task_z")
    with pytest.raises(ValueError, match="--task needs --records"):
        estimate.run(str(feature_dir), ["logme"], out, task="task_a")

    features, labels, _ = load_features(str(feature_dir / "m_mid.npz"))
    save_features(str(feature_dir / "m_extra.npz"), features, labels)
    with pytest.raises(ValueError, match="m_extra.npz .*no score for task task_a"):
        estimate.run(str(feature_dir), ["logme"], out, records=str(records_csv), task="task_a")
    save_features(str(feature_dir / "m_extra.npz"), features, labels[::-1].copy())
    with pytest.raises(ValueError, match="m_extra.npz: labels differ"):
        estimate.run(str(feature_dir), ["logme"], out)

    headless = tmp_path / "headless"
    save_features(str(headless / "a.npz"), features, labels)
    save_features(str(headless / "b.npz"), features + 1, labels)
    with pytest.raises(ValueError, match="leep, nce need source-head probabilities"):
        estimate.run(str(headless), ["logme", "leep", "nce"], out)
    assert not os.path.exists(out)  # nothing written on bad input


def test_command_line_error_is_one_clear_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "experiments.estimate", f"--features={tmp_path}", "--methods=logme",
         f"--out={tmp_path / 'out'}"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode != 0
    assert "no MODEL.npz feature files found" in result.stderr
    assert "Traceback" not in result.stderr


def test_command_line_reports_a_bad_feature_file_in_one_line(tmp_path):
    """A feature file with a NaN: one error line naming the file, exit status 1, no flag help
    and no output folder."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 40)
    features = rng.normal(size=(40, 8))
    features[5, 2] = np.nan
    (tmp_path / "feats").mkdir()
    np.savez(tmp_path / "feats" / "bad.npz", features=features, labels=labels)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "experiments.estimate", f"--features={tmp_path / 'feats'}", "--methods=logme",
         f"--out={out}"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == \
        f"error: {tmp_path / 'feats' / 'bad.npz'}: features has NaN or infinite values"
    assert "--out" not in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()
