/* model/mtp.c - Multi-Token Prediction modules (SPEC.md section 5, TR section 2.2).
 *
 *   h'_i = M_k [RMSNorm(Emb(t_{i+k})) ; RMSNorm(h^{k-1}_i)]     embedding first (eh_proj order)
 *   h^k  = Block_k(h')                                          a full MLA + MoE block
 *   loss_k = CE(head(RMSNorm_k(h^k)), t_{i+k+1})                only where i+k+1 <= T
 * Embedding and head are the main model's (one parameter each; gradients add up because
 * backward ops accumulate). h^0 is the main output after its final RMSNorm.
 */
#include "model_internal.h"

#include <string.h>

void mtp_bind(MtpWeights *w, Ops *o, const ParamTable *t, float *params, int layer, Arena *copies)
{
    char name[PARAM_NAME_MAX];
    w->enorm = params + params_offset(t, layer, "enorm.weight");
    w->hnorm = params + params_offset(t, layer, "hnorm.weight");
    snprintf(name, sizeof name, "model.layers.%d.eh_proj.weight", layer);
    param_bind_wgt(&w->eh_proj, o, t, params, name, copies);
    w->head_norm = params + params_offset(t, layer, "shared_head.norm.weight");
}

void mtp_bind_grads(MtpGrads *g, const ParamTable *t, float *grads, int layer)
{
    g->enorm = grads + params_offset(t, layer, "enorm.weight");
    g->hnorm = grads + params_offset(t, layer, "hnorm.weight");
    g->eh_proj = grads + params_offset(t, layer, "eh_proj.weight");
    g->head_norm = grads + params_offset(t, layer, "shared_head.norm.weight");
}

void mtp_bwd_plan(MtpBwd *b, const Dims *d, Arena *ar)
{
    const size_t NC = (size_t)d->N * d->C * d->act_bytes;
    b->dshn = arena_take(ar, NC);
    b->dhprime = arena_take(ar, NC);
    b->den = arena_take(ar, NC);
    b->dhn = arena_take(ar, NC);
    b->de = arena_take(ar, NC);
}

/* A module's own buffer of n bytes, or the shared set's member (recompute). */
#define OWN(sh, member, n) ((sh) ? (sh)->member : arena_take(ar, (n)))

void mtp_acts_plan(MtpActs *a, const Dims *d, const MtpActs *sh, Arena *ar)
{
    const size_t N = (size_t)d->N, NC = N * d->C * d->act_bytes, F = sizeof(float);
    a->tokens = arena_take(ar, N * sizeof(int32_t));
    a->targets = arena_take(ar, N * sizeof(int32_t));
    a->dloss = arena_take(ar, N * F);
    a->e = arena_take(ar, NC);
    a->en = OWN(sh, en, NC);
    a->en_rstd = arena_take(ar, N * F);
    a->hn = OWN(sh, hn, NC);
    a->hn_rstd = arena_take(ar, N * F);
    a->cat = OWN(sh, cat, 2 * NC);
    a->hprime = arena_take(ar, NC);
    a->shn = OWN(sh, shn, NC);
    a->shn_rstd = arena_take(ar, N * F);
    a->logits = arena_take(ar, N * d->V * d->act_bytes);
    a->losses = arena_take(ar, N * F);
}

void mtp_dropped_plan(MtpActs *a, const Dims *d, Arena *ar)
{
    const size_t NC = (size_t)d->N * d->C * d->act_bytes;
    memset(a, 0, sizeof *a);
    a->en = arena_take(ar, NC);
    a->hn = arena_take(ar, NC);
    a->cat = arena_take(ar, 2 * NC);
    a->shn = arena_take(ar, NC);
}

/* Tokens t_{i+k} and targets t_{i+k+1} of module k; returns the number of valid targets. */
static int mtp_stage_tokens(Model *m, int k, const int32_t *window)
{
    const Dims *d = &m->d;
    int valid = 0;
    for (int b = 0; b < d->B; b++)
        for (int i = 0; i < d->T; i++) {
            const int32_t *row = window + (size_t)b * (d->T + 1);
            int n = b * d->T + i;
            m->host_tokens[n] = i + k <= d->T ? row[i + k] : 0;
            m->host_tokens[d->N + n] = i + k + 1 <= d->T ? row[i + k + 1] : -1;
            valid += i + k + 1 <= d->T;
        }
    MtpActs *a = &m->sl->mtp[k - 1];
    m->o->upload(m->o, a->tokens, m->host_tokens, (size_t)d->N * sizeof(int32_t));
    m->o->upload(m->o, a->targets, m->host_tokens + d->N, (size_t)d->N * sizeof(int32_t));
    return valid;
}

