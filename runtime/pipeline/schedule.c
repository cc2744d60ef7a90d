/* runtime/pipeline/schedule.c - the four schedules' per-rank instruction lists and the
 * layout rules (schedule.h). Each list is built in two passes: the compute order (F, B, W,
 * FB) written out from the schedule's definition, then the transfers, placed by the stage
 * map: a RECV just before the compute that needs another rank's output, a SEND just after
 * the compute that produced it.
 *
 * Not here: the checker and the simulator (schedule_sim.c).
 * References: DeepSeek-V3 TR 3.2.1 and Figure 5; the step sequence of deepseek-ai/DualPipe
 * (dualpipe.py, dualpipev.py: facts only, no code); ZB-H1 (Qi et al. 2023, section 3.1).
 */
#include "runtime/pipeline/schedule.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/common.h"

static const char *const KIND_NAMES[SCHED_KIND_COUNT] = { "1f1b", "zb1p", "dualpipe", "dualpipev" };
static const char *const OP_NAMES[SOP_COUNT] = {
    "F", "B", "W", "FB", "SEND_F", "RECV_F", "SEND_B", "RECV_B"
};

const char *sched_kind_name(SchedKind k) { return (unsigned)k < SCHED_KIND_COUNT ? KIND_NAMES[k] : "?"; }
const char *sched_op_name(SchedOp op) { return (unsigned)op < SOP_COUNT ? OP_NAMES[op] : "?"; }

int sched_kind_parse(const char *name, SchedKind *k)
{
    for (int i = 0; i < SCHED_KIND_COUNT; i++)
        if (!strcmp(name, KIND_NAMES[i])) {
            *k = (SchedKind)i;
            return 0;
        }
    return -1;
}

int sched_stages(SchedKind kind, int pp) { return kind == SCHED_DUALPIPEV ? 2 * pp : pp; }

static int fail(char *err, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, n, fmt, ap);
    va_end(ap);
    return -1;
}

/* DualPipe asserts pp even, C even and C >= 2 pp (its steps 4 count C/2 - pp + h + 1 pairs,
 * at least one per rank); DualPipeV asserts only C >= 2 pp (step 4: C - 2 pp + r + 1). */
int sched_validate(SchedKind kind, int pp, int C, int n_layers, char *err, size_t n)
{
    const char *name = sched_kind_name(kind);
    const int S = sched_stages(kind, pp);
    if ((unsigned)kind >= SCHED_KIND_COUNT) return fail(err, n, "unknown schedule %d", (int)kind);
    if (pp < 1) return fail(err, n, "'parallel.pp' = %d must be at least 1", pp);
    if (C < 1) return fail(err, n, "'train.grad_accum' = %d must be at least 1", C);
    if (kind == SCHED_DUALPIPE && pp % 2)
        return fail(err, n, "'parallel.pp' = %d must be even for schedule '%s'", pp, name);
    if ((kind == SCHED_DUALPIPE || kind == SCHED_DUALPIPEV) && C < 2 * pp)
        return fail(err, n, "'train.grad_accum' = %d micro-batches is below 2 * 'parallel.pp' = %d, "
                    "the least schedule '%s' runs with", C, 2 * pp, name);
    if (kind == SCHED_DUALPIPE && C % 2)
        return fail(err, n, "'train.grad_accum' = %d must be even for schedule 'dualpipe' "
                    "(half the micro-batches enter from each end)", C);
    if (n_layers >= 0 && n_layers < S)
        return fail(err, n, "'model.num_hidden_layers' = %d cannot fill %d pipeline stages (schedule "
                    "'%s', 'parallel.pp' = %d; every stage needs a layer)", n_layers, S, name, pp);
    return 0;
}

int sched_stage_of(const Schedule *s, int rank, int chunk)
{
    if (chunk == 0) return rank;
    return s->kind == SCHED_DUALPIPEV ? 2 * s->pp - 1 - rank : s->pp - 1 - rank;
}

