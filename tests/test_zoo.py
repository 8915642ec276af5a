"""Zoos: reading a new task's data, fitting, saving and loading a zoo, ranking a new task in the
records' units with calibrated intervals, and the fit_zoo / rank / sample_task commands with
their bad inputs."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fennec_jax.core.checkpoint import CheckpointError
from fennec_jax.core.records import records_from_matrix
from fennec_jax.zoo.calibration import Calibration, error_quantiles, fit_calibration
from fennec_jax.zoo.task_data import TaskData, TaskDataError, balanced_subset, read_task, write_image_folder
from fennec_jax.zoo.zoo import ZooError, fit_zoo, load_zoo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
P = 1280  # the MobileNetV2 proxy's feature width: synthetic features stand in for its outputs


def _world(num_tasks=8, num_models=12, seed=0):
    """Records whose task vectors are a linear function of each task's feature centre, and each
    task's features (two classes around that centre): the proxy carries the ranking."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_tasks + 1, 3))
    lift = rng.normal(size=(3, P))
    models = rng.normal(size=(num_models, 3))
    scores = 0.6 + 0.08 * centres @ models.T + 0.01 * rng.normal(size=(num_tasks + 1, num_models))
    data = {}
    for t in range(num_tasks + 1):
        labels = np.repeat([0, 1], 10)
        feats = centres[t] @ lift + rng.normal(size=(20, P)) * 0.3 + labels[:, None] * rng.normal(size=P) * 0.2
        data[f"task{t}"] = TaskData(f"task{t}", labels.astype(np.int32), ("a", "b"), features=feats)
    names = [f"model{m}" for m in range(num_models)]
    return records_from_matrix(names, [f"task{t}" for t in range(num_tasks)], scores[:num_tasks]), data, scores[-1]


@pytest.fixture(scope="module")
def world():
    return _world()


@pytest.fixture(scope="module")
def zoo(world):
    records, data, _ = world
    return fit_zoo(records, method="fennec:preset=mf", task_data={t: data[t] for t in records.tasks},
                   calibration_tasks=4)


# ----------------------------------------------------------------------------- task data


def test_balanced_subset_shares_out_what_small_classes_cannot_take():
    labels = np.array([0] * 50 + [1] * 3 + [2] * 20)
    keep = balanced_subset(labels, 30)
    counts = np.bincount(labels[keep], minlength=3)
    assert keep.size == 30 and counts[1] == 3 and abs(counts[0] - counts[2]) <= 1
    assert np.array_equal(balanced_subset(labels, 100), np.arange(labels.size))


