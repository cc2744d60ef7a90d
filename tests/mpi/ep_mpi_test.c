/* tests/mpi/ep_mpi_test.c - MoE dispatch/combine over EP groups of real MPI ranks (run by
 * tests/mpi/test_mpi_comm.sh: `ep_mpi_test` under mpirun -np 2 and 4; every layout
 * (dp = world size, ep dividing it) is tried in one run).
 *
 * Self-describing payloads: row n of EP rank s in EP group gi holds ((gi*P + s)*N + n)*C + c + 1
 * in column c, so every received row names its group, source rank and token. Every rank can
 * regenerate every source's routing (seeded by rank 0's seed, the group and the source), so it
 * checks every row it receives against the exact list of (source, token, slot) its experts must
 * get, in order, and every gradient row against its sender's w * dy.
 * Loads: uniform, random, hot (every token to the same 3 experts), one expert (every slot of
 * every rank to expert E-1: the last rank receives P*N*K rows, the buffer's worst case, the
 * others nothing), empty (no token to expert 0 nor to EP rank 1's experts).
 * combine(dispatch(x)) and both backwards are also run through a one-rank handle with all E
 * experts on the same data and must agree bit for bit.
 * Post/wait halves on two lanes: micro-batch A's forward and backward interleaved with B's
 * combine and backward (lane 0 posts A's dispatch while lane 1 posts B's combine, and so on:
 * two exchanges in flight at every step), the waits in either order, or in opposite orders on
 * even and odd ranks, whose posts are also in opposite orders (the lanes' tags tell them apart
 * and chunks of the two micro-batches differ in size); A's and B's results (received rows,
 * gradient rows, y, dx, dw) must equal the blocking calls' bit for bit and pass the same route
 * checks.
 *
 * The fp8 table (FP8 dispatch payload, BF16 combine, comm/dispatch.c): payloads are BF16 values
 * that E4M3 does not hold; every received row must be wire_fp8_round of its source row (the
 * same routes as above), and y, dx, dw must equal a one-rank handle's run on the rounded rows
 * bit for bit (the BF16 combine of BF16 expert outputs is exact). Then with FP8 Linear experts
 * (act_pow2, as the model's routed gate_up): y and dw through the wire equal the one-rank
 * path's on the raw rows bit for bit (the ep 1 MoE output is the ep > 1 one).
 *
 * Tolerances: none. Payloads are small integers and weights k/8, so every value is exact in
 * FP32; results are compared with ==.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/dispatch.h"
#include "comm/world.h"
#include "kernels/cpu/cpu_wire.h"
#include "kernels/fp8.h"
#include "kernels/ops.h"
#include "runtime/common.h"
#include "tests/mpi/mpi_testing.h"

enum { N = 48, K = 3, E = 8, C = 6 };
enum { LOAD_UNIFORM, LOAD_RANDOM, LOAD_HOT, LOAD_ONE_EXPERT, LOAD_EMPTY, N_LOADS };
static const char *LOAD_NAMES[] = { "uniform", "random", "hot", "one expert", "empty" };

/* one source rank's micro-batch */
typedef struct Src {
    int32_t idx[N * K];
    float x[N * C], w[N * K], dy[N * C];
} Src;

/* the "experts": exact elementwise maps that depend on the global expert (rounded to BF16
 * under the fp8 table, whose act stores hold BF16 values) */
static int round_out;
static float expert_fn(int e, float v)
{
    float y = v * (float)(e + 1) * 0.5f + (float)e;
    return round_out ? bf16_round(y) : y;
}
static float expert_grad(int e, float v)
{
    float y = v * 2 - (float)e;
    return round_out ? bf16_round(y) : y;
}

static int allowed(int load, int e, int P)
{
    if (load == LOAD_HOT) return e >= E - 3;
    if (load == LOAD_EMPTY) return e != 0 && (P == 1 || e / (E / P) != 1);
    return 1;
}

