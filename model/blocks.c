/* model/blocks.c - binding block weights by name, and planning block activations and the
 * shared backward scratch (sizes per layers.h). Not here: any computation. */
#include <stdio.h>
#include <string.h>

#include "../runtime/common.h"
#include "layers.h"

void dims_from_config(Dims *d, const ModelConfig *c, int B, int T)
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
}

static float *at(const ParamTable *t, float *base, int layer, const char *suffix)
{
    return base + params_offset(t, layer, suffix);
}

/* The fused [gate; up] GEMM needs up_proj right after gate_proj (params.h guarantees it). */
static float *gate_up_at(const ParamTable *t, float *base, int layer, const char *prefix, size_t gate_numel)
{
    char g[PARAM_NAME_MAX], u[PARAM_NAME_MAX];
    snprintf(g, sizeof g, "%s.gate_proj.weight", prefix);
    snprintf(u, sizeof u, "%s.up_proj.weight", prefix);
    size_t og = params_offset(t, layer, g), ou = params_offset(t, layer, u);
    CHECK(ou == og + gate_numel);
    return base + og;
}

void block_bind(BlockWeights *w, const ParamTable *t, const ModelConfig *c, float *base, int layer, int moe)
{
    memset(w, 0, sizeof *w);
    const size_t C = (size_t)c->hidden_size, F = (size_t)c->moe_intermediate_size;
    w->ln1 = at(t, base, layer, "input_layernorm.weight");
    if (c->q_lora_rank > 0) {
        w->q_a = at(t, base, layer, "self_attn.q_a_proj.weight");
        w->q_a_norm = at(t, base, layer, "self_attn.q_a_layernorm.weight");
        w->q_b = at(t, base, layer, "self_attn.q_b_proj.weight");
    } else {
        w->q_b = at(t, base, layer, "self_attn.q_proj.weight");
    }
    w->kv_a = at(t, base, layer, "self_attn.kv_a_proj_with_mqa.weight");
    w->kv_a_norm = at(t, base, layer, "self_attn.kv_a_layernorm.weight");
    w->kv_b = at(t, base, layer, "self_attn.kv_b_proj.weight");
    w->o = at(t, base, layer, "self_attn.o_proj.weight");
    w->ln2 = at(t, base, layer, "post_attention_layernorm.weight");
    if (!moe) {
        w->ffn_gate_up = gate_up_at(t, base, layer, "mlp", (size_t)c->intermediate_size * C);
        w->ffn_down = at(t, base, layer, "mlp.down_proj.weight");
        return;
    }
    w->router = at(t, base, layer, "mlp.gate.weight");
    w->router_bias = at(t, base, layer, "mlp.gate.e_score_correction_bias");
    if (c->n_shared_experts > 0) {
        w->shared_gate_up = gate_up_at(t, base, layer, "mlp.shared_experts", (size_t)c->n_shared_experts * F * C);
        w->shared_down = at(t, base, layer, "mlp.shared_experts.down_proj.weight");
    }
    w->experts = gate_up_at(t, base, layer, "mlp.experts.0", F * C);
    w->expert_stride = 3 * F * C;
    CHECK(at(t, base, layer, "mlp.experts.0.down_proj.weight") == w->experts + 2 * F * C);
    if (c->n_routed_experts > 1)
        CHECK(at(t, base, layer, "mlp.experts.1.gate_proj.weight") == w->experts + w->expert_stride);
}

#define F32(n) ((size_t)(n) * sizeof(float))
#define I32(n) ((size_t)(n) * sizeof(int32_t))

