"""Multi-process runs (fennec_jax.ranking.distributed): 2 CPU processes on 127.0.0.1, each
with 2 devices, rank and score exactly as 1 process with 4 devices does."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax._src.lib import _jax  # pylint: disable=protected-access

from fennec_jax.ranking import distributed

# One process of a run: top-k over a small zoo and three estimators, over the global mesh;
# each process writes its share of the top-k rows and all the scores it got to its part.
_WORKER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from fennec_jax.ranking import distributed
    port, processes, index, out = sys.argv[1:]
    joined = distributed.initialize(f"127.0.0.1:{port}", int(processes), int(index),
                                    timeout_s=60)
    import jax
    from jax.sharding import NamedSharding, PartitionSpec
    from fennec_jax import estimators
    from fennec_jax.ranking import engine

    rng = np.random.default_rng(0)
    # 1001 models: not a multiple of the 4 devices, nor of the chunk.
    model_vecs = rng.normal(size=(1001, 8)).astype(np.float32)
    task_vecs = rng.normal(size=(13, 8)).astype(np.float32)
    model_bias = rng.normal(size=1001).astype(np.float32)
    task_bias = rng.normal(size=13).astype(np.float32)
    # 6 models (padded to 8 over 4 devices) of 40 samples; then 8 held by JAX on the mesh.
    features = rng.normal(size=(8, 40, 10)).astype(np.float32)
    labels = np.arange(40) % 3
    probs = rng.dirichlet(np.ones(5), size=(8, 40)).astype(np.float32)

    def run(mesh):
        values, indices = engine.top_k(model_vecs, task_vecs, 7, model_bias=model_bias,
                                       task_bias=task_bias, chunk_size=64, block_size=8,
                                       mesh=mesh)
        scores = {name: estimators.score_models(name, features[:6], labels, probs[:6],
                                                mesh=mesh).tolist()
                  for name in ("logme", "hscore", "leep")}
        return np.asarray(values), np.asarray(indices), scores

    mesh = engine.make_mesh()
    values, indices, scores = run(mesh)
    rows = distributed.process_rows(13)
    split = NamedSharding(mesh, PartitionSpec(engine.MODELS_AXIS))
    held = jax.make_array_from_callback(features.shape, split, lambda i: features[i])
    result = {
        "joined": joined, "processes": jax.process_count(), "devices": jax.device_count(),
        "rows": [rows.start, rows.stop], "values": values[rows].tolist(),
        "indices": indices[rows].tolist(), "scores": scores,
        "held_scores": estimators.score_models("logme", held, labels, mesh=mesh).tolist(),
        "gathered": bool(np.array_equal(distributed.gather(held), features)),
    }
    if not joined:  # the one-process run: also without a mesh
        values, indices, scores = run(None)
        result["unsharded"] = {"values": values.tolist(), "indices": indices.tolist(),
                               "scores": scores, "held_scores": estimators.score_models(
                                   "logme", features, labels).tolist()}
    with open(distributed.part_path(out + "/result.json"), "w") as f:
        json.dump(result, f)
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp_path, processes, devices_per_process):
    """The ``processes`` workers of a run, started, and the folder they write to."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
    out = tmp_path / f"{processes}_processes"
    out.mkdir()
    port = _free_port()
    return out, [subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(port), str(processes), str(index), str(out)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for index in range(processes)]


def _finish(processes):
    """Waits for ``processes`` (killed after 180 s); each must exit 0."""
    try:
        errors = [process.communicate(timeout=180)[1] for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, stderr in zip(processes, errors):
        assert process.returncode == 0, stderr[-3000:]


def _parts(out, workers):
    """The parts written by ``workers``, in process order, once they are done."""
    _finish(workers)
    parts = sorted(out.iterdir())
    assert len(parts) == len(workers)
    return [json.loads(part.read_text()) for part in parts]


@pytest.mark.skipif(not hasattr(_jax, "make_gloo_tcp_collectives"),
                    reason="this jaxlib has no gloo CPU collectives across processes")
def test_two_processes_equal_one_process(tmp_path):
    runs = [_start(tmp_path, 1, 4), _start(tmp_path, 2, 2)]  # side by side
    (single,), parts = (_parts(*run) for run in runs)
    assert not single["joined"] and single["devices"] == 4
    for part in parts:
        assert part["joined"] and part["processes"] == 2 and part["devices"] == 4
        # Every process gets all scores, the same as one process with as many devices.
        assert part["scores"] == single["scores"]
        assert part["held_scores"] == single["held_scores"]
        assert part["gathered"]
    # The processes' shares of the top-k rows cover every task once, in order.
    assert [part["rows"] for part in parts] == [[0, 6], [6, 13]]
    assert sum((part["indices"] for part in parts), []) == single["indices"]
    assert sum((part["values"] for part in parts), []) == single["values"]
    # Sharded over 4 devices equals unsharded: indices exactly; scores to rounding (the
    # engine sums the bias inside the matmul, chunk by chunk).
    unsharded = single["unsharded"]
    assert single["indices"] == unsharded["indices"]
    np.testing.assert_allclose(single["values"], unsharded["values"], rtol=1e-6)
    for name, scores in unsharded["scores"].items():
        np.testing.assert_allclose(single["scores"][name], scores, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(single["held_scores"], unsharded["held_scores"], rtol=1e-12,
                               atol=1e-12)


def test_initialize_one_process_is_a_no_op():
    assert distributed.initialize(None, 1, 0) is False
    assert distributed.is_main() and jax.process_count() == 1
    assert distributed.process_rows(5) == slice(0, 5)
    assert distributed.part_path("out/ranks.csv") == "out/ranks.csv"
    np.testing.assert_array_equal(distributed.gather(jax.numpy.arange(3)), np.arange(3))


@pytest.mark.parametrize("args, message", [
    ((None, 0, 0), "num_processes"),
    ((None, 2, 2), "process_id"),
    ((None, 2, -1), "process_id"),
    ((None, 2, 0), "coordinator_address"),
])
def test_initialize_checks_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        distributed.initialize(*args)


@pytest.mark.skipif(not hasattr(_jax, "make_gloo_tcp_collectives"),
                    reason="this jaxlib has no gloo CPU collectives across processes")
def test_rank_all_space_over_two_processes_equals_one(tmp_path):
    """``rank_all --space`` over 2 processes (models split over both) writes the files a
    1-process run writes, byte for byte, once (process 0)."""
    rng = np.random.default_rng(3)
    space = tmp_path / "space"
    space.mkdir()
    np.save(space / "model_vecs.npy", rng.normal(size=(501, 6)).astype(np.float32))
    np.save(space / "task_vecs.npy", rng.normal(size=(9, 6)).astype(np.float32))
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    command = [sys.executable, "-m", "experiments.rank_all", f"--space={space}", "--top_k=5",
               "--format=csv,parquet"]
    port = _free_port()
    runs = [subprocess.Popen(command + [f"--out={tmp_path / 'one'}"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)]
    runs += [subprocess.Popen(command + [f"--out={tmp_path / 'two'}", f"--coordinator_address=127.0.0.1:{port}",
                                         "--num_processes=2", f"--process_id={i}"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    _finish(runs)
    for name in ("rankings.csv", "rankings.parquet"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    assert len((tmp_path / "one" / "rankings.csv").read_text().splitlines()) == 1 + 9 * 5
