"""Fuzzing every file the project reads (hypothesis): valid files mutated (truncated, bytes
flipped, junk inserted, size fields changed) and random bytes. Each reader either loads the file
or raises its one clear error: the module's error class (a ValueError) whose message is one line
naming the file. Any other exception (a traceback for the user), a hang (an alarm fails the
example after a few seconds) or a size field that makes the reader allocate fails the test.

Examples are derandomized (the same inputs on every run) and few per reader, so the whole file
runs in about a minute on two CPU cores; ``FUZZ_SCALE=N`` hunts longer with random inputs."""

import contextlib
import io
import json
import os
import pickle
import signal
import struct
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fennec_jax.archs import graphs
from fennec_jax.core import checkpoint, records, safe_pickle
from fennec_jax.encoders import features, weights
from fennec_jax.zoo import probes, task_data

# When orbax aborts reading a damaged file, its background threads may later report the closed
# event loop as an unraisable exception; the error the caller gets is the one asserted.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


# FUZZ_SCALE=N runs N times the examples, drawn at random (a longer hunt than the test suite's).
_SCALE = int(os.environ.get("FUZZ_SCALE", "1"))


def fuzz(examples):
    return settings(max_examples=examples * _SCALE, deadline=None, derandomize=_SCALE == 1, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@contextlib.contextmanager
def _time_limit(seconds):
    def hang(*_):
        raise TimeoutError(f"the reader ran over {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def check_reader(read, path, errors=(ValueError,), named=None):
    """``read(path)`` loads or raises one of ``errors`` with a one-line message naming the file
    (``named``, default ``path``); anything else propagates and fails the example."""
    try:
        with _time_limit(20):
            read(path)
    except errors as err:
        message = str(err)
        assert str(named or path) in message, message
        assert "\n" not in message, message


def mutated(valid: bytes):
    """Strategy: ``valid`` truncated, with bytes flipped, with junk inserted, with a size field
    (a run of digits, or 4 / 8 bytes) set huge, or random bytes."""
    n = len(valid)

    def flip(edits):
        out = bytearray(valid)
        for at, value in edits:
            out[at % n] = value
        return bytes(out)

    def insert(at, junk):
        return valid[:at] + junk + valid[at:]

    def huge_number(at, digits):
        # Replace the run of ASCII digits nearest after `at` (a shape, a length, an offset).
        text = valid
        i = next((j for j in range(at, n) if 48 <= text[j] <= 57), None)
        if i is None:
            return text + digits
        end = i
        while end < n and 48 <= text[end] <= 57:
            end += 1
        return text[:i] + digits + text[end:]

    def huge_binary(at, width):
        big = b"\xff" * (width - 1) + b"\x7f"
        at = at % max(n - width, 1)
        return valid[:at] + big + valid[at + width:]

    return st.one_of(
        st.integers(0, n).map(lambda k: valid[:k]),
        st.lists(st.tuples(st.integers(0, 10 * n), st.integers(0, 255)), min_size=1, max_size=6).map(flip),
        st.builds(insert, st.integers(0, n), st.binary(min_size=1, max_size=40)),
        st.builds(huge_number, st.integers(0, max(n - 1, 0)), st.sampled_from([b"99999999999999", b"4294967296",
                                                                               b"-1", b"1e308", b"0"])),
        st.builds(huge_binary, st.integers(0, 10 * n), st.sampled_from([4, 8])),
        st.binary(max_size=400),
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


# ----------------------------------------------------------------------------- records tables

LONG = b"model,task,score,seed\nresnet50,cifar,0.91,0\nresnet50,cifar,0.93,1\nvit,cifar,0.95,0\nvit,pets,0.88,0\n"
WIDE = b"model,cifar,pets,flowers\nresnet50,91.0,88.5,\nvit,95.2,,97.0\nmobilenet,80.1,70.0,75.5\n"
MODEL_META = b"model,family,params\nresnet50,resnet,25.6\nvit,vit,86\n"


@pytest.mark.parametrize("layout, seed", [("long", LONG), ("wide", WIDE)])
@fuzz(60)
@given(data=st.data())
def test_records_csv(work, layout, seed, data):
    path = work / f"{layout}.csv"
    path.write_bytes(data.draw(mutated(seed)))
    check_reader(records.load_records, str(path))


def _parquet_bytes():
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table({"model": ["a", "b", "a"], "task": ["x", "x", "y"], "score": [0.5, 0.7, 0.2]}), buffer)
    return buffer.getvalue()


@fuzz(60)
@given(data=mutated(_parquet_bytes()))
@example(data=b"\x00" + _parquet_bytes())  # found: pyarrow's message spans lines
def test_records_parquet(work, data):
    path = work / "records.parquet"
    path.write_bytes(data)
    check_reader(records.load_records, str(path))


_TASK_META = b"task,num_classes,domain\ncifar,10,natural\npets,37,natural\n"


@pytest.mark.parametrize("kind, seed", [("model_meta", MODEL_META), ("task_meta", _TASK_META)])
@fuzz(40)
@given(data=st.data())
def test_metadata_files(work, kind, seed, data):
    table = work / "meta_records.csv"
    table.write_bytes(LONG)
    path = work / f"{kind}.csv"
    path.write_bytes(data.draw(mutated(seed)))
    check_reader(lambda p: records.load_records(str(table), **{kind: p}), str(path))


@fuzz(40)
@given(data=mutated(b"model,score\nresnet50,0.91\nvit,0.95\n"))
def test_probe_files(work, data):
    path = work / "probes.csv"
    path.write_bytes(data)
    check_reader(probes.parse_probes, str(path), errors=(probes.ProbesError,))


# ----------------------------------------------------------------------------- graphs

GRAPHS = (b'{"model":"a","nodes":[{"op":"input"},{"op":"conv","attrs":{"kernel_size":3}},{"op":"output"}],'
          b'"edges":[[0,1],[1,2]]}\n{"model":"b","nodes":[{"op":"input"},{"op":"sep_conv_5x5"},{"op":"output"}],'
          b'"edges":[[0,1],[1,2]]}\n')


@fuzz(80)
@given(data=mutated(GRAPHS))
@example(data=b"\x80")  # found: UnicodeDecodeError without the file
def test_graph_json_lines(work, data):
    path = work / "graphs.jsonl"
    path.write_bytes(data)
    check_reader(graphs.load_jsonl, str(path))


def test_deeply_nested_graph_json_is_one_error(work):
    path = work / "deep.jsonl"
    path.write_bytes(b"[" * 100_000 + b"]" * 100_000 + b"\n")
    with pytest.raises(ValueError, match="deep.jsonl:1: "):
        graphs.load_jsonl(str(path))


def _onnx_bytes():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["y"], ["z"]),
             helper.make_node("GlobalAveragePool", ["z"], ["out"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 1, 1])], [weight])
    return helper.make_model(graph).SerializeToString()


