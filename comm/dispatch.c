/* comm/dispatch.c - dispatch/combine over an EP group (see dispatch.h): the phases, the
 * handle and the exchanges. The row permutations are ops of the backend (moe_permute_layout,
 * moe_gather, moe_combine and their backwards), the transfers are entries of the comm table
 * (isend/irecv per chunk, the local copy for a rank's own rows), so the same code serves the
 * mpi and (issue 6) nccl backends. Not here: routing or the experts (model/moe.c).
 */
#include "dispatch.h"

#include <stdlib.h>
#include <string.h>

#include "../runtime/common.h"

/* The group's buffers are planned at 4 bytes an element (ep_group_plan has no table), enough
 * for every activation type (kernels/ops.h act). */
static int multi(Ops *o, const EpHandle *h)
{
    CHECK(o->act_bytes <= sizeof(float));
    return h->g && h->g->size > 1;
}

void ep_group_init(EpGroup *g, Comm *comm, int node, int E)
{
    memset(g, 0, sizeof *g);
    g->comm = comm;
    g->size = comm->size;
    g->rank = comm->rank;
    g->E = E;
    if (E < 1 || E % g->size != 0)
        DIE("ep: an EP group of %d ranks does not divide 'n_routed_experts' = %d (set parallel.ep to a divisor)",
            g->size, E);
    const int P = g->size;
    g->n_local = E / P;
    g->node_of = xcalloc((size_t)P, sizeof(int32_t));
    int32_t mine = node;
    comm_allgather(comm, g->node_of, &mine, 1, COMM_I32);
    g->cnt_send = xcalloc((size_t)E, sizeof(int32_t));
    g->cnt_recv = xcalloc((size_t)E, sizeof(int32_t));
    g->a2a = xcalloc((size_t)4 * P, sizeof(size_t));
    /* an exchange posts a receive and a send per (peer, local expert) and a copy per local expert */
    g->req = comm_request_create(comm, (2 * P - 1) * g->n_local);
}

void ep_group_plan(EpGroup *g, int N, int K, int C, Arena *ar)
{
    g->N = N;
    g->K = K;
    g->C = C;
    if (g->size == 1) return;
    const size_t NK = (size_t)N * K;
    g->send = arena_take(ar, NK * C * sizeof(float));
    g->grad = arena_take(ar, (size_t)g->size * NK * C * sizeof(float));
}

void ep_group_free(EpGroup *g)
{
    comm_request_free(g->req);
    free(g->node_of);
    free(g->cnt_send);
    free(g->cnt_recv);
    free(g->a2a);
    memset(g, 0, sizeof *g);
}

void ep_handle_plan_group(EpHandle *h, EpGroup *g, int N, int K, int E, int C, Arena *ar)
{
    memset(h, 0, sizeof *h);
    h->N = N;
    h->K = K;
    h->E = E;
    h->C = C;
    h->g = g;
    const int P = g ? g->size : 1;
    if (g) CHECK(g->E == E && g->N == N && g->K == K && g->C == C);
    h->n_local = E / P;
    h->recv_cap = P * N * K;
    h->pos = arena_take(ar, (size_t)N * K * sizeof(int32_t));
    h->offsets = arena_take(ar, (size_t)(E + 1) * sizeof(int32_t));
    if (P > 1) h->ret = arena_take(ar, (size_t)N * K * C * sizeof(float));
    if (!ar->base) return;
    h->offsets_host = xcalloc((size_t)E + 1, sizeof(int32_t));
    h->recv_offsets_host = P == 1 ? h->offsets_host : xcalloc((size_t)h->n_local + 1, sizeof(int32_t));
    h->recv_counts = xcalloc((size_t)h->n_local * P, sizeof(int32_t));
    h->recv_starts = xcalloc((size_t)h->n_local * P, sizeof(int32_t));
}

void ep_handle_plan(EpHandle *h, int N, int K, int E, int C, Arena *ar)
{
    ep_handle_plan_group(h, NULL, N, K, E, C, ar);
}

