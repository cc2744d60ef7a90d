/* tests/unit/test_schedule.c - pipeline schedules as data (runtime/pipeline/schedule.h):
 * the checker passes every schedule on a grid of layouts and catches corrupted lists; the
 * simulator reproduces SPEC 8's bubble formulas and activation counts; the layout rules give
 * one-line errors naming the numbers; the ASCII timeline draws a hand-worked case.
 *
 * Where the formulas hold (SPEC 8 / TR 3.2.1 notation: F forward chunk, B full backward
 * chunk, W its weight part, F&B an overlapped pair; per-rank idle = makespan - compute):
 *   1F1B       (PP-1)(F+B)            any costs, exposed communication included (F' and B')
 *   ZB1P       (PP-1)(F+B-2W)         when W <= F and W <= B - W (the deferred W fit the
 *                                     cool-down gaps; beyond that a W outlasts its gap)
 *   DualPipe   (PP/2-1)(F&B+B-3W)     when F = B - W and W <= F, F&B = F + B (no overlap
 *   DualPipeV  (S/2-1)(F&B+B-3W)      gain): the assumptions behind the TR's table; other
 *                                     ratios differ (the table printed below shows by how much)
 * with S = 2 pp stages for DualPipeV (SPEC's PP counts stages; pp here counts ranks).
 * Tolerance: every simulated time is a sum of at most n_instr costs that are short decimals,
 * each addition rounding by <= 2^-53 of the makespan, so |sim - formula| <= n_instr * 2^-53 *
 * makespan; we allow 1e-12 * n_instr * makespan (~100x that).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/pipeline/schedule.h"
#include "tests/unit/testing.h"

static const int PPS[] = { 2, 4, 8, 16 };

/* Micro-batch counts on the grid: the least each schedule allows, a few above, odd where
 * allowed. Returns how many were written to out. */
static int micro_batch_grid(SchedKind k, int pp, int *out)
{
    int n = 0;
    if (k == SCHED_DUALPIPE) {
        out[n++] = 2 * pp;
        out[n++] = 2 * pp + 2;
        out[n++] = 4 * pp;
    } else if (k == SCHED_DUALPIPEV) {
        out[n++] = 2 * pp;
        out[n++] = 2 * pp + 1;
        out[n++] = 3 * pp + 1;
    } else {
        out[n++] = 1;
        out[n++] = pp;
        out[n++] = pp + 1;
        out[n++] = 2 * pp;
        out[n++] = 3 * pp + 1;
    }
    return n;
}

static double formula(SchedKind k, int pp, const SchedCost *c)
{
    const double F = c->f + c->comm_f, B = c->b + c->comm_b, W = c->w;
    const double FB = fmax(c->f + c->b, c->comm_f + c->comm_b);
    const double S = sched_stages(k, pp);
    switch (k) {
    case SCHED_1F1B: return (S - 1) * (F + B);
    case SCHED_ZB1P: return (S - 1) * (F + B - 2 * W);
    default: return (S / 2 - 1) * (FB + B - 3 * W);
    }
}

static int total_instr(const Schedule *s)
{
    int n = 0;
    for (int r = 0; r < s->pp; r++) n += s->rank[r].n;
    return n;
}

/* Costs where the formulas hold (see the header); the first three suit every schedule. */
static const SchedCost EXACT[] = {
    { 1, 2, 1, 0, 0 }, { 1, 1.5, 0.5, 0, 0 }, { 2, 3.5, 1.5, 0, 0 },
};
/* 1F1B and ZB1P also with exposed all-to-all and other ratios. */
static const SchedCost EXACT_1F1B[] = {
    { 2, 4, 1.5, 0.5, 0.7 }, { 3, 2, 1, 0, 0 }, { 1, 3, 0.5, 0.25, 0 },
};

/* Most micro-batches a rank holds between F and W (a fused B ends both). */
static int peak_until_w(const SchedList *l)
{
    int n = 0, peak = 0;
    for (int i = 0; i < l->n; i++) {
        const SchedInstr *in = &l->ins[i];
        if (in->op == SOP_F || in->op == SOP_FB) n++;
        peak = n > peak ? n : peak;
        if (in->op == SOP_W || ((in->op == SOP_B || in->op == SOP_FB) && in->fused)) n--;
    }
    return peak;
}

static int zb_holds(const SchedCost *c) { return c->w <= c->f && c->w <= c->b - c->w; }