/* DualPipe: the first C/2 micro-batches run down (stage s on rank s, chunk 0), the rest up
 * (stage s on rank pp-1-s, chunk 1). DualPipeV: stages 0 .. pp-1 down on chunk 0, the rest
 * back up on chunk 1. */
void sched_owner(const Schedule *s, int mb, int stage, int *rank, int *chunk)
{
    const int pp = s->pp;
    if (s->kind == SCHED_DUALPIPE && mb >= s->micro_batches / 2) {
        *rank = pp - 1 - stage;
        *chunk = 1;
    } else if (s->kind == SCHED_DUALPIPEV && stage >= pp) {
        *rank = 2 * pp - 1 - stage;
        *chunk = 1;
    } else {
        *rank = stage;
        *chunk = 0;
    }
}

static void push(SchedList *l, SchedInstr in)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        SchedInstr *p = realloc(l->ins, (size_t)l->cap * sizeof *p);
        if (!p) DIE("out of memory growing a schedule list to %d instructions", l->cap);
        l->ins = p;
    }
    l->ins[l->n++] = in;
}

static SchedInstr mk(SchedOp op, int mb, int chunk)
{
    SchedInstr in;
    memset(&in, 0, sizeof in);
    in.op = (unsigned char)op;
    in.mb = mb;
    in.chunk = (unsigned char)chunk;
    in.peer = -1;
    return in;
}

/* ---- 1F1B and ZB1P ------------------------------------------------------------------------ */

/* 1F1B (PipeDream-flush): rank r runs min(pp-1-r, C) warm-up forwards, then one forward and
 * one backward per micro-batch, then the remaining backwards; every backward fused, its
 * gradient sent after its W. ZB1P (ZB-H1) keeps that order and 1F1B's activation bound but
 * splits each backward: B sends its input gradient at once, so the chain of backwards up the
 * pipeline moves at B - W per stage, and rank r runs W(k - r) after B(k): the later ranks,
 * whose backwards the chain waits for, put their W off until the end, where the earlier ranks
 * are still busy with theirs. Micro-batches between F and W stay <= pp, as in 1F1B. */
static void build_1f1b(SchedList *l, SchedKind kind, int pp, int r, int C)
{
    const int zb = kind == SCHED_ZB1P;
    const int warm = pp - 1 - r < C ? pp - 1 - r : C;
    const int lag = r < C ? r : C;   /* ZB1P: W of micro-batch k - lag follows B(k) */
    for (int k = 0; k < warm; k++) push(l, mk(SOP_F, k, 0));
    for (int k = 0; k < C; k++) {
        if (k + warm < C) push(l, mk(SOP_F, k + warm, 0));
        SchedInstr b = mk(SOP_B, k, 0);
        b.fused = (unsigned char)!zb;
        push(l, b);
        if (zb && k >= lag) push(l, mk(SOP_W, k - lag, 0));
    }
    for (int k = C - lag; zb && k < C; k++) push(l, mk(SOP_W, k, 0));
}

/* ---- DualPipe and DualPipeV --------------------------------------------------------------- */

/* The state of one rank's DualPipe list while it is written: per chunk, the next micro-batch
 * to run forward and backward, and the FIFO of micro-batch chunks whose W is deferred. */
typedef struct DualState {
    SchedList *l;
    int flip;            /* phase p runs chunk p ^ flip (DualPipe's second half of the ranks) */
    int mb_base[2];      /* first micro-batch of each chunk */
    int next_f[2], next_b[2];
    int *wq_mb, *wq_chunk, wq_head, wq_tail;   /* [2C] each: every B of both chunks */
} DualState;

static void dual_f(DualState *d, int phase)
{
    int c = phase ^ d->flip;
    push(d->l, mk(SOP_F, d->mb_base[c] + d->next_f[c]++, c));
}

