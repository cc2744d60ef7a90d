/* checkpoint/hash.h - the checksum of checkpoint files: XXH64 (seed 0), written here from the
 * published xxHash specification (the 64-bit algorithm, its five primes, stripe of 32 bytes).
 *
 * Why XXH64: checkpoint files are GBs and are hashed once on save and once on every verify;
 * a byte-at-a-time hash (FNV-1a) runs near 1 GB/s, XXH64 an order of magnitude faster, and
 * its results can be cross-checked with any xxhash tool (`xxh64sum`, Python `xxhash`).
 * Not here: cryptographic strength (this catches damage, not tampering).
 *
 * Calling sequence: CkptHash h; ckpt_hash_init(&h); ckpt_hash_update(&h, p, n) ...;
 * uint64_t sum = ckpt_hash_final(&h); or the one-shot ckpt_hash64(p, n).
 */
#ifndef DSTRAIN_CKPT_HASH_H
#define DSTRAIN_CKPT_HASH_H

#include <stddef.h>
#include <stdint.h>

typedef struct CkptHash {
    uint64_t acc[4];        /* the four lane accumulators */
    uint64_t total;         /* bytes seen */
    unsigned char buf[32];  /* an incomplete stripe */
    size_t buf_len;
} CkptHash;

void ckpt_hash_init(CkptHash *h);
void ckpt_hash_update(CkptHash *h, const void *data, size_t n);
/* The digest of everything given so far; h is left unchanged (more updates may follow). */
uint64_t ckpt_hash_final(const CkptHash *h);
uint64_t ckpt_hash64(const void *data, size_t n);

#endif
