"""Tests for fennec_jax.archs.archi2vec: invariances of the encoder, training, vector maps."""

import dataclasses

import numpy as np
import pytest
import scipy.stats

from fennec_jax.archs import archi2vec
from fennec_jax.methods.cold_start import GraphFeatures
from fennec_jax.archs.graphs import OPS, ArchGraph

# Small and fast: the properties tested do not depend on width.
CONFIG = archi2vec.Archi2VecConfig(hidden=16, embed_dim=8, rounds=3, heads=2, ensemble=2, batch_size=64,
                                   epochs=1, pretrain_epochs=1, wl_iterations=1, wl_vocab=32)
LAYER_OPS = ("conv", "batch_norm", "relu", "max_pool", "dense", "gelu")


def _random_dag(rng, name, num_layers):
    """input -> num_layers random layers -> output; each layer reads one or two earlier nodes."""
    ops = ["input", *rng.choice(LAYER_OPS, num_layers).tolist(), "output"]
    edges = []
    for node in range(1, len(ops)):
        sources = {node - 1}
        if node > 2 and rng.random() < 0.4:
            sources.add(int(rng.integers(0, node - 1)))
        edges += [(s, node) for s in sorted(sources)]
    attrs = [{"channels_out": float(rng.choice([16, 64]))} if op == "conv" else {} for op in ops]
    return ArchGraph.from_ops(name, ops, np.array(edges), attrs)


@pytest.fixture(scope="module")
def model():
    return archi2vec.init_model(CONFIG, num_outputs=2, seed=0)


def _permuted(graph, perm):
    """graph with node i renamed perm[i]."""
    inverse = np.argsort(perm)
    return ArchGraph(graph.name, graph.ops[inverse], graph.attrs[inverse], graph.attr_mask[inverse],
                     perm[graph.edges])


def test_embedding_is_invariant_to_node_order(model):
    graph = _random_dag(np.random.default_rng(1), "g", 7)
    perm = np.random.default_rng(2).permutation(graph.num_nodes)
    emb = archi2vec.embed(model, [graph, _permuted(graph, perm)])
    assert emb.shape == (2, CONFIG.ensemble * CONFIG.embed_dim)
    np.testing.assert_allclose(emb[0], emb[1], rtol=1e-4, atol=1e-5)


def test_edge_direction_changes_the_embedding(model):
    graph = ArchGraph.from_ops("chain", ["input", "conv", "relu", "dense", "output"], [[0, 1], [1, 2], [2, 3], [3, 4]])
    reversed_graph = ArchGraph(graph.name, graph.ops, graph.attrs, graph.attr_mask, graph.edges[:, ::-1])
    emb = archi2vec.embed(model, [graph, reversed_graph])
    assert np.abs(emb[0] - emb[1]).max() > 1e-2 * np.abs(emb[0]).max()


def test_padding_and_batch_mates_do_not_change_embeddings(model):
    rng = np.random.default_rng(3)
    graph = _random_dag(rng, "g", 5)
    big = [_random_dag(rng, f"big{i}", 40) for i in range(3)]
    alone = archi2vec.embed(model, [graph])  # nodes padded to 16
    crowded = archi2vec.embed(model, [big[0], graph, *big[1:]])  # padded to 256
    np.testing.assert_allclose(alone[0], crowded[1], rtol=1e-4, atol=1e-5)


def test_meta_enters_the_embedding_and_is_checked():
    config = dataclasses.replace(CONFIG, meta_dim=1)
    model = archi2vec.init_model(config, seed=0)
    graph = _random_dag(np.random.default_rng(4), "g", 4)
    emb = archi2vec.embed(model, [graph, graph], meta=np.array([[0.0], [3.0]]))
    assert np.abs(emb[0] - emb[1]).max() > 1e-3
    with pytest.raises(ValueError, match="meta"):
        archi2vec.embed(model, [graph])


