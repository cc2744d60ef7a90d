/* model/moe.c - the DeepSeekMoE FFN sublayer (SPEC.md section 4, TR section 2.1.2):
 *
 *   ln2 = RMSNorm(x_mid);  s = sigmoid(ln2 E^T)           router in FP32
 *   idx, w = group-limited top-K on s + bias (bias for selection only), weights from s
 *   y = SharedSwiGLU(ln2) + sum_k w_k Expert_{idx_k}(ln2)  through dispatch / combine
 *   x_out = x_mid + y
 *
 * Expert loads are counted once per forward (for the bias update); the sequence-wise
 * balance loss (weight alpha) flows into the router through P only. Dropless: every
 * (token, slot) row is computed; the rows a rank receives are kept for backward in a pool
 * per MoE layer and slot of ceil('moe.capacity_factor' x the mean N*K) rows (moe_plan_pool),
 * and a forward that needs more stops the run with one line naming the key, the layer and the
 * rows (never a dropped token). The exchange buffers stay worst-case, shared by every layer
 * (comm/dispatch.h). With an expert-parallel group
 * (comm/dispatch.h) each rank runs only its n_local experts, on the rows dispatched to it from
 * every rank of the group, bound by local index j (global expert ep_rank * n_local + j; the
 * global id is used for routing and counts only); the other experts are not held here
 * (model/params.h params_select).
 * Not here: the bias update itself (model/model.c, after the optimizer step).
 */
#include "ffn.h"

#include <math.h>

static RouteShape route_shape(const Ctx *x)
{
    const ModelConfig *c = x->cfg;
    RouteShape r = { x->d->N, x->d->E, x->d->K, c->n_group, c->topk_group,
                     (float)c->routed_scaling_factor, c->norm_topk_prob };
    return r;
}

void moe_plan_pool(Dims *d, int P, double capacity_factor)
{
    CHECK(P >= 1 && (capacity_factor == 0 || capacity_factor >= 1));
    const int mean = d->N * d->K, worst = P * mean;
    d->P = P;
    d->capacity_factor = capacity_factor;
    d->R = capacity_factor == 0 || capacity_factor >= P ? worst : (int)ceil(capacity_factor * mean);
    CHECK(d->R >= mean && d->R <= worst);
}

size_t moe_pool_bytes(const Dims *d, int rows, int split)
{
    const size_t per_row = (size_t)2 * d->C + 3 * (size_t)d->F + (split ? (size_t)d->C + 2 * (size_t)d->F : 0);
    return (size_t)rows * per_row * (size_t)d->act_bytes;
}

/* The rows this forward received against the pool (layer: for the message). Every rank
 * checks its own count; the one that overflows stops the job (DIE aborts every rank). */
static void check_pool(const Dims *d, const EpHandle *h, int layer)
{
    if (h->recv_rows <= d->R) return;
    DIE("moe: layer %d needs %d expert rows on this rank, more than its pool of %d ('moe.capacity_factor' = "
        "%g x the mean %d rows); raise 'moe.capacity_factor' (0: the worst case, %d rows)",
        layer, h->recv_rows, d->R, d->capacity_factor, d->N * d->K, d->P * d->N * d->K);
}

/* Routed expert e's MLP (e: local index, the weights and gradients held here) on its rows
 * [r0, r0 + n) of the expert-major buffers (g: gradients, NULL outside W; bw: what B leaves
 * for W, NULL in forward). */
static SwigluMlp expert_mlp(const Ctx *x, const BlockWeights *w, BlockGrads *g, const BlockActs *a,
                            const BlockBwd *bw, int e, size_t r0, int n)
{
    Ops *o = x->o;
    const size_t C = (size_t)x->d->C, F = (size_t)x->d->F;
    Scratch *s = x->s;
    float *ge = g ? g->experts + (size_t)e * g->expert_stride : NULL;
    SwigluMlp m = { &w->expert_gate_up[e], &w->expert_down[e], ge, ge ? ge + 2 * F * C : NULL,
                    act_at(o, a->gup, r0 * 2 * F), act_at(o, a->hp, r0 * F),
                    bw ? act_at(o, bw->dgup, r0 * 2 * F) : NULL, s ? act_at(o, s->dhp, r0 * F) : NULL,
                    n, (int)C, (int)F };
    return m;
}

static SwigluMlp shared_mlp(const Ctx *x, const BlockWeights *w, BlockGrads *g, const BlockActs *a,
                            const BlockBwd *bw)
{
    Scratch *s = x->s;
    SwigluMlp m = { &w->shared_gate_up, &w->shared_down, g ? g->shared_gate_up : NULL, g ? g->shared_down : NULL,
                    a->gu, a->h, bw ? bw->dgu : NULL, s ? s->dh : NULL, x->d->N, x->d->C, x->d->Fs };
    return m;
}

