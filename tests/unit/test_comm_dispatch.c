/* tests/unit/test_comm_dispatch.c - MoE dispatch/combine over an EP group of one rank
 * (comm/dispatch.h): the one-rank path is the op-table permutation, a group of one rank gives
 * bit-identical results, every received row proves its route (its values encode the token),
 * and the node-limited routing report counts nodes. The post/wait halves on two lanes, two
 * micro-batches interleaved (lane 0 a forward's dispatch and combine, lane 1 another's combine
 * and backward, waits in both orders), equal the blocking calls bit for bit; posting on a busy
 * lane or handle, or waiting for what was not posted, is a BUG with a clear message (forked
 * children). Multi-rank groups: tests/mpi/ep_mpi_test.c.
 * The wire formats of the fp8 / bf16 tables (kernels/cpu/cpu_wire.h): FP8 pack + unpack equals
 * the in-place rounding bit for bit, scales are powers of two, every value lies within half an
 * E4M3 step of its input, and re-quantising the rounded rows with power-of-two 1x128 tiles (the
 * expert GEMM's quantiser, pow2 on) gives them back exactly; BF16 pack + in-place unpack equals
 * bf16_round; on one rank the fp8 table's dispatch rounds nothing.
 *
 * Tolerances: none. Payloads are small integers and weights dyadic (k/8), so every product and
 * sum below is exact in FP32 and results are compared with ==.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "comm/dispatch.h"
#include "comm/world.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/cpu_wire.h"
#include "kernels/fp8.h"
#include "kernels/ops.h"
#include "runtime/common.h"
#include "tests/unit/testing.h"

enum { N = 37, K = 3, E = 8, C = 5 };
enum { LOAD_RANDOM, LOAD_ONE_EXPERT, LOAD_EMPTY, N_LOADS };
static const char *LOAD_NAMES[] = { "random", "all to one expert", "empty experts" };

static Rng rng;

/* routing (N,K) for a load: random distinct experts; every slot to expert E-1; or distinct
 * experts drawn from {1, 2, 5} only (experts 0, 3, 4, 6, 7 receive nothing) */
static void route(int load, int32_t *idx)
{
    static const int32_t few[3] = { 1, 2, 5 };
    for (int n = 0; n < N; n++) {
        int32_t *t = idx + n * K;
        for (int k = 0; k < K; k++) {
            int dup;
            do {
                t[k] = load == LOAD_ONE_EXPERT ? E - 1
                       : load == LOAD_EMPTY    ? few[rng_u32(&rng) % 3]
                                               : (int32_t)(rng_u32(&rng) % E);
                dup = 0;
                for (int i = 0; i < k && load != LOAD_ONE_EXPERT; i++) dup |= t[i] == t[k];
            } while (dup);
        }
    }
}

/* the "expert": an exact elementwise map that depends on the expert */
static float expert_fn(int e, float v) { return v * (float)(e + 1) * 0.5f + (float)e; }

typedef struct Result {
    float recv[N * K * C], y[N * C], dx[N * C], dexp[N * K * C], dw[N * K];
    int32_t pos[N * K], off[E + 1];
} Result;

/* Forward and backward through a handle; results in r. */
static void run(Ops *o, EpHandle *h, const int32_t *idx, const float *x, const float *w, const float *dy, Result *r)
{
    static float yp[N * K * C], drecv[N * K * C];
    ep_layout(o, h, idx);
    ep_dispatch(o, h, (act *)r->recv, (const act *)x);   /* cpu: FP32 act */
    const int32_t *off = h->recv_offsets_host;
    for (int e = 0; e < h->n_local; e++)
        for (int row = off[e]; row < off[e + 1]; row++)
            for (int c = 0; c < C; c++) {
                yp[row * C + c] = expert_fn(e, r->recv[row * C + c]);
                drecv[row * C + c] = r->recv[row * C + c] * 2 - (float)e;
            }
    for (int i = 0; i < N * C; i++) r->y[i] = r->dx[i] = 0.5f;
    for (int i = 0; i < N * K * C; i++) r->dexp[i] = 0.25f;
    for (int i = 0; i < N * K; i++) r->dw[i] = 0.125f;
    ep_combine(o, h, (act *)r->y, (const act *)yp, w);
    ep_combine_backward(o, h, (act *)r->dexp, r->dw, (const act *)dy, (const act *)yp, w);
    ep_dispatch_backward(o, h, (act *)r->dx, (const act *)drecv);
    memcpy(r->pos, h->pos, sizeof r->pos);
    memcpy(r->off, h->offsets_host, sizeof r->off);
}

