/* tests/unit/test_ckpt.c - checkpoints (checkpoint/ckpt.h) and the Hugging Face export and
 * import (checkpoint/safetensors.h) on a tiny model with random contents.
 *
 * What it checks: XXH64 against published vectors; a save loads back bit for bit (weights,
 * moments, every CkptState field, the config text) and the same contents give the same file
 * bytes; a flipped byte or a truncation of the .h5 or of manifest.json fails verify and load
 * with a message naming that file; find_latest skips damaged and incomplete checkpoints
 * (saying why) and never takes a .tmp even when it is complete; retention keeps N and
 * cleans leftovers; an async save writes the values of the moment it was called even when
 * the caller overwrites its buffers at once, and reports a failed save on the next call;
 * a kill at every crash point leaves the previous checkpoint the newest that verifies; a
 * load into a table of another shape fails naming the tensor; hostile inputs (zstd frames,
 * manifest file names) are refused; the safetensors export parses back (8-byte header
 * padding, contiguous aligned offsets, equal data, MTP outside the index) and imports back.
 * Not here: bitwise resume of training and kill -9 of a training run (tests/cli, the
 * trainer's tests), h5py / transformers interop (tests/interop/). */
#define _GNU_SOURCE
#include <hdf5.h>
#include "kernels/fp8.h"
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "checkpoint/ckpt.h"
#include "checkpoint/fsio.h"
#include "checkpoint/hash.h"
#include "checkpoint/manifest.h"
#include "checkpoint/safetensors.h"
#include "checkpoint/zstd_filter.h"
#include "runtime/common.h"
#include "runtime/config.h"
#include "tests/unit/testing.h"

static char root[64];   /* scratch directory of this run */
static unsigned long long seed;

typedef struct Fixture {
    Config cfg;
    ParamTable t;
    float *p, *m, *v;   /* (t.total) each */
    char *text;         /* config_write output */
    CkptState st;
} Fixture;

/* A tiny DeepSeek-V3 (2 layers, 1 dense, 4 experts, MTP depth mtp) with random contents. */
static void fixture_make(Fixture *f, int hidden, int mtp, unsigned long long s)
{
    memset(f, 0, sizeof *f);
    config_defaults(&f->cfg);
    ModelConfig *c = &f->cfg.model;
    c->vocab_size = 64, c->hidden_size = hidden, c->intermediate_size = 64, c->moe_intermediate_size = 16;
    c->num_hidden_layers = 2, c->first_k_dense_replace = 1, c->num_attention_heads = 2;
    c->n_routed_experts = 4, c->n_shared_experts = 1, c->num_experts_per_tok = 2, c->n_group = 2, c->topk_group = 1;
    c->q_lora_rank = 16, c->kv_lora_rank = 16, c->qk_nope_head_dim = 8, c->qk_rope_head_dim = 8, c->v_head_dim = 8;
    c->num_nextn_predict_layers = mtp;
    config_validate(&f->cfg);
    params_build(&f->t, c);
    f->p = xmalloc(f->t.total * sizeof(float));
    f->m = xmalloc(f->t.total * sizeof(float));
    f->v = xmalloc(f->t.total * sizeof(float));
    Rng r;
    rng_seed(&r, s);
    for (size_t i = 0; i < f->t.total; i++) {
        f->p[i] = 0.02f * rng_normal(&r);
        f->m[i] = 1e-3f * rng_normal(&r);
        f->v[i] = 1e-6f * rng_uniform(&r);
    }
    size_t len;
    FILE *mem = open_memstream(&f->text, &len);
    config_write(&f->cfg, mem);
    fclose(mem);
    f->st = (CkptState){ .step = 10, .tokens = 123456789012LL, .data = { 0xfeedfacecafebeefULL, 987654321ULL },
                         .rng = 0x8000000000000001ULL };
}

static void fixture_free(Fixture *f)
{
    params_free(&f->t);
    free(f->p);
    free(f->m);
    free(f->v);
    free(f->text);
}

static CkptRequest request(const Fixture *f, const char *run_dir, int step, int keep)
{
    CkptRequest q = { .run_dir = run_dir, .config_text = f->text, .table = &f->t, .params = f->p,
                      .adam_m = f->m, .adam_v = f->v, .state = f->st, .keep = keep };
    q.state.step = step;
    return q;
}

