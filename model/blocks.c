/* model/blocks.c - binding block weights by name, and planning block activations and the
 * shared backward scratch (sizes per layers.h). Not here: any computation. */
#include <stdio.h>
#include <string.h>

#include "layers.h"
#include "runtime/common.h"

void dims_from_config(Dims *d, const ModelConfig *c, int B, int T, int act_bytes)
{
    memset(d, 0, sizeof *d);
    d->B = B;
    d->T = T;
    d->N = B * T;
    d->C = c->hidden_size;
    d->H = c->num_attention_heads;
    d->Dn = c->qk_nope_head_dim;
    d->Dr = c->qk_rope_head_dim;
    d->Dv = c->v_head_dim;
    d->Dqk = d->Dn + d->Dr;
    d->Rq = c->q_lora_rank;
    d->Rkv = c->kv_lora_rank;
    d->E = c->n_routed_experts;
    d->K = c->num_experts_per_tok;
    d->F = c->moe_intermediate_size;
    d->Fs = c->n_shared_experts * c->moe_intermediate_size;
    d->I = c->intermediate_size;
    d->V = c->vocab_size;
    d->L = c->num_hidden_layers;
    d->D = c->num_nextn_predict_layers;
    d->R = d->N * d->K;
    d->act_bytes = act_bytes;
}

static float *at(const ParamTable *t, float *base, int layer, const char *suffix)
{
    return base + params_offset(t, layer, suffix);
}

/* The fused [gate; up] GEMM needs up_proj right after gate_proj (params.h guarantees it). */
static size_t gate_up_offset(const ParamTable *t, int layer, const char *prefix, size_t gate_numel)
{
    char g[PARAM_NAME_MAX], u[PARAM_NAME_MAX];
    snprintf(g, sizeof g, "%s.gate_proj.weight", prefix);
    snprintf(u, sizeof u, "%s.up_proj.weight", prefix);
    size_t og = params_offset(t, layer, g), ou = params_offset(t, layer, u);
    CHECK(ou == og + gate_numel);
    return og;
}

/* Binding a Linear weight: rows [r0, r0 + rows) of the table entry `name` of this layer. */
typedef struct Binder {
    Ops *o;
    const ParamTable *t;
    float *params;
    int layer;
    Arena *copies;
} Binder;

static const Param *find(const Binder *b, const char *name)
{
    char full[PARAM_NAME_MAX + 32];
    snprintf(full, sizeof full, "model.layers.%d.%s", b->layer, name);
    const Param *p = params_find(b->t, full);
    if (!p) BUG("parameter '%s' is not in the table", full);
    return p;
}

/* rows x p->cols floats of the flat buffer from `offset`, with p's compute type. */
static void bind_span(const Binder *b, Wgt *w, const Param *p, size_t offset, long rows)
{
    WgtType type = params_compute_type(p, b->o->precision);
    void *copy = arena_take(b->copies, b->o->weight_bytes(b->o, type, (int)rows, (int)p->cols));
    wgt_bind(w, b->o, b->params + offset, (int)rows, (int)p->cols, type, copy);
}

void param_bind_wgt(Wgt *w, Ops *o, const ParamTable *t, float *params, const char *name, Arena *copies)
{
    const Param *p = params_find(t, name);
    if (!p) BUG("parameter '%s' is not in the table", name);
    const Binder b = { o, t, params, -1, copies };
    bind_span(&b, w, p, p->offset, p->rows);
}

static void bind_rows(const Binder *b, Wgt *w, const char *name, long r0, long rows)
{
    const Param *p = find(b, name);
    CHECK(r0 >= 0 && r0 + rows <= p->rows);
    bind_span(b, w, p, p->offset + (size_t)r0 * p->cols, rows);
}

static void bind_linear(const Binder *b, Wgt *w, const char *name)
{
    bind_rows(b, w, name, 0, find(b, name)->rows);
}

/* [gate; up] of a SwiGLU as one (2h, C) weight (up_proj follows gate_proj in the table), and
 * its down_proj. */
