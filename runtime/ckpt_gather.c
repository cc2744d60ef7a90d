/* runtime/ckpt_gather.c - the root's whole-table staging for a one-rank checkpoint under
 * spread experts (see ckpt_gather.h). Not here: the checkpoint format (checkpoint/).
 */
#include "runtime/ckpt_gather.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/common.h"

#define TAG_GATHER 7301

void ckpt_gather_init(CkptGather *g, const ParamTable *local, const ModelConfig *c, const Groups *gr)
{
    (void)gr;
    memset(g, 0, sizeof *g);
    params_build(&g->full, c);
    g->params = xcalloc(g->full.total, sizeof(float));
    g->m = xcalloc(g->full.total, sizeof(float));
    g->v = xcalloc(g->full.total, sizeof(float));
    g->recv = xcalloc(3 * (local->total - local->n_replicated) + 1, sizeof(float));
}

void ckpt_gather_free(CkptGather *g)
{
    if (g->full.p) params_free(&g->full);
    free(g->params);
    free(g->m);
    free(g->v);
    free(g->recv);
    memset(g, 0, sizeof *g);
}

/* Every entry of t (a rank's selection), from src arrays laid out as t (minus skip floats at
 * its start: an expert region alone), into g's full-table arrays; routed_only: experts only. */
static void place(CkptGather *g, const ParamTable *t, const float *const src[3], size_t skip, int routed_only)
{
    float *dst[3] = { g->params, g->m, g->v };
    for (int i = 0; i < t->n; i++) {
        const Param *p = &t->p[i];
        if (routed_only && p->role != ROLE_ROUTED_EXPERT) continue;
        const Param *q = &g->full.p[p->index];
        CHECK(q->numel == p->numel && !strcmp(q->name, p->name));
        for (int k = 0; k < 3; k++) memcpy(dst[k] + q->offset, src[k] + p->offset - skip, p->numel * sizeof(float));
    }
}

void ckpt_gather_experts(CkptGather *g, const ParamTable *local, const Groups *gr, const float *params,
                         const float *m, const float *v, const ParamTable **table, const float **p,
                         const float **am, const float **av)
{
    if (gr->ep_index != 0) return;
    const size_t base = local->n_replicated, n = local->total - base;
    if (gr->ep_rank != 0) {
        comm_send(gr->ep_comm, params + base, n, COMM_F32, 0, TAG_GATHER);
        comm_send(gr->ep_comm, m + base, n, COMM_F32, 0, TAG_GATHER + 1);
        comm_send(gr->ep_comm, v + base, n, COMM_F32, 0, TAG_GATHER + 2);
        return;
    }
    CHECK(g->full.p != NULL);
    const float *const mine[3] = { params, m, v };
    place(g, local, mine, 0, 0);
    for (int r = 1; r < gr->ep; r++) {
        float *buf = g->recv;
        for (int k = 0; k < 3; k++) comm_recv(gr->ep_comm, buf + k * n, n, COMM_F32, r, TAG_GATHER + k);
        ParamTable peer;
        params_select(&peer, &g->full, r * local->expert_n, local->expert_n);
        CHECK(peer.total - peer.n_replicated == n);
        const float *const theirs[3] = { buf, buf + n, buf + 2 * n };
        place(g, &peer, theirs, peer.n_replicated, 1);
        params_free(&peer);
    }
    *table = &g->full;
    *p = g->params;
    *am = g->m;
    *av = g->v;
}
