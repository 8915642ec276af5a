"""rank_all's job: complete rankings, atomic resumable shards, checkpoint reuse."""

import csv
import os

import numpy as np
from fennec_jax.benchmarks.bundled import load_benchmark
from fennec_jax.methods.base import get_method
from fennec_jax.ranking.rank_job import RankJob, run_rank_job
from fennec_jax.ranking.rank import rank_tasks, task_evidence


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_rankings_are_complete_and_ordered(tmp_path):
    bench = load_benchmark("parc_controlled")
    job = RankJob(method="knn_task", shard_size=4, eval_seeds=2)
    summary = run_rank_job([bench], get_method("knn_task"), job, str(tmp_path))
    rows = read_rows(tmp_path / "rankings.csv")
    assert summary["rows"] == len(rows) == 6 * 32
    for task in bench.targets:
        mine = [r for r in rows if r["task"] == task]
        assert [int(r["rank"]) for r in mine] == list(range(1, 33))
        assert sorted(r["model"] for r in mine) == sorted(bench.records.models)
        scores = [float(r["score"]) for r in mine]
        assert scores == sorted(scores, reverse=True)
    entry = summary["benchmarks"]["parc_controlled"]
    assert entry["shards"] == 2 and entry["tasks"] == 6 and -1 <= entry["loto"]["weighted_tau"] <= 1


def test_top_k_keeps_the_best(tmp_path):
    bench = load_benchmark("spider_multi")
    method = get_method("popularity")
    state = method.fit(bench.records)
    full = rank_tasks(bench, method, state, bench.target_indices[:2])
    top = rank_tasks(bench, method, state, bench.target_indices[:2], top_k=5)
    assert top == [r for r in full if r[1] <= 5]


def test_resume_reuses_finished_shards_and_gives_the_same_output(tmp_path):
    bench = load_benchmark("parc_controlled")
    job = RankJob(method="fennec", shard_size=2, eval_seeds=1)
    out = str(tmp_path)
    run_rank_job([bench], get_method("fennec"), job, out)
    first = (tmp_path / "rankings.csv").read_text()
    parts = tmp_path / "parts" / "parc_controlled"
    kept = os.path.getmtime(parts / "shard-00000.csv")
    # Simulate a run killed after its first shard: later shards and the final files are missing.
    for name in ("shard-00001.csv", "shard-00002.csv"):
        os.remove(parts / name)
    os.remove(tmp_path / "rankings.csv")
    log = []
    run_rank_job([bench], get_method("fennec"), job, out, log=log.append)
    assert (tmp_path / "rankings.csv").read_text() == first
    assert os.path.getmtime(parts / "shard-00000.csv") == kept
    assert "parc_controlled: shard 1/3 already done" in log
    assert (tmp_path / "checkpoints" / "parc_controlled").is_dir()


def test_other_arguments_start_afresh(tmp_path):
    bench = load_benchmark("parc_controlled")
    out = str(tmp_path)
    run_rank_job([bench], get_method("knn_task"), RankJob(method="knn_task", eval_seeds=1), out)
    log = []
    run_rank_job([bench], get_method("knn_task"), RankJob(method="knn_task", top_k=3, eval_seeds=1), out,
                 log=log.append)
    assert any("other arguments" in m for m in log)
    assert len(read_rows(tmp_path / "rankings.csv")) == 6 * 3


def test_vector_path_matches_score_path():
    # The engine (vector arithmetic, streaming top-k) ranks exactly as method.score + argsort.
    bench = load_benchmark("parc_all")  # source == some targets: the affinity term is on
    method = get_method("fennec")
    state = method.fit(bench.records)
    t = int(bench.target_indices[0])
    ev = task_evidence(bench, t)
    scores = np.asarray(method.score(state, ev))
    rows = rank_tasks(bench, method, state, [t])
    order = [bench.records.models.index(r[2]) for r in rows]
    np.testing.assert_allclose([r[3] for r in rows], scores[order], rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(scores[order]) <= 1e-5)