static void bind_swiglu(const Binder *b, Wgt *gate_up, Wgt *down, const char *prefix, long hidden, long C)
{
    char g[PARAM_NAME_MAX], d[PARAM_NAME_MAX];
    snprintf(g, sizeof g, "%s.gate_proj.weight", prefix);
    snprintf(d, sizeof d, "%s.down_proj.weight", prefix);
    size_t og = gate_up_offset(b->t, b->layer, prefix, (size_t)hidden * C);
    bind_span(b, gate_up, find(b, g), og, 2 * hidden);
    bind_linear(b, down, d);
}

void block_bind(BlockWeights *w, Ops *o, const ParamTable *t, const ModelConfig *c, float *params, int layer,
                int moe, Arena *copies)
{
    Wgt *egu = w->expert_gate_up, *edown = w->expert_down;
    memset(w, 0, sizeof *w);
    const Binder b = { o, t, params, layer, copies };
    const long C = c->hidden_size, F = c->moe_intermediate_size, Rkv = c->kv_lora_rank;
    w->ln1 = at(t, params, layer, "input_layernorm.weight");
    if (c->q_lora_rank > 0) {
        bind_linear(&b, &w->q_a, "self_attn.q_a_proj.weight");
        w->q_a_norm = at(t, params, layer, "self_attn.q_a_layernorm.weight");
        bind_linear(&b, &w->q_b, "self_attn.q_b_proj.weight");
    } else {
        bind_linear(&b, &w->q_b, "self_attn.q_proj.weight");
    }
    bind_rows(&b, &w->kv_a_lat, "self_attn.kv_a_proj_with_mqa.weight", 0, Rkv);
    bind_rows(&b, &w->kv_a_rope, "self_attn.kv_a_proj_with_mqa.weight", Rkv, c->qk_rope_head_dim);
    w->kv_a_norm = at(t, params, layer, "self_attn.kv_a_layernorm.weight");
    bind_linear(&b, &w->kv_b, "self_attn.kv_b_proj.weight");
    bind_linear(&b, &w->o, "self_attn.o_proj.weight");
    w->ln2 = at(t, params, layer, "post_attention_layernorm.weight");
    if (!moe) {
        bind_swiglu(&b, &w->ffn_gate_up, &w->ffn_down, "mlp", c->intermediate_size, C);
        return;
    }
    bind_linear(&b, &w->router, "mlp.gate.weight");
    w->router_bias = at(t, params, layer, "mlp.gate.e_score_correction_bias");
    if (c->n_shared_experts > 0)
        bind_swiglu(&b, &w->shared_gate_up, &w->shared_down, "mlp.shared_experts", (long)c->n_shared_experts * F, C);
    CHECK(egu && edown);
    w->expert_gate_up = egu;
    w->expert_down = edown;
    for (int j = 0; j < t->expert_n; j++) {     /* local index j: routed expert expert_lo + j */
        char ex[PARAM_NAME_MAX];
        snprintf(ex, sizeof ex, "mlp.experts.%d", t->expert_lo + j);
        bind_swiglu(&b, &egu[j], &edown[j], ex, F, C);
        egu[j].act_pow2 = 1;    /* its input rows are the dispatch payload (kernels/ops.h Wgt) */
    }
}

int block_wgts(BlockWeights *w, int E, Wgt **list)
{
    Wgt *fixed[] = { &w->q_a, &w->q_b, &w->kv_a_lat, &w->kv_a_rope, &w->kv_b, &w->o, &w->ffn_gate_up,
                     &w->ffn_down, &w->router, &w->shared_gate_up, &w->shared_down };
    int n = 0;
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        if (fixed[i]->master) {
            if (list) list[n] = fixed[i];
            n++;
        }
    for (int e = 0; w->expert_gate_up && e < E; e++) {
        if (list) {
            list[n] = &w->expert_gate_up[e];
            list[n + 1] = &w->expert_down[e];
        }
        n += 2;
    }
    return n;
}

