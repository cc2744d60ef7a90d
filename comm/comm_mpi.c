/* comm/comm_mpi.c - the `mpi` backend (comm.h): host memory, MPI-3.
 *
 * Blocking entries call the blocking MPI collective (OpenMPI's tuned algorithms); non-blocking
 * ones the MPI_I* call, one MPI_Request per request slot. MPI's int counts: allreduce and
 * broadcast post counts above COMM_CHUNK as several calls; the other entries DIE above INT_MAX.
 * Errors are returned by MPI (MPI_ERRORS_RETURN on the world comm, inherited by every split) and
 * reported through MPI_CHECK, naming the call, file:line and (through the fatal hook that
 * comm/world.c installs) the rank, then the job is aborted.
 *
 * Not here: the choice of backend and the world's groups (comm/world.c). Compiled to nothing in
 * a build without MPI.
 */
#include "comm.h"

#ifdef DSTRAIN_HAVE_MPI

#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/common.h"

#define MPI_CHECK(call) do { int rc_ = (call); \
        if (rc_ != MPI_SUCCESS) mpi_fail(rc_, #call, __FILE__, __LINE__); } while (0)

static _Noreturn void mpi_fail(int rc, const char *call, const char *file, int line)
{
    char s[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, s, &len) != MPI_SUCCESS) snprintf(s, sizeof s, "error %d", rc);
    fatal(1, file, line, "mpi: %s failed: %s", call, s);
}

typedef struct MpiComm {
    MPI_Comm comm;
    int owned;                  /* made by a split: freed with the Comm */
    int *a2a;                   /* (4, size) int counts/offsets of a blocking alltoallv */
} MpiComm;

typedef struct MpiReq {
    MPI_Request *reqs;          /* (max_ops) */
    int *a2a;                   /* (max_ops, 4, size): alltoallv arrays live until the wait */
} MpiReq;

static MPI_Comm mcomm(const Comm *c) { return ((const MpiComm *)c->impl)->comm; }

static MPI_Datatype mpi_type(CommType t)
{
    switch (t) {
    case COMM_F32: return MPI_FLOAT;
    case COMM_F64: return MPI_DOUBLE;
    case COMM_I32: return MPI_INT32_T;
    case COMM_I64: return MPI_INT64_T;
    case COMM_BYTE: return MPI_BYTE;
    }
    BUG("comm type %d", (int)t);
}

static MPI_Op mpi_op(CommOp op) { return op == COMM_MAX ? MPI_MAX : MPI_SUM; }

static int to_int(size_t n, const char *what)
{
    if (n > INT_MAX)
        DIE("comm: %s of %zu elements exceeds MPI's int count limit; split the buffer or use more ranks", what, n);
    return (int)n;
}

/* The request slot an operation posts into (NULL: blocking). */
static MPI_Request *slot_of(CommRequest *r, int slots)
{
    if (!r) return NULL;
    MpiReq *q = r->impl;
    return &q->reqs[comm_request_take(r, slots)];
}

static void mpi_allreduce(Comm *c, void *buf, size_t n, CommType t, CommOp op, CommRequest *r)
{
    const size_t es = comm_type_size(t);
    const int chunks = comm_chunks(n);
    MPI_Request *rq = slot_of(r, chunks);
    for (int i = 0; i < chunks; i++) {
        size_t at = (size_t)i * COMM_CHUNK, len = n - at < COMM_CHUNK ? n - at : COMM_CHUNK;
        void *p = (char *)buf + at * es;
        if (rq) MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, p, (int)len, mpi_type(t), mpi_op(op), mcomm(c), &rq[i]));
        else MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, p, (int)len, mpi_type(t), mpi_op(op), mcomm(c)));
    }
}

static void mpi_broadcast(Comm *c, void *buf, size_t n, CommType t, int root, CommRequest *r)
{
    const size_t es = comm_type_size(t);
    const int chunks = comm_chunks(n);
    MPI_Request *rq = slot_of(r, chunks);
    for (int i = 0; i < chunks; i++) {
        size_t at = (size_t)i * COMM_CHUNK, len = n - at < COMM_CHUNK ? n - at : COMM_CHUNK;
        void *p = (char *)buf + at * es;
        if (rq) MPI_CHECK(MPI_Ibcast(p, (int)len, mpi_type(t), root, mcomm(c), &rq[i]));
        else MPI_CHECK(MPI_Bcast(p, (int)len, mpi_type(t), root, mcomm(c)));
    }
}

static void mpi_reduce_scatter(Comm *c, void *recv, const void *send, size_t n, CommType t, CommOp op,
                               CommRequest *r)
{
    int cnt = to_int(n, "reduce-scatter");
    MPI_Request *rq = slot_of(r, 1);
    if (rq) MPI_CHECK(MPI_Ireduce_scatter_block(send, recv, cnt, mpi_type(t), mpi_op(op), mcomm(c), rq));
    else MPI_CHECK(MPI_Reduce_scatter_block(send, recv, cnt, mpi_type(t), mpi_op(op), mcomm(c)));
}

/* The int counts (P) and displacements (P) of the cut of n into blocks (comm.h), in the
 * blocking scratch or the request slot's, which live until the wait; *rq: the slot (NULL:
 * blocking). */
