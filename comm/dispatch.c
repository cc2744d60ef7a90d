/* comm/dispatch.c - dispatch/combine over an EP group (see dispatch.h): the phases, the
 * handle and the exchanges. The row permutations are ops of the backend (moe_permute_layout,
 * moe_gather, moe_combine and their backwards), the transfers are entries of the comm table
 * (isend/irecv per chunk, the local copy for a rank's own rows), so the same code serves the
 * mpi and (issue 6) nccl backends. Not here: routing or the experts (model/moe.c).
 *
 * Wire formats (SPEC section 6). Under the fp8 table the dispatch carries each row as FP8
 * codes with one power-of-two scale per 1x128 tile (kernels/cpu/cpu_wire.h: C + 4*ceil(C/128)
 * bytes a row instead of 4C): quantised after the gather in the post, dequantised into recv
 * in the wait. The one-rank path sends nothing and rounds nothing: there the expert GEMM's
 * own 1x128 quantisation is the only one, as on one GPU. With P > 1 the GEMM re-quantises
 * the received rows with the same power-of-two 1x128 tiles (the experts' gate_up weights
 * carry act_pow2, kernels/ops.h), which gives every decoded row back exactly, so the expert
 * Fprop sees the same operand at every P. (The experts' Wgrad still reads the received rows
 * themselves: E4M3 values at P > 1, the BF16 rows at P = 1.) Under bf16 and fp8 the combine
 * carries BF16 (2C bytes a row): exact, the rows already hold BF16 values (every act store
 * rounds). The backward exchanges keep the activation width. fp32: unchanged. The
 * wire formats are host code: tables with act in host memory (cpu) only.
 */
#include "comm/dispatch.h"

#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_wire.h"
#include "runtime/common.h"

/* The group's buffers are planned at 4 bytes an element (ep_group_plan has no table), enough
 * for every activation type (kernels/ops.h act). */
static int multi(Ops *o, const EpHandle *h)
{
    CHECK(o->act_bytes <= sizeof(float));
    return h->g && h->g->size > 1;
}

/* The compact wire formats (header comment); BUG on a table whose act is not host memory. */
static int fp8_wire(const Ops *o)
{
    if (o->precision != PREC_FP8) return 0;
    if (strcmp(o->name, "cpu")) BUG("ep: the FP8 dispatch payload is host code; table '%s'", o->name);
    return 1;
}

static int bf16_wire(const Ops *o)
{
    if (o->precision == PREC_FP32) return 0;
    if (strcmp(o->name, "cpu")) BUG("ep: the BF16 combine payload is host code; table '%s'", o->name);
    return 1;
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
    for (int l = 0; l < EP_LANES; l++) {
        EpLane *ln = &g->lane[l];
        ln->comm = comm;
        /* an exchange posts a receive and a send per (peer, local expert) and a copy per local expert */
        ln->req = comm_request_create(comm, (2 * P - 1) * g->n_local);
        ln->tag0 = l * g->n_local;
    }
}

void ep_group_plan(EpGroup *g, int N, int K, int C, Arena *ar)
{
    g->N = N;
    g->K = K;
    g->C = C;
    if (g->size == 1) return;
    const size_t NK = (size_t)N * K;
    for (int l = 0; l < EP_LANES; l++) {
        g->lane[l].send = arena_take(ar, NK * C * sizeof(float));
        g->lane[l].grad = arena_take(ar, (size_t)g->size * NK * C * sizeof(float));
    }
}