static void gen(Src *d, int load, uint64_t seed, int gi, int s, int P)
{
    Rng r;
    rng_seed(&r, seed ^ ((uint64_t)(gi * P + s) << 20) ^ ((uint64_t)load << 40));
    for (int n = 0; n < N; n++) {
        int32_t *t = d->idx + n * K;
        for (int k = 0; k < K; k++) {
            if (load == LOAD_ONE_EXPERT) { t[k] = E - 1; continue; }
            if (load == LOAD_UNIFORM) { t[k] = (n * K + k) % E; continue; }
            int dup;
            do {
                t[k] = (int32_t)(rng_u32(&r) % E);
                dup = !allowed(load, t[k], P);
                for (int i = 0; i < k; i++) dup |= t[i] == t[k];
            } while (dup);
        }
        for (int c = 0; c < C; c++) {
            d->x[n * C + c] = (float)(((gi * P + s) * N + n) * C + c + 1);
            d->dy[n * C + c] = (float)((n + 2 * c + s) % 5 - 2);
        }
        for (int k = 0; k < K; k++) d->w[n * K + k] = (float)(1 + (n + k + s) % 4) / 8;
    }
}

typedef struct Out {
    float *recv, *dexp;         /* (recv_cap, C) */
    float y[N * C], dx[N * C], dw[N * K];
} Out;

/* Under test_fp8's second part the forward experts are FP8 Linears (C, C) of the fp8 table,
 * one per global expert, with act_pow2 as the model's routed gate_up (kernels/ops.h Wgt). */
static Ops *lin_ops;
static Wgt lin_w[E];

/* Forward and backward through h: the experts are expert_fn / expert_grad of global expert
 * first + j on the rows of local expert j (forward: lin_w's Linear when lin_ops is set). */
static void experts(const EpHandle *h, int first, const Out *r, float *yp, float *drecv)
{
    const int32_t *off = h->recv_offsets_host;
    for (int j = 0; j < h->n_local; j++) {
        if (lin_ops && off[j + 1] > off[j])
            lin_ops->matmul_forward(lin_ops, (act *)(yp + off[j] * C), (const act *)(r->recv + off[j] * C),
                                    &lin_w[first + j], off[j + 1] - off[j], C, C);
        for (int row = off[j]; row < off[j + 1]; row++)
            for (int c = 0; c < C; c++) {
                if (!lin_ops) yp[row * C + c] = expert_fn(first + j, r->recv[row * C + c]);
                drecv[row * C + c] = expert_grad(first + j, r->recv[row * C + c]);
            }
    }
}

static void out_init(const EpHandle *h, Out *r)
{
    for (int i = 0; i < N * C; i++) r->y[i] = r->dx[i] = 0.5f;
    for (int i = 0; i < h->recv_cap * C; i++) r->dexp[i] = 0.25f;
    for (int i = 0; i < N * K; i++) r->dw[i] = 0.125f;
}

static void run(Ops *o, EpHandle *h, int first, const Src *d, Out *r, float *yp, float *drecv)
{
    ep_layout(o, h, d->idx);
    ep_dispatch(o, h, (act *)r->recv, (const act *)d->x);   /* cpu: FP32 act */
    experts(h, first, r, yp, drecv);
    out_init(h, r);
    ep_combine(o, h, (act *)r->y, (const act *)yp, d->w);
    ep_combine_backward(o, h, (act *)r->dexp, r->dw, (const act *)d->dy, (const act *)yp, d->w);
    ep_dispatch_backward(o, h, (act *)r->dx, (const act *)drecv);
}

/* Every received row and every gradient row against the (source, token, slot) list of each
 * local expert, regenerated from the sources' routing. */