static void check_one(SchedKind k, int pp, int C, const SchedCost *c, int formula_holds)
{
    Schedule s;
    sched_build(&s, k, pp, C);
    char err[SCHED_ERR_MAX];
    int ok = sched_check(&s, err, sizeof err) == 0;
    EXPECT(ok, "%s", err);
    if (!ok) {
        sched_free(&s);
        return;
    }
    SchedCost *cost = calloc((size_t)s.n_stages, sizeof *cost);
    for (int i = 0; i < s.n_stages; i++) cost[i] = *c;
    SchedSim sim;
    sched_simulate(&s, cost, 0.0, &sim);
    const double tol = 1e-12 * total_instr(&s) * sim.makespan;
    const int dual = k == SCHED_DUALPIPE || k == SCHED_DUALPIPEV;
    const int want_peak = dual ? s.n_stages + 1 : 0;
    for (int r = 0; r < pp; r++) {
        if (formula_holds && C >= pp)
            EXPECT(fabs(sim.idle[r] - formula(k, pp, c)) <= tol, "%s pp %d C %d rank %d (f %g b %g w %g): idle "
                   "%.15g, SPEC 8 gives %.15g", sched_kind_name(k), pp, C, r, c->f, c->b, c->w, sim.idle[r],
                   formula(k, pp, c));
        /* activations held (F done, B not): 1F1B/ZB1P min(pp - r, C); DualPipe(V) S + 1 over both chunks */
        int peak = dual ? want_peak : (pp - r < C ? pp - r : C);
        EXPECT(sim.peak_in_flight[r] == peak, "%s pp %d C %d rank %d: %d micro-batch chunks in flight, "
               "expected %d",
               sched_kind_name(k), pp, C, r, sim.peak_in_flight[r], peak);
        /* ZB1P defers W without holding more than 1F1B's pp micro-batches from F to W */
        if (!dual)
            EXPECT(peak_until_w(&s.rank[r]) <= (pp < C ? pp : C), "%s pp %d C %d rank %d: %d held from F to W",
                   sched_kind_name(k), pp, C, r, peak_until_w(&s.rank[r]));
    }
    sched_sim_free(&sim);
    free(cost);
    sched_free(&s);
}

/* Every schedule on the grid: sound, and the simulator holds to the formulas. */
static void test_grid(void)
{
    for (int k = 0; k < SCHED_KIND_COUNT; k++)
        for (size_t i = 0; i < sizeof PPS / sizeof PPS[0]; i++) {
            int Cs[8], nc = micro_batch_grid((SchedKind)k, PPS[i], Cs);
            for (int j = 0; j < nc; j++) {
                for (size_t e = 0; e < sizeof EXACT / sizeof EXACT[0]; e++)
                    check_one((SchedKind)k, PPS[i], Cs[j], &EXACT[e], 1);
                for (size_t e = 0; k <= SCHED_ZB1P && e < sizeof EXACT_1F1B / sizeof EXACT_1F1B[0]; e++)
                    check_one((SchedKind)k, PPS[i], Cs[j], &EXACT_1F1B[e],
                              k == SCHED_1F1B || zb_holds(&EXACT_1F1B[e]));
            }
        }
    /* the degenerate layouts: one rank */
    check_one(SCHED_1F1B, 1, 3, &EXACT[0], 1);
    check_one(SCHED_DUALPIPEV, 1, 2, &EXACT[0], 1);
}

/* ---- corrupted lists -------------------------------------------------------------------- */

static int find(const SchedList *l, SchedOp op, int from)
{
    for (int i = from; i < l->n; i++)
        if (l->ins[i].op == op) return i;
    return -1;
}

static int find_last(const SchedList *l, SchedOp op)
{
    for (int i = l->n - 1; i >= 0; i--)
        if (l->ins[i].op == op) return i;
    return -1;
}

static int find_from_peer(const SchedList *l, SchedOp op, int peer, int from)
{
    for (int i = from; i < l->n; i++)
        if (l->ins[i].op == op && l->ins[i].peer == peer) return i;
    return -1;
}

static void expect_caught(Schedule *s, const char *what, const char *text)
{
    char err[SCHED_ERR_MAX] = "";
    int rc = sched_check(s, err, sizeof err);
    EXPECT(rc != 0 && strstr(err, text), "%s %s: checker said '%s', expected '%s'", sched_kind_name(s->kind),
           what, rc ? err : "sound", text);
}

static void drop(SchedList *l, int i)
{
    memmove(&l->ins[i], &l->ins[i + 1], (size_t)(l->n - i - 1) * sizeof l->ins[0]);
    l->n--;
}

