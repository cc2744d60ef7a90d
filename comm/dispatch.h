/* comm/dispatch.h - MoE token dispatch and combine over an expert-parallel (EP) group, in
 * DeepEP's phases:
 *
 *   ep_layout    routing (idx) -> where each (token, slot) goes: the row of every (token, slot)
 *                in this rank's send order (expert-major over all E experts), then the count
 *                exchange: every rank learns how many rows each peer sends to each of its
 *                local experts, which fixes the receive layout (the handle)
 *   ep_dispatch  token rows -> rows on the experts' ranks, grouped by local expert
 *   ...local experts run on rows [recv_offsets_host[j], recv_offsets_host[j+1]) of local
 *      expert j (global expert ep_rank * n_local + j): one GEMM per local expert...
 *   ep_combine   expert rows back to their tokens' ranks, weighted and summed into token rows
 *
 * The backward of dispatch is a combine (rows travel back and are summed per token) and the
 * backward of combine is a dispatch (w * dy rows travel to the experts), so one handle serves
 * all four. Expert e lives on EP rank e / n_local (n_local = E / P consecutive experts per
 * rank, so a routing group of E / n_group experts lies on one rank or on consecutive ranks).
 * Dropless: any load, including every token of every rank to one expert and experts or ranks
 * that receive nothing. The group's exchange buffers (the lanes') are sized for the worst case
 * up front (a rank receives at most P * N * K rows: all slots of all P ranks) and shared by
 * every layer; nothing is allocated per step. The receive rows (recv, expert_out, their
 * gradients) are the caller's: they must hold recv_rows rows, known after ep_layout and
 * before the dispatch is posted. The model keeps them in a pool sized by a capacity factor
 * below the worst case and stops when a layout needs more (model/moe.c); recv_cap is the
 * worst case, the most a layout can give.
 *
 * Buffers, P = 2 ranks, E = 4 experts (n_local = 2), rank r's side:
 *
 *   send order (N*K rows, rank r)                  receive order on EP rank q (<= P*N*K rows)
 *   | to rank 0      | to rank 1      |            | local expert 0  | local expert 1  |
 *   | e0    | e1     | e2    | e3     |            | from 0 | from 1 | from 0 | from 1 |
 *   offsets_host (E+1), pos (N,K) -> send row      recv_offsets_host (n_local+1);
 *                                                  chunk (j, s): recv_starts/recv_counts (n_local,P)
 *
 * Within a chunk, rows follow token order then slot order (the layout op is stable), so the
 * receive order of one rank equals the single-rank expert-major order restricted to its experts.
 * One message per (peer, local expert) chunk lands directly at its place (no unpacking); the
 * rows a rank keeps go through the comm's local copy.
 *
 * With one rank (no group, or a group of size 1) dispatch is a permutation on the rank: the
 * op-table kernels alone, exactly as before EP existed; then n_local = E, the receive order is
 * the send order and recv_offsets_host is offsets_host.
 *
 * Calling sequence (the model, one MoE layer; host-memory ops with the mpi or single comm):
 *   EpGroup g; ep_group_init(&g, groups->ep_comm, world->node, E);   once, collective
 *   ep_group_plan(&g, N, K, C, &arena);                              with the model's arena
 *   ep_handle_plan_group(&h, &g, N, K, E, C, &arena);                 one handle per MoE layer
 *   forward:  ep_layout(o, &h, idx); ep_dispatch(o, &h, xp, x);
 *             experts on xp rows per local expert -> yp;  ep_combine(o, &h, y, yp, w);
 *   backward: ep_combine_backward(o, &h, dyp, dw, dy, yp, w);  experts backward dyp -> dxp;
 *             ep_dispatch_backward(o, &h, dx, dxp);
 *   ep_handle_free(&h); ep_group_free(&g);
 * Every call of layout, dispatch and combine is collective over the EP group, in the same
 * order on every rank. The blocking calls are a post and its wait on lane 0.
 *
 * Post/wait halves and lanes (DESIGN.md sections 3-4). Each of the four exchanges has a post
 * half (the local op that feeds it, then its messages posted) and a wait half (the messages
 * completed, then the local op that consumes them). A group has EP_LANES = 2 lanes, each with
 * its own send and gradient buffers, request and tags (lane l uses tags l*n_local + j), so two
 * exchanges can be in flight together: by convention lane EP_LANE_F carries a forward's
 * dispatch/combine and lane EP_LANE_B a backward's, as the executor's FB instruction needs.
 * The handle remembers what was posted for it and on which lane; its wait names the same kind.
 * The count exchange (ep_layout) stays a short blocking collective; it may run while lanes
 * are in flight (it uses neither lane), but not on a handle whose exchange is in flight.
 *
 *   F phase "gate" (micro-batch i):  ep_layout(o, &hi, idx); ep_dispatch_post(o, &hi, EP_LANE_F, xp, x);
 *   B phase "out"  (micro-batch j):  ep_combine_backward_post(o, &hj, EP_LANE_B, dyp, dw, dy, yp, w);
 *   F phase "experts":  ep_dispatch_wait(o, &hi);  experts -> yp;  ep_combine_post(o, &hi, EP_LANE_F, y, yp, w);
 *   B phase "experts":  ep_combine_backward_wait(o, &hj);  experts backward;
 *                       ep_dispatch_backward_post(o, &hj, EP_LANE_B, dx, dxp);
 *   F phase "out":      ep_combine_wait(o, &hi);  residual ...
 *   B phase "gate":     ep_dispatch_backward_wait(o, &hj);  router backward ...
 *
 * Rules, per exchange from its post to its wait: the layouts and the posts on one lane come in
 * the same order on every rank of the group; the two lanes' posts may interleave differently
 * on different ranks (their tags differ) and waits may come in any order; the inputs named in
 * the post stay unchanged and the outputs are neither read nor written (they are final after
 * the wait; the one-rank path does all its work in the post); a lane carries one exchange and
 * a handle one exchange at a time. Breaking the last rule is a BUG naming the lane, the
 * exchange in flight and the one asked for (with no group, only the handle is checked). Lanes
 * share the group's comm (comm_nccl.h: NCCL needs one comm per lane to run them concurrently;
 * EpLane.comm is where it goes when NCCL reaches the model). Two lanes double the group's
 * buffers: 2 * (N*K + P*N*K) rows of C floats for P > 1.
 *
 * Not here: routing (the op table's moe_route), the experts' GEMMs (model/moe.c).
 */
