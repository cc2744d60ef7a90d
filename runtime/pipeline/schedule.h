/* runtime/pipeline/schedule.h - pipeline schedules as data: per-rank instruction lists, a
 * checker that proves a set of lists sound, and a simulator that times them.
 *
 * A schedule is a pure function of (kind, pp, rank, micro-batches): no globals, no state kept
 * between calls. The kinds follow SPEC 8 and DESIGN 4 (references: DeepSeek-V3 TR 3.2.1; the
 * DualPipe and DualPipeV step sequences of deepseek-ai/DualPipe; ZB-H1 of "Zero Bubble
 * Pipeline Parallelism", Qi et al. 2023):
 *   1f1b       S = pp stages, rank r holds stage r (chunk 0); backward fused (B carries W).
 *   zb1p       as 1f1b, B split into B (input gradient) and W (weight gradient); W placed in
 *              the cool-down bubbles, at most pp - r micro-batches' activations held.
 *   dualpipe   S = pp stages held twice: rank r holds stage r of the "down" pipe (chunk 0,
 *              micro-batches 0 .. C/2-1 enter at rank 0) and stage pp-1-r of the "up" pipe
 *              (chunk 1, micro-batches C/2 .. C-1 enter at rank pp-1).
 *   dualpipev  S = 2 pp stages in a V: rank r holds stage r (chunk 0) and stage 2pp-1-r
 *              (chunk 1); every micro-batch enters and leaves at rank 0; at rank pp-1 chunk 0
 *              hands its output to chunk 1 without a transfer.
 *
 * Not here: running a list (runtime/executor.c), anything about the model or the transport.
 *
 * Instructions. F, B, W name (micro-batch, chunk); FB is the F of (mb, chunk) overlapped with
 * the B of (mb_b, chunk_b). A B or FB with `fused` set computes its W inside (DualPipe's
 * backward without the weight-gradient store; every 1F1B backward); otherwise a W instruction
 * for the same (mb, chunk) follows later on the same rank. SEND_F/SEND_B post a transfer to
 * `peer` (never block: the executor waits for sends at the end of the step); RECV_F/RECV_B wait
 * until the matching message from `peer` has arrived. Messages on one link (sender, receiver,
 * F or B) arrive in the order they were sent. A RECV stands just before the compute that needs
 * it, a SEND just after the compute that produced it (an executor may post receives earlier).
 *
 * Layout rules (sched_validate; `plan` and `train` both call it): pp >= 1, micro-batches
 * C >= 1; dualpipe: pp even, C even, C >= 2 pp (DualPipe asserts exactly these); dualpipev:
 * C >= 2 pp (DualPipeV asserts only this: pp may be odd, C odd); every stage needs a layer.
 *
 * Calling sequence:
 *   char err[SCHED_ERR_MAX];
 *   if (sched_validate(kind, pp, C, n_layers, err, sizeof err)) DIE("config: %s", err);
 *   Schedule s; sched_build(&s, kind, pp, C);
 *   sched_check(&s, err, sizeof err) == 0          the lists are sound
 *   SchedSim sim; sched_simulate(&s, costs, xfer, &sim);  costs[stage], one per stage
 *   ... sim.makespan, sim.busy[r], sim.idle[r], sim.peak_in_flight[r] ...
 *   sched_sim_free(&sim); sched_free(&s);
 */
#ifndef DSTRAIN_SCHEDULE_H
#define DSTRAIN_SCHEDULE_H

#include <stddef.h>
#include <stdio.h>

#define SCHED_ERR_MAX 320

typedef enum { SCHED_1F1B, SCHED_ZB1P, SCHED_DUALPIPE, SCHED_DUALPIPEV, SCHED_KIND_COUNT } SchedKind;

typedef enum {
    SOP_F, SOP_B, SOP_W, SOP_FB, SOP_SEND_F, SOP_RECV_F, SOP_SEND_B, SOP_RECV_B, SOP_COUNT
} SchedOp;