void ep_handle_free(EpHandle *h)
{
    if (h->recv_offsets_host != h->offsets_host) free(h->recv_offsets_host);
    free(h->offsets_host);
    free(h->recv_counts);
    free(h->recv_starts);
    h->offsets_host = h->recv_offsets_host = h->recv_counts = h->recv_starts = NULL;
}

/* Count exchange: every rank sends each peer the row counts of the peer's local experts, then
 * lays out its receive buffer expert-major, source rank within an expert. */
static void count_exchange(EpHandle *h)
{
    EpGroup *g = h->g;
    const int P = g->size, nl = h->n_local;
    for (int e = 0; e < h->E; e++) g->cnt_send[e] = h->offsets_host[e + 1] - h->offsets_host[e];
    size_t *sc = g->a2a, *so = sc + P, *rc = so + P, *ro = rc + P;   /* (P) each */
    for (int p = 0; p < P; p++) {
        sc[p] = rc[p] = (size_t)nl;
        so[p] = ro[p] = (size_t)p * nl;
    }
    comm_alltoallv(g->comm, g->cnt_recv, rc, ro, g->cnt_send, sc, so, COMM_I32);
    int32_t row = 0;
    for (int j = 0; j < nl; j++) {
        h->recv_offsets_host[j] = row;
        for (int s = 0; s < P; s++) {
            int32_t n = g->cnt_recv[s * nl + j];
            h->recv_counts[j * P + s] = n;
            h->recv_starts[j * P + s] = row;
            row += n;
        }
    }
    h->recv_offsets_host[nl] = row;
    h->recv_rows = row;
    CHECK(row <= h->recv_cap);
}

void ep_layout(Ops *o, EpHandle *h, const int32_t *idx)
{
    o->moe_permute_layout(o, h->pos, h->offsets, h->offsets_host, idx, h->N, h->K, h->E);
    CHECK(h->offsets_host[h->E] == h->N * h->K);
    if (multi(o, h)) {
        count_exchange(h);
        return;
    }
    h->recv_rows = h->N * h->K;
    for (int e = 0; e < h->E; e++) {
        h->recv_starts[e] = h->offsets_host[e];
        h->recv_counts[e] = h->offsets_host[e + 1] - h->offsets_host[e];
    }
}

/* Rows in send order (every rank) -> rows in receive order (their experts' ranks). Peers are
 * visited from rank + 1 on, so the ranks do not all start with rank 0. */
static void exchange_to_experts(Ops *o, const EpHandle *h, act *recv_, const act *send_)
{
    EpGroup *g = h->g;
    const int P = g->size, me = g->rank, nl = h->n_local;
    const size_t C = (size_t)h->C * o->act_bytes;   /* bytes of a row */
    char *recv = (char *)recv_;
    const char *send = (const char *)send_;
    for (int i = 1; i < P; i++) {
        int s = (me + P - i) % P;
        for (int j = 0; j < nl; j++) {
            int32_t n = h->recv_counts[j * P + s];
            if (n) comm_irecv(g->comm, recv + h->recv_starts[j * P + s] * C, n * C, COMM_BYTE, s, j, g->req);
        }
    }
    for (int i = 1; i < P; i++) {
        int p = (me + i) % P;
        for (int j = 0; j < nl; j++) {
            int32_t a = h->offsets_host[p * nl + j], n = h->offsets_host[p * nl + j + 1] - a;
            if (n) comm_isend(g->comm, send + a * C, n * C, COMM_BYTE, p, j, g->req);
        }
    }
    for (int j = 0; j < nl; j++) {
        int32_t a = h->offsets_host[me * nl + j], n = h->offsets_host[me * nl + j + 1] - a;
        if (n) comm_icopy(g->comm, recv + h->recv_starts[j * P + me] * C, send + a * C, n * C, g->req);
    }
    comm_wait(g->req);
}