def test_image_folder_npz_and_features_forms(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((12, 9, 9, 3))
    labels = np.repeat([0, 1, 2], 4)
    write_image_folder(str(tmp_path / "folder"), images, labels, ["cat", "dog", "eel"])
    task = read_task(str(tmp_path / "folder"), max_examples=6)
    assert task.name == "folder" and task.classes == ("cat", "dog", "eel")
    assert np.array_equal(np.bincount(task.labels), [2, 2, 2]) and task.images[0].shape == (9, 9, 3)
    # Images of mixed sizes are read as they are (the proxy's preprocessing resizes each).
    Image.fromarray((rng.random((30, 20, 3)) * 255).astype(np.uint8)).save(tmp_path / "folder" / "cat" / "big.png")
    sizes = {im.shape for im in read_task(str(tmp_path / "folder")).images}
    assert sizes == {(9, 9, 3), (30, 20, 3)}
    np.savez(tmp_path / "imgs.npz", images=(images * 255).astype(np.uint8), labels=labels)
    assert read_task(str(tmp_path / "imgs.npz")).num_examples == 12
    np.savez(tmp_path / "feats.npz", features=rng.normal(size=(12, 5)), labels=labels + 7)
    feats = read_task(str(tmp_path / "feats.npz"))
    assert feats.features.shape == (12, 5) and feats.images is None and feats.labels.max() == 2


@pytest.mark.parametrize("case, expected", [
    ("missing", "no such file or folder"),
    ("empty", "found no images and no subfolders"),
    ("single", "at least 2 classes"),
    ("truncated", "bad.png: unreadable or truncated image"),
    ("npz_keys", "expected arrays 'labels'"),
    ("npz_float_images", "expected 'images' uint8"),
    ("txt", "expected an image folder"),
    ("tfds_spec", "expected tfds:NAME[:SPLIT]@DATA_DIR"),
])
def test_bad_task_data_names_the_path(tmp_path, case, expected):
    path = str(tmp_path / case)
    if case == "empty":
        os.makedirs(path)
    elif case in ("single", "truncated"):
        write_image_folder(path, np.zeros((4, 8, 8, 3)), np.array([0, 0, 1, 1]), ["a", "b"])
        if case == "single":
            for name in os.listdir(os.path.join(path, "b")):
                os.remove(os.path.join(path, "b", name))
        else:
            good = open(os.path.join(path, "a", "00000.png"), "rb").read()
            open(os.path.join(path, "a", "bad.png"), "wb").write(good[: len(good) // 2])
    elif case == "npz_keys":
        path += ".npz"
        np.savez(path, x=np.zeros(3))
    elif case == "npz_float_images":
        path += ".npz"
        np.savez(path, images=np.zeros((2, 4, 4, 3)), labels=np.array([0, 1]))
    elif case == "txt":
        path += ".txt"
        open(path, "w").write("hello")
    elif case == "tfds_spec":
        path = "tfds:mnist"
    with pytest.raises(TaskDataError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        read_task(path)


# ----------------------------------------------------------------------------- calibration


def _calibration(errors, probe_errors=(), **kwargs):
    """A calibration whose errors come from one held-out task each (no offsets to learn)."""
    errors, probe_errors = np.asarray(errors, float), np.asarray(probe_errors, float)
    return Calibration(1.0, None, kwargs.pop("default_scale", (0.0, 1.0)), errors, np.zeros(errors.size, int),
                       probe_errors=probe_errors, probe_groups=np.zeros(probe_errors.size, int), **kwargs)


def test_error_quantiles_and_probe_scale():
    cal = _calibration(np.arange(-10.0, 11.0))
    assert cal.quantiles(0.8) == pytest.approx((-8.0, 8.0))  # one task: the errors' own 10 % and 90 % points
    z = np.linspace(-2, 2, 12)
    truth = 5.0 + 2.0 * (z - z.mean())
    pred, low, high = cal.predict(z, probe_models=range(12), probe_scores=truth)
    # Twelve exact probes against a prior of one pseudo-probe: mean and std close to (5, 2).
    assert np.allclose(pred, truth, atol=0.5) and np.all(high - low > 0)
    prior_pred, _, _ = cal.predict(z)
    assert np.allclose(prior_pred, z - z.mean())
    # With probes, the errors of probed held-out tasks set the interval (prior std 1 here).
    cal = _calibration(np.arange(-10.0, 11.0), probe_errors=np.arange(-1.0, 1.05, 0.1))
    _, low, high = cal.predict(z)
    assert np.allclose(high - low, 16.0)
    _, std = cal.estimate(z, probe_models=[0, 11], probe_scores=[-2.0, 2.0])
    _, low, high = cal.predict(z, probe_models=[0, 11], probe_scores=[-2.0, 2.0])
    assert np.allclose(high - low, 1.6 * std)


def test_error_quantiles_cover_new_tasks_when_errors_share_a_task_offset():
    # Errors = task offset (sd 1) + cell noise (sd 0.2); 6 held-out tasks of 30 cells, as on the
    # small benchmarks. The pooled cells' quantile covers a new task's cells ~ 0.8 * 6 / 7 of the
    # time; the offset's Student-t prediction covers ~ 0.8.
    rng = np.random.default_rng(0)
    pooled, grouped = [], []
    for _ in range(400):
        offsets = rng.normal(size=7)
        errors = offsets[:, None] + 0.2 * rng.normal(size=(7, 30))
        history, new = errors[:6].ravel(), errors[6]
        low, high = error_quantiles(history, np.repeat(np.arange(6), 30), 0.8)
        grouped.append(np.mean((new >= low) & (new <= high)))
        low, high = np.quantile(history, [0.1, 0.9])
        pooled.append(np.mean((new >= low) & (new <= high)))
    assert np.mean(grouped) == pytest.approx(0.8, abs=0.03)
    assert np.mean(pooled) < 0.75  # what the pooled quantile gave: a check that can fail
    # Exchangeable cells (no offsets): the residuals' own quantiles.
    errors = rng.normal(size=(6, 200))
    low, high = error_quantiles(errors.ravel(), np.repeat(np.arange(6), 200), 0.8)
    assert (low, high) == pytest.approx((-1.2816, 1.2816), abs=0.08)
    with pytest.raises(ValueError, match="level: expected a coverage in"):
        error_quantiles(errors.ravel(), np.repeat(np.arange(6), 200), 1.0)
    # Two tasks far apart: neither covers the other at any level, so the widest errors seen.
    assert error_quantiles(np.r_[np.zeros(5), np.full(5, 10.0)], np.repeat([0, 1], 5), 0.8) == (0.0, 10.0)
    assert np.isnan(error_quantiles(np.zeros(0), np.zeros(0, int), 0.8)).all()


def test_intervals_reach_as_far_as_the_task_own_probe_results():
    # Huge errors: every interval is clipped, to the records' range, or past it to a probe's result.
    cal = _calibration(np.r_[np.full(5, -1e4), np.full(5, 1e4)], default_scale=(0.5, 0.1), bounds=(0.0, 1.0))
    z = np.linspace(-1, 1, 5)
    _, low, high = cal.predict(z)
    assert np.all(low == 0.0) and np.all(high == 1.0)
    _, low, high = cal.predict(z, probe_models=[0, 4], probe_scores=[1.2, -0.1])
    assert np.all(low == -0.1) and np.all(high == 1.2)


def test_calibration_slope_and_errors_from_held_out_tasks(world):
    records, _, _ = world
    z = (records.scores - records.scores.mean(1, keepdims=True)) / records.scores.std(1, keepdims=True)
    cal = fit_calibration(records, None, [0, 1, 2], 3.0 * z[:3])  # scores 3x the true z-scores
    assert cal.slope == pytest.approx(1 / 3)
    assert cal.errors.size == 3 * records.num_models and np.array_equal(np.unique(cal.groups), [0, 1, 2])
    assert cal.bounds == (records.scores.min(), records.scores.max())


# ----------------------------------------------------------------------------- zoo


def test_zoo_ranks_a_new_task_from_its_data_in_record_units(zoo, world):
    from fennec_jax.eval import metrics

    _, data, truth = world
    ranking = zoo.rank(data["task8"])
    table = ranking.table
    assert ranking.evidence == "proxy" and not table.observed.any()
    assert metrics.kendall_tau(truth, table.predicted) > 0.5  # the proxy carries the ranking
    assert abs(np.median(table.predicted) - np.median(truth)) < 0.1  # records' units, not latent ones
    assert np.all(table.low <= table.predicted) and np.all(table.predicted <= table.high)
    assert [r["model"] for r in ranking.top(3)] == [zoo.models[i] for i in table.order()[:3]]


def test_probes_and_known_tasks_are_observed(zoo, world):
    _, data, truth = world
    ranking = zoo.rank(data["task8"], probes={"model3": 0.9, "model5": 0.1})
    table = ranking.table
    assert ranking.evidence == "proxy + probes (2)"
    assert table.observed.sum() == 2 and table.measured[3] == 0.9 and ranking.top(1)[0]["model"] == "model3"
    known = zoo.rank(data["task2"])  # a task of the zoo: its measured results are shown and ranked by
    assert known.table.observed.all()
    assert np.array_equal(known.table.measured, zoo.records.scores[2])
    with pytest.raises(ZooError, match="model\\(s\\) not in the zoo: nope"):
        zoo.rank(data["task8"], probes={"nope": 0.5})
    with pytest.raises(ZooError, match="expected finite scores"):
        zoo.rank(data["task8"], probes={"model1": float("nan")})
    wrong = TaskData("w", np.array([0, 1]), ("a", "b"), features=np.ones((2, 7)))
    with pytest.raises(ZooError, match="7 wide"):
        zoo.rank(wrong)


def test_zoo_save_load_round_trip_and_refusals(zoo, world, tmp_path):
    _, data, _ = world
    path = str(tmp_path / "zoo")
    zoo.save(path)
    loaded = load_zoo(path)
    assert loaded.models == zoo.models and loaded.proxy == "mobilenet_v2" and loaded.proxy_width == P
    a, b = zoo.rank(data["task8"], probes={"model0": 0.7}), loaded.rank(data["task8"], probes={"model0": 0.7})
    assert np.array_equal(a.table.predicted, b.table.predicted) and np.array_equal(a.table.high, b.table.high)
    assert zoo.calibration.probe_errors.size > 0
    assert np.array_equal(loaded.calibration.probe_errors, zoo.calibration.probe_errors)
    assert np.array_equal(loaded.calibration.groups, zoo.calibration.groups)
    assert sorted(os.listdir(tmp_path)) == ["zoo"]  # no temporary folder left
    with pytest.raises(ZooError, match="already exists"):
        zoo.save(path)
    manifest = json.load(open(os.path.join(path, "manifest.json")))
    assert manifest["models"] == list(zoo.models) and manifest["method"] == "fennec:preset=mf"
    manifest["fennec_jax_version"] = "0.0.1"
    json.dump(manifest, open(os.path.join(path, "manifest.json"), "w"))
    with pytest.raises(ZooError, match="fitted with fennec_jax 0.0.1.*refit"):
        load_zoo(path)
    zoo.save(path, overwrite=True)
    assert load_zoo(path).models == zoo.models
    stored = [os.path.join(root, name) for root, _, files in os.walk(os.path.join(path, "arrays")) for name in files]
    biggest = max(stored, key=os.path.getsize)
    blob = bytearray(open(biggest, "rb").read())
    blob[len(blob) // 2] ^= 0xFF
    open(biggest, "wb").write(bytes(blob))
    with pytest.raises(CheckpointError, match="corrupted|unreadable"):
        load_zoo(path)
    with pytest.raises(ZooError, match="not a zoo folder"):
        load_zoo(str(tmp_path))


def test_zoo_without_task_data_ranks_from_probes(world):
    records, data, _ = world
    zoo = fit_zoo(records, method="popularity", calibration_tasks=3)
    assert zoo.proxy is None
    ranking = zoo.rank(probes={"model0": 0.8})
    assert ranking.evidence == "probes (1)" and ranking.table.observed.sum() == 1
    with pytest.raises(ZooError, match="without task data"):
        zoo.rank(data["task8"])


def test_suggest_next_fine_tunes(zoo, world):
    _, data, _ = world
    picks = zoo.suggest(data["task8"], budget=3, probes={"model0": 0.7})
    names = [p["model"] for p in picks]
    assert len(set(names)) == 3 and "model0" not in names and all(n in zoo.models for n in names)
    assert picks[0]["gain_means"].startswith("probability") and all(0 <= p["gain"] <= 1 for p in picks)
    dopt = zoo.suggest(data["task8"], budget=2, policy="dopt", probes={"model0": 0.7})
    assert all(p["gain"] > 0 for p in dopt)
    with pytest.raises(ZooError, match="ask for at most 11"):
        zoo.suggest(data["task8"], budget=12, probes={"model0": 0.7})
    plain = fit_zoo(zoo.records, method="popularity", calibration_tasks=3)
    with pytest.raises(ZooError, match="suggest:"):
        plain.suggest(budget=2, probes={"model1": 0.5})


# ----------------------------------------------------------------------------- commands


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


@pytest.fixture(scope="module")
def cli_zoo(world, tmp_path_factory):
    """A zoo fitted by the fit_zoo command from a records CSV and a task-data folder of
    feature .npz files."""
    records, data, _ = world
    folder = tmp_path_factory.mktemp("cli")
    with open(folder / "records.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "task", "score"])
        for t, task in enumerate(records.tasks):
            writer.writerows([m, task, f"{records.scores[t, i]:.6f}"] for i, m in enumerate(records.models))
    os.makedirs(folder / "task_data")
    for name, task in data.items():
        np.savez(folder / ("task_data" if name != "task8" else ".") / f"{name}.npz", features=task.features,
                 labels=task.labels)
    result = _run("experiments.fit_zoo", f"--records={folder}/records.csv", f"--task_data={folder}/task_data",
                  "--method=fennec:preset=mf", f"--out={folder}/zoo")
    assert result.returncode == 0, result.stderr
    assert "wrote zoo" in result.stdout and "8 tasks" in result.stdout
    return folder


def test_rank_command_writes_the_ranking_and_reports(cli_zoo):
    out = cli_zoo / "out"
    result = _run("experiments.rank", f"--zoo={cli_zoo}/zoo", f"--task={cli_zoo}/task8.npz",
                  "--probes=model2=0.95", f"--out={out}")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(open(out / "ranking.csv")))
    assert len(rows) == 12 and rows[0]["model"] == "model2" and rows[0]["observed"] == "true"
    assert rows[0]["measured_score"] == "0.95" and rows[1]["evidence"] == "proxy + probes (1)"
    assert all(float(r["interval_low"]) <= float(r["predicted_score"]) <= float(r["interval_high"]) for r in rows)
    html = open(out / "report.html").read()
    assert "<img" in html and "data:image/png;base64," in html and "model2" in html
    markdown = open(out / "report.md").read()  # the evidence once, above the table, not on every row
    assert "ranked from proxy + probes (1)." in markdown and "evidence" not in markdown.split("| rank")[1]
    assert "top 10" in result.stdout and result.stdout.count("model") >= 10


@pytest.mark.parametrize("case, expected", [
    ("missing_task_data", "no subfolder or .npz for task(s) task7"),
    ("out_exists", "already exists (choose another folder or pass --overwrite)"),
    ("bad_method", "--method: "),
    ("missing_records", "nothing.csv: no such file"),
])
def test_fit_zoo_bad_input_is_one_line(cli_zoo, tmp_path, case, expected):
    args = {"--records": f"--records={cli_zoo}/records.csv", "--out": f"--out={tmp_path}/zoo"}
    if case == "missing_task_data":
        os.makedirs(tmp_path / "partial")
        for name in os.listdir(cli_zoo / "task_data"):
            if name != "task7.npz":
                os.link(cli_zoo / "task_data" / name, tmp_path / "partial" / name)
        args["--task_data"] = f"--task_data={tmp_path}/partial"
    elif case == "out_exists":
        args["--out"] = f"--out={cli_zoo}/zoo"
    elif case == "bad_method":
        args["--method"] = "--method=fennec:preset=nope"
    else:
        args["--records"] = f"--records={tmp_path}/nothing.csv"
    result = _run("experiments.fit_zoo", *args.values())
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and last.startswith("error:") and expected in last and "Traceback" not in result.stderr
    if case != "out_exists":
        assert not (tmp_path / "zoo").exists()


def test_suggest_command(cli_zoo):
    result = _run("experiments.suggest", f"--zoo={cli_zoo}/zoo", f"--task={cli_zoo}/task8.npz", "--budget=2",
                  "--probes=model2=0.95")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("fine-tune next (thompson") and len(lines) == 3 and "model2 " not in result.stdout
    too_many = _run("experiments.suggest", f"--zoo={cli_zoo}/zoo", "--budget=40", "--probes=model2=0.95")
    assert too_many.returncode == 1 and too_many.stderr.strip().splitlines()[-1].startswith("error: suggest: budget")


@pytest.mark.parametrize("args, expected", [
    (["--probes=nope=0.5"], "model(s) not in the zoo: nope"),
    (["--probes=model1=high"], "score 'high' is not a number"),
    (["--probes=model1=0.5,model1=0.6"], "given twice"),
    (["--task=MISSING"], "no such file or folder"),
    (["--proxy=resnet"], "--proxy='resnet': expected one of"),
    (["--zoo=ELSEWHERE"], "not a zoo folder"),
])
def test_rank_command_bad_input_is_one_line_and_writes_nothing(cli_zoo, args, expected):
    out = cli_zoo / "bad_out"
    base = {"--zoo": f"--zoo={cli_zoo}/zoo", "--task": f"--task={cli_zoo}/task8.npz"}
    for arg in args:
        base[arg.split("=")[0]] = arg
    result = _run("experiments.rank", *base.values(), f"--out={out}")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and lines and expected in lines[-1] and "Traceback" not in result.stderr
    assert not out.exists()


def test_default_zoo_first_use_then_cached(tmp_path):
    """The README's commands: a sample task, then `rank` on the default zoo (fitted on first use
    from the bundled builder records and the packaged datasets, then cached)."""
    env = {"FENNEC_JAX_CACHE": str(tmp_path / "cache")}
    made = _run("experiments.sample_task", f"--out={tmp_path}/my_task", env=env)
    assert made.returncode == 0, made.stderr
    assert sorted(os.listdir(tmp_path / "my_task")) == ["digit_0", "digit_3", "digit_9"]
    first = _run("experiments.rank", f"--task={tmp_path}/my_task", f"--out={tmp_path}/out", env=env)
    assert first.returncode == 0, first.stderr
    assert "fitting the default zoo once" in first.stderr
    rows = list(csv.DictReader(open(tmp_path / "out" / "ranking.csv")))
    assert len(rows) == 40 and {r["evidence"] for r in rows} == {"proxy"}
    again = _run("experiments.rank", f"--task={tmp_path}/my_task", f"--out={tmp_path}/out2", "--top_k=5", env=env)
    assert again.returncode == 0 and "fitting the default zoo" not in again.stderr
    assert open(tmp_path / "out2" / "ranking.csv").read().splitlines()[1:] == \
        open(tmp_path / "out" / "ranking.csv").read().splitlines()[1:6]


def test_write_folder_is_atomic_and_respects_the_umask(tmp_path):
    from fennec_jax.core import atomic_io

    target = tmp_path / "out"

    def broken(folder):
        open(os.path.join(folder, "half"), "w").write("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_io.write_folder(str(target), broken)
    assert os.listdir(tmp_path) == []  # nothing partial, no temporary folder
    old = os.umask(0o022)
    try:
        atomic_io.write_folder(str(target), lambda f: open(os.path.join(f, "a"), "w").write("1"))
    finally:
        os.umask(old)
    assert oct(os.stat(target).st_mode & 0o777) == "0o755"
    with pytest.raises(FileExistsError):
        atomic_io.write_folder(str(target), lambda f: None)
    with pytest.raises(RuntimeError):
        atomic_io.write_folder(str(target), broken, overwrite=True)
    assert os.listdir(target) == ["a"]  # a failed overwrite leaves the old folder as it was
    atomic_io.write_folder(str(target), lambda f: open(os.path.join(f, "b"), "w").write("2"), overwrite=True)
    assert os.listdir(target) == ["b"] and os.listdir(tmp_path) == ["out"]


def test_a_clip_proxy_fits_and_ranks_through_the_commands(world, tmp_path):
    """fit_zoo and rank with --proxy=clip:DIR (a small random CLIP checkpoint in Hugging Face's
    layout): the tasks' images are embedded by that tower, the zoo records it, and ranking
    needs the same checkpoint."""
    from test_proxy import _clip_checkpoint, _write_clip

    records, _, _ = world
    _write_clip(tmp_path / "clip", _clip_checkpoint(np.random.default_rng(0)))
    rng = np.random.default_rng(1)
    with open(tmp_path / "records.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "task", "score"])
        for t, task in enumerate(records.tasks):
            writer.writerows([m, task, f"{records.scores[t, i]:.6f}"] for i, m in enumerate(records.models))
            write_image_folder(str(tmp_path / "data" / task), rng.uniform(size=(6, 40, 36, 3)),
                               np.repeat([0, 1], 3), ["a", "b"])
    write_image_folder(str(tmp_path / "new"), rng.uniform(size=(6, 32, 32, 3)), np.repeat([0, 1], 3), ["a", "b"])
    clip = f"--proxy=clip:{tmp_path / 'clip'}"
    fitted = _run("experiments.fit_zoo", f"--records={tmp_path}/records.csv", f"--task_data={tmp_path}/data", clip,
                  "--method=popularity", f"--out={tmp_path}/zoo")
    assert fitted.returncode == 0, fitted.stderr
    assert "proxy clip:clip:16" in fitted.stdout  # the checkpoint's folder name and its 16-wide embeddings
    ranked = _run("experiments.rank", f"--zoo={tmp_path}/zoo", f"--task={tmp_path}/new", clip, f"--out={tmp_path}/out")
    assert ranked.returncode == 0, ranked.stderr
    rows = list(csv.DictReader(open(tmp_path / "out" / "ranking.csv")))
    assert len(rows) == len(records.models) and rows[0]["evidence"] == "proxy"
    for args, expected in ((("--proxy=mobilenet_v2",), "the zoo was fitted with proxy clip:clip:16"),
                           ((), "this zoo's proxy is clip:clip:16: pass it")):
        refused = _run("experiments.rank", f"--zoo={tmp_path}/zoo", f"--task={tmp_path}/new", *args,
                       f"--out={tmp_path}/refused")
        assert refused.returncode == 1 and expected in refused.stderr.strip().splitlines()[-1]
        assert "Traceback" not in refused.stderr and not (tmp_path / "refused").exists()
