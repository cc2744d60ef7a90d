/* tests/unit/test_comm.c - the `single` backend's collectives against their contracts
 * (comm/comm.h), launch detection and the world/groups of one process (comm/world.h), and the
 * error paths (each in a forked child: exit status and stderr text checked).
 * The same contracts with real MPI processes: tests/mpi/comm_mpi_test.c.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "comm/comm.h"
#include "comm/world.h"
#include "runtime/common.h"
#include "testing.h"

static const char *LAUNCH_VARS[] = { "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE",
                                     "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "DSTRAIN_RANKS_PER_NODE" };

static void clear_launch_env(void)
{
    for (size_t i = 0; i < sizeof LAUNCH_VARS / sizeof LAUNCH_VARS[0]; i++) unsetenv(LAUNCH_VARS[i]);
}

/* Runs fn in a child with stderr captured into err; returns the exit status (-signal if killed). */
static int run_child(void (*fn)(void), char *err, size_t n)
{
    char path[] = "/tmp/test_comm_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        dup2(fd, 2);
        fn();
        _exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    ssize_t got = pread(fd, err, n - 1, 0);
    err[got > 0 ? got : 0] = 0;
    close(fd);
    unlink(path);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

static void expect_death(void (*fn)(void), const char *words, const char *what)
{
    char err[4096];
    int st = run_child(fn, err, sizeof err);
    EXPECT(st == 1 && strstr(err, words) && count_lines(err) == 1,
           "%s: exit %d, stderr '%s' (want exit 1 and one line with '%s')", what, st, err, words);
}

static void test_detect(void)
{
    clear_launch_env();
    Launch l = world_detect_launch();
    EXPECT(!l.under_mpi && l.size_hint == -1 && !strcmp(l.launcher, "none"), "plain process: %s", l.launcher);
    setenv("OMPI_COMM_WORLD_SIZE", "4", 1);
    l = world_detect_launch();
    EXPECT(l.under_mpi && l.size_hint == 4 && !strcmp(l.launcher, "mpirun"), "mpirun: %s %d", l.launcher, l.size_hint);
    /* sbatch + mpirun: every rank also sees SLURM_PROCID=0; MPI decides, not Slurm */
    setenv("SLURM_PROCID", "0", 1);
    l = world_detect_launch();
    EXPECT(l.under_mpi && !strcmp(l.launcher, "mpirun"), "sbatch+mpirun: %s", l.launcher);
    clear_launch_env();
    setenv("PMIX_RANK", "1", 1);
    setenv("SLURM_PROCID", "1", 1);
    setenv("SLURM_STEP_NUM_TASKS", "2", 1);
    l = world_detect_launch();
    EXPECT(l.under_mpi && l.size_hint == 2 && !strcmp(l.launcher, "pmix"), "srun --mpi=pmix: %s %d", l.launcher,
           l.size_hint);
    clear_launch_env();
    setenv("PMI_SIZE", "3", 1);
    l = world_detect_launch();
    EXPECT(l.under_mpi && l.size_hint == 3 && !strcmp(l.launcher, "pmi"), "pmi: %s %d", l.launcher, l.size_hint);
    clear_launch_env();
    setenv("SLURM_PROCID", "0", 1);
    setenv("SLURM_STEP_NUM_TASKS", "2", 1);
    l = world_detect_launch();
    EXPECT(!l.under_mpi && l.size_hint == 2 && !strcmp(l.launcher, "srun"), "srun, no plugin: %s", l.launcher);
    clear_launch_env();
    setenv("SLURM_PROCID", "0", 1);    /* a batch script: one process */
    l = world_detect_launch();
    EXPECT(!l.under_mpi && l.size_hint == -1, "batch script: %s %d", l.launcher, l.size_hint);
    clear_launch_env();
}

static void srun_without_plugin(void)
{
    setenv("SLURM_PROCID", "1", 1);
    setenv("SLURM_STEP_NUM_TASKS", "2", 1);
    world_init(0, NULL);
}

#ifndef DSTRAIN_HAVE_MPI
static void mpirun_without_mpi(void)
{
    setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
    world_init(0, NULL);
}
#endif

static World *world;

static void layout_mismatch(void) { groups_create(world, 1, 2, 1); }
static void ep_not_dividing(void) { groups_create(world, 1, 1, 2); }

static void test_world(void)
{
    world = world_init(0, NULL);
    EXPECT(!strcmp(world->backend, "single") && world->rank == 0 && world->size == 1, "world %s %d/%d",
           world->backend, world->rank, world->size);
    EXPECT(world->local_rank == 0 && world->local_size == 1 && world->node == 0 && world->n_nodes == 1,
           "locality %d %d %d %d", world->local_rank, world->local_size, world->node, world->n_nodes);
    Groups *g = groups_create(world, 1, 1, 1);
    EXPECT(g->dp_comm->size == 1 && g->ep_comm->size == 1 && g->edp_comm->size == 1 && g->pp_comm->size == 1,
           "groups of one rank");
    EXPECT(g->stage == 0 && g->dp_rank == 0 && g->ep_rank == 0 && g->ep_index == 0, "coordinates");
    groups_free(g);
    EXPECT(groups_world_rank(4, 1, 2) == 6, "rank layout: stage 1, dp_rank 2 of 4 -> %d", groups_world_rank(4, 1, 2));
    expect_death(layout_mismatch, "the job has 1 rank(s) but 'parallel.pp' * 'parallel.dp' = 1 * 2 = 2",
                 "world size mismatch");
    expect_death(ep_not_dividing, "'parallel.ep' = 2 does not divide 'parallel.dp' = 1", "ep not dividing dp");
    expect_death(srun_without_plugin, "srun --mpi=pmix", "srun without an MPI plugin");
#ifndef DSTRAIN_HAVE_MPI
    expect_death(mpirun_without_mpi, "built without MPI", "mpirun, build without MPI");
#endif
}

static void test_reductions(Comm *c)
{
    float f[5] = { 1.5f, -2, 0, 3, 1e30f };
    double d[3] = { 0.1, -7, 1e300 };
    int32_t i32[2] = { -4, 9 };
    int64_t i64[2] = { (int64_t)1 << 40, -3 };
    comm_allreduce(c, f, 5, COMM_F32, COMM_SUM);
    comm_allreduce(c, d, 3, COMM_F64, COMM_MAX);
    comm_allreduce(c, i32, 2, COMM_I32, COMM_SUM);
    comm_allreduce(c, i64, 2, COMM_I64, COMM_MAX);
    EXPECT(f[0] == 1.5f && f[1] == -2 && f[4] == 1e30f, "allreduce f32 over one rank is the identity");
    EXPECT(d[0] == 0.1 && d[2] == 1e300, "allreduce f64 identity");
    EXPECT(i32[0] == -4 && i64[0] == (int64_t)1 << 40 && i64[1] == -3, "allreduce int identity");

    float send[3] = { 1, 2, 3 }, recv[3] = { 0, 0, 0 };
    comm_reduce_scatter(c, recv, send, 3, COMM_F32, COMM_SUM);
    EXPECT(recv[0] == 1 && recv[2] == 3, "reduce-scatter over one rank copies its block");
    float all[4] = { 0 }, mine[4] = { 5, 6, 7, 8 };
    comm_allgather(c, all, mine, 4, COMM_F32);
    EXPECT(all[0] == 5 && all[3] == 8, "allgather copies");
    comm_allgather(c, all, all, 4, COMM_F32);
    EXPECT(all[0] == 5 && all[3] == 8, "allgather in place");
    double b[2] = { 3, 4 };
    comm_broadcast(c, b, 2, COMM_F64, 0);
    EXPECT(b[0] == 3 && b[1] == 4, "broadcast from rank 0 keeps the buffer");
    comm_barrier(c);
}

static void test_alltoallv(Comm *c)
{
    int32_t send[6] = { 10, 11, 12, 13, 14, 15 }, recv[8];
    for (int i = 0; i < 8; i++) recv[i] = -1;
    size_t sc[1] = { 3 }, so[1] = { 2 }, rc[1] = { 3 }, ro[1] = { 4 };
    comm_alltoallv(c, recv, rc, ro, send, sc, so, COMM_I32);
    EXPECT(recv[3] == -1 && recv[4] == 12 && recv[5] == 13 && recv[6] == 14 && recv[7] == -1,
           "alltoallv moves send[2..5) to recv[4..7) and nothing else");
}

static void test_requests(Comm *c)
{
    CommRequest *r = comm_request_create(c, 6);
    float a[4] = { 1, 2, 3, 4 }, b[4] = { 0 }, x[2] = { 9, 8 }, y[2] = { 0 };
    /* receive first, then send: matched by tag, not by posting order across tags */
    comm_irecv(c, b, 4, COMM_F32, 0, 7, r);
    comm_irecv(c, y, 2, COMM_F32, 0, 8, r);
    comm_isend(c, x, 2, COMM_F32, 0, 8, r);
    comm_isend(c, a, 4, COMM_F32, 0, 7, r);
    comm_iallreduce(c, a, 4, COMM_F32, COMM_SUM, r);
    comm_ibarrier(c, r);
    comm_wait(r);
    EXPECT(b[0] == 1 && b[3] == 4 && y[0] == 9 && y[1] == 8, "self send/receive matched by tag");
    EXPECT(r->n_ops == 0, "wait empties the request");
    /* send first, same tag twice: first posted, first matched */
    float p[1] = { 1 }, q[1] = { 2 }, u[1] = { 0 }, v[1] = { 0 };
    comm_isend(c, p, 1, COMM_F32, 0, 3, r);
    comm_isend(c, q, 1, COMM_F32, 0, 3, r);
    comm_irecv(c, u, 1, COMM_F32, 0, 3, r);
    comm_irecv(c, v, 1, COMM_F32, 0, 3, r);
    comm_wait(r);
    EXPECT(u[0] == 1 && v[0] == 2, "same tag: messages arrive in order");
    float src[3] = { 4, 5, 6 }, dst[3] = { 0 };
    comm_icopy(c, dst, src, sizeof src, r);
    comm_wait(r);
    EXPECT(dst[0] == 4 && dst[2] == 6, "local copy");
    comm_request_free(r);
    Comm *sub = comm_split(c, 3, 0);
    EXPECT(sub->size == 1 && sub->rank == 0, "split of one rank");
    comm_destroy(sub);
}

static Comm *solo;
static void unmatched_wait(void)
{
    CommRequest *r = comm_request_create(solo, 2);
    float b[1];
    comm_irecv(solo, b, 1, COMM_F32, 0, 1, r);
    comm_wait(r);
}
static void blocking_self_send(void)
{
    float b[1] = { 0 };
    comm_send(solo, b, 1, COMM_F32, 0, 0);
}
static void request_full(void)
{
    CommRequest *r = comm_request_create(solo, 1);
    comm_ibarrier(solo, r);
    comm_ibarrier(solo, r);
}
static void bad_peer(void)
{
    float b[1] = { 0 };
    comm_broadcast(solo, b, 1, COMM_F32, 1);
}
static void a2a_mismatch(void)
{
    float s[2] = { 0 }, d[2];
    size_t sc[1] = { 2 }, rc[1] = { 1 }, o[1] = { 0 };
    comm_alltoallv(solo, d, rc, o, s, sc, o, COMM_F32);
}
static void byte_sum(void)
{
    char b[2] = { 0 };
    comm_allreduce(solo, b, 2, COMM_BYTE, COMM_SUM);
}

static void test_errors(Comm *c)
{
    solo = c;
    expect_death(unmatched_wait, "nothing matches", "wait on an unmatched receive");
    expect_death(blocking_self_send, "would never complete", "blocking send to itself");
    expect_death(request_full, "request for 1 operations is full", "request overflow");
    expect_death(bad_peer, "broadcast root 1 is outside the comm's ranks 0..0", "root out of range");
    expect_death(a2a_mismatch, "alltoallv sends 2 elements to itself but expects 1", "alltoallv count mismatch");
    expect_death(byte_sum, "a reduction needs a numeric type", "byte reduction");
}

int main(void)
{
    test_detect();
    test_world();
    test_reductions(world->comm);
    test_alltoallv(world->comm);
    test_requests(world->comm);
    test_errors(world->comm);
    EXPECT(comm_type_size(COMM_F64) == 8 && comm_type_size(COMM_I32) == 4 && comm_chunks(0) == 1 &&
               comm_chunks(COMM_CHUNK + 1) == 2,
           "type sizes and chunk counts");
    world_free(world);
    return test_finish();
}
