/* tests/unit/test_data.c - token shards, the deterministic loader, meta.json, and the
 * synthetic source's exact entropies (runtime/data.h, runtime/synth.h).
 *
 * What it checks: shards of both versions read back exactly; the train stream is a pure
 * function of (seed, cursor), resumes exactly from DataState, splits over data-parallel
 * ranks as documented and is uniform over window starts; val is fixed and wraps; every
 * bad-directory case DIEs with one line naming the problem; the synthetic source's
 * empirical conditional and unigram entropies match the exact values within a derived
 * standard error, and its entropy rate is at most half its unigram entropy.
 * Not here: the CLI (tests/cli/test_prepare.sh). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runtime/common.h"
#include "runtime/data.h"
#include "runtime/synth.h"
#include "tests/unit/testing.h"

static char root[256];   /* scratch directory of this run */

/* ---- helpers ---- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static char *subdir(const char *name)
{
    char *d = xasprintf("%s/%s", root, name);
    mkdir_p(d);
    return d;
}


/* A token that names its shard and position, so a window shows where it came from. */
static uint32_t tag(int shard, long long pos) { return (uint32_t)(shard * 10000 + pos); }

static void write_tagged_split(const char *dir, const char *split, const int *lens, int n)
{
    for (int s = 0; s < n; s++) {
        uint32_t *t = xmalloc((size_t)lens[s] * sizeof(uint32_t));
        for (int i = 0; i < lens[s]; i++) t[i] = tag(s, i);
        char *path = data_shard_path(dir, split, s);
        data_write_shard(path, t, lens[s], 1, 40000);
        free(path);
        free(t);
    }
}

/* ---- shards ---- */

static void test_roundtrip(int version, int vocab)
{
    char *dir = subdir(version == 1 ? "rt16" : "rt32");
    enum { N = 1000 };
    uint32_t tok[N];
    for (int i = 0; i < N; i++) tok[i] = (uint32_t)(((long long)i * 7919 + 13) % vocab);
    tok[N - 1] = (uint32_t)vocab - 1;   /* the largest id */
    char *path = data_shard_path(dir, "val", 0);
    data_write_shard(path, tok, N, version, vocab);

    struct stat st;
    EXPECT(stat(path, &st) == 0 && st.st_size == 1024 + N * (version == 1 ? 2 : 4),
           "v%d shard size %lld", version, (long long)st.st_size);
    unsigned char h[16];
    FILE *f = fopen(path, "rb");
    EXPECT(f && fread(h, 1, 16, f) == 16, "cannot read header");
    if (f) fclose(f);
    int32_t hv[4];
    for (int k = 0; k < 4; k++)
        hv[k] = (int32_t)((uint32_t)h[4 * k] | (uint32_t)h[4 * k + 1] << 8 |
                          (uint32_t)h[4 * k + 2] << 16 | (uint32_t)h[4 * k + 3] << 24);
    EXPECT(hv[0] == DATA_SHARD_MAGIC && hv[1] == version && hv[2] == N && hv[3] == vocab,
           "header %d %d %d %d", hv[0], hv[1], hv[2], hv[3]);

    /* one val window of T+1 = N tokens is the whole shard */
    DataLoader *d = data_open(dir, "val", 1, N - 1, vocab, 0, 0, 1);
    int32_t got[N];
    data_next(d, got);
    int same = 1;
    for (int i = 0; i < N; i++) same &= got[i] == (int32_t)tok[i];
    EXPECT(same, "v%d shard does not read back", version);
    EXPECT(data_num_tokens(d) == N, "token count %lld", data_num_tokens(d));
    data_close(d);
    free(path);
    free(dir);
}

static int count_files(const char *dir, const char *split)
{
    int n = 0;
    for (int i = 0; i < 100; i++) {
        char *p = data_shard_path(dir, split, i);
        n += access(p, F_OK) == 0;
        free(p);
    }
    return n;
}

typedef struct Counter { uint32_t next; } Counter;
static void fill_counter(void *ctx, uint32_t *t, long long n)
{
    Counter *c = ctx;
    for (long long i = 0; i < n; i++) t[i] = c->next++ % 256;
}

