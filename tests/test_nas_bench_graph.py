"""Tests for fennec_jax.archs.nas_bench_graph against the installed nas-bench-graph 1.4.0 files."""

import itertools
import logging
import pickle

import nas_bench_graph as nbg_package  # The reference encoder (imports no torch).
import numpy as np
import pytest

from fennec_jax.archs import nas_bench_graph as nbg
from fennec_jax.core import safe_pickle

NUM_ARCHS = 26_206  # Distinct canonical architectures of the search space (checked below).
NUM_PROTEINS_ARCHS = 2_021


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def table(cache_dir):
    return nbg.load_table(cache_dir=cache_dir)


@pytest.fixture(scope="module")
def raw():
    """{dataset: the .bench dict}, read independently of load_table."""
    bench_dir = nbg._package_bench_dir()
    return {
        name: safe_pickle.load(bench_dir / f"{name}.bench", safe_pickle.NUMPY_GLOBALS)
        for name in nbg.DATASETS + (nbg.PROTEINS,)
    }


def test_vocabulary_matches_package():
    assert nbg.OP_NAMES == tuple(nbg_package.gnn_list)
    np.testing.assert_array_equal(nbg.LINK_PATTERNS, nbg_package.link_list)


def test_shapes_and_dtypes(table):
    m, t = NUM_ARCHS, len(nbg.DATASETS)
    assert len(table.arch_hashes) == m and table.datasets == nbg.DATASETS
    assert list(table.arch_hashes) == sorted(set(table.arch_hashes))
    assert all(type(h) is int for h in table.arch_hashes)
    for array in (table.scores, table.latency, table.params):
        assert array.shape == (m, t) and array.dtype == np.float64
    assert table.links.shape == table.ops.shape == (m, nbg.NUM_OP_NODES)
    assert np.issubdtype(table.links.dtype, np.integer) and np.issubdtype(table.ops.dtype, np.integer)
    with pytest.raises(ValueError, match="read-only"):
        table.scores[0, 0] = 1.0


def test_table_covers_whole_search_space(table, raw):
    # Canonical hash of every (link pattern, 4 ops) combination except the all-skip one.
    space = {
        nbg_package.Arch(list(link), list(ops)).valid_hash()
        for link in nbg_package.link_list
        for ops in itertools.product(nbg_package.gnn_list, repeat=4)
        if set(ops) != {"skip"}
    }
    assert len(space) == NUM_ARCHS
    assert set(table.arch_hashes) == space
    for name in nbg.DATASETS:
        assert raw[name].keys() == space, name


def test_value_ranges_and_no_missing(table):
    # Every main dataset has every architecture: nothing missing.
    assert not np.isnan(table.scores).any()
    assert not np.isnan(table.latency).any() and not np.isnan(table.params).any()
    # Accuracies are stored as fractions, not percent.
    assert (table.scores >= 0).all() and (table.scores <= 1).all()
    assert (table.scores.max(axis=0) > 0.7).all()  # The best architecture per dataset is decent.
    assert (table.latency > 0).all() and (table.latency < 1).all()  # seconds
    assert (table.params > 0).all() and (table.params < 10).all()  # millions


def test_values_match_raw_files(table, raw):
    rows = {h: i for i, h in enumerate(table.arch_hashes)}
    for arch_hash in (0, 61234, 88887, table.arch_hashes[12345]):
        for t, name in enumerate(table.datasets):
            entry = raw[name][arch_hash]
            assert table.scores[rows[arch_hash], t] == entry["perf"]
            assert table.latency[rows[arch_hash], t] == entry["latency"]
            assert table.params[rows[arch_hash], t] == entry["para"]


def test_valid_perf_metric(cache_dir, raw):
    valid = nbg.load_table(["citeseer", "cora"], metric="valid_perf", cache_dir=cache_dir)
    assert valid.datasets == ("citeseer", "cora")
    for t, name in enumerate(valid.datasets):
        expected = [raw[name][h]["valid_perf"] for h in valid.arch_hashes]
        np.testing.assert_array_equal(valid.scores[:, t], expected)