/* The reverse: rows in receive order (experts' ranks) -> rows in send order (their tokens' ranks). */
static void exchange_to_sources(Ops *o, const EpHandle *h, act *back_, const act *rows_)
{
    EpGroup *g = h->g;
    const int P = g->size, me = g->rank, nl = h->n_local;
    const size_t C = (size_t)h->C * o->act_bytes;   /* bytes of a row */
    char *back = (char *)back_;
    const char *rows = (const char *)rows_;
    for (int i = 1; i < P; i++) {
        int p = (me + P - i) % P;
        for (int j = 0; j < nl; j++) {
            int32_t a = h->offsets_host[p * nl + j], n = h->offsets_host[p * nl + j + 1] - a;
            if (n) comm_irecv(g->comm, back + a * C, n * C, COMM_BYTE, p, j, g->req);
        }
    }
    for (int i = 1; i < P; i++) {
        int s = (me + i) % P;
        for (int j = 0; j < nl; j++) {
            int32_t n = h->recv_counts[j * P + s];
            if (n) comm_isend(g->comm, rows + h->recv_starts[j * P + s] * C, n * C, COMM_BYTE, s, j, g->req);
        }
    }
    for (int j = 0; j < nl; j++) {
        int32_t a = h->offsets_host[me * nl + j], n = h->offsets_host[me * nl + j + 1] - a;
        if (n) comm_icopy(g->comm, back + a * C, rows + h->recv_starts[j * P + me] * C, n * C, g->req);
    }
    comm_wait(g->req);
}

void ep_dispatch(Ops *o, const EpHandle *h, act *recv, const act *x)
{
    if (!multi(o, h)) {
        o->moe_gather(o, recv, x, h->pos, h->N, h->K, h->C);
        return;
    }
    o->moe_gather(o, h->g->send, x, h->pos, h->N, h->K, h->C);
    exchange_to_experts(o, h, recv, h->g->send);
}

void ep_dispatch_backward(Ops *o, const EpHandle *h, act *dx, const act *drecv)
{
    if (!multi(o, h)) {
        o->moe_gather_backward(o, dx, drecv, h->pos, h->N, h->K, h->C);
        return;
    }
    exchange_to_sources(o, h, h->g->send, drecv);
    o->moe_gather_backward(o, dx, h->g->send, h->pos, h->N, h->K, h->C);
}

void ep_combine(Ops *o, const EpHandle *h, act *y, const act *expert_out, const float *w)
{
    if (!multi(o, h)) {
        o->moe_combine(o, y, expert_out, w, h->pos, h->N, h->K, h->C);
        return;
    }
    exchange_to_sources(o, h, h->ret, expert_out);
    o->moe_combine(o, y, h->ret, w, h->pos, h->N, h->K, h->C);
}

void ep_combine_backward(Ops *o, const EpHandle *h, act *dexpert_out, float *dw, const act *dy,
                         const act *expert_out, const float *w)
{
    if (!multi(o, h)) {
        o->moe_combine_backward(o, dexpert_out, dw, dy, expert_out, w, h->pos, h->N, h->K, h->C);
        return;
    }
    EpGroup *g = h->g;
    const size_t NKC = (size_t)h->N * h->K * h->C;
    o->zero(o, g->send, NKC * o->act_bytes);
    o->moe_combine_backward(o, g->send, dw, dy, h->ret, w, h->pos, h->N, h->K, h->C);
    exchange_to_experts(o, h, g->grad, g->send);
    o->add(o, dexpert_out, g->grad, (size_t)h->recv_rows * h->C);
}

int ep_max_nodes(const int32_t *idx, int N, int K, int E, int P, const int32_t *node_of)
{
    CHECK(P >= 1 && E % P == 0);
    const int nl = E / P;
    int most = 0;
    for (int n = 0; n < N; n++) {
        const int32_t *t = idx + (size_t)n * K;   /* (K) */
        int distinct = 0;
        for (int k = 0; k < K; k++) {
            if (t[k] < 0 || t[k] >= E) DIE("ep: expert index %d of token %d is outside 0..%d", t[k], n, E - 1);
            int node = node_of[t[k] / nl], seen = 0;
            for (int i = 0; i < k && !seen; i++) seen = node_of[t[i] / nl] == node;
            distinct += !seen;
        }
        if (distinct > most) most = distinct;
    }
    return most;
}
