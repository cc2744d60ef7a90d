/* runtime/pipeline/executor.h - runs one rank's instruction list (runtime/pipeline/schedule.h)
 * on its stages (model/stage.h) over a pipeline link (DESIGN.md section 4).
 *
 * The executor owns, per rank: which slot of which chunk's stage holds which micro-batch
 * (taken at the micro-batch's RECV_F or F, given back after its W), the W FIFO (a B that is
 * not fused pushes its (micro-batch, chunk); each W instruction runs the FIFO's head and
 * checks it is the one the list names), and the hand-offs between its own two chunks
 * (DualPipeV's turn at rank pp-1: no transfer, a copy). No globals: every rank's state lives
 * in its PipeExec, so one process can run all ranks (tests/unit/test_pipeline.c).
 *
 * F and B run as phases (model/stage.h StagePass; DESIGN.md section 4): each phase of a pass
 * may end by posting an EP exchange on the pass's lane (F: EP_LANE_F, B: EP_LANE_B) that the
 * pass waits for before its next phase. FB is the phase ping-pong: its F's phases until one
 * posts, then its B's until one posts, and back, so a forward's dispatch is in flight while the
 * backward computes and the other way round (when F and B are on the same chunk, which shares
 * one stage's scratch, they run one after the other). The arithmetic is the sequential one, so
 * results are bit-identical to F then B. Mirror
 * gradients (DualPipe's two copies of a stage; under 1F1B/ZB1P the last stage's embedding
 * copy for MTP) stay in each stage's gradient buffer: the caller sums them.
 *
 * Links (comm/p2p.h). A PipeLink moves one (N, C) boundary tensor per message between two ranks. Each
 * message carries a header (kind, micro-batch, sending stage) that the receiver checks against
 * what it expects, so a transfer that arrives out of order or from the wrong stage is a BUG,
 * not a silent wrong gradient. Messages between two ranks of one kind arrive in send order.
 * Two implementations: in-memory mailboxes (below; all ranks in one process) and MPI
 * point-to-point over the PP group (comm/p2p.h).
 *
 * Trace (runtime/pipeline/trace.h; e.trace, set by the caller, NULL for none): one span per
 * instruction on the compute track, named F, B, W, FB, "SEND F", "SEND B", "RECV F", "RECV B",
 * with its micro-batch and chunk (an FB's are its F's); inside, one span per phase named by
 * stage_pass_next ("L3", "L3 experts", ...; args.phase F or B, with the pass's micro-batch and
 * chunk), and per exchange a span on track "ep lane F" or "ep lane B" from its post to the end
 * of its wait, named by StagePass.exchange ("dispatch L3", ...); a
 * RECV's wait is a span "recv F"/"recv B" on the link track of its peer ("pp prev" when the
 * peer's rank is below this one, else "pp next"), open from the first try to the arrival; a SEND
 * is an instant "send F"/"send B" there.
 *
 * Calling sequence (each rank, each step):
 *   PipeExec e; pipe_exec_init(&e, &sched, rank, stages, link);   stages[chunk], slots from
 *                                                                  pipe_exec_slots
 *   pipe_exec_begin(&e, windows, losses);      windows[mb]: host (B, T+1) ids; losses[mb] out
 *   while (pipe_exec_step(&e) == PIPE_RAN) {}  (a blocking link never returns PIPE_BLOCKED)
 *   link->finish(link);                        every send of the step delivered
 *   pipe_exec_free(&e);
 */
#ifndef DSTRAIN_EXECUTOR_H
#define DSTRAIN_EXECUTOR_H

#include <stddef.h>

#include "comm/p2p.h"
#include "model/stage.h"
#include "runtime/pipeline/schedule.h"
#include "runtime/pipeline/trace.h"

/* In-memory mailboxes for pp ranks in one process (ops: the backend the payloads live in). */
typedef struct PipeMailbox PipeMailbox;
PipeMailbox *pipe_mailbox_create(int pp, Ops *ops);
PipeLink *pipe_mailbox_link(PipeMailbox *mb, int rank);
/* Messages sent but not received (0 after a sound step). */
int pipe_mailbox_pending(const PipeMailbox *mb);
void pipe_mailbox_free(PipeMailbox *mb);

typedef struct PipeExec {
    const Schedule *s;
    int rank, pc;
    Model *stage[2];            /* [chunk] */
    PipeLink *link;
    struct PipeBook *book;      /* which slot each (chunk, micro-batch) holds (executor.c) */
    int max_slots;
    int *wq;                    /* W FIFO of mb * 2 + chunk, capacity 2C */
    int wq_head, wq_tail;
    const int32_t *const *windows;
    ModelLoss *losses;
    unsigned char *ran;         /* [chunk * C + mb]: the chunk ran the micro-batch's F this step */
    ModelLoss *step_loss;       /* [C] a chunk's read of the step's losses */
    int done;                   /* the losses of this step have been read */
    Trace *trace;               /* spans of this rank's instructions (NULL: none; set by the caller) */
    int waiting;                /* the current RECV's spans are open (it blocked before) */
} PipeExec;

enum { PIPE_DONE = -1, PIPE_BLOCKED = 0, PIPE_RAN = 1 };

/* Slots chunk `chunk` of `rank` needs: the most micro-batches it holds at once between
 * taking a slot and its W, walking the list with the executor's own rules. */
int pipe_exec_slots(const Schedule *s, int rank, int chunk);
/* MODEL_TRAIN_SPLIT when chunk `chunk` of `rank` runs a B apart from its W (the B-to-W buffers
 * then live per block and slot), MODEL_TRAIN when every B of its list is fused (1F1B: one
 * shared set, W right after B). */
int pipe_exec_train_mode(const Schedule *s, int rank, int chunk);
void pipe_exec_init(PipeExec *e, const Schedule *s, int rank, Model *const *stages, PipeLink *link);
/* Start a step: every slot free, the list from its first instruction. losses[mb] (zeroed by
 * the caller) gets the last stage's main and MTP losses and every stage adds its balance-loss
 * share, all read once when the list ends (the stages keep them on the device until then:
 * StageSpec.n_micro must cover the step). */
void pipe_exec_begin(PipeExec *e, const int32_t *const *windows, ModelLoss *losses);
/* Runs the next instruction: PIPE_RAN, PIPE_BLOCKED (its receive has not arrived; nothing
 * changed), or PIPE_DONE at the end of the list. */
int pipe_exec_step(PipeExec *e);
void pipe_exec_free(PipeExec *e);

#endif