static int *cut_counts(Comm *c, size_t n, size_t block, CommRequest *r, MPI_Request **rq)
{
    const int P = c->size;
    int *a = ((MpiComm *)c->impl)->a2a;
    *rq = NULL;
    if (r) {
        MpiReq *q = r->impl;
        int s = comm_request_take(r, 1);
        *rq = &q->reqs[s];
        a = q->a2a + (size_t)s * 4 * P;
    }
    for (int i = 0; i < P; i++) {
        a[i] = to_int(comm_block_count(n, block, i), "ragged block");
        a[P + i] = to_int(n < (size_t)i * block ? n : (size_t)i * block, "ragged block offset");
    }
    return a;
}

static void mpi_reduce_scatter_v(Comm *c, void *recv, const void *send, size_t n, size_t block, CommType t,
                                 CommOp op, CommRequest *r)
{
    MPI_Request *rq;
    int *a = cut_counts(c, n, block, r, &rq);
    if (rq) MPI_CHECK(MPI_Ireduce_scatter(send, recv, a, mpi_type(t), mpi_op(op), mcomm(c), rq));
    else MPI_CHECK(MPI_Reduce_scatter(send, recv, a, mpi_type(t), mpi_op(op), mcomm(c)));
}

static void mpi_allgather_v(Comm *c, void *buf, size_t n, size_t block, CommType t, CommRequest *r)
{
    MPI_Request *rq;
    int *a = cut_counts(c, n, block, r, &rq);
    const int P = c->size;
    MPI_Datatype dt = mpi_type(t);
    if (rq) MPI_CHECK(MPI_Iallgatherv(MPI_IN_PLACE, 0, dt, buf, a, a + P, dt, mcomm(c), rq));
    else MPI_CHECK(MPI_Allgatherv(MPI_IN_PLACE, 0, dt, buf, a, a + P, dt, mcomm(c)));
}

static void mpi_allgather(Comm *c, void *recv, const void *send, size_t n, CommType t, CommRequest *r)
{
    int cnt = to_int(n, "all-gather");
    const void *src = send == (char *)recv + (size_t)c->rank * n * comm_type_size(t) ? MPI_IN_PLACE : send;
    MPI_Request *rq = slot_of(r, 1);
    if (rq) MPI_CHECK(MPI_Iallgather(src, cnt, mpi_type(t), recv, cnt, mpi_type(t), mcomm(c), rq));
    else MPI_CHECK(MPI_Allgather(src, cnt, mpi_type(t), recv, cnt, mpi_type(t), mcomm(c)));
}

static void mpi_alltoallv(Comm *c, void *recv, const size_t *recv_counts, const size_t *recv_offsets,
                          const void *send, const size_t *send_counts, const size_t *send_offsets, CommType t,
                          CommRequest *r)
{
    const int P = c->size;
    MPI_Request *rq = NULL;
    int *a = ((MpiComm *)c->impl)->a2a;    /* (4, P): send counts, send offsets, recv counts, recv offsets */
    if (r) {
        MpiReq *q = r->impl;
        int s = comm_request_take(r, 1);
        rq = &q->reqs[s];
        a = q->a2a + (size_t)s * 4 * P;
    }
    for (int i = 0; i < P; i++) {
        a[i] = to_int(send_counts[i], "alltoallv send count");
        a[P + i] = to_int(send_offsets[i], "alltoallv send offset");
        a[2 * P + i] = to_int(recv_counts[i], "alltoallv receive count");
        a[3 * P + i] = to_int(recv_offsets[i], "alltoallv receive offset");
    }
    MPI_Datatype dt = mpi_type(t);
    if (rq) MPI_CHECK(MPI_Ialltoallv(send, a, a + P, dt, recv, a + 2 * P, a + 3 * P, dt, mcomm(c), rq));
    else MPI_CHECK(MPI_Alltoallv(send, a, a + P, dt, recv, a + 2 * P, a + 3 * P, dt, mcomm(c)));
}

static void mpi_send(Comm *c, const void *buf, size_t n, CommType t, int peer, int tag, CommRequest *r)
{
    int cnt = to_int(n, "send");
    MPI_Request *rq = slot_of(r, 1);
    if (rq) MPI_CHECK(MPI_Isend(buf, cnt, mpi_type(t), peer, tag, mcomm(c), rq));
    else MPI_CHECK(MPI_Send(buf, cnt, mpi_type(t), peer, tag, mcomm(c)));
}

static void mpi_recv(Comm *c, void *buf, size_t n, CommType t, int peer, int tag, CommRequest *r)
{
    int cnt = to_int(n, "receive");
    MPI_Request *rq = slot_of(r, 1);
    if (rq) MPI_CHECK(MPI_Irecv(buf, cnt, mpi_type(t), peer, tag, mcomm(c), rq));
    else MPI_CHECK(MPI_Recv(buf, cnt, mpi_type(t), peer, tag, mcomm(c), MPI_STATUS_IGNORE));
}

