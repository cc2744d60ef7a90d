/* tests/unit/test_ckpt_reshard.c - per-rank checkpoint files and loading by row blocks
 * (checkpoint/ckpt.h ckpt_save_begin / _rank / _commit, ckpt_load; runtime/ckpt_shard.h;
 * issue 14), in one process, without MPI:
 *   - a (dp, ep) = (4, 2) save, each "rank" writing the row blocks it owns of its own table
 *     (params_select of its EP slice), loads back into the whole table bit for bit, and into
 *     the selection of any other layout (ep 1, 2, 4) bit for bit;
 *   - the blocks of all ranks cover every row of every tensor once (checked by the loader;
 *     here also directly);
 *   - a file claiming rows it does not hold (manifest and file disagree) is refused;
 *   - a format-1 manifest (no row blocks, whole tensors) is still read;
 *   - a pipeline save (pp 2: stage 0 with the embedding, stage 1 with the head, the MTP module
 *     and an embedding copy; each tensor written by its first holder, runtime/train_pp.h)
 *     loads back into the whole table and into each stage's table (a filtered selection
 *     reading from files that hold other stages' tensors), with and without an EP slice,
 *     bit for bit.
 */
#include <string.h>
#include <sys/stat.h>

#include "checkpoint/manifest.h"
#include "model/stage.h"
#include "runtime/ckpt_shard.h"
#include "runtime/common.h"
#include "runtime/config.h"
#include "testing.h"

static char root[64];

static void tiny(Config *cfg)
{
    config_defaults(cfg);
    ModelConfig *c = &cfg->model;
    c->vocab_size = 40, c->hidden_size = 16, c->intermediate_size = 24, c->moe_intermediate_size = 8;
    c->num_hidden_layers = 2, c->first_k_dense_replace = 1, c->num_attention_heads = 2;
    c->n_routed_experts = 8, c->n_shared_experts = 1, c->num_experts_per_tok = 2, c->n_group = 2, c->topk_group = 1;
    c->q_lora_rank = 8, c->kv_lora_rank = 8, c->qk_nope_head_dim = 4, c->qk_rope_head_dim = 4, c->v_head_dim = 4;
    c->num_nextn_predict_layers = 1;
    config_validate(cfg);
}

/* dst (t's layout) <- src (full's layout), entry by global index */
static void gather_into(const ParamTable *t, const ParamTable *full, const float *src, float *dst)
{
    for (int i = 0; i < t->n; i++)
        memcpy(dst + t->p[i].offset, src + full->p[t->p[i].index].offset, t->p[i].numel * sizeof(float));
}

typedef struct Whole {
    ParamTable t;
    float *a[3];        /* params, exp_avg, exp_avg_sq (t.total each) */
    char *text;
    CkptState st;
} Whole;

/* Save `w` as a (dp, ep) job would: every rank its file, then rank 0's commit. */
static int save_as(const Whole *w, const ModelConfig *c, int dp, int ep, const char *run, char *err, size_t n)
{
    const int nl = c->n_routed_experts / ep;
    ParamTable *tabs = xcalloc((size_t)dp, sizeof *tabs);
    float **bufs = xcalloc(3 * (size_t)dp, sizeof *bufs);
    long long *blocks = xcalloc(2 * (size_t)dp * w->t.n, sizeof(long long));
    CkptRankFile *files = xcalloc((size_t)dp, sizeof *files);
    CkptRequest q = { .run_dir = run, .config_text = w->text, .state = w->st,
                      .layout = { dp, 1, dp, ep } };
    int rc = ckpt_save_begin(run, w->st.step, err, n);
    for (int r = 0; rc == 0 && r < dp; r++) {
        params_select(&tabs[r], &w->t, ep > 1 ? (r % ep) * nl : 0, ep > 1 ? nl : c->n_routed_experts, NULL, NULL);
        for (int k = 0; k < 3; k++) {
            bufs[3 * r + k] = xcalloc(tabs[r].total, sizeof(float));
            gather_into(&tabs[r], &w->t, w->a[k], bufs[3 * r + k]);
        }
        long long *start = blocks + 2 * (size_t)r * w->t.n, *count = start + w->t.n;
        ckpt_shard_blocks(&tabs[r], dp, r, ep, start, count);
        q.table = &tabs[r], q.rank = r, q.row_start = start, q.row_count = count;
        q.params = bufs[3 * r], q.adam_m = bufs[3 * r + 1], q.adam_v = bufs[3 * r + 2];
        files[r] = (CkptRankFile){ r, 0, 0, &tabs[r], start, count };
        rc = ckpt_save_rank(&q, &files[r].bytes, &files[r].checksum, err, n);
    }
    if (rc == 0) rc = ckpt_save_commit(&q, files, dp, err, n);
    for (int r = 0; r < dp; r++) {
        if (tabs[r].p) params_free(&tabs[r]);
        for (int k = 0; k < 3; k++) free(bufs[3 * r + k]);
    }
    free(tabs);
    free(bufs);
    free(blocks);
    free(files);
    return rc;
}

