"""Tests for fennec_jax.ranking.engine: exact streaming top-k, sharding, ranking, validation."""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fennec_jax.ranking import engine
from forced_devices import run_on_cpu_devices


def _zoo(num_models, num_tasks, dim=8, seed=0):
    """Random float32 model_vecs[M, d], task_vecs[T, d], model_bias[M], task_bias[T]."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(num_models, dim)).astype(np.float32),
            rng.normal(size=(num_tasks, dim)).astype(np.float32),
            rng.normal(size=num_models).astype(np.float32),
            rng.normal(size=num_tasks).astype(np.float32))


def _reference_scores(model_vecs, task_vecs, model_bias=None, task_bias=None):
    """scores[T, M] in float64 numpy."""
    scores = task_vecs.astype(np.float64) @ model_vecs.T.astype(np.float64)
    if model_bias is not None:
        scores = scores + model_bias
    if task_bias is not None:
        scores = scores + task_bias[:, None]
    return scores


def _reference_top_k(scores, k):
    """Brute force: full stable argsort, best first, ties by lower index."""
    indices = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, indices, axis=1), indices


@pytest.mark.parametrize(
    "num_models, num_tasks, k, chunk_size, task_chunk_size, block_size",
    [
        (1000, 7, 5, 128, 4, 16),    # M not a multiple of the chunk, tasks padded
        (999, 33, 1, 100, 8, 8),     # k = 1, chunk rounded up to the block
        (37, 5, 37, 16, 2, 4),       # k = M: every model returned, in order
        (300, 3, 10, 300, 3, 7),     # one chunk, blocks do not divide it
        (5, 4, 3, None, None, None),  # defaults with a tiny zoo
        (130, 2, 20, 64, 1, 64),     # k larger than the number of blocks in a chunk
    ])
@pytest.mark.parametrize("algorithm", ["stream", "sort"])
def test_top_k_equals_full_argsort(num_models, num_tasks, k, chunk_size,
                                   task_chunk_size, block_size, algorithm):
    model_vecs, task_vecs, model_bias, task_bias = _zoo(num_models, num_tasks)
    values, indices = engine.top_k(
        model_vecs, task_vecs, k, model_bias=model_bias, task_bias=task_bias,
        chunk_size=chunk_size, task_chunk_size=task_chunk_size, block_size=block_size,
        algorithm=algorithm)
    expected_values, expected_indices = _reference_top_k(
        _reference_scores(model_vecs, task_vecs, model_bias, task_bias), k)
    assert values.shape == indices.shape == (num_tasks, k)
    assert indices.dtype == jnp.int32 and values.dtype == jnp.float32
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(values, expected_values, rtol=1e-5, atol=1e-5)


def test_top_k_without_biases():
    model_vecs, task_vecs, _, _ = _zoo(500, 6)
    values, indices = engine.top_k(model_vecs, task_vecs, 4, chunk_size=96, block_size=8)
    expected_values, expected_indices = _reference_top_k(
        _reference_scores(model_vecs, task_vecs), 4)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(values, expected_values, rtol=1e-5, atol=1e-5)


def test_ties_rank_lower_index_first():
    # Small integers: every score is exact in float32, and many are equal.
    rng = np.random.default_rng(1)
    model_vecs = rng.integers(-1, 2, size=(203, 3)).astype(np.float32)
    task_vecs = rng.integers(-1, 2, size=(9, 3)).astype(np.float32)
    values, indices = engine.top_k(model_vecs, task_vecs, 25, chunk_size=40, block_size=4)
    expected_values, expected_indices = _reference_top_k(
        _reference_scores(model_vecs, task_vecs), 25)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_array_equal(values, expected_values)
    order, _ = engine.rank_models(model_vecs, task_vecs[0])
    np.testing.assert_array_equal(order, np.argsort(-(model_vecs @ task_vecs[0]),
                                                    kind="stable"))


def test_descending_order_matches_lexsort_with_ties_and_signed_zeros():
    rng = np.random.default_rng(2)
    scores = rng.choice(np.array([-2.5, -1.0, -0.0, 0.0, 0.5, 3.0, -1e-30, 1e30],
                                 np.float32), size=500)
    order = engine._descending_order(scores)  # pylint: disable=protected-access
    # Expected: by value descending, +0.0 above -0.0, then by index.
    expected = np.lexsort((np.arange(500), np.signbit(scores), -scores))
    np.testing.assert_array_equal(order, expected)


def test_keys_read_back_as_the_sorted_scores():
    scores = np.array([[1.5, -0.0, np.inf, -2.0, 0.0, -np.inf, 1e-40, -1e-40]], np.float32)
    keys = engine._descending_keys(scores)  # pylint: disable=protected-access
    back = engine._key_scores(keys)  # pylint: disable=protected-access
    expected = scores[0, [2, 0, 6, 4, 1, 7, 3, 5]]
    np.testing.assert_array_equal(back[0].view(np.int32), expected.view(np.int32))


def _integer_zoo(num_models, num_tasks, seed=3):
    """Small-integer vectors and biases: every score exact in float32, many equal."""
    rng = np.random.default_rng(seed)
    draw = lambda *shape: rng.integers(-2, 3, size=shape).astype(np.float32)
    return draw(num_models, 3), draw(num_tasks, 3), draw(num_models), draw(num_tasks)


@pytest.mark.parametrize("k", [7, 50, 203])
@pytest.mark.parametrize("algorithm", ["auto", "stream", "sort"])
def test_both_paths_rank_ties_by_lower_index(k, algorithm):
    model_vecs, task_vecs, model_bias, task_bias = _integer_zoo(203, 9)
    values, indices = engine.top_k(model_vecs, task_vecs, k, model_bias=model_bias,
                                   task_bias=task_bias, chunk_size=32, block_size=4,
                                   algorithm=algorithm)
    scores = _reference_scores(model_vecs, task_vecs, model_bias)
    _, expected = _reference_top_k(scores, k)
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_array_equal(
        values, np.take_along_axis(scores, expected, axis=1) + task_bias[:, None])


def test_sort_path_in_many_chunks_and_pieces_on_threads(monkeypatch):
    # 4 tasks per matmul, 2 per sorted piece: 23 tasks give 6 chunks (the last short).
    monkeypatch.setattr(engine, "_SORT_CHUNK_SCORES", 4 * 50)
    monkeypatch.setattr(engine, "_SORT_PIECE_SCORES", 2 * 50)
    model_vecs, task_vecs, model_bias, task_bias = _integer_zoo(50, 23)
    values, indices = engine.top_k(model_vecs, task_vecs, 50, model_bias=model_bias,
                                   task_bias=task_bias, algorithm="sort")
    scores = _reference_scores(model_vecs, task_vecs, model_bias, task_bias)
    expected_values, expected_indices = _reference_top_k(scores, 50)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_array_equal(values, expected_values)


@pytest.mark.parametrize("num_models, k, sorts", [
    (400, 19, False), (400, 20, True), (400, 400, True), (10_000, 99, False),
    (10_000, 100, True)])
def test_auto_sorts_from_k_squared_at_least_m(monkeypatch, num_models, k, sorts):
    calls = []
    sort = engine._top_k_by_sort  # pylint: disable=protected-access
    monkeypatch.setattr(engine, "_top_k_by_sort",
                        lambda *args, **kwargs: calls.append(1) or sort(*args, **kwargs))
    model_vecs, task_vecs, model_bias, _ = _zoo(num_models, 3)
    _, indices = engine.top_k(model_vecs, task_vecs, k, model_bias=model_bias)
    assert bool(calls) == sorts
    _, expected = _reference_top_k(_reference_scores(model_vecs, task_vecs, model_bias), k)
    np.testing.assert_array_equal(indices, expected)
    mesh = engine.make_mesh(jax.devices()[:1])  # with a mesh: always the streaming path
    calls.clear()
    engine.top_k(model_vecs, task_vecs, k, model_bias=model_bias, mesh=mesh)
    assert not calls


def test_score_matrix_matches_numpy():
    model_vecs, task_vecs, model_bias, task_bias = _zoo(50, 4)
    scores = engine.score_matrix(model_vecs, task_vecs, model_bias, task_bias)
    assert scores.shape == (4, 50) and scores.dtype == jnp.float32
    np.testing.assert_allclose(
        scores, _reference_scores(model_vecs, task_vecs, model_bias, task_bias),
        rtol=1e-5, atol=1e-5)


def test_bfloat16_ranks_like_float32():
    model_vecs, task_vecs, model_bias, _ = _zoo(2000, 20, dim=32)
    k = 10
    values, indices = engine.top_k(model_vecs, task_vecs, k, model_bias=model_bias,
                                   dtype=jnp.bfloat16, chunk_size=256, block_size=16)
    # Exact for the bfloat16-rounded vectors (bias kept in float32) ...
    rounded = lambda x: np.asarray(jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32))
    _, expected = _reference_top_k(
        _reference_scores(rounded(model_vecs), rounded(task_vecs), model_bias), k)
    np.testing.assert_array_equal(indices, expected)
    # ... and close to the float32 ranking.
    float32_values, float32_indices = engine.top_k(model_vecs, task_vecs, k,
                                                   model_bias=model_bias)
    overlap = np.mean([len(set(a) & set(b)) / k
                       for a, b in zip(np.asarray(indices), np.asarray(float32_indices))])
    assert overlap >= 0.9
    np.testing.assert_allclose(values, float32_values, rtol=0.02, atol=0.05)
    bf16_scores = engine.score_matrix(model_vecs, task_vecs, model_bias,
                                      dtype=jnp.bfloat16)
    assert bf16_scores.dtype == jnp.float32
    np.testing.assert_allclose(
        bf16_scores, _reference_scores(rounded(model_vecs), rounded(task_vecs),
                                       model_bias), rtol=1e-4, atol=1e-4)


def test_rank_models_full_order():
    model_vecs, task_vecs, model_bias, _ = _zoo(777, 1)
    order, scores = engine.rank_models(model_vecs, task_vecs[0], model_bias)
    expected_scores = _reference_scores(model_vecs, task_vecs, model_bias)[0]
    np.testing.assert_array_equal(order, np.argsort(-expected_scores, kind="stable"))
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)


def test_default_chunk_sizes():
    cpu, gpu = engine.default_chunk_sizes("cpu"), engine.default_chunk_sizes("gpu")
    for sizes in (cpu, gpu):
        assert set(sizes) == {"chunk_size", "task_chunk_size", "block_size"}
        assert sizes["chunk_size"] % sizes["block_size"] == 0
    assert engine.default_chunk_sizes() == engine.default_chunk_sizes(jax.default_backend())


def test_one_device_mesh_equals_no_mesh():
    model_vecs, task_vecs, model_bias, _ = _zoo(301, 5)
    mesh = engine.make_mesh(jax.devices()[:1])
    with_mesh = engine.top_k(model_vecs, task_vecs, 6, model_bias=model_bias,
                             chunk_size=64, block_size=8, mesh=mesh)
    without = engine.top_k(model_vecs, task_vecs, 6, model_bias=model_bias,
                           chunk_size=64, block_size=8)
    np.testing.assert_array_equal(with_mesh[1], without[1])
    np.testing.assert_array_equal(with_mesh[0], without[0])


_FOUR_DEVICES = textwrap.dedent("""
    import json
    import jax, numpy as np
    from fennec_jax.ranking import engine
    rng = np.random.default_rng(0)
    mesh = engine.make_mesh()
    results = {"devices": jax.device_count(), "mesh_devices": mesh.devices.size,
               "cases": []}
    # M not divisible by 4 devices nor by the chunk, many exact ties (small integers);
    # then k larger than the models per device.
    for num_models, k, chunk_size, values in [(203, 25, 16, [-1.0, 0.0, 1.0]),
                                              (10, 10, 4, rng.normal(size=50))]:
        model_vecs = rng.choice(values, size=(num_models, 3)).astype(np.float32)
        task_vecs = rng.choice(values, size=(6, 3)).astype(np.float32)
        model_bias = rng.choice(values, size=num_models).astype(np.float32)
        options = dict(model_bias=model_bias, chunk_size=chunk_size, block_size=4)
        sharded = engine.top_k(model_vecs, task_vecs, k, mesh=mesh, **options)
        single = engine.top_k(model_vecs, task_vecs, k, **options)
        scores = task_vecs.astype(np.float64) @ model_vecs.T.astype(np.float64)
        reference = np.argsort(-(scores + model_bias), axis=1, kind="stable")[:, :k]
        results["cases"].append({
            "same_indices": bool(np.array_equal(sharded[1], single[1])),
            "same_values": bool(np.allclose(sharded[0], single[0], rtol=1e-6)),
            "exact": bool(np.array_equal(sharded[1], reference)),
        })
    print(json.dumps(results))
