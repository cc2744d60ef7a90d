/* tests/unit/test_pipeline.c - the in-process pipeline test (issue 11, acceptance 1): every PP
 * rank's executor (runtime/pipeline/executor.h) in one process over in-memory mailboxes, each
 * step run in a random order that respects the dependencies (at every turn a random rank whose
 * next instruction can run runs it; the seed is printed), for every schedule x pp in {2, 4} x
 * micro-batches in {pp, 2 pp, odd counts where the schedule allows them}, on configs/tiny.toml
 * (MTP depth 1) with 8 main layers so DualPipeV at pp 4 has a layer per stage; then every
 * schedule at pp 2 with MTP depth 2. Stages are built as the trainer builds them
 * (pipe_exec_train_mode): one shared set of B-to-W buffers where every B of a chunk's list is
 * fused (1F1B), one per block and slot where W runs apart.
 *
 * Checked against the unpipelined run (one Model, model_forward + model_backward per
 * micro-batch, the same initial weights and windows):
 *   - every micro-batch's main and MTP losses bit for bit: each stage computes exactly the
 *     unpipelined forward of its blocks on bit-identical inputs;
 *   - gradients: each stage allocates only the tensors it holds (its table's entries map to the
 *     whole model's by global_offset); the whole model's gradient is the sum over the stages.
 *     A tensor held by one stage gets its micro-batches' contributions in micro-batch order,
 *     as unpipelined: BIT-EQUAL. A tensor held by two stages
 *     (the embedding under 1F1B/ZB1P/DualPipeV: the first stage's and the last stage's MTP
 *     copy; every tensor under DualPipe: the two mirror copies) is the sum of two partial sums
 *     instead of one running sum: within the reduction-order bound below;
 *   - no message is left in a mailbox, and every rank reaches the end of its list.
 *
 * Reduction-order bound, per element. Both runs add the same contributions (bit-identical
 * inputs, as the loss check shows) into FP32 accumulators, grouped differently: one running
 * sum unpipelined; two partial sums, added at the end, pipelined. For n terms t_j, any order
 * of FP32 additions lands within (n - 1) u sum |t_j| of the exact sum (u = 2^-24, first
 * order), so the two runs lie within 2 (n - 1) u sum |t_j| of each other; we allow twice that.
 *   - The embedding: embedding_backward adds one row per token, so the terms are the rows of
 *     dL/dx0 (main path) and of each MTP module's dL/de, at their token ids: n and sum |t| are
 *     counted per element from the unpipelined run's buffers (model_internal.h).
 *   - Every other tensor: a GEMM (or an RMSNorm weight sum in double) adds each micro-batch's
 *     product to the accumulator in one addition (16 tokens per micro-batch, inside one
 *     K-block of the BLAS kernel), so the terms are per micro-batch: n = C (for the head,
 *     which MTP shares: (1 + D) C) and sum |t| is taken as sum_m |R_m - R_{m-1}|, R_m the unpipelined
 *     gradient after micro-batch m (for the head, whose main and MTP terms of one micro-batch
 *     could cancel inside R_m - R_{m-1}, we add |R_C| as well).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_internal.h"
#include "model/stage.h"
#include "runtime/common.h"
#include "runtime/config.h"
#include "runtime/pipeline/executor.h"
#include "runtime/pipeline/schedule.h"
#include "testing.h"

#define B_ 2
#define T_ 8
#define LAYERS 8
#define LAMBDA 0.3
#define ALPHA 1e-3
#define SEED_W 1234

static Rng rng;
static ModelConfig cfg;
static int stage_flags;     /* or'ed into every stage's train mode (MODEL_RECOMPUTE) */
static Ops *ops;

static void source_path(char *out, size_t n, const char *rel)
{
    const char *me = __FILE__, *tail = strstr(me, "tests/unit/test_pipeline.c");
    int root = tail ? (int)(tail - me) : 0;
    snprintf(out, n, "%.*s%s", root, me, rel);
}

typedef struct Ref {
    ModelLoss *loss;            /* [C] */
    float *grad;                /* (P) after every micro-batch */
    double *mag;                /* (P) sum |t| of the bound */
    double *terms;              /* (P) n of the bound */
    size_t P;
} Ref;

/* The embedding's terms of one micro-batch: rows of d (N,C) added at rows tok (N) of the table
 * at offset off. */
