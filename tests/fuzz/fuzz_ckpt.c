/* tests/fuzz/fuzz_ckpt.c - fuzz targets for every reader of untrusted checkpoint bytes.
 *
 * Targets (DSTRAIN_FUZZ_TARGET):
 *   h5           the bytes as rank-00000.h5, read WITHOUT the manifest checksum gate: open,
 *                layout, count, info and data of every tensor of the tiny table, state
 *   manifest     the bytes as manifest.json: ckpt_verify, ckpt_read_config
 *   zstd         the bytes as one compressed chunk through the filter's decoder
 *   safetensors  the bytes as model.safetensors: hf_import into the tiny table, and every
 *                header entry read by st_read_f32
 *   ckpt         a whole directory: u32 manifest length, manifest, then the .h5; ckpt_load
 * Builds three ways (tests/fuzz/fuzz_ckpt.sh drives them):
 *   clang -fsanitize=fuzzer,...           libFuzzer entry points below
 *   -DFUZZ_SEED_MAIN                      writes a seed corpus per target from a real save
 *   -DFUZZ_STANDALONE (gcc + ASan)        mutation loop (flip, overwrite, truncate, splice)
 *                                         over the seeds for N seconds, when no libFuzzer
 * A finding is a sanitizer report or a crash; an error return is the expected outcome.
 * Not here: ctest (this runs for minutes; see fuzz_ckpt.sh).
 */
#define _GNU_SOURCE
#include <hdf5.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "checkpoint/ckpt.h"
#include "checkpoint/fsio.h"
#include "checkpoint/h5.h"
#include "checkpoint/safetensors.h"
#include "checkpoint/zstd_filter.h"
#include "runtime/common.h"
#include "runtime/config.h"

static ParamTable table;
static Config cfg;
static float *buf_p, *buf_m, *buf_v;   /* (table.total) each */
static char work[256];                  /* private scratch directory */
static const char *target = "h5";

static void tiny_config(Config *c)
{
    config_defaults(c);
    ModelConfig *m = &c->model;
    m->vocab_size = 16, m->hidden_size = 8, m->intermediate_size = 16, m->moe_intermediate_size = 4;
    m->num_hidden_layers = 2, m->first_k_dense_replace = 1, m->num_attention_heads = 2;
    m->n_routed_experts = 2, m->n_shared_experts = 1, m->num_experts_per_tok = 1, m->n_group = 1, m->topk_group = 1;
    m->q_lora_rank = 4, m->kv_lora_rank = 4, m->qk_nope_head_dim = 4, m->qk_rope_head_dim = 2, m->v_head_dim = 4;
    m->num_nextn_predict_layers = 1;
    config_validate(c);
}

static void setup(void)
{
    if (buf_p) return;
    tiny_config(&cfg);
    params_build(&table, &cfg.model);
    buf_p = xcalloc(table.total, sizeof(float));
    buf_m = xcalloc(table.total, sizeof(float));
    buf_v = xcalloc(table.total, sizeof(float));
    const char *given = getenv("DSTRAIN_FUZZ_SCRATCH");   /* the script's, removed by it */
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    if (given && *given) snprintf(work, sizeof work, "%s", given);
    else snprintf(work, sizeof work, "%s/dstrain_fuzz_%d", base, (int)getpid());
    mkdir_p(work);
    const char *t = getenv("DSTRAIN_FUZZ_TARGET");
    if (t && *t) target = t;
}

static void put_file(const char *name, const uint8_t *data, size_t n)
{
    char *path = xasprintf("%s/%s", work, name);
    FILE *f = fopen(path, "wb");
    CHECK(f);
    if (n) CHECK(fwrite(data, 1, n, f) == n);
    fclose(f);
    free(path);
}

static void run_h5(const uint8_t *data, size_t n)
{
    char err[1024], path[512];
    put_file("rank-00000.h5", data, n);
    snprintf(path, sizeof path, "%s/rank-00000.h5", work);
    CkptH5 *h = ckpt_h5_open(path, err, sizeof err);
    if (!h) return;
    int rank, world;
    CkptState s;
    long long links;
    ckpt_h5_read_layout(h, &rank, &world, err, sizeof err);
    ckpt_h5_count(h, &links, err, sizeof err);
    for (int i = 0; i < table.n; i++) {
        const Param *p = &table.p[i];
        CkptH5Slice sl = ckpt_h5_whole(p->ndim, p->rows, p->cols);
        CkptH5Info info;
        ckpt_h5_info(h, p->name, &info, err, sizeof err);
        ckpt_h5_read_tensor(h, p->name, &sl, buf_p + p->offset, err, sizeof err);
    }
    ckpt_h5_read_state(h, &s, err, sizeof err);
    ckpt_h5_close(h, err, sizeof err);
}