static void swap(SchedList *l, int i, int j)
{
    SchedInstr t = l->ins[i];
    l->ins[i] = l->ins[j];
    l->ins[j] = t;
}

/* Each corruption on each schedule (pp 4, the least C): the checker names the fault. */
static void test_corrupted(void)
{
    for (int k = 0; k < SCHED_KIND_COUNT; k++) {
        const int pp = 4, C = k >= SCHED_DUALPIPE ? 2 * pp : pp;
        Schedule s;
        SchedList *l;
        int i, j;
        /* the last send dropped: its receiver waits forever (an earlier one: the next message
         * on the link reaches the wrong receive, as the next case shows) */
        sched_build(&s, (SchedKind)k, pp, C);
        l = &s.rank[0];
        drop(l, find_last(l, SOP_SEND_F));
        expect_caught(&s, "dropped SEND_F", "deadlock");
        sched_free(&s);
        /* the first two forwards that rank 1 receives from rank 0 swapped: the link delivers
         * the other */
        sched_build(&s, (SchedKind)k, pp, C);
        l = &s.rank[1];
        i = find_from_peer(l, SOP_RECV_F, 0, 0);
        j = find_from_peer(l, SOP_RECV_F, 0, i + 1);
        int tmp = l->ins[i].mb;
        l->ins[i].mb = l->ins[j].mb;
        l->ins[j].mb = tmp;
        expect_caught(&s, "swapped receives", "the link from rank");
        sched_free(&s);
        /* the last rank's first B moved before its F (swap the two) */
        sched_build(&s, (SchedKind)k, pp, C);
        l = &s.rank[pp - 1];
        i = find(l, SOP_F, 0);
        j = find(l, SOP_B, 0);
        if (j < 0 || (find(l, SOP_FB, 0) >= 0 && find(l, SOP_FB, 0) < j)) j = find(l, SOP_FB, 0);
        swap(l, i, j);
        expect_caught(&s, "B before F", "before");
        sched_free(&s);
        /* a W dropped: the step never computes that weight gradient */
        if (k != SCHED_1F1B) {
            sched_build(&s, (SchedKind)k, pp, C);
            drop(&s.rank[0], find(&s.rank[0], SOP_W, 0));
            expect_caught(&s, "dropped W", "misses its W");
            sched_free(&s);
        }
        /* a forward run twice */
        sched_build(&s, (SchedKind)k, pp, C);
        l = &s.rank[0];
        i = find(l, SOP_F, 0);
        j = find(l, SOP_F, i + 1);
        l->ins[j].mb = l->ins[i].mb;
        l->ins[j].chunk = l->ins[i].chunk;
        expect_caught(&s, "F twice", "second F");
        sched_free(&s);
    }
    /* a cycle: rank 0 of 1F1B pp 2, C 1 sends its forward only after the backward that needs
     * rank 1 to have run it */
    Schedule s;
    sched_build(&s, SCHED_1F1B, 2, 1);
    SchedList *l = &s.rank[0];
    int i = find(l, SOP_SEND_F, 0);
    SchedInstr send = l->ins[i];
    drop(l, i);
    int b = find(l, SOP_B, 0);
    memmove(&l->ins[b + 2], &l->ins[b + 1], (size_t)(l->n - b - 1) * sizeof l->ins[0]);
    l->ins[b + 1] = send;
    l->n++;
    expect_caught(&s, "send after a backward that needs it", "deadlock");
    sched_free(&s);
}

/* ---- layout rules ------------------------------------------------------------------------ */