static void add_rows(Ref *r, size_t off, const Model *m, const act *d_dev, const int32_t *tok_dev)
{
    const int N = m->d.N, C = m->d.C;
    float *d = xmalloc((size_t)N * C * sizeof(float));
    int32_t *tok = xmalloc((size_t)N * sizeof(int32_t));
    ops->act_download(ops, d, d_dev, (size_t)N * C);
    ops->download(ops, tok, tok_dev, (size_t)N * sizeof(int32_t));
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            size_t i = off + (size_t)tok[n] * C + c;
            r->mag[i] += fabs(d[(size_t)n * C + c]);
            r->terms[i] += 1;
        }
    free(d);
    free(tok);
}

/* The unpipelined run over C windows. */
static void reference(int32_t **win, int C, Ref *r)
{
    /* split mode: every MTP module keeps its own dL/de for the bound (the same gradients) */
    Model *m = model_create(&cfg, ops, B_, T_, MODEL_TRAIN_SPLIT);
    model_init_params(m, SEED_W);
    model_zero_grads(m);
    model_zero_counts(m);
    model_set_loss_weights(m, LAMBDA, ALPHA, C);
    r->P = model_table(m)->total;
    r->loss = xcalloc((size_t)C, sizeof(ModelLoss));
    r->grad = xcalloc(r->P, sizeof(float));
    r->mag = xcalloc(r->P, sizeof(double));
    r->terms = xcalloc(r->P, sizeof(double));
    const size_t emb = params_offset(model_table(m), -1, "model.embed_tokens.weight");
    const size_t emb_end = emb + (size_t)cfg.vocab_size * cfg.hidden_size;
    const size_t head = params_offset(model_table(m), -1, "lm_head.weight");
    const size_t head_end = head + (size_t)cfg.vocab_size * cfg.hidden_size;
    float *prev = xcalloc(r->P, sizeof(float));
    for (int mb = 0; mb < C; mb++) {
        model_forward(m, win[mb], 1, &r->loss[mb]);
        model_backward(m);
        ops->download(ops, r->grad, model_grads(m), r->P * sizeof(float));
        for (size_t i = 0; i < r->P; i++)
            if (i < emb || i >= emb_end) {
                r->mag[i] += fabs((double)r->grad[i] - prev[i]);
                r->terms[i] += i >= head && i < head_end ? 1 + cfg.num_nextn_predict_layers : 1;
            }
        memcpy(prev, r->grad, r->P * sizeof(float));
        add_rows(r, emb, m, m->sl->dres, m->sl->tokens);
        for (int k = 0; k < m->d.D; k++) add_rows(r, emb, m, m->sl->mtp_bw[k].de, m->sl->mtp[k].tokens);
    }
    for (size_t i = head; i < head_end; i++) r->mag[i] += fabs(r->grad[i]);
    free(prev);
    model_destroy(m);
}

/* Runs every rank's list in a random dependency-respecting order; 0 on success. */
static int run_random(PipeExec *ex, int pp)
{
    int *blocked = xcalloc((size_t)pp, sizeof(int)), *done = xcalloc((size_t)pp, sizeof(int));
    int left = pp, rc = 0;
    while (left > 0) {
        int cand[64], n = 0;
        for (int r = 0; r < pp; r++)
            if (!done[r] && !blocked[r]) cand[n++] = r;
        if (n == 0) {
            rc = -1;    /* every unfinished rank waits on a receive: deadlock */
            break;
        }
        int r = cand[rng_u32(&rng) % (uint32_t)n];
        int st = pipe_exec_step(&ex[r]);
        if (st == PIPE_DONE) {
            done[r] = 1;
            left--;
        } else if (st == PIPE_BLOCKED) {
            blocked[r] = 1;
        } else {
            memset(blocked, 0, (size_t)pp * sizeof(int));   /* a send may have unblocked anyone */
        }
    }
    free(blocked);
    free(done);
    return rc;
}

/* The pipelined run: every rank's stages and executor over one mailbox, in a random order. */
typedef struct Pipe {
    Schedule s;
    PipeMailbox *box;
    Model *stages[8][2];
    PipeExec ex[8];
    ModelLoss *loss;            /* [C] */
} Pipe;