def test_single_task_benchmark_has_no_loto_check(tmp_path):
    from fennec_jax.benchmarks.bundled import as_benchmark
    from fennec_jax.core.records import records_from_matrix

    records = records_from_matrix(["a", "b", "c"], ["only"], np.array([[1.0, 3.0, 2.0]]))
    summary = run_rank_job([as_benchmark(records, "one")], get_method("popularity"),
                           RankJob(method="popularity", eval_seeds=1), str(tmp_path))
    assert summary["benchmarks"]["one"]["loto"]["weighted_tau"] is None
    assert [r["model"] for r in read_rows(tmp_path / "rankings.csv")] == ["b", "c", "a"]


def test_rank_all_program_reports_bad_records_in_one_line(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.csv"
    bad.write_text("model,task,score\na,t,1\nb,t,oops\n")
    root = os.path.join(os.path.dirname(__file__), "..")
    done = subprocess.run([sys.executable, "-m", "experiments.rank_all", f"--records={bad}", f"--out={tmp_path / 'out'}"],
                          capture_output=True, text=True, timeout=300, cwd=root)
    assert done.returncode == 1
    assert f"error: {bad}: line 3: score 'oops' is not a number" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_rank_all_program_reports_an_unknown_method_in_one_line(tmp_path):
    import subprocess
    import sys

    root = os.path.join(os.path.dirname(__file__), "..")
    done = subprocess.run([sys.executable, "-m", "experiments.rank_all", "--method=spidr", f"--out={tmp_path / 'out'}"],
                          capture_output=True, text=True, timeout=300, cwd=root)
    assert done.returncode == 1
    assert "error: --method: unknown method 'spidr'; choose from" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_spider_state_is_checkpointed_and_reused_on_resume(tmp_path):
    import fennec_jax as fj
    from fennec_jax.core import checkpoint
    from fennec_jax.methods import spider

    rng = np.random.default_rng(0)
    scores = 70 + 5 * (np.linspace(2, -2, 8)[None, :] + 0.3 * rng.standard_normal((10, 8)))
    records = fj.records_from_matrix([f"m{i}" for i in range(8)], [f"t{i}" for i in range(10)], scores)
    bench = fj.as_benchmark(records, name="tiny", targets=("t0", "t1"))
    method = spider.Spider(config=spider.SpiderConfig(d=8, heads=2, steps=100, rerank_choices=(0, 2),
                                                      train_probes=(0, 3), valid_probes=(0, 3), valid_draws=2))
    job = RankJob(method="spider", eval_seeds=1)
    run_rank_job([bench], method, job, str(tmp_path))
    first = (tmp_path / "rankings.csv").read_text()
    ckpt = tmp_path / "checkpoints" / "tiny"
    assert checkpoint.stored_format(str(ckpt)) == spider.FORMAT

    # Resume after a kill: the shard and the final files are gone, the fit must not rerun.
    os.remove(tmp_path / "parts" / "tiny" / "shard-00000.csv")
    os.remove(tmp_path / "rankings.csv")

    class NoFit(spider.Spider):
        def fit(self, history, seed=0):
            raise AssertionError("refitted although a checkpoint exists")

    run_rank_job([bench], NoFit(config=method.config), job, str(tmp_path))
    assert (tmp_path / "rankings.csv").read_text() == first


def test_rank_all_program_names_missing_evidence_in_one_line(tmp_path):
    # An estimator ranks from every model's features, which the bundled records do not carry.
    import subprocess
    import sys

    root = os.path.join(os.path.dirname(__file__), "..")
    done = subprocess.run([sys.executable, "-m", "experiments.rank_all", "--benchmarks=parc_controlled", "--method=logme",
                           f"--out={tmp_path / 'out'}"], capture_output=True, text=True, timeout=300, cwd=root)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: logme: needs every model's features")
    assert "Traceback" not in done.stderr