static void test_write_split(void)
{
    char *dir = subdir("split");
    Counter c = { 0 };
    int k = data_write_split(dir, "train", 1000, 100, 1, 256, fill_counter, &c);
    EXPECT(k == 10 && count_files(dir, "train") == 10, "10 shards expected, got %d", k);
    c.next = 0;
    k = data_write_split(dir, "train", 1001, 300, 1, 256, fill_counter, &c);
    /* 1001 over 4 shards: 251, 250, 250, 250 (even spread); shards 4..9 removed */
    EXPECT(k == 4 && count_files(dir, "train") == 4, "4 shards expected, got %d (%d files)", k,
           count_files(dir, "train"));
    DataLoader *d = data_open(dir, "train", 1, 249, 256, 0, 0, 1);
    EXPECT(data_num_tokens(d) == 1001, "tokens %lld", data_num_tokens(d));
    /* starts per shard: n - T = 2, 1, 1, 1 */
    EXPECT(data_num_sequences(d) == 5, "sequences %lld", data_num_sequences(d));
    data_close(d);
    free(dir);
}

/* ---- the loader ---- */

static const int TRAIN_LENS[] = { 500, 300, 1000 };
static const int VAL_LENS[] = { 100, 57 };
#define N_TRAIN 3
#define T_LOADER 16

/* Is row (T+1 tokens) a window of consecutive tokens inside one of the shards? */
static int valid_window(const int32_t *row, int T, const int *lens, int n)
{
    int s = row[0] / 10000, pos = row[0] % 10000;
    if (s >= n || pos + T + 1 > lens[s]) return 0;
    for (int t = 0; t <= T; t++)
        if (row[t] != (int32_t)tag(s, pos + t)) return 0;
    return 1;
}

static int batches_equal(DataLoader *a, DataLoader *b, int n, int B)
{
    int32_t *x = xmalloc((size_t)B * (T_LOADER + 1) * sizeof(int32_t));
    int32_t *y = xmalloc((size_t)B * (T_LOADER + 1) * sizeof(int32_t));
    int same = 1;
    for (int i = 0; i < n; i++) {
        data_next(a, x);
        data_next(b, y);
        same &= memcmp(x, y, (size_t)B * (T_LOADER + 1) * sizeof(int32_t)) == 0;
    }
    free(x);
    free(y);
    return same;
}

static void test_train_determinism(const char *dir)
{
    enum { B = 4, W = T_LOADER + 1, N = 20 };
    DataLoader *a = data_open(dir, "train", B, T_LOADER, 40000, 42, 0, 1);
    DataLoader *c = data_open(dir, "train", B, T_LOADER, 40000, 43, 0, 1);
    EXPECT(data_num_sequences(a) == 500 + 300 + 1000 - 3 * T_LOADER, "train sequences %lld",
           data_num_sequences(a));
    static int32_t seen[N][B * W];
    int32_t x[B * W];
    int valid = 1, differs = 0;
    for (int i = 0; i < N; i++) {
        data_next(a, seen[i]);
        data_next(c, x);
        differs |= memcmp(seen[i], x, sizeof x) != 0;
        for (int r = 0; r < B; r++)
            valid &= valid_window(seen[i] + r * W, T_LOADER, TRAIN_LENS, N_TRAIN);
    }
    EXPECT(valid, "a train window is not consecutive tokens inside one shard");
    EXPECT(differs, "seeds 42 and 43 gave the same %d batches", N);

    /* same seed, fresh loader: the same batches; and data_rewind restarts the stream */
    DataLoader *b = data_open(dir, "train", B, T_LOADER, 40000, 42, 0, 1);
    int same = 1;
    for (int i = 0; i < N; i++) {
        data_next(b, x);
        same &= memcmp(x, seen[i], sizeof x) == 0;
    }
    EXPECT(same, "two loaders with one seed gave different batches");
    data_rewind(a);
    data_next(a, x);
    EXPECT(memcmp(x, seen[0], sizeof x) == 0, "data_rewind does not return to the first batch");

    /* resume: state after 7 batches, restored into a fresh loader opened with another seed */
    for (int i = 1; i < 7; i++) data_next(a, x);
    DataState s = data_get_state(a);
    EXPECT(s.seed == 42 && s.cursor == 7 * B, "state {%llu, %llu}", (unsigned long long)s.seed,
           (unsigned long long)s.cursor);
    DataLoader *d = data_open(dir, "train", B, T_LOADER, 40000, 999, 0, 1);
    data_set_state(d, s);
    EXPECT(batches_equal(a, d, 10, B), "restored loader does not continue identically");
    data_close(a);
    data_close(b);
    data_close(c);
    data_close(d);
}