static void pipe_run(Pipe *p, SchedKind kind, int pp, int C, int32_t **win)
{
    memset(p, 0, sizeof *p);
    sched_build(&p->s, kind, pp, C);
    p->box = pipe_mailbox_create(pp, ops);
    p->loss = xcalloc((size_t)C, sizeof(ModelLoss));
    for (int r = 0; r < pp; r++) {
        for (int c = 0; c < p->s.n_chunks; c++) {
            StageSpec sp;
            stage_split(LAYERS, p->s.n_stages, sched_stage_of(&p->s, r, c), &sp);
            sp.n_slots = pipe_exec_slots(&p->s, r, c);
            sp.n_micro = C;
            Model *m = stage_create(&cfg, ops, B_, T_, pipe_exec_train_mode(&p->s, r, c) | stage_flags, &sp,
                                    NULL, 0);
            model_init_params(m, SEED_W);
            model_zero_grads(m);
            model_zero_counts(m);
            model_set_loss_weights(m, LAMBDA, ALPHA, C);
            p->stages[r][c] = m;
        }
        pipe_exec_init(&p->ex[r], &p->s, r, p->stages[r], pipe_mailbox_link(p->box, r));
        pipe_exec_begin(&p->ex[r], (const int32_t *const *)win, p->loss);
    }
    int rc = run_random(p->ex, pp);
    EXPECT(rc == 0, "%s pp %d C %d: deadlock", sched_kind_name(kind), pp, C);
    EXPECT(pipe_mailbox_pending(p->box) == 0, "%s pp %d C %d: %d messages never received", sched_kind_name(kind),
           pp, C, pipe_mailbox_pending(p->box));
}

static void pipe_free(Pipe *p)
{
    for (int r = 0; r < p->s.pp; r++) {
        pipe_exec_free(&p->ex[r]);
        for (int c = 0; c < p->s.n_chunks; c++) model_destroy(p->stages[r][c]);
    }
    pipe_mailbox_free(p->box);
    sched_free(&p->s);
    free(p->loss);
}

/* sum (P) <- the stages' gradients at their global offsets, summed in double (exact for two
 * FP32 terms); holders (P) <- how many stages hold the element's tensor (by their tables, not
 * by non-zero values: two copies can hold contributions that cancel to 0 in one of them).
 * Returns the floats the stages hold in all. */
static size_t gather_grads(Pipe *p, double *sum, int *holders, float *g)
{
    size_t held = 0;
    for (int r = 0; r < p->s.pp; r++)
        for (int c = 0; c < p->s.n_chunks; c++) {
            const ParamTable *pt = model_table(p->stages[r][c]);
            held += pt->total;
            ops->download(ops, g, model_grads(p->stages[r][c]), pt->total * sizeof(float));
            for (int e = 0; e < pt->n; e++)
                for (size_t j = 0; j < pt->p[e].numel; j++) {
                    sum[pt->p[e].global_offset + j] += g[pt->p[e].offset + j];
                    holders[pt->p[e].global_offset + j]++;
                }
        }
    return held;
}

typedef struct Tally {
    size_t single, single_bad, shared, shared_bad, first_bad;
    double worst;               /* the largest shared difference as a share of its bound */
} Tally;

/* One-holder elements bit-equal, shared ones within the bound of the header. */
static Tally compare_grads(const Ref *ref, const double *sum, const int *holders)
{
    const size_t P = ref->P;
    const double u = ldexp(1.0, -24);
    Tally t = { 0, 0, 0, 0, P, 0 };
    for (size_t i = 0; i < P; i++) {
        float got = (float)sum[i];
        int bad;
        if (holders[i] <= 1) {
            t.single++;
            bad = got != ref->grad[i];
            t.single_bad += bad;
        } else {
            t.shared++;
            double n = ref->terms[i] > 1 ? ref->terms[i] : 1;
            double bound = 4.0 * (n - 1) * u * ref->mag[i], diff = fabs((double)got - ref->grad[i]);
            if (diff > 0 && diff / bound > t.worst) t.worst = diff / bound;
            bad = diff > bound;
            t.shared_bad += bad;
        }
        if (bad && t.first_bad == P) t.first_bad = i;
    }
    return t;
}

