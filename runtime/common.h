/* common.h - error levels, small utilities shared by every module.
 *
 * Three error levels (STYLE.md "Errors"):
 *   DIE(fmt, ...)   bad input or environment: one line to stderr, exit status 1
 *                   (MPI_Abort in a multi-rank job, through the hook below).
 *   CHECK(cond)     an invariant that must hold; always compiled in.
 *   BUG(fmt, ...)   an impossible state reached.
 * Messages: lower-case, what is wrong first, the subject quoted, then a hint.
 *
 * Not here: anything model-, backend- or comm-specific.
 */
#ifndef DSTRAIN_COMMON_H
#define DSTRAIN_COMMON_H

#include <stddef.h>
#include <stdint.h>

/* Called by DIE/CHECK/BUG before the process ends; the comm layer installs a hook that
 * aborts the whole job so no peer waits forever in a collective. Default: exit(code). */
typedef void (*FatalHook)(int code);
void set_fatal_hook(FatalHook hook);
/* The rank printed in front of every fatal message in a multi-rank job (-1: none). */
void set_log_rank(int rank);

_Noreturn void fatal(int code, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define DIE(...) fatal(1, NULL, 0, __VA_ARGS__)
#define BUG(...) fatal(70, __FILE__, __LINE__, "internal error: " __VA_ARGS__)
#define CHECK(cond) do { if (!(cond)) fatal(70, __FILE__, __LINE__, \
        "check failed: %s", #cond); } while (0)

/* Allocation that never returns NULL (DIE names the size on failure); zeroed. */
void *xcalloc(size_t n, size_t size);
void *xmalloc(size_t size);
char *xstrdup(const char *s);

/* Wall-clock seconds from a monotonic clock. */
double now_seconds(void);

/* Deterministic random numbers: xoshiro-free splitmix64 + a PCG-style 32-bit stream.
 * State is one uint64 so it can be checkpointed as one integer. */
typedef struct { uint64_t state; } Rng;
void rng_seed(Rng *r, uint64_t seed);
uint32_t rng_u32(Rng *r);
float rng_uniform(Rng *r);              /* [0, 1) */
float rng_normal(Rng *r);               /* standard normal (Box-Muller, one value a call) */

/* printf-style string into a fresh allocation. */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Bump allocation inside one buffer allocated per lifetime class (STYLE.md: memory is planned
 * before step 0). Plan in two passes: with base == NULL arena_take only counts (returns NULL);
 * then allocate `used` bytes once, reset used to 0, set base, and take again in the same
 * order. Every piece is 256-byte aligned. The memory may be host or device. */
typedef struct Arena { char *base; size_t used; } Arena;
void *arena_take(Arena *a, size_t bytes);

/* Create a directory and its parents (like mkdir -p); DIE on failure. */
void mkdir_p(const char *path);

#endif