def test_supervised_training_learns_the_number_of_convs():
    rng = np.random.default_rng(5)
    graphs = [_random_dag(rng, f"g{i}", int(rng.integers(3, 10))) for i in range(240)]
    convs = np.array([g.op_counts()["conv"] for g in graphs], np.float32)
    targets = ((convs - convs.mean()) / convs.std())[:, None]
    config = dataclasses.replace(CONFIG, epochs=25)
    trained, losses = archi2vec.fit_supervised(graphs[:160], targets[:160], config=config, seed=0)
    assert losses.shape == (config.steps(160, 25), config.ensemble)
    pred = archi2vec.predict(trained, graphs[160:])[0]
    assert scipy.stats.spearmanr(convs[160:], pred).statistic > 0.8


def test_training_is_deterministic_for_a_seed():
    rng = np.random.default_rng(6)
    graphs = [_random_dag(rng, f"g{i}", 4) for i in range(20)]
    scores = rng.normal(size=(2, 20))
    config = dataclasses.replace(CONFIG, epochs=2)
    first = archi2vec.predict(archi2vec.fit_cold_start(graphs, scores, config=config, seed=3), graphs)
    second = archi2vec.predict(archi2vec.fit_cold_start(graphs, scores, config=config, seed=3), graphs)
    np.testing.assert_array_equal(first, second)


def test_self_supervised_loss_decreases_and_initialises_fits():
    rng = np.random.default_rng(7)
    graphs = [_random_dag(rng, f"g{i}", int(rng.integers(3, 9))) for i in range(64)]
    config = dataclasses.replace(CONFIG, pretrain_epochs=30, learning_rate=1e-2, batch_size=32)
    pretrained, losses = archi2vec.pretrain(graphs, config, seed=0)
    assert losses.shape == (config.steps(64, 30), config.ensemble)
    # KL divergence to the WL label distributions; measured 1.96 -> about 0.85 here.
    assert losses[-4:].mean() < 0.6 * losses[:4].mean()
    with pytest.raises(ValueError, match="no supervised head"):
        archi2vec.predict(pretrained, graphs)
    tuned = archi2vec.fit_cold_start(graphs[:20], rng.normal(size=(3, 20)), config=config, init=pretrained)
    assert archi2vec.predict(tuned, graphs[20:]).shape == (3, 44)
    wider = dataclasses.replace(config, hidden=32)
    with pytest.raises(ValueError, match="hidden"):
        archi2vec.fit_cold_start(graphs[:20], rng.normal(size=(3, 20)), config=wider, init=pretrained)


def test_fit_vector_map_recovers_a_linear_map():
    rng = np.random.default_rng(8)
    emb = rng.normal(size=(60, 5))
    weights, bias = rng.normal(size=(5, 3)), rng.normal(size=3)
    vecs = emb @ weights + bias
    vector_map = archi2vec.fit_vector_map(emb, vecs, l2=1e-8)
    new = rng.normal(size=(4, 5))
    np.testing.assert_allclose(vector_map.apply(new), new @ weights + bias, atol=1e-5)


def test_bad_inputs_name_the_argument():
    graph = _random_dag(np.random.default_rng(9), "g", 3)
    with pytest.raises(ValueError, match="targets"):
        archi2vec.fit_supervised([graph, graph], np.zeros((3, 1)), config=CONFIG)
    with pytest.raises(ValueError, match="scores"):
        archi2vec.fit_cold_start([graph, graph], np.array([[1.0, np.nan]]), mask=np.ones((1, 2), bool), config=CONFIG)
    with pytest.raises(ValueError, match="heads"):
        archi2vec.Archi2VecConfig(hidden=10, heads=4)


def test_augment_masks_drops_and_substitutes_with_the_given_rate():
    graph = _random_dag(np.random.default_rng(10), "g", 30)
    rng = np.random.default_rng(0)
    same = archi2vec.augment(graph, rng, 0.0)
    for field in ("ops", "attrs", "attr_mask", "edges"):
        np.testing.assert_array_equal(getattr(same, field), getattr(graph, field))
    pool = np.array([OPS.index("gelu")])
    views = [archi2vec.augment(graph, rng, 0.5, pool) for _ in range(40)]
    changed = np.array([(v.ops != graph.ops).mean() for v in views])
    kept_edges = np.array([v.num_edges / graph.num_edges for v in views])
    assert 0.25 < changed.mean() < 0.5 and 0.35 < kept_edges.mean() < 0.65
    for view in views:
        swapped = view.ops != graph.ops
        assert (view.ops[swapped] == pool[0]).all()  # substitutes come from the pool
        assert view.ops[0] == graph.ops[0] and view.ops[-1] == graph.ops[-1]  # input and output kept
        assert not view.attr_mask[~graph.attr_mask].any()  # masking never adds attributes
    assert any(v.attr_mask.sum() < graph.attr_mask.sum() for v in views)


