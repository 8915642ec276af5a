"""The rank_all --space job: rankings from a transfer space equal to a full stable sort, task
selection, resume, Parquet and CSV outputs, bad inputs in one line, and the space export."""

import csv
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from fennec_jax.benchmarks.bundled import load_benchmark
from fennec_jax.methods.base import get_method
from fennec_jax.ranking import space_job

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _write_space(folder, num_models=60, num_tasks=7, dim=3, names=True, seed=0):
    """Small-integer vectors (exact scores, many ties) and biases, saved as a space folder."""
    rng = np.random.default_rng(seed)
    draw = lambda *shape: rng.integers(-2, 3, size=shape).astype(np.float32)
    arrays = {"model_vecs": draw(num_models, dim), "task_vecs": draw(num_tasks, dim),
              "model_bias": draw(num_models), "task_bias": draw(num_tasks)}
    os.makedirs(folder, exist_ok=True)
    for name, array in arrays.items():
        np.save(os.path.join(folder, f"{name}.npy"), array)
    if names:
        for name, prefix, count in (("models.txt", "m", num_models), ("tasks.txt", "t", num_tasks)):
            with open(os.path.join(folder, name), "w") as f:
                f.write("".join(f"{prefix}{i}\n" for i in range(count)))
    return arrays


def _expected(arrays, task, k):
    """(models[k], scores[k]) of one task by a stable sort of float64 scores."""
    scores = (arrays["model_vecs"].astype(np.float64) @ arrays["task_vecs"][task]
              + arrays["model_bias"])
    order = np.argsort(-scores, kind="stable")[:k]
    return order, scores[order] + arrays["task_bias"][task]