static int save_ok(const Fixture *f, const char *run_dir, int step, int keep)
{
    char err[1024];
    CkptRequest q = request(f, run_dir, step, keep);
    int rc = ckpt_save(&q, err, sizeof err);
    EXPECT(rc == 0, "save of step %d: %s", step, err);
    return rc;
}

static char *path_of(const char *a, const char *b) { return xasprintf("%s/%s", a, b); }

static void flip_byte(const char *path, long at)
{
    FILE *fp = fopen(path, "r+b");
    CHECK(fp);
    CHECK(fseek(fp, at, SEEK_SET) == 0);
    int c = fgetc(fp);
    CHECK(c != EOF);
    CHECK(fseek(fp, at, SEEK_SET) == 0);
    fputc(c ^ 0x10, fp);
    fclose(fp);
}

static long file_size(const char *path)
{
    struct stat st;
    CHECK(stat(path, &st) == 0);
    return (long)st.st_size;
}

/* ---- tests ---- */

static void test_hash(void)
{
    static const struct { const char *s; uint64_t h; } V[] = {   /* published XXH64 seed-0 vectors */
        { "", 0xEF46DB3751D8E999ULL }, { "a", 0xD24EC4F1A98C6E5BULL }, { "abc", 0x44BC2CF5AD770999ULL },
        { "Nobody inspects the spammish repetition", 0xFBCEA83C8A378BF1ULL },
    };
    for (int i = 0; i < 4; i++)
        EXPECT(ckpt_hash64(V[i].s, strlen(V[i].s)) == V[i].h, "xxh64('%s')", V[i].s);
    unsigned char buf[1000];
    for (int i = 0; i < 1000; i++) buf[i] = (unsigned char)(i * 7 + 3);
    CkptHash h;
    ckpt_hash_init(&h);
    for (int i = 0; i < 1000; i += 13) ckpt_hash_update(&h, buf + i, i + 13 > 1000 ? 1000 - i : 13);
    EXPECT(ckpt_hash_final(&h) == ckpt_hash64(buf, 1000), "streamed xxh64 differs from one-shot");
}

static void test_roundtrip(void)
{
    Fixture f;
    fixture_make(&f, 32, 1, seed);
    char *run = path_of(root, "rt");
    save_ok(&f, run, 10, 0);
    char *dir = path_of(run, "ckpt-10"), err[1024];
    float *p = xcalloc(f.t.total, 4), *m = xcalloc(f.t.total, 4), *v = xcalloc(f.t.total, 4);
    CkptState s;
    memset(&s, 0, sizeof s);
    int rc = ckpt_load(dir, &f.t, p, m, v, &s, err, sizeof err);
    EXPECT(rc == 0, "load: %s", err);
    EXPECT(!memcmp(p, f.p, f.t.total * 4) && !memcmp(m, f.m, f.t.total * 4) && !memcmp(v, f.v, f.t.total * 4),
           "weights or moments differ after a round trip");
    EXPECT(s.step == 10 && s.tokens == f.st.tokens && s.data.seed == f.st.data.seed &&
           s.data.cursor == f.st.data.cursor && s.rng == f.st.rng, "state differs after a round trip");
    memset(p, 0, f.t.total * 4);
    EXPECT(ckpt_load(dir, &f.t, p, NULL, NULL, NULL, err, sizeof err) == 0 && !memcmp(p, f.p, f.t.total * 4),
           "weights-only load: %s", err);
    char *text = ckpt_read_config(dir, err, sizeof err);
    EXPECT(text && !strcmp(text, f.text), "config text differs: %s", text ? "" : err);
    free(text);
    /* the same contents saved again elsewhere give the same bytes (no timestamps) */
    char *run2 = path_of(root, "rt2"), *dir2 = path_of(run2, "ckpt-10");
    save_ok(&f, run2, 10, 0);
    CkptManifest a, b;
    EXPECT(ckpt_manifest_read(dir, &a, err, sizeof err) == 0 && ckpt_manifest_read(dir2, &b, err, sizeof err) == 0 &&
           a.files[0].checksum == b.files[0].checksum && a.files[0].bytes == b.files[0].bytes,
           "two saves of the same contents differ");
    ckpt_manifest_free(&a);
    ckpt_manifest_free(&b);
    free(p), free(m), free(v), free(run), free(dir), free(run2), free(dir2);
    fixture_free(&f);
}

typedef enum { DAMAGE_FLIP, DAMAGE_TRUNCATE } Damage;