/* Every received row: its values name its token, the token chose this expert, rows of one
 * expert follow token order, and each expert got exactly its slots. */
static void check_routes(const EpHandle *h, const int32_t *idx, const float *recv, const char *what)
{
    int bad = 0;
    for (int e = 0; e < E; e++) {
        int row = h->recv_offsets_host[e];
        for (int n = 0; n < N; n++)
            for (int k = 0; k < K; k++) {
                if (idx[n * K + k] != e) continue;
                for (int c = 0; c < C; c++) bad += recv[row * C + c] != (float)(n * C + c + 1);
                row++;
            }
        bad += row != h->recv_offsets_host[e + 1];
    }
    EXPECT(bad == 0, "%s: %d received rows or expert counts off their route", what, bad);
}

static void test_load(Ops *o, int load, Comm *self)
{
    static int32_t idx[N * K];
    static float x[N * C], w[N * K], dy[N * C];
    static Result a, b;
    route(load, idx);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            x[n * C + c] = (float)(n * C + c + 1);
            dy[n * C + c] = (float)((n + 2 * c) % 5 - 2);
        }
    for (int i = 0; i < N * K; i++) w[i] = (float)(1 + i % 4) / 8;

    /* one rank, no group */
    Arena ar = { 0 };
    EpHandle h1;
    for (int pass = 0; pass < 2; pass++) {
        ep_handle_plan(&h1, N, K, E, C, &ar);
        if (pass == 0) ar = (Arena){ xcalloc(1, ar.used), 0 };
    }
    run(o, &h1, idx, x, w, dy, &a);
    EXPECT(h1.n_local == E && h1.recv_cap == N * K && h1.recv_rows == N * K &&
               h1.recv_offsets_host == h1.offsets_host,
           "%s: one rank keeps every expert and the send order", LOAD_NAMES[load]);
    check_routes(&h1, idx, a.recv, LOAD_NAMES[load]);

    /* the exact expectation, token by token, in slot order */
    int bad = 0;
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            float y = 0.5f, dx = 0.5f, v = x[n * C + c];
            for (int k = 0; k < K; k++) {
                int e = idx[n * K + k];
                y += w[n * K + k] * expert_fn(e, v);
                dx += v * 2 - (float)e;
            }
            bad += a.y[n * C + c] != y || a.dx[n * C + c] != dx;
        }
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) {
            int row = a.pos[n * K + k], e = idx[n * K + k];
            double dot = 0;
            for (int c = 0; c < C; c++) {
                bad += a.dexp[row * C + c] != 0.25f + w[n * K + k] * dy[n * C + c];
                dot += (double)dy[n * C + c] * expert_fn(e, x[n * C + c]);
            }
            bad += a.dw[n * K + k] != 0.125f + (float)dot;
        }
    EXPECT(bad == 0, "%s: combine, dispatch backward and combine backward off the serial formula in %d values",
           LOAD_NAMES[load], bad);

    /* a group of one rank: the same path, bit for bit */
    EpGroup g;
    ep_group_init(&g, self, 0, E);
    EpHandle h2;
    Arena ar2 = { 0 };
    for (int pass = 0; pass < 2; pass++) {
        ep_group_plan(&g, N, K, C, &ar2);
        ep_handle_plan_group(&h2, &g, N, K, E, C, &ar2);
        if (pass == 0) ar2 = (Arena){ xcalloc(1, ar2.used), 0 };
    }
    run(o, &h2, idx, x, w, dy, &b);
    EXPECT(g.n_local == E && g.node_of[0] == 0 && !g.lane[0].send && !g.lane[1].send && h2.ret == NULL,
           "%s: group of one rank, no buffers", LOAD_NAMES[load]);
    EXPECT(!memcmp(&a, &b, sizeof a), "%s: a group of one rank differs from no group", LOAD_NAMES[load]);
    ep_handle_free(&h1);
    ep_handle_free(&h2);
    ep_group_free(&g);
    free(ar.base);
    free(ar2.base);
}

