/* runtime/pipeline/schedule_sim.c - run a schedule's lists on an idealised machine: the
 * checker (order only) and the simulator (times) share one engine.
 *
 * The engine advances every rank through its list in order, round-robin: compute and SEND
 * never block, a RECV blocks until the matching SEND on its link has run. With times, a rank's
 * clock moves by each compute's cost and a RECV waits for the message's arrival (its send time
 * + xfer), so every instruction starts at the earliest moment its list order and its inputs
 * allow; the result does not depend on the round-robin order. If no rank can move while some
 * have instructions left, the lists deadlock.
 *
 * Not here: building lists (schedule.c); real transfers or compute (runtime/executor.c).
 */
#include "runtime/pipeline/schedule.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/common.h"

typedef struct Msg { int mb, chunk; double at; } Msg;
typedef struct Link { int n, head; Msg *m; } Link;   /* messages in send order */

/* Per (micro-batch, stage): what has happened so far. */
enum { DONE_F = 1, DONE_B = 2, DONE_W = 4, IN_F = 8, IN_B = 16 };

typedef struct Engine {
    const Schedule *s;
    const SchedCost *cost;   /* NULL: order only */
    double xfer;
    int pp, S, C;
    Link *link;              /* [(src * pp + dst) * 2 + (0 F, 1 B)] */
    unsigned char *state;    /* [mb * S + stage] */
    int *pc, *in_flight;
    double *t;
    SchedSim *sim;           /* NULL: no timing record */
    char *err;
    size_t n_err;
} Engine;