static void mpi_barrier(Comm *c, CommRequest *r)
{
    MPI_Request *rq = slot_of(r, 1);
    if (rq) MPI_CHECK(MPI_Ibarrier(mcomm(c), rq));
    else MPI_CHECK(MPI_Barrier(mcomm(c)));
}

static void mpi_copy(Comm *c, void *dst, const void *src, size_t bytes, CommRequest *r)
{
    MPI_Request *rq = slot_of(r, 1);
    if (rq) *rq = MPI_REQUEST_NULL;
    if (bytes) memmove(dst, src, bytes);
}

static void mpi_wait(CommRequest *r)
{
    MpiReq *q = r->impl;
    if (r->n_ops > 0) MPI_CHECK(MPI_Waitall(r->n_ops, q->reqs, MPI_STATUSES_IGNORE));
}

static void mpi_request_init(CommRequest *r)
{
    MpiReq *q = xcalloc(1, sizeof *q);
    q->reqs = xcalloc((size_t)r->max_ops, sizeof(MPI_Request));
    q->a2a = xcalloc((size_t)r->max_ops * 4 * r->comm->size, sizeof(int));
    r->impl = q;
}

static void mpi_request_free(CommRequest *r)
{
    MpiReq *q = r->impl;
    free(q->reqs);
    free(q->a2a);
    free(q);
}

static Comm *wrap(MPI_Comm mc, int owned);

static Comm *mpi_split(Comm *c, int color, int key)
{
    MPI_Comm out;
    MPI_CHECK(MPI_Comm_split(mcomm(c), color, key, &out));
    return wrap(out, 1);
}

static void mpi_destroy(Comm *c)
{
    MpiComm *m = c->impl;
    if (m->owned) MPI_CHECK(MPI_Comm_free(&m->comm));
    free(m->a2a);
    free(m);
    free(c);
}

static const CommBackend MPI_BACKEND = {
    .name = "mpi",
    .allreduce = mpi_allreduce,
    .reduce_scatter = mpi_reduce_scatter,
    .allgather = mpi_allgather,
    .alltoallv = mpi_alltoallv,
    .broadcast = mpi_broadcast,
    .send = mpi_send,
    .recv = mpi_recv,
    .barrier = mpi_barrier,
    .copy = mpi_copy,
    .wait = mpi_wait,
    .request_init = mpi_request_init,
    .request_free = mpi_request_free,
    .split = mpi_split,
    .destroy = mpi_destroy,
    .reduce_scatter_v = mpi_reduce_scatter_v,
    .allgather_v = mpi_allgather_v,
};

static Comm *wrap(MPI_Comm mc, int owned)
{
    Comm *c = xcalloc(1, sizeof *c);
    MpiComm *m = xcalloc(1, sizeof *m);
    m->comm = mc;
    m->owned = owned;
    c->be = &MPI_BACKEND;
    c->impl = m;
    MPI_CHECK(MPI_Comm_rank(mc, &c->rank));
    MPI_CHECK(MPI_Comm_size(mc, &c->size));
    m->a2a = xcalloc((size_t)4 * c->size, sizeof(int));
    return c;
}

Comm *comm_mpi_init(void)
{
    int inited = 0, provided = 0;
    MPI_Initialized(&inited);
    /* funneled: only the main thread calls MPI (OpenMP workers and the checkpoint writer never do) */
    if (!inited && MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        DIE("mpi: MPI_Init_thread failed (is this process started by mpirun or srun --mpi=pmix?)");
    MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    return wrap(MPI_COMM_WORLD, 0);
}

void comm_mpi_locality(Comm *world, int ranks_per_node, int *local_rank, int *local_size, int *node,
                       int *n_nodes)
{
    MPI_Comm w = mcomm(world), local, leaders;
    if (ranks_per_node > 0)
        MPI_CHECK(MPI_Comm_split(w, world->rank / ranks_per_node, world->rank, &local));
    else
        MPI_CHECK(MPI_Comm_split_type(w, MPI_COMM_TYPE_SHARED, world->rank, MPI_INFO_NULL, &local));
    MPI_CHECK(MPI_Comm_rank(local, local_rank));
    MPI_CHECK(MPI_Comm_size(local, local_size));
    /* node index = rank of the node's first rank among all nodes' first ranks */
    int leader = *local_rank == 0, pair[2] = { 0, 0 };
    MPI_CHECK(MPI_Comm_split(w, leader ? 0 : MPI_UNDEFINED, world->rank, &leaders));
    if (leader) {
        MPI_CHECK(MPI_Comm_rank(leaders, &pair[0]));
        MPI_CHECK(MPI_Comm_size(leaders, &pair[1]));
        MPI_CHECK(MPI_Comm_free(&leaders));
    }
    MPI_CHECK(MPI_Bcast(pair, 2, MPI_INT, 0, local));
    MPI_CHECK(MPI_Comm_free(&local));
    *node = pair[0];
    *n_nodes = pair[1];
}

void comm_mpi_finalize(void)
{
    int done = 0;
    MPI_Finalized(&done);
    if (!done) MPI_Finalize();
}

_Noreturn void comm_mpi_abort(int code)
{
    MPI_Abort(MPI_COMM_WORLD, code);
    exit(code);
}

#endif