static void test_max_nodes(Ops *o)
{
    /* P = 4 ranks of E = 8 experts (2 each) on nodes {0, 0, 1, 1} */
    const int32_t nodes[4] = { 0, 0, 1, 1 };
    const int32_t one_node[2 * 2] = { 0, 3, 1, 2 };    /* ranks {0,1}, {0,1} */
    const int32_t two_nodes[2 * 2] = { 0, 1, 2, 7 };   /* ranks {0,0}, {1,3} -> nodes {0}, {0,1} */
    EXPECT(ep_max_nodes(one_node, 2, 2, 8, 4, nodes) == 1, "tokens on one node");
    EXPECT(ep_max_nodes(two_nodes, 2, 2, 8, 4, nodes) == 2, "a token on two nodes");

    /* group-limited routing, one routing group per node: at most topk_group nodes per token */
    enum { NT = 64, EE = 16, KK = 4 };
    static float s[NT * EE], wr[NT * KK], bias[EE];
    static int32_t idx[NT * KK];
    const int32_t node4[4] = { 0, 1, 2, 3 };
    for (int i = 0; i < NT * EE; i++) s[i] = rng_uniform(&rng);
    for (int topk_group = 1; topk_group <= 2; topk_group++) {
        RouteShape r = { NT, EE, KK, 4, topk_group, 1.0f, 1 };
        o->moe_route(o, idx, wr, s, bias, &r);
        int m = ep_max_nodes(idx, NT, KK, EE, 4, node4);
        EXPECT(m == topk_group, "groups on nodes, topk_group %d: tokens reach at most %d nodes", topk_group, m);
    }
}

/* One micro-batch's inputs. */
typedef struct Mb {
    int32_t idx[N * K];
    float x[N * C], w[N * K], dy[N * C];
} Mb;

static void mb_make(Mb *m, int load, float shift)
{
    route(load, m->idx);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            m->x[n * C + c] = (float)(n * C + c + 1) + shift;
            m->dy[n * C + c] = (float)((n + 2 * c) % 5 - 2);
        }
    for (int i = 0; i < N * K; i++) m->w[i] = (float)(1 + (i + (int)shift) % 4) / 8;
}

/* The experts of run(): yp and drecv (rows) from the received rows. */
static void experts(const EpHandle *h, const float *recv, float *yp, float *drecv)
{
    const int32_t *off = h->recv_offsets_host;
    for (int e = 0; e < h->n_local; e++)
        for (int row = off[e]; row < off[e + 1]; row++)
            for (int c = 0; c < C; c++) {
                yp[row * C + c] = expert_fn(e, recv[row * C + c]);
                drecv[row * C + c] = recv[row * C + c] * 2 - (float)e;
            }
}

static void result_init(Result *r)
{
    for (int i = 0; i < N * C; i++) r->y[i] = r->dx[i] = 0.5f;
    for (int i = 0; i < N * K * C; i++) r->dexp[i] = 0.25f;
    for (int i = 0; i < N * K; i++) r->dw[i] = 0.125f;
}

typedef void (*WaitFn)(Ops *, EpHandle *);

/* Waits for a's exchange and b's, in that order (order 0) or the other (order 1). */
static void wait_both(Ops *o, int order, WaitFn wa, EpHandle *ha, WaitFn wb, EpHandle *hb)
{
    if (order == 0) { wa(o, ha); wb(o, hb); }
    else { wb(o, hb); wa(o, ha); }
}

/* Micro-batch a's forward and backward interleaved with b's combine and backward, the way an
 * FB instruction would run them: two exchanges in flight at every step, on different lanes. */
static void run_overlapped(Ops *o, EpHandle *ha, EpHandle *hb, const Mb *a, const Mb *b, Result *ra, Result *rb,
                           int order)
{
    static float ypa[N * K * C], dra[N * K * C], ypb[N * K * C], drb[N * K * C];
    result_init(ra);
    result_init(rb);
    ep_layout(o, hb, b->idx);
    ep_dispatch(o, hb, (act *)rb->recv, (const act *)b->x);
    experts(hb, rb->recv, ypb, drb);

    ep_layout(o, ha, a->idx);
    ep_dispatch_post(o, ha, EP_LANE_F, (act *)ra->recv, (const act *)a->x);
    ep_combine_post(o, hb, EP_LANE_B, (act *)rb->y, (const act *)ypb, b->w);
    wait_both(o, order, ep_dispatch_wait, ha, ep_combine_wait, hb);

    experts(ha, ra->recv, ypa, dra);
    ep_combine_post(o, ha, EP_LANE_F, (act *)ra->y, (const act *)ypa, a->w);
    ep_combine_backward_post(o, hb, EP_LANE_B, (act *)rb->dexp, rb->dw, (const act *)b->dy, (const act *)ypb, b->w);
    wait_both(o, order, ep_combine_wait, ha, ep_combine_backward_wait, hb);

    /* lanes swapped: a lane is a lane, whatever it carries */
    ep_combine_backward_post(o, ha, EP_LANE_B, (act *)ra->dexp, ra->dw, (const act *)a->dy, (const act *)ypa, a->w);
    ep_dispatch_backward_post(o, hb, EP_LANE_F, (act *)rb->dx, (const act *)drb);
    wait_both(o, order, ep_combine_backward_wait, ha, ep_dispatch_backward_wait, hb);

    ep_dispatch_backward_post(o, ha, EP_LANE_F, (act *)ra->dx, (const act *)dra);
    ep_dispatch_backward_wait(o, ha);
    memcpy(ra->pos, ha->pos, sizeof ra->pos);
    memcpy(ra->off, ha->offsets_host, sizeof ra->off);
    memcpy(rb->pos, hb->pos, sizeof rb->pos);
    memcpy(rb->off, hb->offsets_host, sizeof rb->off);
}

