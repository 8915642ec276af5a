"""Open op vocabularies: a user's op names stay distinct through graphs, features, archi2vec and the
graph methods, and a file in foreign op names ranks NAS-Bench-Graph as the native loader does."""

import dataclasses
import json
import logging
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from fennec_jax.archs import archi2vec
from fennec_jax.archs import graph_features as gf
from fennec_jax.archs import graphs
from fennec_jax.archs.graphs import OPS, UNKNOWN_OP, ArchGraph, OpVocabulary
from fennec_jax.core.checkpoint import CheckpointError
from fennec_jax.core.records import records_from_matrix
from fennec_jax.methods.base import get_method

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = archi2vec.Archi2VecConfig(hidden=16, embed_dim=8, rounds=2, heads=2, ensemble=2, batch_size=32, epochs=3,
                                  pretrain_epochs=1, wl_iterations=1, wl_vocab=32)
CELL_OPS = ("sep_block", "dil_block", "bottleneck_block", "identity_ish")  # none of them an alias


def _cell(name, ops, extra=CELL_OPS):
    """input -> ops in a chain -> output, in the user's op names."""
    names = ["input", *ops, "output"]
    return ArchGraph.from_ops(name, names, [[i, i + 1] for i in range(len(names) - 1)],
                              extra_ops=[op for op in extra if op in ops])


def _cells(num, seed):
    rng = np.random.default_rng(seed)
    return [_cell(f"net{i}", rng.choice(CELL_OPS, int(rng.integers(2, 6))).tolist()) for i in range(num)]


# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize("name, op, attrs", [
    ("conv", "conv", {}),
    ("Conv", "conv", {}),
    ("identity", "skip", {}),
    ("skip_connect", "skip", {}),
    ("none", "zero", {}),
    ("Zero", "zero", {}),
    ("relu6", "relu", {}),
    ("conv3x3", "conv", {"kernel_size": 3.0}),
    ("conv_3x3", "conv", {"kernel_size": 3.0}),
    ("nor_conv_1x1", "conv", {"kernel_size": 1.0}),
    ("sep_conv_5x5", "depthwise_conv", {"kernel_size": 5.0}),
    ("dil_conv_3x3", "depthwise_conv", {"kernel_size": 3.0, "dilation": 2.0}),
    ("avg_pool_3x3", "avg_pool", {"kernel_size": 3.0}),
    ("Max-Pool 3x3", "max_pool", {"kernel_size": 3.0}),
    # Not unambiguous: kept as written.
    ("bottleneck_block", "bottleneck_block", {}),
    ("conv3x3-bn-relu", "conv3x3-bn-relu", {}),
    ("conv_7x1_1x7", "conv_7x1_1x7", {}),
    ("conv_3x5", "conv_3x5", {}),
    ("conv3", "conv3", {}),
    ("Mystery Op", "Mystery Op", {}),
])
def test_canonical_op(name, op, attrs):
    assert graphs.canonical_op(name) == (op, attrs)


def test_load_jsonl_maps_aliases_reads_kernels_and_keeps_other_names(tmp_path):
    ops = ["input", "sep_conv_3x3", "dil_conv_3x3", "sep_conv_5x5", "identity", "bottleneck_block", "none", "output"]
    nodes = [{"op": op} for op in ops]
    nodes[3]["attrs"] = {"kernel_size": 7, "channels_out": 32}  # the node's own attributes win over its name
    path = tmp_path / "cells.jsonl"
    path.write_text(json.dumps({"model": "cell", "nodes": nodes, "edges": [[i, i + 1] for i in range(7)]}) + "\n")
    (graph,) = graphs.load_jsonl(path)
    assert graph.op_names == ("input", "depthwise_conv", "depthwise_conv", "depthwise_conv", "skip",
                              "bottleneck_block", "zero", "output")
    assert graph.extra_ops == ("bottleneck_block", "zero")
    assert graph.node_attrs(1) == {"kernel_size": 3.0}
    assert graph.node_attrs(2) == {"kernel_size": 3.0, "dilation": 2.0}
    assert graph.node_attrs(3) == {"kernel_size": 7.0, "channels_out": 32.0}
    labels = gf.wl_node_labels([graph], 0)[0][:, 0]
    assert len(set(labels[1:4].tolist())) == 3  # sep 3x3, dil 3x3 and sep 7x7 stay apart
    # A saved graph reads back the same.
    graphs.save_jsonl([graph], tmp_path / "again.jsonl")
    (again,) = graphs.load_jsonl(tmp_path / "again.jsonl")
    assert again.op_names == graph.op_names and again.extra_ops == graph.extra_ops
    np.testing.assert_array_equal(again.attrs, graph.attrs)


