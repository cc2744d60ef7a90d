/* tests/mpi/comm_mpi_test.c - the comm layer with real MPI processes (run by
 * tests/mpi/test_mpi_comm.sh, test_mpi_failure.sh and tests/cli/test_slurm.sh under mpirun or
 * srun). Modes (the first three can be combined in one run, with one "N passed, N failed"):
 *   collectives          every collective of comm.h, blocking and non-blocking (several posted
 *                        into one request; the ragged reduce-scatter/all-gather pair with an
 *                        unpadded buffer), on the world and on split groups, against the serial
 *                        expectation; payloads are small integers, so sums are exact and compared
 *                        with == (no tolerance)
 *   groups               every layout (pp, dp, ep) with pp * dp = world size: each group's members
 *                        are the ranks world.h's layout formula names
 *   world                rank/size agree with the launcher, locality (one host, or the blocks of
 *                        DSTRAIN_RANKS_PER_NODE)
 *   whoami               prints "whoami rank R size S backend B node N/NN slurm_procid P" (for
 *                        launch tests; P is what Slurm told the process, "-" outside Slurm)
 *   layout PP DP EP      groups_create with that layout (a mismatch must end every rank)
 *   die R                rank R hits DIE while the others wait in a barrier
 *   hang DIR             every rank writes DIR/pid.RANK, then blocks in a receive nobody sends
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "comm/comm.h"
#include "comm/world.h"
#include "runtime/common.h"
#include "tests/mpi/mpi_testing.h"

static void test_allreduce(Comm *c, CommRequest *rq)
{
    enum { n = 1001 };
    static float f[n], fm[n];
    static double d[n];
    static int32_t i32[n];
    static int64_t i64[n];
    const int P = c->size, r = c->rank;
    for (int i = 0; i < n; i++) {
        f[i] = (float)r + 0.5f * (float)i;
        fm[i] = (float)((r * 7 + i) % P);
        d[i] = r * 1e10 + i;
        i32[i] = r - i;
        i64[i] = ((int64_t)r << 33) + i;
    }
    if (rq) {
        comm_iallreduce(c, f, n, COMM_F32, COMM_SUM, rq);
        comm_iallreduce(c, fm, n, COMM_F32, COMM_MAX, rq);
        comm_iallreduce(c, d, n, COMM_F64, COMM_SUM, rq);
        comm_iallreduce(c, i32, n, COMM_I32, COMM_SUM, rq);
        comm_iallreduce(c, i64, n, COMM_I64, COMM_MAX, rq);
        comm_wait(rq);
    } else {
        comm_allreduce(c, f, n, COMM_F32, COMM_SUM);
        comm_allreduce(c, fm, n, COMM_F32, COMM_MAX);
        comm_allreduce(c, d, n, COMM_F64, COMM_SUM);
        comm_allreduce(c, i32, n, COMM_I32, COMM_SUM);
        comm_allreduce(c, i64, n, COMM_I64, COMM_MAX);
    }
    const int tri = P * (P - 1) / 2;
    int bad = 0;
    for (int i = 0; i < n; i++) {
        int mx = 0;
        for (int q = 0; q < P; q++) mx = (q * 7 + i) % P > mx ? (q * 7 + i) % P : mx;
        bad += f[i] != (float)tri + (float)P * 0.5f * (float)i;
        bad += fm[i] != (float)mx;
        bad += d[i] != tri * 1e10 + (double)P * i;
        bad += i32[i] != tri - P * i;
        bad += i64[i] != ((int64_t)(P - 1) << 33) + i;
    }
    MEXPECT(bad == 0, "allreduce (%s, size %d): %d values differ", rq ? "non-blocking" : "blocking", P, bad);
}

static void test_scatter_gather(Comm *c, CommRequest *rq)
{
    enum { n = 7 };
    const int P = c->size, r = c->rank;
    float *send = xcalloc((size_t)P * n, sizeof(float)), recv[n];
    float *all = xcalloc((size_t)P * n, sizeof(float)), *inplace = xcalloc((size_t)P * n, sizeof(float));
    float mine[n];
    for (int b = 0; b < P; b++)
        for (int i = 0; i < n; i++) send[b * n + i] = (float)(r * 100 + b * 10 + i);
    for (int i = 0; i < n; i++) {
        mine[i] = (float)(r * 100 + i);
        inplace[r * n + i] = mine[i];
    }
    if (rq) {
        comm_ireduce_scatter(c, recv, send, n, COMM_F32, COMM_SUM, rq);
        comm_iallgather(c, all, mine, n, COMM_F32, rq);
        comm_iallgather(c, inplace, inplace + r * n, n, COMM_F32, rq);
        comm_wait(rq);
    } else {
        comm_reduce_scatter(c, recv, send, n, COMM_F32, COMM_SUM);
        comm_allgather(c, all, mine, n, COMM_F32);
        comm_allgather(c, inplace, inplace + r * n, n, COMM_F32);
    }
    int bad = 0;
    for (int i = 0; i < n; i++) bad += recv[i] != (float)(100 * P * (P - 1) / 2 + P * (r * 10 + i));
    for (int b = 0; b < P; b++)
        for (int i = 0; i < n; i++)
            bad += all[b * n + i] != (float)(b * 100 + i) || inplace[b * n + i] != all[b * n + i];
    MEXPECT(bad == 0, "reduce-scatter/allgather (%s, size %d): %d values differ", rq ? "non-blocking" : "blocking",
            P, bad);
    free(send);
    free(all);
    free(inplace);
}

/* The ragged ZeRO-1 pair on unpadded buffers (comm_reduce_scatter_v, comm_allgather_v): n of
 * P*block - 2 (the last block two short; with P >= 3 and block 1 the last is empty), so a
 * padded read or write past n shows in the guard element after the buffer. */