/* F phase "gate": norm, router, routing, counts and balance loss, the layout, and the
 * dispatch of the token rows posted on the pass's lane (x->lane). */
void moe_forward_gate(const Ctx *x, const BlockWeights *w, BlockActs *a, MoeStats *st)
{
    Ops *o = x->o;
    const Dims *d = x->d;
    const int N = d->N, C = d->C;
    const RouteShape r = route_shape(x);

    o->rmsnorm_forward(o, a->ln2, a->ln2_rstd, a->x_mid, w->ln2, N, C, (float)x->cfg->rms_norm_eps);
    o->router_forward(o, x->logits_r, a->ln2, &w->router, N, C, d->E);
    o->sigmoid_forward(o, a->s, x->logits_r, (size_t)N * d->E);
    o->moe_route(o, a->idx, a->w, a->s, w->router_bias, &r);
    if (st && st->counts) o->moe_count(o, st->counts, a->idx, N * d->K, d->E);
    if (st && st->bal_loss && st->alpha > 0)
        o->moe_balance_forward(o, st->bal_loss, a->s, a->idx, d->B, d->T, &r, st->alpha);
    const EpGroup *g = a->ep.g;
    if (st && st->max_nodes && g && g->size > 1) {
        o->download(o, st->idx_host, a->idx, sizeof(int32_t) * (size_t)N * d->K);
        int n = ep_max_nodes(st->idx_host, N, d->K, d->E, g->size, g->node_of);
        if (n > *st->max_nodes) *st->max_nodes = n;
    }
    ep_layout(o, &a->ep, a->idx);
    check_pool(d, &a->ep, st ? st->layer : -1);
    ep_dispatch_post(o, &a->ep, x->lane, a->xp, a->ln2);
}

/* F phase "experts" (after ep_dispatch_wait): the local experts on their rows, the shared
 * expert, and the combine posted. */
void moe_forward_experts(const Ctx *x, const BlockWeights *w, BlockActs *a)
{
    Ops *o = x->o;
    const Dims *d = x->d;
    const int N = d->N, C = d->C;
    const int32_t *off = a->ep.recv_offsets_host;
    for (int j = 0; j < a->ep.n_local; j++) {
        int n = off[j + 1] - off[j];
        if (n == 0) continue;
        size_t r0 = (size_t)off[j];
        SwigluMlp m = expert_mlp(x, w, NULL, a, NULL, j, r0, n);
        swiglu_mlp_forward(o, &m, act_at(o, a->yp, r0 * C), act_at_c(o, a->xp, r0 * C));
    }
    if (d->Fs > 0) {
        SwigluMlp m = shared_mlp(x, w, NULL, a, NULL);
        swiglu_mlp_forward(o, &m, a->x_out, a->ln2);
    } else {
        o->zero(o, a->x_out, o->act_bytes * N * C);
    }
    ep_combine_post(o, &a->ep, x->lane, a->x_out, a->yp, a->w);
}

/* F phase "out" (after ep_combine_wait): the residual. */
void moe_forward_out(const Ctx *x, BlockActs *a)
{
    x->o->add(x->o, a->x_out, a->x_mid, (size_t)x->d->N * x->d->C);
}

void moe_forward(const Ctx *x, const BlockWeights *w, BlockActs *a, MoeStats *st)
{
    moe_forward_gate(x, w, a, st);
    ep_dispatch_wait(x->o, &a->ep);
    moe_forward_experts(x, w, a);
    ep_combine_wait(x->o, &a->ep);
    moe_forward_out(x, a);
}

/* Routed experts B: dxp (rows) from dyp (rows), per expert. */
static void experts_backward_input(const Ctx *x, const BlockWeights *w, BlockBwd *bw, BlockActs *a)
{
    Ops *o = x->o;
    Scratch *s = x->s;
    const size_t C = (size_t)x->d->C;
    const int32_t *off = a->ep.recv_offsets_host;
    o->zero(o, s->dxp, o->act_bytes * (size_t)a->ep.recv_rows * C);
    for (int j = 0; j < a->ep.n_local; j++) {
        int n = off[j + 1] - off[j];
        if (n == 0) continue;
        size_t r0 = (size_t)off[j];
        SwigluMlp m = expert_mlp(x, w, NULL, a, bw, j, r0, n);
        swiglu_mlp_backward_input(o, &m, act_at(o, s->dxp, r0 * C), act_at_c(o, bw->dyp, r0 * C));
    }
}