/* Load dir into the (ep_size, ep_rank) selection and compare with w. */
static void load_as(const Whole *w, const ModelConfig *c, const char *dir, int ep, int r)
{
    const int nl = c->n_routed_experts / ep;
    ParamTable t;
    params_select(&t, &w->t, ep > 1 ? r * nl : 0, ep > 1 ? nl : c->n_routed_experts, NULL, NULL);
    float *got[3], *want[3];
    for (int k = 0; k < 3; k++) {
        got[k] = xcalloc(t.total, sizeof(float));
        want[k] = xcalloc(t.total, sizeof(float));
        gather_into(&t, &w->t, w->a[k], want[k]);
    }
    CkptState s;
    char err[1024];
    int rc = ckpt_load(dir, &t, got[0], got[1], got[2], &s, err, sizeof err);
    EXPECT(rc == 0, "load at ep %d rank %d: %s", ep, r, err);
    int same = rc == 0 && s.step == w->st.step && s.tokens == w->st.tokens && s.rng == w->st.rng;
    for (int k = 0; k < 3; k++) same = same && !memcmp(got[k], want[k], t.total * sizeof(float));
    EXPECT(same, "ep %d rank %d: loaded values or state differ", ep, r);
    for (int k = 0; k < 3; k++) {
        free(got[k]);
        free(want[k]);
    }
    params_free(&t);
}

static int keep_stage(const Param *p, void *arg)
{
    const void **a = arg;
    return stage_holds(a[0], a[1], p);
}

/* Stage s of 2 over c's layers, as a table (of EP rank r of ep). */
static void stage_table(ParamTable *t, const ParamTable *full, const ModelConfig *c, int s, int ep, int r)
{
    StageSpec sp;
    stage_split(c->num_hidden_layers, 2, s, &sp);
    const void *arg[2] = { &sp, c };
    const int nl = c->n_routed_experts / ep;
    params_select(t, full, ep > 1 ? r * nl : 0, ep > 1 ? nl : c->n_routed_experts, keep_stage, arg);
}

/* Save `w` as a pp 2 job would (dp 1): stage s's rank writes the tensors no earlier stage
 * holds, whole. */