int mtp_forward(Model *m, int k, const int32_t *window, const act *h_prev, int train)
{
    Ops *o = m->o;
    const Dims *d = &m->d;
    const int N = d->N, C = d->C, blk = d->L + k - 1;
    const float eps = (float)m->cfg.rms_norm_eps;
    MtpActs *a = &m->sl->mtp[k - 1];
    const MtpWeights *w = &m->mtp_w[k - 1];

    int valid = mtp_stage_tokens(m, k, window);
    o->embedding_forward(o, a->e, a->tokens, m->embed, N, C);
    o->rmsnorm_forward(o, a->en, a->en_rstd, a->e, w->enorm, N, C, eps);
    o->rmsnorm_forward(o, a->hn, a->hn_rstd, h_prev, w->hnorm, N, C, eps);
    o->concat_forward(o, a->cat, a->en, a->hn, N, C, C);
    o->matmul_forward(o, a->hprime, a->cat, &w->eh_proj, N, 2 * C, C);
    block_forward(m, blk, a->hprime, train);
    o->rmsnorm_forward(o, a->shn, a->shn_rstd, m->sl->acts[blk].x_out, w->head_norm, N, C, eps);
    o->matmul_forward(o, a->logits, a->shn, &m->head, N, C, d->V);
    o->xent_forward(o, a->losses, a->logits, a->targets, N, d->V);
    if (train) o->xent_backward(o, a->logits, a->logits, a->targets, a->dloss, N, d->V);
    return valid;
}

void mtp_backward_input(Model *m, int k)
{
    Ops *o = m->o;
    const Dims *d = &m->d;
    const int N = d->N, C = d->C, blk = d->L + k - 1;
    const size_t NC = (size_t)N * C * o->act_bytes;
    MtpActs *a = &m->sl->mtp[k - 1];
    MtpBwd *bw = &m->sl->mtp_bw[k - 1];
    const MtpWeights *w = &m->mtp_w[k - 1];

    /* dL/dh^k: from this module's head, plus module k+1's use of h^k (in dh_chain) */
    o->zero(o, m->sl->dres, NC);
    if (k < d->D) {
        o->add(o, m->sl->dres, m->sl->dh_chain, (size_t)N * C);
        o->zero(o, m->sl->dh_chain, NC);
    }
    o->zero(o, bw->dshn, NC);
    o->matmul_backward_input(o, bw->dshn, a->logits, &m->head, N, C, d->V);
    o->rmsnorm_backward_input(o, m->sl->dres, bw->dshn, m->sl->acts[blk].x_out, w->head_norm, a->shn_rstd, N, C);
    block_backward_input(m, blk, a->hprime, m->sl->dres);

    o->copy(o, bw->dhprime, m->sl->dres, NC);
    o->zero(o, m->dcat, 2 * NC);
    o->matmul_backward_input(o, m->dcat, m->sl->dres, &w->eh_proj, N, 2 * C, C);
    o->zero(o, bw->den, NC);
    o->zero(o, bw->dhn, NC);
    o->concat_backward(o, bw->den, bw->dhn, m->dcat, N, C, C);
    o->zero(o, bw->de, NC);
    o->rmsnorm_backward_input(o, bw->de, bw->den, a->e, w->enorm, a->en_rstd, N, C);
    const act *h_prev = k == 1 ? m->sl->hf : m->sl->acts[blk - 1].x_out;
    o->rmsnorm_backward_input(o, k == 1 ? m->sl->dhf : m->sl->dh_chain, bw->dhn, h_prev, w->hnorm, a->hn_rstd, N, C);
}

void mtp_recompute(Model *m, int k)
{
    Ops *o = m->o;
    const Dims *d = &m->d;
    const int N = d->N, C = d->C, blk = d->L + k - 1;
    const float eps = (float)m->cfg.rms_norm_eps;
    MtpActs *a = &m->sl->mtp[k - 1];
    const MtpWeights *w = &m->mtp_w[k - 1];
    const act *h_prev = k == 1 ? m->sl->hf : m->sl->acts[blk - 1].x_out;
    o->rmsnorm_forward(o, a->en, m->rc_rstd, a->e, w->enorm, N, C, eps);
    o->rmsnorm_forward(o, a->hn, m->rc_rstd, h_prev, w->hnorm, N, C, eps);
    o->concat_forward(o, a->cat, a->en, a->hn, N, C, C);
    o->rmsnorm_forward(o, a->shn, m->rc_rstd, m->sl->acts[blk].x_out, w->head_norm, N, C, eps);
}

void mtp_backward_weight(Model *m, int k)
{
    Ops *o = m->o;
    const Dims *d = &m->d;
    const int N = d->N, C = d->C, blk = d->L + k - 1;
    const MtpActs *a = &m->sl->mtp[k - 1];
    const MtpBwd *bw = &m->sl->mtp_bw[k - 1];
    const MtpWeights *w = &m->mtp_w[k - 1];
    MtpGrads *g = &m->mtp_g[k - 1];

    if (m->recompute) mtp_recompute(m, k);
    o->matmul_backward_weight(o, m->g_head, &m->head, a->logits, a->shn, N, C, d->V);
    o->rmsnorm_backward_weight(o, g->head_norm, bw->dshn, m->sl->acts[blk].x_out, a->shn_rstd, N, C);
    block_backward_weight(m, blk, a->hprime);
    o->matmul_backward_weight(o, g->eh_proj, &w->eh_proj, bw->dhprime, a->cat, N, 2 * C, C);
    o->rmsnorm_backward_weight(o, g->enorm, bw->den, a->e, a->en_rstd, N, C);
    o->embedding_backward(o, m->g_embed, bw->de, a->tokens, N, C);
    const act *h_prev = k == 1 ? m->sl->hf : m->sl->acts[blk - 1].x_out;
    o->rmsnorm_backward_weight(o, g->hnorm, bw->dhn, h_prev, a->hn_rstd, N, C);
}
