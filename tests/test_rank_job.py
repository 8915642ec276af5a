"""rank_all's job: complete rankings in the records' units with measured cells flagged,
atomic resumable shards, checkpoint reuse, the self-check, the program's help, errors and Ctrl-C."""

import csv
import os
import signal
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from fennec_jax.benchmarks.bundled import as_benchmark, benchmark_names, load_benchmark
from fennec_jax.core import atomic_io
from fennec_jax.core.records import records_from_matrix
from fennec_jax.methods.base import get_method, method_names
from fennec_jax.ranking.rank import rank_tasks, task_evidence, task_units
from fennec_jax.ranking.rank_job import HEADER, RankJob, run_rank_job
from fennec_jax.ranking.table import RankingTable

ROOT = os.path.join(os.path.dirname(__file__), "..")


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_rankings_are_complete_and_ordered(tmp_path):
    bench = load_benchmark("parc_controlled")
    job = RankJob(method="knn_task", shard_size=4, eval_seeds=2)
    summary = run_rank_job([bench], get_method("knn_task"), job, str(tmp_path))
    rows = read_rows(tmp_path / "rankings.csv")
    assert summary["rows"] == len(rows) == 6 * 32
    records = bench.records
    for task in bench.targets:
        mine = [r for r in rows if r["task"] == task]
        assert [int(r["rank"]) for r in mine] == list(range(1, 33))
        assert sorted(r["model"] for r in mine) == sorted(records.models)
        keys = [float(r["measured_score"] or r["predicted_score"]) for r in mine]
        assert keys == sorted(keys, reverse=True)
        t = records.task_index(task)
        for r in mine:  # measured cells are the records' scores, flagged
            m = records.models.index(r["model"])
            assert r["observed"] == ("true" if records.mask[t, m] else "false")
            assert r["measured_score"] == (str(records.scores[t, m]) if records.mask[t, m] else "")
    entry = summary["benchmarks"]["parc_controlled"]
    assert entry["shards"] == 2 and entry["tasks"] == 6 and -1 <= entry["loto"]["weighted_tau"] <= 1


def test_top_k_keeps_the_best(tmp_path):
    bench = load_benchmark("spider_multi")
    method = get_method("popularity")
    state = method.fit(bench.records)
    full = rank_tasks(bench, method, state, bench.target_indices[:2])
    top = rank_tasks(bench, method, state, bench.target_indices[:2], top_k=5)
    assert [(task, table.rows(5)) for task, table in top] == [(task, table.rows(5)) for task, table in full]


def test_resume_reuses_finished_shards_and_gives_the_same_output(tmp_path):
    bench = load_benchmark("parc_controlled")
    job = RankJob(method="fennec", shard_size=2, eval_seeds=1)
    out = str(tmp_path)
    run_rank_job([bench], get_method("fennec"), job, out, formats=("csv", "parquet"))
    first = (tmp_path / "rankings.csv").read_text()
    first_parquet = pq.read_table(tmp_path / "rankings.parquet")
    parts = tmp_path / "parts" / "parc_controlled"
    kept = os.path.getmtime(parts / "shard-00000.csv")
    # Simulate a run killed after its first shard: later shards and the final files are missing.
    for name in ("shard-00001.csv", "shard-00002.csv"):
        os.remove(parts / name)
    os.remove(tmp_path / "rankings.csv")
    os.remove(tmp_path / "rankings.parquet")
    log = []
    run_rank_job([bench], get_method("fennec"), job, out, log=log.append, formats=("csv", "parquet"))
    assert (tmp_path / "rankings.csv").read_text() == first
    assert pq.read_table(tmp_path / "rankings.parquet").equals(first_parquet)
    assert os.path.getmtime(parts / "shard-00000.csv") == kept
    assert "parc_controlled: shard 1/3 already done" in log
    assert (tmp_path / "checkpoints" / "parc_controlled").is_dir()