@fuzz(60)
@given(data=mutated(_onnx_bytes()))
@example(data=b"")  # found: parses as an empty model; the error did not name the file
def test_onnx_files(work, data):
    from fennec_jax.archs import onnx_import

    path = work / "model.onnx"
    path.write_bytes(data)
    check_reader(onnx_import.from_onnx, str(path))


# ----------------------------------------------------------------------------- arrays: .npz

def _npz_bytes(**arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


_LABELS = np.array([0, 1, 0, 1, 2], np.int64)


@fuzz(60)
@given(data=mutated(_npz_bytes(features=np.arange(15.0).reshape(5, 3), labels=_LABELS,
                               probs=np.full((5, 2), 0.5))))
def test_feature_npz(work, data):
    path = work / "model.npz"
    path.write_bytes(data)
    check_reader(features.load_features, str(path))


@fuzz(60)
@given(data=mutated(_npz_bytes(images=np.zeros((5, 4, 4, 3), np.uint8), labels=_LABELS)))
def test_task_data_npz(work, data):
    path = work / "task.npz"
    path.write_bytes(data)
    check_reader(task_data.read_task, str(path))


# ----------------------------------------------------------------------------- weights

def _torch_zip_bytes():
    storage = pickle.dumps({"w": "placeholder"}, protocol=2)  # no tensors: a plain dict pickle
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", storage)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/data/0", np.arange(4, dtype=np.float32).tobytes())
    return buffer.getvalue()


def _torch_legacy_bytes():
    out = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, out, protocol=2)
    pickle.dump({"w": [1.0, 2.0]}, out, protocol=2)
    pickle.dump([], out, protocol=2)
    return out.getvalue()


@fuzz(60)
@given(data=st.one_of(mutated(_torch_zip_bytes()), mutated(_torch_legacy_bytes())))
@example(data=b"PK\x03\x04")  # found: zipfile.BadZipFile
def test_torch_checkpoints(work, data):
    path = work / "weights.pth"
    path.write_bytes(data)
    check_reader(weights.read_torch, str(path))


