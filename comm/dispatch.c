/* comm/dispatch.c - dispatch/combine over an EP group of one rank (see dispatch.h).
 * The permutation kernels are ops of the backend; this file owns the phases and the handle. */
#include "dispatch.h"

#include <stdlib.h>

#include "../runtime/common.h"

void ep_handle_plan(EpHandle *h, int N, int K, int E, int C, Arena *ar)
{
    h->N = N;
    h->K = K;
    h->E = E;
    h->C = C;
    h->pos = arena_take(ar, (size_t)N * K * sizeof(int32_t));
    h->offsets = arena_take(ar, (size_t)(E + 1) * sizeof(int32_t));
    h->offsets_host = ar->base ? xcalloc((size_t)E + 1, sizeof(int32_t)) : NULL;
}

void ep_handle_free(EpHandle *h)
{
    free(h->offsets_host);
    h->offsets_host = NULL;
}

void ep_layout(Ops *o, EpHandle *h, const int32_t *idx)
{
    o->moe_permute_layout(o, h->pos, h->offsets, h->offsets_host, idx, h->N, h->K, h->E);
    CHECK(h->offsets_host[h->E] == h->N * h->K);
}

void ep_dispatch(Ops *o, const EpHandle *h, float *recv, const float *x)
{
    o->moe_gather(o, recv, x, h->pos, h->N, h->K, h->C);
}

void ep_dispatch_backward(Ops *o, const EpHandle *h, float *dx, const float *drecv)
{
    o->moe_gather_backward(o, dx, drecv, h->pos, h->N, h->K, h->C);
}

void ep_combine(Ops *o, const EpHandle *h, float *y, const float *expert_out, const float *w)
{
    o->moe_combine(o, y, expert_out, w, h->pos, h->N, h->K, h->C);
}

void ep_combine_backward(Ops *o, const EpHandle *h, float *dexpert_out, float *dw, const float *dy,
                         const float *expert_out, const float *w)
{
    o->moe_combine_backward(o, dexpert_out, dw, dy, expert_out, w, h->pos, h->N, h->K, h->C);
}
