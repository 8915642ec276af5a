"""Damaged checkpoints and zoo folders: every file truncated or bit-flipped, versions and formats
changed, parts edited or swapped between zoos. Each gives one clear error naming the folder, or
(for a change to a file that carries no data, e.g. orbax's commit marker) loads exactly what was
saved: never a state that ranks differently."""

import json
import os
import shutil

import numpy as np
import pytest

import fennec_jax
from fennec_jax.core import checkpoint
from fennec_jax.core.checkpoint import CheckpointError
from fennec_jax.core.records import records_from_matrix
from fennec_jax.zoo.zoo import FORMAT, ZooError, fit_zoo, load_zoo

# When orbax aborts reading a damaged file, its background threads may later report the closed
# event loop as an unraisable exception; the error the caller gets is the one asserted.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

ARRAYS = {"x": np.arange(12.0).reshape(3, 4), "mask": np.array([True, False, True]), "ids": np.arange(5)}


def _files(folder):
    return sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names)


def _damaged_copies(valid, target):
    """Yields ``(description, file)`` after making ``target`` a copy of ``valid`` with one file
    truncated (to half, to nothing) or with one bit flipped (start, middle, end)."""
    for index in range(len(_files(valid))):
        for damage in ("half", "empty", "flip first", "flip middle", "flip last"):
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(valid, target)
            file = _files(target)[index]
            data = bytearray(open(file, "rb").read())
            if damage == "half":
                data = data[: len(data) // 2]
            elif damage == "empty":
                data = bytearray()
            elif data:
                at = {"flip first": 0, "flip middle": len(data) // 2, "flip last": len(data) - 1}[damage]
                data[at] ^= 0x10
            open(file, "wb").write(bytes(data))
            yield f"{damage} {os.path.relpath(file, target)}", file


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "valid"
    checkpoint.save_arrays(str(path), "test/1", {"names": ["a", "b", "c"]}, ARRAYS)
    return path


def test_every_damaged_checkpoint_file_is_refused_or_harmless(saved_checkpoint, tmp_path):
    target = tmp_path / "damaged"
    refused = 0
    for what, _ in _damaged_copies(saved_checkpoint, target):
        try:
            meta, arrays = checkpoint.restore_arrays(str(target), "test/1", "test")
        except CheckpointError as err:
            assert str(target) in str(err) and "\n" not in str(err), (what, str(err))
            refused += 1
            continue
        assert meta["names"] == ["a", "b", "c"], what
        assert arrays.keys() == ARRAYS.keys(), what
        for name, value in ARRAYS.items():
            assert arrays[name].dtype == value.dtype and np.array_equal(arrays[name], value), what
    assert refused >= 10  # damage is caught, not only ignored (20 of 65 cases in files that hold data)


@pytest.mark.parametrize("field, value, message", [
    ("package_version", "0.0.1", "written by fennec_jax 0.0.1.*refit"),
    ("format", "test/2", "not a test checkpoint.*expected 'test/1'"),
])
def test_version_and_format_mismatch_are_refused(saved_checkpoint, tmp_path, field, value, message):
    target = tmp_path / "edited"
    shutil.copytree(saved_checkpoint, target)
    meta_file = target / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta[field] = value
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=message):
        checkpoint.restore_arrays(str(target), "test/1", "test")


def test_declared_shape_of_an_absent_array_is_not_allocated(tmp_path):
    # Zero-size arrays are not stored (orbax refuses them) and are rebuilt from the declared
    # shape: a declared shape edited to terabytes must be refused before np.zeros, not allocated.
    path = tmp_path / "empty"
    checkpoint.save_arrays(str(path), "test/1", {}, {"x": np.ones(2), "none": np.zeros((0, 3))})
    meta_file = path / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["arrays"]["none"][1] = [2**20, 2**20, 2**20]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="'none'.*missing"):
        checkpoint.restore_arrays(str(path), "test/1", "test")


# ----------------------------------------------------------------------------- zoo folders


def _history(seed):
    rng = np.random.default_rng(seed)
    return records_from_matrix([f"m{i}" for i in range(8)], [f"t{i}" for i in range(5)],
                               rng.uniform(0.3, 0.9, size=(5, 8)))


@pytest.fixture(scope="module")
def saved_zoo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoos")
    zoo = fit_zoo(_history(0), method="fennec:preset=mf+steps=60", calibration_tasks=3)
    zoo.save(str(folder / "valid"))
    other = fit_zoo(_history(1), method="fennec:preset=mf+steps=60", calibration_tasks=3)
    other.save(str(folder / "other"))
    return folder / "valid", folder / "other"


def _ranking(zoo):
    ranking = zoo.rank(probes={"m0": 0.6, "m3": 0.8})
    return ranking.table.predicted, ranking.table.low, ranking.table.high


def test_every_damaged_zoo_file_is_refused_or_ranks_identically(saved_zoo, tmp_path):
    valid, _ = saved_zoo
    expected = _ranking(load_zoo(str(valid)))
    target = tmp_path / "damaged"
    refused = 0
    for what, _ in _damaged_copies(valid, target):
        try:
            zoo = load_zoo(str(target))
        except (ZooError, CheckpointError) as err:
            assert str(target) in str(err) and "\n" not in str(err), (what, str(err))
            refused += 1
            continue
        for got, want in zip(_ranking(zoo), expected):
            assert np.array_equal(got, want), what
    assert refused >= 20


def _edit_manifest(folder, edit):
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(fennec_jax_version="0.0.1"), "fitted with fennec_jax 0.0.1.*refit"),
    (lambda m: m.update(format="fennec_jax.zoo/0"), f"not a {FORMAT} zoo"),
    (lambda m: m.update(models=m["models"][::-1]), "manifest.json: differs from the zoo's checksummed metadata"),
    (lambda m: m.update(method="popularity"), "manifest.json: differs from the zoo's checksummed metadata"),
])
def test_edited_manifest_is_refused(saved_zoo, tmp_path, edit, message):
    target = tmp_path / "zoo"
    shutil.copytree(saved_zoo[0], target)
    _edit_manifest(target, edit)
    with pytest.raises(ZooError, match=message):
        load_zoo(str(target))


def test_package_version_inside_the_arrays_is_checked_too(saved_zoo, tmp_path, monkeypatch):
    monkeypatch.setattr(fennec_jax, "__version__", "0.0.1")
    _edit_manifest_version = lambda m: m.update(fennec_jax_version="0.0.1")  # noqa: E731
    target = tmp_path / "zoo"
    shutil.copytree(saved_zoo[0], target)
    _edit_manifest(target, _edit_manifest_version)
    with pytest.raises(CheckpointError, match="written by fennec_jax .*this is 0.0.1; refit"):
        load_zoo(str(target))


@pytest.mark.parametrize("folder, message", [
    # Both method checkpoints are whole and checksummed: only the zoo's record of its own
    # method's files tells that this one belongs to another history (and would rank wrongly).
    ("method", "method: its files differ from those the zoo was saved with"),
    ("arrays", "differs from the zoo's checksummed metadata|method: its files differ"),
])
def test_a_folder_from_another_zoo_is_refused(saved_zoo, tmp_path, folder, message):
    valid, other = saved_zoo
    target = tmp_path / "zoo"
    shutil.copytree(valid, target)
    shutil.rmtree(target / folder)
    shutil.copytree(other / folder, target / folder)
    with pytest.raises(ZooError, match=message):
        load_zoo(str(target))