/* B of phase; zb: W deferred to the FIFO (DualPipe's weight-gradient store), else fused. */
static void dual_b(DualState *d, int phase, int zb)
{
    int c = phase ^ d->flip;
    SchedInstr in = mk(SOP_B, d->mb_base[c] + d->next_b[c]++, c);
    in.fused = (unsigned char)!zb;
    if (zb) {
        d->wq_mb[d->wq_tail] = in.mb;
        d->wq_chunk[d->wq_tail++] = c;
    }
    push(d->l, in);
}

static void dual_w(DualState *d)
{
    CHECK(d->wq_head < d->wq_tail);
    push(d->l, mk(SOP_W, d->wq_mb[d->wq_head], d->wq_chunk[d->wq_head]));
    d->wq_head++;
}

/* F of phase pf overlapped with the (fused) B of phase pb. */
static void dual_fb(DualState *d, int pf, int pb)
{
    int cf = pf ^ d->flip, cb = pb ^ d->flip;
    SchedInstr in = mk(SOP_FB, d->mb_base[cf] + d->next_f[cf]++, cf);
    in.chunk_b = (unsigned char)cb;
    in.mb_b = d->mb_base[cb] + d->next_b[cb]++;
    in.fused = 1;
    push(d->l, in);
}

/* The eight steps of DualPipe (n = pp/2 rank pairs, h = min(r, pp-1-r), per-direction
 * micro-batches Ch = C/2, middle = the two centre ranks) and of DualPipeV (n = pp, h = r,
 * Ch = C, middle = the last rank). Phase 0 is the chunk in which the rank is nearer the
 * pipe's entry, phase 1 the other. */
static void build_dual(DualState *d, int n, int h, int Ch, int middle)
{
    /* Step 1: nF0 - warm-up forwards of the near chunk, deeper for ranks nearer the entry */
    for (int i = 0; i < 2 * (n - h - 1); i++) dual_f(d, 0);
    /* Step 2: nF0F1 - the far chunk's first forwards start arriving; alternate */
    for (int i = 0; i < h + 1; i++) {
        dual_f(d, 0);
        dual_f(d, 1);
    }
    /* Step 3: nB1W1F1 - first backwards of the far chunk, W run at once where the next
     * forward's input is still on its way (zero bubble) */
    for (int i = 0; i < n - h - 1; i++) {
        dual_b(d, 1, 1);
        dual_w(d);
        dual_f(d, 1);
    }
    /* Step 4 (main): nF0B1F1B0 - overlapped pairs; the middle ranks run their first pair
     * unoverlapped (F0 then B1) so that the F1 they owe the other middle rank leaves sooner */
    for (int i = 0; i < Ch - 2 * n + h + 1; i++) {
        if (i == 0 && middle) {
            dual_f(d, 0);
            dual_b(d, 1, 0);
        } else {
            dual_fb(d, 0, 1);
        }
        dual_fb(d, 1, 0);
    }
    /* Step 5: nB1F1B0 - the near chunk's forwards are done; B1 alone, then F1 with B0 */
    for (int i = 0; i < n - h - 1; i++) {
        dual_b(d, 1, 0);
        dual_fb(d, 1, 0);
    }
    /* Step 6: nB1B0 - backwards of both chunks; the second half defer their W */
    int zb = 0;
    for (int i = 0; i < h + 1; i++) {
        if (i == (h + 1) / 2 && h % 2 == 1) zb = 1;
        dual_b(d, 1, zb);
        if (i == (h + 1) / 2 && h % 2 == 0) zb = 1;
        dual_b(d, 0, zb);
    }
    /* Step 7: nWB0 - a deferred W before each remaining B0 (whose W is deferred too) */
    for (int i = 0; i < n - h - 1; i++) {
        dual_w(d);
        dual_b(d, 0, 1);
    }
    /* Step 8: nW - the W left in the FIFO */
    for (int i = 0; i < h + 1; i++) dual_w(d);
    CHECK(d->wq_head == d->wq_tail);
}

