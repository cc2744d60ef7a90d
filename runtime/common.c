/* common.c - the fatal path, allocation wrappers, clock, RNG, BF16 rounding.
 * Not here: logging of metrics (runtime/metrics.c). */
#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static FatalHook fatal_hook;
static int log_rank = -1;

void set_fatal_hook(FatalHook hook) { fatal_hook = hook; }
void set_log_rank(int rank) { log_rank = rank; }

void fatal(int code, const char *file, int line, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* one write of the whole line, so mpirun forwards it unbroken beside other ranks' output */
    char full[2400], where[512] = "", who[32] = "";
    if (log_rank >= 0) snprintf(who, sizeof who, "[rank %d] ", log_rank);
    if (file) snprintf(where, sizeof where, " (%s:%d)", file, line);
    int n = snprintf(full, sizeof full, "%sdstrain: %s%s\n", who, msg, where);
    if (n < 0 || n >= (int)sizeof full) n = (int)strlen(full);
    fflush(stdout);
    fflush(stderr);
    ssize_t wrote = write(2, full, (size_t)n);
    (void)wrote;
    if (fatal_hook) fatal_hook(code);
    exit(code);
}

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) DIE("out of memory allocating %zu bytes", n * size);
    return p;
}

void *xmalloc(size_t size)
{
    void *p = malloc(size ? size : 1);
    if (!p) DIE("out of memory allocating %zu bytes", size);
    return p;
}

char *xstrdup(const char *s)
{
    char *p = strdup(s);
    if (!p) DIE("out of memory");
    return p;
}

char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0) DIE("out of memory");
    return s;
}

double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* splitmix64: every output is a bijective mix of the counter, so the state is a single
 * integer that a checkpoint can carry exactly. */
static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void rng_seed(Rng *r, uint64_t seed) { r->state = seed; }
uint32_t rng_u32(Rng *r) { return (uint32_t)(splitmix64(&r->state) >> 32); }
float rng_uniform(Rng *r) { return (float)(rng_u32(r) >> 8) * (1.0f / 16777216.0f); }

float rng_normal(Rng *r)
{
    /* u1 in (0,1] so the log is finite */
    double u1 = ((double)(rng_u32(r) >> 8) + 1.0) / 16777216.0;
    double u2 = (double)(rng_u32(r) >> 8) / 16777216.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

void *arena_take(Arena *a, size_t bytes)
{
    size_t at = (a->used + 255) & ~(size_t)255;
    a->used = at + bytes;
    return a->base ? a->base + at : NULL;
}

void mkdir_p(const char *path)
{
    char *p = xstrdup(path);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0755) != 0 && errno != EEXIST) DIE("cannot create directory '%s': %s", p, strerror(errno));
        *s = '/';
    }
    if (mkdir(p, 0755) != 0 && errno != EEXIST) DIE("cannot create directory '%s': %s", p, strerror(errno));
    free(p);
}
