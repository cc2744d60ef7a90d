/* model/mla.c - Multi-head Latent Attention sublayer, forward and hand-written backward
 * (SPEC.md section 3, TR section 2.1.1):
 *
 *   ln1 = RMSNorm(x_in)
 *   cq  = RMSNorm_q(ln1 W_qa^T);  q = cq W_qb^T  (or q = ln1 W_q^T when Rq = 0)
 *   ckv = RMSNorm_kv(ln1 W_kva[0:Rkv]^T);  k_rope = RoPE(ln1 W_kva[Rkv:]^T)   one key, all heads
 *   [k_nope_h | v_h] = ckv W_kvb^T;  q_rope = RoPE(q_rope) per head
 *   att = causal softmax(q k^T * s) v;   x_mid = x_in + att W_o^T
 *
 * W_kva is one tensor (Rkv+Dr, C); its latent rows and rope rows are contiguous halves, so
 * they run as two GEMMs without a strided norm. Backward is split: B (input gradients, filling
 * BlockBwd) and W (weight gradients from it; layers.h). Not here: the attention kernel (ops).
 */
#include "layers.h"

/* The two latent norms (q_a_layernorm, kv_a_layernorm) use 1e-6 whatever rms_norm_eps says,
 * as DeepSeek's reference code and transformers' DeepseekV3 hard-code it (SPEC.md section 3);
 * the block and final norms use rms_norm_eps. Backward needs no eps (it reuses the rstd). */
#define MLA_LATENT_NORM_EPS 1e-6f

void mla_forward(const Ctx *x, const BlockWeights *w, BlockActs *a, const act *x_in)
{
    Ops *o = x->o;
    const Dims *d = x->d;
    const int N = d->N, C = d->C, H = d->H, Dqk = d->Dqk;
    const float eps = (float)x->cfg->rms_norm_eps;

    o->rmsnorm_forward(o, a->ln1, a->ln1_rstd, x_in, w->ln1, N, C, eps);
    if (d->Rq > 0) {
        o->matmul_forward(o, a->cq_raw, a->ln1, &w->q_a, N, C, d->Rq);
        o->rmsnorm_forward(o, a->cq, a->cq_rstd, a->cq_raw, w->q_a_norm, N, d->Rq, MLA_LATENT_NORM_EPS);
        o->matmul_forward(o, a->q, a->cq, &w->q_b, N, d->Rq, H * Dqk);
    } else {
        o->matmul_forward(o, a->q, a->ln1, &w->q_b, N, C, H * Dqk);
    }
    RopeShape rq = { N, d->T, H, H * Dqk, Dqk, d->Dn, d->Dr };
    o->rope_forward(o, a->q, x->rope_cos, x->rope_sin, &rq);

    o->matmul_forward(o, a->ckv_raw, a->ln1, &w->kv_a_lat, N, C, d->Rkv);
    o->matmul_forward(o, a->k_rope, a->ln1, &w->kv_a_rope, N, C, d->Dr);
    RopeShape rk = { N, d->T, 1, d->Dr, 0, 0, d->Dr };
    o->rope_forward(o, a->k_rope, x->rope_cos, x->rope_sin, &rk);
    o->rmsnorm_forward(o, a->ckv, a->ckv_rstd, a->ckv_raw, w->kv_a_norm, N, d->Rkv, MLA_LATENT_NORM_EPS);
    o->matmul_forward(o, a->kv, a->ckv, &w->kv_b, N, d->Rkv, H * (d->Dn + d->Dv));
    MlaKvShape ks = { N, H, d->Dn, d->Dr, d->Dv };
    o->mla_kv_split(o, a->k, a->v, a->kv, a->k_rope, &ks);

    AttnShape as = { d->B, d->T, H, Dqk, d->Dv, x->attn_scale };
    o->attention_forward(o, a->att, a->lse, a->q, a->k, a->v, &as);
    o->matmul_forward(o, a->x_mid, a->att, &w->o, N, H * d->Dv, C);
    o->add(o, a->x_mid, x_in, (size_t)N * C);
}

