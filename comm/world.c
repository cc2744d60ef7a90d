/* comm/world.c - the world from the launcher and the layout's groups (world.h).
 * Not here: the collectives themselves (comm_single.c, comm_mpi.c).
 */
#include "world.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/common.h"

/* A positive integer environment variable, or -1 when absent or not a number. */
static int env_int(const char *name)
{
    const char *s = getenv(name);
    if (!s || !*s) return -1;
    char *end;
    long v = strtol(s, &end, 10);
    return *end || v < 0 || v > 1 << 30 ? -1 : (int)v;
}

static int env_set(const char *name)
{
    const char *s = getenv(name);
    return s && *s;
}

Launch world_detect_launch(void)
{
    Launch l = { 0, -1, "none" };
    if (env_set("OMPI_COMM_WORLD_SIZE")) {
        l = (Launch){ 1, env_int("OMPI_COMM_WORLD_SIZE"), "mpirun" };
    } else if (env_set("PMIX_RANK")) {
        /* srun --mpi=pmix (Slurm says the step's size) or a PMIx launcher */
        l = (Launch){ 1, env_int("SLURM_STEP_NUM_TASKS"), "pmix" };
    } else if (env_set("PMI_RANK") || env_set("PMI_SIZE")) {
        l = (Launch){ 1, env_int("PMI_SIZE"), "pmi" };
    } else if (env_set("SLURM_PROCID") && env_int("SLURM_STEP_NUM_TASKS") > 1) {
        /* srun's tasks without an MPI plugin: N processes that cannot find each other */
        l = (Launch){ 0, env_int("SLURM_STEP_NUM_TASKS"), "srun" };
    }
    return l;
}

#ifdef DSTRAIN_HAVE_MPI
static void abort_job(int code)
{
    comm_mpi_abort(code);
}

static void world_init_mpi(World *w)
{
    w->comm = comm_mpi_init();
    w->backend = "mpi";
    w->rank = w->comm->rank;
    w->size = w->comm->size;
    set_log_rank(w->rank);
    set_fatal_hook(abort_job);
    int rpn = env_int("DSTRAIN_RANKS_PER_NODE");
    if (env_set("DSTRAIN_RANKS_PER_NODE") && rpn < 1)
        DIE("environment: DSTRAIN_RANKS_PER_NODE = '%s' is not a positive integer", getenv("DSTRAIN_RANKS_PER_NODE"));
    comm_mpi_locality(w->comm, rpn > 0 ? rpn : 0, &w->local_rank, &w->local_size, &w->node, &w->n_nodes);
}
#endif

World *world_init(int argc, char **argv)
{
    World *w = xcalloc(1, sizeof *w);
    Launch l = world_detect_launch();
#ifdef DSTRAIN_HAVE_MPI
    if (l.under_mpi) {
        world_init_mpi(w);
        return w;
    }
#else
    if (l.under_mpi && l.size_hint != 1) {
        char ranks[48] = "";
        if (l.size_hint > 1) snprintf(ranks, sizeof ranks, " as one of %d ranks", l.size_hint);
        DIE("launch: started by %s%s, but this dstrain was built without MPI (install libopenmpi-dev and "
            "rebuild, or run one process)", l.launcher, ranks);
    }
#endif
    if (!l.under_mpi && l.size_hint > 1)
        DIE("launch: started by srun as one of %d tasks without an MPI plugin, so the tasks cannot find each "
            "other (use 'srun --mpi=pmix', or mpirun)", l.size_hint);
    w->comm = comm_single_create();
    w->backend = "single";
    w->rank = 0;
    w->size = 1;
    w->local_rank = 0;
    w->local_size = 1;
    w->node = 0;
    w->n_nodes = 1;
    return w;
}

void world_free(World *w)
{
    if (!w) return;
    int mpi = strcmp(w->backend, "mpi") == 0;
    comm_destroy(w->comm);
#ifdef DSTRAIN_HAVE_MPI
    if (mpi) comm_mpi_finalize();
#endif
    (void)mpi;
    set_fatal_hook(NULL);
    set_log_rank(-1);
    free(w);
}

void world_exit_all(World *w, int code, const char *fmt, ...)
{
    if (w->rank == 0) {
        va_list ap;
        va_start(ap, fmt);
        fflush(stdout);
        fprintf(stderr, "dstrain: ");
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        fflush(stderr);
        va_end(ap);
    }
    /* nobody leaves before rank 0 has printed: the launcher may kill the rest at the first exit */
    comm_barrier(w->comm);
    world_free(w);
    exit(code);
}

int groups_world_rank(int dp, int stage, int dp_rank)
{
    return stage * dp + dp_rank;
}

Groups *groups_create(World *w, int pp, int dp, int ep)
{
    if (pp < 1 || dp < 1 || ep < 1)
        world_exit_all(w, 1, "parallel: pp = %d, dp = %d, ep = %d must each be at least 1", pp, dp, ep);
    if (dp % ep != 0)
        world_exit_all(w, 1, "parallel: 'parallel.ep' = %d does not divide 'parallel.dp' = %d", ep, dp);
    if ((long long)pp * dp != w->size)
        world_exit_all(w, 1,
                       "parallel: the job has %d rank(s) but 'parallel.pp' * 'parallel.dp' = %d * %d = %lld "
                       "(launch %lld ranks, or set pp and dp so that pp * dp = %d)",
                       w->size, pp, dp, (long long)pp * dp, (long long)pp * dp, w->size);
    Groups *g = xcalloc(1, sizeof *g);
    g->pp = pp;
    g->dp = dp;
    g->ep = ep;
    g->stage = w->rank / dp;
    g->dp_rank = w->rank % dp;
    g->ep_rank = g->dp_rank % ep;
    g->ep_index = g->dp_rank / ep;
    CHECK(groups_world_rank(dp, g->stage, g->dp_rank) == w->rank);
    /* every split is collective over the world: all ranks make all four, in this order */
    g->dp_comm = comm_split(w->comm, g->stage, g->dp_rank);
    g->ep_comm = comm_split(w->comm, g->stage * (dp / ep) + g->ep_index, g->ep_rank);
    g->edp_comm = comm_split(w->comm, g->stage * ep + g->ep_rank, g->ep_index);
    g->pp_comm = comm_split(w->comm, g->dp_rank, g->stage);
    CHECK(g->dp_comm->size == dp && g->dp_comm->rank == g->dp_rank);
    CHECK(g->ep_comm->size == ep && g->ep_comm->rank == g->ep_rank);
    CHECK(g->edp_comm->size == dp / ep && g->edp_comm->rank == g->ep_index);
    CHECK(g->pp_comm->size == pp && g->pp_comm->rank == g->stage);
    return g;
}

void groups_free(Groups *g)
{
    if (!g) return;
    comm_destroy(g->dp_comm);
    comm_destroy(g->ep_comm);
    comm_destroy(g->edp_comm);
    comm_destroy(g->pp_comm);
    free(g);
}