static void run_manifest(const uint8_t *data, size_t n)
{
    char err[1024];
    put_file("manifest.json", data, n);
    ckpt_verify(work, err, sizeof err);
    free(ckpt_read_config(work, err, sizeof err));
}

static void run_zstd(const uint8_t *data, size_t n)
{
    static const unsigned cd[2] = { 1, 4096 };
    for (size_t nel = 1; nel <= 2; nel++) {
        size_t cap = n ? n : 1;
        void *buf = xmalloc(cap);
        memcpy(buf, data, n);
        size_t got = ckpt_zstd_filter(H5Z_FLAG_REVERSE, nel, cd, n, &cap, &buf);
        if (got) CHECK(got <= cap);
        free(buf);
    }
}

static void run_safetensors(const uint8_t *data, size_t n)
{
    char err[1024], path[512];
    put_file("model.safetensors", data, n);
    hf_import(work, &table, buf_p, err, sizeof err);
    snprintf(path, sizeof path, "%s/model.safetensors", work);
    StFile f;
    if (st_open(path, &f, err, sizeof err)) return;
    for (int i = 0; i < f.n; i++) {
        long long bytes = f.entries[i].end - f.entries[i].begin;
        if (bytes > (64 << 20)) continue;
        float *out = xmalloc((size_t)bytes * 2 + 4);   /* BF16 widens to twice its bytes */
        st_read_f32(&f, &f.entries[i], out, err, sizeof err);
        free(out);
    }
    st_close(&f);
}

static void run_ckpt(const uint8_t *data, size_t n)
{
    char err[1024];
    uint32_t mlen = 0;
    if (n >= 4) memcpy(&mlen, data, 4);
    size_t head = n >= 4 ? 4 : n, rest = n - head;
    if (mlen > rest) mlen = (uint32_t)rest;
    put_file("manifest.json", data + head, mlen);
    put_file("rank-00000.h5", data + head + mlen, rest - mlen);
    CkptState s;
    ckpt_load(work, &table, buf_p, buf_m, buf_v, &s, err, sizeof err);
}

static void run_target(const uint8_t *data, size_t n)
{
    if (!strcmp(target, "h5")) run_h5(data, n);
    else if (!strcmp(target, "manifest")) run_manifest(data, n);
    else if (!strcmp(target, "zstd")) run_zstd(data, n);
    else if (!strcmp(target, "safetensors")) run_safetensors(data, n);
    else if (!strcmp(target, "ckpt")) run_ckpt(data, n);
    else DIE("fuzz: unknown DSTRAIN_FUZZ_TARGET '%s' (h5, manifest, zstd, safetensors, ckpt)", target);
}

#if defined(FUZZ_SEED_MAIN)

static uint8_t *slurp(const char *path, size_t *n)
{
    char err[512];
    uint8_t *d = (uint8_t *)fsio_read_file(path, (size_t)1 << 30, n, err, sizeof err);
    if (!d) DIE("fuzz seeds: %s", err);
    return d;
}

