/* checkpoint/hash.c - XXH64 with seed 0 (see hash.h), from the xxHash specification:
 * four lanes consume 32-byte stripes (acc = rotl(acc + lane * P2, 31) * P1), are merged,
 * then the tail is folded in 8, 4 and 1 byte steps and the result avalanched.
 * Not here: the other xxHash variants (XXH32, XXH3) or a seed parameter. */
#include "hash.h"

#include <string.h>

#define P1 0x9E3779B185EBCA87ull
#define P2 0xC2B2AE3D27D4EB4Full
#define P3 0x165667B19E3779F9ull
#define P4 0x85EBCA77C2B2AE63ull
#define P5 0x27D4EB2F165667C5ull

static uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

/* Little-endian loads regardless of the host's byte order. */
static uint64_t load64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static uint64_t load32(const unsigned char *p)
{
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24;
}

static uint64_t lane_round(uint64_t acc, uint64_t input)
{
    acc += input * P2;
    return rotl(acc, 31) * P1;
}

static uint64_t merge_round(uint64_t acc, uint64_t lane)
{
    acc ^= lane_round(0, lane);
    return acc * P1 + P4;
}

static void stripe(uint64_t acc[4], const unsigned char *p)
{
    acc[0] = lane_round(acc[0], load64(p));
    acc[1] = lane_round(acc[1], load64(p + 8));
    acc[2] = lane_round(acc[2], load64(p + 16));
    acc[3] = lane_round(acc[3], load64(p + 24));
}

void ckpt_hash_init(CkptHash *h)
{
    memset(h, 0, sizeof *h);
    h->acc[0] = P1 + P2;
    h->acc[1] = P2;
    h->acc[2] = 0;
    h->acc[3] = 0 - P1;
}

void ckpt_hash_update(CkptHash *h, const void *data, size_t n)
{
    const unsigned char *p = data;
    h->total += n;
    if (h->buf_len) {
        size_t take = 32 - h->buf_len < n ? 32 - h->buf_len : n;
        memcpy(h->buf + h->buf_len, p, take);
        h->buf_len += take;
        p += take;
        n -= take;
        if (h->buf_len < 32) return;
        stripe(h->acc, h->buf);
        h->buf_len = 0;
    }
    for (; n >= 32; p += 32, n -= 32) stripe(h->acc, p);
    memcpy(h->buf, p, n);
    h->buf_len = n;
}

uint64_t ckpt_hash_final(const CkptHash *h)
{
    uint64_t acc;
    if (h->total >= 32) {
        acc = rotl(h->acc[0], 1) + rotl(h->acc[1], 7) + rotl(h->acc[2], 12) + rotl(h->acc[3], 18);
        for (int i = 0; i < 4; i++) acc = merge_round(acc, h->acc[i]);
    } else {
        acc = P5;   /* seed 0 + P5: inputs shorter than one stripe never touch the lanes */
    }
    acc += h->total;
    const unsigned char *p = h->buf;
    size_t n = h->buf_len;
    for (; n >= 8; p += 8, n -= 8) {
        acc ^= lane_round(0, load64(p));
        acc = rotl(acc, 27) * P1 + P4;
    }
    if (n >= 4) {
        acc ^= load32(p) * P1;
        acc = rotl(acc, 23) * P2 + P3;
        p += 4;
        n -= 4;
    }
    for (; n > 0; p++, n--) {
        acc ^= *p * P5;
        acc = rotl(acc, 11) * P1;
    }
    acc ^= acc >> 33;
    acc *= P2;
    acc ^= acc >> 29;
    acc *= P3;
    acc ^= acc >> 32;
    return acc;
}

uint64_t ckpt_hash64(const void *data, size_t n)
{
    CkptHash h;
    ckpt_hash_init(&h);
    ckpt_hash_update(&h, data, n);
    return ckpt_hash_final(&h);
}
