/* runtime/pipeline/executor.c - one rank's instruction list on its stages (executor.h), and the
 * in-memory mailbox link. Not here: building or checking lists (schedule.c, schedule_sim.c),
 * MPI transfers (comm/p2p.c), the sums of mirror gradients (the caller).
 */
#include "runtime/pipeline/executor.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/common.h"

/* ---- slots ---------------------------------------------------------------------------------- */

/* The chunk of this rank that runs the neighbour stage (dir +1 next, -1 previous) of mb, or -1
 * when that stage does not exist or lives on another rank. */
static int local_neighbour(const Schedule *s, int rank, int mb, int chunk, int dir)
{
    int t = sched_stage_of(s, rank, chunk) + dir, pr, pc;
    if (t < 0 || t >= s->n_stages) return -1;
    sched_owner(s, mb, t, &pr, &pc);
    return pr == rank ? pc : -1;
}

/* Slot bookkeeping shared by the executor and pipe_exec_slots: a micro-batch takes a slot of a
 * chunk at its RECV_F, its F, or its previous local chunk's F (the hand-off), and gives it back
 * after its W (or its fused B). */
typedef struct PipeBook {
    int C, max;                 /* micro-batches; slots per chunk at most */
    int cap[2];                 /* slots of each chunk */
    int *slot_of;               /* [chunk * C + mb] */
    int *busy;                  /* [chunk * max + slot] */
    int held[2], peak[2];
    int pend[2][2], n_pend;     /* (chunk, mb) given back once the compute's sends are posted */
} Book;

static int book_take(Book *b, int chunk, int mb)
{
    int *so = &b->slot_of[chunk * b->C + mb];
    if (*so >= 0) return *so;
    for (int i = 0; i < b->cap[chunk]; i++)
        if (!b->busy[chunk * b->max + i]) {
            b->busy[chunk * b->max + i] = 1;
            *so = i;
            if (++b->held[chunk] > b->peak[chunk]) b->peak[chunk] = b->held[chunk];
            return i;
        }
    BUG("pipeline: chunk %d needs more than its %d activation slots (micro-batch %d)", chunk, b->cap[chunk], mb);
}

static int book_slot(const Book *b, int chunk, int mb)
{
    int so = b->slot_of[chunk * b->C + mb];
    if (so < 0) BUG("pipeline: micro-batch %d of chunk %d holds no slot", mb, chunk);
    return so;
}

static void book_give(Book *b, int chunk, int mb)
{
    int so = book_slot(b, chunk, mb);
    b->busy[chunk * b->max + so] = 0;
    b->slot_of[chunk * b->C + mb] = -1;
    b->held[chunk]--;
}

/* The slot effects of one instruction before (when = 0) and after (when = 1) its compute. */
static void book_effects(Book *b, const Schedule *s, int rank, const SchedInstr *in, int when)
{
    const int op = in->op;
    const int has_f = op == SOP_F || op == SOP_FB, has_b = op == SOP_B || op == SOP_FB;
    const int bm = op == SOP_FB ? in->mb_b : in->mb, bc = op == SOP_FB ? in->chunk_b : in->chunk;
    if (when == 0) {
        if (op == SOP_RECV_F || has_f) book_take(b, in->chunk, in->mb);
        if (has_f) {
            int next = local_neighbour(s, rank, in->mb, in->chunk, +1);
            if (next >= 0) book_take(b, next, in->mb);
        }
        return;
    }
    if ((has_b && in->fused) || op == SOP_W) {
        CHECK(b->n_pend < 2);
        b->pend[b->n_pend][0] = op == SOP_W ? in->chunk : bc;
        b->pend[b->n_pend][1] = op == SOP_W ? in->mb : bm;
        b->n_pend++;
    }
}

/* The SENDs after a compute still read its slot: slots are given back when the next
 * instruction that is not a SEND starts (or the list ends). */
static void book_flush(Book *b, const SchedInstr *next)
{
    if (next && (next->op == SOP_SEND_F || next->op == SOP_SEND_B)) return;
    for (int i = 0; i < b->n_pend; i++) book_give(b, b->pend[i][0], b->pend[i][1]);
    b->n_pend = 0;
}

static void book_init(Book *b, int C, int cap0, int cap1)
{
    memset(b, 0, sizeof *b);
    b->C = C;
    b->cap[0] = cap0;
    b->cap[1] = cap1;
    b->max = cap0 > cap1 ? cap0 : cap1;
    b->slot_of = xmalloc((size_t)2 * C * sizeof(int));
    b->busy = xcalloc((size_t)2 * b->max + 1, sizeof(int));
    for (int i = 0; i < 2 * C; i++) b->slot_of[i] = -1;
}

