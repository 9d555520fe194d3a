"""Per-block checksums of chunk data: one CRC32C per block (64 KiB by default).

``block_crcs(data, block_size)`` -> bytes of little-endian u32, one per block
(the last block may be short and is checksummed over its short length).
``first_bad_block(data, crcs, block_size)`` -> index of the first block of
``data`` whose CRC differs from ``crcs``, or -1.

These are the pure-Python references; a native path (native/datapath.pyx)
replaces them when built, and tests compare the two byte for byte.
"""

from __future__ import annotations

import struct

from dfs.common.checksum import crc32c

BLOCK_SIZE = 64 * 1024


def block_crcs_py(data, block_size: int = BLOCK_SIZE) -> bytes:
    mv = memoryview(data).cast("B")
    n = len(mv)
    return b"".join(struct.pack("<I", crc32c(mv[i:i + block_size])) for i in range(0, n, block_size))


def first_bad_block_py(data, crcs: bytes, block_size: int = BLOCK_SIZE) -> int:
    mv = memoryview(data).cast("B")
    for b, i in enumerate(range(0, len(mv), block_size)):
        want = crcs[4 * b:4 * b + 4]
        if len(want) < 4 or struct.unpack("<I", want)[0] != crc32c(mv[i:i + block_size]):
            return b
    return -1


try:
    from dfs._native.datapath import block_crcs as _native_block_crcs
    from dfs._native.datapath import first_bad_block as _native_first_bad_block
except ImportError:  # extension not built (e.g. DFS_NO_NATIVE=1)
    _native_block_crcs = _native_first_bad_block = None

NATIVE: bool = _native_block_crcs is not None
block_crcs = _native_block_crcs if _native_block_crcs is not None else block_crcs_py
first_bad_block = _native_first_bad_block if _native_first_bad_block is not None else first_bad_block_py