static void check(SchedKind kind, int pp, int C)
{
    char err[SCHED_ERR_MAX];
    const char *name = sched_kind_name(kind);
    if (sched_validate(kind, pp, C, LAYERS, err, sizeof err)) BUG("test layout: %s", err);
    int32_t **win = xcalloc((size_t)C, sizeof(int32_t *));
    for (int mb = 0; mb < C; mb++) {
        win[mb] = xcalloc((size_t)B_ * (T_ + 1), sizeof(int32_t));
        for (int i = 0; i < B_ * (T_ + 1); i++) win[mb][i] = (int32_t)(rng_u32(&rng) % (uint32_t)cfg.vocab_size);
    }
    Ref ref;
    reference(win, C, &ref);
    Pipe p;
    pipe_run(&p, kind, pp, C, win);

    int loss_bad = 0;
    for (int mb = 0; mb < C; mb++)
        loss_bad += p.loss[mb].main != ref.loss[mb].main ||
                    memcmp(p.loss[mb].mtp, ref.loss[mb].mtp, sizeof p.loss[mb].mtp);
    EXPECT(loss_bad == 0, "%s pp %d C %d: %d micro-batches' losses differ from the unpipelined run", name, pp, C,
           loss_bad);

    const size_t P = ref.P;
    double *sum = xcalloc(P, sizeof(double));
    int *holders = xcalloc(P, sizeof(int));
    float *g = xmalloc(P * sizeof(float));
    size_t held = gather_grads(&p, sum, holders, g);
    /* every tensor lives on one stage (two under DualPipe: the mirror copies), plus the last
     * stage's embedding copy for MTP: nothing else is allocated */
    const size_t copies = kind == SCHED_DUALPIPE ? 2 : 1, emb = (size_t)cfg.vocab_size * cfg.hidden_size;
    EXPECT(held == copies * (P + emb), "%s pp %d C %d: the stages hold %zu floats of a %zu-float model", name, pp, C,
           held, P);
    Tally t = compare_grads(&ref, sum, holders);
    EXPECT(t.single_bad == 0 && t.shared_bad == 0,
           "%s pp %d C %d: %zu of %zu one-holder gradients not bit-equal, %zu of %zu shared ones past the bound "
           "(first: element %zu: %.9g vs %.9g)", name, pp, C, t.single_bad, t.single, t.shared_bad, t.shared,
           t.first_bad, t.first_bad < P ? sum[t.first_bad] : 0.0, t.first_bad < P ? ref.grad[t.first_bad] : 0.0);
    printf("%-9s pp %d C %2d MTP %d%s: losses bit-equal %s; gradients: %zu bit-equal, %zu summed over 2 copies "
           "(worst %.3f of the bound)\n", name, pp, C, cfg.num_nextn_predict_layers,
           stage_flags & MODEL_RECOMPUTE ? " recompute" : "", loss_bad ? "NO" : "yes",
           t.single - t.single_bad, t.shared, t.worst);

    free(sum);
    free(holders);
    free(g);
    pipe_free(&p);
    free(ref.loss);
    free(ref.grad);
    free(ref.mag);
    free(ref.terms);
    for (int mb = 0; mb < C; mb++) free(win[mb]);
    free(win);
}

int main(void)
{
    rng_seed(&rng, test_seed());
    char path[4096];
    source_path(path, sizeof path, "configs/tiny.toml");
    Config full;
    config_defaults(&full);
    config_load(&full, path);
    cfg = full.model;
    cfg.num_hidden_layers = LAYERS;
    ops = ops_cpu_create(1, PREC_FP32);
    for (int pp = 2; pp <= 4; pp += 2) {
        const int one[] = { pp, pp + 1, 2 * pp };          /* 1f1b, zb1p: pp + 1 is odd */
        const int dual[] = { 2 * pp, 2 * pp + 2 };         /* dualpipe: even, >= 2 pp */
        const int dualv[] = { 2 * pp, 2 * pp + 1 };        /* dualpipev: >= 2 pp, odd allowed */
        for (int i = 0; i < 3; i++) {
            check(SCHED_1F1B, pp, one[i]);
            check(SCHED_ZB1P, pp, one[i]);
        }
        for (int i = 0; i < 2; i++) {
            check(SCHED_DUALPIPE, pp, dual[i]);
            check(SCHED_DUALPIPEV, pp, dualv[i]);
        }
    }
    /* MTP depth 2 (a chain of modules on the last stage), every schedule at pp 2 */
    cfg.num_nextn_predict_layers = 2;
    for (int k = 0; k < SCHED_KIND_COUNT; k++) check((SchedKind)k, 2, 4);
    /* train.recompute (issue 14): the stages share one set of the dropped tensors per Model and
     * recompute them in B and W, whatever order the schedule interleaves F, B and W in; against
     * the same unpipelined run without recompute (test_recompute.c: recompute changes no bit) */
    stage_flags = MODEL_RECOMPUTE;
    for (int k = 0; k < SCHED_KIND_COUNT; k++) check((SchedKind)k, 2, 4);
    check(SCHED_DUALPIPEV, 4, 9);
    ops_destroy(ops);
    return test_finish();
}
