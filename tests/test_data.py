"""Records loading and validation: every bad input names file, line and problem."""

import os
import warnings

import numpy as np
import pytest

from fennec_jax.benchmarks.bundled import benchmark_names, load_benchmark
from fennec_jax.core.records import RecordsError, load_metadata, load_records, standardize


def write(tmp_path, name, text):
    path = os.path.join(tmp_path, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def test_long_table_to_matrix(tmp_path):
    path = write(tmp_path, "r.csv", "model,task,score\na,t1,1.0\nb,t1,2.5\na,t2,3\n")
    r = load_records(path)
    assert r.models == ("a", "b") and r.tasks == ("t1", "t2")
    np.testing.assert_array_equal(r.mask, [[True, True], [True, False]])
    assert r.scores[0, 1] == 2.5 and np.isnan(r.scores[1, 1])
    assert r.counts.tolist() == [[1, 1], [1, 0]]


def test_seed_repeats_are_averaged_and_counted(tmp_path):
    path = write(tmp_path, "r.csv", "model,task,score,seed\na,t,1,0\na,t,3,1\nb,t,5,0\n")
    r = load_records(path)
    assert r.scores[0, 0] == 2.0 and r.counts[0, 0] == 2 and r.counts[0, 1] == 1


def test_split_column_is_kept(tmp_path):
    path = write(tmp_path, "r.csv", "model,task,score,split\na,t,1,val\nb,t,2,test\n")
    assert load_records(path).splits.tolist() == [["val", "test"]]


@pytest.mark.parametrize(
    "text, message",
    [
        ("model,task\na,t\n", "missing column(s) score"),
        ("", "empty file"),
        ("model,task,score\n", "no data rows"),
        ("model,task,score\na,t,1\nb,t,abc\n", "line 3: score 'abc' is not a number"),
        ("model,task,score\na,t,nan\n", "line 2: score 'nan' is not finite"),
        ("model,task,score\na,t,inf\n", "line 2: score 'inf' is not finite"),
        ("model,task,score\na,t,1\nb,t,2\na,t,3\n", "line 4: duplicate (model, task) = ('a', 't'), first at line 2"),
        ("model,task,score,seed\na,t,1,0\na,t,3,0\n", "line 3: duplicate (model, task, seed)"),
        ("model,task,score\na,t,1,9\n", "line 2: 4 fields, header has 3"),
        ("model,task,score\n,t,1\n", "line 2: empty model name"),
        ("model,task,score,split\na,t,1,val,\n", "5 fields"),
    ],
)
def test_bad_records_name_the_line_and_problem(tmp_path, text, message):
    path = write(tmp_path, "bad.csv", text)
    with pytest.raises(RecordsError) as err:
        load_records(path)
    assert path in str(err.value) and message in str(err.value)


def test_wide_table_as_published_reads_like_the_bundled_benchmark(tmp_path):
    # The Model Spider single-source accuracies are a wide table (model, then one column per
    # task); one empty cell marks a result the table does not hold.
    import importlib.resources

    text = importlib.resources.files("fennec_jax").joinpath("bundled", "model_spider",
                                                           "single_source_finetune_acc.csv").read_text("utf-8")
    lines = text.splitlines()
    first = lines[1].split(",")
    lines[1] = ",".join([first[0], ""] + first[2:])  # googlenet x Aircraft missing
    r = load_records(write(tmp_path, "wide.csv", "\n".join(lines) + "\n"))
    bench = load_benchmark("spider_single").records
    assert r.models == bench.models and r.tasks == bench.tasks[:10]
    expected = bench.scores[:10].copy()
    expected[0, 0] = np.nan
    np.testing.assert_array_equal(r.scores, expected)
    assert r.mask.sum() == 99 and not r.mask[0, 0]


def test_wide_table_keeps_models_and_tasks_without_scores_and_names_bad_cells(tmp_path):
    r = load_records(write(tmp_path, "w.csv", "arch,t1,t2,t3\na,1,,\nb,,,\nc,2,3,\n"))
    assert r.models == ("a", "b", "c") and r.tasks == ("t1", "t2", "t3")
    assert r.mask.tolist() == [[True, False, True], [False, False, True], [False, False, False]]
    for text, message in [("model,t1,t2\na,1,x\n", "line 2: t2 'x' is not a number"),
                          ("model,t1\na,1\na,2\n", "line 3: duplicate model 'a', first at line 2"),
                          ("model,t1,t1\na,1,2\n", "line 1: task column 't1' appears twice"),
                          ("model\na\n", "one column only")]:
        with pytest.raises(RecordsError, match=message):
            load_records(write(tmp_path, "bad.csv", text))


def test_byte_order_mark_is_stripped_and_non_utf8_is_one_line(tmp_path):
    bom = os.path.join(tmp_path, "bom.csv")
    with open(bom, "wb") as f:
        f.write("model,task,score\na,t,1\n".encode("utf-8-sig"))
    assert load_records(bom).models == ("a",)
    latin = os.path.join(tmp_path, "latin1.csv")
    with open(latin, "wb") as f:
        f.write("model,task,score\na,caf\u00e9,1\n".encode("latin-1"))
    with pytest.raises(RecordsError) as err:
        load_records(latin)
    assert str(err.value) == f"{latin}: line 2: byte 0xe9 is not UTF-8; expected a UTF-8 CSV file (or a .parquet file)"


def test_missing_file(tmp_path):
    with pytest.raises(RecordsError, match="no such file"):
        load_records(os.path.join(tmp_path, "nope.csv"))


def test_model_metadata_attaches_and_rejects_unknown_models(tmp_path):
    records = write(tmp_path, "r.csv", "model,task,score\na,t,1\nb,t,2\n")
    meta = write(tmp_path, "m.csv", "model,family,params\nb,resnet,25.5\na,vit,\n")
    r = load_records(records, model_meta=meta)
    assert r.model_meta["family"].tolist() == ["vit", "resnet"]
    assert r.model_meta["params"][1] == 25.5 and np.isnan(r.model_meta["params"][0])
    bad = write(tmp_path, "m2.csv", "model,family\na,vit\nzzz,cnn\n")
    with pytest.raises(RecordsError, match=r"m2.csv: line 3: unknown model 'zzz'"):
        load_records(records, model_meta=bad)
    dup = write(tmp_path, "m3.csv", "model,family\na,vit\na,cnn\n")
    with pytest.raises(RecordsError, match="line 3: duplicate model 'a', first at line 2"):
        load_metadata(dup, "model", ["a"])


def test_parquet_round_trip(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = os.path.join(tmp_path, "r.parquet")
    pq.write_table(pa.table({"model": ["a", "b"], "task": ["t", "t"], "score": [1.0, 2.0]}), path)
    r = load_records(path)
    assert r.scores.tolist() == [[1.0, 2.0]]


def test_standardize_handles_constant_and_single_rows():
    scores = np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0], [7.0, np.nan, np.nan]])
    mask = np.isfinite(scores)
    z = standardize(scores, mask)
    np.testing.assert_allclose(z[0], [-np.sqrt(1.5), 0, np.sqrt(1.5)])
    assert np.all(z[1:] == 0) and np.all(np.isfinite(z))


