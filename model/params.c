/* model/params.c - builds the parameter table (see params.h for the order and names).
 * Not here: any tensor memory; the model allocates the flat buffers from t->total.
 *
 * attention = "gqa" (dense Llama-style models, for dstrain plan) replaces a block's MLA
 * tensors with Hugging Face Llama names and makes every FFN dense:
 *   self_attn.q_proj (H*hd,C) k_proj (KV*hd,C) v_proj (KV*hd,C) o_proj (C,H*hd),
 *   mlp.{gate_proj,up_proj} (I,C), mlp.down_proj (C,I)   (hd = head_dim, KV = kv heads)
 * An MTP module of a gqa model (only if num_nextn_predict_layers > 0) wraps such a block. */
#include "params.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/common.h"
#include "flops.h"

/* count_only: entries and floats are counted, nothing is stored (params_measure). */
typedef struct Builder { ParamTable *t; int cap; int count_only; size_t n, routed; } Builder;

static void add(Builder *b, ParamRole role, ParamInit init, int decay, int layer, int expert,
                int mtp, long rows, long cols, const char *fmt, ...) __attribute__((format(printf, 10, 11)));

static void add(Builder *b, ParamRole role, ParamInit init, int decay, int layer, int expert,
                int mtp, long rows, long cols, const char *fmt, ...)
{
    ParamTable *t = b->t;
    CHECK(rows > 0 && cols >= 0);
    if (b->count_only) {
        b->n++;
        t->total += (size_t)rows * (size_t)(cols ? cols : 1);
        return;
    }
    if (t->n == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 256;
        t->p = realloc(t->p, (size_t)b->cap * sizeof(Param));
        if (!t->p) DIE("out of memory building the parameter table");
    }
    Param *p = &t->p[t->n++];
    memset(p, 0, sizeof *p);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(p->name, sizeof p->name, fmt, ap);
    va_end(ap);
    CHECK(n > 0 && n < (int)sizeof p->name);
    p->ndim = cols == 0 ? 1 : 2;   /* cols 0: a vector of rows values */
    p->rows = rows;
    p->cols = cols ? cols : 1;
    p->numel = (size_t)p->rows * (size_t)p->cols;
    p->offset = t->total;
    p->role = role;
    p->init = init;
    p->decay = decay;
    p->trained = 1;
    p->layer = layer;
    p->expert = expert;
    p->mtp = mtp;
    p->index = t->n - 1;
    p->global_offset = p->offset;
    t->total += p->numel;
}

/* SwiGLU triple: gate_proj and up_proj adjacent (fused [gate|up] GEMM), then down_proj. */
static void add_swiglu(Builder *b, ParamRole role, int layer, int expert, int mtp, long C, long hidden,
                       const char *prefix)
{
    add(b, role, INIT_NORMAL, 1, layer, expert, mtp, hidden, C, "%s.gate_proj.weight", prefix);
    add(b, role, INIT_NORMAL, 1, layer, expert, mtp, hidden, C, "%s.up_proj.weight", prefix);
    add(b, role, INIT_NORMAL, 1, layer, expert, mtp, C, hidden, "%s.down_proj.weight", prefix);
}