static void test_validate(void)
{
    char err[SCHED_ERR_MAX];
    struct { SchedKind k; int pp, C, L; const char *text; } bad[] = {
        { SCHED_DUALPIPE, 3, 6, 8, "'parallel.pp' = 3 must be even for schedule 'dualpipe'" },
        { SCHED_DUALPIPE, 4, 6, 8, "'train.grad_accum' = 6 micro-batches is below 2 * 'parallel.pp' = 8" },
        { SCHED_DUALPIPE, 4, 9, 8, "'train.grad_accum' = 9 must be even for schedule 'dualpipe'" },
        { SCHED_DUALPIPEV, 4, 7, 8, "'train.grad_accum' = 7 micro-batches is below 2 * 'parallel.pp' = 8" },
        { SCHED_DUALPIPEV, 4, 8, 7, "'model.num_hidden_layers' = 7 cannot fill 8 pipeline stages" },
        { SCHED_1F1B, 4, 8, 3, "'model.num_hidden_layers' = 3 cannot fill 4 pipeline stages" },
        { SCHED_ZB1P, 0, 8, 3, "'parallel.pp' = 0 must be at least 1" },
        { SCHED_1F1B, 2, 0, 3, "'train.grad_accum' = 0 must be at least 1" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = sched_validate(bad[i].k, bad[i].pp, bad[i].C, bad[i].L, err, sizeof err);
        EXPECT(rc != 0 && strstr(err, bad[i].text) && !strchr(err, '\n'), "validate case %zu: '%s'", i,
               rc ? err : "accepted");
    }
    /* DualPipeV takes an odd pp and an odd C (the reference asserts only C >= 2 pp); 1F1B any C */
    EXPECT(sched_validate(SCHED_DUALPIPEV, 3, 7, 6, err, sizeof err) == 0, "dualpipev pp 3 C 7");
    EXPECT(sched_validate(SCHED_1F1B, 8, 3, 8, err, sizeof err) == 0, "1f1b C < pp");
    SchedKind k;
    EXPECT(sched_kind_parse("dualpipev", &k) == 0 && k == SCHED_DUALPIPEV, "parse dualpipev");
    EXPECT(sched_kind_parse("gpipe", &k) != 0, "parse gpipe");
}

/* 1F1B pp 2, C 2, F = B = 1 (W inside B), no transfer time. Rank 0: F0 [0,1] F1 [1,2], waits
 * for B0's gradient; rank 1: F0 [1,2] B0 [2,3] F1 [3,4] B1 [4,5]; rank 0: B0 [3,4] B1 [5,6].
 * Six one-unit columns show each instruction at its midpoint. */
static void test_ascii(void)
{
    Schedule s;
    sched_build(&s, SCHED_1F1B, 2, 2);
    SchedCost c[2] = { { 1, 1, 0, 0, 0 }, { 1, 1, 0, 0, 0 } };
    SchedSim sim;
    sched_simulate(&s, c, 0.0, &sim);
    EXPECT(sim.makespan == 6, "makespan %g, expected 6", sim.makespan);
    char buf[256] = "";
    FILE *f = fmemopen(buf, sizeof buf, "w");
    sched_print_ascii(&s, &sim, 6, f);
    fclose(f);
    EXPECT(strstr(buf, "rank  0 |FF.B.B|") && strstr(buf, "rank  1 |.FBFB.|"), "ascii:\n%s", buf);
    sched_sim_free(&sim);
    sched_free(&s);
}

/* Simulator against the formulas where their assumptions do not hold (information for the
 * reader: the simulator is exact for the lists; the formulas are the TR's approximations). */
static void print_table(void)
{
    static const SchedCost off[] = { { 1, 3, 0.5, 0, 0 }, { 3, 2, 1, 0, 0 }, { 2, 4, 1.5, 0.5, 0.7 } };
    printf("simulator vs SPEC 8 (idle per rank; costs f b w comm_f comm_b; C = 2 pp + 2):\n");
    for (size_t e = 0; e < sizeof off / sizeof off[0]; e++)
        for (int k = SCHED_ZB1P; k < SCHED_KIND_COUNT; k++)
            for (int i = 1; i < 4; i++) {
                const int pp = PPS[i], C = 2 * pp + 2;
                Schedule s;
                sched_build(&s, (SchedKind)k, pp, C);
                SchedCost *cost = calloc((size_t)s.n_stages, sizeof *cost);
                for (int j = 0; j < s.n_stages; j++) cost[j] = off[e];
                SchedSim sim;
                sched_simulate(&s, cost, 0.0, &sim);
                double lo = sim.idle[0], hi = sim.idle[0];
                for (int r = 1; r < pp; r++) lo = fmin(lo, sim.idle[r]), hi = fmax(hi, sim.idle[r]);
                const SchedCost *o = &off[e];
                printf("  %-9s pp %2d  (%g %g %g %g %g)  sim %8.3f..%-8.3f formula %8.3f\n",
                       sched_kind_name((SchedKind)k), pp, o->f, o->b, o->w, o->comm_f, o->comm_b, lo, hi,
                       formula((SchedKind)k, pp, o));
                sched_sim_free(&sim);
                free(cost);
                sched_free(&s);
            }
}

int main(void)
{
    test_validate();
    test_grid();
    test_corrupted();
    test_ascii();
    print_table();
    return test_finish();
}
