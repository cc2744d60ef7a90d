/* comm/comm.h - communicators and the collectives the trainer needs, behind one small table of
 * function pointers per backend (the way kernels/ops.h puts the ops behind a table).
 *
 * A Comm is an ordered group of ranks (rank 0..size-1 inside it). Backends:
 *   single   one rank, no MPI needed: every collective is the identity (a local copy), and a
 *            send to oneself is matched by a receive from oneself (comm_single.c)
 *   mpi      host memory, MPI-3 (blocking and MPI_I* non-blocking calls) (comm_mpi.c)
 *   nccl     device memory on a CUDA stream - issue 6, see "An NCCL backend" below
 * This module is not: the world and its groups (comm/world.h), nor MoE dispatch
 * (comm/dispatch.h), which are written once on top of this table for every backend.
 *
 * Conventions (every entry):
 *   - Counts and offsets are in elements of the CommType; buffers are in the backend's memory
 *     space (host for single and mpi, device for nccl).
 *   - Every operation is posted either into a CommRequest (non-blocking: the buffers must not
 *     be touched until comm_wait) or, through the functions without the `i`, completes before
 *     it returns (blocking).
 *   - Every rank of a comm calls its collectives in the same order with matching counts (the
 *     MPI rule); point-to-point messages between two ranks with one tag arrive in order.
 *   - Reductions: COMM_SUM and COMM_MAX on F32, F64, I32, I64. The summation order is the
 *     backend's (MPI picks an algorithm by size), so FP sums across ranks equal the serial sum
 *     only to rounding; callers that need bitwise results reduce integers or gather and sum in
 *     a fixed order.
 *   - Large counts: allreduce and broadcast split counts above COMM_CHUNK elements into several
 *     calls (one request slot each); the other entries DIE above INT_MAX elements per rank.
 *
 * A CommRequest is a reusable completion group: created once, at plan time, with the number of
 * operations it may hold; operations are posted into it (each takes one slot, or one per chunk);
 * comm_wait completes them all and empties it for the next step. Nothing is allocated when
 * posting or waiting.
 *
 * Calling sequence:
 *   Comm *c = world->comm (or a group's comm, comm/world.h);
 *   comm_allreduce(c, grads, n, COMM_F32, COMM_SUM);                 blocking
 *   CommRequest *r = comm_request_create(c, 4);                       at plan time
 *   comm_iallreduce(c, grads, n, COMM_F32, COMM_SUM, r); ...compute...; comm_wait(r);
 *   comm_ireduce_scatter_v(c, slice, grads, n, block, COMM_F32, COMM_SUM, r); ...; comm_wait(r);
 *   comm_request_free(r);
 *
 * An NCCL backend (issue 6) slots in as a third CommBackend without touching callers:
 *   - Comm.impl holds the ncclComm_t and the cudaStream_t the comm runs on; the communicator is
 *     bootstrapped over the mpi comm of the same group (rank 0 makes the ncclUniqueId and
 *     broadcasts it with comm_broadcast), so MPI stays the launcher and the host control plane.
 *   - allreduce/reduce_scatter/allgather/broadcast map to ncclAllReduce/ncclReduceScatter/
 *     ncclAllGather/ncclBroadcast; alltoallv and every batch of send/recv posted into one
 *     request go between ncclGroupStart/ncclGroupEnd as ncclSend/ncclRecv; copy is
 *     cudaMemcpyAsync on the comm stream; barrier is an allreduce of one int.
 *   - "Blocking" means ordered on the stream: the entry returns once the work is enqueued and
 *     the compute stream waits on an event; a request holds the cudaEvent recorded after its
 *     last operation and comm_wait makes the compute stream wait on it (host sync only where the
 *     host needs the data, e.g. counts for the expert GEMM loop).
 *   - Adds CommType BF16 for gradients and weights; COMM_CHUNK does not apply (size_t counts).
 */
#ifndef DSTRAIN_COMM_H
#define DSTRAIN_COMM_H

#include <stddef.h>
#include <stdint.h>