/* Group (or NULL) and two handles planned in one arena. */
typedef struct Pair {
    EpGroup g;
    EpHandle ha, hb;
    Arena ar;
    int grouped;
} Pair;

static void pair_init(Pair *p, Comm *self)
{
    p->ar = (Arena){ 0 };
    if (p->grouped) ep_group_init(&p->g, self, 0, E);
    EpGroup *g = p->grouped ? &p->g : NULL;
    for (int pass = 0; pass < 2; pass++) {
        if (g) ep_group_plan(g, N, K, C, &p->ar);
        ep_handle_plan_group(&p->ha, g, N, K, E, C, &p->ar);
        ep_handle_plan_group(&p->hb, g, N, K, E, C, &p->ar);
        if (pass == 0) p->ar = (Arena){ xcalloc(1, p->ar.used), 0 };
    }
}

static void pair_free(Pair *p)
{
    ep_handle_free(&p->ha);
    ep_handle_free(&p->hb);
    if (p->grouped) ep_group_free(&p->g);
    free(p->ar.base);
}

static void test_overlap(Ops *o, Comm *self)
{
    static Mb a, b;
    static Result ra, rb, oa, ob;
    for (int grouped = 0; grouped < 2; grouped++) {
        Pair p = { .grouped = grouped };
        pair_init(&p, self);
        for (int load = 0; load < N_LOADS; load++) {
            mb_make(&a, load, 0);
            mb_make(&b, (load + 1) % N_LOADS, 3);
            run(o, &p.ha, a.idx, a.x, a.w, a.dy, &ra);
            run(o, &p.hb, b.idx, b.x, b.w, b.dy, &rb);
            for (int order = 0; order < 2; order++) {
                run_overlapped(o, &p.ha, &p.hb, &a, &b, &oa, &ob, order);
                EXPECT(!memcmp(&ra, &oa, sizeof ra) && !memcmp(&rb, &ob, sizeof rb),
                       "%s, %s, lane %d waited first: the overlapped halves differ from the blocking calls",
                       grouped ? "group of one rank" : "no group", LOAD_NAMES[load], order);
                EXPECT(!p.ha.busy && !p.hb.busy && (!grouped || (!p.g.lane[0].busy && !p.g.lane[1].busy)),
                       "%s: every handle and lane idle after the waits", LOAD_NAMES[load]);
            }
            check_routes(&p.ha, a.idx, oa.recv, "overlapped");
        }
        pair_free(&p);
    }
}

/* Misuse, each in a forked child (status 70 and the message on stderr). */
typedef struct Misuse {
    const char *what, *words;
    int grouped, kind;
} Misuse;

enum { MIS_LANE_REUSE, MIS_BLOCKING_ON_BUSY, MIS_HANDLE_TWICE, MIS_WAIT_UNPOSTED, MIS_WAIT_WRONG, MIS_LAYOUT_BUSY,
       MIS_BAD_LANE };

