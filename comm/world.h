/* comm/world.h - the processes of a job and the groups the parallel layout carves out of them.
 *
 * world_init decides the backend from how the process was started:
 *   started by an MPI launcher (mpirun: OMPI_COMM_WORLD_SIZE; srun --mpi=pmix or prterun:
 *   PMIX_RANK; MPICH-style PMI: PMI_RANK/PMI_SIZE) and built with MPI   -> backend "mpi"
 *   otherwise                                                             -> backend "single"
 * Rank, size and locality come from MPI once it is initialised, never from the environment:
 * inside `sbatch` running `mpirun` every rank inherits SLURM_PROCID=0, and under
 * `srun --mpi=pmix` there are no OMPI_COMM_WORLD_* variables. The environment only tells
 * whether MPI is there. Local rank, node index and node count come from
 * MPI_Comm_split_type(shared); DSTRAIN_RANKS_PER_NODE=n makes consecutive blocks of n ranks
 * stand for nodes instead (to exercise node-aware placement on one machine).
 * A launch that asks for several ranks but cannot give them (a build without MPI under mpirun,
 * srun without an MPI plugin) is an error, so N copies never train side by side unaware.
 *
 * In the mpi backend, world_init installs the fatal hook of runtime/common.h: DIE, CHECK or
 * BUG on any rank prints "[rank R] dstrain: ..." and aborts the whole job (MPI_Abort), so no
 * peer waits forever in a collective.
 *
 * Rank layout (DESIGN.md "Parallel layout"): world = pp * dp, pipeline stages outermost,
 *   world rank = stage * dp + dp_rank,   ep_rank = dp_rank % ep,   ep_index = dp_rank / ep
 * An EP group is ep consecutive dp ranks of one stage, so with launchers' default block
 * placement (consecutive ranks on one node) an EP group stays inside a node whenever ep divides
 * the ranks per node. Example pp = 2, dp = 4, ep = 2 (8 ranks):
 *
 *     stage 0:  [0 1] [2 3]      dp {0 1 2 3}   ep {0 1} {2 3}   edp {0 2} {1 3}
 *     stage 1:  [4 5] [6 7]      dp {4 5 6 7}   ep {4 5} {6 7}   edp {4 6} {5 7}
 *     pp (one rank per stage): {0 4} {1 5} {2 6} {3 7}
 *
 * dp: replicated (attention, dense, shared-expert) gradients are reduced here, ZeRO-1 shards
 * live here; ep: tokens travel to experts here (comm/dispatch.h); edp: the dp/ep ranks holding
 * the same experts (same ep_rank), where expert gradients are reduced; pp: the pipeline.
 *
 * Calling sequence:
 *   World *w = world_init(argc, argv);              first thing in main
 *   Groups *g = groups_create(w, pp, dp, ep);       collective; a bad layout ends every rank
 *   ... comm_allreduce(g->dp, ...), ep_group_init(&eg, g->ep, w->node, E) ...
 *   groups_free(g); world_free(w);                  last thing (MPI_Finalize)
 */
#ifndef DSTRAIN_WORLD_H
#define DSTRAIN_WORLD_H

#include "comm.h"

typedef struct World {
    int rank, size;             /* in the job, from MPI (0, 1 for single) */
    int local_rank, local_size; /* on this node */
    int node, n_nodes;          /* this rank's node index, nodes in the job */
    Comm *comm;                 /* every rank of the job */
    const char *backend;        /* "single" or "mpi" */
} World;

/* What the environment says about the launch (read-only; for world_init and its tests). */
typedef struct Launch {
    int under_mpi;              /* an MPI launcher started this process */
    int size_hint;              /* ranks the launcher announced (-1: not said) */
    const char *launcher;       /* "mpirun", "pmix", "pmi", "srun" (no MPI plugin) or "none" */
} Launch;
Launch world_detect_launch(void);

/* Starts the world (MPI_Init under an MPI launcher). DIE when the launch asks for more ranks
 * than this build or launcher can give. */
World *world_init(int argc, char **argv);
/* Frees the world comm and finalises MPI; the fatal hook is removed. */
void world_free(World *w);
/* An error every rank finds at the same point (a bad layout, a config mismatch): rank 0 prints
 * "dstrain: <message>" once, every rank waits for that, finalises and exits with code.
 * Collective over w->comm; a rank-local error is DIE instead. */
_Noreturn void world_exit_all(World *w, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

typedef struct Groups {
    int pp, dp, ep;             /* layout: world = pp * dp, ep divides dp */
    int stage;                  /* 0..pp-1 */
    int dp_rank;                /* 0..dp-1 inside the stage */
    int ep_rank;                /* dp_rank % ep: position in the EP group */
    int ep_index;               /* dp_rank / ep: which EP group of the stage */
    Comm *dp_comm;              /* the stage's dp ranks, rank dp_rank */
    Comm *ep_comm;              /* this EP group, rank ep_rank */
    Comm *edp_comm;             /* ranks of the stage with this ep_rank (dp/ep of them), rank ep_index */
    Comm *pp_comm;              /* one rank per stage with this dp_rank, rank stage */
} Groups;

/* Collective over the world. world size != pp * dp, ep not dividing dp, or a size < 1 is
 * reported once by rank 0 and every rank exits with status 1 (world_exit_all). */
Groups *groups_create(World *w, int pp, int dp, int ep);
void groups_free(Groups *g);
/* The world rank of (stage, dp_rank) in a layout with dp ranks per stage. */
int groups_world_rank(int dp, int stage, int dp_rank);

#endif
