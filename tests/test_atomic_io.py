"""Atomic writes (fennec_jax.core.atomic_io): temporaries left by a killed write are removed
by the next write of the same target, and only those."""

import os

import pytest

from fennec_jax.core import atomic_io


def test_next_write_removes_a_killed_writes_temporaries(tmp_path):
    (tmp_path / ".out.csv.0123456789ab.tmp").write_text("half a fi")  # killed write_bytes
    (tmp_path / ".zoo.k2j4_x9q.tmp").mkdir()  # killed write_folder, while filling
    (tmp_path / ".zoo.k2j4_x9q.tmp" / "arrays").write_text("x")
    (tmp_path / ".zoo.ab12cd34.old").mkdir()  # killed between the two renames
    others = [".out.csv.json.0123456789ab.tmp", ".zoo.json.0123456789ab.tmp", ".out.csv.keep", "x.tmp"]
    for name in others:
        (tmp_path / name).write_text("someone else's")
    atomic_io.write_text(str(tmp_path / "out.csv"), "a,b\n")
    atomic_io.write_folder(str(tmp_path / "zoo"), lambda folder: open(os.path.join(folder, "f"), "w").close())
    assert sorted(os.listdir(tmp_path)) == sorted(["out.csv", "zoo", *others])
    assert (tmp_path / "out.csv").read_text() == "a,b\n"


def test_replacing_leaves_nothing_when_the_block_fails(tmp_path):
    target = tmp_path / "rankings.parquet"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_io.replacing(str(target)) as tmp:
            open(tmp, "w").write("new, partial")
            raise RuntimeError("killed")
    assert os.listdir(tmp_path) == ["rankings.parquet"] and target.read_text() == "old"
