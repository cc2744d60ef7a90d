/* comm/dispatch.h - MoE token dispatch and combine, in DeepEP's phases:
 *
 *   ep_layout    routing (idx) -> where each (token, slot) goes: per-expert row offsets and
 *                the row of every (token, slot) in the expert-major receive buffer
 *   (count exchange between EP ranks goes here once the EP group has more than one rank)
 *   ep_dispatch  token rows -> expert-major rows          backward: ep_dispatch_backward
 *   ...local experts run on rows [offsets[e], offsets[e+1]) of expert e...
 *   ep_combine   expert rows, weighted, summed back into token rows   backward likewise
 *
 * The backward of dispatch is a combine (rows summed back per token) and the backward of
 * combine is a dispatch (token gradients sent to the rows), so the same layout (the handle)
 * serves all four.
 *
 * This version serves an EP group of one rank: dispatch is a permutation on the rank.
 * Dropless: any load, including every token to one expert and experts with no token.
 */
#ifndef DSTRAIN_DISPATCH_H
#define DSTRAIN_DISPATCH_H

#include <stddef.h>
#include <stdint.h>

#include "../kernels/ops.h"
#include "../runtime/common.h"

typedef struct EpHandle {
    int N, K, E, C;
    int32_t *pos;           /* (N,K) backend memory: row of (token n, slot k) */
    int32_t *offsets;       /* (E+1) backend memory */
    int32_t *offsets_host;  /* (E+1) host copy: the host launches one GEMM per expert */
} EpHandle;

/* Plan the handle's backend buffers in an arena (runtime/common.h); once the arena has
 * memory, the host copy of the offsets is allocated too (freed by ep_handle_free). */
void ep_handle_plan(EpHandle *h, int N, int K, int E, int C, Arena *ar);
void ep_handle_free(EpHandle *h);
void ep_layout(Ops *o, EpHandle *h, const int32_t *idx);
/* recv (N*K,C) = rows of x (N,C) in expert-major order. */
void ep_dispatch(Ops *o, const EpHandle *h, float *recv, const float *x);
/* dx (N,C) += sum over each token's rows of drecv (N*K,C). */
void ep_dispatch_backward(Ops *o, const EpHandle *h, float *dx, const float *drecv);
/* y (N,C) += sum_k w[n,k] * expert_out[row(n,k)]. */
void ep_combine(Ops *o, const EpHandle *h, float *y, const float *expert_out, const float *w);
/* dexpert_out (N*K,C) += w * dy (per row); dw (N,K) += <dy[n], expert_out[row(n,k)]>. */
void ep_combine_backward(Ops *o, const EpHandle *h, float *dexpert_out, float *dw, const float *dy,
                         const float *expert_out, const float *w);

#endif