/* Rank r of 2 with B = 4 takes rows 4r..4r+3 of the serial B = 8 batch (data.h's rule). */
static void test_ranks(const char *dir, const char *split)
{
    enum { W = T_LOADER + 1 };
    DataLoader *serial = data_open(dir, split, 8, T_LOADER, 40000, 7, 0, 1);
    DataLoader *r0 = data_open(dir, split, 4, T_LOADER, 40000, 7, 0, 2);
    DataLoader *r1 = data_open(dir, split, 4, T_LOADER, 40000, 7, 1, 2);
    int32_t all[8 * W], x0[4 * W], x1[4 * W];
    int match = 1, distinct = 1;
    for (int step = 0; step < 5; step++) {
        data_next(serial, all);
        data_next(r0, x0);
        data_next(r1, x1);
        match &= memcmp(x0, all, sizeof x0) == 0 && memcmp(x1, all + 4 * W, sizeof x1) == 0;
        distinct &= memcmp(x0, x1, sizeof x0) != 0;
        match &= data_get_state(r0).cursor == data_get_state(serial).cursor &&
                 data_get_state(r1).cursor == data_get_state(serial).cursor;
    }
    EXPECT(match, "%s: ranks 0 and 1 of 2 do not split the serial batch as documented", split);
    EXPECT(distinct, "%s: ranks 0 and 1 got the same batch", split);
    data_close(serial);
    data_close(r0);
    data_close(r1);
}

/* Window starts are uniform over all valid starts of all shards together. Counts per shard
 * and per half of the largest shard are binomial(N, p); each is checked at 5 standard
 * deviations sqrt(N p (1-p)) (a false failure has probability ~6e-7 per count). */
static void test_uniform(const char *dir, uint64_t seed)
{
    enum { B = 1000, STEPS = 20, W = T_LOADER + 1 };
    DataLoader *d = data_open(dir, "train", B, T_LOADER, 40000, seed, 0, 1);
    int32_t *x = xmalloc((size_t)B * W * sizeof(int32_t));
    double count[N_TRAIN] = { 0 }, low_half = 0, total = 0;
    for (int i = 0; i < N_TRAIN; i++) total += TRAIN_LENS[i] - T_LOADER;
    int starts2 = TRAIN_LENS[2] - T_LOADER;
    for (int i = 0; i < STEPS; i++) {
        data_next(d, x);
        for (int r = 0; r < B; r++) {
            int s = x[r * W] / 10000, pos = x[r * W] % 10000;
            count[s]++;
            if (s == 2 && pos < starts2 / 2) low_half++;
        }
    }
    double n = (double)B * STEPS;
    for (int s = 0; s < N_TRAIN; s++) {
        double p = (TRAIN_LENS[s] - T_LOADER) / total, sd = sqrt(n * p * (1 - p));
        EXPECT(fabs(count[s] - n * p) <= 5 * sd, "shard %d drawn %.0f times, expected %.1f +- %.1f",
               s, count[s], n * p, 5 * sd);
    }
    double p = (double)(starts2 / 2) / starts2, sd = sqrt(count[2] * p * (1 - p));
    EXPECT(fabs(low_half - count[2] * p) <= 5 * sd, "lower half of shard 2: %.0f of %.0f",
           low_half, count[2]);
    free(x);
    data_close(d);
}

static void test_val(const char *dir)
{
    enum { B = 3, W = T_LOADER + 1 };
    DataLoader *d = data_open(dir, "val", B, T_LOADER, 40000, 1, 0, 1);
    DataLoader *e = data_open(dir, "val", B, T_LOADER, 40000, 2, 0, 1);
    /* windows of 17 tokens, stride 16: (100-1)/16 = 6 in shard 0, (57-1)/16 = 3 in shard 1 */
    EXPECT(data_num_sequences(d) == 9, "val windows %lld", data_num_sequences(d));
    int32_t x[B * W], first[B * W];
    int ok = 1;
    for (int i = 0; i < 6; i++) {   /* 18 sequences: two passes over the 9 windows */
        data_next(d, x);
        if (i == 0) memcpy(first, x, sizeof x);
        for (int b = 0; b < B; b++) {
            int w = (i * B + b) % 9;
            int32_t start = (int32_t)(w < 6 ? tag(0, w * T_LOADER) : tag(1, (w - 6) * T_LOADER));
            ok &= x[b * W] == start && valid_window(x + b * W, T_LOADER, VAL_LENS, 2);
        }
    }
    EXPECT(ok, "val windows are not the consecutive stride-T windows, wrapping");
    data_rewind(d);
    data_next(d, x);
    EXPECT(memcmp(x, first, sizeof x) == 0, "val differs after data_rewind");
    data_next(e, x);
    EXPECT(memcmp(x, first, sizeof x) == 0, "val depends on the seed");
    data_close(d);
    data_close(e);
}