def test_load_jsonl_rejects_an_empty_op_name_with_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"model": "a", "nodes": [{"op": "input"}], "edges": []}\n'
                    '{"model": "b", "nodes": [{"op": ""}], "edges": []}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: node 0: 'op' must be a non-empty string"):
        graphs.load_jsonl(path)


# ----------------------------------------------------------------------------- vocabularies


def test_vocabulary_from_graphs_is_sorted_used_names_and_maps_the_unknown():
    a = _cell("a", ["sep_block", "dil_block"])
    b = ArchGraph.from_ops("b", ["input", "zz_op", "output"], [[0, 1], [1, 2]], extra_ops=["zz_op", "unused"])
    vocab = OpVocabulary.from_graphs([a, b])
    assert vocab == OpVocabulary.from_graphs([b, a])
    assert vocab.extra == ("dil_block", "sep_block", "zz_op") and len(vocab) == len(OPS) + 3
    assert vocab.names[: len(OPS)] == OPS and OpVocabulary.from_names(vocab.names) == vocab
    np.testing.assert_array_equal(vocab.ids([a, b]), [OPS.index("input"), len(OPS) + 1, len(OPS), OPS.index("output"),
                                                      OPS.index("input"), len(OPS) + 2, OPS.index("output")])
    only_a = OpVocabulary.from_graphs([a])
    assert only_a.unseen([a, b]) == ["zz_op"]
    assert only_a.ids([b])[1] == OPS.index(UNKNOWN_OP)
    builtin = ArchGraph.from_ops("c", ["input", "conv", "output"], [[0, 1], [1, 2]])
    assert OpVocabulary.from_graphs([builtin]) == graphs.BUILTIN_VOCABULARY and graphs.BUILTIN_VOCABULARY.names == OPS


def test_features_keep_user_op_names_apart_and_builtin_columns_fixed():
    foo, bar = _cell("foo", ["sep_block"]), _cell("bar", ["dil_block"])
    vocab = OpVocabulary.from_graphs([foo, bar])
    counts = gf.op_count_features([foo, bar], vocab)
    assert counts.shape == (2, len(vocab) + 3) and not np.array_equal(counts[0], counts[1])
    assert counts[0, len(OPS) + vocab.extra.index("sep_block")] == 1
    assert not np.array_equal(*gf.wl_features([foo, bar], vocab=vocab))
    # In the built-in vocabulary (what every name outside OPS used to become) they are the same graph.
    np.testing.assert_array_equal(*gf.op_count_features([foo, bar], graphs.BUILTIN_VOCABULARY))
    # A larger vocabulary leaves built-in graphs' one-hot columns where they were.
    conv = ArchGraph.from_ops("conv", ["input", "conv", "output"], [[0, 1], [1, 2]])
    wide, _ = graphs.to_graphs_tuple([conv], vocab=vocab)
    narrow, _ = graphs.to_graphs_tuple([conv])
    assert wide.nodes.shape[1] == narrow.nodes.shape[1] + len(vocab.extra)
    np.testing.assert_array_equal(wide.nodes[:, : len(OPS)], narrow.nodes[:, : len(OPS)])
    assert not wide.nodes[:, len(OPS) : len(vocab)].any()
    np.testing.assert_array_equal(wide.nodes[:, len(vocab) :], narrow.nodes[:, len(OPS) :])