void block_bind_grads(BlockGrads *g, const ParamTable *t, const ModelConfig *c, float *base, int layer, int moe)
{
    memset(g, 0, sizeof *g);
    const size_t C = (size_t)c->hidden_size, F = (size_t)c->moe_intermediate_size;
    g->ln1 = at(t, base, layer, "input_layernorm.weight");
    if (c->q_lora_rank > 0) {
        g->q_a = at(t, base, layer, "self_attn.q_a_proj.weight");
        g->q_a_norm = at(t, base, layer, "self_attn.q_a_layernorm.weight");
        g->q_b = at(t, base, layer, "self_attn.q_b_proj.weight");
    } else {
        g->q_b = at(t, base, layer, "self_attn.q_proj.weight");
    }
    g->kv_a = at(t, base, layer, "self_attn.kv_a_proj_with_mqa.weight");
    g->kv_a_norm = at(t, base, layer, "self_attn.kv_a_layernorm.weight");
    g->kv_b = at(t, base, layer, "self_attn.kv_b_proj.weight");
    g->o = at(t, base, layer, "self_attn.o_proj.weight");
    g->ln2 = at(t, base, layer, "post_attention_layernorm.weight");
    if (!moe) {
        g->ffn_gate_up = base + gate_up_offset(t, layer, "mlp", (size_t)c->intermediate_size * C);
        g->ffn_down = at(t, base, layer, "mlp.down_proj.weight");
        return;
    }
    g->router = at(t, base, layer, "mlp.gate.weight");
    if (c->n_shared_experts > 0) {
        g->shared_gate_up = base + gate_up_offset(t, layer, "mlp.shared_experts", (size_t)c->n_shared_experts * F * C);
        g->shared_down = at(t, base, layer, "mlp.shared_experts.down_proj.weight");
    }
    /* the experts held here, by local index (params_select keeps a layer's experts adjacent) */
    char e0[32], name[PARAM_NAME_MAX];
    snprintf(e0, sizeof e0, "mlp.experts.%d", t->expert_lo);
    g->experts = base + gate_up_offset(t, layer, e0, F * C);
    g->expert_stride = 3 * F * C;
    snprintf(name, sizeof name, "%s.down_proj.weight", e0);
    CHECK(at(t, base, layer, name) == g->experts + 2 * F * C);
    if (t->expert_n > 1) {
        snprintf(name, sizeof name, "mlp.experts.%d.gate_proj.weight", t->expert_lo + 1);
        CHECK(at(t, base, layer, name) == g->experts + g->expert_stride);
    }
}

#define F32(n) ((size_t)(n) * sizeof(float))
#define ACT(n) ((size_t)(n) * (size_t)d->act_bytes)
#define I32(n) ((size_t)(n) * sizeof(int32_t))

/* A block's own buffer of n bytes, or the shared set's member (train.recompute). */
#define OWN(sh, member, n) ((sh) ? (void *)(sh)->member : arena_take(ar, (n)))

void block_acts_plan(BlockActs *a, const Dims *d, int moe, const BlockActs *sh, Arena *ar)
{
    memset(a, 0, sizeof *a);
    const size_t N = (size_t)d->N, NK = N * (size_t)d->K;
    a->ln1 = OWN(sh, ln1, ACT(N * d->C));
    a->ln1_rstd = arena_take(ar, F32(N));
    if (d->Rq > 0) {
        a->cq_raw = arena_take(ar, ACT(N * d->Rq));
        a->cq = OWN(sh, cq, ACT(N * d->Rq));
        a->cq_rstd = arena_take(ar, F32(N));
    }
    const BlockActs *shq = d->Rq > 0 ? sh : NULL;  /* q_proj's output (Rq = 0) is kept */
    a->q = OWN(shq, q, ACT(N * d->H * d->Dqk));
    a->ckv_raw = arena_take(ar, ACT(N * d->Rkv));
    a->ckv = OWN(sh, ckv, ACT(N * d->Rkv));
    a->ckv_rstd = arena_take(ar, F32(N));
    a->k_rope = arena_take(ar, ACT(N * d->Dr));
    a->kv = OWN(sh, kv, ACT(N * d->H * (d->Dn + d->Dv)));
    a->k = OWN(sh, k, ACT(N * d->H * d->Dqk));
    a->v = OWN(sh, v, ACT(N * d->H * d->Dv));
    a->att = arena_take(ar, ACT(N * d->H * d->Dv));
    a->lse = arena_take(ar, F32((size_t)d->B * d->H * d->T));
    a->x_mid = arena_take(ar, ACT(N * d->C));
    a->ln2 = OWN(sh, ln2, ACT(N * d->C));
    a->ln2_rstd = arena_take(ar, F32(N));
    int hidden = moe ? d->Fs : d->I;
    if (hidden > 0) {
        a->gu = arena_take(ar, ACT(N * 2 * hidden));
        a->h = arena_take(ar, ACT(N * hidden));
    }
    if (moe) {
        a->s = arena_take(ar, F32(N * d->E));
        a->idx = arena_take(ar, I32(NK));
        a->w = arena_take(ar, F32(NK));
        const size_t R = (size_t)d->R;     /* rows in receive order, on the experts' rank */
        a->xp = arena_take(ar, ACT(R * d->C));
        a->gup = arena_take(ar, ACT(R * 2 * d->F));
        a->hp = arena_take(ar, ACT(R * d->F));
        a->yp = arena_take(ar, ACT(R * d->C));
        ep_handle_plan_group(&a->ep, d->ep, d->N, d->K, d->E, d->C, ar);
        CHECK(a->ep.recv_cap >= d->R);   /* the pool: at most the worst case (moe_plan_pool) */
    }
    a->x_out = arena_take(ar, ACT(N * d->C));
}

