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

cdef extern from *:
    """
    #include <stdint.h>
    #include <stddef.h>
    #include <string.h>

    static uint32_t dfs_crc32c_table[8][256];

    static void dfs_crc32c_init_tables(void) {
        for (uint32_t n = 0; n < 256; n++) {
            uint32_t c = n;
            for (int k = 0; k < 8; k++)
                c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : (c >> 1);
            dfs_crc32c_table[0][n] = c;
        }
        for (uint32_t n = 0; n < 256; n++) {
            uint32_t c = dfs_crc32c_table[0][n];
            for (int t = 1; t < 8; t++) {
                c = dfs_crc32c_table[0][c & 0xFF] ^ (c >> 8);
                dfs_crc32c_table[t][n] = c;
            }
        }
    }

    /* Raw update: `crc` is the running register (already inverted). */
        #if defined(__x86_64__) && defined(__GNUC__)
    #include <nmmintrin.h>
    /* The SSE4.2 crc32 instruction computes exactly this polynomial; used when
       the CPU has it (checked once at run time), else the tables below. */
    __attribute__((target("sse4.2")))
    static uint32_t dfs_crc32c_hw(uint32_t crc, const uint8_t *p, size_t len) {
        while (len && ((uintptr_t)p & 7)) { crc = _mm_crc32_u8(crc, *p++); len--; }
        uint64_t c = crc;
        while (len >= 32) {
            uint64_t a, b, d, e;
            memcpy(&a, p, 8); memcpy(&b, p + 8, 8); memcpy(&d, p + 16, 8); memcpy(&e, p + 24, 8);
            c = _mm_crc32_u64(c, a); c = _mm_crc32_u64(c, b);
            c = _mm_crc32_u64(c, d); c = _mm_crc32_u64(c, e);
            p += 32; len -= 32;
        }
        while (len >= 8) { uint64_t v; memcpy(&v, p, 8); c = _mm_crc32_u64(c, v); p += 8; len -= 8; }
        crc = (uint32_t)c;
        while (len--) crc = _mm_crc32_u8(crc, *p++);
        return crc;
    }
    static int dfs_crc32c_have_hw = -1;
    #define dfs_crc32c_TRY_HW(crc, p, len) do { \
        if (dfs_crc32c_have_hw < 0) { __builtin_cpu_init(); dfs_crc32c_have_hw = __builtin_cpu_supports("sse4.2") ? 1 : 0; } \
        if (dfs_crc32c_have_hw) return dfs_crc32c_hw((crc), (p), (len)); } while (0)
    #else
    #define dfs_crc32c_TRY_HW(crc, p, len) do { } while (0)
    #endif

    static uint32_t dfs_crc32c_update(uint32_t crc, const uint8_t *p, size_t len) {
        dfs_crc32c_TRY_HW(crc, p, len);
        const uint32_t (*t)[256] = (const uint32_t (*)[256])dfs_crc32c_table;
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        while (len && ((uintptr_t)p & 7)) {
            crc = t[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
            len--;
        }
        while (len >= 8) {
            uint32_t lo, hi;
            memcpy(&lo, p, 4);
            memcpy(&hi, p + 4, 4);
            lo ^= crc;
            crc = t[7][lo & 0xFF] ^ t[6][(lo >> 8) & 0xFF] ^
                  t[5][(lo >> 16) & 0xFF] ^ t[4][lo >> 24] ^
                  t[3][hi & 0xFF] ^ t[2][(hi >> 8) & 0xFF] ^
                  t[1][(hi >> 16) & 0xFF] ^ t[0][hi >> 24];
            p += 8;
            len -= 8;
        }
    #endif
        while (len--)
            crc = t[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
        return crc;
    }
    """
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
