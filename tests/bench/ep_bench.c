/* tests/bench/ep_bench.c - throughput of MoE dispatch + combine over an EP group of all the job's
 * ranks, next to raw MPI_Alltoallv moving the same bytes between the same ranks in the same run
 * (run by tests/bench/ep_bench.sh under mpirun).
 *
 * Shape: configs/small.toml's MoE layer by default - C = 128, E = 16 experts in 4 groups, top-4
 * from the best 2 groups, a micro-batch of 16 x 128 = 2048 tokens per rank - with routing from
 * the op table's moe_route on random router scores.
 *   dstrain:  ep_dispatch(x) then ep_combine(rows) with the handle already laid out: the gather
 *             into send order, the chunk messages both ways, the weighted sum back into tokens
 *   raw:      MPI_Alltoallv of the dispatch's per-rank byte counts from a packed buffer, then the
 *             same back (no gather, no weighting)
 * Bytes: every (token, slot) row (C floats) once in each direction, the rows a rank keeps
 * included (raw moves those too), summed over ranks. Each timed iteration starts after a
 * barrier and counts the slowest rank; the two are interleaved and the medians reported.
 * Also timed alone: the two local passes dispatch/combine do and raw does not (the op-table
 * gather into send order and the weighted sum back into tokens); dstrain minus them is the
 * transport, reported against raw as well.
 * Timings with more ranks than cores (EP = 4 on 2 cores) measure the scheduler, not the code.
 * Usage: ep_bench [N C E K n_group topk_group iters]
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/dispatch.h"
#include "comm/world.h"
#include "kernels/ops.h"
#include "runtime/common.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* seconds of the slowest rank */
static double slowest(double t)
{
    MPI_Allreduce(MPI_IN_PLACE, &t, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return t;
}

typedef struct Raw {
    int *sc, *so, *rc, *ro;     /* (P) each: alltoallv counts/offsets in floats, dispatch direction */
    float *send, *recv;         /* (N*K, C), (recv_cap, C) */
} Raw;

static void raw_setup(Raw *r, const EpHandle *h, const EpGroup *g)
{
    const int P = g->size, nl = g->n_local, C = h->C;
    r->sc = xcalloc((size_t)P * 4, sizeof(int));
    r->so = r->sc + P;
    r->rc = r->so + P;
    r->ro = r->rc + P;
    int rrow = 0;
    for (int p = 0; p < P; p++) {
        r->sc[p] = (h->offsets_host[(p + 1) * nl] - h->offsets_host[p * nl]) * C;
        r->so[p] = h->offsets_host[p * nl] * C;
        int n = 0;
        for (int j = 0; j < nl; j++) n += h->recv_counts[j * P + p];
        r->rc[p] = n * C;
        r->ro[p] = rrow * C;
        rrow += n;
    }
    r->send = xcalloc((size_t)h->N * h->K * C, sizeof(float));
    r->recv = xcalloc((size_t)h->recv_cap * C, sizeof(float));
}

static void raw_round_trip(Raw *r)
{
    MPI_Alltoallv(r->send, r->sc, r->so, MPI_FLOAT, r->recv, r->rc, r->ro, MPI_FLOAT, MPI_COMM_WORLD);
    MPI_Alltoallv(r->recv, r->rc, r->ro, MPI_FLOAT, r->send, r->sc, r->so, MPI_FLOAT, MPI_COMM_WORLD);
}

typedef struct Bench {
    int N, C, E, K, n_group, topk_group, iters;
    World *w;
    Groups *gr;
    Ops *o;
    EpGroup g;
    EpHandle h;
    Arena ar;
    float *x, *y, *wt, *rows;   /* (N,C), (N,C), (N,K), (recv_cap,C) */
    int32_t *idx;               /* (N,K) */
    Raw raw;
} Bench;

/* Buffers, and routing from moe_route on random scores. */
static void bench_setup(Bench *b)
{
    const int N = b->N, C = b->C, E = b->E, K = b->K;
    b->gr = groups_create(b->w, 1, b->w->size, b->w->size);
    b->o = ops_cpu_create(1, PREC_FP32);
    ep_group_init(&b->g, b->gr->ep_comm, b->w->node, E);
    for (int pass = 0; pass < 2; pass++) {
        ep_group_plan(&b->g, N, K, C, &b->ar);
        ep_handle_plan_group(&b->h, &b->g, N, K, E, C, &b->ar);
        if (pass == 0) b->ar = (Arena){ xcalloc(1, b->ar.used), 0 };
    }
    Rng rng;
    rng_seed(&rng, 1234 + (uint64_t)b->w->rank);
    float *s = xcalloc((size_t)N * E, sizeof(float)), *bias = xcalloc((size_t)E, sizeof(float));
    b->x = xcalloc((size_t)N * C, sizeof(float));
    b->y = xcalloc((size_t)N * C, sizeof(float));
    b->wt = xcalloc((size_t)N * K, sizeof(float));
    b->rows = xcalloc((size_t)b->h.recv_cap * C, sizeof(float));
    b->idx = xcalloc((size_t)N * K, sizeof(int32_t));
    for (size_t i = 0; i < (size_t)N * E; i++) s[i] = rng_uniform(&rng);
    for (size_t i = 0; i < (size_t)N * C; i++) b->x[i] = rng_normal(&rng);
    RouteShape rs = { N, E, K, b->n_group, b->topk_group, 1.0f, 1 };
    b->o->moe_route(b->o, b->idx, b->wt, s, bias, &rs);
    free(s);
    free(bias);
    ep_layout(b->o, &b->h, b->idx);
    raw_setup(&b->raw, &b->h, &b->g);
}

static void bench_free(Bench *b)
{
    free(b->raw.sc);
    free(b->raw.send);
    free(b->raw.recv);
    free(b->x);
    free(b->y);
    free(b->wt);
    free(b->rows);
    free(b->idx);
    ep_handle_free(&b->h);
    ep_group_free(&b->g);
    free(b->ar.base);
    ops_destroy(b->o);
    groups_free(b->gr);
}

enum { T_LAYOUT, T_OURS, T_RAW, T_GATHER, T_SUM, N_TIMES };

/* Median seconds (slowest rank) of each timed piece into t. */
static void bench_time(Bench *b, double *t)
{
    Ops *o = b->o;
    EpHandle *h = &b->h;
    double *v = xcalloc((size_t)N_TIMES * b->iters, sizeof(double));   /* (N_TIMES, iters) */
    for (int it = -3; it < b->iters; it++) {   /* 3 untimed rounds warm everything up */
        double d[N_TIMES];
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        ep_layout(o, h, b->idx);
        d[T_LAYOUT] = slowest(MPI_Wtime() - t0);
        MPI_Barrier(MPI_COMM_WORLD);
        t0 = MPI_Wtime();
        ep_dispatch(o, h, (act *)b->rows, (const act *)b->x);   /* cpu: FP32 act */
        ep_combine(o, h, (act *)b->y, (const act *)b->rows, b->wt);
        d[T_OURS] = slowest(MPI_Wtime() - t0);
        MPI_Barrier(MPI_COMM_WORLD);
        t0 = MPI_Wtime();
        raw_round_trip(&b->raw);
        d[T_RAW] = slowest(MPI_Wtime() - t0);
        MPI_Barrier(MPI_COMM_WORLD);
        t0 = MPI_Wtime();
        o->moe_gather(o, b->g.lane[EP_LANE_F].send, (const act *)b->x, h->pos, b->N, b->K, b->C);
        double t1 = MPI_Wtime();
        o->moe_combine(o, (act *)b->y, h->ret, b->wt, h->pos, b->N, b->K, b->C);
        d[T_SUM] = slowest(MPI_Wtime() - t1);
        d[T_GATHER] = slowest(t1 - t0);
        for (int k = 0; k < N_TIMES && it >= 0; k++) v[k * b->iters + it] = d[k];
    }
    for (int k = 0; k < N_TIMES; k++) t[k] = median(v + k * b->iters, b->iters);
    free(v);
}

static void bench_report(Bench *b, const double *t)
{
    const EpGroup *g = &b->g;
    long long rows_all = (long long)b->N * b->K * b->w->size, remote = 0, most = b->h.recv_rows;
    for (int p = 0; p < g->size; p++)
        if (p != g->rank) remote += b->raw.sc[p] / b->C;
    MPI_Allreduce(MPI_IN_PLACE, &remote, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, &most, 1, MPI_LONG_LONG, MPI_MAX, MPI_COMM_WORLD);
    int nodes = ep_max_nodes(b->idx, b->N, b->K, b->E, g->size, g->node_of);
    MPI_Allreduce(MPI_IN_PLACE, &nodes, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (b->w->rank != 0) return;
    const double bytes = 2.0 * (double)rows_all * b->C * sizeof(float);
    const double transport = t[T_OURS] - t[T_GATHER] - t[T_SUM];
    printf("ep_bench: EP=%d (%d ranks, %d node(s)), N=%d tokens/rank, C=%d, E=%d, K=%d, groups %d/%d, %d iters\n",
           g->size, b->w->size, b->w->n_nodes, b->N, b->C, b->E, b->K, b->topk_group, b->n_group, b->iters);
    printf("  rows %lld (%.1f%% to other ranks), most rows on one rank %lld (capacity %d), max nodes per token %d\n",
           rows_all, 100.0 * (double)remote / (double)rows_all, most, b->h.recv_cap, nodes);
    printf("  layout + count exchange      %8.3f ms\n", 1e3 * t[T_LAYOUT]);
    printf("  dispatch + combine (dstrain) %8.3f ms  %7.2f GB/s\n", 1e3 * t[T_OURS], bytes / t[T_OURS] / 1e9);
    printf("  MPI_Alltoallv x2 (raw)       %8.3f ms  %7.2f GB/s\n", 1e3 * t[T_RAW], bytes / t[T_RAW] / 1e9);
    printf("  ratio dstrain / raw          %8.1f%%  (aim >= 80%%)\n", 100.0 * t[T_RAW] / t[T_OURS]);
    printf("  of which local passes        %8.3f ms gather + %.3f ms weighted sum\n", 1e3 * t[T_GATHER],
           1e3 * t[T_SUM]);
    printf("  transport alone / raw        %8.1f%%\n", 100.0 * t[T_RAW] / transport);
}

int main(int argc, char **argv)
{
    Bench b = { 0 };
    b.w = world_init(argc, argv);
    if (strcmp(b.w->backend, "mpi") != 0) DIE("ep_bench: run it under mpirun (see tests/bench/ep_bench.sh)");
    const int defaults[7] = { 2048, 128, 16, 4, 4, 2, 30 };   /* configs/small.toml's MoE layer */
    int a[7];
    for (int i = 0; i < 7; i++) a[i] = argc > i + 1 ? atoi(argv[i + 1]) : defaults[i];
    b.N = a[0], b.C = a[1], b.E = a[2], b.K = a[3], b.n_group = a[4], b.topk_group = a[5], b.iters = a[6];
    if (b.iters < 1 || b.N < 1 || b.C < 1 || b.K < 1 || b.K > b.E) DIE("ep_bench: bad arguments");
    bench_setup(&b);
    double t[N_TIMES];
    bench_time(&b, t);
    bench_report(&b, t);
    bench_free(&b);
    world_free(b.w);
    return 0;
}