def test_contrastive_pretraining_separates_graphs_and_embeds_every_one():
    rng = np.random.default_rng(11)
    zoo = [_random_dag(rng, f"g{i}", int(rng.integers(3, 12))) for i in range(32)]
    config = dataclasses.replace(CONFIG, ssl_objective="contrastive", pretrain_epochs=40, learning_rate=3e-3,
                                 batch_size=16, augment_rate=0.15, temperature=0.5)
    pretrained, losses = archi2vec.pretrain(zoo, config, seed=0)
    assert losses.shape == (config.steps(32, 40), config.ensemble) and np.isfinite(losses).all()
    # InfoNCE over 2 x 16 views, at most log(31) = 3.43; measured about 3.0 -> 2.4 (48 graphs, 120 steps).
    assert losses[-10:].mean() < 0.9 * losses[:10].mean()
    emb = archi2vec.embed(pretrained, zoo)
    assert emb.shape == (32, config.ensemble * config.embed_dim) and np.isfinite(emb).all()
    # A graph's augmented view lies nearer to it than to the 31 others (chance 1/32; measured 0.69).
    views = [archi2vec.augment(g, rng, 0.15) for g in zoo]
    distance = np.linalg.norm(archi2vec.embed(pretrained, views)[:, None] - emb[None], axis=-1)  # [view, graph]
    assert (distance.argmin(1) == np.arange(32)).mean() > 0.3
    with pytest.raises(ValueError, match="ssl_objective"):
        dataclasses.replace(CONFIG, ssl_objective="masking")


def test_ranking_loss_and_degree_features_train():
    rng = np.random.default_rng(12)
    zoo = [_random_dag(rng, f"g{i}", int(rng.integers(3, 10))) for i in range(200)]
    # Target: the number of nodes that merge two inputs (an in-degree property).
    merges = np.array([np.bincount(g.edges[:, 1], minlength=g.num_nodes).max() > 1 for g in zoo], np.float64)
    scores = (merges + 0.1 * np.array([g.num_nodes for g in zoo]))[None]
    config = dataclasses.replace(CONFIG, epochs=25, rank_weight=3.0, degree_features=True)
    model = archi2vec.fit_cold_start(zoo[:140], scores[:, :140], config=config, seed=0)
    pred = archi2vec.predict(model, zoo[140:])[0]
    assert scipy.stats.kendalltau(scores[0, 140:], pred).statistic > 0.5
    # Degree features keep the embedding independent of node order.
    perm = np.random.default_rng(2).permutation(zoo[0].num_nodes)
    emb = archi2vec.embed(model, [zoo[0], _permuted(zoo[0], perm)])
    np.testing.assert_allclose(emb[0], emb[1], rtol=1e-4, atol=1e-5)


def test_graph_features_embed_each_model_by_its_graph():
    rng = np.random.default_rng(13)
    a, b = _random_dag(rng, "a", 5), _random_dag(rng, "b", 8)
    model = archi2vec.init_model(CONFIG, seed=0)
    features = GraphFeatures(model, {"m1": a, "m2": b, "m3": a})(["m1", "m2", "m3", "m4"])
    width = CONFIG.ensemble * CONFIG.embed_dim
    assert features.shape == (4, width + 1)
    np.testing.assert_allclose(features[0, :width], archi2vec.embed(model, [a])[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(features[0], features[2])  # shared graph, same row
    np.testing.assert_array_equal(features[:, width], [1, 1, 1, 0])  # m4 has no graph
    assert not features[3].any()
    with pytest.raises(ValueError, match="graphs"):
        GraphFeatures(model, {"m1": "resnet50"})
