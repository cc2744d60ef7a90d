/* model/ffn.h - the SwiGLU MLP shared by the dense FFN, shared experts and routed experts.
 * Internal to model/. */
#ifndef DSTRAIN_FFN_H
#define DSTRAIN_FFN_H

#include "layers.h"

/* One SwiGLU MLP over n rows: out (n,C) = (silu(gate) * up) W_down^T with
 * [gate|up] = inp (n,C) W_gate_up^T (2h, C), h = hidden. */
typedef struct SwigluMlp {
    const Wgt *gate_up, *down;  /* (2h, C), (C, h) */
    float *dgate_up, *ddown;    /* their gradients (backward; accumulated) */
    act *gu, *h;                /* (n,2h), (n,h) written by forward, kept for backward */
    act *dgu;                   /* (n,2h) written by B, read by W */
    act *dh;                    /* (n,h) B's scratch */
    int n, C, hidden;
} SwigluMlp;

void swiglu_mlp_forward(Ops *o, const SwigluMlp *m, act *out, const act *inp);
/* B: dinp (n,C) += the input gradient (dgu filled); W: dgate_up, ddown accumulate, from the
 * same dout and inp and the dgu B left. */
void swiglu_mlp_backward_input(Ops *o, const SwigluMlp *m, act *dinp, const act *dout);
void swiglu_mlp_backward_weight(Ops *o, const SwigluMlp *m, const act *dout, const act *inp);

#endif
