/* comm/comm_nccl.cu - the `nccl` backend (comm/comm_nccl.h): device memory, one NCCL
 * communicator and one CUDA stream per Comm, bootstrapped over a host comm.
 *
 * Each operation: the comm stream first waits on an event recorded on the compute stream (so
 * it sees every kernel queued before it), the NCCL call is enqueued on the comm stream, then
 * completion goes to the request's event (non-blocking) or to the caller (blocking: compute
 * stream waits on an event; without a compute stream the host waits). Sends and receives
 * posted into a request are kept in the request (its slots, allocated at creation) and issued
 * as one ncclGroupStart/ncclGroupEnd group when the request is waited on or when any other
 * operation is posted on the comm, so posting order is kept and pairwise exchanges cannot
 * deadlock. Not here: choosing this backend (comm/world.c) or device placement.
 * Compiled only where CMake found NCCL (DSTRAIN_HAVE_NCCL).
 */
#include <cuda_runtime.h>
#include <nccl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* comm.h and runtime/common.h are C11: their _Noreturn is C++'s [[noreturn]]. */
#define _Noreturn [[noreturn]]
#include "comm/comm_nccl.h"
extern "C" {
#include "runtime/common.h"
}
#undef _Noreturn

#ifdef DSTRAIN_HAVE_NCCL

static_assert(sizeof(ncclUniqueId) == COMM_NCCL_ID_BYTES, "COMM_NCCL_ID_BYTES is sizeof(ncclUniqueId)");

#define NCCL_CHECK(call) do { ncclResult_t rc_ = (call); \
        if (rc_ != ncclSuccess) DIE("comm nccl: %s failed: %s (%s)", #call, ncclGetErrorString(rc_), \
                                    ncclGetLastError(NULL)); } while (0)
