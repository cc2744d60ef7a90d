/* checkpoint/hf_export.c - the Hugging Face export directory: config.json and the sharded
 * safetensors files (layout in safetensors.h).
 * Not here: the safetensors byte format (safetensors.c) or reading a checkpoint (ckpt_stream.c).
 * Reference: transformers' DeepseekV3Config field names; the published DeepSeek-V3 model
 * directory (index file, per-expert tensor names, MTP as layer num_hidden_layers). */
#define _GNU_SOURCE
#include "safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fsio.h"

#define INDEX_NAME "model.safetensors.index.json"

/* ---- config.json ---- */

/* One setter per X-macro type (a type no key uses yet is not an error). */
#define MAYBE_UNUSED __attribute__((unused))

MAYBE_UNUSED static void set_INT(json_t *o, const char *k, int v) { json_object_set_new(o, k, json_integer(v)); }
MAYBE_UNUSED static void set_I64(json_t *o, const char *k, long long v) { json_object_set_new(o, k, json_integer(v)); }
MAYBE_UNUSED static void set_F64(json_t *o, const char *k, double v) { json_object_set_new(o, k, json_real(v)); }
MAYBE_UNUSED static void set_BOOL(json_t *o, const char *k, int v) { json_object_set_new(o, k, json_boolean(v)); }
MAYBE_UNUSED static void set_STR(json_t *o, const char *k, const char *v) { json_object_set_new(o, k, json_string(v)); }

static json_t *rope_scaling_json(const RopeScaling *r)
{
    if (!strcmp(r->type, "none")) return json_null();
    json_t *o = json_object();
    set_STR(o, "type", r->type);
    set_STR(o, "rope_type", r->type);   /* newer transformers read rope_type, older type */
#define HF_ROPE_KEY(type, key, def, help) if (strcmp(#key, "type")) set_##type(o, #key, r->key);
    ROPE_SCALING_KEYS(HF_ROPE_KEY)
#undef HF_ROPE_KEY
    /* the cos/sin scale, explicit: transformers derives another one when mscale or
     * mscale_all_dim is 0 (SPEC.md section 3) */
    set_F64(o, "attention_factor", rope_yarn_table_scale(r));
    return o;
}

/* Every [model] key under its own (HF) name, then the keys whose HF meaning differs from
 * ours, then DeepseekV3Config fields dstrain fixes by construction. */
static json_t *config_json(const ModelConfig *c)
{
    json_t *o = json_object();
    json_object_set_new(o, "architectures", json_pack("[s]", "DeepseekV3ForCausalLM"));
    set_STR(o, "model_type", "deepseek_v3");
#define HF_MODEL_KEY(type, key, def, help) set_##type(o, #key, c->key);
    MODEL_KEYS(HF_MODEL_KEY)
#undef HF_MODEL_KEY
    json_object_del(o, "attention");   /* ours: mla or gqa; an exported model is always MLA */
    if (c->q_lora_rank == 0) json_object_set_new(o, "q_lora_rank", json_null());
    set_INT(o, "num_key_value_heads", c->num_attention_heads);   /* MLA: one latent for all heads */
    set_INT(o, "head_dim", c->qk_rope_head_dim);                 /* DeepseekV3Config's definition */
    json_object_set_new(o, "rope_scaling", rope_scaling_json(&c->rope_scaling));
    set_BOOL(o, "rope_interleave", 1);     /* RoPE rotates pairs (x[2j], x[2j+1]) (model/rope.c) */
    set_STR(o, "topk_method", "noaux_tc"); /* bias-adjusted group-limited top-k (SPEC.md section 4) */
    set_STR(o, "scoring_func", "sigmoid");
    set_INT(o, "moe_layer_freq", 1);
    set_INT(o, "ep_size", 1);
    set_STR(o, "hidden_act", "silu");
    set_BOOL(o, "attention_bias", 0);
    set_F64(o, "attention_dropout", 0.0);
    set_INT(o, "pretraining_tp", 1);
    set_BOOL(o, "use_cache", 1);
    json_object_set_new(o, "bos_token_id", json_null());   /* dstrain's vocabularies have no special tokens */
    json_object_set_new(o, "eos_token_id", json_null());
    json_object_set_new(o, "pad_token_id", json_null());
    set_STR(o, "torch_dtype", "float32");
    return o;
}

