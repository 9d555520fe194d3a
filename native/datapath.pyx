# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Data-path hot loops: per-block CRC32C, layout arithmetic, buffer copies.

Built by setup.py as the extension module ``dfs._native.datapath``.  Use it
through ``dfs.common.blocks`` (``block_crcs``, ``first_bad_block``) and
``dfs.common.layout`` (``pieces``, ``chain_of``, ``mix64``, ``copy_into``),
which fall back to their pure-Python ``*_py`` references when this module is
not importable; tests check both give identical results.

* ``block_crcs(data, block_size=65536) -> bytes``: one little-endian u32
  CRC32C per ``block_size`` block of ``data`` (a short last block is
  checksummed over its short length).
* ``first_bad_block(data, crcs, block_size=65536) -> int``: index of the first
  block whose CRC differs from ``crcs`` (or has no entry there), else -1.
* ``pieces(offset, length, chunk_size) -> list`` of ``(chunk index, offset in
  chunk, length, offset in the caller's buffer)`` in file order.
* ``mix64(x) -> int``: SplitMix64 output of a u64.
* ``chain_of(ino, index, chunk_shift, stripe, nchains) -> int``:
  ``(mix64(ino) + index % stripe) % nchains``.  ``chunk_shift`` is validated
  (16 .. 26) but does not change the result; it is there so the fields of a
  packed layout can be passed as they are.
* ``copy_into(dst, dst_offset, src) -> int``: copy ``src``'s bytes into the
  writable buffer ``dst`` at ``dst_offset`` (bounds-checked, ValueError).

``data``/``crcs``/``src``/``dst`` are C-contiguous buffers (bytes, bytearray,
memoryview, mmap, numpy arrays, ...); their raw bytes are used.  The GIL is
released for buffers of at least ``GIL_RELEASE_THRESHOLD`` bytes.

The CRC32C is the same slicing-by-8 code as native/crc32c.pyx (reflected
polynomial 0x82F63B78, init/xorout 0xFFFFFFFF), duplicated here under other
names so each extension stands alone.
"""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from libc.stdint cimport uint32_t, uint8_t, uint64_t
from libc.string cimport memmove

from operator import index as _index

cdef extern from *:
    """
    #include <stdint.h>
    #include <stddef.h>
    #include <string.h>

    #include "crc32c_impl.h"
    #define dfs_dp_crc_update dfs_crc32c_update
    #define dfs_dp_crc_init_tables dfs_crc32c_init_tables

    static inline uint32_t dfs_dp_crc32c(const uint8_t *p, size_t len) {
        return dfs_dp_crc_update(0xFFFFFFFFu, p, len) ^ 0xFFFFFFFFu;
    }

    /* One little-endian u32 CRC per block into out (4 * nblocks bytes). */
    static void dfs_dp_block_crcs(const uint8_t *p, size_t len, size_t bs, uint8_t *out) {
        while (len) {
            size_t n = len < bs ? len : bs;
            uint32_t c = dfs_dp_crc32c(p, n);
            out[0] = (uint8_t)c; out[1] = (uint8_t)(c >> 8);
            out[2] = (uint8_t)(c >> 16); out[3] = (uint8_t)(c >> 24);
            out += 4; p += n; len -= n;
        }
    }

    /* First block whose CRC differs from crcs (or has no 4-byte entry), else -1. */
    static ptrdiff_t dfs_dp_first_bad(const uint8_t *p, size_t len, size_t bs,
                                      const uint8_t *crcs, size_t ncrc_bytes) {
        size_t b = 0;
        while (len) {
            size_t n = len < bs ? len : bs;
            if (4 * b + 4 > ncrc_bytes) return (ptrdiff_t)b;
            const uint8_t *w = crcs + 4 * b;
            uint32_t want = (uint32_t)w[0] | ((uint32_t)w[1] << 8) |
                            ((uint32_t)w[2] << 16) | ((uint32_t)w[3] << 24);
            if (dfs_dp_crc32c(p, n) != want) return (ptrdiff_t)b;
            b++; p += n; len -= n;
        }
        return -1;
    }

    /* SplitMix64 output function: golden-gamma add, then the mix13 finalizer. */
    static inline uint64_t dfs_dp_mix64(uint64_t x) {
        uint64_t z = x + 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    """
    void dfs_dp_crc_init_tables() nogil
    void dfs_dp_block_crcs(const uint8_t *p, size_t length, size_t bs, uint8_t *out) nogil
    Py_ssize_t dfs_dp_first_bad(const uint8_t *p, size_t length, size_t bs,
                                const uint8_t *crcs, size_t ncrc_bytes) nogil
    uint64_t dfs_dp_mix64(uint64_t x) nogil


dfs_dp_crc_init_tables()

#: Buffers at least this large are processed with the GIL released.
GIL_RELEASE_THRESHOLD = 64 * 1024
cdef Py_ssize_t _gil_threshold = GIL_RELEASE_THRESHOLD

BLOCK_SIZE = 64 * 1024

cdef object _U64 = 0xFFFFFFFFFFFFFFFF
cdef object _U32 = 0xFFFFFFFF
cdef object _MAX_OFFSET = (1 << 63) - 1


cdef object _invalid(str message):
    # Imported lazily: only error paths need it, and it keeps this module
    # importable on its own.
    from dfs.common.errors import InvalidArgument
    return InvalidArgument(message)


cdef inline object _int(str name, object v):
    """Same check as dfs.common.layout._int: an int that is not a bool."""
    if type(v) is int:
        return v
    if isinstance(v, bool) or not isinstance(v, int):
        raise _invalid(f"{name} must be an int, not {type(v).__name__}")
    return int(v)


# --- block checksums ----------------------------------------------------------


def block_crcs(data, Py_ssize_t block_size=BLOCK_SIZE):
    """Little-endian u32 CRC32C of every ``block_size`` block of ``data``."""
    cdef Py_buffer view
    cdef Py_ssize_t nblocks
    cdef bytes out
    cdef uint8_t *o
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, not {block_size}")
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        nblocks = (view.len + block_size - 1) // block_size
        out = PyBytes_FromStringAndSize(NULL, 4 * nblocks)
        o = <uint8_t *>PyBytes_AS_STRING(out)
        if view.len >= _gil_threshold:
            with nogil:
                dfs_dp_block_crcs(<const uint8_t *>view.buf, <size_t>view.len, <size_t>block_size, o)
        else:
            dfs_dp_block_crcs(<const uint8_t *>view.buf, <size_t>view.len, <size_t>block_size, o)
    finally:
        PyBuffer_Release(&view)
    return out


def first_bad_block(data, crcs, Py_ssize_t block_size=BLOCK_SIZE):
    """Index of the first block of ``data`` not matching ``crcs``, or -1."""
    cdef Py_buffer dv, cv
    cdef Py_ssize_t r
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, not {block_size}")
    PyObject_GetBuffer(data, &dv, PyBUF_SIMPLE)
    try:
        PyObject_GetBuffer(crcs, &cv, PyBUF_SIMPLE)
        try:
            if dv.len >= _gil_threshold:
                with nogil:
                    r = dfs_dp_first_bad(<const uint8_t *>dv.buf, <size_t>dv.len, <size_t>block_size,
                                         <const uint8_t *>cv.buf, <size_t>cv.len)
            else:
                r = dfs_dp_first_bad(<const uint8_t *>dv.buf, <size_t>dv.len, <size_t>block_size,
                                     <const uint8_t *>cv.buf, <size_t>cv.len)
        finally:
            PyBuffer_Release(&cv)
    finally:
        PyBuffer_Release(&dv)
    return r


# --- layout arithmetic --------------------------------------------------------------


def pieces(offset, length, chunk_size):
    """Split ``[offset, offset + length)`` into ``(chunk index, offset in chunk,
    length, offset in the caller's buffer)`` pieces, in file order."""
    cdef unsigned long long off, ln, cs, idx, o, pos, n, count, i
    cdef list out
    offset = _int("offset", offset)
    length = _int("length", length)
    chunk_size = _int("chunk_size", chunk_size)
    if offset < 0 or length < 0:
        raise _invalid(f"negative offset or length ({offset}, {length})")
    if chunk_size <= 0:
        raise _invalid(f"chunk_size must be positive, not {chunk_size}")
    if offset + length > _MAX_OFFSET:
        raise _invalid(f"range end {offset + length} beyond 2**63 - 1")
    off = offset
    ln = length
    # A chunk larger than any valid range end behaves like one of 2**63 bytes.
    cs = chunk_size if chunk_size <= _MAX_OFFSET else (1ULL << 63)
    if ln == 0:
        return []
    idx = off // cs
    o = off % cs
    count = (off + ln - 1) // cs - idx + 1
    out = [None] * count
    pos = 0
    for i in range(count):
        n = cs - o
        if n > ln - pos:
            n = ln - pos
        out[i] = (idx, o, n, pos)
        pos += n
        idx += 1
        o = 0
    return out


def mix64(x):
    """SplitMix64 output of the u64 ``x``."""
    x = _int("ino", x)
    if not 0 <= x <= _U64:
        raise _invalid(f"ino must be a u64, not {x}")
    return dfs_dp_mix64(<uint64_t>x)


def chain_of(ino, index, chunk_shift, stripe, nchains):
    """``(mix64(ino) + index % stripe) % nchains``: the chain table position of
    chunk ``index`` of ``ino``."""
    cdef uint64_t h, i, s, n
    ino = _int("ino", ino)
    if not 0 <= ino <= _U64:
        raise _invalid(f"ino must be a u64, not {ino}")
    index = _int("index", index)
    if not 0 <= index <= _U64:
        raise _invalid(f"chunk index must be a non-negative u64, not {index}")
    nchains = _int("nchains", nchains)
    if not 1 <= nchains <= _U32:
        raise _invalid(f"nchains must be in [1, 2**32), not {nchains}")
    chunk_shift = _int("chunk_shift", chunk_shift)
    if not 16 <= chunk_shift <= 26:
        raise _invalid(f"chunk_shift must be in [16, 26], not {chunk_shift}")
    stripe = _int("stripe", stripe)
    if not 1 <= stripe <= 0xFFFF:
        raise _invalid(f"stripe must be in [1, 65535], not {stripe}")
    h = dfs_dp_mix64(<uint64_t>ino)
    i = index
    s = stripe
    n = nchains
    # == (h + i % s) % n without overflowing 64 bits (both terms < 2**32).
    return (h % n + i % s) % n


# --- buffers ---------------------------------------------------------------------------


def copy_into(dst, dst_offset, src):
    """Copy the bytes of ``src`` into writable ``dst`` at ``dst_offset``; returns len(src).

    ValueError if ``dst_offset`` is negative or the copy would overrun ``dst``;
    TypeError if ``dst`` is read-only.
    """
    cdef Py_buffer dv, sv
    cdef Py_ssize_t off, n
    cdef char *d
    cdef const char *s
    PyObject_GetBuffer(dst, &dv, PyBUF_SIMPLE)
    try:
        if dv.readonly:
            raise TypeError("copy_into: dst must be a writable buffer")
        PyObject_GetBuffer(src, &sv, PyBUF_SIMPLE)
        try:
            n = sv.len
            dst_offset = _index(dst_offset) if type(dst_offset) is not int else dst_offset
            if dst_offset < 0 or dst_offset + n > dv.len:
                raise ValueError(
                    f"copy_into: {n} bytes at offset {dst_offset} do not fit a buffer of {dv.len}")
            off = dst_offset
            d = <char *>dv.buf + off
            s = <const char *>sv.buf
            if n >= _gil_threshold:
                with nogil:
                    memmove(d, s, <size_t>n)
            elif n:
                memmove(d, s, <size_t>n)
        finally:
            PyBuffer_Release(&sv)
    finally:
        PyBuffer_Release(&dv)
    return n