static int check_received(const EpHandle *h, const EpGroup *g, const Src *all, const Out *r, int gi)
{
    const int P = g->size, nl = g->n_local;
    int bad = 0, row = 0;
    for (int j = 0; j < nl; j++) {
        const int e = g->rank * nl + j;
        bad += h->recv_offsets_host[j] != row;
        for (int s = 0; s < P; s++) {
            const Src *d = &all[s];
            bad += h->recv_starts[j * P + s] != row;
            int start = row;
            for (int n = 0; n < N; n++)
                for (int k = 0; k < K; k++) {
                    if (d->idx[n * K + k] != e) continue;
                    for (int c = 0; c < C; c++) {
                        bad += r->recv[row * C + c] != (float)(((gi * P + s) * N + n) * C + c + 1);
                        bad += r->dexp[row * C + c] != 0.25f + d->w[n * K + k] * d->dy[n * C + c];
                    }
                    row++;
                }
            bad += h->recv_counts[j * P + s] != row - start;
        }
    }
    bad += h->recv_offsets_host[nl] != row || h->recv_rows != row;
    return bad;
}

/* y, dx, dw of this rank's tokens against the serial formula, in slot order. */
static int check_tokens(const Src *d, const Out *r)
{
    int bad = 0;
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            float y = 0.5f, dx = 0.5f, v = d->x[n * C + c];
            for (int k = 0; k < K; k++) {
                y += d->w[n * K + k] * expert_fn(d->idx[n * K + k], v);
                dx += expert_grad(d->idx[n * K + k], v);
            }
            bad += r->y[n * C + c] != y || r->dx[n * C + c] != dx;
        }
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) {
            double dot = 0;
            for (int c = 0; c < C; c++) dot += (double)d->dy[n * C + c] * expert_fn(d->idx[n * K + k], d->x[n * C + c]);
            bad += r->dw[n * K + k] != 0.125f + (float)dot;
        }
    return bad;
}

static void plan(EpGroup *g, EpHandle *h, Arena *ar)
{
    for (int pass = 0; pass < 2; pass++) {
        if (g) ep_group_plan(g, N, K, C, ar);
        ep_handle_plan_group(h, g, N, K, E, C, ar);
        if (pass == 0) *ar = (Arena){ xcalloc(1, ar->used), 0 };
    }
}

static void out_alloc(Out *r, int cap)
{
    r->recv = xcalloc((size_t)cap * C, sizeof(float));
    r->dexp = xcalloc((size_t)cap * C, sizeof(float));
}