/* Damage `file` of a fresh checkpoint; verify and load must fail naming it. */
static void damage_case(const Fixture *f, const char *file, Damage how, const char *expect_word)
{
    char *run = xasprintf("%s/dmg-%s-%d", root, file, (int)how), *dir = path_of(run, "ckpt-10");
    char *path = path_of(dir, file), err[1024] = "";
    save_ok(f, run, 10, 0);
    long size = file_size(path);
    if (how == DAMAGE_TRUNCATE) {
        CHECK(truncate(path, size / 2) == 0);
    } else if (!strcmp(file, CKPT_MANIFEST_NAME)) {
        char *text = fsio_read_file(path, 1 << 20, NULL, err, sizeof err);
        CHECK(text);
        char *at = strstr(text, "hidden_size = 32");   /* a digit of the config: still valid JSON */
        CHECK(at);
        flip_byte(path, (long)(at - text) + 14);
        free(text);
    } else {
        flip_byte(path, size / 2);
    }
    int rc = ckpt_verify(dir, err, sizeof err);
    EXPECT(rc != 0 && strstr(err, file) && strstr(err, expect_word) && strstr(err, dir),
           "verify after damaging '%s': rc %d, message '%s'", file, rc, err);
    float *p = xcalloc(f->t.total, 4);
    rc = ckpt_load(dir, &f->t, p, NULL, NULL, NULL, err, sizeof err);
    EXPECT(rc != 0 && strstr(err, file), "load after damaging '%s': rc %d, message '%s'", file, rc, err);
    free(p), free(run), free(dir), free(path);
}

static void test_damage(void)
{
    Fixture f;
    fixture_make(&f, 32, 1, seed + 1);
    damage_case(&f, "rank-00000.h5", DAMAGE_FLIP, "checksum mismatch");
    damage_case(&f, "rank-00000.h5", DAMAGE_TRUNCATE, "truncated");
    damage_case(&f, CKPT_MANIFEST_NAME, DAMAGE_FLIP, "checksum mismatch");
    damage_case(&f, CKPT_MANIFEST_NAME, DAMAGE_TRUNCATE, "not valid JSON");
    fixture_free(&f);
}

static void test_find_latest(void)
{
    Fixture f;
    fixture_make(&f, 32, 0, seed + 2);
    char *run = path_of(root, "latest"), out[4096], *log = NULL, err[1024];
    size_t loglen;
    save_ok(&f, run, 10, 0);
    save_ok(&f, run, 20, 0);
    save_ok(&f, run, 30, 0);
    char *h30 = xasprintf("%s/ckpt-30/rank-00000.h5", run);
    flip_byte(h30, file_size(h30) / 3);
    /* a complete, valid checkpoint under a .tmp name must still never be taken */
    char *from = xasprintf("%s/ckpt-20", run), *tmp = xasprintf("%s/ckpt-40.tmp", run);
    char *cmd = xasprintf("cp -r '%s' '%s'", from, tmp);
    CHECK(system(cmd) == 0);
    char *m50 = xasprintf("%s/ckpt-50", run);
    mkdir_p(m50);
    FILE *lf = open_memstream(&log, &loglen);
    int rc = ckpt_find_latest(run, out, sizeof out, lf);
    fclose(lf);
    EXPECT(rc == 0 && !strcmp(out, from), "find_latest gave '%s', expected '%s'", rc ? "(none)" : out, from);
    EXPECT(strstr(log, "ckpt-50") && strstr(log, "manifest.json"), "log lacks the ckpt-50 reason: %s", log);
    EXPECT(strstr(log, "ckpt-30") && strstr(log, "rank-00000.h5") && strstr(log, "checksum"),
           "log lacks the ckpt-30 reason: %s", log);
    EXPECT(strstr(log, "ckpt-40.tmp") && strstr(log, "ignoring"), "log does not mention the .tmp: %s", log);
    free(log);
    /* a manifest whose step disagrees with the directory name */
    char *moved = xasprintf("%s/ckpt-11", run), *c10 = xasprintf("%s/ckpt-10", run);
    CHECK(rename(c10, moved) == 0);
    EXPECT(ckpt_verify(moved, err, sizeof err) != 0 && strstr(err, "step 10"), "renamed checkpoint: %s", err);
    char *empty = path_of(root, "empty");
    mkdir_p(empty);
    EXPECT(ckpt_find_latest(empty, out, sizeof out, NULL) == -1, "find_latest in an empty run dir succeeded");
    free(run), free(h30), free(from), free(tmp), free(cmd), free(m50), free(moved), free(c10), free(empty);
    fixture_free(&f);
}