#ifndef DSTRAIN_DISPATCH_H
#define DSTRAIN_DISPATCH_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/ops.h"
#include "runtime/common.h"
#include "comm/comm.h"

#define EP_LANES 2
enum { EP_LANE_F = 0, EP_LANE_B = 1 };   /* lane 0: forward exchanges, lane 1: backward ones */

/* What a lane or a handle has in flight. */
typedef enum { EP_IDLE = 0, EP_DISPATCH, EP_DISPATCH_BACKWARD, EP_COMBINE, EP_COMBINE_BACKWARD } EpExchange;

struct EpHandle;

typedef struct EpLane {
    Comm *comm;                 /* the comm its messages go over (the group's); not owned */
    CommRequest *req;           /* its exchange's messages */
    int tag0;                   /* its tags: tag0 + local expert */
    act *send;                  /* (N*K, C) backend: rows in send order (P > 1) */
    act *grad;                  /* (P*N*K, C) backend: received w*dy rows before they are added (P > 1) */
    EpExchange busy;            /* the exchange in flight (EP_IDLE: none) */
    const struct EpHandle *h;   /* its handle */
    act *out;                   /* where its wait writes: y (combine), dx, dexpert_out */
    const float *w;             /* combine: the routing weights its wait reads */
} EpLane;

typedef struct EpGroup {
    Comm *comm;                 /* the EP group (Groups.ep_comm); not owned */
    int size, rank;             /* P ranks; this rank's position = its ep_rank */
    int E, n_local;             /* experts; experts per rank = E / P */
    int32_t *node_of;           /* (P) host: node index of each EP rank */
    int N, K, C;                /* shape the lanes' buffers are planned for */
    int32_t *cnt_send;          /* (E) host: rows this rank sends to each expert */
    int32_t *cnt_recv;          /* (P, n_local) host: rows each rank sends to each local expert */
    size_t *a2a;                /* (4, P) host: alltoallv counts/offsets of the count exchange */
    EpLane lane[EP_LANES];
} EpGroup;

typedef struct EpHandle {
    int N, K, E, C;
    EpGroup *g;                 /* NULL: one rank */
    int n_local;                /* experts on this rank (E for one rank) */
    int recv_cap;               /* the most rows a layout can give: P * N * K */
    int recv_rows;              /* rows received by the last ep_layout */
    int32_t *pos;               /* (N,K) backend memory: send row of (token n, slot k) */
    int32_t *offsets;           /* (E+1) backend memory: send rows of each expert */
    int32_t *offsets_host;      /* (E+1) host copy */
    int32_t *recv_offsets_host; /* (n_local+1) host: receive rows of each local expert;
                                   == offsets_host for one rank */
    int32_t *recv_counts;       /* (n_local, P) host: rows of local expert j from EP rank s */
    int32_t *recv_starts;       /* (n_local, P) host: first receive row of that chunk */
    act *ret;                   /* (N*K, C) backend: expert outputs of this rank's rows, in send
                                   order, kept from combine for its backward (P > 1) */
    EpExchange busy;            /* the exchange posted for this handle and not yet waited */
    int lane;                   /* the lane it went on */
} EpHandle;