void block_dropped_plan(BlockActs *a, const Dims *d, Arena *ar)
{
    memset(a, 0, sizeof *a);
    const size_t N = (size_t)d->N;
    a->ln1 = arena_take(ar, ACT(N * d->C));
    if (d->Rq > 0) {
        a->cq = arena_take(ar, ACT(N * d->Rq));
        a->q = arena_take(ar, ACT(N * d->H * d->Dqk));
    }
    a->ckv = arena_take(ar, ACT(N * d->Rkv));
    a->kv = arena_take(ar, ACT(N * d->H * (d->Dn + d->Dv)));
    a->k = arena_take(ar, ACT(N * d->H * d->Dqk));
    a->v = arena_take(ar, ACT(N * d->H * d->Dv));
    a->ln2 = arena_take(ar, ACT(N * d->C));
}

void scratch_plan(Scratch *s, const Dims *d, Arena *ar)
{
    memset(s, 0, sizeof *s);
    const size_t N = (size_t)d->N, NK = N * (size_t)d->K, R = (size_t)d->R;
    const size_t hid = (size_t)(d->I > d->Fs ? d->I : d->Fs);
    s->dk = arena_take(ar, ACT(N * d->H * d->Dqk));
    s->dv = arena_take(ar, ACT(N * d->H * d->Dv));
    s->datt = arena_take(ar, ACT(N * d->H * d->Dv));
    s->dh = arena_take(ar, ACT(N * hid));
    s->ds = arena_take(ar, F32(N * d->E));
    s->dw = arena_take(ar, F32(NK));
    s->dxp = arena_take(ar, ACT(R * d->C));
    s->dhp = arena_take(ar, ACT(R * d->F));
}

void block_bwd_plan(BlockBwd *b, const Dims *d, int moe, Arena *ar)
{
    memset(b, 0, sizeof *b);
    const size_t N = (size_t)d->N, R = (size_t)d->R;
    b->dmid = arena_take(ar, ACT(N * d->C));
    b->dq = arena_take(ar, ACT(N * d->H * d->Dqk));
    b->dkv = arena_take(ar, ACT(N * d->H * (d->Dn + d->Dv)));
    b->dckv = arena_take(ar, ACT(N * d->Rkv));
    b->dckv_raw = arena_take(ar, ACT(N * d->Rkv));
    b->dk_rope = arena_take(ar, ACT(N * d->Dr));
    if (d->Rq > 0) {
        b->dcq = arena_take(ar, ACT(N * d->Rq));
        b->dcq_raw = arena_take(ar, ACT(N * d->Rq));
    }
    b->dln1 = arena_take(ar, ACT(N * d->C));
    b->dout = arena_take(ar, ACT(N * d->C));
    int hidden = moe > 0 ? d->Fs : moe == 0 ? d->I : (d->I > d->Fs ? d->I : d->Fs);
    if (hidden > 0) b->dgu = arena_take(ar, ACT(N * 2 * hidden));
    b->dln2 = arena_take(ar, ACT(N * d->C));
    if (moe != 0) {
        b->dlogits_r = arena_take(ar, F32(N * d->E));
        b->dyp = arena_take(ar, ACT(R * d->C));
        b->dgup = arena_take(ar, ACT(R * 2 * d->F));
    }
}

void block_acts_free(BlockActs *a)
{
    ep_handle_free(&a->ep);
}