static void test_layout(World *w, Ops *o, int ep, uint64_t seed, int rpn)
{
    Groups *gr = groups_create(w, 1, w->size, ep);
    EpGroup g;
    ep_group_init(&g, gr->ep_comm, w->node, E);
    EpHandle h, h1;
    Arena ar = { 0 }, ar1 = { 0 };
    plan(&g, &h, &ar);
    plan(NULL, &h1, &ar1);
    const int P = g.size, gi = gr->ep_index;
    MEXPECT(g.n_local == E / P && h.recv_cap == P * N * K, "ep %d: n_local %d, capacity %d", ep, g.n_local, h.recv_cap);
    for (int i = 0; i < P; i++)
        MEXPECT(g.node_of[i] == (gi * P + i) / rpn, "ep %d: EP rank %d on node %d", ep, i, g.node_of[i]);
    Src *all = xcalloc((size_t)P, sizeof(Src));
    Out r, r1;
    out_alloc(&r, h.recv_cap);
    out_alloc(&r1, h1.recv_cap);
    float *yp = xcalloc((size_t)h.recv_cap * C, sizeof(float)), *drecv = xcalloc((size_t)h.recv_cap * C, sizeof(float));
    for (int load = 0; load < N_LOADS; load++) {
        for (int s = 0; s < P; s++) gen(&all[s], load, seed, gi, s, P);
        const Src *mine = &all[g.rank];
        run(o, &h, g.rank * g.n_local, mine, &r, yp, drecv);
        int bad_rows = check_received(&h, &g, all, &r, gi), bad_tok = check_tokens(mine, &r);
        MEXPECT(bad_rows == 0, "ep %d, %s load: %d received values/counts off their route", ep, LOAD_NAMES[load],
                bad_rows);
        MEXPECT(bad_tok == 0, "ep %d, %s load: %d token values off the serial formula", ep, LOAD_NAMES[load], bad_tok);
        if (load == LOAD_ONE_EXPERT) {
            int want = g.rank == P - 1 ? P * N * K : 0;
            MEXPECT(h.recv_rows == want, "ep %d, one expert: %d rows received, want %d", ep, h.recv_rows, want);
        }
        if (load == LOAD_EMPTY && P > 1) MEXPECT(g.rank != 1 || h.recv_rows == 0, "ep %d: rank 1 got rows", ep);
        int nodes = ep_max_nodes(mine->idx, N, K, E, P, g.node_of);
        MEXPECT(nodes >= 1 && nodes <= w->n_nodes && (load != LOAD_ONE_EXPERT || nodes == 1), "ep %d: %d nodes", ep,
                nodes);
        /* the same micro-batch through one rank holding all E experts */
        run(o, &h1, 0, mine, &r1, yp, drecv);
        int same = !memcmp(r.y, r1.y, sizeof r.y) && !memcmp(r.dx, r1.dx, sizeof r.dx) &&
                   !memcmp(r.dw, r1.dw, sizeof r.dw);
        MEXPECT(same, "ep %d, %s load: differs from the one-rank path", ep, LOAD_NAMES[load]);
    }
    free(all);
    free(yp);
    free(drecv);
    free(r.recv);
    free(r.dexp);
    free(r1.recv);
    free(r1.dexp);
    ep_handle_free(&h);
    ep_handle_free(&h1);
    ep_group_free(&g);
    free(ar.base);
    free(ar1.base);
    groups_free(gr);
}

/* Received rows of the fp8 table against the rounded source rows, in route order. */
static int check_fp8_rows(const EpHandle *h, const EpGroup *g, const Src *all, const float *recv)
{
    const int P = g->size, nl = g->n_local;
    int bad = 0, row = 0;
    for (int j = 0; j < nl; j++)
        for (int s = 0; s < P; s++)
            for (int n = 0; n < N; n++)
                for (int k = 0; k < K; k++) {
                    if (all[s].idx[n * K + k] != g->rank * nl + j) continue;
                    float want[C];
                    memcpy(want, all[s].x + n * C, sizeof want);
                    wire_fp8_round(want, 1, C);
                    bad += memcmp(recv + (size_t)row * C, want, sizeof want) != 0;
                    row++;
                }
    return bad + (row != h->recv_rows);
}

/* FP8 Linear experts (lin_w) with weights that depend on the global expert only; 0 frees them */
static void lin_experts(Ops *o, int on)
{
    for (int e = 0; e < E; e++) {
        if (!on) {
            free(lin_w[e].master);
            free(lin_w[e].data);
            continue;
        }
        float *m = xcalloc(C * C, sizeof(float));
        Rng r;
        rng_seed(&r, 7919u + (uint64_t)e);
        for (int i = 0; i < C * C; i++) m[i] = rng_normal(&r) * 0.3f;
        wgt_bind(&lin_w[e], o, m, C, C, WGT_FP8, xcalloc(1, o->weight_bytes(o, WGT_FP8, C, C)));
        lin_w[e].act_pow2 = 1;
        o->weight_refresh(o, &lin_w[e]);
    }
    lin_ops = on ? o : NULL;
}