#define CUDA_OK(call) do { cudaError_t e_ = (call); \
        if (e_ != cudaSuccess) DIE("comm nccl: %s failed: %s", #call, cudaGetErrorString(e_)); } while (0)

typedef struct P2p { void *buf; size_t n; CommType t; int peer, send; } P2p;

typedef struct NcclComm {
    ncclComm_t nc;
    cudaStream_t stream;
    cudaEvent_t ev_in, ev_done;
    cudaStream_t compute;       /* NULL: legacy default stream, blocking calls sync the host */
    Comm *host;                 /* the bootstrap comm (owned when made by a split) */
    int owns_host;
    int32_t *scratch;           /* one device int for barrier */
    CommRequest *pending;       /* the request holding sends/receives not yet issued */
} NcclComm;

typedef struct NcclReq {
    cudaEvent_t ev;
    int recorded;               /* ev was recorded since the last wait */
    P2p *p2p;                   /* (max_ops) */
    int n_p2p;
} NcclReq;

static NcclComm *nc_of(const Comm *c) { return (NcclComm *)c->impl; }

static ncclDataType_t nccl_type(CommType t)
{
    switch (t) {
    case COMM_F32: return ncclFloat32;
    case COMM_F64: return ncclFloat64;
    case COMM_I32: return ncclInt32;
    case COMM_I64: return ncclInt64;
    case COMM_BYTE: return ncclUint8;
    }
    BUG("comm type %d", (int)t);
}

static ncclRedOp_t nccl_op(CommOp op) { return op == COMM_MAX ? ncclMax : ncclSum; }

/* The sends/receives of r as one group on the comm stream, then r's event. */
static void flush_p2p(CommRequest *r)
{
    NcclReq *q = (NcclReq *)r->impl;
    NcclComm *n = nc_of(r->comm);
    if (n->pending == r) n->pending = NULL;
    if (!q->n_p2p) return;
    CUDA_OK(cudaEventRecord(n->ev_in, n->compute));
    CUDA_OK(cudaStreamWaitEvent(n->stream, n->ev_in, 0));
    NCCL_CHECK(ncclGroupStart());
    for (int i = 0; i < q->n_p2p; i++) {
        P2p *p = &q->p2p[i];
        if (p->send) NCCL_CHECK(ncclSend(p->buf, p->n, nccl_type(p->t), p->peer, n->nc, n->stream));
        else NCCL_CHECK(ncclRecv(p->buf, p->n, nccl_type(p->t), p->peer, n->nc, n->stream));
    }
    NCCL_CHECK(ncclGroupEnd());
    q->n_p2p = 0;
    CUDA_OK(cudaEventRecord(q->ev, n->stream));
    q->recorded = 1;
}

/* Before an operation on c: earlier posted sends/receives go first, then the comm stream
 * waits for the compute stream; r's slot is taken. */
static void begin(Comm *c, CommRequest *r)
{
    NcclComm *n = nc_of(c);
    if (n->pending) flush_p2p(n->pending);
    if (r) comm_request_take(r, 1);
    CUDA_OK(cudaEventRecord(n->ev_in, n->compute));
    CUDA_OK(cudaStreamWaitEvent(n->stream, n->ev_in, 0));
}

/* After it: r's event, or the blocking completion. */
static void finish(Comm *c, CommRequest *r)
{
    NcclComm *n = nc_of(c);
    if (r) {
        NcclReq *q = (NcclReq *)r->impl;
        CUDA_OK(cudaEventRecord(q->ev, n->stream));
        q->recorded = 1;
    } else if (n->compute) {
        CUDA_OK(cudaEventRecord(n->ev_done, n->stream));
        CUDA_OK(cudaStreamWaitEvent(n->compute, n->ev_done, 0));
    } else {
        CUDA_OK(cudaStreamSynchronize(n->stream));
    }
}

static void nccl_allreduce(Comm *c, void *buf, size_t n, CommType t, CommOp op, CommRequest *r)
{
    begin(c, r);
    if (n) NCCL_CHECK(ncclAllReduce(buf, buf, n, nccl_type(t), nccl_op(op), nc_of(c)->nc, nc_of(c)->stream));
    finish(c, r);
}

static void nccl_reduce_scatter(Comm *c, void *recv, const void *send, size_t n, CommType t, CommOp op,
                                CommRequest *r)
{
    begin(c, r);
    if (n) NCCL_CHECK(ncclReduceScatter(send, recv, n, nccl_type(t), nccl_op(op), nc_of(c)->nc, nc_of(c)->stream));
    finish(c, r);
}

static void nccl_allgather(Comm *c, void *recv, const void *send, size_t n, CommType t, CommRequest *r)
{
    begin(c, r);
    if (n) NCCL_CHECK(ncclAllGather(send, recv, n, nccl_type(t), nc_of(c)->nc, nc_of(c)->stream));
    finish(c, r);
}

/* The ragged pair (comm.h): one group of a reduce (or broadcast) per non-empty block, rooted at
 * the block's rank; the receive of the reduce is the root's recv, in place for the broadcast. */
static void nccl_reduce_scatter_v(Comm *c, void *recv, const void *send, size_t n, size_t block, CommType t,
                                  CommOp op, CommRequest *r)
{
    NcclComm *nc = nc_of(c);
    const size_t es = comm_type_size(t);
    begin(c, r);
    NCCL_CHECK(ncclGroupStart());
    for (int i = 0; i < c->size; i++) {
        size_t cnt = comm_block_count(n, block, i);
        if (cnt) NCCL_CHECK(ncclReduce((const char *)send + (size_t)i * block * es, recv, cnt, nccl_type(t),
                                       nccl_op(op), i, nc->nc, nc->stream));
    }
    NCCL_CHECK(ncclGroupEnd());
    finish(c, r);
}

static void nccl_allgather_v(Comm *c, void *buf, size_t n, size_t block, CommType t, CommRequest *r)
{
    NcclComm *nc = nc_of(c);
    const size_t es = comm_type_size(t);
    begin(c, r);
    NCCL_CHECK(ncclGroupStart());
    for (int i = 0; i < c->size; i++) {
        size_t cnt = comm_block_count(n, block, i);
        char *p = (char *)buf + (size_t)i * block * es;
        if (cnt) NCCL_CHECK(ncclBroadcast(p, p, cnt, nccl_type(t), i, nc->nc, nc->stream));
    }
    NCCL_CHECK(ncclGroupEnd());
    finish(c, r);
}

static void nccl_broadcast(Comm *c, void *buf, size_t n, CommType t, int root, CommRequest *r)
{
    begin(c, r);
    if (n) NCCL_CHECK(ncclBroadcast(buf, buf, n, nccl_type(t), root, nc_of(c)->nc, nc_of(c)->stream));
    finish(c, r);
}

/* One group: a send and a receive per peer with a non-zero count; the self block is a copy. */
static void nccl_alltoallv(Comm *c, void *recv, const size_t *recv_counts, const size_t *recv_offsets,
                           const void *send, const size_t *send_counts, const size_t *send_offsets, CommType t,
                           CommRequest *r)
{
    NcclComm *n = nc_of(c);
    const size_t es = comm_type_size(t);
    const ncclDataType_t dt = nccl_type(t);
    begin(c, r);
    if (recv_counts[c->rank] != send_counts[c->rank])
        DIE("comm nccl: alltoallv sends %zu elements to itself but expects %zu", send_counts[c->rank],
            recv_counts[c->rank]);
    if (send_counts[c->rank])
        CUDA_OK(cudaMemcpyAsync((char *)recv + recv_offsets[c->rank] * es, (const char *)send + send_offsets[c->rank] * es,
                                send_counts[c->rank] * es, cudaMemcpyDeviceToDevice, n->stream));
    NCCL_CHECK(ncclGroupStart());
    for (int p = 0; p < c->size; p++) {
        if (p == c->rank) continue;
        if (send_counts[p])
            NCCL_CHECK(ncclSend((const char *)send + send_offsets[p] * es, send_counts[p], dt, p, n->nc, n->stream));
        if (recv_counts[p])
            NCCL_CHECK(ncclRecv((char *)recv + recv_offsets[p] * es, recv_counts[p], dt, p, n->nc, n->stream));
    }
    NCCL_CHECK(ncclGroupEnd());
    finish(c, r);
}

/* A send or receive: kept in r until its group is issued; blocking: a group of one. */
static void post_p2p(Comm *c, void *buf, size_t n, CommType t, int peer, int send, CommRequest *r)
{
    NcclComm *nc = nc_of(c);
    if (!r) {
        begin(c, NULL);
        NCCL_CHECK(ncclGroupStart());
        if (send) NCCL_CHECK(ncclSend(buf, n, nccl_type(t), peer, nc->nc, nc->stream));
        else NCCL_CHECK(ncclRecv(buf, n, nccl_type(t), peer, nc->nc, nc->stream));
        NCCL_CHECK(ncclGroupEnd());
        finish(c, NULL);
        return;
    }
    if (nc->pending && nc->pending != r) flush_p2p(nc->pending);
    NcclReq *q = (NcclReq *)r->impl;
    comm_request_take(r, 1);
    q->p2p[q->n_p2p++] = P2p{ buf, n, t, peer, send };
    nc->pending = r;
}

static void nccl_send(Comm *c, const void *buf, size_t n, CommType t, int peer, int tag, CommRequest *r)
{
    post_p2p(c, (void *)buf, n, t, peer, 1, r);
}

static void nccl_recv(Comm *c, void *buf, size_t n, CommType t, int peer, int tag, CommRequest *r)
{
    post_p2p(c, buf, n, t, peer, 0, r);
}

static void nccl_barrier(Comm *c, CommRequest *r)
{
    begin(c, r);
    NCCL_CHECK(ncclAllReduce(nc_of(c)->scratch, nc_of(c)->scratch, 1, ncclInt32, ncclSum, nc_of(c)->nc,
                             nc_of(c)->stream));
    finish(c, r);
}

static void nccl_copy(Comm *c, void *dst, const void *src, size_t bytes, CommRequest *r)
{
    begin(c, r);
    if (bytes) CUDA_OK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, nc_of(c)->stream));
    finish(c, r);
}