int hf_write_config(const char *path, const ModelConfig *c, char *err, size_t errlen)
{
    json_t *o = config_json(c);
    char *text = o ? json_dumps(o, JSON_INDENT(2)) : NULL;
    json_decref(o);
    if (!text) return ckpt_fail(err, errlen, "cannot build '%s'", path);
    size_t len = strlen(text);
    char *with_nl = realloc(text, len + 2);
    if (!with_nl) {
        free(text);
        return ckpt_fail(err, errlen, "out of memory");
    }
    with_nl[len] = '\n';
    with_nl[len + 1] = 0;
    int rc = fsio_write_durable(path, with_nl, len + 1, err, errlen);
    free(with_nl);
    return rc;
}

/* ---- shards ---- */

/* The tensors of one file: their entries and where their values come from. */
typedef struct Source {
    HfFetch fetch;
    void *ctx;
    const Param **p;            /* (n) table entries, file order */
} Source;

static int source_of(void *ctx, int i, const float **data, char *err, size_t errlen)
{
    const Source *s = ctx;
    return s->fetch(s->ctx, s->p[i], data, err, errlen);
}

/* The table entries [first, last) with mtp == want as one safetensors file (none: no file). */
static int write_entries(const char *path, const ParamTable *t, const Source *src, int first, int last, int want,
                         char *err, size_t errlen)
{
    StTensor *list = calloc((size_t)(last - first) + 1, sizeof *list);
    Source s = *src;
    s.p = calloc((size_t)(last - first) + 1, sizeof *s.p);
    int n = 0, rc = list && s.p ? 0 : ckpt_fail(err, errlen, "out of memory");
    for (int i = first; rc == 0 && i < last; i++) {
        const Param *p = &t->p[i];
        if (p->mtp != want) continue;
        list[n] = (StTensor){ p->name, p->ndim, { p->rows, p->cols }, NULL };
        s.p[n++] = p;
    }
    if (rc == 0 && n > 0) rc = st_write_stream(path, list, n, source_of, &s, err, errlen);
    free(s.p);
    free(list);
    return rc;
}

/* Remove what an earlier export into the same directory may have left: a stale index next
 * to a new single file (or the reverse) would make transformers load the wrong weights. */
static int remove_stale(const char *dir, char *err, size_t errlen)
{
    DIR *d = opendir(dir);
    if (!d) return ckpt_fail(err, errlen, "cannot list '%s': %s", dir, strerror(errno));
    struct dirent *e;
    int rc = 0;
    char path[4096];
    while (rc == 0 && (e = readdir(d))) {
        unsigned a, b;
        char tail[32];
        int ours = !strcmp(e->d_name, "model.safetensors") || !strcmp(e->d_name, INDEX_NAME) ||
                   !strcmp(e->d_name, "mtp.safetensors") ||
                   (sscanf(e->d_name, "model-%5u-of-%5u.%31s", &a, &b, tail) == 3 && !strcmp(tail, "safetensors"));
        if (!ours) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (unlink(path) != 0) rc = ckpt_fail(err, errlen, "cannot remove '%s': %s", path, strerror(errno));
    }
    closedir(d);
    return rc;
}

/* Greedy: a shard closes when the next tensor would take it past shard_bytes (a tensor
 * larger than shard_bytes gets a shard of its own). starts[k] is shard k's first index. */
static int plan_shards(const ParamTable *t, size_t shard_bytes, int *starts)
{
    int n = 0;
    size_t used = 0;
    for (int i = 0; i < t->n; i++) {
        if (t->p[i].mtp) continue;
        size_t bytes = t->p[i].numel * sizeof(float);
        if (n == 0 || (used > 0 && used + bytes > shard_bytes)) {
            starts[n++] = i;
            used = 0;
        }
        used += bytes;
    }
    starts[n] = t->n;
    return n;
}

static int write_index(const char *dir, const ParamTable *t, const int *starts, int n_shards, char *err, size_t errlen)
{
    json_t *map = json_object();
    size_t total = 0;
    char file[64], path[4096];
    for (int k = 0; k < n_shards; k++) {
        snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", k + 1, n_shards);
        for (int i = starts[k]; i < starts[k + 1]; i++) {
            if (t->p[i].mtp) continue;
            json_object_set_new(map, t->p[i].name, json_string(file));
            total += t->p[i].numel * sizeof(float);
        }
    }
    json_t *root = json_pack("{s:{s:I}, s:o}", "metadata", "total_size", (json_int_t)total, "weight_map", map);
    char *text = root ? json_dumps(root, JSON_INDENT(2)) : NULL;
    json_decref(root);
    snprintf(path, sizeof path, "%s/%s", dir, INDEX_NAME);
    int rc = text ? fsio_write_durable(path, text, strlen(text), err, errlen)
                  : ckpt_fail(err, errlen, "cannot build '%s'", path);
    free(text);
    return rc;
}