static void misuse_child(void *arg)
{
    const Misuse *m = arg;
    /* static: what the child holds when the BUG exits stays reachable (no leak report) */
    static Mb a;
    static Result r;
    static Pair p;
    static Ops *o;
    static Comm *self;
    o = ops_cpu_create(1, PREC_FP32);
    self = m->grouped ? comm_single_create() : NULL;
    p = (Pair){ .grouped = m->grouped };
    pair_init(&p, self);
    mb_make(&a, LOAD_RANDOM, 0);
    ep_layout(o, &p.ha, a.idx);
    ep_layout(o, &p.hb, a.idx);
    if (m->kind != MIS_WAIT_UNPOSTED && m->kind != MIS_BAD_LANE)
        ep_dispatch_post(o, &p.ha, EP_LANE_F, (act *)r.recv, (const act *)a.x);
    switch (m->kind) {
    case MIS_LANE_REUSE: ep_dispatch_post(o, &p.hb, EP_LANE_F, (act *)r.recv, (const act *)a.x); break;
    case MIS_BLOCKING_ON_BUSY: ep_combine(o, &p.hb, (act *)r.y, (const act *)r.recv, a.w); break;
    case MIS_HANDLE_TWICE: ep_combine_post(o, &p.ha, EP_LANE_B, (act *)r.y, (const act *)r.recv, a.w); break;
    case MIS_WAIT_UNPOSTED: ep_combine_wait(o, &p.ha); break;
    case MIS_WAIT_WRONG: ep_combine_wait(o, &p.ha); break;
    case MIS_LAYOUT_BUSY: ep_layout(o, &p.ha, a.idx); break;
    case MIS_BAD_LANE: ep_dispatch_post(o, &p.ha, 2, (act *)r.recv, (const act *)a.x); break;
    }
}

static void test_misuse(void)
{
    static const Misuse cases[] = {
        { "lane reused in flight", "lane 0 reused while its dispatch is in flight: dispatch posted on it", 1,
          MIS_LANE_REUSE },
        { "blocking call on a busy lane", "lane 0 reused while its dispatch is in flight: combine posted on it", 1,
          MIS_BLOCKING_ON_BUSY },
        { "handle posted twice", "combine posted on lane 1 for a handle whose dispatch is still in flight on lane 0",
          0, MIS_HANDLE_TWICE },
        { "handle posted twice, group", "for a handle whose dispatch is still in flight", 1, MIS_HANDLE_TWICE },
        { "wait with nothing posted", "waiting for a combine of a handle that has nothing in flight", 0,
          MIS_WAIT_UNPOSTED },
        { "wait for the wrong exchange", "waiting for a combine of a handle that has dispatch in flight", 1,
          MIS_WAIT_WRONG },
        { "layout in flight", "layout of a handle whose dispatch is in flight on lane 0", 1, MIS_LAYOUT_BUSY },
        { "lane out of range", "dispatch posted on lane 2, outside 0..1", 0, MIS_BAD_LANE },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[4096];
        int st = test_run_child(misuse_child, (void *)&cases[i], err, sizeof err);
        EXPECT(st == 70 && strstr(err, "internal error: ep: ") && strstr(err, cases[i].words),
               "%s: exit %d, stderr '%s' (want exit 70 and '%s')", cases[i].what, st, err, cases[i].words);
    }
}

/* a row of C values: N(0, 1) times 2^(-8..8) per row, BF16 (what an act of the fp8 table holds) */
static void wire_rows(float *x, int rows, int C)
{
    for (int r = 0; r < rows; r++) {
        float mag = ldexpf(1.0f, (int)(rng_u32(&rng) % 17) - 8);
        for (int c = 0; c < C; c++) x[r * C + c] = bf16_round(rng_normal(&rng) * mag);
    }
}