static void nccl_wait(CommRequest *r)
{
    NcclReq *q = (NcclReq *)r->impl;
    NcclComm *n = nc_of(r->comm);
    if (q->n_p2p) flush_p2p(r);
    if (!q->recorded) return;
    if (n->compute) CUDA_OK(cudaStreamWaitEvent(n->compute, q->ev, 0));
    else CUDA_OK(cudaEventSynchronize(q->ev));
    q->recorded = 0;
}

static void nccl_request_init(CommRequest *r)
{
    NcclReq *q = (NcclReq *)xcalloc(1, sizeof *q);
    CUDA_OK(cudaEventCreateWithFlags(&q->ev, cudaEventDisableTiming));
    q->p2p = (P2p *)xcalloc((size_t)r->max_ops, sizeof(P2p));
    r->impl = q;
}

static void nccl_request_free(CommRequest *r)
{
    NcclReq *q = (NcclReq *)r->impl;
    NcclComm *n = nc_of(r->comm);
    if (n->pending == r) n->pending = NULL;
    CUDA_OK(cudaEventDestroy(q->ev));
    free(q->p2p);
    free(q);
}

static Comm *wrap(ncclComm_t nc, Comm *host, int owns_host);

static Comm *nccl_split(Comm *c, int color, int key)
{
    NcclComm *n = nc_of(c);
    if (n->pending) flush_p2p(n->pending);
    Comm *host = comm_split(n->host, color, key);
    ncclComm_t sub;
    NCCL_CHECK(ncclCommSplit(n->nc, color, key, &sub, NULL));
    return wrap(sub, host, 1);
}