static int write_main(const char *dir, const ParamTable *t, const Source *src, size_t shard_bytes, char *err,
                      size_t errlen)
{
    int *starts = calloc((size_t)t->n + 2, sizeof *starts);
    if (!starts) return ckpt_fail(err, errlen, "out of memory");
    int n = plan_shards(t, shard_bytes, starts), rc = 0;
    char path[4096];
    if (n <= 1) {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        rc = write_entries(path, t, src, 0, t->n, 0, err, errlen);
    }
    for (int k = 0; n > 1 && rc == 0 && k < n; k++) {
        snprintf(path, sizeof path, "%s/model-%05d-of-%05d.safetensors", dir, k + 1, n);
        rc = write_entries(path, t, src, starts[k], starts[k + 1], 0, err, errlen);
    }
    if (n > 1 && rc == 0) rc = write_index(dir, t, starts, n, err, errlen);
    free(starts);
    return rc;
}

/* transformers' DeepseekV3 router scores a group by the sum of its 2 best experts (fixed,
 * as DeepSeek-V3's K = 8 over topk_group = 4 gives); dstrain by its K / topk_group best
 * (SPEC.md section 4). They agree when that is 2 or when no group is ever dropped
 * (topk_group = n_group), and transformers needs groups of at least 2 experts. */
int hf_check_router(const char *verb, const ModelConfig *c, char *err, size_t errlen)
{
    int moe = c->first_k_dense_replace < c->num_hidden_layers || c->num_nextn_predict_layers > 0;
    if (!moe) return 0;
    int group = c->n_routed_experts / c->n_group, m = c->num_experts_per_tok / c->topk_group;
    if (group < 2)
        return ckpt_fail(err, errlen, "%s: groups of %d expert (n_routed_experts / n_group = %d / %d) cannot "
                         "run in transformers' DeepseekV3, which takes the top 2 of each group", verb, group,
                         c->n_routed_experts, c->n_group);
    if (c->topk_group < c->n_group && m != 2)
        return ckpt_fail(err, errlen, "%s: this model scores an expert group by its %d best experts "
                         "(num_experts_per_tok / topk_group = %d / %d), transformers' DeepseekV3 by its 2 best, so "
                         "it would route tokens differently (use num_experts_per_tok = 2 * topk_group, or "
                         "topk_group = n_group)", verb, m, c->num_experts_per_tok, c->topk_group);
    return 0;
}

static int fetch_flat(void *ctx, const Param *p, const float **data, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    *data = (const float *)ctx + p->offset;
    return 0;
}

int hf_export(const char *out_dir, const ModelConfig *c, const ParamTable *t, const float *params,
              size_t shard_bytes, char *err, size_t errlen)
{
    return hf_export_stream(out_dir, c, t, fetch_flat, (void *)params, shard_bytes, err, errlen);
}

int hf_export_stream(const char *out_dir, const ModelConfig *c, const ParamTable *t, HfFetch fetch, void *ctx,
                     size_t shard_bytes, char *err, size_t errlen)
{
    char path[4096], mtp[4096];
    Source src = { fetch, ctx, NULL };
    if (strcmp(c->attention, "mla"))
        return ckpt_fail(err, errlen, "export: 'model.attention' = '%s' has no DeepseekV3 form (only mla)",
                         c->attention);
    if (c->tie_word_embeddings) return ckpt_fail(err, errlen, "export: tied embeddings are not supported");
    if (hf_check_router("export", c, err, errlen)) return -1;
    if (shard_bytes == 0) shard_bytes = HF_DEFAULT_SHARD_BYTES;
    if (snprintf(path, sizeof path, "%s/config.json", out_dir) >= (int)sizeof path ||
        snprintf(mtp, sizeof mtp, "%s/mtp.safetensors", out_dir) >= (int)sizeof mtp)
        return ckpt_fail(err, errlen, "path too long: '%s'", out_dir);
    if (fsio_mkdirs(out_dir, err, errlen) || remove_stale(out_dir, err, errlen)) return -1;
    if (write_main(out_dir, t, &src, shard_bytes, err, errlen) || write_entries(mtp, t, &src, 0, t->n, 1, err, errlen))
        return -1;
    if (hf_write_config(path, c, err, errlen)) return -1;
    return fsio_fsync_dir(out_dir, err, errlen);
}