static void test_ragged(Comm *c, CommRequest *rq)
{
    const int P = c->size, r = c->rank;
    for (size_t block = 1; block <= 5; block += 4) {
        const size_t n = (size_t)P * block >= 2 ? (size_t)P * block - 2 : 0;
        float *send = xcalloc(n + 1, sizeof(float)), *buf = xcalloc(n + 1, sizeof(float)), recv[8];
        for (size_t i = 0; i < n; i++) send[i] = (float)(r * 1000 + (int)i);
        send[n] = buf[n] = -1.0f;   /* guards */
        for (int i = 0; i < 8; i++) recv[i] = -2.0f;
        const size_t mine = comm_block_count(n, block, r), lo = (size_t)r * block;
        for (size_t i = 0; i < mine; i++) buf[lo + i] = (float)(r * 10 + (int)i);
        if (rq) {
            comm_ireduce_scatter_v(c, recv, send, n, block, COMM_F32, COMM_SUM, rq);
            comm_iallgather_v(c, buf, n, block, COMM_F32, rq);
            comm_wait(rq);
        } else {
            comm_reduce_scatter_v(c, recv, send, n, block, COMM_F32, COMM_SUM);
            comm_allgather_v(c, buf, n, block, COMM_F32);
        }
        int bad = buf[n] != -1.0f || recv[mine] != -2.0f;
        for (size_t i = 0; i < mine; i++) bad += recv[i] != (float)(1000 * P * (P - 1) / 2 + P * (int)(lo + i));
        for (int b = 0; b < P; b++)
            for (size_t i = 0; i < comm_block_count(n, block, b); i++)
                bad += buf[(size_t)b * block + i] != (float)(b * 10 + (int)i);
        MEXPECT(bad == 0, "ragged reduce-scatter/allgather (%s, size %d, n %zu, block %zu): %d values differ",
                rq ? "non-blocking" : "blocking", P, n, block, bad);
        free(send);
        free(buf);
    }
}

/* rank q sends (q + 2p) % 3 + (q == p) elements q*1000 + p*100 + i to rank p; send blocks in
 * rank order with a 1-element gap, receive blocks in reverse rank order with a 2-element gap
 * that must stay untouched */
static int a2a_count(int q, int p) { return (q + 2 * p) % 3 + (q == p); }

static void test_alltoallv(Comm *c, CommRequest *rq)
{
    const int P = c->size, r = c->rank;
    size_t *sc = xcalloc((size_t)P * 4, sizeof(size_t)), *so = sc + P, *rc = so + P, *ro = rc + P;
    size_t at = 0;
    for (int p = 0; p < P; p++) {
        sc[p] = (size_t)a2a_count(r, p);
        so[p] = at;
        at += sc[p] + 1;
    }
    int32_t *send = xcalloc(at + 1, sizeof(int32_t));
    for (int p = 0; p < P; p++)
        for (size_t i = 0; i < sc[p]; i++) send[so[p] + i] = r * 1000 + p * 100 + (int32_t)i;
    size_t rat = 0;
    for (int q = P - 1; q >= 0; q--) {
        rc[q] = (size_t)a2a_count(q, r);
        ro[q] = rat;
        rat += rc[q] + 2;
    }
    int32_t *recv = xcalloc(rat + 1, sizeof(int32_t));
    for (size_t i = 0; i < rat; i++) recv[i] = -1;
    if (rq) {
        comm_ialltoallv(c, recv, rc, ro, send, sc, so, COMM_I32, rq);
        comm_wait(rq);
    } else {
        comm_alltoallv(c, recv, rc, ro, send, sc, so, COMM_I32);
    }
    int bad = 0;
    for (int q = 0; q < P; q++) {
        for (size_t i = 0; i < rc[q]; i++) bad += recv[ro[q] + i] != q * 1000 + r * 100 + (int32_t)i;
        bad += recv[ro[q] + rc[q]] != -1 || recv[ro[q] + rc[q] + 1] != -1;
    }
    MEXPECT(bad == 0, "alltoallv (%s, size %d): %d values or gaps wrong", rq ? "non-blocking" : "blocking", P, bad);
    free(sc);
    free(send);
    free(recv);
}

