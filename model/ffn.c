/* model/ffn.c - SwiGLU MLPs: the dense FFN sublayer of the first first_k_dense_replace
 * layers, and the SwiGLU used by shared and routed experts (SPEC.md section 2):
 *   out = down(silu(gate(x)) * up(x)),  gate and up as ONE GEMM over [gate; up] (2h, C).
 * Not here: routing (model/moe.c). */
#include "ffn.h"

void swiglu_mlp_forward(Ops *o, float *out, const float *inp, const float *gate_up, const float *down,
                        float *gu, float *h, int n, int C, int hidden)
{
    o->matmul_forward(o, gu, inp, gate_up, n, C, 2 * hidden);
    o->swiglu_forward(o, h, gu, n, hidden);
    o->matmul_forward(o, out, h, down, n, hidden, C);
}

void swiglu_mlp_backward(Ops *o, float *dinp, float *dgate_up, float *ddown, const float *dout,
                         const float *inp, const float *gate_up, const float *down, const float *gu,
                         const float *h, float *dgu, float *dh, int n, int C, int hidden)
{
    o->zero(o, dh, sizeof(float) * (size_t)n * hidden);
    o->matmul_backward_input(o, dh, dout, down, n, hidden, C);
    o->matmul_backward_weight(o, ddown, dout, h, n, hidden, C);
    o->zero(o, dgu, sizeof(float) * (size_t)n * 2 * hidden);
    o->swiglu_backward(o, dgu, dh, gu, n, hidden);
    o->matmul_backward_input(o, dinp, dgu, gate_up, n, C, 2 * hidden);
    o->matmul_backward_weight(o, dgate_up, dgu, inp, n, C, 2 * hidden);
}

void ffn_forward(const Ctx *x, const BlockWeights *w, BlockActs *a)
{
    Ops *o = x->o;
    const Dims *d = x->d;
    o->rmsnorm_forward(o, a->ln2, a->ln2_rstd, a->x_mid, w->ln2, d->N, d->C, (float)x->cfg->rms_norm_eps);
    swiglu_mlp_forward(o, a->x_out, a->ln2, w->ffn_gate_up, w->ffn_down, a->gu, a->h, d->N, d->C, d->I);
    o->add(o, a->x_out, a->x_mid, (size_t)d->N * d->C);
}

void ffn_backward(const Ctx *x, const BlockWeights *w, BlockWeights *g, BlockActs *a, float *dres)
{
    Ops *o = x->o;
    const Dims *d = x->d;
    Scratch *s = x->s;
    o->zero(o, s->dln, sizeof(float) * d->N * d->C);
    swiglu_mlp_backward(o, s->dln, g->ffn_gate_up, g->ffn_down, dres, a->ln2, w->ffn_gate_up, w->ffn_down,
                        a->gu, a->h, s->dgu, s->dh, d->N, d->C, d->I);
    o->rmsnorm_backward(o, dres, g->ln2, s->dln, a->x_mid, w->ln2, a->ln2_rstd, d->N, d->C);
}