static int exists(const char *dir, const char *name)
{
    char *p = path_of(dir, name);
    struct stat st;
    int e = stat(p, &st) == 0;
    free(p);
    return e;
}

static void test_retention(void)
{
    Fixture f;
    fixture_make(&f, 32, 0, seed + 3);
    char *run = path_of(root, "keep"), err[1024];
    for (int s = 1; s <= 4; s++) save_ok(&f, run, s, 2);
    EXPECT(!exists(run, "ckpt-1") && !exists(run, "ckpt-2") && exists(run, "ckpt-3") && exists(run, "ckpt-4"),
           "keep=2 after 4 saves did not leave exactly ckpt-3 and ckpt-4");
    char *stale = path_of(run, "ckpt-5.tmp"), *del = path_of(run, "ckpt-2.del");
    mkdir_p(stale);
    mkdir_p(del);
    char *junk = path_of(stale, "rank-00000.h5");
    FILE *fp = fopen(junk, "w");
    fputs("junk", fp);
    fclose(fp);
    save_ok(&f, run, 5, 2);
    save_ok(&f, run, 5, 2);   /* the same step again: replaced only once complete */
    char *c5 = path_of(run, "ckpt-5");
    EXPECT(ckpt_verify(c5, err, sizeof err) == 0, "re-saved ckpt-5 does not verify: %s", err);
    EXPECT(!exists(run, "ckpt-3") && exists(run, "ckpt-4") && !exists(run, "ckpt-5.tmp") &&
           !exists(run, "ckpt-2.del") && !exists(run, "ckpt-5.del"), "leftovers or wrong retention after ckpt-5");
    free(run), free(stale), free(del), free(junk), free(c5);
    fixture_free(&f);
}

static void test_async(void)
{
    Fixture f;
    fixture_make(&f, 32, 1, seed + 4);
    char *run = path_of(root, "async"), err[1024];
    size_t bytes = f.t.total * sizeof(float);
    float *keep_p = xmalloc(bytes), *keep_m = xmalloc(bytes);
    memcpy(keep_p, f.p, bytes);
    memcpy(keep_m, f.m, bytes);
    CkptWriter *w = ckpt_writer_create();
    CkptRequest q = request(&f, run, 7, 0);
    EXPECT(ckpt_save_async(w, &q, err, sizeof err) == 0, "async save: %s", err);
    for (size_t i = 0; i < f.t.total; i++) f.p[i] = f.m[i] = -1.0f;   /* the caller moves on at once */
    q.state.step = 8;
    EXPECT(ckpt_save_async(w, &q, err, sizeof err) == 0, "second async save: %s", err);
    EXPECT(ckpt_writer_finish(w, err, sizeof err) == 0, "finish: %s", err);
    double copy_s, write_s;
    ckpt_writer_times(w, &copy_s, &write_s);
    EXPECT(copy_s >= 0 && write_s > 0 && ckpt_writer_wait_seconds(w) >= 0, "times %g %g", copy_s, write_s);
    float *p = xcalloc(f.t.total, 4), *m = xcalloc(f.t.total, 4), *v = xcalloc(f.t.total, 4);
    char *d7 = path_of(run, "ckpt-7"), *d8 = path_of(run, "ckpt-8");
    EXPECT(ckpt_load(d7, &f.t, p, m, v, NULL, err, sizeof err) == 0 && !memcmp(p, keep_p, bytes) &&
           !memcmp(m, keep_m, bytes), "ckpt-7 does not hold the values of the moment of the call: %s", err);
    EXPECT(ckpt_load(d8, &f.t, p, m, v, NULL, err, sizeof err) == 0 && p[0] == -1.0f, "ckpt-8: %s", err);
    /* a failing save is reported by the next call and by finish */
    char *blocker = path_of(root, "not-a-dir");
    FILE *fp = fopen(blocker, "w");
    fclose(fp);
    q.run_dir = blocker;
    EXPECT(ckpt_save_async(w, &q, err, sizeof err) == 0, "async save returned the error too early");
    q.run_dir = run;
    q.state.step = 9;
    int rc = ckpt_save_async(w, &q, err, sizeof err);
    EXPECT(rc != 0 && strstr(err, "not-a-dir"), "failed save not reported: rc %d '%s'", rc, err);
    rc = ckpt_writer_finish(w, err, sizeof err);
    EXPECT(rc != 0 && strstr(err, "not-a-dir"), "finish did not report the failure: '%s'", err);
    char *d9 = path_of(run, "ckpt-9");
    EXPECT(ckpt_verify(d9, err, sizeof err) == 0, "the save after a failure did not happen: %s", err);
    ckpt_writer_destroy(w);
    free(keep_p), free(keep_m), free(p), free(m), free(v), free(d7), free(d8), free(d9), free(blocker), free(run);
    fixture_free(&f);
}