static int save_pp(const Whole *w, const ModelConfig *c, const char *run, char *err, size_t n)
{
    ParamTable tabs[2];
    float *bufs[6];
    long long *blocks = xcalloc(4 * (size_t)w->t.n, sizeof(long long));
    CkptRankFile files[2];
    CkptRequest q = { .run_dir = run, .config_text = w->text, .state = w->st, .layout = { 2, 2, 1, 1 } };
    int rc = ckpt_save_begin(run, w->st.step, err, n);
    for (int r = 0; r < 2; r++) {
        stage_table(&tabs[r], &w->t, c, r, 1, 0);
        for (int k = 0; k < 3; k++) {
            bufs[3 * r + k] = xcalloc(tabs[r].total, sizeof(float));
            gather_into(&tabs[r], &w->t, w->a[k], bufs[3 * r + k]);
        }
        long long *start = blocks + 2 * (size_t)r * w->t.n, *count = start + w->t.n;
        ckpt_shard_blocks(&tabs[r], 1, 0, 1, start, count);
        for (int i = 0; r == 1 && i < tabs[1].n; i++)
            if (params_find(&tabs[0], tabs[1].p[i].name)) start[i] = count[i] = 0;
        q.table = &tabs[r], q.rank = r, q.row_start = start, q.row_count = count;
        q.params = bufs[3 * r], q.adam_m = bufs[3 * r + 1], q.adam_v = bufs[3 * r + 2];
        files[r] = (CkptRankFile){ r, 0, 0, &tabs[r], start, count };
        if (rc == 0) rc = ckpt_save_rank(&q, &files[r].bytes, &files[r].checksum, err, n);
    }
    if (rc == 0) rc = ckpt_save_commit(&q, files, 2, err, n);
    for (int r = 0; r < 2; r++) {
        params_free(&tabs[r]);
        for (int k = 0; k < 3; k++) free(bufs[3 * r + k]);
    }
    free(blocks);
    return rc;
}

/* Load dir into stage s's table (of EP rank r of ep) and compare with w. */
static void load_stage(const Whole *w, const ModelConfig *c, const char *dir, int s, int ep, int r)
{
    ParamTable t;
    stage_table(&t, &w->t, c, s, ep, r);
    float *got[3], *want[3];
    for (int k = 0; k < 3; k++) {
        got[k] = xcalloc(t.total, sizeof(float));
        want[k] = xcalloc(t.total, sizeof(float));
        gather_into(&t, &w->t, w->a[k], want[k]);
    }
    char err[1024];
    int rc = ckpt_load(dir, &t, got[0], got[1], got[2], NULL, err, sizeof err);
    EXPECT(rc == 0 && t.filtered && t.n < w->t.n, "load into stage %d (ep %d rank %d): %s", s, ep, r, err);
    int same = rc == 0;
    for (int k = 0; k < 3; k++) same = same && !memcmp(got[k], want[k], t.total * sizeof(float));
    EXPECT(same, "stage %d (ep %d rank %d): loaded values differ", s, ep, r);
    for (int k = 0; k < 3; k++) {
        free(got[k]);
        free(want[k]);
    }
    params_free(&t);
}

