/* comm/comm_single.c - the `single` backend: a comm of one rank, no MPI.
 *
 * Every collective over one rank is the identity: a reduction leaves its buffer as it is, a
 * gather or all-to-all copies this rank's block, a broadcast from rank 0 does nothing. A send
 * to oneself is matched with a receive from oneself (same tag, first posted first matched, as
 * in MPI) and copied when the second of the pair is posted; a wait (or a blocking call) that
 * would need a message nothing can send is an error instead of a hang.
 *
 * Not here: anything about more than one rank. Operations take request slots exactly as the
 * mpi backend does, so a request sized too small fails here too, not first on a cluster.
 */
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "../runtime/common.h"

/* self messages posted and not yet matched */
#define SELF_QUEUE 64

typedef struct SelfMsg {
    int is_send, tag;
    const void *src;            /* send: the data */
    void *dst;                  /* receive: where it goes */
    size_t bytes;
    CommRequest *req;           /* request it was posted into */
} SelfMsg;

typedef struct SingleState {
    SelfMsg q[SELF_QUEUE];
    int n;
} SingleState;

static void take(CommRequest *r, int slots)
{
    if (r) comm_request_take(r, slots);
}

static void single_allreduce(Comm *c, void *buf, size_t n, CommType t, CommOp op, CommRequest *r)
{
    take(r, comm_chunks(n));
}

static void single_reduce_scatter(Comm *c, void *recv, const void *send, size_t n, CommType t, CommOp op,
                                  CommRequest *r)
{
    take(r, 1);
    memcpy(recv, send, n * comm_type_size(t));
}

static void single_reduce_scatter_v(Comm *c, void *recv, const void *send, size_t n, size_t block, CommType t,
                                    CommOp op, CommRequest *r)
{
    take(r, 1);
    if (recv != send) memcpy(recv, send, n * comm_type_size(t));
}

static void single_allgather_v(Comm *c, void *buf, size_t n, size_t block, CommType t, CommRequest *r)
{
    take(r, 1);
}

static void single_allgather(Comm *c, void *recv, const void *send, size_t n, CommType t, CommRequest *r)
{
    take(r, 1);
    if (recv != send) memcpy(recv, send, n * comm_type_size(t));
}

static void single_alltoallv(Comm *c, void *recv, const size_t *recv_counts, const size_t *recv_offsets,
                             const void *send, const size_t *send_counts, const size_t *send_offsets, CommType t,
                             CommRequest *r)
{
    take(r, 1);
    if (send_counts[0] != recv_counts[0])
        DIE("comm: alltoallv sends %zu elements to itself but expects %zu", send_counts[0], recv_counts[0]);
    size_t es = comm_type_size(t);
    memcpy((char *)recv + recv_offsets[0] * es, (const char *)send + send_offsets[0] * es, recv_counts[0] * es);
}

static void single_broadcast(Comm *c, void *buf, size_t n, CommType t, int root, CommRequest *r)
{
    take(r, comm_chunks(n));
}

/* Match a new self message against the queue, or queue it. */
static void self_post(Comm *c, SelfMsg m)
{
    SingleState *s = c->impl;
    for (int i = 0; i < s->n; i++) {
        SelfMsg *q = &s->q[i];
        if (q->is_send == m.is_send || q->tag != m.tag) continue;
        const SelfMsg *snd = m.is_send ? &m : q, *rcv = m.is_send ? q : &m;
        if (rcv->bytes < snd->bytes)
            DIE("comm: a receive of %zu bytes matched a message of %zu bytes (tag %d)", rcv->bytes, snd->bytes,
                m.tag);
        memcpy(rcv->dst, snd->src, snd->bytes);
        if (q->req) q->req->pending--;
        memmove(q, q + 1, (size_t)(s->n - i - 1) * sizeof *q);
        s->n--;
        return;
    }
    if (!m.req)
        DIE("comm: a blocking %s on a one-rank comm (tag %d) has no matching %s posted and would never complete",
            m.is_send ? "send to itself" : "receive from itself", m.tag, m.is_send ? "receive" : "send");
    if (s->n == SELF_QUEUE) DIE("comm: more than %d unmatched sends/receives to itself", SELF_QUEUE);
    s->q[s->n++] = m;
    m.req->pending++;
}

static void single_send(Comm *c, const void *buf, size_t n, CommType t, int peer, int tag, CommRequest *r)
{
    take(r, 1);
    SelfMsg m = { 1, tag, buf, NULL, n * comm_type_size(t), r };
    self_post(c, m);
}

static void single_recv(Comm *c, void *buf, size_t n, CommType t, int peer, int tag, CommRequest *r)
{
    take(r, 1);
    SelfMsg m = { 0, tag, NULL, buf, n * comm_type_size(t), r };
    self_post(c, m);
}

static void single_barrier(Comm *c, CommRequest *r)
{
    take(r, 1);
}

static void single_copy(Comm *c, void *dst, const void *src, size_t bytes, CommRequest *r)
{
    take(r, 1);
    if (bytes) memmove(dst, src, bytes);
}

static void single_wait(CommRequest *r)
{
    if (r->pending > 0)
        DIE("comm: waiting on %d send(s)/receive(s) to itself that nothing matches (they would never complete)",
            r->pending);
}

static void single_request_init(CommRequest *r) { r->impl = NULL; }
static void single_request_free(CommRequest *r) { r->impl = NULL; }

static Comm *single_split(Comm *c, int color, int key)
{
    return comm_single_create();
}

static void single_destroy(Comm *c)
{
    SingleState *s = c->impl;
    CHECK(s->n == 0);
    free(s);
    free(c);
}

static const CommBackend SINGLE = {
    .name = "single",
    .allreduce = single_allreduce,
    .reduce_scatter = single_reduce_scatter,
    .allgather = single_allgather,
    .alltoallv = single_alltoallv,
    .broadcast = single_broadcast,
    .send = single_send,
    .recv = single_recv,
    .barrier = single_barrier,
    .copy = single_copy,
    .wait = single_wait,
    .request_init = single_request_init,
    .request_free = single_request_free,
    .split = single_split,
    .destroy = single_destroy,
    .reduce_scatter_v = single_reduce_scatter_v,
    .allgather_v = single_allgather_v,
};

Comm *comm_single_create(void)
{
    Comm *c = xcalloc(1, sizeof *c);
    c->be = &SINGLE;
    c->rank = 0;
    c->size = 1;
    c->impl = xcalloc(1, sizeof(SingleState));
    return c;
}