/* Child: save step 1 normally, then step 2 armed to die at `phase`. */
static void crash_child(const Fixture *f, const char *run, const char *phase)
{
    setenv("DSTRAIN_CKPT_CRASH_AT", phase, 1);
    setenv("DSTRAIN_CKPT_CRASH_STEP", "2", 1);
    char err[1024];
    CkptRequest q = request(f, run, 1, 3);
    if (ckpt_save(&q, err, sizeof err)) _exit(3);
    q.state.step = 2;
    ckpt_save(&q, err, sizeof err);
    _exit(4);   /* reaching here means the crash point never fired */
}

static void test_crash_points(void)
{
    static const char *const PHASES[] = { "during-tmp-files", "after-tmp-files", "after-manifest", "before-rename",
                                          "after-rename" };
    Fixture f;
    fixture_make(&f, 32, 0, seed + 5);
    char out[4096], err[1024];
    for (int i = 0; i < 5; i++) {
        char *run = xasprintf("%s/crash-%s", root, PHASES[i]);
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            CHECK(freopen("/dev/null", "w", stderr));
            crash_child(&f, run, PHASES[i]);
        }
        int status;
        CHECK(waitpid(pid, &status, 0) == pid);
        EXPECT(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "%s: child was not killed (status %d)", PHASES[i],
               status);
        int renamed = i == 4;
        char *want = xasprintf("%s/ckpt-%d", run, renamed ? 2 : 1);
        EXPECT(ckpt_find_latest(run, out, sizeof out, NULL) == 0 && !strcmp(out, want), "%s: latest is '%s'",
               PHASES[i], out);
        EXPECT(exists(run, "ckpt-2.tmp") == !renamed, "%s: ckpt-2.tmp presence wrong", PHASES[i]);
        save_ok(&f, run, 2, 3);   /* the next save of that step cleans up and completes */
        EXPECT(!exists(run, "ckpt-2.tmp") && exists(run, "ckpt-1"), "%s: after re-save", PHASES[i]);
        free(want);
        free(run);
    }
    setenv("DSTRAIN_CKPT_CRASH_AT", "mid-flight", 1);
    CkptRequest q = request(&f, root, 3, 0);
    EXPECT(ckpt_save(&q, err, sizeof err) != 0 && strstr(err, "mid-flight"), "unknown phase accepted: %s", err);
    unsetenv("DSTRAIN_CKPT_CRASH_AT");
    fixture_free(&f);
}

static void test_mismatch(void)
{
    Fixture f, wide, nomtp, mtp2;
    fixture_make(&f, 32, 1, seed + 6);
    fixture_make(&wide, 48, 1, seed);
    fixture_make(&nomtp, 32, 0, seed);
    fixture_make(&mtp2, 32, 2, seed);
    char *run = path_of(root, "shape"), *dir = path_of(run, "ckpt-10"), err[1024];
    save_ok(&f, run, 10, 0);
    int rc = ckpt_load(dir, &wide.t, wide.p, NULL, NULL, NULL, err, sizeof err);
    EXPECT(rc != 0 && strstr(err, "'model.embed_tokens.weight' has shape (64,32), the model expects (64,48)"),
           "wider table: '%s'", err);
    rc = ckpt_load(dir, &nomtp.t, nomtp.p, NULL, NULL, NULL, err, sizeof err);
    EXPECT(rc != 0 && strstr(err, "'model.layers.2.") && strstr(err, "not in the model"), "table without MTP: '%s'",
           err);
    rc = ckpt_load(dir, &mtp2.t, mtp2.p, NULL, NULL, NULL, err, sizeof err);
    EXPECT(rc != 0 && strstr(err, "'model.layers.3.") && strstr(err, "missing"), "table with MTP 2: '%s'", err);
    /* without moments: params load, asking for moments fails */
    CkptRequest q = request(&f, run, 11, 0);
    q.adam_m = q.adam_v = NULL;
    EXPECT(ckpt_save(&q, err, sizeof err) == 0, "save without moments: %s", err);
    char *d11 = path_of(run, "ckpt-11");
    EXPECT(ckpt_load(d11, &f.t, wide.p, NULL, NULL, NULL, err, sizeof err) == 0, "params only: %s", err);
    rc = ckpt_load(d11, &f.t, f.p, f.m, f.v, NULL, err, sizeof err);
    EXPECT(rc != 0 && strstr(err, "no optimizer moments"), "moments from a checkpoint without: '%s'", err);
    free(run), free(dir), free(d11);
    fixture_free(&f), fixture_free(&wide), fixture_free(&nomtp), fixture_free(&mtp2);
}