static void test_p2p_bcast(Comm *c, CommRequest *rq)
{
    enum { n = 5 };
    const int P = c->size, r = c->rank, root = P - 1;
    const int next = (r + 1) % P, prev = (r + P - 1) % P;
    double b[n], out[n], in[n], in2[n], local[n];
    for (int i = 0; i < n; i++) {
        b[i] = r == root ? 3.5 * i : -1;
        out[i] = r * 10 + i;
        in[i] = in2[i] = local[i] = -1;
    }
    if (rq) {
        comm_ibroadcast(c, b, n, COMM_F64, root, rq);
        comm_irecv(c, in, n, COMM_F64, prev, 5, rq);
        comm_irecv(c, in2, n, COMM_F64, next, 6, rq);
        comm_isend(c, out, n, COMM_F64, next, 5, rq);
        comm_isend(c, out, n, COMM_F64, prev, 6, rq);
        comm_icopy(c, local, out, sizeof out, rq);
        comm_ibarrier(c, rq);
        comm_wait(rq);
    } else {
        comm_broadcast(c, b, n, COMM_F64, root);
        if (P > 1 && r % 2 == 0) {          /* even ranks send first: no cycle of blocked sends */
            comm_send(c, out, n, COMM_F64, next, 5);
            comm_recv(c, in, n, COMM_F64, prev, 5);
        } else if (P > 1) {
            comm_recv(c, in, n, COMM_F64, prev, 5);
            comm_send(c, out, n, COMM_F64, next, 5);
        }
        comm_barrier(c);
    }
    int bad = 0;
    for (int i = 0; i < n; i++) {
        bad += b[i] != 3.5 * i;
        if (rq || P > 1) bad += in[i] != prev * 10 + i;
        if (rq) bad += in2[i] != next * 10 + i || local[i] != out[i];
    }
    MEXPECT(bad == 0, "broadcast/send/recv (%s, size %d): %d values differ", rq ? "non-blocking" : "blocking", P,
            bad);
}

static void suite(Comm *c)
{
    CommRequest *rq = comm_request_create(c, 8);
    for (int nb = 0; nb < 2; nb++) {
        CommRequest *use = nb ? rq : NULL;
        test_allreduce(c, use);
        test_scatter_gather(c, use);
        test_ragged(c, use);
        test_alltoallv(c, use);
        test_p2p_bcast(c, use);
    }
    comm_request_free(rq);
}

static void mode_collectives(World *w)
{
    suite(w->comm);
    if (w->size % 2 == 0) {
        Groups *g = groups_create(w, 1, w->size, 2);
        suite(g->ep_comm);
        suite(g->edp_comm);
        suite(g->dp_comm);
        groups_free(g);
        g = groups_create(w, 2, w->size / 2, 1);
        suite(g->pp_comm);
        groups_free(g);
    }
}

/* The world ranks of c's members, in c's rank order, against want(i). */
static void check_members(World *w, Comm *c, const char *name, const int *want)
{
    int32_t me = w->rank, *got = xcalloc((size_t)c->size, sizeof(int32_t));
    comm_allgather(c, got, &me, 1, COMM_I32);
    int bad = 0;
    for (int i = 0; i < c->size; i++) bad += got[i] != want[i];
    MEXPECT(bad == 0, "%s group: %d members off the layout formula", name, bad);
    free(got);
}