@pytest.mark.parametrize("make, match", [
    (lambda: OpVocabulary(("conv",)), r"extra: \['conv'\] are built-in"),
    (lambda: OpVocabulary(("a", "a")), "extra: op names must be distinct"),
    (lambda: OpVocabulary("abc"), "extra: expected a sequence"),
    (lambda: OpVocabulary.from_names(("a",) + OPS), "starts with the built-in OPS"),
    (lambda: ArchGraph.from_ops("g", ["input", "blk"], [[0, 1]]), "unknown op types"),
    (lambda: ArchGraph("g", np.array([0, len(OPS) + 1]), np.zeros((2, len(graphs.ATTRS))),
                       np.zeros((2, len(graphs.ATTRS)), bool), [[0, 1]], ("blk",)),
     rf"ops: op ids must lie in \[0, {len(OPS) + 1}\)"),
    (lambda: _cell("g", ["conv"], extra=["conv"]), r"extra_ops: \['conv'\] are built-in"),
    (lambda: gf.op_count_features([_cell("a", ["sep_block"])], vocab=("sep_block",)),
     "vocab: expected an OpVocabulary"),
])
def test_bad_vocabularies_name_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ----------------------------------------------------------------------------- fitted state


def _history(graphs_, seed=0):
    """Scores[2, M] that follow how many sep_block and dil_block nodes each graph has."""
    rng = np.random.default_rng(seed)
    counts = np.array([[g.op_names.count(op) for op in ("sep_block", "dil_block")] for g in graphs_], float)
    scores = np.stack([counts @ [1.0, -1.0], counts @ [0.5, 1.0]]) + 0.1 * rng.normal(size=(2, len(graphs_)))
    records = records_from_matrix([g.name for g in graphs_], ["t0", "t1"], scores)
    return dataclasses.replace(records, model_side={"graph": list(graphs_)})


def _with_other(graph, op):
    """graph with every node of op type ``op`` turned into UNKNOWN_OP (named ``<name>_other``)."""
    names = [UNKNOWN_OP if n == op else n for n in graph.op_names]
    return ArchGraph.from_ops(f"{graph.name}_other", names, graph.edges,
                              extra_ops=[e for e in graph.extra_ops if e != op])


@pytest.mark.parametrize("spec", [{"features": "both", "regressor": "forest", "trees": 10},
                                  {"features": "opcount"}])
def test_graph_regression_reads_unseen_ops_as_unknown_and_saves_its_vocabulary(spec, tmp_path, caplog):
    zoo = _cells(40, seed=1)
    novel = _cell("novel", ["sep_block", "brand_new", "dil_block"], extra=CELL_OPS + ("brand_new",))
    history = _history([*zoo, novel, _with_other(novel, "brand_new")])
    history = history.hide_models(np.array([40, 41]))  # neither has records
    method = get_method("graph_regression", **spec)
    with caplog.at_level(logging.WARNING):
        state = method.fit(history, seed=0)
    assert "['brand_new']" in caplog.text
    assert tuple(state["ops"]) == OPS + tuple(sorted(CELL_OPS))
    np.testing.assert_array_equal(state["pred"][:, 40], state["pred"][:, 41])  # brand_new read as other
    method.save(state, str(tmp_path / "state"))
    restored = method.restore(str(tmp_path / "state"))
    assert tuple(restored["ops"]) == tuple(state["ops"])
    np.testing.assert_array_equal(restored["pred"], state["pred"])


def test_archi2vec_keeps_its_vocabulary_through_checkpoints(tmp_path):
    zoo = _cells(48, seed=2)
    scores = _history(zoo).scores
    model = archi2vec.fit_cold_start(zoo, scores, config=SMALL, seed=0)
    assert model.vocab.extra == tuple(sorted(CELL_OPS))
    novel = _cell("novel", ["sep_block", "brand_new", "dil_block"], extra=CELL_OPS + ("brand_new",))
    pred = archi2vec.predict(model, [*zoo[:4], novel, _with_other(novel, "brand_new")])
    np.testing.assert_array_equal(pred[:, 4], pred[:, 5])  # brand_new read as other
    archi2vec.save_model(model, str(tmp_path / "a2v"))
    restored = archi2vec.restore_model(str(tmp_path / "a2v"))
    assert restored.vocab == model.vocab and restored.config == model.config and restored.num_outputs == 2
    np.testing.assert_array_equal(archi2vec.predict(restored, [*zoo[:4], novel, _with_other(novel, "brand_new")]),
                                  pred)
    with pytest.raises(CheckpointError, match="already exists"):
        archi2vec.save_model(model, str(tmp_path / "a2v"))
    get_method("graph_regression").save({"pred": np.zeros((1, 2))}, str(tmp_path / "other"))
    with pytest.raises(CheckpointError, match="not a fennec_jax archi2vec model checkpoint"):
        archi2vec.restore_model(str(tmp_path / "other"))


