/* runtime/ckpt_shard.c - the multi-rank checkpoint's ownership and its collectives (see
 * ckpt_shard.h). Not here: the files and the manifest (checkpoint/ckpt.c).
 */
#include "runtime/ckpt_shard.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint/fsio.h"
#include "runtime/common.h"

void ckpt_shard_blocks(const ParamTable *t, int dp, int dp_rank, int ep, long long *start, long long *count)
{
    for (int i = 0; i < t->n; i++) {
        const Param *p = &t->p[i];
        const int expert = t->selected && p->role == ROLE_ROUTED_EXPERT;
        const long long n = expert ? dp / ep : dp, k = expert ? dp_rank / ep : dp_rank;
        start[i] = p->rows * k / n;
        count[i] = p->rows * (k + 1) / n - start[i];
    }
}

/* The pp = 1 layout's files: rank r's table is the selection of its EP rank (r % ep). */
typedef struct DpFiles {
    const ModelConfig *mc;
    const Groups *g;
    ParamTable full, *tables;
} DpFiles;

static const ParamTable *dp_file(void *arg, int r, long long *start, long long *count)
{
    DpFiles *d = arg;
    const int ep = d->g->ep;
    if (!d->tables) {
        params_build(&d->full, d->mc);
        d->tables = xcalloc((size_t)ep, sizeof *d->tables);
        const int nl = d->mc->n_routed_experts / ep;
        for (int e = 0; e < ep; e++)
            params_select(&d->tables[e], &d->full, ep > 1 ? e * nl : 0, ep > 1 ? nl : d->mc->n_routed_experts, NULL,
                          NULL);
    }
    const ParamTable *t = &d->tables[r % ep];
    ckpt_shard_blocks(t, d->g->dp, r, ep, start, count);
    return t;
}

/* Rank 0: the manifest over every rank's file (each rank's table and blocks from the job;
 * bytes and checksums from recs: (rc, bytes, checksum) per rank). */
static int commit(const CkptRequest *req, const CkptShardJob *job, const int64_t *recs, char *err, size_t errlen)
{
    const int n = job->comm->size;
    if (recs[0] != 0) return -1;    /* rank 0's own error is in err */
    for (int r = 1; r < n; r++)
        if (recs[3 * r] != 0)
            return ckpt_fail(err, errlen, "checkpoint of step %d: rank %d could not write its file (its error is "
                             "on its stderr)", req->state.step, r);
    long long *blocks = xcalloc(2 * (size_t)n * job->max_entries + 1, sizeof(long long));
    CkptRankFile *files = xcalloc((size_t)n, sizeof *files);
    for (int r = 0; r < n; r++) {
        long long *start = blocks + 2 * (size_t)r * job->max_entries, *count = start + job->max_entries;
        const ParamTable *t = job->file_of(job->arg, r, start, count);
        files[r] = (CkptRankFile){ r, recs[3 * r + 1], (uint64_t)recs[3 * r + 2], t, start, count };
    }
    int rc = ckpt_save_commit(req, files, n, err, errlen);
    free(blocks);
    free(files);
    return rc;
}

int ckpt_shard_save_job(const CkptRequest *r, const CkptShardJob *job, char *err, size_t errlen)
{
    Comm *comm = job->comm;
    const int root = comm->rank == 0, step = r->state.step;
    int32_t rc = root ? ckpt_save_begin(r->run_dir, step, err, errlen) : 0;
    comm_broadcast(comm, &rc, 1, COMM_I32, 0);
    if (rc != 0 && !root) ckpt_fail(err, errlen, "checkpoint of step %d: rank 0 could not prepare it", step);
    int64_t mine[3] = { 0, 0, 0 }, *recs = xcalloc(3 * (size_t)comm->size, sizeof(int64_t));
    if (rc == 0) {
        long long bytes = 0;
        uint64_t sum = 0;
        mine[0] = ckpt_save_rank(r, &bytes, &sum, err, errlen);
        mine[1] = bytes;
        mine[2] = (int64_t)sum;
        comm_allgather(comm, recs, mine, 3, COMM_I64);
        if (root) rc = commit(r, job, recs, err, errlen);
        comm_broadcast(comm, &rc, 1, COMM_I32, 0);
        if (rc != 0 && !root && mine[0] == 0)
            ckpt_fail(err, errlen, "checkpoint of step %d: not committed (rank 0 reports why)", step);
    }
    free(recs);
    return rc != 0 ? -1 : 0;
}

int ckpt_shard_save(const CkptRequest *req, const ModelConfig *mc, const Groups *g, char *err, size_t errlen)
{
    const ParamTable *t = req->table;
    long long *start = xcalloc(2 * (size_t)t->n + 1, sizeof(long long)), *count = start + t->n;
    ckpt_shard_blocks(t, g->dp, g->dp_rank, g->ep, start, count);
    CkptRequest r = *req;
    r.rank = g->dp_rank;
    r.layout = (CkptLayout){ .world_size = g->dp, .pp = 1, .dp = g->dp, .ep = g->ep };
    r.row_start = start;
    r.row_count = count;
    size_t entries, total;
    params_measure(mc, &entries, &total);
    DpFiles d = { mc, g, { 0 }, NULL };
    CkptShardJob job = { g->dp_comm, (int)entries, dp_file, &d };
    int rc = ckpt_shard_save_job(&r, &job, err, errlen);
    if (d.tables) {
        for (int e = 0; e < g->ep; e++) params_free(&d.tables[e]);
        params_free(&d.full);
        free(d.tables);
    }
    free(start);
    return rc;
}