static void test_fp8(World *w, int ep, uint64_t seed)
{
    Ops *o = ops_cpu_create(1, PREC_FP8);
    Groups *gr = groups_create(w, 1, w->size, ep);
    EpGroup g;
    ep_group_init(&g, gr->ep_comm, w->node, E);
    EpHandle h, h1;
    Arena ar = { 0 }, ar1 = { 0 };
    plan(&g, &h, &ar);
    plan(NULL, &h1, &ar1);
    const int P = g.size, gi = gr->ep_index;
    Src *all = xcalloc((size_t)P, sizeof(Src));
    Out r, r1;
    out_alloc(&r, h.recv_cap);
    out_alloc(&r1, h1.recv_cap);
    float *yp = xcalloc((size_t)h.recv_cap * C, sizeof(float)), *drecv = xcalloc((size_t)h.recv_cap * C, sizeof(float));
    round_out = 1;
    for (int s = 0; s < P; s++) {
        gen(&all[s], LOAD_RANDOM, seed, gi, s, P);
        for (int i = 0; i < N * C; i++) all[s].x[i] = bf16_round(all[s].x[i] * 1.0078125f + 0.3f);
    }
    Src mine = all[g.rank];
    run(o, &h, g.rank * g.n_local, &mine, &r, yp, drecv);
    int bad = check_fp8_rows(&h, &g, all, r.recv), moved = 0;
    MEXPECT(P == 1 || bad == 0, "ep %d, fp8: %d received rows are not their rounded source rows", ep, bad);
    wire_fp8_round(mine.x, N, C);
    for (int i = 0; i < N * C; i++) moved += mine.x[i] != all[g.rank].x[i];
    MEXPECT(moved > 0, "ep %d, fp8: the payload was E4M3 already", ep);
    if (P > 1) {
        run(o, &h1, 0, &mine, &r1, yp, drecv);
        int same = !memcmp(r.y, r1.y, sizeof r.y) && !memcmp(r.dx, r1.dx, sizeof r.dx) &&
                   !memcmp(r.dw, r1.dw, sizeof r.dw);
        MEXPECT(same, "ep %d, fp8: differs from the one-rank path on the rounded rows", ep);
        /* FP8 Linear experts (power-of-two activation tiles): through the wire, on the raw rows,
         * y and dw equal the one-rank path's on the same raw rows (which rounds nothing), as
         * the expert Fprop re-quantises a decoded row to itself; dx is left out, the expert
         * gradients here being elementwise in the received rows */
        lin_experts(o, 1);
        run(o, &h, g.rank * g.n_local, &all[g.rank], &r, yp, drecv);
        run(o, &h1, 0, &all[g.rank], &r1, yp, drecv);
        MEXPECT(!memcmp(r.y, r1.y, sizeof r.y) && !memcmp(r.dw, r1.dw, sizeof r.dw),
                "ep %d, fp8 Linear experts: the output through the wire differs from the one-rank path's", ep);
        lin_experts(o, 0);
    }
    round_out = 0;
    free(all);
    free(yp);
    free(drecv);
    free(r.recv);
    free(r.dexp);
    free(r1.recv);
    free(r1.dexp);
    ep_handle_free(&h);
    ep_handle_free(&h1);
    ep_group_free(&g);
    free(ar.base);
    free(ar1.base);
    groups_free(gr);
    ops_destroy(o);
}

typedef void (*WaitFn)(Ops *, EpHandle *);

/* Waits for A's exchange then B's (order 0), B's then A's (1), or by rank parity (2: even
 * ranks A first, odd ranks B first). */
static void wait_both(Ops *o, int order, int rank, WaitFn wa, EpHandle *ha, WaitFn wb, EpHandle *hb)
{
    if (order == 2) order = rank % 2;
    if (order == 0) { wa(o, ha); wb(o, hb); }
    else { wb(o, hb); wa(o, ha); }
}

/* One micro-batch in the overlap test: its sources' data, handle, results and expert rows. */
typedef struct Mb {
    Src *all;                   /* (P) every source's micro-batch */
    EpHandle h;
    Out r, ref;                 /* overlapped, blocking */
    float *yp, *drecv;          /* (recv_cap, C) */
} Mb;

