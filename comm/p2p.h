/* comm/p2p.h - pipeline point-to-point links: one (N, C) boundary tensor per message between
 * pipeline-parallel ranks, with a header saying what it carries (DESIGN.md section 4).
 *
 * PipeLink is the interface the executor (runtime/pipeline/executor.h) runs over; it has two
 * implementations: in-memory mailboxes for all ranks of one process (the executor's file, for
 * tests) and, here, transfers over a communicator of the PP group (comm/comm.h; MPI between
 * processes). Messages between two ranks of one kind (activations or gradients: the tag) arrive
 * in send order (MPI's non-overtaking rule).
 *
 * Not here: which messages a step sends (the schedule), and any reduction.
 *
 * Calling sequence (per rank):
 *   PipeLink *l = p2p_link_create(pp_comm, ops, bytes, max_sends);   at plan time
 *   each step: l->send(l, peer, &hdr, buf, bytes) ... l->recv(l, peer, kind, &got, buf, bytes)
 *              ... l->finish(l);                                  sends of the step complete
 *   p2p_link_free(l);
 */
#ifndef DSTRAIN_P2P_H
#define DSTRAIN_P2P_H

#include <stddef.h>

#include "comm/comm.h"
#include "kernels/ops.h"

typedef enum { PIPE_ACT = 0, PIPE_GRAD = 1 } PipeKind;

/* What a message says it carries: the receiver compares it with what it expects. */
typedef struct PipeHeader {
    int kind;               /* PipeKind */
    int mb;                 /* micro-batch (-1: a forward outside a training step) */
    int stage;              /* the sending stage */
} PipeHeader;

typedef struct PipeLink PipeLink;
struct PipeLink {
    /* Post a send of bytes from buf (backend memory, reusable at once: the link stages it) to
     * rank peer. */
    void (*send)(PipeLink *l, int peer, const PipeHeader *h, const void *buf, size_t bytes);
    /* 1 when the next message of `kind` from peer has arrived: its payload is in buf (backend
     * memory) and its header in *got; 0 when it has not arrived yet (only a non-blocking link
     * returns 0; this file's link blocks). */
    int (*recv)(PipeLink *l, int peer, int kind, PipeHeader *got, void *buf, size_t bytes);
    /* Completes this rank's sends since the last finish. */
    void (*finish)(PipeLink *l);
    void *state;
};

/* A link over comm (the PP group, ranks = stages' ranks) for messages of up to `bytes` bytes,
 * at most max_sends sends between finishes; ops: the backend the payloads live in. Host
 * staging of (max_sends + 1) messages is allocated here, once. */
PipeLink *p2p_link_create(Comm *comm, Ops *ops, size_t bytes, int max_sends);
void p2p_link_free(PipeLink *l);

#endif