/* Collective over comm: records the EP group (P = comm->size ranks), gathers the node of each
 * rank, creates each lane's request. DIE when P does not divide E. */
void ep_group_init(EpGroup *g, Comm *comm, int node, int E);
/* Plans the lanes' buffers for micro-batches of N tokens, K slots, C wide in an arena
 * (runtime/common.h two passes): per lane (N*K + P*N*K) rows of C. Nothing is taken for P == 1. */
void ep_group_plan(EpGroup *g, int N, int K, int C, Arena *ar);
void ep_group_free(EpGroup *g);

/* Plans a handle's backend buffers in an arena; once the arena has memory the host arrays are
 * allocated too (freed by ep_handle_free). g == NULL (or a group of one rank): one rank.
 * With a group, E and the shape must match the group's. */
void ep_handle_plan_group(EpHandle *h, EpGroup *g, int N, int K, int E, int C, Arena *ar);
/* One rank: ep_handle_plan_group(h, NULL, ...). */
void ep_handle_plan(EpHandle *h, int N, int K, int E, int C, Arena *ar);
void ep_handle_free(EpHandle *h);

/* Layout and count exchange from idx (N,K) backend memory; fills pos, offsets, the receive
 * layout and recv_rows. BUG while an exchange of h is in flight. */
void ep_layout(Ops *o, EpHandle *h, const int32_t *idx);

/* The blocking exchanges (a post on lane EP_LANE_F and its wait; BUG when that lane is busy).
 * ep_dispatch: recv (>= recv_rows, C) rows [0, recv_rows) <- the rows of x (N,C) routed to this
 * rank's experts, in receive order (overwritten). */
void ep_dispatch(Ops *o, EpHandle *h, act *recv, const act *x);
/* dx (N,C) += sum over each token's slots of its rows of drecv (recv_rows, C). */
void ep_dispatch_backward(Ops *o, EpHandle *h, act *dx, const act *drecv);
/* y (N,C) += sum_k w[n,k] * expert_out[row of (n,k)], expert_out (recv_rows, C) in receive
 * order; for P > 1 the rows come back into h->ret and are summed in slot order, as for one
 * rank. */
void ep_combine(Ops *o, EpHandle *h, act *y, const act *expert_out, const float *w);
/* dexpert_out (recv_rows, C) += w * dy (per row, delivered to the experts' ranks);
 * dw (N,K) += <dy[n], expert_out[row of (n,k)]>. For P > 1 the expert outputs are read from
 * h->ret (kept by ep_combine) and expert_out is not used. */
void ep_combine_backward(Ops *o, EpHandle *h, act *dexpert_out, float *dw, const act *dy,
                         const act *expert_out, const float *w);

/* The halves: the same results as the blocking call of the same name, final after the wait
 * (rules in the header comment). lane: EP_LANE_F or EP_LANE_B. Where the work happens for
 * P > 1: dispatch: gather in the post; dispatch backward: the summation in the wait; combine:
 * the weighted sum in the wait (it reads w then); combine backward: dw and the w*dy rows in the
 * post, the addition into dexpert_out in the wait. */
void ep_dispatch_post(Ops *o, EpHandle *h, int lane, act *recv, const act *x);
void ep_dispatch_wait(Ops *o, EpHandle *h);
void ep_dispatch_backward_post(Ops *o, EpHandle *h, int lane, act *dx, const act *drecv);
void ep_dispatch_backward_wait(Ops *o, EpHandle *h);
void ep_combine_post(Ops *o, EpHandle *h, int lane, act *y, const act *expert_out, const float *w);
void ep_combine_wait(Ops *o, EpHandle *h);
void ep_combine_backward_post(Ops *o, EpHandle *h, int lane, act *dexpert_out, float *dw, const act *dy,
                              const act *expert_out, const float *w);
void ep_combine_backward_wait(Ops *o, EpHandle *h);

/* "dispatch", "combine backward", ... ("idle" for EP_IDLE). */
const char *ep_exchange_name(EpExchange x);

/* Node-limited routing report: the largest number of distinct nodes any token's K experts
 * live on. idx (N,K) host; expert e on EP rank e / (E / P); node_of (P) per EP rank. */
int ep_max_nodes(const int32_t *idx, int N, int K, int E, int P, const int32_t *node_of);

#endif
