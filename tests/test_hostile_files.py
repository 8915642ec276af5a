"""Files made to attack the readers: pickles that run commands through globals renamed, nested or
reached by unusual opcodes; a ``.pth`` zip with path-traversal member names; safetensors and
``.npz`` headers claiming terabytes. Each is refused with one error naming the file, before
anything runs (a command would create a marker file) or is allocated (the peak memory of a
fresh process is measured around each read)."""

import copyreg
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from fennec_jax.core import safe_pickle
from fennec_jax.encoders import weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _str(text: str) -> bytes:
    """A SHORT_BINUNICODE opcode pushing ``text``."""
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def _stack_global(module: str, name: str) -> bytes:
    return _str(module) + _str(name) + b"\x93"


def _payloads(marker: str) -> dict[str, bytes]:
    """Hand-written pickles, each of which creates ``marker`` when plain ``pickle`` loads it."""
    cmd = f"touch {marker}"
    return {
        # os.system pickles as posix.system: the renamed module must be refused as well.
        "posix.system via STACK_GLOBAL": b"\x80\x04" + _stack_global("posix", "system") + _str(cmd) + b"\x85R.",
        "os.system via GLOBAL": f"cos\nsystem\n(S'{cmd}'\ntR.".encode(),
        "builtins.eval": b"\x80\x04" + _stack_global("builtins", "eval")
        + _str(f"open({marker!r}, 'w')") + b"\x85R.",
        "subprocess.Popen via STACK_GLOBAL": b"\x80\x04" + _stack_global("subprocess", "Popen")
        + b"]" + _str("touch") + _str(marker) + b"e\x85R.",
        # getattr(__import__('os'), 'system')(cmd): two calls through builtins.
        "builtins.getattr gadget": b"\x80\x04" + _stack_global("builtins", "getattr")
        + _stack_global("builtins", "__import__") + _str("os") + b"\x85R" + _str("system") + b"\x86R"
        + _str(cmd) + b"\x85R.",
        # INST and OBJ build instances from a named class (protocol 0 and 1).
        "INST opcode": f"(S'{cmd}'\nios\nsystem\n.".encode(),
        "OBJ opcode": f"(cos\nsystem\nS'{cmd}'\no.".encode(),
        # The call sits deep inside containers next to harmless data.
        "global nested in dict/tuple/list": b"\x80\x04}" + _str("weights") + b"](K\x01K\x02K\x03"
        + _stack_global("posix", "system") + _str(cmd) + b"\x85R" + b"\x86" + b"e" + b"s.",
        # The global is stored in the memo first, then fetched and called.
        "global through the memo": b"\x80\x04" + _stack_global("posix", "system") + b"\x94" + b"0"
        + b"h\x00" + _str(cmd) + b"\x85R.",
        # A name walking attributes from an allow-listed module.
        "dotted name from an allowed module": b"\x80\x04" + _stack_global("numpy", "dtype.__init__.__globals__")
        + b".",
    }


def _refused(read, path, marker, match="refused to load global"):
    with pytest.raises(safe_pickle.UnsafePickleError, match=match) as info:
        read(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not os.path.exists(marker), "the command ran"


@pytest.mark.parametrize("what", list(_payloads("m")))
def test_hostile_pickle_is_refused_unrun(tmp_path, what):
    marker = str(tmp_path / "pwned")
    path = tmp_path / "evil.pkl"
    path.write_bytes(_payloads(marker)[what])
    _refused(lambda p: safe_pickle.load(p, safe_pickle.NUMPY_GLOBALS), path, marker)


def test_hostile_pickles_do_run_under_plain_pickle(tmp_path):
    # Guards the test above: each payload is live (one that creates the marker, as a sample).
    marker = str(tmp_path / "pwned")
    for what in ("posix.system via STACK_GLOBAL", "global nested in dict/tuple/list", "global through the memo",
                 "builtins.getattr gadget", "OBJ opcode"):
        pickle.loads(_payloads(marker)[what])
        assert os.path.exists(marker), what
        os.remove(marker)


def test_copyreg_extension_code_is_refused_unrun(tmp_path):
    # EXT1 names a global by a number registered with copyreg: find_class still sees it.
    marker = str(tmp_path / "pwned")
    copyreg.add_extension("posix", "system", 0xF1)
    try:
        path = tmp_path / "ext.pkl"
        path.write_bytes(b"\x80\x02\x82\xf1" + _str(f"touch {marker}") + b"\x85R.")
        _refused(lambda p: safe_pickle.load(p, safe_pickle.NUMPY_GLOBALS), path, marker, "posix.system")
    finally:
        copyreg.remove_extension("posix", "system", 0xF1)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_hostile_pickle_inside_a_pth_is_refused_unrun(tmp_path, fmt):
    marker = str(tmp_path / "pwned")
    payload = _payloads(marker)["posix.system via STACK_GLOBAL"]
    path = tmp_path / "evil.pth"
    if fmt == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", payload)
    else:
        out = io.BytesIO()
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, out, protocol=2)
        path.write_bytes(out.getvalue() + payload)
    _refused(weights.read_torch, path, marker, "posix.system")