static void mode_groups(World *w)
{
    static const int layouts[][3] = { { 1, 1, 1 }, { 1, 2, 1 }, { 1, 2, 2 }, { 2, 1, 1 }, { 1, 4, 1 }, { 1, 4, 2 },
                                      { 1, 4, 4 }, { 2, 2, 1 }, { 2, 2, 2 }, { 4, 1, 1 } };
    int tried = 0;
    for (size_t l = 0; l < sizeof layouts / sizeof layouts[0]; l++) {
        const int pp = layouts[l][0], dp = layouts[l][1], ep = layouts[l][2];
        if (pp * dp != w->size) continue;
        Groups *g = groups_create(w, pp, dp, ep);
        int want[16];
        MEXPECT(w->rank == groups_world_rank(dp, g->stage, g->dp_rank), "layout %d,%d,%d: rank formula", pp, dp, ep);
        for (int i = 0; i < dp; i++) want[i] = g->stage * dp + i;
        check_members(w, g->dp_comm, "dp", want);
        for (int i = 0; i < ep; i++) want[i] = g->stage * dp + g->ep_index * ep + i;
        check_members(w, g->ep_comm, "ep", want);
        for (int i = 0; i < dp / ep; i++) want[i] = g->stage * dp + i * ep + g->ep_rank;
        check_members(w, g->edp_comm, "edp", want);
        for (int i = 0; i < pp; i++) want[i] = i * dp + g->dp_rank;
        check_members(w, g->pp_comm, "pp", want);
        groups_free(g);
        tried++;
    }
    MEXPECT(tried >= 2, "only %d layouts fit %d ranks", tried, w->size);
}

static void mode_world(World *w)
{
    const char *env_rank = getenv("OMPI_COMM_WORLD_RANK") ? getenv("OMPI_COMM_WORLD_RANK") : getenv("PMIX_RANK");
    MEXPECT(!strcmp(w->backend, "mpi"), "backend %s", w->backend);
    MEXPECT(!env_rank || atoi(env_rank) == w->rank, "MPI rank %d, launcher says %s", w->rank, env_rank);
    const char *rpn_s = getenv("DSTRAIN_RANKS_PER_NODE");
    int rpn = rpn_s ? atoi(rpn_s) : w->size;   /* one host: one node of every rank */
    MEXPECT(w->node == w->rank / rpn && w->n_nodes == (w->size + rpn - 1) / rpn, "node %d of %d (rpn %d)", w->node,
            w->n_nodes, rpn);
    int on_node = w->size - w->node * rpn < rpn ? w->size - w->node * rpn : rpn;
    MEXPECT(w->local_rank == w->rank % rpn && w->local_size == on_node, "local rank %d of %d", w->local_rank,
            w->local_size);
}

static int mode_die(World *w, int who)
{
    if (w->rank == who) {
        usleep(200 * 1000);
        DIE("test: rank %d stops on purpose", who);
    }
    comm_barrier(w->comm);
    fprintf(stderr, "rank %d: the barrier returned although rank %d died\n", w->rank, who);
    return 3;
}

static int mode_hang(World *w, const char *dir)
{
    char *path = xasprintf("%s/pid.%d", dir, w->rank);
    FILE *f = fopen(path, "w");
    if (!f) DIE("cannot write '%s'", path);
    fprintf(f, "%d\n", (int)getpid());
    fclose(f);
    free(path);
    comm_barrier(w->comm);
    float never;
    comm_recv(w->comm, &never, 1, COMM_F32, (w->rank + 1) % w->size, 99);
    fprintf(stderr, "rank %d: a receive nobody sends returned\n", w->rank);
    return 3;
}

/* Runs the check modes named in argv[1..] (collectives, groups, world); 0 if none is another word. */
static int check_modes(World *w, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "collectives")) mode_collectives(w);
        else if (!strcmp(argv[i], "groups")) mode_groups(w);
        else if (!strcmp(argv[i], "world")) mode_world(w);
        else return 0;
    }
    return 1;
}

int main(int argc, char **argv)
{
    World *w = world_init(argc, argv);
    mpi_test_rank = w->rank;
    const char *mode = argc > 1 ? argv[1] : "";
    int rc = 2;
    if (argc > 1 && check_modes(w, argc, argv)) rc = mpi_test_finish(w, "comm checks");
    else if (!strcmp(mode, "whoami")) {
        const char *procid = getenv("SLURM_PROCID");
        printf("whoami rank %d size %d backend %s node %d/%d slurm_procid %s\n", w->rank, w->size, w->backend,
               w->node, w->n_nodes, procid ? procid : "-");
        rc = 0;
    } else if (!strcmp(mode, "layout") && argc == 5) {
        groups_free(groups_create(w, atoi(argv[2]), atoi(argv[3]), atoi(argv[4])));
        rc = 0;
    } else if (!strcmp(mode, "die") && argc == 3) rc = mode_die(w, atoi(argv[2]));
    else if (!strcmp(mode, "hang") && argc == 3) rc = mode_hang(w, argv[2]);
    else fprintf(stderr, "usage: comm_mpi_test [collectives] [groups] [world] | whoami | layout PP DP EP | die R | "
                         "hang DIR\n");
    world_free(w);
    return rc;
}