/* A dense GQA/MHA block (Llama layout): attention without biases, SwiGLU FFN on every layer. */
static void add_gqa_block(Builder *b, const ModelConfig *c, int l, int mtp, const char *pre)
{
    const AttnDims a = flops_attn_dims(c);
    const long C = c->hidden_size, H = a.heads, KV = a.kv_heads, hd = a.head_dim;
    add(b, ROLE_NORM, INIT_ONES, 0, l, -1, mtp, C, 0, "%s.input_layernorm.weight", pre);
    add(b, ROLE_ATTN, INIT_NORMAL, 1, l, -1, mtp, H * hd, C, "%s.self_attn.q_proj.weight", pre);
    add(b, ROLE_ATTN, INIT_NORMAL, 1, l, -1, mtp, KV * hd, C, "%s.self_attn.k_proj.weight", pre);
    add(b, ROLE_ATTN, INIT_NORMAL, 1, l, -1, mtp, KV * hd, C, "%s.self_attn.v_proj.weight", pre);
    add(b, ROLE_ATTN, INIT_NORMAL, 1, l, -1, mtp, C, H * hd, "%s.self_attn.o_proj.weight", pre);
    add(b, ROLE_NORM, INIT_ONES, 0, l, -1, mtp, C, 0, "%s.post_attention_layernorm.weight", pre);
    char mlp[PARAM_NAME_MAX];
    snprintf(mlp, sizeof mlp, "%s.mlp", pre);
    add_swiglu(b, ROLE_DENSE_FFN, l, -1, mtp, C, c->intermediate_size, mlp);
}

/* One transformer block (attention + FFN) at layer index l; MTP blocks are MoE blocks. */
static void add_block(Builder *b, const ModelConfig *c, int l, int mtp)
{
    const long C = c->hidden_size, H = c->num_attention_heads;
    const long Dn = c->qk_nope_head_dim, Dr = c->qk_rope_head_dim, Dv = c->v_head_dim;
    const long Rq = c->q_lora_rank, Rkv = c->kv_lora_rank;
    char pre[32];
    snprintf(pre, sizeof pre, "model.layers.%d", l);
    if (flops_attn_dims(c).gqa) {
        add_gqa_block(b, c, l, mtp, pre);
        return;
    }

    add(b, ROLE_NORM, INIT_ONES, 0, l, -1, mtp, C, 0, "%s.input_layernorm.weight", pre);
    if (Rq > 0) {
        add(b, ROLE_ATTN, INIT_NORMAL, 1, l, -1, mtp, Rq, C, "%s.self_attn.q_a_proj.weight", pre);
        add(b, ROLE_NORM, INIT_ONES, 0, l, -1, mtp, Rq, 0, "%s.self_attn.q_a_layernorm.weight", pre);
        add(b, ROLE_ATTN, INIT_NORMAL, 1, l, -1, mtp, H * (Dn + Dr), Rq, "%s.self_attn.q_b_proj.weight", pre);
    } else {
        add(b, ROLE_ATTN, INIT_NORMAL, 1, l, -1, mtp, H * (Dn + Dr), C, "%s.self_attn.q_proj.weight", pre);
    }
    add(b, ROLE_ATTN, INIT_NORMAL, 1, l, -1, mtp, Rkv + Dr, C, "%s.self_attn.kv_a_proj_with_mqa.weight", pre);
    add(b, ROLE_NORM, INIT_ONES, 0, l, -1, mtp, Rkv, 0, "%s.self_attn.kv_a_layernorm.weight", pre);
    add(b, ROLE_ATTN, INIT_NORMAL, 1, l, -1, mtp, H * (Dn + Dv), Rkv, "%s.self_attn.kv_b_proj.weight", pre);
    add(b, ROLE_ATTN, INIT_NORMAL, 1, l, -1, mtp, C, H * Dv, "%s.self_attn.o_proj.weight", pre);
    add(b, ROLE_NORM, INIT_ONES, 0, l, -1, mtp, C, 0, "%s.post_attention_layernorm.weight", pre);

    if (!mtp && l < c->first_k_dense_replace) {
        char mlp[PARAM_NAME_MAX];
        snprintf(mlp, sizeof mlp, "%s.mlp", pre);
        add_swiglu(b, ROLE_DENSE_FFN, l, -1, mtp, C, c->intermediate_size, mlp);
        return;
    }
    const long E = c->n_routed_experts, F = c->moe_intermediate_size;
    add(b, ROLE_ROUTER, INIT_NORMAL, 0, l, -1, mtp, E, C, "%s.mlp.gate.weight", pre);
    add(b, ROLE_ROUTER, INIT_ZEROS, 0, l, -1, mtp, E, 0, "%s.mlp.gate.e_score_correction_bias", pre);
    if (!b->count_only) b->t->p[b->t->n - 1].trained = 0;
    if (c->n_shared_experts > 0) {
        char sh[PARAM_NAME_MAX];
        snprintf(sh, sizeof sh, "%s.mlp.shared_experts", pre);
        add_swiglu(b, ROLE_SHARED_EXPERT, l, -1, mtp, C, (long)c->n_shared_experts * F, sh);
    }
    if (b->count_only) {
        /* the same three entries per expert as below, counted at once (E may be too large to
         * walk: measuring exists to refuse such a table before it is built) */
        b->n += 3 * (size_t)E;
        b->t->total += (size_t)E * 3 * (size_t)F * (size_t)C;
        b->routed += (size_t)E * 3 * (size_t)F * (size_t)C;
        return;
    }
    for (int e = 0; e < E; e++) {
        char ex[PARAM_NAME_MAX];
        snprintf(ex, sizeof ex, "%s.mlp.experts.%d", pre, e);
        add_swiglu(b, ROLE_ROUTED_EXPERT, l, e, mtp, C, F, ex);
    }
}