/* A's forward and backward interleaved with B's combine and backward, two exchanges in flight
 * at every step (B's layout and dispatch are blocking first). Order 2 also posts B's exchange
 * before A's on odd ranks: the lanes' tags keep the two apart. */
static void run_overlapped(Ops *o, Mb *a, Mb *b, int me, int first, int order)
{
    const Src *da = &a->all[me], *db = &b->all[me];
    const int b_first = order == 2 && me % 2;
    out_init(&a->h, &a->r);
    out_init(&b->h, &b->r);
    ep_layout(o, &b->h, db->idx);
    ep_dispatch(o, &b->h, (act *)b->r.recv, (const act *)db->x);
    experts(&b->h, first, &b->r, b->yp, b->drecv);

    ep_layout(o, &a->h, da->idx);
    if (b_first) ep_combine_post(o, &b->h, EP_LANE_B, (act *)b->r.y, (const act *)b->yp, db->w);
    ep_dispatch_post(o, &a->h, EP_LANE_F, (act *)a->r.recv, (const act *)da->x);
    if (!b_first) ep_combine_post(o, &b->h, EP_LANE_B, (act *)b->r.y, (const act *)b->yp, db->w);
    wait_both(o, order, me, ep_dispatch_wait, &a->h, ep_combine_wait, &b->h);

    experts(&a->h, first, &a->r, a->yp, a->drecv);
    if (b_first)
        ep_combine_backward_post(o, &b->h, EP_LANE_B, (act *)b->r.dexp, b->r.dw, (const act *)db->dy,
                                 (const act *)b->yp, db->w);
    ep_combine_post(o, &a->h, EP_LANE_F, (act *)a->r.y, (const act *)a->yp, da->w);
    if (!b_first)
        ep_combine_backward_post(o, &b->h, EP_LANE_B, (act *)b->r.dexp, b->r.dw, (const act *)db->dy,
                                 (const act *)b->yp, db->w);
    wait_both(o, order, me, ep_combine_wait, &a->h, ep_combine_backward_wait, &b->h);

    /* lanes swapped: a lane is a lane, whatever it carries */
    if (b_first) ep_dispatch_backward_post(o, &b->h, EP_LANE_F, (act *)b->r.dx, (const act *)b->drecv);
    ep_combine_backward_post(o, &a->h, EP_LANE_B, (act *)a->r.dexp, a->r.dw, (const act *)da->dy,
                             (const act *)a->yp, da->w);
    if (!b_first) ep_dispatch_backward_post(o, &b->h, EP_LANE_F, (act *)b->r.dx, (const act *)b->drecv);
    wait_both(o, order, me, ep_combine_backward_wait, &a->h, ep_dispatch_backward_wait, &b->h);

    ep_dispatch_backward_post(o, &a->h, EP_LANE_F, (act *)a->r.dx, (const act *)a->drecv);
    ep_dispatch_backward_wait(o, &a->h);
}

/* Overlapped results equal the blocking ones: every received row, gradient row and token value. */
static int same_out(const EpHandle *h, const Out *a, const Out *b)
{
    size_t rows = (size_t)h->recv_rows * C * sizeof(float);
    return !memcmp(a->recv, b->recv, rows) && !memcmp(a->dexp, b->dexp, rows) && !memcmp(a->y, b->y, sizeof a->y) &&
           !memcmp(a->dx, b->dx, sizeof a->dx) && !memcmp(a->dw, b->dw, sizeof a->dw);
}

static void mb_alloc(Mb *m, EpGroup *g, Arena *ar, int P)
{
    for (int pass = 0; pass < 2; pass++) {
        ep_handle_plan_group(&m->h, g, N, K, E, C, ar);
        if (pass == 0) *ar = (Arena){ xcalloc(1, ar->used), 0 };
    }
    m->all = xcalloc((size_t)P, sizeof(Src));
    out_alloc(&m->r, m->h.recv_cap);
    out_alloc(&m->ref, m->h.recv_cap);
    m->yp = xcalloc((size_t)m->h.recv_cap * C, sizeof(float));
    m->drecv = xcalloc((size_t)m->h.recv_cap * C, sizeof(float));
}

