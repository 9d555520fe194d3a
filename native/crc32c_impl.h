/* CRC32C (Castagnoli): SSE4.2 when the CPU has it, else slicing-by-8 tables.
   Shared by native/crc32c.pyx and native/datapath.pyx. */
#ifndef DFS_CRC32C_IMPL_H
#define DFS_CRC32C_IMPL_H
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

#endif