static void book_free(Book *b)
{
    free(b->slot_of);
    free(b->busy);
}

int pipe_exec_slots(const Schedule *s, int rank, int chunk)
{
    Book b;
    book_init(&b, s->micro_batches, s->micro_batches, s->micro_batches);
    const SchedList *l = &s->rank[rank];
    for (int i = 0; i < l->n; i++) {
        book_flush(&b, &l->ins[i]);
        book_effects(&b, s, rank, &l->ins[i], 0);
        book_effects(&b, s, rank, &l->ins[i], 1);
    }
    book_flush(&b, NULL);
    int peak = b.peak[chunk] > 0 ? b.peak[chunk] : 1;
    book_free(&b);
    return peak;
}

int pipe_exec_train_mode(const Schedule *s, int rank, int chunk)
{
    const SchedList *l = &s->rank[rank];
    for (int i = 0; i < l->n; i++) {
        const SchedInstr *in = &l->ins[i];
        const int bc = in->op == SOP_FB ? in->chunk_b : in->chunk;
        if ((in->op == SOP_B || in->op == SOP_FB) && bc == chunk && !in->fused) return MODEL_TRAIN_SPLIT;
    }
    return MODEL_TRAIN;
}

/* ---- the executor --------------------------------------------------------------------------- */

static Book *book_of(PipeExec *e) { return e->book; }

void pipe_exec_init(PipeExec *e, const Schedule *s, int rank, Model *const *stages, PipeLink *link)
{
    memset(e, 0, sizeof *e);
    e->s = s;
    e->rank = rank;
    e->link = link;
    e->max_slots = 1;
    for (int c = 0; c < s->n_chunks; c++) {
        CHECK(stages[c]);
        e->stage[c] = stages[c];
        int need = pipe_exec_slots(s, rank, c);
        if (stage_n_slots(stages[c]) < need)
            BUG("pipeline: rank %d chunk %d has %d activation slots, its list needs %d", rank, c,
                stage_n_slots(stages[c]), need);
        if (stage_n_slots(stages[c]) > e->max_slots) e->max_slots = stage_n_slots(stages[c]);
        if (stage_n_micro(stages[c]) < s->micro_batches)
            BUG("pipeline: rank %d chunk %d keeps the losses of %d micro-batches, the step has %d", rank, c,
                stage_n_micro(stages[c]), s->micro_batches);
    }
    Book *b = xmalloc(sizeof *b);
    book_init(b, s->micro_batches, stage_n_slots(stages[0]), s->n_chunks > 1 ? stage_n_slots(stages[1]) : 0);
    e->book = b;
    e->wq = xmalloc((size_t)2 * s->micro_batches * sizeof(int));
    e->ran = xcalloc((size_t)2 * s->micro_batches, 1);
    e->step_loss = xcalloc((size_t)s->micro_batches, sizeof(ModelLoss));
}

void pipe_exec_free(PipeExec *e)
{
    if (e->book) book_free(e->book);
    free(e->book);
    free(e->wq);
    free(e->ran);
    free(e->step_loss);
    memset(e, 0, sizeof *e);
}

void pipe_exec_begin(PipeExec *e, const int32_t *const *windows, ModelLoss *losses)
{
    Book *b = book_of(e);
    int C = b->C, cap0 = b->cap[0], cap1 = b->cap[1];
    book_free(b);
    book_init(b, C, cap0, cap1);
    e->pc = 0;
    e->wq_head = e->wq_tail = 0;
    e->done = 0;
    e->waiting = 0;
    memset(e->ran, 0, (size_t)2 * C);
    e->windows = windows;
    e->losses = losses;
}

/* After a chunk's F: DualPipeV's turn, where the next stage is our other chunk (a copy). */
static void f_done(PipeExec *e, int mb, int chunk)
{
    Book *b = book_of(e);
    e->ran[chunk * e->s->micro_batches + mb] = 1;
    int next = local_neighbour(e->s, e->rank, mb, chunk, +1);
    if (next >= 0) {
        Model *st = e->stage[chunk], *to = e->stage[next];
        stage_copy_io(st, stage_input(to, book_slot(b, next, mb)), stage_output(st, book_slot(b, chunk, mb)));
    }
}

/* End of the list: each chunk's losses in one read; the last stage's main and MTP losses and
 * every stage's balance share into losses[mb], for the micro-batches the chunk ran. */
