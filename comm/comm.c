/* comm/comm.c - the public collectives: argument checks shared by every backend, then one call
 * through the comm's backend table (comm.h). Requests are created here and filled by the
 * backends. Not here: any backend's transport (comm_single.c, comm_mpi.c).
 */
#include "comm.h"

#include <stdlib.h>

#include "../runtime/common.h"
#include "watchdog.h"

size_t comm_type_size(CommType t)
{
    switch (t) {
    case COMM_F32: case COMM_I32: return 4;
    case COMM_F64: case COMM_I64: return 8;
    case COMM_BYTE: return 1;
    }
    BUG("comm type %d", (int)t);
}

void comm_destroy(Comm *c)
{
    if (c) c->be->destroy(c);
}

CommRequest *comm_request_create(Comm *c, int max_ops)
{
    CHECK(max_ops >= 1);
    CommRequest *r = xcalloc(1, sizeof *r);
    r->comm = c;
    r->max_ops = max_ops;
    c->be->request_init(r);
    return r;
}

void comm_request_free(CommRequest *r)
{
    if (!r) return;
    CHECK(r->n_ops == 0);
    r->comm->be->request_free(r);
    free(r);
}

int comm_request_take(CommRequest *r, int slots)
{
    if (r->n_ops + slots > r->max_ops)
        DIE("comm: request for %d operations is full (%d posted, %d more asked); create it with more slots",
            r->max_ops, r->n_ops, slots);
    int at = r->n_ops;
    r->n_ops += slots;
    return at;
}

int comm_chunks(size_t n)
{
    return n == 0 ? 1 : (int)((n + COMM_CHUNK - 1) / COMM_CHUNK);
}

void comm_wait(CommRequest *r)
{
    watchdog_op_begin("wait");
    r->comm->be->wait(r);
    watchdog_op_end();
    r->n_ops = 0;
}

Comm *comm_split(Comm *c, int color, int key)
{
    CHECK(color >= 0);
    return c->be->split(c, color, key);
}

static void check_request(const Comm *c, const CommRequest *r)
{
    if (r) CHECK(r->comm == c);
}

static void check_rank(const Comm *c, int peer, const char *what)
{
    if (peer < 0 || peer >= c->size)
        DIE("comm: %s %d is outside the comm's ranks 0..%d", what, peer, c->size - 1);
}

static void check_reduce(CommType t, CommOp op)
{
    if (t == COMM_BYTE) DIE("comm: a reduction needs a numeric type, not bytes");
    CHECK(op == COMM_SUM || op == COMM_MAX);
}

void comm_iallreduce(Comm *c, void *buf, size_t n, CommType t, CommOp op, CommRequest *r)
{
    check_request(c, r);
    check_reduce(t, op);
    c->be->allreduce(c, buf, n, t, op, r);
}

void comm_ireduce_scatter(Comm *c, void *recv, const void *send, size_t n, CommType t, CommOp op,
                          CommRequest *r)
{
    check_request(c, r);
    check_reduce(t, op);
    c->be->reduce_scatter(c, recv, send, n, t, op, r);
}

void comm_iallgather(Comm *c, void *recv, const void *send, size_t n, CommType t, CommRequest *r)
{
    check_request(c, r);
    c->be->allgather(c, recv, send, n, t, r);
}

void comm_ialltoallv(Comm *c, void *recv, const size_t *recv_counts, const size_t *recv_offsets, const void *send,
                     const size_t *send_counts, const size_t *send_offsets, CommType t, CommRequest *r)
{
    check_request(c, r);
    c->be->alltoallv(c, recv, recv_counts, recv_offsets, send, send_counts, send_offsets, t, r);
}

void comm_ibroadcast(Comm *c, void *buf, size_t n, CommType t, int root, CommRequest *r)
{
    check_request(c, r);
    check_rank(c, root, "broadcast root");
    c->be->broadcast(c, buf, n, t, root, r);
}

void comm_isend(Comm *c, const void *buf, size_t n, CommType t, int peer, int tag, CommRequest *r)
{
    check_request(c, r);
    check_rank(c, peer, "send peer");
    CHECK(tag >= 0 && tag <= 32767);    /* MPI guarantees tags up to 32767 */
    c->be->send(c, buf, n, t, peer, tag, r);
}