static void write_seed(const char *dir, const char *name, const uint8_t *a, size_t na, const uint8_t *b, size_t nb)
{
    mkdir_p(dir);
    char *path = xasprintf("%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(a, 1, na, f) == na && (nb == 0 || fwrite(b, 1, nb, f) == nb));
    fclose(f);
    free(path);
}

/* Seeds from a real save and export of the tiny model: OUT/<target>/seed-*. */
int main(int argc, char **argv)
{
    if (argc != 2) DIE("usage: fuzz_seeds OUT_DIR");
    setup();
    Rng r;
    rng_seed(&r, 1);
    for (size_t i = 0; i < table.total; i++) buf_p[i] = buf_m[i] = buf_v[i] = 0.1f * rng_normal(&r);
    char err[1024], *run = xasprintf("%s/run", work), *hf = xasprintf("%s/hf", work);
    CkptRequest q = { .run_dir = run, .config_text = "[model]\n", .table = &table, .params = buf_p,
                      .adam_m = buf_m, .adam_v = buf_v, .state = { .step = 3, .tokens = 99 } };
    if (ckpt_save(&q, err, sizeof err)) DIE("fuzz seeds: %s", err);
    if (hf_export(hf, &cfg.model, &table, buf_p, 0, err, sizeof err)) DIE("fuzz seeds: %s", err);
    size_t nh, nm, ns;
    char *hp = xasprintf("%s/ckpt-3/rank-00000.h5", run), *mp = xasprintf("%s/ckpt-3/manifest.json", run);
    char *sp = xasprintf("%s/model.safetensors", hf);
    uint8_t *h5 = slurp(hp, &nh), *man = slurp(mp, &nm), *st = slurp(sp, &ns);
    char *d = xasprintf("%s/h5", argv[1]);
    write_seed(d, "seed-0", h5, nh, NULL, 0);
    free(d), d = xasprintf("%s/manifest", argv[1]);
    write_seed(d, "seed-0", man, nm, NULL, 0);
    free(d), d = xasprintf("%s/safetensors", argv[1]);
    write_seed(d, "seed-0", st, ns, NULL, 0);
    free(d), d = xasprintf("%s/ckpt", argv[1]);
    uint32_t ml = (uint32_t)nm;
    uint8_t *both = xmalloc(4 + nm);
    memcpy(both, &ml, 4);
    memcpy(both + 4, man, nm);
    write_seed(d, "seed-0", both, 4 + nm, h5, nh);
    float chunk[1024];
    for (int i = 0; i < 1024; i++) chunk[i] = 0.01f * (float)i;
    size_t cap = sizeof chunk;
    void *z = xmalloc(cap);
    memcpy(z, chunk, cap);
    unsigned cd[2] = { 1, sizeof chunk };
    size_t nz = ckpt_zstd_filter(0, 2, cd, sizeof chunk, &cap, &z);
    free(d), d = xasprintf("%s/zstd", argv[1]);
    write_seed(d, "seed-0", z, nz, NULL, 0);
    /* every target once over its own seed: the unmutated inputs must pass through cleanly */
    const struct { const char *name; const uint8_t *data; size_t n; } runs[] = {
        { "h5", h5, nh }, { "manifest", man, nm }, { "safetensors", st, ns }, { "ckpt", both, 4 + nm },
        { "zstd", z, nz },
    };
    for (int i = 0; i < 5; i++) {
        target = runs[i].name;
        run_target(runs[i].data, runs[i].n);
    }
    fsio_remove_tree(work, err, sizeof err);
    printf("seeds written to %s\n", argv[1]);
    return 0;
}

#elif defined(FUZZ_STANDALONE)

/* One random edit: flip bits, overwrite a run with random or extreme bytes, truncate, or
 * duplicate a block (the classic byte-level mutations). */
static size_t mutate(uint8_t *d, size_t n, size_t cap, Rng *r)
{
    if (n == 0) return 0;
    switch (rng_u32(r) % 5) {
    case 0: d[rng_u32(r) % n] ^= (uint8_t)(1u << (rng_u32(r) % 8)); return n;
    case 1: { size_t at = rng_u32(r) % n, len = 1 + rng_u32(r) % 8;
              for (size_t i = at; i < n && i < at + len; i++) d[i] = (uint8_t)rng_u32(r);
              return n; }
    case 2: { size_t at = rng_u32(r) % n; static const uint8_t X[] = { 0, 0xff, 0x7f, 0x80 };
              uint8_t v = X[rng_u32(r) % 4];
              for (size_t i = at; i < n && i < at + 8; i++) d[i] = v;
              return n; }
    case 3: return rng_u32(r) % n;
    default: { size_t from = rng_u32(r) % n, to = rng_u32(r) % n, len = 1 + rng_u32(r) % 64;
               if (from + len > n) len = n - from;
               if (to + len > cap) len = cap - to;
               memmove(d + to, d + from, len);
               return n > to + len ? n : to + len; }
    }
}

/* usage: fuzz_standalone SEED_FILE SECONDS (DSTRAIN_FUZZ_TARGET selects the target) */
int main(int argc, char **argv)
{
    if (argc != 3) DIE("usage: fuzz_standalone SEED_FILE SECONDS");
    setup();
    size_t n0;
    char err[512];
    uint8_t *seedbuf = (uint8_t *)fsio_read_file(argv[1], (size_t)1 << 30, &n0, err, sizeof err);
    if (!seedbuf) DIE("fuzz: %s", err);
    size_t cap = n0 + 64;
    uint8_t *d = xmalloc(cap);
    Rng r;
    rng_seed(&r, (uint64_t)time(NULL));
    double end = now_seconds() + atof(argv[2]);
    long iters = 0;
    while (now_seconds() < end) {
        memcpy(d, seedbuf, n0);
        size_t n = n0;
        int edits = 1 + (int)(rng_u32(&r) % 4);
        for (int e = 0; e < edits; e++) n = mutate(d, n, cap, &r);
        run_target(d, n);
        iters++;
    }
    printf("fuzz %s: %ld inputs, no crash\n", target, iters);
    fsio_remove_tree(work, err, sizeof err);
    free(d);
    free(seedbuf);
    return 0;
}

#else

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
    setup();
    run_target(data, n);
    return 0;
}

#endif