static void read_losses(PipeExec *e)
{
    const int C = e->s->micro_batches;
    for (int c = 0; c < e->s->n_chunks; c++) {
        const int last = sched_stage_of(e->s, e->rank, c) == e->s->n_stages - 1;
        stage_read_losses(e->stage[c], C, e->step_loss);
        for (int mb = 0; mb < C; mb++) {
            if (!e->ran[c * C + mb]) continue;
            ModelLoss *out = &e->losses[mb];
            if (last) {
                out->main = e->step_loss[mb].main;
                memcpy(out->mtp, e->step_loss[mb].mtp, sizeof out->mtp);
            }
            out->balance += e->step_loss[mb].balance;
        }
    }
}

/* After a chunk's B: its W queued (when not fused), and the turn's copy back. */
static void b_done(PipeExec *e, int mb, int chunk, int fused)
{
    Book *b = book_of(e);
    if (!fused) {
        CHECK(e->wq_tail < 2 * e->s->micro_batches);
        e->wq[e->wq_tail++] = mb * 2 + chunk;
    }
    int prev = local_neighbour(e->s, e->rank, mb, chunk, -1);
    if (prev >= 0) {
        Model *st = e->stage[chunk], *to = e->stage[prev];
        stage_copy_io(st, stage_output_grad(to, book_slot(b, prev, mb)), stage_input_grad(st, book_slot(b, chunk, mb)));
    }
}

/* One phase of pass p (its previous exchange waited first), as a span; an exchange it posts
 * opens a span on the pass's lane track until its wait. */
static void run_phase(PipeExec *e, StagePass *p, int chunk)
{
    const int f = p->kind == STAGE_PASS_F, lane = f ? TRACE_EP_LANE_F : TRACE_EP_LANE_B;
    if (p->posted) {
        stage_pass_wait(p);
        trace_end(e->trace, lane);
    }
    trace_begin_phase(e->trace, TRACE_COMPUTE, stage_pass_next(p), f ? 'F' : 'B', p->mb, chunk);
    int posted = stage_pass_run(p);
    trace_end(e->trace, TRACE_COMPUTE);
    if (posted) trace_begin(e->trace, lane, p->exchange, p->mb, chunk);
}

/* F and/or B passes. Two passes on different chunks ping-pong (DESIGN 4): the F's phases until
 * one posts, then the B's until one posts, and back, so each exchange is in flight while the
 * other pass computes. On one chunk (they would share the stage's scratch) they run in turn. */
static void run_passes(PipeExec *e, StagePass *ps, const int *chunks, int n)
{
    const int pingpong = n == 2 && chunks[0] != chunks[1];
    for (int i = 0; i < n; i++) {
        while (!ps[i].done) {
            run_phase(e, &ps[i], chunks[i]);
            if (pingpong && !ps[1 - i].done) run_phase(e, &ps[1 - i], chunks[1 - i]);
        }
    }
}

static void run_w(PipeExec *e, int mb, int chunk)
{
    if (e->wq_head == e->wq_tail) BUG("pipeline: rank %d: W of micro-batch %d with no B waiting", e->rank, mb);
    int item = e->wq[e->wq_head++];
    if (item != mb * 2 + chunk)
        BUG("pipeline: rank %d: W names micro-batch %d chunk %d, the FIFO's head is micro-batch %d chunk %d",
            e->rank, mb, chunk, item / 2, item % 2);
    stage_backward_weight(e->stage[chunk], book_slot(book_of(e), chunk, mb));
}

static int link_track(const PipeExec *e, int peer) { return peer < e->rank ? TRACE_PP_PREV : TRACE_PP_NEXT; }

/* A receive: 0 if it has not arrived; else checks the header and returns 1. Its spans open at
 * the first try and close at the arrival. */