static void build(Builder *b, const ModelConfig *c);

void params_build(ParamTable *t, const ModelConfig *c)
{
    memset(t, 0, sizeof *t);
    Builder b = { t, 0, 0, 0, 0 };
    build(&b, c);
    t->expert_lo = 0;
    t->expert_n = c->n_routed_experts;
    t->n_replicated = t->total;
}

static int held(const Param *p, int lo, int n)
{
    return p->role != ROLE_ROUTED_EXPERT || (p->expert >= lo && p->expert < lo + n);
}

void params_select(ParamTable *out, const ParamTable *full, int expert_lo, int expert_n, ParamKeep keep, void *arg)
{
    memset(out, 0, sizeof *out);
    out->p = xcalloc((size_t)full->n + 1, sizeof(Param));
    out->expert_lo = expert_lo;
    out->expert_n = expert_n;
    out->selected = expert_lo != full->expert_lo || expert_n != full->expert_n;
    if (!out->selected && !keep) {
        memcpy(out->p, full->p, (size_t)full->n * sizeof(Param));
        out->n = full->n;
        out->total = out->n_replicated = full->total;
        return;
    }
    /* entries in offset order (the optimizer walks runs of adjacent entries): with every
     * expert held, table order (one region); otherwise the replicated ones, then the routed
     * experts held */
    const int passes = out->selected ? 2 : 1;
    for (int pass = 0; pass < passes; pass++) {
        for (int i = 0; i < full->n; i++) {
            const Param *q = &full->p[i];
            if (passes == 2 && (q->role == ROLE_ROUTED_EXPERT) != pass) continue;
            if (!held(q, expert_lo, expert_n)) continue;
            if (keep && !keep(q, arg)) {
                out->filtered = 1;
                continue;
            }
            Param *p = &out->p[out->n++];
            *p = *q;
            p->offset = out->total;
            out->total += p->numel;
        }
        if (pass == 0) out->n_replicated = out->total;
    }
}

void params_measure(const ModelConfig *c, size_t *entries, size_t *total)
{
    ParamTable t;
    memset(&t, 0, sizeof t);
    Builder b = { &t, 0, 1, 0, 0 };
    build(&b, c);
    *entries = b.n;
    *total = t.total;
}

size_t params_measure_routed(const ModelConfig *c)
{
    ParamTable t;
    memset(&t, 0, sizeof t);
    Builder b = { &t, 0, 1, 0, 0 };
    build(&b, c);
    return b.routed;
}