def test_parquet_holds_the_csv_rows_typed_one_row_group_per_shard(tmp_path):
    bench = load_benchmark("parc_controlled")
    job = RankJob(method="knn_task", shard_size=4, eval_seeds=1)
    summary = run_rank_job([bench], get_method("knn_task"), job, str(tmp_path), formats=("parquet", "csv"))
    rows = read_rows(tmp_path / "rankings.csv")
    parquet = pq.ParquetFile(tmp_path / "rankings.parquet")
    assert parquet.num_row_groups == 2 and summary["rows"] == parquet.metadata.num_rows == len(rows)
    table = parquet.read().to_pylist()
    for row, typed in zip(rows, table):
        assert row["benchmark"] == typed["benchmark"] and row["task"] == typed["task"]
        assert (int(row["rank"]), row["model"], row["observed"] == "true") == (
            typed["rank"], typed["model"], typed["observed"])
        assert float(row["predicted_score"]) == typed["predicted_score"]
        assert typed["measured_score"] == (float(row["measured_score"]) if row["measured_score"] else None)
    # The CSV is the shards' rows behind one header, byte for byte.
    shards = sorted((tmp_path / "parts" / "parc_controlled").glob("shard-*.csv"))
    body = "".join(path.read_text().split("\n", 1)[1] for path in shards)
    assert (tmp_path / "rankings.csv").read_text() == ",".join(HEADER) + "\n" + body
    with pytest.raises(ValueError, match="formats"):
        run_rank_job([bench], get_method("knn_task"), job, str(tmp_path), formats=("xlsx",))


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
    import dataclasses

    bench = load_benchmark("parc_all")  # source == some targets: the affinity term is on
    t = int(bench.target_indices[0])
    mask = bench.records.mask.copy()
    mask[t, np.flatnonzero(mask[t])[5:]] = False  # a sparse target: the engine picks candidates for top_k
    records = dataclasses.replace(bench.records, mask=mask, scores=np.where(mask, bench.records.scores, np.nan),
                                  counts=mask.astype(int))
    bench = dataclasses.replace(bench, records=records, eval_mask=bench.eval_mask & mask)
    method = get_method("fennec")
    state = method.fit(bench.records)
    scores = np.asarray(method.score(state, task_evidence(bench, t)))
    (_, table), = rank_tasks(bench, method, state, [t])
    order = [bench.records.models.index(m) for m in table.models]
    mean, std = task_units(bench.records)
    np.testing.assert_allclose(table.predicted, mean[t] + std[t] * scores[order], rtol=1e-4)
    # With top_k the engine picks the candidates; their best rows are the same.
    (_, top), = rank_tasks(bench, method, state, [t], top_k=3)
    assert top.rows(3) == table.rows(3) and len(top.models) < len(table.models)


def test_single_task_benchmark_has_no_loto_check(tmp_path):
    records = records_from_matrix(["a", "b", "c"], ["only"], np.array([[1.0, 3.0, 2.0]]))
    summary = run_rank_job([as_benchmark(records, "one")], get_method("popularity"),
                           RankJob(method="popularity", eval_seeds=1), str(tmp_path))
    assert summary["benchmarks"]["one"]["loto"]["weighted_tau"] is None
    assert [r["model"] for r in read_rows(tmp_path / "rankings.csv")] == ["b", "c", "a"]


