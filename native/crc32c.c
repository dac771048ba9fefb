/*
** crc32c.c -- CRC-32C (Castagnoli) for page and meta checksums.
** Uses the SSE4.2 crc32 instruction when the CPU has it, a table otherwise;
** both give the same value, so files move between machines.
*/
#include "format.h"
#include "kvmap.h"
#include <stddef.h>

static uint32_t table[8][256];
static int table_ready;

static void make_table(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xff];
    __atomic_store_n(&table_ready, 1, __ATOMIC_RELEASE);
}

static uint32_t crc_sw(uint32_t crc, const uint8_t *p, size_t n)
{
    if (!__atomic_load_n(&table_ready, __ATOMIC_ACQUIRE))
        make_table();
    while (n >= 8) {
        uint64_t w = rd64(p) ^ crc;
        crc = table[7][w & 0xff] ^ table[6][(w >> 8) & 0xff] ^
              table[5][(w >> 16) & 0xff] ^ table[4][(w >> 24) & 0xff] ^
              table[3][(w >> 32) & 0xff] ^ table[2][(w >> 40) & 0xff] ^
              table[1][(w >> 48) & 0xff] ^ table[0][w >> 56];
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = (crc >> 8) ^ table[0][(crc ^ *p++) & 0xff];
    return crc;
}

#if defined(__x86_64__)
/* The crc32 instruction has a latency of 3 cycles and a throughput of 1:
** three independent streams over consecutive blocks of STRIPE bytes run
** about 3x faster than one, and are joined with shift(): the CRC register
** after STRIPE more zero bytes, a linear map kept as four byte tables. */
#define STRIPE 1360
static uint32_t shift_table[4][256];
static int shift_ready;

__attribute__((target("sse4.2")))
static uint64_t crc_run(uint64_t c, const uint8_t *p, size_t n)
{
    for (; n >= 8; p += 8, n -= 8)
        c = __builtin_ia32_crc32di(c, rd64(p));
    return c;
}

__attribute__((target("sse4.2")))
static void make_shift_table(void)
{
    static const uint8_t zeros[STRIPE];
    for (int k = 0; k < 4; k++)
        for (uint32_t b = 0; b < 256; b++)
            shift_table[k][b] = (uint32_t)crc_run((uint64_t)b << (8 * k), zeros, STRIPE);
    __atomic_store_n(&shift_ready, 1, __ATOMIC_RELEASE);
}

static uint32_t shift(uint32_t c)
{
    return shift_table[0][c & 0xff] ^ shift_table[1][(c >> 8) & 0xff] ^ shift_table[2][(c >> 16) & 0xff] ^
           shift_table[3][c >> 24];
}

__attribute__((target("sse4.2")))
static uint32_t crc_hw(uint32_t crc, const uint8_t *p, size_t n)
{
    uint64_t c = crc;
    if (n >= 3 * STRIPE && !__atomic_load_n(&shift_ready, __ATOMIC_ACQUIRE))
        make_shift_table();
    for (; n >= 3 * STRIPE; p += 3 * STRIPE, n -= 3 * STRIPE) {
        uint64_t c1 = 0, c2 = 0;
        for (size_t i = 0; i < STRIPE; i += 8) {
            c = __builtin_ia32_crc32di(c, rd64(p + i));
            c1 = __builtin_ia32_crc32di(c1, rd64(p + STRIPE + i));
            c2 = __builtin_ia32_crc32di(c2, rd64(p + 2 * STRIPE + i));
        }
        c = shift(shift((uint32_t)c) ^ (uint32_t)c1) ^ (uint32_t)c2;
    }
    c = crc_run(c, p, n);
    p += n & ~(size_t)7;
    uint32_t c32 = (uint32_t)c;
    for (n &= 7; n--;)
        c32 = __builtin_ia32_crc32qi(c32, *p++);
    return c32;
}
#endif

uint32_t kvm_crc32c(uint32_t crc, const void *buf, size_t len)
{
    crc = ~crc;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("sse4.2"))
        return ~crc_hw(crc, buf, len);
#endif
    return ~crc_sw(crc, buf, len);
}