@pytest.mark.parametrize(
    "arch_hash, links, ops",
    [
        (0, [0, 0, 0, 0], ["gat", "gat", "gat", "gat"]),
        (61234, [0, 1, 1, 2], ["gcn", "gin", "cheb", "sage"]),
        (47563, [0, 0, 1, 3], ["fc", "arma", "graph", "cheb"]),
        (88887, [0, 1, 2, 3], ["skip", "skip", "skip", "fc"]),
    ],
)
def test_decode_by_hand(table, arch_hash, links, ops):
    # hash = pattern * 10**4 + op0 * 10**3 + op1 * 10**2 + op2 * 10 + op3.
    decoded_links, decoded_ops = nbg.decode_arch_hashes([arch_hash])
    assert decoded_links.tolist() == [links]
    assert [nbg.OP_NAMES[i] for i in decoded_ops[0]] == ops
    row = table.arch_hashes.index(arch_hash)
    assert table.links[row].tolist() == links and table.ops[row].tolist() == decoded_ops[0].tolist()


def test_decode_round_trips_through_package_encoder(table):
    for arch_hash, links, ops in zip(table.arch_hashes, table.links, table.ops):
        arch = nbg_package.Arch(links.tolist(), [nbg.OP_NAMES[i] for i in ops])
        assert arch.hash_arch() == arch_hash
        assert arch.valid_hash() == arch_hash  # Already the canonical representative.


@pytest.mark.parametrize("bad", [[90000], [10009], [-1], [1.5], [[1]]])
def test_decode_rejects_non_hashes(bad):
    with pytest.raises(ValueError, match="arch_hashes"):
        nbg.decode_arch_hashes(bad)


def test_arch_dag_readme_example():
    # README: Arch([0, 1, 2, 1], ['gcn', 'gin', 'fc', 'cheb']); leaves fc and cheb feed the output.
    ops = [nbg.OP_NAMES.index(name) for name in ("gcn", "gin", "fc", "cheb")]
    node_ops, edges = nbg.arch_dag([0, 1, 2, 1], ops)
    assert node_ops == ["input", "gcn", "gin", "fc", "cheb", "output"]
    assert edges == [(0, 1), (1, 2), (2, 3), (1, 4), (3, 5), (4, 5)]


def test_arch_dag_parallel_and_chain():
    _, parallel = nbg.arch_dag([0, 0, 0, 0], [1, 1, 1, 1])
    assert parallel == [(0, 1), (0, 2), (0, 3), (0, 4), (1, 5), (2, 5), (3, 5), (4, 5)]
    _, chain = nbg.arch_dag(np.array([0, 1, 2, 3]), np.array([8, 8, 8, 7]))
    assert chain == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]


def test_arch_dag_invariants_on_every_architecture(table):
    for links, ops in zip(table.links, table.ops):
        node_ops, edges = nbg.arch_dag(links, ops)
        assert len(node_ops) == nbg.NUM_OP_NODES + 2
        assert all(src < dst for src, dst in edges)  # Topological order, hence acyclic.
        targets = [dst for _, dst in edges]
        assert all(targets.count(node) == 1 for node in range(1, nbg.NUM_OP_NODES + 1))
        sources = {src for src, _ in edges}
        assert all(node in sources for node in range(nbg.NUM_OP_NODES + 1))  # All reach the output.


@pytest.mark.parametrize(
    "links, ops, argument",
    [([0, 2, 0, 0], [0] * 4, "links_row"), ([0, 0, 0], [0] * 3, "links_row"), ([0] * 4, [0, 0, 9, 0], "ops_row")],
)
def test_arch_dag_rejects_bad_rows(links, ops, argument):
    with pytest.raises(ValueError, match=argument):
        nbg.arch_dag(links, ops)