typedef struct SchedInstr {
    unsigned char op;      /* SchedOp */
    unsigned char chunk;   /* 0 or 1: which of the rank's stages */
    unsigned char chunk_b; /* FB: the B part's chunk */
    unsigned char fused;   /* B, FB: W computed inside the backward */
    int mb;                /* micro-batch 0 .. C-1 (FB: the F part's) */
    int mb_b;              /* FB: the B part's micro-batch */
    int peer;              /* SEND/RECV: the other rank */
} SchedInstr;

typedef struct SchedList { int n, cap; SchedInstr *ins; } SchedList;

typedef struct Schedule {
    SchedKind kind;
    int pp, micro_batches;
    int n_stages;          /* pp, or 2 pp for dualpipev */
    int n_chunks;          /* stages per rank: 1 or 2 */
    SchedList *rank;       /* [pp] */
} Schedule;

/* Per-stage costs in seconds (any unit). f, b: forward and full backward compute of one
 * micro-batch; w: the weight-gradient part of b; comm_f, comm_b: the exposed communication of
 * a standalone forward / backward (MoE all-to-all). An instruction costs:
 *   F  f + comm_f        B  b - w + comm_b  (fused: b + comm_b)        W  w
 *   FB max(f_a + b_b - w_b, comm_f_a + comm_b_b) (fused: + w_b inside the max's compute term)
 * i.e. the pair's compute and communication overlap (TR 3.2.1 F&B). */
typedef struct SchedCost { double f, b, w, comm_f, comm_b; } SchedCost;

typedef struct SchedSim {
    int pp;
    double makespan;       /* the last rank to finish */
    double *busy, *idle;   /* [pp] compute time, makespan - busy */
    int *peak_in_flight;   /* [pp] most micro-batch chunks between F and B at once (FB: F first) */
    double **start, **end; /* [pp][n of the rank's list] instruction times */
} SchedSim;

const char *sched_kind_name(SchedKind k);
/* 0 and *k set if name is one of 1f1b, zb1p, dualpipe, dualpipev; -1 otherwise. */
int sched_kind_parse(const char *name, SchedKind *k);
const char *sched_op_name(SchedOp op);
int sched_stages(SchedKind kind, int pp);

/* 0 if the layout can run; else -1 and a one-line reason naming the config keys and numbers
 * ('parallel.pp', 'train.grad_accum', 'model.num_hidden_layers'). n_layers < 0: not checked. */
int sched_validate(SchedKind kind, int pp, int micro_batches, int n_layers, char *err, size_t n);

/* Build every rank's list; the layout must pass sched_validate (BUG otherwise). */
void sched_build(Schedule *s, SchedKind kind, int pp, int micro_batches);
void sched_free(Schedule *s);

/* Where stage `stage` of micro-batch mb runs: its rank, and the chunk there. */
void sched_owner(const Schedule *s, int mb, int stage, int *rank, int *chunk);
int sched_stage_of(const Schedule *s, int rank, int chunk);

/* 0 if the lists are sound: every (micro-batch, stage) has one F, one B and one W (or a
 * fused B) on its owner, F < B < W there; sends match receives per link in order (micro-batch,
 * chunk and stage adjacency); a RECV precedes the compute that needs it and a SEND follows the
 * compute that produced its payload; all ranks run to the end with blocking receives (no
 * deadlock); F of stage s completes before F of stage s+1 and B in reverse. Else -1 and the
 * first fault in err. */
int sched_check(const Schedule *s, char *err, size_t n);

/* Time the lists, costs[stage] for stage 0 .. n_stages-1, xfer seconds per transfer; every
 * instruction starts as soon as its rank is free and its receive has arrived. The lists must
 * pass sched_check. */
void sched_simulate(const Schedule *s, const SchedCost *costs, double xfer, SchedSim *sim);
void sched_sim_free(SchedSim *sim);

/* A small ASCII timeline of a simulation, one row per rank, `cols` characters wide: each
 * column shows the compute running at its midpoint, F, B, W or X (an FB pair), upper case
 * for chunk 0 and lower case for chunk 1 (FB: by its F part's chunk); '.' idle. */
void sched_print_ascii(const Schedule *s, const SchedSim *sim, int cols, FILE *f);

#endif