static size_t reverse(const unsigned cd[2], const void *frame, size_t n)
{
    size_t cap = n;
    void *buf = xmalloc(n);
    memcpy(buf, frame, n);
    size_t got = ckpt_zstd_filter(H5Z_FLAG_REVERSE, 2, cd, n, &cap, &buf);
    free(buf);
    return got;
}

static void test_hostile(void)
{
    /* zstd frames: good, wrong size, truncated, two frames, a header claiming 2^40 bytes */
    float data[256];
    for (int i = 0; i < 256; i++) data[i] = (float)i;
    size_t cap = sizeof data;
    void *buf = xmalloc(cap);
    memcpy(buf, data, cap);
    unsigned cd[2] = { 1, sizeof data };
    size_t n = ckpt_zstd_filter(0, 2, cd, sizeof data, &cap, &buf);
    EXPECT(n > 0 && reverse(cd, buf, n) == sizeof data, "a good frame did not decode");
    unsigned wrong[2] = { 1, sizeof data - 4 };
    EXPECT(reverse(wrong, buf, n) == 0 && strstr(ckpt_zstd_last_error(), "holds"), "a frame of the wrong size decoded");
    EXPECT(reverse(cd, buf, n - 3) == 0, "a truncated frame decoded");
    char *two = xmalloc(2 * n);
    memcpy(two, buf, n);
    memcpy(two + n, buf, n);
    EXPECT(reverse(cd, two, 2 * n) == 0, "two frames decoded as one chunk");
    const unsigned char huge[] = { 0x28, 0xB5, 0x2F, 0xFD, 0xE0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0 };
    EXPECT(reverse(cd, huge, sizeof huge) == 0 && strstr(ckpt_zstd_last_error(), "more than"), "a 2^40-byte frame");
    free(two);
    free(buf);
    /* a manifest pointing outside its directory, with a valid self-checksum */
    char *dir = path_of(root, "hostile"), err[1024];
    mkdir_p(dir);
    CkptManifestFile file = { .name = "../rt/ckpt-10/rank-00000.h5", .rank = 0, .bytes = 1, .checksum = 0 };
    CkptManifest m = { .format_version = 1, .layout = { 1, 1, 1, 1 }, .config = "", .n_files = 1, .files = &file };
    CHECK(ckpt_manifest_write(dir, &m, err, sizeof err) == 0);
    EXPECT(ckpt_verify(dir, err, sizeof err) != 0 && strstr(err, "not a plain file name"), "path escape: '%s'", err);
    m.layout.world_size = 2;
    snprintf(file.name, sizeof file.name, "rank-00000.h5");
    CHECK(ckpt_manifest_write(dir, &m, err, sizeof err) == 0);
    EXPECT(ckpt_verify(dir, err, sizeof err) != 0 && strstr(err, "one file per rank"), "world 2, one file: '%s'", err);
    /* tensor names that would step outside the root group, shadow the state or repeat */
    m.layout.world_size = 1;
    static const char *const BAD[][2] = { { "a/b", "x" }, { "state", "x" }, { "x", "x" }, { "x.exp_avg", "y" } };
    for (int i = 0; i < 4; i++) {
        const char *names[2] = { BAD[i][0], BAD[i][1] };
        file.tensors = names;
        file.n_tensors = 2;
        CHECK(ckpt_manifest_write(dir, &m, err, sizeof err) == 0);
        EXPECT(ckpt_verify(dir, err, sizeof err) != 0 && (strstr(err, "not a valid name") || strstr(err, "twice")),
               "tensor names '%s', '%s' accepted: '%s'", names[0], names[1], err);
    }
    free(dir);
}