typedef enum { COMM_F32 = 0, COMM_F64, COMM_I32, COMM_I64, COMM_BYTE } CommType;
typedef enum { COMM_SUM = 0, COMM_MAX } CommOp;

/* allreduce and broadcast post counts above this many elements as several calls */
#define COMM_CHUNK ((size_t)1 << 30)

typedef struct Comm Comm;
typedef struct CommRequest CommRequest;

typedef struct CommBackend {
    const char *name;
    /* buf (n) <- op over ranks of buf (n), in place */
    void (*allreduce)(Comm *c, void *buf, size_t n, CommType t, CommOp op, CommRequest *r);
    /* recv (n) <- block `rank` of op over ranks of send (size*n); send and recv disjoint */
    void (*reduce_scatter)(Comm *c, void *recv, const void *send, size_t n, CommType t, CommOp op,
                           CommRequest *r);
    /* recv (size*n): block i <- send (n) of rank i; send may be recv + rank*n (in place) */
    void (*allgather)(Comm *c, void *recv, const void *send, size_t n, CommType t, CommRequest *r);
    /* recv[recv_offsets[i] ..+recv_counts[i]) <- the block rank i sends to this rank, which is
     * its send[send_offsets[me] ..+send_counts[me]); counts and offsets (size) each */
    void (*alltoallv)(Comm *c, void *recv, const size_t *recv_counts, const size_t *recv_offsets,
                      const void *send, const size_t *send_counts, const size_t *send_offsets, CommType t,
                      CommRequest *r);
    /* buf (n) <- buf of rank root */
    void (*broadcast)(Comm *c, void *buf, size_t n, CommType t, int root, CommRequest *r);
    void (*send)(Comm *c, const void *buf, size_t n, CommType t, int peer, int tag, CommRequest *r);
    void (*recv)(Comm *c, void *buf, size_t n, CommType t, int peer, int tag, CommRequest *r);
    void (*barrier)(Comm *c, CommRequest *r);
    /* dst <- src (bytes) inside this rank's memory space (the self part of an exchange) */
    void (*copy)(Comm *c, void *dst, const void *src, size_t bytes, CommRequest *r);
    void (*wait)(CommRequest *r);
    void (*request_init)(CommRequest *r);       /* backend part of a new request */
    void (*request_free)(CommRequest *r);
    /* MPI_Comm_split: ranks with one color form a comm, ordered by key; collective */
    Comm *(*split)(Comm *c, int color, int key);
    void (*destroy)(Comm *c);
    /* The ZeRO-1 cut of n elements into blocks of `block` (rank i: [i*block, (i+1)*block) cut
     * to n, the last ones shorter or empty), so buffers need no padding to size*block:
     * reduce_scatter_v: recv (rank's block) <- op over ranks of send's block `rank`; send (n)
     * allgather_v: buf (n), in place: block i <- block i of rank i
     * (last in the table: a backend without them leaves them NULL and comm.c says so) */
    void (*reduce_scatter_v)(Comm *c, void *recv, const void *send, size_t n, size_t block, CommType t,
                             CommOp op, CommRequest *r);
    void (*allgather_v)(Comm *c, void *buf, size_t n, size_t block, CommType t, CommRequest *r);
} CommBackend;

struct Comm {
    const CommBackend *be;
    int rank, size;
    void *impl;                 /* backend state */
};

struct CommRequest {
    Comm *comm;
    int max_ops;                /* slots, fixed at creation */
    int n_ops;                  /* slots posted since the last wait */
    int pending;                /* single backend: self messages not yet matched */
    void *impl;                 /* backend state (MPI_Request array, ...) */
};

/* The single backend: a comm of one rank. */
Comm *comm_single_create(void);
/* The mpi backend, for comm/world.c; defined only in a build with MPI (DSTRAIN_HAVE_MPI).
 * init: MPI_Init_thread (funneled), errors returned to MPI_CHECK, the world comm.
 * locality (collective): rank and size on this node (MPI_Comm_split_type shared; with
 * ranks_per_node > 0, consecutive blocks of that many ranks stand for nodes instead), node
 * index and node count. abort: MPI_Abort of the whole job. */