static void nccl_destroy(Comm *c)
{
    NcclComm *n = nc_of(c);
    CUDA_OK(cudaStreamSynchronize(n->stream));
    NCCL_CHECK(ncclCommDestroy(n->nc));
    CUDA_OK(cudaEventDestroy(n->ev_in));
    CUDA_OK(cudaEventDestroy(n->ev_done));
    CUDA_OK(cudaStreamDestroy(n->stream));
    CUDA_OK(cudaFree(n->scratch));
    if (n->owns_host) comm_destroy(n->host);
    free(n);
    free(c);
}

static const CommBackend NCCL_BACKEND = {
    "nccl", nccl_allreduce, nccl_reduce_scatter, nccl_allgather, nccl_alltoallv, nccl_broadcast, nccl_send,
    nccl_recv, nccl_barrier, nccl_copy, nccl_wait, nccl_request_init, nccl_request_free, nccl_split, nccl_destroy,
    nccl_reduce_scatter_v, nccl_allgather_v,
};

static Comm *wrap(ncclComm_t nc, Comm *host, int owns_host)
{
    NcclComm *n = (NcclComm *)xcalloc(1, sizeof *n);
    n->nc = nc;
    n->host = host;
    n->owns_host = owns_host;
    CUDA_OK(cudaStreamCreateWithFlags(&n->stream, cudaStreamNonBlocking));
    CUDA_OK(cudaEventCreateWithFlags(&n->ev_in, cudaEventDisableTiming));
    CUDA_OK(cudaEventCreateWithFlags(&n->ev_done, cudaEventDisableTiming));
    CUDA_OK(cudaMalloc((void **)&n->scratch, sizeof(int32_t)));
    CUDA_OK(cudaMemset(n->scratch, 0, sizeof(int32_t)));
    Comm *c = (Comm *)xcalloc(1, sizeof *c);
    c->be = &NCCL_BACKEND;
    NCCL_CHECK(ncclCommUserRank(nc, &c->rank));
    NCCL_CHECK(ncclCommCount(nc, &c->size));
    c->impl = n;
    return c;
}

extern "C" int comm_nccl_unique_id(Comm *host, void *id, char *why, size_t why_len)
{
    unsigned char buf[sizeof(int32_t) + sizeof(ncclUniqueId)];
    memset(buf, 0, sizeof buf);
    if (host->rank == 0) {
        ncclUniqueId u;
        int32_t rc = (int32_t)ncclGetUniqueId(&u);
        memcpy(buf, &rc, sizeof rc);
        memcpy(buf + sizeof rc, &u, sizeof u);
    }
    comm_broadcast(host, buf, sizeof buf, COMM_BYTE, 0);
    int32_t rc;
    memcpy(&rc, buf, sizeof rc);
    if (rc != (int32_t)ncclSuccess) {
        snprintf(why, why_len, "ncclGetUniqueId failed on rank 0: %s", ncclGetErrorString((ncclResult_t)rc));
        return -1;
    }
    memcpy(id, buf + sizeof rc, sizeof(ncclUniqueId));
    return 0;
}

extern "C" Comm *comm_nccl_create(Comm *host)
{
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0)
        DIE("comm nccl: no CUDA GPU (%s); the nccl backend needs one GPU per rank",
            e != cudaSuccess ? cudaGetErrorString(e) : "none visible");
    ncclUniqueId id;
    char why[256];
    if (comm_nccl_unique_id(host, &id, why, sizeof why) != 0) DIE("comm nccl: %s", why);
    ncclComm_t nc;
    NCCL_CHECK(ncclCommInitRank(&nc, host->size, id, host->rank));
    return wrap(nc, host, 0);
}

extern "C" void *comm_nccl_stream(Comm *c) { return nc_of(c)->stream; }

extern "C" void comm_nccl_set_compute_stream(Comm *c, void *stream)
{
    NcclComm *n = nc_of(c);
    if (n->pending) flush_p2p(n->pending);
    n->compute = (cudaStream_t)stream;
}

#endif