int main(void)
{
    unsigned long long seed = test_seed();
    snprintf(root, sizeof root, "/tmp/dstrain_test_reshard_XXXXXX");
    CHECK(mkdtemp(root));
    Config cfg;
    tiny(&cfg);
    Whole w;
    memset(&w, 0, sizeof w);
    params_build(&w.t, &cfg.model);
    Rng rng;
    rng_seed(&rng, seed);
    for (int k = 0; k < 3; k++) {
        w.a[k] = xcalloc(w.t.total, sizeof(float));
        for (size_t i = 0; i < w.t.total; i++) w.a[k][i] = rng_normal(&rng);
    }
    size_t len;
    FILE *mem = open_memstream(&w.text, &len);
    config_write(&cfg, mem);
    fclose(mem);
    w.st = (CkptState){ .step = 7, .tokens = 4242, .data = { 11, 22 }, .rng = 33 };

    /* every row once: the blocks of a (4, 2) layout's ranks, summed per tensor */
    long long *rows = xcalloc((size_t)w.t.n, sizeof(long long));
    for (int r = 0; r < 4; r++) {
        ParamTable t;
        params_select(&t, &w.t, (r % 2) * 4, 4, NULL, NULL);
        long long *st = xcalloc(2 * (size_t)t.n, sizeof(long long)), *cn = st + t.n;
        ckpt_shard_blocks(&t, 4, r, 2, st, cn);
        for (int i = 0; i < t.n; i++) rows[t.p[i].index] += cn[i];
        free(st);
        params_free(&t);
    }
    int bad = 0;
    for (int i = 0; i < w.t.n; i++) bad += rows[i] != w.t.p[i].rows;
    EXPECT(!bad, "%d tensors not covered exactly once by the (4, 2) blocks", bad);
    free(rows);

    char err[1024], *run = xasprintf("%s/run", root), *dir = xasprintf("%s/ckpt-7", run);
    EXPECT(save_as(&w, &cfg.model, 4, 2, run, err, sizeof err) == 0, "(4, 2) save: %s", err);
    EXPECT(ckpt_verify(dir, err, sizeof err) == 0, "verify: %s", err);
    load_as(&w, &cfg.model, dir, 1, 0);                         /* one rank: the whole table */
    for (int ep = 2; ep <= 4; ep *= 2)
        for (int r = 0; r < ep; r++) load_as(&w, &cfg.model, dir, ep, r);

    /* a manifest claiming other rows than its file holds: rank 1's blocks shifted by one row */
    CkptManifest m;
    CHECK(ckpt_manifest_read(dir, &m, err, sizeof err) == 0);
    CkptManifestFile *f1 = (CkptManifestFile *)ckpt_manifest_rank_file(&m, 1);
    for (int k = 0; k < f1->n_tensors; k++)
        if (f1->row_start[k] > 0) {
            f1->row_start[k]--;
            break;
        }
    char *bad_dir = xasprintf("%s/bad/ckpt-7", root);
    mkdir_p(bad_dir);
    for (int r = 0; r < 4; r++) {
        char *cmd = xasprintf("cp %s/rank-%05d.h5 %s/", dir, r, bad_dir);
        CHECK(system(cmd) == 0);
        free(cmd);
    }
    CHECK(ckpt_manifest_write(bad_dir, &m, err, sizeof err) == 0);
    float *p = xcalloc(w.t.total, sizeof(float));
    EXPECT(ckpt_load(bad_dir, &w.t, p, NULL, NULL, NULL, err, sizeof err) != 0 && strstr(err, "rank-00001.h5"),
           "shifted block accepted: %s", err);

    /* format 1: the same one-rank checkpoint with a manifest of whole tensors, no row blocks */
    CkptRequest q = { .run_dir = run, .config_text = w.text, .table = &w.t, .params = w.a[0], .adam_m = w.a[1],
                      .adam_v = w.a[2], .state = w.st };
    q.state.step = 8;
    char *d8 = xasprintf("%s/ckpt-8", run);
    CHECK(ckpt_save(&q, err, sizeof err) == 0);
    CkptManifest m8;
    CHECK(ckpt_manifest_read(d8, &m8, err, sizeof err) == 0);
    m8.format_version = 1;
    CHECK(ckpt_manifest_write(d8, &m8, err, sizeof err) == 0);
    w.st.step = 8;
    load_as(&w, &cfg.model, d8, 1, 0);
    load_as(&w, &cfg.model, d8, 4, 3);

    /* pipelines: pp 2's files, loaded by the whole table and by every stage */
    w.st.step = 9;
    char *d9 = xasprintf("%s/ckpt-9", run);
    EXPECT(save_pp(&w, &cfg.model, run, err, sizeof err) == 0, "pp 2 save: %s", err);
    load_as(&w, &cfg.model, d9, 1, 0);
    load_as(&w, &cfg.model, d9, 2, 1);
    for (int s = 0; s < 2; s++) {
        load_stage(&w, &cfg.model, d9, s, 1, 0);
        load_stage(&w, &cfg.model, d9, s, 2, 1);
    }
    load_stage(&w, &cfg.model, dir, 1, 4, 2);   /* and a stage of the (4, 2) save */
    free(d9);

    ckpt_manifest_free(&m);
    ckpt_manifest_free(&m8);
    free(p);
    free(run);
    free(dir);
    free(bad_dir);
    free(d8);
    for (int k = 0; k < 3; k++) free(w.a[k]);
    free(w.text);
    params_free(&w.t);
    if (!test_failed) {
        char *cmd = xasprintf("rm -rf %s", root);
        CHECK(system(cmd) == 0);
        free(cmd);
    }
    return test_finish();
}
