/* model/ffn.c - SwiGLU MLPs: the dense FFN sublayer of the first first_k_dense_replace
 * layers, and the SwiGLU used by shared and routed experts (SPEC.md section 2):
 *   out = down(silu(gate(x)) * up(x)),  gate and up as ONE GEMM over [gate; up] (2h, C).
 * Not here: routing (model/moe.c). */
#include "ffn.h"

void swiglu_mlp_forward(Ops *o, const SwigluMlp *m, act *out, const act *inp)
{
    o->matmul_forward(o, m->gu, inp, m->gate_up, m->n, m->C, 2 * m->hidden);
    o->swiglu_forward(o, m->h, m->gu, m->n, m->hidden);
    o->matmul_forward(o, out, m->h, m->down, m->n, m->hidden, m->C);
}

void swiglu_mlp_backward_input(Ops *o, const SwigluMlp *m, act *dinp, const act *dout)
{
    const int n = m->n, C = m->C, hidden = m->hidden;
    o->zero(o, m->dh, o->act_bytes * (size_t)n * hidden);
    o->matmul_backward_input(o, m->dh, dout, m->down, n, hidden, C);
    o->zero(o, m->dgu, o->act_bytes * (size_t)n * 2 * hidden);
    o->swiglu_backward(o, m->dgu, m->dh, m->gu, n, hidden);
    o->matmul_backward_input(o, dinp, m->dgu, m->gate_up, n, C, 2 * hidden);
}

void swiglu_mlp_backward_weight(Ops *o, const SwigluMlp *m, const act *dout, const act *inp)
{
    o->matmul_backward_weight(o, m->ddown, m->down, dout, m->h, m->n, m->hidden, m->C);
    o->matmul_backward_weight(o, m->dgate_up, m->gate_up, m->dgu, inp, m->n, m->C, 2 * m->hidden);
}

/* The dense FFN's MLP: its weights, their gradients (g may be NULL), this block's buffers and
 * what B leaves for W (bw; NULL in forward). */
static SwigluMlp dense_mlp(const Ctx *x, const BlockWeights *w, BlockGrads *g, const BlockActs *a,
                           const BlockBwd *bw)
{
    SwigluMlp m = { &w->ffn_gate_up, &w->ffn_down, g ? g->ffn_gate_up : NULL, g ? g->ffn_down : NULL,
                    a->gu, a->h, bw ? bw->dgu : NULL, x->s ? x->s->dh : NULL, x->d->N, x->d->C, x->d->I };
    return m;
}

void ffn_forward(const Ctx *x, const BlockWeights *w, BlockActs *a)
{
    Ops *o = x->o;
    const Dims *d = x->d;
    SwigluMlp m = dense_mlp(x, w, NULL, a, NULL);
    o->rmsnorm_forward(o, a->ln2, a->ln2_rstd, a->x_mid, w->ln2, d->N, d->C, (float)x->cfg->rms_norm_eps);
    swiglu_mlp_forward(o, &m, a->x_out, a->ln2);
    o->add(o, a->x_out, a->x_mid, (size_t)d->N * d->C);
}

void ffn_backward_input(const Ctx *x, const BlockWeights *w, BlockBwd *bw, BlockActs *a, act *dres)
{
    Ops *o = x->o;
    const Dims *d = x->d;
    SwigluMlp m = dense_mlp(x, w, NULL, a, bw);
    o->copy(o, bw->dout, dres, o->act_bytes * d->N * d->C);
    o->zero(o, bw->dln2, o->act_bytes * d->N * d->C);
    swiglu_mlp_backward_input(o, &m, bw->dln2, dres);
    o->rmsnorm_backward_input(o, dres, bw->dln2, a->x_mid, w->ln2, a->ln2_rstd, d->N, d->C);
}

void ffn_backward_weight(const Ctx *x, const BlockWeights *w, BlockGrads *g, const BlockBwd *bw,
                         const BlockActs *a)
{
    const Dims *d = x->d;
    SwigluMlp m = dense_mlp(x, w, g, a, bw);
    swiglu_mlp_backward_weight(x->o, &m, bw->dout, a->ln2);
    x->o->rmsnorm_backward_weight(x->o, g->ln2, bw->dln2, a->x_mid, a->ln2_rstd, d->N, d->C);
}
