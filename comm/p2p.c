/* comm/p2p.c - the pipeline link over a communicator (comm/p2p.h): each message is one byte
 * buffer, a header of three int32 then the payload, staged in host memory (the comm works on
 * host buffers; with the cpu backend the staging is a copy). Sends are posted (MPI_Isend) from
 * a staging slot of their own, so a schedule's sends never block; receives block.
 */
#include "comm/p2p.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/common.h"

#define HDR_BYTES (3 * sizeof(int32_t))

typedef struct P2p {
    Comm *comm;
    Ops *o;
    size_t bytes;               /* payload capacity of a message */
    int max_sends, n_sent;
    char *send_stage;           /* (max_sends, HDR_BYTES + bytes) host */
    char *recv_stage;           /* (HDR_BYTES + bytes) host */
    CommRequest *req;
} P2p;

static void p2p_send(PipeLink *l, int peer, const PipeHeader *h, const void *buf, size_t bytes)
{
    P2p *p = l->state;
    if (p->n_sent == p->max_sends) BUG("p2p: more than %d sends before finish", p->max_sends);
    CHECK(bytes <= p->bytes && peer >= 0 && peer < p->comm->size && peer != p->comm->rank);
    char *m = p->send_stage + (size_t)p->n_sent++ * (HDR_BYTES + p->bytes);
    int32_t hdr[3] = { h->kind, h->mb, h->stage };
    memcpy(m, hdr, HDR_BYTES);
    p->o->download(p->o, m + HDR_BYTES, buf, bytes);
    comm_isend(p->comm, m, HDR_BYTES + bytes, COMM_BYTE, peer, h->kind, p->req);
}

static int p2p_recv(PipeLink *l, int peer, int kind, PipeHeader *got, void *buf, size_t bytes)
{
    P2p *p = l->state;
    CHECK(bytes <= p->bytes && peer >= 0 && peer < p->comm->size && peer != p->comm->rank);
    comm_recv(p->comm, p->recv_stage, HDR_BYTES + bytes, COMM_BYTE, peer, kind);
    int32_t hdr[3];
    memcpy(hdr, p->recv_stage, HDR_BYTES);
    got->kind = hdr[0];
    got->mb = hdr[1];
    got->stage = hdr[2];
    p->o->upload(p->o, buf, p->recv_stage + HDR_BYTES, bytes);
    return 1;
}

static void p2p_finish(PipeLink *l)
{
    P2p *p = l->state;
    comm_wait(p->req);
    p->n_sent = 0;
}

PipeLink *p2p_link_create(Comm *comm, Ops *ops, size_t bytes, int max_sends)
{
    CHECK(max_sends >= 0);
    P2p *p = xcalloc(1, sizeof *p);
    p->comm = comm;
    p->o = ops;
    p->bytes = bytes;
    p->max_sends = max_sends;
    p->send_stage = xmalloc(((size_t)max_sends + 1) * (HDR_BYTES + bytes));
    p->recv_stage = xmalloc(HDR_BYTES + bytes);
    p->req = comm_request_create(comm, max_sends + 1);
    PipeLink *l = xcalloc(1, sizeof *l);
    l->send = p2p_send;
    l->recv = p2p_recv;
    l->finish = p2p_finish;
    l->state = p;
    return l;
}

void p2p_link_free(PipeLink *l)
{
    if (!l) return;
    P2p *p = l->state;
    comm_request_free(p->req);
    free(p->send_stage);
    free(p->recv_stage);
    free(p);
    free(l);
}
