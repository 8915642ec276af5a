"""Reading ``.npz`` files from users without trusting their size fields.

``numpy.load`` allocates each array at the shape its ``.npy`` header declares before reading its
bytes, so a header claiming ``(10**12,)`` raises MemoryError and one claiming a few tens of
gigabytes is granted by the kernel and then fails half-read. :func:`read_npz` checks each
header against the bytes the archive holds for that array first (object arrays are refused,
as ``numpy.load(allow_pickle=False)`` does).
"""

from __future__ import annotations

import math
import zipfile

import numpy as np

from fennec_jax.core.errors import describe

__all__ = ["read_npz"]

# Deflate cannot compress more than 1032:1, so a member that claims more is lying.
_MAX_DEFLATE_RATIO = 1032
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def read_npz(path: str) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file ``path`` (as written by ``numpy.savez`` or
    ``numpy.savez_compressed``), by name.

    Raises:
      ValueError: one line naming ``path``: not a zip archive, a member that is not an
        ``.npy`` array, a header whose shape and dtype do not match the bytes stored for it,
        an object array, or corrupt data.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            arrays = {}
            for info in archive.infolist():
                arrays[info.filename.removesuffix(".npy")] = _read_member(archive, info)
    except FileNotFoundError:
        raise
    except _BadMember as err:
        raise ValueError(f"{path}: {err}; expected an .npz of numeric arrays (numpy.savez)") from None
    except Exception as err:  # noqa: BLE001 - zipfile, zlib and numpy raise many types for corrupt data
        raise ValueError(f"{path}: not a readable .npz file ({describe(err)}); expected an .npz of numeric "
                         f"arrays (numpy.savez)") from None
    return arrays


class _BadMember(ValueError):
    """A member whose header contradicts the archive; the message names it."""


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    name = info.filename
    if not name.endswith(".npy"):
        raise _BadMember(f"member {name!r} is not an .npy array")
    if info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 1024:
        raise _BadMember(f"member {name!r} claims {info.file_size} bytes from {info.compress_size} compressed")
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version not in _HEADER_READERS:
            raise _BadMember(f"member {name!r} has .npy format version {version}, expected 1.0 or 2.0")
        shape, _, dtype = _HEADER_READERS[version](member)
        if dtype.hasobject:
            raise _BadMember(f"member {name!r} holds Python objects, which are not read (they would be unpickled)")
        declared = math.prod(shape) * dtype.itemsize
        if declared != info.file_size - member.tell():
            raise _BadMember(f"member {name!r} declares {dtype}{list(shape)} ({declared} bytes) but holds "
                             f"{info.file_size - member.tell()} bytes")
        member.seek(0)
        return np.lib.format.read_array(member, allow_pickle=False)