""")


def test_four_cpu_devices_equal_one_device():
    results = run_on_cpu_devices(_FOUR_DEVICES)
    assert results["devices"] == results["mesh_devices"] == 4
    for case in results["cases"]:
        assert case == {"same_indices": True, "same_values": True, "exact": True}


def test_memory_does_not_grow_with_models():
    """Compiled scratch memory depends on the chunk sizes, not on M."""

    def temp_bytes(num_models):
        shapes = (jax.ShapeDtypeStruct((num_models, 16), jnp.float32),
                  jax.ShapeDtypeStruct((num_models,), jnp.float32),
                  jax.ShapeDtypeStruct((50, 16), jnp.float32),
                  jax.ShapeDtypeStruct((50,), jnp.float32))
        compiled = engine._top_k_one_device.lower(  # pylint: disable=protected-access
            *shapes, k=5, chunk_size=1024, task_chunk_size=16, block_size=32,
            dtype=jnp.dtype(jnp.float32)).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    small, large = temp_bytes(20_000), temp_bytes(2_000_000)
    chunk_bytes = 16 * 1024 * 4  # one task chunk x model chunk of float32 scores
    assert large <= 1.1 * small
    assert large < 50 * chunk_bytes  # vs 2e6 * 17 * 4 = 136 MB of model data


@pytest.mark.parametrize("call, match", [
    (lambda m, t: engine.top_k(m, t[:, :3], 2), "task_vecs"),
    (lambda m, t: engine.top_k(m[0], t, 2), "model_vecs"),
    (lambda m, t: engine.top_k(m, t[:0], 2), "task_vecs"),
    (lambda m, t: engine.top_k(m, t, 0), "k"),
    (lambda m, t: engine.top_k(m, t, 41), "k"),
    (lambda m, t: engine.top_k(m, t, 2.0), "k"),
    (lambda m, t: engine.top_k(m, t, 2, model_bias=np.zeros(3)), "model_bias"),
    (lambda m, t: engine.top_k(m, t, 2, task_bias=np.zeros((5, 1))), "task_bias"),
    (lambda m, t: engine.top_k(m, t, 2, chunk_size=0), "chunk_size"),
    (lambda m, t: engine.top_k(m, t, 2, dtype=jnp.int32), "dtype"),
    (lambda m, t: engine.top_k(m, t, 2, algorithm="quick"), "algorithm"),
    (lambda m, t: engine.top_k(m, t, 2, algorithm="sort",
                               mesh=engine.make_mesh(jax.devices()[:1])), "algorithm"),
    (lambda m, t: engine.top_k(np.where(m > 1, np.nan, m), t, 2), "model_vecs"),
    (lambda m, t: engine.top_k(m, np.where(t > 1, np.inf, t), 2), "task_vecs"),
    (lambda m, t: engine.top_k(m, t, 2, model_bias=np.full(40, np.nan)), "model_bias"),
    (lambda m, t: engine.top_k(m, t, 2, mesh=jax.sharding.Mesh(
        np.array(jax.devices()[:1]), ("x",))), "mesh"),
    (lambda m, t: engine.score_matrix(m, t.T), "task_vecs"),
    (lambda m, t: engine.score_matrix(m[:0], t), "model_vecs"),
    (lambda m, t: engine.rank_models(m, t), "task_vec"),
    (lambda m, t: engine.rank_models(m, t[0, :3]), "task_vec"),
    (lambda m, t: engine.rank_models(m, t[0] * np.inf), "task_vec"),
    (lambda m, t: engine.rank_models(m, t[0], np.full(40, np.nan)), "model_bias"),
    (lambda m, t: engine.rank_models(m, t[0], np.zeros(4)), "model_bias"),
    (lambda m, t: engine.rank_models(np.where(m > 1, np.inf, m), t[0]), "model_vecs"),
    (lambda m, t: engine.rank_models(m * 1e30, t[0] * 1e30), "overflow"),
    (lambda m, t: engine.make_mesh([]), "devices"),
])
def test_bad_input_raises_naming_argument(call, match):
    model_vecs, task_vecs, _, _ = _zoo(40, 5)
    with pytest.raises(ValueError, match=match):
        call(model_vecs, task_vecs)