/* B phase "out": the shared expert's input gradient, and the combine's backward posted on the
 * pass's lane (w * dy rows to the experts). */
void moe_backward_out(const Ctx *x, const BlockWeights *w, BlockBwd *bw, BlockActs *a, act *dres)
{
    Ops *o = x->o;
    const Dims *d = x->d;
    Scratch *s = x->s;
    const int N = d->N, C = d->C, K = d->K;

    o->copy(o, bw->dout, dres, o->act_bytes * N * C);
    o->zero(o, bw->dln2, o->act_bytes * N * C);
    if (d->Fs > 0) {
        SwigluMlp m = shared_mlp(x, w, NULL, a, bw);
        swiglu_mlp_backward_input(o, &m, bw->dln2, dres);
    }
    o->zero(o, bw->dyp, o->act_bytes * (size_t)a->ep.recv_rows * C);
    o->zero(o, s->dw, sizeof(float) * N * K);
    ep_combine_backward_post(o, &a->ep, x->lane, bw->dyp, s->dw, dres, a->yp, a->w);
}

/* B phase "experts" (after ep_combine_backward_wait): the experts' input gradients, and the
 * dispatch's backward posted (the rows back to their tokens). */
void moe_backward_experts(const Ctx *x, const BlockWeights *w, BlockBwd *bw, BlockActs *a)
{
    experts_backward_input(x, w, bw, a);
    ep_dispatch_backward_post(x->o, &a->ep, x->lane, bw->dln2, x->s->dxp);
}

/* B phase "gate" (after ep_dispatch_backward_wait): the router (routing weights and the
 * balance loss both reach the logits through s) and the norm. */
void moe_backward_gate(const Ctx *x, const BlockWeights *w, BlockBwd *bw, BlockActs *a, MoeStats *st, act *dres)
{
    Ops *o = x->o;
    const Dims *d = x->d;
    Scratch *s = x->s;
    const int N = d->N, C = d->C, E = d->E;
    const RouteShape r = route_shape(x);

    o->zero(o, s->ds, sizeof(float) * N * E);
    o->moe_route_backward(o, s->ds, s->dw, a->s, a->idx, &r);
    if (st && st->bal_dloss && st->alpha > 0)
        o->moe_balance_backward(o, s->ds, st->bal_dloss, a->s, a->idx, d->B, d->T, &r, st->alpha);
    o->zero(o, bw->dlogits_r, sizeof(float) * N * E);
    o->sigmoid_backward(o, bw->dlogits_r, s->ds, a->s, (size_t)N * E);
    o->router_backward_input(o, bw->dln2, bw->dlogits_r, &w->router, N, C, E);
    o->rmsnorm_backward_input(o, dres, bw->dln2, a->x_mid, w->ln2, a->ln2_rstd, N, C);
}

/* B: the input gradient through the experts (dispatch/combine backward: collective over the
 * EP group), the shared expert and the router; the three phases with their waits. */
void moe_backward_input(const Ctx *x, const BlockWeights *w, BlockBwd *bw, BlockActs *a, MoeStats *st,
                        act *dres)
{
    moe_backward_out(x, w, bw, a, dres);
    ep_combine_backward_wait(x->o, &a->ep);
    moe_backward_experts(x, w, bw, a);
    ep_dispatch_backward_wait(x->o, &a->ep);
    moe_backward_gate(x, w, bw, a, st, dres);
}

/* W: shared expert, this rank's routed experts (their rows as B received them), router, norm. */
void moe_backward_weight(const Ctx *x, const BlockWeights *w, BlockGrads *g, const BlockBwd *bw,
                         const BlockActs *a)
{
    Ops *o = x->o;
    const Dims *d = x->d;
    const size_t C = (size_t)d->C;
    if (d->Fs > 0) {
        SwigluMlp m = shared_mlp(x, w, g, a, bw);
        swiglu_mlp_backward_weight(o, &m, bw->dout, a->ln2);
    }
    const int32_t *off = a->ep.recv_offsets_host;
    for (int j = 0; j < a->ep.n_local; j++) {
        int n = off[j + 1] - off[j];
        if (n == 0) continue;
        size_t r0 = (size_t)off[j];
        SwigluMlp m = expert_mlp(x, w, g, a, bw, j, r0, n);
        swiglu_mlp_backward_weight(o, &m, act_at_c(o, bw->dyp, r0 * C), act_at_c(o, a->xp, r0 * C));
    }
    o->router_backward_weight(o, g->router, bw->dlogits_r, a->ln2, d->N, d->C, d->E);
    o->rmsnorm_backward_weight(o, g->ln2, bw->dln2, a->x_mid, a->ln2_rstd, d->N, d->C);
}