# ----------------------------------------------------------------------------- zip members


@pytest.mark.parametrize("member", ["../../evil", "archive/../../evil", "/tmp/evil", "..\\..\\evil"])
def test_pth_zip_with_path_traversal_member_is_refused(tmp_path, member):
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    path = folder / "model.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": 1}, protocol=2))
        archive.writestr(member, b"evil")
    with pytest.raises(ValueError, match="refused a zip member named") as info:
        weights.read_torch(path)
    assert str(path) in str(info.value) and repr(member) in str(info.value)
    assert not (tmp_path / "evil").exists() and not os.path.exists("/tmp/evil")


# ----------------------------------------------------------------------------- size fields


def _safetensors(header: dict, body: bytes = bytes(16), length: int | None = None) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded) if length is None else length) + encoded + body


def _npz(shape) -> bytes:
    text = "{'descr': '<f8', 'fortran_order': False, 'shape': %r, }" % (shape,)
    text += " " * (-(len(text) + 11) % 64) + "\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("features.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode())
        archive.writestr("labels.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode())
    return buffer.getvalue()


HUGE_FILES = {
    "safetensors header length of 1 TB": (
        "w.safetensors", _safetensors({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, length=2**40)),
    "safetensors data_offsets of 4 TB": (
        "w.safetensors", _safetensors({"x": {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 2**42]}})),
    "safetensors shape overflowing 64 bits": (
        "w.safetensors", _safetensors({"x": {"dtype": "F32", "shape": [2**31, 2**31, 2**31], "data_offsets": [0, 16]}})),
    "npz header of 8 TB": ("f.npz", _npz((2**20, 2**20))),
    "npz header of 24 GB": ("f.npz", _npz((3 * 10**9,))),
    "legacy torch storage of 8 TB": ("w.pth", None),  # built in the child (needs the storage pickle)
}

_CHILD = textwrap.dedent("""
    import io, json, pickle, resource, struct, sys
    from fennec_jax.core import npz
    from fennec_jax.encoders import weights

    def legacy_huge_storage(path):
        # a legacy torch file whose storage header claims 2**40 float32 elements
        class Storage: pass
        out = io.BytesIO()
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, out, protocol=2)
        body = (b"\\x80\\x02}q\\x00X\\x01\\x00\\x00\\x00wq\\x01(X\\x07\\x00\\x00\\x00storageq\\x02ctorch\\nFloatStorage\\n"
                b"q\\x03X\\x01\\x00\\x00\\x000q\\x04X\\x03\\x00\\x00\\x00cpuq\\x05\\x8a\\x06\\x00\\x00\\x00\\x00\\x00\\x01Ntq\\x06Qs.")
        out.write(body)
        pickle.dump(["0"], out, protocol=2)
        out.write(struct.pack("<q", 2**40) + bytes(64))
        open(path, "wb").write(out.getvalue())

    readers = {"safetensors": weights.read_state_dict, "npz": npz.read_npz, "pth": weights.read_torch}
    results = {}
    for what, path in json.loads(sys.argv[1]).items():
        if path.endswith(".pth"):
            legacy_huge_storage(path)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            readers[path.rsplit(".", 1)[1]](path)
            outcome = "loaded"
        except ValueError as err:
            outcome = str(err)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        results[what] = [outcome, (after - before) / 1024]
    print(json.dumps(results))
""")


def test_size_fields_claiming_terabytes_are_refused_without_allocating(tmp_path):
    paths = {}
    for i, (what, (name, data)) in enumerate(HUGE_FILES.items()):
        paths[what] = str(tmp_path / f"{i}_{name}")
        if data is not None:
            open(paths[what], "wb").write(data)
    # A fresh process, so that its peak resident memory starts low and any allocation shows.
    done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(paths)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for what, (outcome, grown_mb) in results.items():
        assert outcome.startswith(paths[what] + ": ") and "\n" not in outcome, (what, outcome)
        assert grown_mb < 64, (what, grown_mb)