static void test_wire_fp8(Ops *o)
{
    static const int widths[] = { 2, 5, 127, 128, 200, 256, 300 };
    enum { R = 9 };
    for (size_t wi = 0; wi < sizeof widths / sizeof widths[0]; wi++) {
        const int W = widths[wi], nt = (W + 127) / 128;
        EXPECT(wire_fp8_row_bytes(W) == (size_t)W + 4 * (size_t)nt, "C %d: row bytes %zu", W, wire_fp8_row_bytes(W));
        float *x = xcalloc((size_t)R * W, sizeof(float)), *a = xcalloc((size_t)R * W, sizeof(float));
        float *b = xcalloc((size_t)R * W, sizeof(float)), *q = xcalloc((size_t)R * W, sizeof(float));
        uint8_t *wire = xcalloc(R, wire_fp8_row_bytes(W));
        wire_rows(x, R, W);
        wire_fp8_pack(wire, x, R, W);
        wire_fp8_unpack(a, wire, R, W);
        memcpy(b, x, (size_t)R * W * sizeof(float));
        wire_fp8_round(b, R, W);
        EXPECT(!memcmp(a, b, (size_t)R * W * sizeof(float)), "C %d: pack + unpack differs from the rounding", W);
        int bad_scale = 0, bad_err = 0, moved = 0;
        for (int r = 0; r < R; r++)
            for (int t = 0; t < nt; t++) {
                float s;
                memcpy(&s, wire + r * wire_fp8_row_bytes(W) + W + 4 * t, sizeof s);
                int e;
                bad_scale += frexpf(s, &e) != 0.5f;
                /* E4M3 keeps 3 mantissa bits: |x - Q(x)| <= 2^-4 |x| for normal codes, and at
                 * most half the subnormal step 2^-9 s below them */
                for (int c = t * 128; c < W && c < (t + 1) * 128; c++) {
                    float v = x[r * W + c], d = fabsf(a[r * W + c] - v);
                    bad_err += d > fmaxf(fabsf(v) / 16, s * 0x1p-10f);
                    moved += d != 0;
                }
            }
        EXPECT(bad_scale == 0, "C %d: %d scales are not powers of two", W, bad_scale);
        EXPECT(bad_err == 0, "C %d: %d values off by more than half an E4M3 step", W, bad_err);
        EXPECT(moved > 0, "C %d: the rounding changed no value of BF16 inputs", W);
        /* re-quantised with power-of-two tiles, the rows come back exactly: each tile's amax is
         * its largest code times s, so the new scale is s or s / 2^j with every code times 2^j
         * still an E4M3 value */
        cpu_fp8_quantize_rows(o, q, a, R, W, 1);
        EXPECT(!memcmp(q, a, (size_t)R * W * sizeof(float)), "C %d: re-quantisation is not exact", W);
        free(x);
        free(a);
        free(b);
        free(q);
        free(wire);
    }
}

static void test_wire_bf16(void)
{
    enum { M = 4096 };
    float *x = xcalloc(M, sizeof(float)), *buf = xcalloc(M, sizeof(float));
    for (int i = 0; i < M; i++) x[i] = rng_normal(&rng) * ldexpf(1.0f, (int)(rng_u32(&rng) % 60) - 30);
    x[0] = 0.0f;
    x[1] = -0.0f;
    x[2] = 1.0f + 0x1p-8f;          /* a tie: to even (1.0) */
    x[3] = 1.0f + 3 * 0x1p-8f;      /* a tie: to even (1 + 2^-6) */
    wire_bf16_pack((uint16_t *)buf, x, M);
    wire_bf16_unpack_inplace(buf, M);
    int bad = 0;
    for (int i = 0; i < M; i++) bad += memcmp(&buf[i], &(float){ bf16_round(x[i]) }, sizeof(float)) != 0;
    EXPECT(bad == 0, "BF16 wire: %d of %d values differ from bf16_round", bad, M);
    EXPECT(buf[2] == 1.0f && buf[3] == 1.0f + 0x1p-6f, "BF16 wire ties: %a %a", buf[2], buf[3]);
    free(x);
    free(buf);
}

/* One rank under the fp8 table: the dispatch sends nothing and rounds nothing. */
static void test_fp8_one_rank(void)
{
    Ops *o = ops_cpu_create(1, PREC_FP8);
    EpHandle h;
    Arena ar = { 0 };
    for (int pass = 0; pass < 2; pass++) {
        ep_handle_plan(&h, N, K, E, C, &ar);
        if (pass == 0) ar = (Arena){ xcalloc(1, ar.used), 0 };
    }
    int32_t idx[N * K];
    static float x[N * C], recv[N * K * C];
    route(LOAD_RANDOM, idx);
    wire_rows(x, N, C);
    ep_layout(o, &h, idx);
    ep_dispatch(o, &h, (act *)recv, (const act *)x);
    int bad = 0;
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++)
            bad += memcmp(recv + (size_t)h.pos[n * K + k] * C, x + n * C, C * sizeof(float)) != 0;
    EXPECT(bad == 0, "fp8 table, one rank: %d dispatched rows differ from their token", bad);
    ep_handle_free(&h);
    free(ar.base);
    ops_destroy(o);
}

int main(void)
{
    rng_seed(&rng, test_seed());
    Ops *o = ops_cpu_create(1, PREC_FP32);
    World *w = world_init(0, NULL);
    for (int load = 0; load < N_LOADS; load++) test_load(o, load, w->comm);
    test_max_nodes(o);
    test_overlap(o, w->comm);
    test_misuse();
    test_wire_fp8(o);
    test_wire_bf16();
    test_fp8_one_rank();
    world_free(w);
    ops_destroy(o);
    return test_finish();
}