def test_archi2vec_fits_from_a_pretrained_encoder_in_its_vocabulary():
    zoo = _cells(40, seed=3)
    pretrained, _ = archi2vec.pretrain(zoo, SMALL, seed=0)
    assert pretrained.vocab == OpVocabulary.from_graphs(zoo)
    tuned = archi2vec.fit_cold_start(zoo[:20], _history(zoo[:20]).scores, config=SMALL, init=pretrained)
    assert tuned.vocab == pretrained.vocab
    with pytest.raises(ValueError, match="vocab: the encoder's op vocabulary"):
        archi2vec.init_model(SMALL, 1, encoder=pretrained, vocab=graphs.BUILTIN_VOCABULARY)
    contrastive = dataclasses.replace(SMALL, ssl_objective="contrastive")
    encoder, losses = archi2vec.pretrain(zoo, contrastive, seed=0)
    assert encoder.vocab == pretrained.vocab and np.isfinite(losses).all()


# ----------------------------------------------------------------------------- the check


def _run(*flags):
    done = subprocess.run([sys.executable, "-m", "experiments.evaluate_archs", *flags], capture_output=True, text=True,
                          timeout=900, cwd=ROOT)
    if done.returncode != 0:
        raise ValueError(done.stderr[-3000:])


def _kendall(folder, n):
    report = json.loads((folder / "report.json").read_text())
    return {name: row[n]["mean"]["kendall"] for name, row in report["results"].items()}


GRAPH_METHODS = ("graph_regression:features=opcount,graph_regression:features=wl,"
                 "graph_regression:features=both+regressor=forest,graph_regression:features=opcount+regressor=forest")


def test_renamed_nas_bench_graph_ranks_as_the_native_one(tmp_path):
    """NAS-Bench-Graph (400 models) written with every op renamed, read back through --records /
    --graphs: the graph methods' Kendall within 0.01 of the native loader's (same splits), and
    archi2vec at or above the op-histogram random forest. Measured here (opcount ridge, wl ridge,
    both forest, opcount forest): native 0.419 / 0.367 / 0.435 / 0.413, renamed 0.419 / 0.360 /
    0.437 / 0.416 (WL buckets its hashed labels, and other op ids collide in other buckets);
    archi2vec 0.503 on the renamed file."""
    pytest.importorskip("nas_bench_graph")
    with pytest.raises(ValueError, match="--rename_ops goes with --export"):
        _run("--benchmark=nas_bench_graph", "--rename_ops")
    export = tmp_path / "renamed"
    _run("--benchmark=nas_bench_graph", "--max_models=400", f"--export={export}", "--rename_ops")
    written = [json.loads(line) for line in (export / "graphs.jsonl").read_text().splitlines()]
    names = {node["op"] for record in written for node in record["nodes"]}
    assert len(names) == 11 and not names & set(OPS)  # input, 9 GNN ops, output: all renamed, all distinct
    assert not {graphs.canonical_op(n)[0] for n in names} & set(OPS)  # and none reads as a built-in op
    common = ("--train=100", "--seeds=2", "--ensemble=2")
    _run("--benchmark=nas_bench_graph", "--max_models=400", f"--methods={GRAPH_METHODS}", *common,
         f"--out={tmp_path / 'native'}")
    _run(f"--records={export / 'records.csv'}", f"--graphs={export / 'graphs.jsonl'}",
         f"--methods=archi2vec,{GRAPH_METHODS}", *common, f"--out={tmp_path / 'user'}")
    native, user = _kendall(tmp_path / "native", "100"), _kendall(tmp_path / "user", "100")
    for method, tau in native.items():
        assert abs(user[method] - tau) <= 0.01, (method, tau, user[method])
    assert user["archi2vec"] >= user["graph_regression:features=opcount+regressor=forest"], user
