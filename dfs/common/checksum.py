"""CRC32C (Castagnoli) checksums.

``crc32c(data, crc=0) -> int`` is the one to use: the compiled slicing-by-8
implementation ``dfs._native.crc32c`` (native/crc32c.pyx, releases the GIL on
large buffers) when it is importable, else the pure-Python ``crc32c_py``.
``NATIVE`` tells which one is in use.

Both use the standard parameters (reflected polynomial 0x82F63B78, init and
xorout 0xFFFFFFFF), so ``crc32c(b"123456789") == 0xE3069283`` and a checksum
can be continued: ``crc32c(b, crc32c(a)) == crc32c(a + b)``.  ``data`` is any
object supporting the buffer protocol (bytes, bytearray, memoryview, ...).
"""
from __future__ import annotations

__all__ = ["crc32c", "crc32c_py", "NATIVE"]

_POLY = 0x82F63B78


def _make_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_TABLE = _make_table()


def crc32c_py(data, crc: int = 0) -> int:
    """Pure-Python table-driven CRC32C of ``data`` continuing from ``crc``."""
    if not 0 <= crc <= 0xFFFFFFFF:
        raise ValueError("crc must be in range [0, 2**32)")
    mv = memoryview(data)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")  # raw bytes of any C-contiguous buffer
    table = _TABLE
    c = crc ^ 0xFFFFFFFF
    for b in mv:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


try:
    from dfs._native.crc32c import crc32c as _native_crc32c
except ImportError:  # extension not built (e.g. DFS_NO_NATIVE=1)
    _native_crc32c = None

NATIVE: bool = _native_crc32c is not None
crc32c = _native_crc32c if _native_crc32c is not None else crc32c_py