static void build(Builder *b, const ModelConfig *c)
{
    const long V = c->vocab_size, C = c->hidden_size;
    const int L = c->num_hidden_layers;

    add(b, ROLE_EMBED, INIT_NORMAL, 1, -1, -1, 0, V, C, "model.embed_tokens.weight");
    for (int l = 0; l < L; l++) add_block(b, c, l, 0);
    for (int k = 1; k <= c->num_nextn_predict_layers; k++) {
        int l = L + k - 1;
        add(b, ROLE_NORM, INIT_ONES, 0, l, -1, 1, C, 0, "model.layers.%d.enorm.weight", l);
        add(b, ROLE_NORM, INIT_ONES, 0, l, -1, 1, C, 0, "model.layers.%d.hnorm.weight", l);
        add(b, ROLE_MTP_PROJ, INIT_NORMAL, 1, l, -1, 1, C, 2 * C, "model.layers.%d.eh_proj.weight", l);
        add_block(b, c, l, 1);
        add(b, ROLE_NORM, INIT_ONES, 0, l, -1, 1, C, 0, "model.layers.%d.shared_head.norm.weight", l);
    }
    add(b, ROLE_NORM, INIT_ONES, 0, -1, -1, 0, C, 0, "model.norm.weight");
    add(b, ROLE_HEAD, INIT_NORMAL, 1, -1, -1, 0, V, C, "lm_head.weight");
}

void params_free(ParamTable *t)
{
    free(t->p);
    memset(t, 0, sizeof *t);
}

const Param *params_find(const ParamTable *t, const char *name)
{
    for (int i = 0; i < t->n; i++)
        if (strcmp(t->p[i].name, name) == 0) return &t->p[i];
    return NULL;
}

size_t params_offset(const ParamTable *t, int layer, const char *suffix)
{
    char name[PARAM_NAME_MAX];
    if (layer >= 0) snprintf(name, sizeof name, "model.layers.%d.%s", layer, suffix);
    else snprintf(name, sizeof name, "%s", suffix);
    const Param *p = params_find(t, name);
    if (!p) BUG("parameter '%s' is not in the table", name);
    return p->offset;
}

size_t params_count(const ParamTable *t, ParamRole role, int mtp)
{
    size_t n = 0;
    for (int i = 0; i < t->n; i++) {
        const Param *p = &t->p[i];
        if (role != ROLE_COUNT && p->role != role) continue;
        if (mtp >= 0 && p->mtp != mtp) continue;
        n += p->numel;
    }
    return n;
}

const char *params_role_name(ParamRole role)
{
    static const char *names[ROLE_COUNT] = {
        "embedding", "head", "attention", "dense_ffn", "shared_experts", "routed_experts",
        "router", "norms", "mtp_projection",
    };
    return role < ROLE_COUNT ? names[role] : "?";
}

WgtType params_compute_type(const Param *p, Precision prec)
{
    if (prec == PREC_FP32 || p->role == ROLE_ROUTER || p->role == ROLE_NORM || p->role == ROLE_EMBED)
        return WGT_FP32;
    if (prec == PREC_BF16 || p->role == ROLE_HEAD) return WGT_BF16;
    return WGT_FP8;
}

double params_active(const ParamTable *t, const ModelConfig *c)
{
    double routed = (double)params_count(t, ROLE_ROUTED_EXPERT, -1);
    double share = c->n_routed_experts > 0 ? (double)c->num_experts_per_tok / c->n_routed_experts : 0.0;
    return (double)params_count(t, ROLE_COUNT, -1) - routed + routed * share;
}

void params_init(const ParamTable *t, const ModelConfig *c, float *host, unsigned long long seed)
{
    const float std = (float)c->initializer_range;
    for (int i = 0; i < t->n; i++) {
        const Param *p = &t->p[i];
        float *w = host + p->offset;
        Rng r;
        rng_seed(&r, seed * 0x100000001B3ull + (unsigned long long)p->index * 0x9E3779B97F4A7C15ull);
        for (size_t j = 0; j < p->numel; j++) {
            switch (p->init) {
            case INIT_NORMAL: w[j] = std * rng_normal(&r); break;
            case INIT_ONES: w[j] = 1.0f; break;
            case INIT_ZEROS: w[j] = 0.0f; break;
            }
        }
    }
}