static int run_recv(PipeExec *e, const SchedInstr *in, int kind)
{
    if (!e->waiting) {
        trace_begin(e->trace, TRACE_COMPUTE, kind == PIPE_ACT ? "RECV F" : "RECV B", in->mb, in->chunk);
        trace_begin(e->trace, link_track(e, in->peer), kind == PIPE_ACT ? "recv F" : "recv B", in->mb, in->chunk);
        e->waiting = 1;
    }
    Model *st = e->stage[in->chunk];
    Book *b = book_of(e);
    const int stage = sched_stage_of(e->s, e->rank, in->chunk);
    const int from = kind == PIPE_ACT ? stage - 1 : stage + 1;
    int slot = kind == PIPE_ACT ? book_take(b, in->chunk, in->mb) : book_slot(b, in->chunk, in->mb);
    void *buf = kind == PIPE_ACT ? (void *)stage_input(st, slot) : (void *)stage_output_grad(st, slot);
    PipeHeader got;
    if (!e->link->recv(e->link, in->peer, kind, &got, buf, stage_io_bytes(st))) {
        if (kind == PIPE_ACT) book_give(b, in->chunk, in->mb);   /* nothing changed */
        return 0;
    }
    if (got.kind != kind || got.mb != in->mb || got.stage != from)
        BUG("pipeline: rank %d expected %s of micro-batch %d from stage %d (rank %d), got %s of micro-batch %d "
            "from stage %d", e->rank, kind == PIPE_ACT ? "activations" : "gradients", in->mb, from, in->peer,
            got.kind == PIPE_ACT ? "activations" : "gradients", got.mb, got.stage);
    trace_end(e->trace, link_track(e, in->peer));
    trace_end(e->trace, TRACE_COMPUTE);
    e->waiting = 0;
    return 1;
}

static void run_send(PipeExec *e, const SchedInstr *in, int kind)
{
    Model *st = e->stage[in->chunk];
    int slot = book_slot(book_of(e), in->chunk, in->mb);
    PipeHeader h = { kind, in->mb, sched_stage_of(e->s, e->rank, in->chunk) };
    const void *buf = kind == PIPE_ACT ? (const void *)stage_output(st, slot)
                                       : (const void *)stage_input_grad(st, slot);
    trace_begin(e->trace, TRACE_COMPUTE, kind == PIPE_ACT ? "SEND F" : "SEND B", in->mb, in->chunk);
    trace_instant(e->trace, link_track(e, in->peer), kind == PIPE_ACT ? "send F" : "send B", in->mb, in->chunk);
    e->link->send(e->link, in->peer, &h, buf, stage_io_bytes(st));
    trace_end(e->trace, TRACE_COMPUTE);
}

/* F, B, W or FB, each a span on the compute track holding its phases' spans. */
static void run_compute(PipeExec *e, const SchedInstr *in)
{
    Trace *t = e->trace;
    const int op = in->op, has_f = op == SOP_F || op == SOP_FB, has_b = op == SOP_B || op == SOP_FB;
    const int bm = op == SOP_FB ? in->mb_b : in->mb, bc = op == SOP_FB ? in->chunk_b : in->chunk;
    Book *b = book_of(e);
    if (op == SOP_W) {
        trace_begin_phase(t, TRACE_COMPUTE, "W", 'W', in->mb, in->chunk);
        run_w(e, in->mb, in->chunk);
        trace_end(t, TRACE_COMPUTE);
        return;
    }
    if (op == SOP_FB) trace_begin(t, TRACE_COMPUTE, "FB", in->mb, in->chunk);
    else trace_begin_phase(t, TRACE_COMPUTE, op == SOP_F ? "F" : "B", op == SOP_F ? 'F' : 'B', bm, bc);
    StagePass ps[2];
    int chunks[2], n = 0;
    if (has_f) {
        stage_pass_begin(&ps[n], e->stage[in->chunk], STAGE_PASS_F, book_slot(b, in->chunk, in->mb), in->mb,
                         e->windows[in->mb]);
        chunks[n++] = in->chunk;
    }
    if (has_b) {
        stage_pass_begin(&ps[n], e->stage[bc], in->fused ? STAGE_PASS_BW : STAGE_PASS_B, book_slot(b, bc, bm), bm,
                         NULL);
        chunks[n++] = bc;
    }
    run_passes(e, ps, chunks, n);
    if (has_f) f_done(e, in->mb, in->chunk);
    if (has_b) b_done(e, bm, bc, in->fused);
    trace_end(t, TRACE_COMPUTE);
}