@pytest.mark.parametrize("top_k", [5, None])
def test_rankings_equal_a_stable_sort_in_both_formats(tmp_path, top_k):
    arrays = _write_space(tmp_path / "space")
    job = space_job.SpaceJob(top_k=top_k, shard_size=3)
    summary = space_job.run_space_job(space_job.load_space(str(tmp_path / "space")), job,
                                      str(tmp_path / "out"), formats=("csv", "parquet"))
    k = top_k or 60
    assert summary["rows"] == 7 * k and summary["shards"] == 3
    parquet = pq.ParquetFile(tmp_path / "out" / "rankings.parquet")
    assert parquet.num_row_groups == 3  # one per shard
    table = parquet.read().to_pydict()
    with open(tmp_path / "out" / "rankings.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == table["model"]
    assert [float(r["score"]) for r in rows] == pytest.approx(table["score"])
    for t in range(7):
        mine = slice(t * k, (t + 1) * k)
        assert set(table["task"][mine]) == {f"t{t}"}
        assert table["rank"][mine] == list(range(1, k + 1))
        models, scores = _expected(arrays, t, k)
        assert table["model"][mine] == [f"m{m}" for m in models]
        np.testing.assert_array_equal(np.float32(table["score"][mine]), scores.astype(np.float32))


def test_tasks_by_name_or_range_and_default_names(tmp_path):
    arrays = _write_space(tmp_path / "space", names=False)
    space = space_job.load_space(str(tmp_path / "space"))
    np.testing.assert_array_equal(space_job.select_tasks(space, tasks=["4", "1"]), [4, 1])
    np.testing.assert_array_equal(space_job.select_tasks(space, task_range=(2, 5)), [2, 3, 4])
    space_job.run_space_job(space, space_job.SpaceJob(top_k=2, tasks=("4", "1")),
                            str(tmp_path / "out"))
    table = pq.read_table(tmp_path / "out" / "rankings.parquet").to_pydict()
    assert table["task"] == ["4", "4", "1", "1"]
    assert table["model"] == [str(m) for t in (4, 1) for m in _expected(arrays, t, 2)[0]]


def test_resume_reuses_finished_shards_and_gives_the_same_output(tmp_path):
    _write_space(tmp_path / "space")
    space = space_job.load_space(str(tmp_path / "space"))
    job = space_job.SpaceJob(top_k=4, shard_size=2)
    out = tmp_path / "out"
    space_job.run_space_job(space, job, str(out), formats=("csv", "parquet"))
    first = {name: (out / name).read_bytes() for name in ("rankings.csv", "rankings.parquet")}
    kept = os.path.getmtime(out / "parts" / "shard-00000.parquet")
    # A run killed after its first shard: later shards and the final files are missing.
    for name in ("parts/shard-00001.parquet", "parts/shard-00003.parquet", "rankings.csv",
                 "rankings.parquet"):
        os.remove(out / name)
    log = []
    space_job.run_space_job(space, job, str(out), formats=("csv", "parquet"), log=log.append)
    assert {name: (out / name).read_bytes() for name in first} == first
    assert os.path.getmtime(out / "parts" / "shard-00000.parquet") == kept
    assert "shard 1/4 already done" in log and "shard 2/4 ranked (2 tasks)" in log
    # Other arguments start afresh.
    log.clear()
    space_job.run_space_job(space, space_job.SpaceJob(top_k=3, shard_size=2), str(out), log=log.append)
    assert any("starting afresh" in m for m in log)
    assert pq.read_metadata(out / "rankings.parquet").num_rows == 7 * 3


@pytest.mark.parametrize("change, match", [
    (lambda d: os.remove(d / "task_vecs.npy"), "task_vecs.npy: missing"),
    (lambda d: np.save(d / "task_vecs.npy", np.zeros((7, 4), np.float32)), "expected 3 columns"),
    (lambda d: np.save(d / "model_vecs.npy", np.full((60, 3), np.nan, np.float32)), "model_vecs.npy: expected finite"),
    (lambda d: np.save(d / "model_bias.npy", np.zeros(59, np.float32)), r"model_bias.npy: expected shape \(60,\)"),
    (lambda d: (d / "models.txt").write_text("a\nb\n"), "models.txt: expected 60 names"),
    (lambda d: (d / "tasks.txt").write_text("x\n" * 7), "tasks.txt: expected distinct"),
    (lambda d: (d / "model_vecs.npy").write_text("not numpy"), "model_vecs.npy: expected a NumPy"),
])
def test_bad_space_is_one_error_naming_the_file(tmp_path, change, match):
    _write_space(tmp_path)
    change(tmp_path)
    with pytest.raises(space_job.SpaceError, match=match):
        space_job.load_space(str(tmp_path))


@pytest.mark.parametrize("job, match", [
    (space_job.SpaceJob(tasks=("t1", "nope")), "tasks: no task named 'nope'"),
    (space_job.SpaceJob(task_range=(3, 9)), "task_range: expected start:stop"),
    (space_job.SpaceJob(top_k=61), "top_k: expected 1 to 60"),
])
def test_bad_job_arguments_name_the_argument(tmp_path, job, match):
    _write_space(tmp_path / "space")
    with pytest.raises(space_job.SpaceError, match=match):
        space_job.run_space_job(space_job.load_space(str(tmp_path / "space")), job, str(tmp_path / "out"))


def _rank_all(*flags):
    return subprocess.run([sys.executable, "-m", "experiments.rank_all", *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)


def test_rank_all_program_reports_bad_space_inputs_in_one_line(tmp_path):
    _write_space(tmp_path / "space")
    np.save(tmp_path / "space" / "task_vecs.npy", np.zeros((7, 5), np.float32))
    for flags, message in [((f"--space={tmp_path / 'space'}",), "task_vecs.npy: expected 3 columns"),
                           ((f"--space={tmp_path / 'none'}",), "no such folder")]:
        done = _rank_all(*flags, f"--out={tmp_path / 'out'}")
        assert done.returncode == 1
        assert done.stderr.strip().splitlines() == [done.stderr.strip()] and message in done.stderr
        assert "Traceback" not in done.stderr


def test_exported_space_ranks_like_the_method(tmp_path):
    bench = load_benchmark("parc_controlled")
    method = get_method("fennec")
    state = method.fit(bench.records, seed=0)
    shape = space_job.export_space(bench, method, state, str(tmp_path / "space"))
    space = space_job.load_space(str(tmp_path / "space"))
    assert shape == {"models": 32, "tasks": 6, "dim": space.model_vecs.shape[1]}
    assert space.tasks == tuple(bench.targets)
    space_job.run_space_job(space, space_job.SpaceJob(tasks=(bench.targets[0],)), str(tmp_path / "out"))
    table = pq.read_table(tmp_path / "out" / "rankings.parquet").to_pydict()
    from fennec_jax.ranking.rank import task_evidence  # pylint: disable=import-outside-toplevel
    scores = method.score(state, task_evidence(bench, int(bench.target_indices[0])))
    expected = [bench.records.models[m] for m in np.argsort(-np.asarray(scores), kind="stable")]
    assert table["model"] == expected
    np.testing.assert_allclose(table["score"], np.sort(np.asarray(scores))[::-1], rtol=1e-4, atol=1e-4)
    with pytest.raises(space_job.SpaceError, match="holds no space"):
        space_job.export_space(bench, method, state, str(tmp_path / "out"))
    with pytest.raises(space_job.SpaceError, match="no transfer space"):
        space_job.export_space(bench, get_method("popularity"), None, str(tmp_path / "other"))