static void build_dualpipe(SchedList *l, SchedKind kind, int pp, int r, int C)
{
    DualState *d = xcalloc(1, sizeof *d);
    d->l = l;
    d->wq_mb = xcalloc(2 * (size_t)C, sizeof(int));
    d->wq_chunk = xcalloc(2 * (size_t)C, sizeof(int));
    if (kind == SCHED_DUALPIPE) {
        d->flip = r >= pp / 2;
        d->mb_base[1] = C / 2;
        build_dual(d, pp / 2, r < pp - 1 - r ? r : pp - 1 - r, C / 2, r == pp / 2 - 1 || r == pp / 2);
    } else {
        build_dual(d, pp, r, C, r == pp - 1);
    }
    free(d->wq_mb);
    free(d->wq_chunk);
    free(d);
}

/* ---- transfers ---------------------------------------------------------------------------- */

/* The rank holding the neighbour of (mb, stage) in direction dir (+1 next, -1 previous), or
 * -1 if there is none or it is this rank. */
static int peer_of(const Schedule *s, int rank, int mb, int stage, int dir)
{
    int t = stage + dir, pr, pc;
    if (t < 0 || t >= s->n_stages) return -1;
    sched_owner(s, mb, t, &pr, &pc);
    return pr == rank ? -1 : pr;
}

static void add_comm(SchedList *out, SchedOp op, int mb, int chunk, int peer)
{
    if (peer < 0) return;
    SchedInstr in = mk(op, mb, chunk);
    in.peer = peer;
    push(out, in);
}

static void add_transfers(const Schedule *s, int r, const SchedList *in, SchedList *out)
{
    for (int i = 0; i < in->n; i++) {
        const SchedInstr *c = &in->ins[i];
        int fm = c->mb, fc = c->chunk, bm = c->mb, bc = c->chunk;
        if (c->op == SOP_FB) {
            bm = c->mb_b;
            bc = c->chunk_b;
        }
        const int fs = sched_stage_of(s, r, fc), bs = sched_stage_of(s, r, bc);
        const int has_f = c->op == SOP_F || c->op == SOP_FB, has_b = c->op == SOP_B || c->op == SOP_FB;
        if (has_f) add_comm(out, SOP_RECV_F, fm, fc, peer_of(s, r, fm, fs, -1));
        if (has_b) add_comm(out, SOP_RECV_B, bm, bc, peer_of(s, r, bm, bs, +1));
        push(out, *c);
        if (has_f) add_comm(out, SOP_SEND_F, fm, fc, peer_of(s, r, fm, fs, +1));
        if (has_b) add_comm(out, SOP_SEND_B, bm, bc, peer_of(s, r, bm, bs, -1));
    }
}

void sched_build(Schedule *s, SchedKind kind, int pp, int C)
{
    char err[SCHED_ERR_MAX];
    if (sched_validate(kind, pp, C, -1, err, sizeof err)) BUG("sched_build: %s", err);
    memset(s, 0, sizeof *s);
    s->kind = kind;
    s->pp = pp;
    s->micro_batches = C;
    s->n_stages = sched_stages(kind, pp);
    s->n_chunks = kind == SCHED_DUALPIPE || kind == SCHED_DUALPIPEV ? 2 : 1;
    s->rank = xcalloc((size_t)pp, sizeof *s->rank);
    for (int r = 0; r < pp; r++) {
        SchedList tmp = { 0, 0, NULL };
        if (s->n_chunks == 1) build_1f1b(&tmp, kind, pp, r, C);
        else build_dualpipe(&tmp, kind, pp, r, C);
        add_transfers(s, r, &tmp, &s->rank[r]);
        free(tmp.ins);
    }
}

void sched_free(Schedule *s)
{
    for (int r = 0; s->rank && r < s->pp; r++) free(s->rank[r].ins);
    free(s->rank);
    memset(s, 0, sizeof *s);
}