@pytest.fixture(scope="module")
def torch_files(work):
    """Bytes of ``torch.save``'s zip and legacy formats of a state dict with strided, offset,
    shared and bfloat16 tensors (test_weights' hand-made torch.save, no torch needed)."""
    import sys
    import types

    import test_weights

    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    for name in test_weights._STORAGE_NAMES.values():
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    for name in ("_rebuild_tensor_v2", "_rebuild_parameter"):
        func = lambda *args: None  # noqa: E731
        func.__module__, func.__name__, func.__qualname__ = "torch._utils", name, name
        setattr(utils, name, func)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "torch", torch)
        patch.setitem(sys.modules, "torch._utils", utils)
        obj, _ = test_weights._example()
        return [test_weights.save_zip(work / "valid_zip.pth", obj).read_bytes(),
                test_weights.save_legacy(work / "valid_legacy.pth", obj).read_bytes()]


@fuzz(60)
@given(which=st.integers(0, 1), data=st.data())
def test_torch_checkpoints_with_tensors(work, torch_files, which, data):
    path = work / "tensors.pth"
    path.write_bytes(data.draw(mutated(torch_files[which])))
    check_reader(weights.read_torch, str(path))


def _safetensors_bytes():
    header = json.dumps({"__metadata__": {"format": "pt"},
                         "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                         "b": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]}}).encode()
    return struct.pack("<Q", len(header)) + header + bytes(22)


@fuzz(80)
@given(data=mutated(_safetensors_bytes()))
def test_safetensors(work, data):
    path = work / "weights.safetensors"
    path.write_bytes(data)
    check_reader(weights.read_state_dict, str(path))


@fuzz(80)
@given(data=mutated(pickle.dumps({"perf": np.arange(6.0).reshape(2, 3), "names": ["a", "b"], "n": 3}, protocol=4)))
@example(data=b"\x80\x04\x8c\x04os\nx\x8c\x01y\x93.")  # found: a global named with a newline
def test_pickles(work, data):
    path = work / "table.pkl"
    path.write_bytes(data)
    check_reader(lambda p: safe_pickle.load(p, safe_pickle.NUMPY_GLOBALS), str(path))


# ----------------------------------------------------------------------------- folders

def _folder_files(folder):
    return sorted(os.path.relpath(os.path.join(root, name), folder)
                  for root, _, names in os.walk(folder) for name in names)


@pytest.fixture(scope="module")
def checkpoint_folder(work):
    path = work / "ckpt_valid"
    checkpoint.save_arrays(str(path), "fuzz/1", {"names": ["a", "b"]},
                           {"x": np.arange(12.0).reshape(3, 4), "mask": np.ones(3, bool)})
    return path


def _mutate_folder(valid, target, choice, data):
    """``target``: a copy of folder ``valid`` with its file number ``choice`` replaced by the
    bytes ``data`` draws from that file's mutations."""
    import shutil

    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(valid, target)
    files = _folder_files(valid)
    name = files[choice % len(files)]
    original = (valid / name).read_bytes()
    (target / name).write_bytes(data.draw(mutated(original) if original else st.binary(max_size=100)))
    return name


@fuzz(40)
@given(choice=st.integers(0, 1000), data=st.data())
def test_checkpoints(work, checkpoint_folder, choice, data):
    target = work / "ckpt_fuzzed"
    _mutate_folder(checkpoint_folder, target, choice, data)
    check_reader(lambda p: checkpoint.restore_arrays(p, "fuzz/1", "fuzz"), str(target),
                 errors=(checkpoint.CheckpointError,))


@pytest.fixture(scope="module")
def zoo_folder(work):
    from fennec_jax.core.records import records_from_matrix
    from fennec_jax.zoo.zoo import fit_zoo

    rng = np.random.default_rng(0)
    history = records_from_matrix([f"m{i}" for i in range(6)], [f"t{i}" for i in range(4)], rng.uniform(size=(4, 6)))
    path = work / "zoo_valid"
    zoo = fit_zoo(history, method="popularity", calibration_tasks=2)
    zoo.save(str(path))
    return path, zoo.rank(probes={"m1": 0.5}).table


@fuzz(40)
@given(choice=st.integers(0, 1000), data=st.data())
def test_zoo_folders(work, zoo_folder, choice, data):
    from fennec_jax.zoo.zoo import ZooError, load_zoo

    valid, table = zoo_folder
    target = work / "zoo_fuzzed"
    name = _mutate_folder(valid, target, choice, data)
    try:
        with _time_limit(20):
            zoo = load_zoo(str(target))
    except (ZooError, checkpoint.CheckpointError) as err:
        assert str(target) in str(err) and "\n" not in str(err), str(err)
    else:  # a change that orbax ignores (a commit marker, a spare copy of data) must not alter the ranking
        got = zoo.rank(probes={"m1": 0.5}).table
        assert zoo.models == table.models, name
        assert all(np.array_equal(a, b) for a, b in ((got.predicted, table.predicted), (got.low, table.low),
                                                     (got.high, table.high))), name