Comm *comm_mpi_init(void);
void comm_mpi_locality(Comm *world, int ranks_per_node, int *local_rank, int *local_size, int *node,
                       int *n_nodes);
void comm_mpi_finalize(void);
_Noreturn void comm_mpi_abort(int code);
void comm_destroy(Comm *c);     /* NULL is fine */
size_t comm_type_size(CommType t);

/* A request for up to max_ops operations on comm c (allocated here, once). */
CommRequest *comm_request_create(Comm *c, int max_ops);
void comm_request_free(CommRequest *r);
/* Completes every operation posted into r since the last wait; r is empty afterwards. */
void comm_wait(CommRequest *r);

/* Split c into groups of equal color, ordered by key (collective over c). */
Comm *comm_split(Comm *c, int color, int key);

/* Blocking collectives (semantics: the table above). */
void comm_allreduce(Comm *c, void *buf, size_t n, CommType t, CommOp op);
void comm_reduce_scatter(Comm *c, void *recv, const void *send, size_t n, CommType t, CommOp op);
void comm_allgather(Comm *c, void *recv, const void *send, size_t n, CommType t);
void comm_alltoallv(Comm *c, void *recv, const size_t *recv_counts, const size_t *recv_offsets, const void *send,
                    const size_t *send_counts, const size_t *send_offsets, CommType t);
void comm_broadcast(Comm *c, void *buf, size_t n, CommType t, int root);
void comm_send(Comm *c, const void *buf, size_t n, CommType t, int peer, int tag);
void comm_recv(Comm *c, void *buf, size_t n, CommType t, int peer, int tag);
void comm_barrier(Comm *c);
/* The ragged ZeRO-1 pair (CommBackend reduce_scatter_v, allgather_v): blocks of `block`
 * elements of an unpadded buffer of n, the last ones shorter or empty. */
void comm_reduce_scatter_v(Comm *c, void *recv, const void *send, size_t n, size_t block, CommType t, CommOp op);
void comm_allgather_v(Comm *c, void *buf, size_t n, size_t block, CommType t);

/* Non-blocking: the same, posted into r (which must belong to c). */
void comm_iallreduce(Comm *c, void *buf, size_t n, CommType t, CommOp op, CommRequest *r);
void comm_ireduce_scatter(Comm *c, void *recv, const void *send, size_t n, CommType t, CommOp op,
                          CommRequest *r);
void comm_iallgather(Comm *c, void *recv, const void *send, size_t n, CommType t, CommRequest *r);
void comm_ialltoallv(Comm *c, void *recv, const size_t *recv_counts, const size_t *recv_offsets, const void *send,
                     const size_t *send_counts, const size_t *send_offsets, CommType t, CommRequest *r);
void comm_ibroadcast(Comm *c, void *buf, size_t n, CommType t, int root, CommRequest *r);
void comm_isend(Comm *c, const void *buf, size_t n, CommType t, int peer, int tag, CommRequest *r);
void comm_irecv(Comm *c, void *buf, size_t n, CommType t, int peer, int tag, CommRequest *r);
void comm_ibarrier(Comm *c, CommRequest *r);
void comm_icopy(Comm *c, void *dst, const void *src, size_t bytes, CommRequest *r);
void comm_ireduce_scatter_v(Comm *c, void *recv, const void *send, size_t n, size_t block, CommType t, CommOp op,
                            CommRequest *r);
void comm_iallgather_v(Comm *c, void *buf, size_t n, size_t block, CommType t, CommRequest *r);
/* Elements of block i of the cut of n into blocks of `block` (comm_reduce_scatter_v). */
size_t comm_block_count(size_t n, size_t block, int i);

/* For backends: take `slots` slots of r for one operation (DIE when r is full); the number of
 * calls (slots) an allreduce or broadcast of n elements takes. */
int comm_request_take(CommRequest *r, int slots);
int comm_chunks(size_t n);

#endif
