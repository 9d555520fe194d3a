# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""CRC32C (Castagnoli, reflected polynomial 0x82F63B78), slicing-by-8.

Built by setup.py as the extension module ``dfs._native.crc32c``; use it via
``dfs.common.checksum.crc32c`` which falls back to pure Python if this module
is not importable.

``crc32c(data, crc=0) -> int`` uses the standard init/xorout (0xFFFFFFFF), so
``crc32c(b"123456789") == 0xE3069283`` and results chain:
``crc32c(b, crc32c(a)) == crc32c(a + b)``.  ``data`` may be any C-contiguous
object supporting the buffer protocol (bytes, bytearray, memoryview, mmap,
numpy arrays, ...); its raw bytes are checksummed.  The GIL is released for
buffers of at least ``GIL_RELEASE_THRESHOLD`` bytes.
"""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from libc.stdint cimport uint32_t, uint8_t

cdef extern from "crc32c_impl.h":
    void dfs_crc32c_init_tables() nogil
    uint32_t dfs_crc32c_update(uint32_t crc, const uint8_t *p, size_t length) nogil


dfs_crc32c_init_tables()

#: Buffers at least this large are checksummed with the GIL released.
GIL_RELEASE_THRESHOLD = 64 * 1024
cdef Py_ssize_t _gil_threshold = GIL_RELEASE_THRESHOLD


def crc32c(data, unsigned long long crc=0):
    """Return the CRC32C of ``data`` continuing from ``crc`` (default 0)."""
    cdef Py_buffer view
    cdef uint32_t c
    if crc > 0xFFFFFFFFu:
        raise ValueError("crc must be in range [0, 2**32)")
    c = (<uint32_t>crc) ^ 0xFFFFFFFFu
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        if view.len >= _gil_threshold:
            with nogil:
                c = dfs_crc32c_update(c, <const uint8_t *>view.buf, <size_t>view.len)
        else:
            c = dfs_crc32c_update(c, <const uint8_t *>view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return c ^ 0xFFFFFFFFu