static int efail(Engine *e, int r, const SchedInstr *in, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int efail(Engine *e, int r, const SchedInstr *in, const char *fmt, ...)
{
    char what[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    snprintf(e->err, e->n_err, "%s pp %d C %d: rank %d instruction %d (%s mb %d chunk %d): %s",
             sched_kind_name(e->s->kind), e->pp, e->C, r, e->pc[r], sched_op_name((SchedOp)in->op),
             in->mb, in->chunk, what);
    return -1;
}

static unsigned char *st(Engine *e, int mb, int stage) { return &e->state[(size_t)mb * e->S + stage]; }

/* Is (mb, chunk) at rank r a valid pair, and which stage is it? -1 if not. */
static int stage_at(Engine *e, int r, int mb, int chunk)
{
    if (mb < 0 || mb >= e->C || chunk >= e->s->n_chunks) return -1;
    int stage = sched_stage_of(e->s, r, chunk), orank, ochunk;
    sched_owner(e->s, mb, stage, &orank, &ochunk);
    return orank == r && ochunk == chunk ? stage : -1;
}

static int do_forward(Engine *e, int r, const SchedInstr *in, int mb, int chunk)
{
    int s = stage_at(e, r, mb, chunk), pr, pc;
    if (s < 0) return efail(e, r, in, "micro-batch %d chunk %d does not run on this rank", mb, chunk);
    if (*st(e, mb, s) & DONE_F) return efail(e, r, in, "second F of micro-batch %d stage %d", mb, s);
    if (s > 0) {
        sched_owner(e->s, mb, s - 1, &pr, &pc);
        int ready = pr == r ? (*st(e, mb, s - 1) & DONE_F) : (*st(e, mb, s) & IN_F);
        if (!ready)
            return efail(e, r, in, "F of micro-batch %d stage %d before its input from stage %d", mb, s, s - 1);
    }
    *st(e, mb, s) |= DONE_F;
    return 0;
}

static int do_backward(Engine *e, int r, const SchedInstr *in, int mb, int chunk, int fused)
{
    int s = stage_at(e, r, mb, chunk), pr, pc;
    if (s < 0) return efail(e, r, in, "micro-batch %d chunk %d does not run on this rank", mb, chunk);
    unsigned char *x = st(e, mb, s);
    if (*x & DONE_B) return efail(e, r, in, "second B of micro-batch %d stage %d", mb, s);
    if (!(*x & DONE_F)) return efail(e, r, in, "B of micro-batch %d stage %d before its F", mb, s);
    if (s < e->S - 1) {
        sched_owner(e->s, mb, s + 1, &pr, &pc);
        int ready = pr == r ? (*st(e, mb, s + 1) & DONE_B) : (*x & IN_B);
        if (!ready)
            return efail(e, r, in, "B of micro-batch %d stage %d before its gradient from stage %d", mb, s,
                         s + 1);
    }
    *x |= DONE_B | (fused ? DONE_W : 0);
    return 0;
}

static int do_weight(Engine *e, int r, const SchedInstr *in)
{
    int s = stage_at(e, r, in->mb, in->chunk);
    if (s < 0) return efail(e, r, in, "micro-batch %d chunk %d does not run on this rank", in->mb, in->chunk);
    unsigned char *x = st(e, in->mb, s);
    if (*x & DONE_W)
        return efail(e, r, in, "second W of micro-batch %d stage %d (or W of a fused B)", in->mb, s);
    if (!(*x & DONE_B)) return efail(e, r, in, "W of micro-batch %d stage %d before its B", in->mb, s);
    *x |= DONE_W;
    return 0;
}

static double compute_cost(const Engine *e, int r, const SchedInstr *in)
{
    if (!e->cost) return 0.0;
    const SchedCost *a = &e->cost[sched_stage_of(e->s, r, in->chunk)];
    switch (in->op) {
    case SOP_F: return a->f + a->comm_f;
    case SOP_B: return (in->fused ? a->b : a->b - a->w) + a->comm_b;
    case SOP_W: return a->w;
    case SOP_FB: {
        const SchedCost *b = &e->cost[sched_stage_of(e->s, r, in->chunk_b)];
        return fmax(a->f + (in->fused ? b->b : b->b - b->w), a->comm_f + b->comm_b);
    }
    default: return 0.0;
    }
}

/* SEND: the payload exists and goes to the neighbour stage's rank; queue it. */
static int do_send(Engine *e, int r, const SchedInstr *in)
{
    const int fwd = in->op == SOP_SEND_F;
    int s = stage_at(e, r, in->mb, in->chunk), pr, pc;
    if (s < 0) return efail(e, r, in, "micro-batch %d chunk %d does not run on this rank", in->mb, in->chunk);
    if (!(*st(e, in->mb, s) & (fwd ? DONE_F : DONE_B)))
        return efail(e, r, in, "sends micro-batch %d stage %d before computing it", in->mb, s);
    int t = s + (fwd ? 1 : -1);
    if (t < 0 || t >= e->S) return efail(e, r, in, "stage %d has no neighbour that way", s);
    sched_owner(e->s, in->mb, t, &pr, &pc);
    if (pr != in->peer || pr == r)
        return efail(e, r, in, "sends to rank %d, stage %d is on rank %d", in->peer, t, pr);
    Link *l = &e->link[((size_t)r * e->pp + pr) * 2 + !fwd];
    l->m[l->n++] = (Msg){ in->mb, in->chunk, e->t[r] + e->xfer };
    return 0;
}

/* RECV: 1 if its message has not been sent yet (the rank blocks), 0 done, -1 fault. */
static int do_recv(Engine *e, int r, const SchedInstr *in)
{
    const int fwd = in->op == SOP_RECV_F;
    if (in->peer < 0 || in->peer >= e->pp || in->peer == r)
        return efail(e, r, in, "receives from rank %d", in->peer);
    Link *l = &e->link[((size_t)in->peer * e->pp + r) * 2 + !fwd];
    if (l->head == l->n) return 1;
    const Msg *m = &l->m[l->head++];
    int s = stage_at(e, r, in->mb, in->chunk);
    if (s < 0) return efail(e, r, in, "micro-batch %d chunk %d does not run on this rank", in->mb, in->chunk);
    int from = sched_stage_of(e->s, in->peer, m->chunk);
    if (m->mb != in->mb || from != s + (fwd ? -1 : 1))
        return efail(e, r, in, "expects micro-batch %d of stage %d, the link from rank %d delivers "
                     "micro-batch %d of stage %d", in->mb, s + (fwd ? -1 : 1), in->peer, m->mb, from);
    *st(e, in->mb, s) |= fwd ? IN_F : IN_B;
    if (m->at > e->t[r]) e->t[r] = m->at;
    return 0;
}

/* Run one instruction: 0 done, 1 blocked, -1 fault. */
static int step(Engine *e, int r, const SchedInstr *in)
{
    int rc = 0;
    switch (in->op) {
    case SOP_F: rc = do_forward(e, r, in, in->mb, in->chunk); break;
    case SOP_B: rc = do_backward(e, r, in, in->mb, in->chunk, in->fused); break;
    case SOP_W: rc = do_weight(e, r, in); break;
    case SOP_FB:
        rc = do_forward(e, r, in, in->mb, in->chunk);
        if (!rc) rc = do_backward(e, r, in, in->mb_b, in->chunk_b, in->fused);
        break;
    case SOP_SEND_F: case SOP_SEND_B: rc = do_send(e, r, in); break;
    case SOP_RECV_F: case SOP_RECV_B: return do_recv(e, r, in);
    default: return efail(e, r, in, "unknown op %d", in->op);
    }
    if (rc) return rc;
    if (in->op == SOP_F || in->op == SOP_FB) {
        e->in_flight[r]++;
        if (e->sim && e->in_flight[r] > e->sim->peak_in_flight[r]) e->sim->peak_in_flight[r] = e->in_flight[r];
    }
    if (in->op == SOP_B || in->op == SOP_FB) e->in_flight[r]--;
    double c = compute_cost(e, r, in);
    if (e->sim) e->sim->busy[r] += c;
    e->t[r] += c;
    return 0;
}

static void engine_init(Engine *e, const Schedule *s, const SchedCost *cost, double xfer, SchedSim *sim)
{
    memset(e, 0, sizeof *e);
    e->s = s;
    e->cost = cost;
    e->xfer = xfer;
    e->pp = s->pp;
    e->S = s->n_stages;
    e->C = s->micro_batches;
    e->sim = sim;
    e->link = xcalloc((size_t)e->pp * e->pp * 2, sizeof(Link));
    int *cap = xcalloc((size_t)e->pp * e->pp * 2, sizeof(int));
    for (int r = 0; r < e->pp; r++)
        for (int i = 0; i < s->rank[r].n; i++) {
            const SchedInstr *in = &s->rank[r].ins[i];
            if ((in->op == SOP_SEND_F || in->op == SOP_SEND_B) && in->peer >= 0 && in->peer < e->pp)
                cap[((size_t)r * e->pp + in->peer) * 2 + (in->op == SOP_SEND_B)]++;
        }
    for (int k = 0; k < e->pp * e->pp * 2; k++) e->link[k].m = xcalloc((size_t)cap[k] + 1, sizeof(Msg));
    free(cap);
    e->state = xcalloc((size_t)e->C * e->S, 1);
    e->pc = xcalloc((size_t)e->pp, sizeof(int));
    e->in_flight = xcalloc((size_t)e->pp, sizeof(int));
    e->t = xcalloc((size_t)e->pp, sizeof(double));
}

static void engine_free(Engine *e)
{
    for (int k = 0; k < e->pp * e->pp * 2; k++) free(e->link[k].m);
    free(e->link);
    free(e->state);
    free(e->pc);
    free(e->in_flight);
    free(e->t);
}

/* Names the blocked receives of a deadlock (the first few ranks). */
static int deadlock(Engine *e)
{
    size_t used = (size_t)snprintf(e->err, e->n_err, "%s pp %d C %d: deadlock:", sched_kind_name(e->s->kind),
                                   e->pp, e->C);
    for (int r = 0, shown = 0; r < e->pp && shown < 4 && used < e->n_err; r++) {
        if (e->pc[r] == e->s->rank[r].n) continue;
        const SchedInstr *in = &e->s->rank[r].ins[e->pc[r]];
        used += (size_t)snprintf(e->err + used, e->n_err - used, " rank %d waits in %s mb %d from rank %d;",
                                 r, sched_op_name((SchedOp)in->op), in->mb, in->peer);
        shown++;
    }
    return -1;
}

/* After the run: every (micro-batch, stage) computed F, B and W; no message left unread. */
static int engine_finish(Engine *e)
{
    for (int mb = 0; mb < e->C; mb++)
        for (int s = 0; s < e->S; s++)
            if ((*st(e, mb, s) & (DONE_F | DONE_B | DONE_W)) != (DONE_F | DONE_B | DONE_W)) {
                snprintf(e->err, e->n_err, "%s pp %d C %d: micro-batch %d stage %d misses its%s%s%s",
                         sched_kind_name(e->s->kind), e->pp, e->C, mb, s, *st(e, mb, s) & DONE_F ? "" : " F",
                         *st(e, mb, s) & DONE_B ? "" : " B", *st(e, mb, s) & DONE_W ? "" : " W");
                return -1;
            }
    for (int k = 0; k < e->pp * e->pp * 2; k++)
        if (e->link[k].head != e->link[k].n) {
            snprintf(e->err, e->n_err, "%s pp %d C %d: %d message(s) from rank %d to rank %d (%s) never "
                     "received",
                     sched_kind_name(e->s->kind), e->pp, e->C, e->link[k].n - e->link[k].head,
                     k / 2 / e->pp, k / 2 % e->pp, k % 2 ? "B" : "F");
            return -1;
        }
    return 0;
}

static int engine_run(Engine *e)
{
    int moved = 1, left = 1;
    while (moved && left) {
        moved = left = 0;
        for (int r = 0; r < e->pp; r++) {
            const SchedList *l = &e->s->rank[r];
            while (e->pc[r] < l->n) {
                double t0 = e->t[r];
                int rc = step(e, r, &l->ins[e->pc[r]]);
                if (rc < 0) return -1;
                if (rc > 0) break;
                if (e->sim) {
                    e->sim->start[r][e->pc[r]] = t0;
                    e->sim->end[r][e->pc[r]] = e->t[r];
                }
                e->pc[r]++;
                moved = 1;
            }
            left |= e->pc[r] < l->n;
        }
    }
    return left ? deadlock(e) : engine_finish(e);
}

int sched_check(const Schedule *s, char *err, size_t n)
{
    Engine e;
    engine_init(&e, s, NULL, 0.0, NULL);
    e.err = err;
    e.n_err = n;
    int rc = engine_run(&e);
    engine_free(&e);
    return rc;
}

void sched_simulate(const Schedule *s, const SchedCost *costs, double xfer, SchedSim *sim)
{
    char err[SCHED_ERR_MAX];
    memset(sim, 0, sizeof *sim);
    sim->pp = s->pp;
    sim->busy = xcalloc((size_t)s->pp, sizeof(double));
    sim->idle = xcalloc((size_t)s->pp, sizeof(double));
    sim->peak_in_flight = xcalloc((size_t)s->pp, sizeof(int));
    sim->start = xcalloc((size_t)s->pp, sizeof(double *));
    sim->end = xcalloc((size_t)s->pp, sizeof(double *));
    for (int r = 0; r < s->pp; r++) {
        sim->start[r] = xcalloc((size_t)s->rank[r].n + 1, sizeof(double));
        sim->end[r] = xcalloc((size_t)s->rank[r].n + 1, sizeof(double));
    }
    Engine e;
    engine_init(&e, s, costs, xfer, sim);
    e.err = err;
    e.n_err = sizeof err;
    if (engine_run(&e)) BUG("sched_simulate on unsound lists: %s", err);
    for (int r = 0; r < s->pp; r++) sim->makespan = fmax(sim->makespan, e.t[r]);
    for (int r = 0; r < s->pp; r++) sim->idle[r] = sim->makespan - sim->busy[r];
    engine_free(&e);
}

void sched_sim_free(SchedSim *sim)
{
    for (int r = 0; sim->start && r < sim->pp; r++) {
        free(sim->start[r]);
        free(sim->end[r]);
    }
    free(sim->start);
    free(sim->end);
    free(sim->busy);
    free(sim->idle);
    free(sim->peak_in_flight);
    memset(sim, 0, sizeof *sim);
}

static char glyph(const SchedInstr *in)
{
    static const char up[] = "FBWX";
    if (in->op > SOP_FB) return 0;
    char c = up[in->op];
    return in->chunk ? (char)(c - 'A' + 'a') : c;
}

void sched_print_ascii(const Schedule *s, const SchedSim *sim, int cols, FILE *f)
{
    if (cols < 1 || sim->makespan <= 0) return;
    const double dt = sim->makespan / cols;
    char *row = xcalloc((size_t)cols + 1, 1);
    for (int r = 0; r < s->pp; r++) {
        memset(row, '.', (size_t)cols);
        for (int i = 0; i < s->rank[r].n; i++) {
            char g = glyph(&s->rank[r].ins[i]);
            if (!g) continue;
            /* a column shows the instruction running at its midpoint */
            for (int c = (int)(sim->start[r][i] / dt); c < cols; c++) {
                double mid = (c + 0.5) * dt;
                if (mid >= sim->end[r][i]) break;
                if (mid >= sim->start[r][i]) row[c] = g;
            }
        }
        fprintf(f, "  rank %2d |%s|\n", r, row);
    }
    free(row);
}
