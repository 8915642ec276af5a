"""Transfer-space checkpoints: exact round trip; version, truncation and corruption are refused."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

import fennec_jax
from fennec_jax.core import checkpoint
from fennec_jax.methods import fennec as ts
from fennec_jax.core.records import records_from_matrix
from fennec_jax.methods.base import TaskEvidence

CONFIG = ts.SpaceConfig(d=2, d_data=2, steps=100, learning_rate=0.05)

# When orbax aborts reading a damaged file, its background threads later report the closed event
# loop as an unraisable exception; the error the caller gets is the CheckpointError asserted below.
orbax_abort_noise = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def space():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(5, 12))
    records = records_from_matrix(
        [f"m{i}" for i in range(12)], ["a", "b", "c", "d", "e"], scores,
        model_meta={"family": np.array(["x", "y"] * 6, dtype=object),
                    "source": np.array(["A", "B", "imagenet"] * 4, dtype=object),
                    "params": np.linspace(1e6, 1e9, 12)},
        task_meta={"size": np.array([10.0, 20.0, 30.0, 40.0, 50.0])})
    fitted = ts.fit_space(records, CONFIG, seed=0)
    return fitted.with_proxy_map(rng.normal(size=(5, 3)))


def _evidences():
    return [
        TaskEvidence(),
        TaskEvidence(metadata={"task": "A", "size": 25.0}),
        TaskEvidence(np.array([0, 4, 7]), np.array([71.0, 64.5, 80.2]), metadata={"task": "b"}),
        TaskEvidence(np.array([1, 2]), np.array([0.3, 0.1]), proxy=np.array([0.2, -1.0, 0.5])),
    ]


def test_round_trip_gives_identical_rankings(space, tmp_path):
    path = str(tmp_path / "space")
    ts.save_space(path, space)
    restored = ts.restore_space(path)
    assert restored.models == space.models and restored.tasks == space.tasks
    assert restored.config == space.config and restored.datasets == space.datasets
    assert restored.task_encoder == space.task_encoder
    method = ts.Fennec(configs=(CONFIG,))
    for evidence in _evidences():
        before, after = method.score(space, evidence), method.score(restored, evidence)
        np.testing.assert_array_equal(after, before)
        np.testing.assert_array_equal(np.argsort(-after, kind="stable"), np.argsort(-before, kind="stable"))


def test_existing_and_missing_paths(space, tmp_path):
    path = str(tmp_path / "space")
    ts.save_space(path, space)
    with pytest.raises(checkpoint.CheckpointError, match="already exists"):
        ts.save_space(path, space)
    ts.save_space(path, space, overwrite=True)
    assert ts.restore_space(path).config == space.config
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        ts.restore_space(str(tmp_path / "nowhere"))
    assert issubclass(checkpoint.CheckpointError, ValueError)


def test_other_package_version_is_refused(space, tmp_path, monkeypatch):
    path = str(tmp_path / "space")
    ts.save_space(path, space)
    monkeypatch.setattr(fennec_jax, "__version__", "999.0")
    with pytest.raises(checkpoint.CheckpointError, match="written by fennec_jax"):
        ts.restore_space(path)


def _data_files(path):
    files = [os.path.join(root, f) for root, _, names in os.walk(os.path.join(path, "arrays")) for f in names]
    return sorted((f for f in files if os.sep + "d" + os.sep in f), key=os.path.getsize, reverse=True)


@orbax_abort_noise
def test_truncated_checkpoint_is_refused(space, tmp_path):
    path = str(tmp_path / "space")
    ts.save_space(path, space)
    for name in _data_files(path):
        with open(name, "r+b") as f:
            f.truncate(os.path.getsize(name) // 2)
    with pytest.raises(checkpoint.CheckpointError, match="space"):
        ts.restore_space(path)


@orbax_abort_noise
def test_corrupted_bytes_are_refused(space, tmp_path):
    path = str(tmp_path / "space")
    ts.save_space(path, space)
    for name in _data_files(path):
        data = bytearray(open(name, "rb").read())
        for i in range(len(data) // 2, len(data) // 2 + 8):
            data[i] ^= 0xFF
        open(name, "wb").write(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match="truncated or corrupted|checksum"):
        ts.restore_space(path)


def test_edited_metadata_is_refused(space, tmp_path):
    path = str(tmp_path / "space")
    ts.save_space(path, space)
    meta_file = os.path.join(path, "meta", "metadata")
    meta = json.load(open(meta_file))
    meta["models"][0], meta["models"][1] = meta["models"][1], meta["models"][0]  # a silent relabelling
    json.dump(meta, open(meta_file, "w"))
    with pytest.raises(checkpoint.CheckpointError, match="checksum"):
        ts.restore_space(path)
    open(meta_file, "w").write("{not json")
    with pytest.raises(checkpoint.CheckpointError, match="unreadable"):
        ts.restore_space(path)


def test_arrays_from_another_checkpoint_are_refused(space, tmp_path):
    # Readable arrays of the right names and shapes, but not the ones the metadata describes.
    path, other = str(tmp_path / "space"), str(tmp_path / "other")
    ts.save_space(path, space)
    ts.save_space(other, dataclasses.replace(space, model_bias=space.model_bias + 1e-9))
    shutil.rmtree(os.path.join(path, "arrays"))
    shutil.copytree(os.path.join(other, "arrays"), os.path.join(path, "arrays"))
    with pytest.raises(checkpoint.CheckpointError, match="checksum"):
        ts.restore_space(path)


def test_checksummed_but_inconsistent_space_is_refused(tmp_path):
    # A checkpoint with the space's format tag and a valid checksum whose metadata lacks what
    # a space needs: CheckpointError naming the path, never another exception type.
    path = str(tmp_path / "odd")
    checkpoint.save_arrays(path, ts.FORMAT, {"models": ["a"]}, {"model_vecs": np.zeros((1, 2))})
    with pytest.raises(checkpoint.CheckpointError, match="inconsistent checkpoint"):
        ts.restore_space(path)