static void mb_free(Mb *m, Arena *ar)
{
    ep_handle_free(&m->h);
    free(m->all);
    free(m->r.recv), free(m->r.dexp), free(m->ref.recv), free(m->ref.dexp);
    free(m->yp), free(m->drecv);
    free(ar->base);
}

static void test_overlap(World *w, Ops *o, int ep, uint64_t seed)
{
    Groups *gr = groups_create(w, 1, w->size, ep);
    EpGroup g;
    ep_group_init(&g, gr->ep_comm, w->node, E);
    Arena arg = { 0 }, ara = { 0 }, arb = { 0 };
    for (int pass = 0; pass < 2; pass++) {
        ep_group_plan(&g, N, K, C, &arg);
        if (pass == 0) arg = (Arena){ xcalloc(1, arg.used), 0 };
    }
    const int P = g.size, gi = gr->ep_index, me = g.rank, first = me * g.n_local;
    Mb a, b;
    mb_alloc(&a, &g, &ara, P);
    mb_alloc(&b, &g, &arb, P);
    for (int load = 0; load < N_LOADS; load++) {
        const int load_b = (load + 2) % N_LOADS;
        for (int s = 0; s < P; s++) {
            gen(&a.all[s], load, seed, gi, s, P);
            gen(&b.all[s], load_b, seed ^ 0x5bd1e995u, gi, s, P);
        }
        run(o, &a.h, first, &a.all[me], &a.ref, a.yp, a.drecv);
        run(o, &b.h, first, &b.all[me], &b.ref, b.yp, b.drecv);
        for (int order = 0; order < 3; order++) {
            run_overlapped(o, &a, &b, me, first, order);
            int bad = check_received(&a.h, &g, a.all, &a.r, gi) + check_received(&b.h, &g, b.all, &b.r, gi) +
                      check_tokens(&a.all[me], &a.r) + check_tokens(&b.all[me], &b.r);
            MEXPECT(bad == 0, "ep %d, loads %s/%s, wait order %d: %d values off their route or formula", ep,
                    LOAD_NAMES[load], LOAD_NAMES[load_b], order, bad);
            MEXPECT(same_out(&a.h, &a.r, &a.ref) && same_out(&b.h, &b.r, &b.ref),
                    "ep %d, loads %s/%s, wait order %d: overlapped halves differ from the blocking calls", ep,
                    LOAD_NAMES[load], LOAD_NAMES[load_b], order);
        }
    }
    mb_free(&a, &ara);
    mb_free(&b, &arb);
    ep_group_free(&g);
    free(arg.base);
    groups_free(gr);
}

int main(int argc, char **argv)
{
    World *w = world_init(argc, argv);
    mpi_test_rank = w->rank;
    int64_t seed = 0;
    if (w->rank == 0) seed = (int64_t)test_seed();
    comm_broadcast(w->comm, &seed, 1, COMM_I64, 0);
    const char *rpn_s = getenv("DSTRAIN_RANKS_PER_NODE");
    const int rpn = rpn_s ? atoi(rpn_s) : w->size;
    Ops *o = ops_cpu_create(1, PREC_FP32);
    for (int ep = 1; ep <= w->size; ep++)
        if (w->size % ep == 0 && E % ep == 0) {
            test_layout(w, o, ep, (uint64_t)seed, rpn);
            test_overlap(w, o, ep, (uint64_t)seed);
            test_fp8(w, ep, (uint64_t)seed);
        }
    ops_destroy(o);
    int rc = mpi_test_finish(w, "ep dispatch/combine");
    world_free(w);
    return rc;
}