/* Parse a safetensors file the way an outside reader would; check layout and data. */
static json_t *read_st(const char *path, const Fixture *f, int *n_tensors)
{
    size_t len;
    char err[256];
    unsigned char *raw = (unsigned char *)fsio_read_file(path, 1 << 26, &len, err, sizeof err);
    EXPECT(raw && len >= 8, "cannot read '%s': %s", path, err);
    if (!raw) return NULL;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | raw[i];
    EXPECT(hlen % 8 == 0 && 8 + hlen <= len, "'%s': header length %llu", path, (unsigned long long)hlen);
    json_t *h = json_loadb((char *)raw + 8, hlen, 0, NULL), *v;
    EXPECT(json_is_object(h), "'%s': header is not JSON", path);
    const char *key;
    long long expect_begin = 0;
    *n_tensors = 0;
    json_object_foreach(h, key, v) {
        if (!strcmp(key, "__metadata__")) continue;
        const Param *p = params_find(&f->t, key);
        long long b = json_integer_value(json_array_get(json_object_get(v, "data_offsets"), 0));
        long long e = json_integer_value(json_array_get(json_object_get(v, "data_offsets"), 1));
        EXPECT(p && b == expect_begin && b % 8 == 0 && e - b == (long long)p->numel * 4 &&
               8 + (long long)hlen + e <= (long long)len, "'%s': tensor '%s' offsets [%lld,%lld]", path, key, b, e);
        if (p && 8 + (long long)hlen + e <= (long long)len)
            EXPECT(!memcmp(raw + 8 + hlen + b, f->p + p->offset, p->numel * 4), "'%s': data of '%s'", path, key);
        expect_begin = e;
        (*n_tensors)++;
    }
    EXPECT(8 + (long long)hlen + expect_begin == (long long)len, "'%s' has bytes after the last tensor", path);
    free(raw);
    return h;
}

/* dir/model.safetensors holding every tensor of f as BF16 (the top half of bf16_round(x)). */
static void write_bf16_dir(const char *dir, const Fixture *f)
{
    json_t *h = json_object();
    size_t at = 0;
    for (int i = 0; i < f->t.n; i++) {
        const Param *p = &f->t.p[i];
        json_t *shape = p->ndim > 1 ? json_pack("[I,I]", (json_int_t)p->rows, (json_int_t)p->cols)
                                    : json_pack("[I]", (json_int_t)p->rows);
        json_object_set_new(h, p->name, json_pack("{s:s, s:o, s:[I,I]}", "dtype", "BF16", "shape", shape,
                                                  "data_offsets", (json_int_t)at, (json_int_t)(at + 2 * p->numel)));
        at += 2 * p->numel;
    }
    char *text = json_dumps(h, JSON_COMPACT), *path = path_of(dir, "model.safetensors");
    json_decref(h);
    uint64_t hlen = strlen(text);
    mkdir_p(dir);
    FILE *fp = fopen(path, "wb");
    CHECK(fp && fwrite(&hlen, 8, 1, fp) == 1 && fwrite(text, 1, hlen, fp) == hlen);   /* little-endian host */
    for (size_t i = 0; i < f->t.total; i++) {
        float r = bf16_round(f->p[i]);
        uint32_t u;
        memcpy(&u, &r, 4);
        uint16_t top = (uint16_t)(u >> 16);
        CHECK(fwrite(&top, 2, 1, fp) == 1);
    }
    fclose(fp);
    free(text);
    free(path);
}