void comm_irecv(Comm *c, void *buf, size_t n, CommType t, int peer, int tag, CommRequest *r)
{
    check_request(c, r);
    check_rank(c, peer, "receive peer");
    CHECK(tag >= 0 && tag <= 32767);
    c->be->recv(c, buf, n, t, peer, tag, r);
}

void comm_ibarrier(Comm *c, CommRequest *r)
{
    check_request(c, r);
    c->be->barrier(c, r);
}

void comm_icopy(Comm *c, void *dst, const void *src, size_t bytes, CommRequest *r)
{
    check_request(c, r);
    c->be->copy(c, dst, src, bytes, r);
}

size_t comm_block_count(size_t n, size_t block, int i)
{
    const size_t lo = (size_t)i * block;
    return lo >= n ? 0 : (n - lo < block ? n - lo : block);
}

static void check_cut(const Comm *c, size_t n, size_t block, const void *entry, const char *what)
{
    if (!entry) DIE("comm: the %s backend has no %s", c->be->name, what);
    CHECK(block * (size_t)c->size >= n);
}

void comm_ireduce_scatter_v(Comm *c, void *recv, const void *send, size_t n, size_t block, CommType t, CommOp op,
                            CommRequest *r)
{
    check_request(c, r);
    check_reduce(t, op);
    check_cut(c, n, block, (const void *)c->be->reduce_scatter_v, "ragged reduce-scatter");
    c->be->reduce_scatter_v(c, recv, send, n, block, t, op, r);
}

void comm_iallgather_v(Comm *c, void *buf, size_t n, size_t block, CommType t, CommRequest *r)
{
    check_request(c, r);
    check_cut(c, n, block, (const void *)c->be->allgather_v, "ragged all-gather");
    c->be->allgather_v(c, buf, n, block, t, r);
}

void comm_reduce_scatter_v(Comm *c, void *recv, const void *send, size_t n, size_t block, CommType t, CommOp op)
{
    watchdog_op_begin("reduce_scatter");
    comm_ireduce_scatter_v(c, recv, send, n, block, t, op, NULL);
    watchdog_op_end();
}

void comm_allgather_v(Comm *c, void *buf, size_t n, size_t block, CommType t)
{
    watchdog_op_begin("allgather");
    comm_iallgather_v(c, buf, n, block, t, NULL);
    watchdog_op_end();
}

void comm_allreduce(Comm *c, void *buf, size_t n, CommType t, CommOp op)
{
    watchdog_op_begin("allreduce");
    comm_iallreduce(c, buf, n, t, op, NULL);
    watchdog_op_end();
}

void comm_reduce_scatter(Comm *c, void *recv, const void *send, size_t n, CommType t, CommOp op)
{
    watchdog_op_begin("reduce_scatter");
    comm_ireduce_scatter(c, recv, send, n, t, op, NULL);
    watchdog_op_end();
}

void comm_allgather(Comm *c, void *recv, const void *send, size_t n, CommType t)
{
    watchdog_op_begin("allgather");
    comm_iallgather(c, recv, send, n, t, NULL);
    watchdog_op_end();
}

void comm_alltoallv(Comm *c, void *recv, const size_t *recv_counts, const size_t *recv_offsets, const void *send,
                    const size_t *send_counts, const size_t *send_offsets, CommType t)
{
    watchdog_op_begin("alltoallv");
    comm_ialltoallv(c, recv, recv_counts, recv_offsets, send, send_counts, send_offsets, t, NULL);
    watchdog_op_end();
}

void comm_broadcast(Comm *c, void *buf, size_t n, CommType t, int root)
{
    watchdog_op_begin("broadcast");
    comm_ibroadcast(c, buf, n, t, root, NULL);
    watchdog_op_end();
}

void comm_send(Comm *c, const void *buf, size_t n, CommType t, int peer, int tag)
{
    watchdog_op_begin("send");
    comm_isend(c, buf, n, t, peer, tag, NULL);
    watchdog_op_end();
}

void comm_recv(Comm *c, void *buf, size_t n, CommType t, int peer, int tag)
{
    watchdog_op_begin("recv");
    comm_irecv(c, buf, n, t, peer, tag, NULL);
    watchdog_op_end();
}

void comm_barrier(Comm *c)
{
    watchdog_op_begin("barrier");
    comm_ibarrier(c, NULL);
    watchdog_op_end();
}
