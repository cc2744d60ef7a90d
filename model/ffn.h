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
    act *dgu, *dh;              /* (n,2h), (n,h) backward scratch */
    int n, C, hidden;
} SwigluMlp;

void swiglu_mlp_forward(Ops *o, const SwigluMlp *m, act *out, const act *inp);
/* dinp (n,C) += the input gradient; dgate_up, ddown accumulate. */
void swiglu_mlp_backward(Ops *o, const SwigluMlp *m, act *dinp, const act *dout, const act *inp);

#endif