void block_acts_plan(BlockActs *a, const Dims *d, int moe, Arena *ar)
{
    memset(a, 0, sizeof *a);
    const size_t N = (size_t)d->N, NK = N * (size_t)d->K;
    a->ln1 = arena_take(ar, F32(N * d->C));
    a->ln1_rstd = arena_take(ar, F32(N));
    if (d->Rq > 0) {
        a->cq_raw = arena_take(ar, F32(N * d->Rq));
        a->cq = arena_take(ar, F32(N * d->Rq));
        a->cq_rstd = arena_take(ar, F32(N));
    }
    a->q = arena_take(ar, F32(N * d->H * d->Dqk));
    a->ckv_raw = arena_take(ar, F32(N * d->Rkv));
    a->ckv = arena_take(ar, F32(N * d->Rkv));
    a->ckv_rstd = arena_take(ar, F32(N));
    a->k_rope = arena_take(ar, F32(N * d->Dr));
    a->kv = arena_take(ar, F32(N * d->H * (d->Dn + d->Dv)));
    a->k = arena_take(ar, F32(N * d->H * d->Dqk));
    a->v = arena_take(ar, F32(N * d->H * d->Dv));
    a->att = arena_take(ar, F32(N * d->H * d->Dv));
    a->lse = arena_take(ar, F32((size_t)d->B * d->H * d->T));
    a->x_mid = arena_take(ar, F32(N * d->C));
    a->ln2 = arena_take(ar, F32(N * d->C));
    a->ln2_rstd = arena_take(ar, F32(N));
    int hidden = moe ? d->Fs : d->I;
    if (hidden > 0) {
        a->gu = arena_take(ar, F32(N * 2 * hidden));
        a->h = arena_take(ar, F32(N * hidden));
    }
    if (moe) {
        a->s = arena_take(ar, F32(N * d->E));
        a->idx = arena_take(ar, I32(NK));
        a->w = arena_take(ar, F32(NK));
        const size_t R = (size_t)d->R;     /* rows in receive order, on the experts' rank */
        a->xp = arena_take(ar, F32(R * d->C));
        a->gup = arena_take(ar, F32(R * 2 * d->F));
        a->hp = arena_take(ar, F32(R * d->F));
        a->yp = arena_take(ar, F32(R * d->C));
        ep_handle_plan_group(&a->ep, d->ep, d->N, d->K, d->E, d->C, ar);
        CHECK(a->ep.recv_cap == d->R);
    }
    a->x_out = arena_take(ar, F32(N * d->C));
}

void scratch_plan(Scratch *s, const Dims *d, Arena *ar)
{
    memset(s, 0, sizeof *s);
    const size_t N = (size_t)d->N, NK = N * (size_t)d->K;
    const size_t hid = (size_t)(d->I > d->Fs ? d->I : d->Fs);
    s->dln = arena_take(ar, F32(N * d->C));
    s->dq = arena_take(ar, F32(N * d->H * d->Dqk));
    s->dk = arena_take(ar, F32(N * d->H * d->Dqk));
    s->dv = arena_take(ar, F32(N * d->H * d->Dv));
    s->datt = arena_take(ar, F32(N * d->H * d->Dv));
    s->dkv = arena_take(ar, F32(N * d->H * (d->Dn + d->Dv)));
    s->dckv = arena_take(ar, F32(N * d->Rkv));
    s->dckv_raw = arena_take(ar, F32(N * d->Rkv));
    if (d->Rq > 0) {
        s->dcq = arena_take(ar, F32(N * d->Rq));
        s->dcq_raw = arena_take(ar, F32(N * d->Rq));
    }
    s->dk_rope = arena_take(ar, F32(N * d->Dr));
    s->dgu = arena_take(ar, F32(N * 2 * hid));
    s->dh = arena_take(ar, F32(N * hid));
    s->ds = arena_take(ar, F32(N * d->E));
    s->dlogits_r = arena_take(ar, F32(N * d->E));
    s->dw = arena_take(ar, F32(NK));
    const size_t R = (size_t)d->R;
    s->dxp = arena_take(ar, F32(R * d->C));
    s->dgup = arena_take(ar, F32(R * 2 * d->F));
    s->dhp = arena_take(ar, F32(R * d->F));
    s->dyp = arena_take(ar, F32(R * d->C));
}

void block_acts_free(BlockActs *a)
{
    ep_handle_free(&a->ep);
}