def test_proteins_is_separate(cache_dir, table, raw):
    proteins = nbg.load_table([nbg.PROTEINS], cache_dir=cache_dir)
    assert proteins.datasets == ("proteins",)
    assert proteins.scores.shape == (NUM_PROTEINS_ARCHS, 1) and len(raw["proteins"]) == NUM_PROTEINS_ARCHS
    assert set(proteins.arch_hashes) < set(table.arch_hashes)
    assert not np.isnan(proteins.scores).any()
    assert (proteins.scores > 0.5).all() and (proteins.scores < 1).all()  # ROC-AUC
    used_ops = {nbg.OP_NAMES[i] for i in np.unique(proteins.ops)}
    assert used_ops == set(nbg_package.gnn_list_proteins)
    with pytest.raises(ValueError, match="on its own"):
        nbg.load_table(["cora", "proteins"], cache_dir=cache_dir)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(datasets="cora"), "datasets"),
        (dict(datasets=[]), "datasets"),
        (dict(datasets=["cora", "cora"]), "datasets"),
        (dict(datasets=["imagenet"]), "datasets"),
        (dict(metric="latency"), "metric"),
    ],
)
def test_rejects_bad_arguments(cache_dir, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        nbg.load_table(cache_dir=cache_dir, **kwargs)


def test_second_load_uses_cache(cache_dir, table, monkeypatch):
    cache_files = list(cache_dir.rglob("*.npz"))
    assert {p.name.split("-")[0] for p in cache_files} >= set(nbg.DATASETS)
    assert all(p.parent.name.startswith("nas_bench_graph-1.4.0-") for p in cache_files)
    assert not list(cache_dir.rglob("*.tmp"))

    def no_parsing(*args, **kwargs):
        raise AssertionError("parsed a .bench file despite the cache")

    monkeypatch.setattr(safe_pickle, "load", no_parsing)
    again = nbg.load_table(cache_dir=cache_dir)
    assert again.arch_hashes == table.arch_hashes
    for field in ("scores", "links", "ops", "latency", "params"):
        np.testing.assert_array_equal(getattr(again, field), getattr(table, field))


def test_default_cache_dir_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert nbg.default_cache_dir() == tmp_path / "fennec_jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert nbg.default_cache_dir() == tmp_path / "home" / ".cache" / "fennec_jax"


@pytest.mark.parametrize("corrupt", ["flip", "truncate", "empty", "pickle"])
def test_corrupt_cache_is_rebuilt(cache_dir, table, monkeypatch, caplog, corrupt):
    (cache_file,) = cache_dir.rglob("cora-*.npz")
    data = cache_file.read_bytes()
    with np.load(cache_file) as npz:
        expected = dict(npz)
    corrupted = {
        "flip": data[:50_000] + bytes(b ^ 0xFF for b in data[50_000:50_100]) + data[50_100:],
        "truncate": data[: len(data) // 2],
        "empty": b"",
        "pickle": pickle.dumps({"arch_hashes": np.arange(3)}),
    }[corrupt]
    cache_file.write_bytes(corrupted)
    calls = []
    real_load = safe_pickle.load
    monkeypatch.setattr(safe_pickle, "load", lambda *a, **k: calls.append(a) or real_load(*a, **k))
    with caplog.at_level(logging.WARNING, logger=nbg.__name__):
        cora = nbg.load_table(["cora"], cache_dir=cache_dir)
    assert len(calls) == 1 and "corrupt cache file" in caplog.text
    np.testing.assert_array_equal(cora.scores[:, 0], table.scores[:, 0])
    with np.load(cache_file) as npz:  # Rebuilt in place.
        assert npz.keys() == expected.keys()
        for key, array in expected.items():
            np.testing.assert_array_equal(npz[key], array)
    nbg.load_table(["cora"], cache_dir=cache_dir)
    assert len(calls) == 1


def test_bench_files_go_through_safe_pickle(tmp_path):
    marker = tmp_path / "pwned"
    evil = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    (tmp_path / "cora.bench").write_bytes(evil)
    with pytest.raises(safe_pickle.UnsafePickleError, match="cora.bench"):
        nbg.load_table(["cora"], bench_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ([1, 2], "expected a non-empty dict"),
        ({}, "expected a non-empty dict"),
        ({"0": {"perf": 0.5}}, "row '0'"),
        ({1: {"perf": 0.5, "valid_perf": 0.5, "latency": 1.0}}, "row 1"),
        ({1: {"perf": float("nan"), "valid_perf": 0.5, "latency": 1.0, "para": 1.0}}, "non-finite 'perf'"),
    ],
)
def test_malformed_bench_is_a_clear_error(tmp_path, content, message):
    (tmp_path / "cora.bench").write_bytes(pickle.dumps(content))
    with pytest.raises(ValueError, match=message):
        nbg.load_table(["cora"], bench_dir=tmp_path, cache_dir=tmp_path / "cache")


def test_missing_bench_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="pubmed.bench"):
        nbg.load_table(["pubmed"], bench_dir=tmp_path, cache_dir=tmp_path / "cache")