static void test_loader(uint64_t seed)
{
    char *dir = subdir("loader");
    write_tagged_split(dir, "train", TRAIN_LENS, N_TRAIN);
    write_tagged_split(dir, "val", VAL_LENS, 2);
    test_train_determinism(dir);
    test_ranks(dir, "train");
    test_ranks(dir, "val");
    test_uniform(dir, seed);
    test_val(dir);
    free(dir);
}

/* ---- bad directories: each must DIE (status 1) with one line naming the problem ---- */

typedef struct OpenArgs { const char *dir; int T, vocab; } OpenArgs;

static void child_open(void *arg)
{
    OpenArgs *a = arg;
    data_open(a->dir, "train", 2, a->T, a->vocab, 0, 0, 1);
}

static void expect_die(const char *what, void (*fn)(void *), void *arg, const char *want1,
                       const char *want2)
{
    char err[4096];
    int status = test_run_child(fn, arg, err, sizeof err);
    char *nl = strchr(err, '\n');
    int one_line = nl && nl[1] == 0;
    EXPECT(status == 1 && one_line && strstr(err, want1) && (!want2 || strstr(err, want2)),
           "%s: status %d, stderr '%s' (want one line with '%s'%s%s)", what, status, err, want1,
           want2 ? " and " : "", want2 ? want2 : "");
}

/* A directory with one good train shard of n tokens (ids i % 200), returning its path. */
static char *good_dir(const char *name, int n, char **shard)
{
    char *dir = subdir(name);
    uint32_t *t = xmalloc((size_t)n * sizeof(uint32_t));
    for (int i = 0; i < n; i++) t[i] = (uint32_t)(i % 200);
    *shard = data_shard_path(dir, "train", 0);
    data_write_shard(*shard, t, n, 1, 256);
    free(t);
    return dir;
}