def test_rank_all_program_reports_bad_records_in_one_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("model,task,score\na,t,1\nb,t,oops\n")
    done = subprocess.run([sys.executable, "-m", "experiments.rank_all", f"--records={bad}", f"--out={tmp_path / 'out'}"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 1
    assert f"error: {bad}: line 3: score 'oops' is not a number" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_rank_all_program_reports_an_unknown_method_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "experiments.rank_all", "--method=spidr", f"--out={tmp_path / 'out'}"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
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
    done = subprocess.run([sys.executable, "-m", "experiments.rank_all", "--benchmarks=parc_controlled", "--method=logme",
                           f"--out={tmp_path / 'out'}"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: logme: needs every model's features")
    assert "Traceback" not in done.stderr


def test_ranking_table_ranks_measured_scores_over_predictions_ties_by_name(tmp_path):
    table = RankingTable(models=("c", "b", "a", "d"), predicted=np.array([0.5, 0.9, 0.9, 0.2]),
                         measured=np.array([np.nan, np.nan, np.nan, 0.99]),
                         low=np.array([0.4, 0.8, 0.8, 0.1]), high=np.array([0.6, 1.0, 1.0, 0.3]))
    assert table.rows() == [(1, "d", 0.2, 0.1, 0.3, "true", 0.99), (2, "a", 0.9, 0.8, 1.0, "false", ""),
                            (3, "b", 0.9, 0.8, 1.0, "false", ""), (4, "c", 0.5, 0.4, 0.6, "false", "")]
    lower = RankingTable(models=table.models, predicted=table.predicted, measured=table.measured, lower_is_better=True)
    assert [row[0] for row in lower.rows(2, columns=("model",))] == ["c", "a"]
    # order_scores: the order (d, a, b, c) as scores, higher = earlier; a fixed order overrides it
    np.testing.assert_array_equal(table.order_scores(), [0, 1, 2, 3])
    fixed = RankingTable(models=table.models, predicted=table.predicted, measured=table.measured,
                         fixed_order=np.array([1, 0, 2, 3]))
    np.testing.assert_array_equal(fixed.order_scores(), [2, 3, 1, 0])
    lower.write_csv(str(tmp_path / "t.csv"), top_k=1)
    assert (tmp_path / "t.csv").read_text() == ("rank,model,predicted_score,interval_low,interval_high,observed,"
                                                "measured_score\n1,c,0.5,,,false,\n")


def _rank(tmp_path, scores, method="popularity", **job):
    """rank_all's rows of a synthetic records table (models m0.., tasks t0..)."""
    scores = np.asarray(scores, dtype=np.float64)
    records = records_from_matrix([f"m{i}" for i in range(scores.shape[1])], [f"t{i}" for i in range(len(scores))],
                                  scores)
    summary = run_rank_job([as_benchmark(records, "syn")], get_method(method), RankJob(method=method, **job),
                           str(tmp_path))
    return summary, read_rows(tmp_path / "rankings.csv")


def test_rankings_are_in_the_records_units_with_measured_cells_flagged(tmp_path):
    # m7 is the worst model on t0 and t1 but measured best on t2 (0.996): it ranks first there,
    # flagged, and predictions are in t2's units (accuracy), not in standardized units.
    nan = np.nan
    scores = [np.linspace(0.9, 0.2, 8), np.linspace(0.8, 0.1, 8), [nan, 0.90, 0.89, 0.88, 0.87, 0.86, nan, 0.996]]
    _, rows = _rank(tmp_path, scores, eval_seeds=1)
    t2 = {r["model"]: r for r in rows if r["task"] == "t2"}
    assert (t2["m7"]["rank"], t2["m7"]["observed"], t2["m7"]["measured_score"]) == ("1", "true", "0.996")
    assert (t2["m0"]["observed"], t2["m0"]["measured_score"]) == ("false", "")
    method = get_method("popularity")
    records = records_from_matrix([f"m{i}" for i in range(8)], ["t0", "t1", "t2"], np.array(scores))
    latent = method.score(method.fit(records), task_evidence(as_benchmark(records), 2))
    observed = np.array(scores[2])[records.mask[2]]
    np.testing.assert_allclose([float(t2[f"m{i}"]["predicted_score"]) for i in range(8)],
                               observed.mean() + observed.std() * latent, rtol=1e-5)


def test_lower_is_better_tasks_rank_the_lowest_first_in_their_own_units(tmp_path):
    # t1 is an error: m0 (best on t0) has the lowest; m2's predicted error lies between m1's and m3's.
    nan = np.nan
    summary, rows = _rank(tmp_path, [[4.0, 3.0, 2.0, 1.0], [0.10, 0.20, nan, 0.40]], lower_is_better=("t1",),
                          eval_probes=0, eval_seeds=1)
    t1 = [r for r in rows if r["task"] == "t1"]
    assert [(r["model"], r["measured_score"]) for r in t1] == [("m0", "0.1"), ("m1", "0.2"), ("m2", ""), ("m3", "0.4")]
    assert 0.2 < float(t1[2]["predicted_score"]) < 0.4
    assert [r["model"] for r in rows if r["task"] == "t0"] == ["m0", "m1", "m2", "m3"]
    assert summary["job"]["lower_is_better"] == ["t1"]


def test_a_task_with_fewer_evaluated_models_than_probes_is_left_out_of_the_check(tmp_path):
    nan = np.nan
    log = []
    scores = [[5, 4, 3, 2, 1, 0], [6, 5, 4, 3, 2, 1], [1, 3, 2, 5, 4, 6], [nan, nan, nan, nan, 1, 2]]
    records = records_from_matrix([f"m{i}" for i in range(6)], [f"t{i}" for i in range(4)], np.array(scores, float))
    summary = run_rank_job([as_benchmark(records, "syn")], get_method("knn_task"),
                           RankJob(method="knn_task", eval_probes=3, eval_seeds=1), str(tmp_path), log=log.append)
    assert {r["task"] for r in read_rows(tmp_path / "rankings.csv")} == {"t0", "t1", "t2", "t3"}
    loto = summary["benchmarks"]["syn"]["loto"]
    assert loto["skipped"] == ["t3"] and "fewer than k + 2 = 5 evaluated models: t3" in loto["note"]
    assert loto["weighted_tau"] is not None
    assert log[-1] == "syn: self-check 3/3 tasks"


def test_the_check_holds_out_at_most_eval_max_tasks_targets(tmp_path):
    scores = np.random.default_rng(0).random((7, 6))
    log = []
    records = records_from_matrix([f"m{i}" for i in range(6)], [f"t{i}" for i in range(7)], scores)
    summary = run_rank_job([as_benchmark(records, "syn")], get_method("popularity"),
                           RankJob(method="popularity", eval_probes=1, eval_seeds=1, eval_max_tasks=3), str(tmp_path),
                           log=log.append)
    loto = summary["benchmarks"]["syn"]["loto"]
    assert "held out 3 of the 7 targets" in loto["note"] and log[-1] == "syn: self-check 3/3 tasks"
    # The same figure as the evaluation loop holding out t0, t3 and t6 against all 7 targets.
    from fennec_jax.eval import protocol

    report = protocol.evaluate(as_benchmark(records, "syn"), {"popularity": get_method("popularity")},
                               protocol.TasksOut(probes=(1,), seeds=1, held_out=("t0", "t3", "t6")))
    assert loto["weighted_tau"] == report["results"]["popularity"]["1"]["mean"]["weighted_tau"]
    assert sorted(report["results"]["popularity"]["1"]["per_task"]) == ["t0", "t3", "t6"]
    with pytest.raises(ValueError, match=r"held_out: not target tasks of syn: \['t9'\]"):
        protocol.evaluate(as_benchmark(records, "syn"), {"popularity": get_method("popularity")},
                          protocol.TasksOut(probes=(1,), seeds=1, held_out=("t9",)))


def test_output_files_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_io.write_text(str(tmp_path / "shared.txt"), "x")
        os.umask(0o077)
        atomic_io.write_text(str(tmp_path / "private.txt"), "x")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "shared.txt").st_mode & 0o777 == 0o644
    assert os.stat(tmp_path / "private.txt").st_mode & 0o777 == 0o600
    assert sorted(os.listdir(tmp_path)) == ["private.txt", "shared.txt"]  # no temp file left


def test_rank_all_help_lists_methods_and_benchmarks_and_exits_0():
    done = subprocess.run([sys.executable, "-m", "experiments.rank_all", "--help"], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    for name in (*method_names(), *benchmark_names()):
        assert name in text


def test_rankings_are_written_before_the_check(tmp_path):
    from fennec_jax.methods.baselines import Popularity

    class StopsInTheCheck(Popularity):
        def fit(self, history, seed=0):  # the check fits on fewer tasks than the ranking
            if history.num_tasks < 8:
                raise KeyboardInterrupt
            return super().fit(history, seed)

    bench = load_benchmark("spider_single")
    try:
        run_rank_job([bench], StopsInTheCheck(), RankJob(method="popularity", eval_seeds=1), str(tmp_path))
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the check did not run")
    assert len(read_rows(tmp_path / "rankings.csv")) == 8 * 10


def test_rank_all_ctrl_c_ends_in_one_line(tmp_path):
    # fennec: its check (a fit per held-out task and seed) lasts seconds, so the signal lands
    # in it; with knn_task the whole check could end before the signal arrived.
    proc = subprocess.Popen([sys.executable, "-m", "experiments.rank_all", "--benchmarks=parc_controlled",
                             "--method=fennec", f"--out={tmp_path}"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            # A job started in the background by a shell inherits SIGINT ignored,
                            # and so would the program: give it the default disposition, as a
                            # terminal would.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert "parc_controlled: shard 1/1 ranked" in proc.stderr.readline()
        proc.send_signal(signal.SIGINT)  # during the check (or just before it)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert err.strip().splitlines() == ["interrupted"] and "Traceback" not in err
