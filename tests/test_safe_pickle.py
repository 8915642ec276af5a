"""Tests for fennec_jax.core.safe_pickle: allowlisted globals load, everything else is refused unrun."""

import builtins
import collections
import io
import os
import pickle
import random
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from fennec_jax.core import safe_pickle


class _Calls:
    """Pickles as `func(*args)`: what a malicious pickle does with REDUCE."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _write(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_loads_numpy_data(tmp_path, protocol):
    data = {
        "floats": np.linspace(0.0, 1.0, 7).reshape(7, 1),
        "ints": np.arange(6, dtype=np.int32)[::2],  # non-contiguous view
        "record": np.zeros(2, dtype=[("a", "<i8"), ("b", ">f4")]),
        "scalar": np.float64(0.25),
        "dtype": np.dtype("<u2"),
        "nested": [1, 2.5, "x", (None, True), {"k": b"\x00\xff"}],
    }
    path = _write(tmp_path / "data.pkl", pickle.dumps(data, protocol=protocol))
    loaded = safe_pickle.load(path, safe_pickle.NUMPY_GLOBALS)
    assert loaded.keys() == data.keys()
    for key in ("floats", "ints", "record"):
        assert loaded[key].dtype == data[key].dtype
        np.testing.assert_array_equal(loaded[key], data[key])
    assert type(loaded["scalar"]) is np.float64 and loaded["scalar"] == 0.25
    assert loaded["dtype"] == np.dtype("<u2")
    assert loaded["nested"] == data["nested"]


def test_numpy_1_module_names_are_allowed(tmp_path):
    # numpy 1.x wrote `numpy.core.multiarray`; numpy 2 writes `numpy._core.multiarray`.
    data = pickle.dumps(np.arange(3.0), protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in data
    loaded = safe_pickle.load(_write(tmp_path / "old.pkl", data), safe_pickle.NUMPY_GLOBALS)
    np.testing.assert_array_equal(loaded, [0.0, 1.0, 2.0])


@pytest.mark.parametrize(
    "make_payload, refused",
    [
        (lambda marker: _Calls(os.system, f"touch {marker}"), "system"),
        (lambda marker: _Calls(builtins.eval, f"open({str(marker)!r}, 'w')"), "builtins.eval"),
        (lambda marker: _Calls(subprocess.Popen, ["touch", str(marker)]), "subprocess.Popen"),
        (lambda marker: _Calls(builtins.exec, f"open({str(marker)!r}, 'w')"), "builtins.exec"),
    ],
)
def test_refuses_malicious_reduce_without_running_it(tmp_path, make_payload, refused):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"weights": np.ones(2), "x": make_payload(marker)})
    path = _write(tmp_path / "evil.pkl", payload)
    with pytest.raises(safe_pickle.UnsafePickleError, match=refused) as info:
        safe_pickle.load(path, safe_pickle.NUMPY_GLOBALS)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)
    assert not marker.exists()


def test_malicious_payload_works_under_plain_pickle(tmp_path):
    # Guards the test above: the same payload does run when unpickled unrestricted.
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_Calls(subprocess.call, ["touch", str(marker)])))
    assert marker.exists()


def test_refuses_hand_written_protocol_0_global(tmp_path):
    marker = tmp_path / "pwned"
    data = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    with pytest.raises(safe_pickle.UnsafePickleError, match="os.system"):
        safe_pickle.load(_write(tmp_path / "evil0.pkl", data), safe_pickle.NUMPY_GLOBALS)
    assert not marker.exists()


def test_refuses_before_importing_the_module(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "evil_module_xyz.py").write_text(f"open({str(marker)!r}, 'w').close()\nvalue = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = b"\x80\x04\x8c\x0fevil_module_xyz\x8c\x05value\x93."
    with pytest.raises(safe_pickle.UnsafePickleError, match="evil_module_xyz.value"):
        safe_pickle.load(_write(tmp_path / "imp.pkl", data), safe_pickle.NUMPY_GLOBALS)
    assert not marker.exists()
    assert "evil_module_xyz" not in sys.modules


def test_refuses_malicious_object_inside_object_array(tmp_path):
    marker = tmp_path / "pwned"
    array = np.empty(2, dtype=object)
    array[:] = [1, _Calls(builtins.exec, f"open({str(marker)!r}, 'w')")]
    with pytest.raises(safe_pickle.UnsafePickleError, match="builtins.exec"):
        safe_pickle.load(_write(tmp_path / "obj.pkl", pickle.dumps(array)), safe_pickle.NUMPY_GLOBALS)
    assert not marker.exists()


@pytest.mark.parametrize("cut", [0, 1, 10, -40, -1])
def test_truncated_file_is_a_clear_error(tmp_path, cut):
    data = pickle.dumps({"a": np.arange(10.0), "b": "text"}, protocol=4)
    path = _write(tmp_path / "truncated.pkl", data[:cut])
    with pytest.raises(ValueError, match="not a valid pickle") as info:
        safe_pickle.load(path, safe_pickle.NUMPY_GLOBALS)
    assert str(path) in str(info.value)
    assert not isinstance(info.value, safe_pickle.UnsafePickleError)


@pytest.mark.parametrize(
    "data",
    [b"not a pickle at all", b"\x80\x05\x95\xff\xff\xff\xff\xff\xff\xff\x7f", b"PK\x03\x04garbage", b"\x80\x04h\x07."],
)
def test_corrupt_file_is_a_clear_error(tmp_path, data):
    path = _write(tmp_path / "corrupt.pkl", data)
    with pytest.raises(ValueError, match="corrupt.pkl"):
        safe_pickle.load(path, safe_pickle.NUMPY_GLOBALS)


def test_trailing_bytes_are_an_error(tmp_path):
    path = _write(tmp_path / "trailing.pkl", pickle.dumps([1, 2]) + b"junk")
    with pytest.raises(ValueError, match="after the end of the pickle"):
        safe_pickle.load(path, safe_pickle.NUMPY_GLOBALS)


def test_allowed_callable_with_bad_arguments_is_a_value_error(tmp_path):
    data = b"\x80\x04\x8c\x05numpy\x8c\x05dtype\x93\x8c\x0bnot_a_dtype\x85R."
    with pytest.raises(ValueError, match="not a valid pickle"):
        safe_pickle.load(_write(tmp_path / "bad_dtype.pkl", data), safe_pickle.NUMPY_GLOBALS)


def test_custom_allowlist_and_substitutes():
    data = pickle.dumps(collections.OrderedDict(a=1, b=[2, 3]))
    with pytest.raises(safe_pickle.UnsafePickleError, match="collections.OrderedDict"):
        safe_pickle.load_stream(io.BytesIO(data), safe_pickle.NUMPY_GLOBALS, source="<mem>")
    loaded = safe_pickle.load_stream(io.BytesIO(data), {("collections", "OrderedDict")}, source="<mem>")
    assert type(loaded) is collections.OrderedDict and loaded == {"a": 1, "b": [2, 3]}
    plain = safe_pickle.load_stream(
        io.BytesIO(data), frozenset(), source="<mem>", substitutes={("collections", "OrderedDict"): dict}
    )
    assert type(plain) is dict and plain == {"a": 1, "b": [2, 3]}


def test_persistent_ids_and_sequential_pickles():
    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", obj.name) if isinstance(obj, _Storage) else None

    class _Storage:
        def __init__(self, name):
            self.name = name

    stream = io.BytesIO()
    pickle.dump("header", stream)
    _Pickler(stream).dump({"w": _Storage("0"), "b": _Storage("1")})
    stream.seek(0)
    assert safe_pickle.load_stream(stream, frozenset(), source="<mem>") == "header"
    position = stream.tell()
    storages = {"0": np.ones(3), "1": np.zeros(1)}
    loaded = safe_pickle.load_stream(
        stream, frozenset(), source="<mem>", persistent_load=lambda pid: storages[pid[1]]
    )
    assert loaded["w"] is storages["0"] and loaded["b"] is storages["1"]
    stream.seek(position)
    with pytest.raises(ValueError, match="<mem>: not a valid pickle"):
        safe_pickle.load_stream(stream, frozenset(), source="<mem>")


def test_huge_memo_index_does_not_allocate(tmp_path):
    # `None`, memoised under index 2**24: the C unpickler would allocate a 256 MiB memo table.
    data = b"\x80\x04Nr\x00\x00\x00\x01."
    tracemalloc.start()
    try:
        assert safe_pickle.load(_write(tmp_path / "memo.pkl", data), frozenset()) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20


def test_random_corruption_gives_value_errors_only():
    data = pickle.dumps({i: {"perf": 0.5 + i, "para": np.float64(i)} for i in range(50)}, protocol=4)
    rng = random.Random(0)
    for _ in range(200):
        corrupt = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            corrupt[rng.randrange(len(corrupt))] = rng.randrange(256)
        try:
            safe_pickle.load_stream(io.BytesIO(bytes(corrupt)), safe_pickle.NUMPY_GLOBALS, source="<fuzz>")
        except ValueError as exc:
            assert str(exc).startswith("<fuzz>: ")
