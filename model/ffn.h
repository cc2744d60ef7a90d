/* model/ffn.h - the SwiGLU MLP shared by the dense FFN, shared experts and routed experts.
 * Internal to model/. */
#ifndef DSTRAIN_FFN_H
#define DSTRAIN_FFN_H

#include "layers.h"

/* out (n,C) = (silu(gate) * up) W_down^T with [gate|up] = inp (n,C) W_gate_up^T (2h, C).
 * gu (n,2h) and h (n,hidden) are kept for backward. */
void swiglu_mlp_forward(Ops *o, float *out, const float *inp, const float *gate_up, const float *down,
                        float *gu, float *h, int n, int C, int hidden);
/* dinp (n,C), dgate_up, ddown accumulate; dgu (n,2h) and dh (n,h) are scratch. */
void swiglu_mlp_backward(Ops *o, float *dinp, float *dgate_up, float *ddown, const float *dout,
                         const float *inp, const float *gate_up, const float *down, const float *gu,
                         const float *h, float *dgu, float *dh, int n, int C, int hidden);

#endif