@pytest.mark.parametrize(
    "name, models, targets, observed",
    [
        ("parc_controlled", 32, 6, 196),
        ("parc_all", 71, 6, 459),
        ("spider_single", 10, 8, 1060),
        ("spider_multi", 42, 7, 4326),
        ("timm_imagenet", 1267, 8, 10128),
    ],
)
def test_bundled_benchmarks_shapes(name, models, targets, observed):
    b = load_benchmark(name)
    assert b.records.num_models == models and len(b.targets) == targets
    assert int(b.records.mask.sum()) == observed
    # Only observed cells are evaluated, and every target has something to evaluate.
    assert not np.any(b.eval_mask & ~b.records.mask)
    assert np.all(b.eval_mask[b.target_indices].sum(1) >= 5)


def test_parc_rules():
    b = load_benchmark("parc_all")
    assert b.records.dropped == {"oracle <= 0 (missing run)": 10}
    assert "voc2007" in b.records.tasks and "voc2007" not in b.targets
    src = b.records.model_meta["source"]
    for ti in b.target_indices:  # source == target is never evaluated
        assert not np.any(b.eval_mask[ti] & (src == b.records.tasks[ti]))


def test_spider_rank_tasks_are_history_only():
    b = load_benchmark("spider_single")
    kinds = dict(zip(b.records.tasks, b.task_kind))
    assert kinds["c0"] == "rank" and kinds["Aircraft"] == "score"
    assert all(kinds[t] == "score" for t in b.targets)
    assert "dSprites" not in b.targets and sum(k == "rank" for k in b.task_kind) == 96


def test_unknown_benchmark():
    with pytest.raises(ValueError, match="unknown benchmark 'nope'"):
        load_benchmark("nope")
    assert "nas_bench_graph" in benchmark_names()


def test_nas_bench_graph_benchmarks():
    b = load_benchmark("nas_bench_graph")
    assert b.records.num_models == 26206 and len(b.targets) == 8 and "proteins" not in b.targets
    assert b.records.mask.all() and b.records.model_meta["params"].shape == (26206,)
    p = load_benchmark("nas_bench_graph_proteins")
    assert p.targets == ("proteins",) and p.records.num_models == 2021


def test_scores_in_mixed_units_within_a_task_warn_naming_the_task(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_text("model,cifar,pets\na,0.91,88.0\nb,93.5,0.89\nc,89.0,90.5\n")
    with pytest.warns(UserWarning) as caught:
        records = load_records(str(path))
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages
    assert messages[0] == (f"{path}: task 'cifar' has 1 score(s) in [0, 1] and 2 in [89, 93.5], as if fractions "
                           f"and percentages were mixed; expected one unit per task (e.g. multiply the fractions by 100)")
    assert messages[1].startswith(f"{path}: task 'pets' has 1 score(s) in [0, 1] and 2 in [88, 90.5]")
    assert records.scores[0, 0] == 0.91  # loaded as given: the warning leaves the fix to the user


@pytest.mark.parametrize("scores", [
    "0.008,1.2,35.0,60.0",  # a model at 0.8 % top-1 among others from 1.2 %: a real spread, no gap
    "1,2,3,4",  # ranks
    "0.2,0.5,0.9,1.0",  # fractions only
    "12.0,55.5,80.0,99.0",  # percentages only
    "0.5,120.0,300.0,800.0",  # beyond 100: not percentages
])
def test_one_unit_per_task_loads_without_warning(tmp_path, scores):
    path = tmp_path / "one_unit.csv"
    path.write_text("model,task,score\n" + "".join(f"m{i},t,{s}\n" for i, s in enumerate(scores.split(","))))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_records(str(path))