int pipe_exec_step(PipeExec *e)
{
    const SchedList *l = &e->s->rank[e->rank];
    Book *b = book_of(e);
    if (e->pc == l->n) {
        book_flush(b, NULL);
        if (!e->done) read_losses(e);
        e->done = 1;
        return PIPE_DONE;
    }
    const SchedInstr *in = &l->ins[e->pc];
    book_flush(b, in);
    switch ((SchedOp)in->op) {
    case SOP_RECV_F:
        if (!run_recv(e, in, PIPE_ACT)) return PIPE_BLOCKED;
        break;
    case SOP_RECV_B:
        if (!run_recv(e, in, PIPE_GRAD)) return PIPE_BLOCKED;
        break;
    case SOP_SEND_F: run_send(e, in, PIPE_ACT); break;
    case SOP_SEND_B: run_send(e, in, PIPE_GRAD); break;
    case SOP_F:
    case SOP_FB:
    case SOP_B:
    case SOP_W:
        book_effects(b, e->s, e->rank, in, 0);
        run_compute(e, in);
        book_effects(b, e->s, e->rank, in, 1);
        break;
    default: BUG("pipeline: instruction %d has op %d", e->pc, in->op);
    }
    e->pc++;
    return PIPE_RAN;
}

/* ---- in-memory mailboxes -------------------------------------------------------------------- */

typedef struct Msg {
    PipeHeader h;
    size_t bytes;
    void *data;                 /* host copy of the payload */
    struct Msg *next;
} Msg;

typedef struct BoxEnd {
    PipeMailbox *box;
    int rank;
} BoxEnd;

struct PipeMailbox {
    int pp;
    Ops *o;
    Msg **head, **tail;         /* [(src * pp + dst) * 2 + kind] FIFO */
    PipeLink *links;            /* [pp] */
    BoxEnd *ends;               /* [pp] each link's state */
    int pending;
};

static void box_send(PipeLink *l, int peer, const PipeHeader *h, const void *buf, size_t bytes)
{
    const BoxEnd *end = l->state;
    PipeMailbox *mb = end->box;
    CHECK(peer >= 0 && peer < mb->pp && peer != end->rank && (h->kind == PIPE_ACT || h->kind == PIPE_GRAD));
    Msg *m = xcalloc(1, sizeof *m);
    m->h = *h;
    m->bytes = bytes;
    m->data = xmalloc(bytes ? bytes : 1);
    mb->o->download(mb->o, m->data, buf, bytes);
    int q = (end->rank * mb->pp + peer) * 2 + h->kind;
    if (mb->tail[q]) mb->tail[q]->next = m;
    else mb->head[q] = m;
    mb->tail[q] = m;
    mb->pending++;
}

static int box_recv(PipeLink *l, int peer, int kind, PipeHeader *got, void *buf, size_t bytes)
{
    const BoxEnd *end = l->state;
    PipeMailbox *mb = end->box;
    CHECK(peer >= 0 && peer < mb->pp && peer != end->rank);
    int q = (peer * mb->pp + end->rank) * 2 + kind;
    Msg *m = mb->head[q];
    if (!m) return 0;
    if (m->bytes != bytes) BUG("pipeline: message of %zu bytes where %zu were expected", m->bytes, bytes);
    mb->head[q] = m->next;
    if (!m->next) mb->tail[q] = NULL;
    *got = m->h;
    mb->o->upload(mb->o, buf, m->data, bytes);
    free(m->data);
    free(m);
    mb->pending--;
    return 1;
}

static void box_finish(PipeLink *l) { (void)l; }

PipeMailbox *pipe_mailbox_create(int pp, Ops *ops)
{
    PipeMailbox *mb = xcalloc(1, sizeof *mb);
    mb->pp = pp;
    mb->o = ops;
    mb->head = xcalloc((size_t)pp * pp * 2, sizeof(Msg *));
    mb->tail = xcalloc((size_t)pp * pp * 2, sizeof(Msg *));
    mb->links = xcalloc((size_t)pp, sizeof(PipeLink));
    mb->ends = xcalloc((size_t)pp, sizeof(BoxEnd));
    for (int r = 0; r < pp; r++) {
        mb->ends[r].box = mb;
        mb->ends[r].rank = r;
        mb->links[r].send = box_send;
        mb->links[r].recv = box_recv;
        mb->links[r].finish = box_finish;
        mb->links[r].state = &mb->ends[r];
    }
    return mb;
}

PipeLink *pipe_mailbox_link(PipeMailbox *mb, int rank)
{
    CHECK(rank >= 0 && rank < mb->pp);
    return &mb->links[rank];
}

int pipe_mailbox_pending(const PipeMailbox *mb) { return mb->pending; }

void pipe_mailbox_free(PipeMailbox *mb)
{
    if (!mb) return;
    for (int q = 0; q < mb->pp * mb->pp * 2; q++)
        for (Msg *m = mb->head[q], *next; m; m = next) {
            next = m->next;
            free(m->data);
            free(m);
        }
    free(mb->head);
    free(mb->tail);
    free(mb->links);
    free(mb->ends);
    free(mb);
}