void ep_group_free(EpGroup *g)
{
    for (int l = 0; l < EP_LANES; l++) {
        if (g->lane[l].busy)
            BUG("ep: the EP group is freed while lane %d has a %s in flight", l, ep_exchange_name(g->lane[l].busy));
        comm_request_free(g->lane[l].req);
    }
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
    if (h->busy) BUG("ep: a handle is freed with its %s in flight on lane %d", ep_exchange_name(h->busy), h->lane);
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
    if (h->busy)
        BUG("ep: layout of a handle whose %s is in flight on lane %d (wait for it first)", ep_exchange_name(h->busy),
            h->lane);
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

/* Rows in send order (every rank) -> rows in receive order (their experts' ranks), posted
 * into the lane's request (rows of C bytes). Peers are visited from rank + 1 on, so the ranks do not all start
 * with rank 0. */
static void post_to_experts(const EpHandle *h, EpLane *ln, size_t C, void *recv_, const void *send_)
{
    const EpGroup *g = h->g;
    const int P = g->size, me = g->rank, nl = h->n_local;   /* C: bytes of a row */
    char *recv = (char *)recv_;
    const char *send = (const char *)send_;
    for (int i = 1; i < P; i++) {
        int s = (me + P - i) % P;
        for (int j = 0; j < nl; j++) {
            int32_t n = h->recv_counts[j * P + s];
            if (n)
                comm_irecv(ln->comm, recv + h->recv_starts[j * P + s] * C, n * C, COMM_BYTE, s, ln->tag0 + j, ln->req);
        }
    }
    for (int i = 1; i < P; i++) {
        int p = (me + i) % P;
        for (int j = 0; j < nl; j++) {
            int32_t a = h->offsets_host[p * nl + j], n = h->offsets_host[p * nl + j + 1] - a;
            if (n) comm_isend(ln->comm, send + a * C, n * C, COMM_BYTE, p, ln->tag0 + j, ln->req);
        }
    }
    for (int j = 0; j < nl; j++) {
        int32_t a = h->offsets_host[me * nl + j], n = h->offsets_host[me * nl + j + 1] - a;
        if (n) comm_icopy(ln->comm, recv + h->recv_starts[j * P + me] * C, send + a * C, n * C, ln->req);
    }
}

/* The reverse: rows in receive order (experts' ranks) -> rows in send order (their tokens'
 * ranks), posted into the lane's request (rows of C bytes). */
static void post_to_sources(const EpHandle *h, EpLane *ln, size_t C, void *back_, const void *rows_)
{
    const EpGroup *g = h->g;
    const int P = g->size, me = g->rank, nl = h->n_local;   /* C: bytes of a row */
    char *back = (char *)back_;
    const char *rows = (const char *)rows_;
    for (int i = 1; i < P; i++) {
        int p = (me + P - i) % P;
        for (int j = 0; j < nl; j++) {
            int32_t a = h->offsets_host[p * nl + j], n = h->offsets_host[p * nl + j + 1] - a;
            if (n) comm_irecv(ln->comm, back + a * C, n * C, COMM_BYTE, p, ln->tag0 + j, ln->req);
        }
    }
    for (int i = 1; i < P; i++) {
        int s = (me + i) % P;
        for (int j = 0; j < nl; j++) {
            int32_t n = h->recv_counts[j * P + s];
            if (n)
                comm_isend(ln->comm, rows + h->recv_starts[j * P + s] * C, n * C, COMM_BYTE, s, ln->tag0 + j, ln->req);
        }
    }
    for (int j = 0; j < nl; j++) {
        int32_t a = h->offsets_host[me * nl + j], n = h->offsets_host[me * nl + j + 1] - a;
        if (n) comm_icopy(ln->comm, back + a * C, rows + h->recv_starts[j * P + me] * C, n * C, ln->req);
    }
}

const char *ep_exchange_name(EpExchange x)
{
    static const char *names[] = { "idle", "dispatch", "dispatch backward", "combine", "combine backward" };
    CHECK(x >= EP_IDLE && x <= EP_COMBINE_BACKWARD);
    return names[x];
}

/* Marks x in flight on h and (with a group) on its lane; the lane, or NULL without a group.
 * A busy lane or handle is the caller's bug: the lists that post must wait first. */
static EpLane *claim(EpHandle *h, int lane, EpExchange x)
{
    if (lane < 0 || lane >= EP_LANES)
        BUG("ep: %s posted on lane %d, outside 0..%d", ep_exchange_name(x), lane, EP_LANES - 1);
    if (h->busy)
        BUG("ep: %s posted on lane %d for a handle whose %s is still in flight on lane %d (wait for it first)",
            ep_exchange_name(x), lane, ep_exchange_name(h->busy), h->lane);
    h->busy = x;
    h->lane = lane;
    if (!h->g) return NULL;
    EpLane *ln = &h->g->lane[lane];
    if (ln->busy)
        BUG("ep: lane %d reused while its %s is in flight: %s posted on it before the wait (wait first, or use "
            "the other lane)", lane, ep_exchange_name(ln->busy), ep_exchange_name(x));
    ln->busy = x;
    ln->h = h;
    ln->out = NULL;
    ln->w = NULL;
    return ln;
}

/* Ends x on h: completes its lane's messages (P > 1) and frees the lane; the lane, or NULL
 * without a group. */
static EpLane *release(EpHandle *h, EpExchange x)
{
    if (h->busy != x)
        BUG("ep: waiting for a %s of a handle that has %s in flight", ep_exchange_name(x),
            h->busy ? ep_exchange_name(h->busy) : "nothing");
    h->busy = EP_IDLE;
    if (!h->g) return NULL;
    EpLane *ln = &h->g->lane[h->lane];
    CHECK(ln->busy == x && ln->h == h);
    comm_wait(ln->req);
    ln->busy = EP_IDLE;
    ln->h = NULL;
    return ln;
}

void ep_dispatch_post(Ops *o, EpHandle *h, int lane, act *recv, const act *x)
{
    EpLane *ln = claim(h, lane, EP_DISPATCH);
    const size_t arow = (size_t)h->C * o->act_bytes;
    if (!multi(o, h)) {
        o->moe_gather(o, recv, x, h->pos, h->N, h->K, h->C);
        return;
    }
    if (!fp8_wire(o)) {
        o->moe_gather(o, ln->send, x, h->pos, h->N, h->K, h->C);
        post_to_experts(h, ln, arow, recv, ln->send);
        return;
    }
    /* FP8: gather into the (idle) grad buffer, pack into send, receive packed rows into grad;
     * P*N*K packed rows fit there while a packed row is at most an FP32 one (C >= 2). */
    const size_t prow = wire_fp8_row_bytes(h->C);
    if (prow > arow) BUG("ep: FP8 dispatch rows of %d values do not fit the lane buffers", h->C);
    o->moe_gather(o, ln->grad, x, h->pos, h->N, h->K, h->C);
    wire_fp8_pack((uint8_t *)ln->send, (const float *)ln->grad, (size_t)h->N * h->K, h->C);
    ln->out = recv;
    post_to_experts(h, ln, prow, ln->grad, ln->send);
}

void ep_dispatch_wait(Ops *o, EpHandle *h)
{
    EpLane *ln = release(h, EP_DISPATCH);
    if (multi(o, h) && fp8_wire(o))
        wire_fp8_unpack((float *)ln->out, (const uint8_t *)ln->grad, (size_t)h->recv_rows, h->C);
}

void ep_dispatch_backward_post(Ops *o, EpHandle *h, int lane, act *dx, const act *drecv)
{
    EpLane *ln = claim(h, lane, EP_DISPATCH_BACKWARD);
    if (!multi(o, h)) {
        o->moe_gather_backward(o, dx, drecv, h->pos, h->N, h->K, h->C);
        return;
    }
    ln->out = dx;
    post_to_sources(h, ln, (size_t)h->C * o->act_bytes, ln->send, drecv);
}

void ep_dispatch_backward_wait(Ops *o, EpHandle *h)
{
    EpLane *ln = release(h, EP_DISPATCH_BACKWARD);
    if (multi(o, h)) o->moe_gather_backward(o, ln->out, ln->send, h->pos, h->N, h->K, h->C);
}

void ep_combine_post(Ops *o, EpHandle *h, int lane, act *y, const act *expert_out, const float *w)
{
    EpLane *ln = claim(h, lane, EP_COMBINE);
    if (!multi(o, h)) {
        o->moe_combine(o, y, expert_out, w, h->pos, h->N, h->K, h->C);
        return;
    }
    ln->out = y;
    ln->w = w;
    if (!bf16_wire(o)) {
        post_to_sources(h, ln, (size_t)h->C * o->act_bytes, h->ret, expert_out);
        return;
    }
    /* BF16: the expert rows packed into the (idle) grad buffer, received packed into ret */
    wire_bf16_pack((uint16_t *)ln->grad, (const float *)expert_out, (size_t)h->recv_rows * h->C);
    post_to_sources(h, ln, (size_t)h->C * sizeof(uint16_t), h->ret, ln->grad);
}

void ep_combine_wait(Ops *o, EpHandle *h)
{
    EpLane *ln = release(h, EP_COMBINE);
    if (!multi(o, h)) return;
    if (bf16_wire(o)) wire_bf16_unpack_inplace(h->ret, (size_t)h->N * h->K * h->C);
    o->moe_combine(o, ln->out, h->ret, ln->w, h->pos, h->N, h->K, h->C);
}

void ep_combine_backward_post(Ops *o, EpHandle *h, int lane, act *dexpert_out, float *dw, const act *dy,
                              const act *expert_out, const float *w)
{
    EpLane *ln = claim(h, lane, EP_COMBINE_BACKWARD);
    if (!multi(o, h)) {
        o->moe_combine_backward(o, dexpert_out, dw, dy, expert_out, w, h->pos, h->N, h->K, h->C);
        return;
    }
    const size_t NKC = (size_t)h->N * h->K * h->C;
    o->zero(o, ln->send, NKC * o->act_bytes);
    o->moe_combine_backward(o, ln->send, dw, dy, h->ret, w, h->pos, h->N, h->K, h->C);
    ln->out = dexpert_out;
    post_to_experts(h, ln, (size_t)h->C * o->act_bytes, ln->grad, ln->send);
}

void ep_combine_backward_wait(Ops *o, EpHandle *h)
{
    EpLane *ln = release(h, EP_COMBINE_BACKWARD);
    if (multi(o, h)) o->add(o, ln->out, ln->grad, (size_t)h->recv_rows * h->C);
}

void ep_dispatch(Ops *o, EpHandle *h, act *recv, const act *x)
{
    ep_dispatch_post(o, h, EP_LANE_F, recv, x);
    ep_dispatch_wait(o, h);
}

void ep_dispatch_backward(Ops *o, EpHandle *h, act *dx, const act *drecv)
{
    ep_dispatch_backward_post(o, h, EP_LANE_F, dx, drecv);
    ep_dispatch_backward_wait(o, h);
}

void ep_combine(Ops *o, EpHandle *h, act *y, const act *expert_out, const float *w)
{
    ep_combine_post(o, h, EP_LANE_F, y, expert_out, w);
    ep_combine_wait(o, h);
}

void ep_combine_backward(Ops *o, EpHandle *h, act *dexpert_out, float *dw, const act *dy,
                         const act *expert_out, const float *w)
{
    ep_combine_backward_post(o, h, EP_LANE_F, dexpert_out, dw, dy, expert_out, w);
    ep_combine_backward_wait(o, h);
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
