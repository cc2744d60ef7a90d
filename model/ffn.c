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

void swiglu_mlp_backward(Ops *o, const SwigluMlp *m, act *dinp, const act *dout, const act *inp)
{
    const int n = m->n, C = m->C, hidden = m->hidden;
    o->zero(o, m->dh, o->act_bytes * (size_t)n * hidden);
    o->matmul_backward_input(o, m->dh, dout, m->down, n, hidden, C);
    o->matmul_backward_weight(o, m->ddown, m->down, dout, m->h, n, hidden, C);
    o->zero(o, m->dgu, o->act_bytes * (size_t)n * 2 * hidden);
    o->swiglu_backward(o, m->dgu, m->dh, m->gu, n, hidden);
    o->matmul_backward_input(o, dinp, m->dgu, m->gate_up, n, C, 2 * hidden);
    o->matmul_backward_weight(o, m->dgate_up, m->gate_up, m->dgu, inp, n, C, 2 * hidden);
}

/* The dense FFN's MLP: its weights, their gradients (g may be NULL) and this block's buffers. */
static SwigluMlp dense_mlp(const Ctx *x, const BlockWeights *w, BlockGrads *g, BlockActs *a)
{
    SwigluMlp m = { &w->ffn_gate_up, &w->ffn_down, g ? g->ffn_gate_up : NULL, g ? g->ffn_down : NULL,
                    a->gu, a->h, x->s ? x->s->dgu : NULL, x->s ? x->s->dh : NULL, x->d->N, x->d->C, x->d->I };
    return m;
}

void ffn_forward(const Ctx *x, const BlockWeights *w, BlockActs *a)
{
    Ops *o = x->o;
    const Dims *d = x->d;
    SwigluMlp m = dense_mlp(x, w, NULL, a);
    o->rmsnorm_forward(o, a->ln2, a->ln2_rstd, a->x_mid, w->ln2, d->N, d->C, (float)x->cfg->rms_norm_eps);
    swiglu_mlp_forward(o, &m, a->x_out, a->ln2);
    o->add(o, a->x_out, a->x_mid, (size_t)d->N * d->C);
}

void ffn_backward(const Ctx *x, const BlockWeights *w, BlockGrads *g, BlockActs *a, act *dres)
{
    Ops *o = x->o;
    const Dims *d = x->d;
    Scratch *s = x->s;
    SwigluMlp m = dense_mlp(x, w, g, a);
    o->zero(o, s->dln, o->act_bytes * d->N * d->C);
    swiglu_mlp_backward(o, &m, s->dln, dres, a->ln2);
    o->rmsnorm_backward(o, dres, g->ln2, s->dln, a->x_mid, w->ln2, a->ln2_rstd, d->N, d->C);
}