static void test_safetensors(void)
{
    Fixture f;
    fixture_make(&f, 32, 1, seed + 7);
    char *out = path_of(root, "hf"), err[1024];
    int n_mtp = 0, n_main = 0, n;
    for (int i = 0; i < f.t.n; i++) f.t.p[i].mtp ? n_mtp++ : n_main++;
    EXPECT(hf_export(out, &f.cfg.model, &f.t, f.p, 0, err, sizeof err) == 0, "export: %s", err);
    char *single = path_of(out, "model.safetensors"), *mtp = path_of(out, "mtp.safetensors");
    json_t *h = read_st(single, &f, &n);
    EXPECT(n == n_main && !json_object_get(h, "model.layers.2.enorm.weight"), "model.safetensors holds %d tensors", n);
    json_decref(h);
    h = read_st(mtp, &f, &n);
    EXPECT(n == n_mtp && json_object_get(h, "model.layers.2.enorm.weight"), "mtp.safetensors holds %d tensors", n);
    json_decref(h);
    char *cfg_path = path_of(out, "config.json");
    json_t *cfg = json_load_file(cfg_path, 0, NULL);
    EXPECT(cfg && !strcmp(json_string_value(json_object_get(cfg, "model_type")), "deepseek_v3") &&
           json_is_true(json_object_get(cfg, "rope_interleave")) &&
           json_is_null(json_object_get(cfg, "rope_scaling")) &&
           json_integer_value(json_object_get(cfg, "hidden_size")) == 32 &&
           json_integer_value(json_object_get(cfg, "num_nextn_predict_layers")) == 1 &&
           !strcmp(json_string_value(json_object_get(cfg, "topk_method")), "noaux_tc") &&
           !json_object_get(cfg, "attention"), "config.json fields");
    json_decref(cfg);
    float *back = xcalloc(f.t.total, 4);
    EXPECT(hf_import(out, &f.t, back, err, sizeof err) == 0 && !memcmp(back, f.p, f.t.total * 4), "import: %s", err);
    /* sharded: 16 KiB shards, stale single file removed, index maps every non-MTP tensor */
    EXPECT(hf_export(out, &f.cfg.model, &f.t, f.p, 16 << 10, err, sizeof err) == 0, "sharded export: %s", err);
    char *index = path_of(out, "model.safetensors.index.json");
    json_t *idx = json_load_file(index, 0, NULL), *map = json_object_get(idx, "weight_map");
    EXPECT(json_object_size(map) == (size_t)n_main && !json_object_get(map, "model.layers.2.enorm.weight") &&
           !exists(out, "model.safetensors"), "index lists %zu tensors, or the stale single file is left",
           json_object_size(map));
    const char *key, *prev = NULL;
    json_t *v;
    int shards_seen = 0;
    json_object_foreach(map, key, v) {   /* insertion order = table order: shards are runs */
        const char *file = json_string_value(v);
        if (!prev || strcmp(prev, file)) {
            shards_seen++;
            EXPECT(exists(out, file), "index names '%s', which does not exist", file);
        }
        prev = file;
    }
    EXPECT(shards_seen >= 2, "16 KiB shards gave %d file(s)", shards_seen);
    json_decref(idx);
    memset(back, 0, f.t.total * 4);
    EXPECT(hf_import(out, &f.t, back, err, sizeof err) == 0 && !memcmp(back, f.p, f.t.total * 4),
           "sharded import: %s", err);
    Fixture wide;
    fixture_make(&wide, 48, 1, seed);
    int rc = hf_import(out, &wide.t, wide.p, err, sizeof err);
    EXPECT(rc != 0 && strstr(err, "model.embed_tokens.weight"), "import into another shape: '%s'", err);
    /* BF16 safetensors import to exactly the BF16 values */
    char *bf = path_of(root, "hf-bf16");
    write_bf16_dir(bf, &f);
    int exact = hf_import(bf, &f.t, back, err, sizeof err) == 0;
    for (size_t i = 0; exact && i < f.t.total; i++) exact = back[i] == bf16_round(f.p[i]);
    EXPECT(exact, "BF16 import differs from bf16_round of the values: %s", err);
    free(bf);
    /* routing transformers cannot reproduce: groups scored by their best 1 (K / topk_group) */
    wide.cfg.model.num_experts_per_tok = 1;
    rc = hf_export(out, &wide.cfg.model, &wide.t, wide.p, 0, err, sizeof err);
    EXPECT(rc != 0 && strstr(err, "its 1 best experts"), "export of top-1 group scoring: '%s'", err);
    free(out), free(single), free(mtp), free(cfg_path), free(back), free(index);
    fixture_free(&f), fixture_free(&wide);
}

static int rm_tree(const char *path)
{
    char err[256];
    return fsio_remove_tree(path, err, sizeof err);
}

int main(void)
{
    seed = test_seed();
    snprintf(root, sizeof root, "/tmp/dstrain_test_ckpt_XXXXXX");
    CHECK(mkdtemp(root));
    test_hash();
    test_roundtrip();
    test_damage();
    test_find_latest();
    test_retention();
    test_async();
    test_crash_points();
    test_mismatch();
    test_hostile();
    test_safetensors();
    if (!test_failed) rm_tree(root);
    else printf("scratch kept in %s\n", root);
    return test_finish();
}