static void patch_int(const char *path, long offset, uint32_t v)
{
    unsigned char b[4] = { (unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                           (unsigned char)(v >> 24) };
    int fd = open(path, O_WRONLY);
    CHECK(fd >= 0 && pwrite(fd, b, 4, offset) == 4);
    close(fd);
}

static void test_errors(void)
{
    char *shard, *dir;
    char *missing = xasprintf("%s/no_such_dir", root), *empty = subdir("empty");
    OpenArgs a = { missing, 16, 256 };
    expect_die("missing directory", child_open, &a, "does not exist", "dstrain prepare");
    a.dir = empty;
    expect_die("no shards", child_open, &a, "no 'train_*.bin' shards",
               "make them with: dstrain prepare");

    a.dir = dir = good_dir("magic", 100, &shard);
    patch_int(shard, 0, 12345);
    expect_die("bad magic", child_open, &a, "not a token shard: magic 12345", shard);
    free(dir);
    free(shard);

    a.dir = dir = good_dir("version", 100, &shard);
    patch_int(shard, 4, 3);
    expect_die("unknown version", child_open, &a, "unknown shard version 3", shard);
    free(dir);
    free(shard);

    a.dir = dir = good_dir("trunc", 100, &shard);
    CHECK(truncate(shard, 1024 + 2 * 100 - 10) == 0);
    expect_die("truncated", child_open, &a, "is truncated", shard);
    free(dir);
    free(shard);

    uint32_t big[100];
    for (int i = 0; i < 100; i++) big[i] = (uint32_t)(i % 200);
    big[57] = 300;
    a.dir = dir = good_dir("vocab", 100, &shard);
    data_write_shard(shard, big, 100, 1, 0);
    expect_die("token >= vocab", child_open, &a, "token 300 at position 57 is >= vocab_size 256",
               "vocab_size is too small");
    free(dir);
    free(shard);

    a.dir = dir = good_dir("short", 10, &shard);
    expect_die("too short", child_open, &a, "fewer than one window of T+1 = 17", shard);
    free(dir);
    free(shard);

    a.dir = dir = good_dir("gap", 100, &shard);
    char *third = data_shard_path(dir, "train", 2);
    CHECK(rename(shard, third) == 0);
    data_write_shard(shard, big, 50, 1, 0);
    expect_die("missing index", child_open, &a, "train_000001.bin' is missing", NULL);
    free(third);
    free(dir);
    free(shard);
    free(missing);
    free(empty);
}

/* ---- meta.json ---- */

static void child_read_meta(void *arg)
{
    DataMeta m;
    data_read_meta(arg, &m);
}

static void test_meta(void)
{
    char *dir = subdir("meta");
    DataMeta m, r;
    EXPECT(data_read_meta(dir, &r) == -1, "meta.json reported where there is none");
    memset(&m, 0, sizeof m);
    snprintf(m.tokenizer, sizeof m.tokenizer, "synthetic");
    m.format_version = DATA_META_FORMAT_VERSION;
    m.vocab_size = 70000;
    m.train_tokens = 9000000000LL;
    m.val_tokens = 123;
    m.train_shards = 90;
    m.val_shards = 1;
    m.has_entropy = 1;
    m.seed = 0xFFFFFFFFFFFFFFF0ull;   /* above INT64_MAX: kept as text */
    m.alphabet = 16;
    m.order = 3;
    m.successors = 3;
    m.recurrent_contexts = 4000;
    m.table_draws = 2;
    m.entropy_rate_nats = 1.0 / 3.0;
    m.unigram_entropy_nats = 2.5;
    m.prefix_entropy_nats[0] = 2.5;
    m.prefix_entropy_nats[1] = 2.0;
    m.prefix_entropy_nats[2] = 1.0;
    data_write_meta(dir, &m);
    EXPECT(data_read_meta(dir, &r) == 0, "meta.json not found after writing");
    /* jansson prints reals with 17 significant digits, so doubles survive exactly */
    EXPECT(memcmp(&m, &r, sizeof m) == 0, "synthetic meta does not round-trip");
    /* floor over T predictions: (H1 + H2 + (T-2) rate) / T, exactly */
    double want = (2.0 + 1.0 + 8 * (1.0 / 3.0)) / 10;
    EXPECT(fabs(data_meta_loss_floor(&m, 10) - want) <= 1e-15, "loss floor %.17g, want %.17g",
           data_meta_loss_floor(&m, 10), want);

    memset(&m, 0, sizeof m);
    snprintf(m.tokenizer, sizeof m.tokenizer, "bytes");
    snprintf(m.text_file, sizeof m.text_file, "corpus/some text.txt");
    m.format_version = DATA_META_FORMAT_VERSION;
    m.vocab_size = 256;
    m.train_tokens = 900;
    m.val_tokens = 100;
    m.train_shards = m.val_shards = 1;
    m.text_bytes = 1000;
    m.val_fraction = 0.1;
    data_write_meta(dir, &m);
    EXPECT(data_read_meta(dir, &r) == 0 && memcmp(&m, &r, sizeof m) == 0,
           "text meta does not round-trip");

    char *path = xasprintf("%s/meta.json", dir);
    FILE *f = fopen(path, "w");
    CHECK(f);
    fputs("{ \"format_version\": 1, ", f);
    fclose(f);
    expect_die("bad meta.json", child_read_meta, dir, "is not valid JSON", path);
    free(path);
    free(dir);
}

/* ---- the synthetic source ---- */

/* Asymptotic variance of (1/M) sum_t F(c_t, x_t) over a stationary stream, F given per
 * table entry Fv (n_ctx, S). Martingale decomposition: with f = P F - mean (per context)
 * and g = sum_{j>=0} P^j f (solving g - P g = f), each term splits as
 *   F - mean = D_t + g(c_t) - g(c_{t+1}),   D_t = F - mean - f(c_t) + g(c_{t+1}) - (P g)(c_t),
 * where E[D_t | past] = 0; the g terms telescope, so by the martingale central limit
 * theorem sqrt(M) (average - mean) -> N(0, sigma^2), sigma^2 = E_pi sum_x p(x|c) D^2.
 * Returns -1 if the series for g did not converge (a periodic chain). */
static double asymptotic_variance(const SynthSource *s, const double *Fv)
{
    int n = s->n_ctx, S = s->p.successors, A = s->p.alphabet;
    double *f = xcalloc((size_t)n, sizeof(double)), *g = xcalloc((size_t)n, sizeof(double));
    double *v = xcalloc((size_t)n, sizeof(double)), *w = xcalloc((size_t)n, sizeof(double));
    double mean = 0;
    for (int c = 0; c < n; c++)
        for (int k = 0; k < S; k++) mean += s->pi[c] * s->prob[c * S + k] * Fv[c * S + k];
    for (int c = 0; c < n; c++) {
        for (int k = 0; k < S; k++) f[c] += s->prob[c * S + k] * Fv[c * S + k];
        f[c] -= mean;
        v[c] = g[c] = f[c];
    }
    int converged = 0;
    for (int it = 0; it < 100000 && !converged; it++) {
        double vmax = 0;
        for (int c = 0; c < n; c++) {
            w[c] = 0;
            for (int k = 0; k < S; k++)
                w[c] += s->prob[c * S + k] * v[(c * A + s->succ[c * S + k]) % n];
        }
        /* pi P^j f = 0 in exact arithmetic; pi is exact only to ~1e-12, so project out the
         * constant that rounding leaves, or the series would sum it forever */
        double drift = 0;
        for (int c = 0; c < n; c++) drift += s->pi[c] * w[c];
        for (int c = 0; c < n; c++) {
            v[c] = w[c] - drift;
            g[c] += v[c];
            if (s->pi[c] > 0 && fabs(v[c]) > vmax) vmax = fabs(v[c]);
        }
        converged = vmax < 1e-14;
    }
    double var = 0;
    for (int c = 0; c < n && converged; c++) {
        double pg = 0;
        for (int k = 0; k < S; k++) pg += s->prob[c * S + k] * g[(c * A + s->succ[c * S + k]) % n];
        for (int k = 0; k < S; k++) {
            double D = Fv[c * S + k] - mean - f[c] + g[(c * A + s->succ[c * S + k]) % n] - pg;
            var += s->pi[c] * s->prob[c * S + k] * D * D;
        }
    }
    free(f);
    free(g);
    free(v);
    free(w);
    return converged ? var : -1;
}

/* The table itself: rows sum to 1, successors distinct, pi stationary (checked here with
 * its own product, to 1e-11: the source stops at a residual of 1e-12, and summing 256
 * terms adds rounding of order 1e-16 each). */
static void test_synth_table(const SynthSource *s)
{
    int n = s->n_ctx, S = s->p.successors, A = s->p.alphabet, rows_ok = 1;
    double *pp = xcalloc((size_t)n, sizeof(double)), sum = 0, resid = 0;
    for (int c = 0; c < n; c++) {
        double row = 0;
        for (int k = 0; k < S; k++) {
            row += s->prob[c * S + k];
            for (int j = 0; j < k; j++) rows_ok &= s->succ[c * S + j] != s->succ[c * S + k];
            pp[(c * A + s->succ[c * S + k]) % n] += s->pi[c] * s->prob[c * S + k];
        }
        rows_ok &= fabs(row - 1) < 1e-14;
        sum += s->pi[c];
    }
    for (int c = 0; c < n; c++) resid += fabs(pp[c] - s->pi[c]);
    EXPECT(rows_ok, "a table row does not sum to 1 or repeats a successor");
    EXPECT(fabs(sum - 1) < 1e-12 && resid < 1e-11, "pi sums to %.15f, ||pi P - pi||_1 = %.3g",
           sum, resid);
    free(pp);
}

/* What a stream of N tokens shows, from counts only (h, u) and from the table (ll). */
typedef struct Estimates {
    double h;         /* plug-in conditional entropy H(next | context), Miller-Madow corrected */
    double u;         /* plug-in unigram entropy, Miller-Madow corrected */
    double ll;        /* log-loss of the true table: mean of -log p(x_t | c_t) */
    int only_successors;
} Estimates;

static Estimates estimate(const SynthSource *s, const uint32_t *x, long N)
{
    int n = s->n_ctx, S = s->p.successors, A = s->p.alphabet, K = s->p.order;
    double *cell = xcalloc((size_t)n * A, sizeof(double));   /* (n_ctx, A) counts */
    double *ctx = xcalloc((size_t)n, sizeof(double));        /* (n_ctx) counts */
    double *uni = xcalloc((size_t)A, sizeof(double));        /* (A) counts */
    Estimates e = { 0, 0, 0, 1 };
    for (long t = 0; t < N; t++) uni[x[t]]++;
    long c = 0;
    for (int j = 0; j < K; j++) c = c * A + x[j];
    for (long t = K; t < N; t++) {
        int k = 0;
        while (k < S && s->succ[c * S + k] != (int32_t)x[t]) k++;
        if (k == S) e.only_successors = 0;
        else e.ll -= log(s->prob[c * S + k]);
        cell[c * A + x[t]]++;
        ctx[c]++;
        c = (c * A + x[t]) % n;
    }
    /* the Miller-Madow correction (+ (nonzero cells - 1) / 2M per distribution) removes the
     * O(1/M) bias of the plug-in */
    double M = (double)(N - K), cells = 0, ctxs = 0, syms = 0;
    e.ll /= M;
    for (long i = 0; i < (long)n * A; i++)
        if (cell[i] > 0) {
            e.h += cell[i] / M * log(ctx[i / A] / cell[i]);
            cells++;
        }
    for (long i = 0; i < n; i++) ctxs += ctx[i] > 0;
    for (int a = 0; a < A; a++)
        if (uni[a] > 0) {
            e.u -= uni[a] / N * log(uni[a] / N);
            syms++;
        }
    e.h += (cells - ctxs) / (2 * M);
    e.u += (syms - 1) / (2.0 * N);
    free(cell);
    free(ctx);
    free(uni);
    return e;
}

static void test_synth_entropy(const SynthSource *s, uint64_t seed)
{
    enum { N = 1 << 20 };
    int n = s->n_ctx, S = s->p.successors;
    uint32_t *x = xmalloc(N * sizeof(uint32_t));
    SynthStream st;
    synth_stream_init(&st, s, seed);
    synth_fill(&st, x, N);
    Estimates e = estimate(s, x, N);
    EXPECT(e.only_successors, "the stream emitted a token that is not a successor of its context");

    double *F = xmalloc((size_t)n * S * sizeof(double));   /* (n_ctx, S) -log p(x | c) */
    double *G = xmalloc((size_t)n * S * sizeof(double));   /* (n_ctx, S) -log q(x) */
    for (int i = 0; i < n * S; i++) {
        F[i] = -log(s->prob[i]);
        G[i] = -log(s->marginal[s->succ[i]]);
    }
    double vh = asymptotic_variance(s, F), vu = asymptotic_variance(s, G);
    EXPECT(vh > 0 && vu > 0, "the chain did not mix (variances %g, %g)", vh, vu);
    /* tolerance: 5 standard errors sqrt(sigma^2 / M), M = N - K predictions (two-sided
     * false failure ~6e-7). ll is the average of F, so its sigma^2 is exactly
     * asymptotic_variance(F); to first order (delta method) the plug-in h minus the rate
     * equals ll minus the rate, and the plug-in u minus H(X) the mean of G minus H(X). The
     * correction leaves O(1/M^2) of the bias and the delta method's remainder is O(1/M) ~
     * 1e-6, far below one standard error (~2e-4). Checked once outside this test: over 300
     * independent streams of 2^20 tokens the z-scores had mean 0.03 and sd 0.995 (rate),
     * 0.08 and 1.006 (unigram). ll catches a sampler that draws the right successors with
     * the wrong probabilities, which leaves every H(next | c) unchanged. */
    double M = N - s->p.order, tol_h = 5 * sqrt(vh / M), tol_u = 5 * sqrt(vu / N);
    printf("synthetic: rate %.6f, empirical %.6f (%.0f%% of the 5-sigma budget %.2e); unigram "
           "%.6f, empirical %.6f (%.0f%% of %.2e)\n", s->rate, e.h,
           100 * fabs(e.h - s->rate) / tol_h, tol_h, s->unigram, e.u,
           100 * fabs(e.u - s->unigram) / tol_u, tol_u);
    EXPECT(fabs(e.ll - s->rate) <= tol_h, "log-loss of the table %.6f vs exact rate %.6f", e.ll,
           s->rate);
    EXPECT(fabs(e.h - s->rate) <= tol_h, "empirical conditional entropy %.6f vs exact rate %.6f",
           e.h, s->rate);
    EXPECT(fabs(e.u - s->unigram) <= tol_u, "empirical unigram entropy %.6f vs exact %.6f", e.u,
           s->unigram);
    free(F);
    free(G);
    free(x);
}

static void test_synth_determinism(uint64_t seed)
{
    SynthParams p = synth_default_params(seed), q = synth_default_params(seed + 1);
    SynthSource *a = synth_create(&p), *b = synth_create(&p), *c = synth_create(&q);
    size_t entries = (size_t)a->n_ctx * p.successors;
    EXPECT(memcmp(a->succ, b->succ, entries * sizeof(int32_t)) == 0 &&
           memcmp(a->prob, b->prob, entries * sizeof(double)) == 0, "one seed, two tables");
    EXPECT(memcmp(a->prob, c->prob, entries * sizeof(double)) != 0, "two seeds, one table");
    EXPECT(synth_entropy_rate(&p) == a->rate && synth_unigram_entropy(&p) == a->unigram,
           "entropy functions disagree with the source");
    uint32_t x[1000], y[1000];
    SynthStream s1, s2;
    synth_stream_init(&s1, a, 5);
    synth_stream_init(&s2, b, 5);
    synth_fill(&s1, x, 400);
    synth_fill(&s1, x + 400, 600);     /* a stream continues across calls */
    synth_fill(&s2, y, 1000);
    EXPECT(memcmp(x, y, sizeof x) == 0, "one seed, two streams");
    synth_free(a);
    synth_free(b);
    synth_free(c);
}

typedef struct PrepArgs { const char *dir; int vocab; } PrepArgs;
static void child_prepare(void *arg)
{
    PrepArgs *a = arg;
    synth_prepare(a->dir, 1000, 1, a->vocab);
}

static void test_synth_prepare(uint64_t seed)
{
    char *dir = subdir("synth");
    synth_prepare(dir, 5000, seed, 16);   /* vocab = alphabet: ids 0..15 must all fit */
    DataMeta m;
    EXPECT(data_read_meta(dir, &m) == 0 && m.has_entropy && m.train_tokens == 4500 &&
           m.val_tokens == 500 && m.alphabet == 16 && m.seed == seed, "synthetic meta.json");
    SynthParams p = synth_default_params(seed);
    EXPECT(m.entropy_rate_nats == synth_entropy_rate(&p), "meta.json rate is not the source's");
    DataLoader *d = data_open(dir, "val", 1, 499, 16, 0, 0, 1);   /* opening checks ids < 16 */
    EXPECT(data_num_tokens(d) == 500, "val tokens %lld", data_num_tokens(d));
    data_close(d);
    PrepArgs a = { dir, 15 };
    expect_die("vocab < alphabet", child_prepare, &a, "smaller than the source's alphabet 16", NULL);
    free(dir);
}

static void test_synth(uint64_t seed)
{
    /* the defaults' rate is ~0.39 of the unigram entropy; any seed must stay <= 0.5 */
    uint64_t seeds[] = { 1, 2, 3, 1337, seed };
    for (int i = 0; i < 5; i++) {
        SynthParams p = synth_default_params(seeds[i]);
        SynthSource *s = synth_create(&p);
        EXPECT(s->rate <= 0.5 * s->unigram, "seed %llu: rate %.4f > half the unigram %.4f",
               (unsigned long long)seeds[i], s->rate, s->unigram);
        if (i == 4) {
            test_synth_table(s);
            test_synth_entropy(s, seed ^ 0x5555);
        }
        synth_free(s);
    }
    test_synth_determinism(seed);
    test_synth_prepare(seed);
}

int main(void)
{
    uint64_t seed = test_seed();
    const char *tmp = getenv("TMPDIR");
    snprintf(root, sizeof root, "%s/dstrain_test_data_XXXXXX", tmp ? tmp : "/tmp");
    CHECK(mkdtemp(root));
    test_roundtrip(1, 1000);
    test_roundtrip(2, 100000);
    test_write_split();
    test_loader(seed);
    test_errors();
    test_meta();
    test_synth(seed);
    nftw(root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return test_finish();
}