void mla_backward_input(const Ctx *x, const BlockWeights *w, BlockBwd *bw, BlockActs *a, const act *x_in,
                        act *dres)
{
    Ops *o = x->o;
    const Dims *d = x->d;
    Scratch *s = x->s;
    const int N = d->N, C = d->C, H = d->H, Dqk = d->Dqk, HDv = d->H * d->Dv;
    const int Hkv = H * (d->Dn + d->Dv);

    /* output projection; dres (dL/dx_mid) is also the residual's gradient and stays */
    o->copy(o, bw->dmid, dres, o->act_bytes * N * C);
    o->zero(o, s->datt, o->act_bytes * N * HDv);
    o->matmul_backward_input(o, s->datt, dres, &w->o, N, HDv, C);

    o->zero(o, bw->dq, o->act_bytes * N * H * Dqk);
    o->zero(o, s->dk, o->act_bytes * N * H * Dqk);
    o->zero(o, s->dv, o->act_bytes * N * HDv);
    AttnShape as = { d->B, d->T, H, Dqk, d->Dv, x->attn_scale };
    o->attention_backward(o, bw->dq, s->dk, s->dv, s->datt, a->q, a->k, a->v, a->att, a->lse, &as);

    /* keys and values back to the latent and the shared rope key */
    o->zero(o, bw->dkv, o->act_bytes * N * Hkv);
    o->zero(o, bw->dk_rope, o->act_bytes * N * d->Dr);
    MlaKvShape ks = { N, H, d->Dn, d->Dr, d->Dv };
    o->mla_kv_split_backward(o, bw->dkv, bw->dk_rope, s->dk, s->dv, &ks);
    o->zero(o, bw->dckv, o->act_bytes * N * d->Rkv);
    o->matmul_backward_input(o, bw->dckv, bw->dkv, &w->kv_b, N, d->Rkv, Hkv);
    o->zero(o, bw->dckv_raw, o->act_bytes * N * d->Rkv);
    o->rmsnorm_backward_input(o, bw->dckv_raw, bw->dckv, a->ckv_raw, w->kv_a_norm, a->ckv_rstd, N, d->Rkv);
    RopeShape rk = { N, d->T, 1, d->Dr, 0, 0, d->Dr };
    o->rope_backward(o, bw->dk_rope, x->rope_cos, x->rope_sin, &rk);

    o->zero(o, bw->dln1, o->act_bytes * N * C);
    o->matmul_backward_input(o, bw->dln1, bw->dckv_raw, &w->kv_a_lat, N, C, d->Rkv);
    o->matmul_backward_input(o, bw->dln1, bw->dk_rope, &w->kv_a_rope, N, C, d->Dr);

    /* queries */
    RopeShape rq = { N, d->T, H, H * Dqk, Dqk, d->Dn, d->Dr };
    o->rope_backward(o, bw->dq, x->rope_cos, x->rope_sin, &rq);
    if (d->Rq > 0) {
        o->zero(o, bw->dcq, o->act_bytes * N * d->Rq);
        o->matmul_backward_input(o, bw->dcq, bw->dq, &w->q_b, N, d->Rq, H * Dqk);
        o->zero(o, bw->dcq_raw, o->act_bytes * N * d->Rq);
        o->rmsnorm_backward_input(o, bw->dcq_raw, bw->dcq, a->cq_raw, w->q_a_norm, a->cq_rstd, N, d->Rq);
        o->matmul_backward_input(o, bw->dln1, bw->dcq_raw, &w->q_a, N, C, d->Rq);
    } else {
        o->matmul_backward_input(o, bw->dln1, bw->dq, &w->q_b, N, C, H * Dqk);
    }
    o->rmsnorm_backward_input(o, dres, bw->dln1, x_in, w->ln1, a->ln1_rstd, N, C);
}

/* The weight gradients, in the order the fused backward produced them (each tensor gets one
 * contribution here, so the order does not change a bit; kept for reading alongside B). */
void mla_backward_weight(const Ctx *x, const BlockWeights *w, BlockGrads *g, const BlockBwd *bw,
                         const BlockActs *a, const act *x_in)
{
    Ops *o = x->o;
    const Dims *d = x->d;
    const int N = d->N, C = d->C, H = d->H, Dqk = d->Dqk, HDv = d->H * d->Dv;
    const int Hkv = H * (d->Dn + d->Dv);

    o->matmul_backward_weight(o, g->o, &w->o, bw->dmid, a->att, N, HDv, C);
    o->matmul_backward_weight(o, g->kv_b, &w->kv_b, bw->dkv, a->ckv, N, d->Rkv, Hkv);
    o->rmsnorm_backward_weight(o, g->kv_a_norm, bw->dckv, a->ckv_raw, a->ckv_rstd, N, d->Rkv);
    o->matmul_backward_weight(o, g->kv_a, &w->kv_a_lat, bw->dckv_raw, a->ln1, N, C, d->Rkv);
    const size_t rope_rows = (size_t)d->Rkv * C;
    o->matmul_backward_weight(o, g->kv_a + rope_rows, &w->kv_a_rope, bw->dk_rope, a->ln1, N, C, d->Dr);
    if (d->Rq > 0) {
        o->matmul_backward_weight(o, g->q_b, &w->q_b, bw->dq, a->cq, N, d->Rq, H * Dqk);
        o->rmsnorm_backward_weight(o, g->q_a_norm, bw->dcq, a->cq_raw, a->cq_rstd, N, d->Rq);
        o->matmul_backward_weight(o, g->q_a, &w->q_a, bw->dcq_raw, a->ln1, N, C, d->Rq);
    } else {
        o->matmul_backward_weight(o, g->q_b, &w->q_b, bw->dq, a->ln1, N, C, H * Dqk);
    }
    o->rmsnorm_backward_weight(o, g->ln1, bw->dln1, x_in, a->ln1_rstd, N, C);
}

void mla_recompute(const Ctx *x, const BlockWeights *w, BlockActs *a, const act *x_in, float *rstd, int weights)
{
    Ops *o = x->o;
    const Dims *d = x->d;
    const int N = d->N, C = d->C, H = d->H, Dqk = d->Dqk;

    if (weights) o->rmsnorm_forward(o, a->ln1, rstd, x_in, w->ln1, N, C, (float)x->cfg->rms_norm_eps);
    if (d->Rq > 0) {
        o->rmsnorm_forward(o, a->cq, rstd, a->cq_raw, w->q_a_norm, N, d->Rq, MLA_LATENT_NORM_EPS);
        if (!weights) {
            o->matmul_forward(o, a->q, a->cq, &w->q_b, N, d->Rq, H * Dqk);
            RopeShape rq = { N, d->T, H, H * Dqk, Dqk, d->Dn, d->Dr };
            o->rope_forward(o, a->q, x->rope_cos, x->rope_sin, &rq);
        }
    }
    o->rmsnorm_forward(o, a->ckv, rstd, a->ckv_raw, w->kv_a_norm, N, d->Rkv, MLA_LATENT_NORM_EPS);
    if (weights) return;
    o->matmul_forward(o, a->kv, a->ckv, &w->kv_b, N, d->Rkv, H * (d->Dn + d->Dv));
    MlaKvShape ks = { N, H, d->Dn, d->Dr, d->Dv };
    o->mla_kv_split(o, a->k, a->v, a->kv, a->k_rope, &ks);
}
