/* tests/unit/test_comm_dispatch.c - MoE dispatch/combine over an EP group of one rank
 * (comm/dispatch.h): the one-rank path is the op-table permutation, a group of one rank gives
 * bit-identical results, every received row proves its route (its values encode the token),
 * and the node-limited routing report counts nodes. Multi-rank groups: tests/mpi/ep_mpi_test.c.
 *
 * Tolerances: none. Payloads are small integers and weights dyadic (k/8), so every product and
 * sum below is exact in FP32 and results are compared with ==.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "comm/dispatch.h"
#include "comm/world.h"
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
    EXPECT(g.n_local == E && g.node_of[0] == 0 && !g.send && h2.ret == NULL, "%s: group of one rank, no buffers",
           LOAD_NAMES[load]);
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

int main(void)
{
    rng_seed(&rng, test_seed());
    Ops *o = ops_cpu_create(1, PREC_FP32);
    World *w = world_init(0, NULL);
    for (int load = 0; load < N_LOADS; load++) test_load(o, load, w->comm);
    test_max_nodes(o);
    world_free(w);
    ops_destroy(o);
    return test_finish();
}
