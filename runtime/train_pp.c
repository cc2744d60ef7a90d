/* runtime/train_pp.c - the pipeline-parallel training step, validation and checkpoint state
 * (runtime/train_pp.h). Not here: the loop, metrics and checkpoint writing (train.c), the
 * schedule (runtime/pipeline/schedule.c), running it (runtime/pipeline/executor.c).
 */
#include "runtime/train_pp.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "comm/p2p.h"
#include "model/stage.h"
#include "runtime/common.h"
#include "runtime/pipeline/executor.h"
#include "runtime/plan.h"
#include "runtime/pipeline/schedule.h"

struct PpTrainer {
    Schedule sched;
    int *stage_lo;              /* [n_stages + 1] stage s runs main layers [stage_lo[s], stage_lo[s+1]) */
    ParamTable full;            /* the whole model's table (checkpoints, reductions) */
    Model *stage[2];            /* [chunk]: each allocates only the tensors it holds */
    StageSpec spec[2];
    Optimizer opt[2];           /* [chunk]: AdamW over the stage's own table */
    unsigned char *first_holder[2];     /* [chunk][local entry]: no earlier (rank, chunk) holds it */
    PipeLink *link;
    PipeExec ex;
    int32_t **windows;          /* [C] (B, T+1) host */
    ModelLoss *losses;          /* [C] */
    float *host_grad;           /* (full total) */
    float *host_tmp;            /* (full total) */
    float *counts, *counts_tmp; /* (n_moe, E) */
};

static int n_chunks(const Trainer *t) { return t->pp->sched.n_chunks; }

static void spec_of(const Trainer *t, int rank, int chunk, StageSpec *sp)
{
    const struct PpTrainer *p = t->pp;
    const int st = sched_stage_of(&p->sched, rank, chunk);
    sp->lo = p->stage_lo[st];
    sp->hi = p->stage_lo[st + 1];
    sp->first = sp->lo == 0;
    sp->last = sp->hi == t->cfg.model.num_hidden_layers;
    sp->n_slots = pipe_exec_slots(&p->sched, rank, chunk);
    sp->n_micro = p->sched.micro_batches;
    sp->capacity_factor = t->cfg.moe.capacity_factor;
}

/* The stages' layers: plan's split (runtime/plan.h: contiguous runs that balance the stages'
 * forward times, head and MTP counted on the last), so train runs the layout plan reports;
 * the even split if plan could not make one. */
static void split_layers(Trainer *t)
{
    struct PpTrainer *p = t->pp;
    const int S = p->sched.n_stages, L = t->cfg.model.num_hidden_layers;
    p->stage_lo = xcalloc((size_t)S + 1, sizeof(int));
    Plan plan;
    plan_compute(&plan, &t->cfg);
    int ok = plan.n_stages == S;
    for (int s = 0; ok && s < S; s++) {
        p->stage_lo[s] = plan.stages[s].first_layer;
        ok = plan.stages[s].n_layers >= 1 && (s == 0 || p->stage_lo[s] > p->stage_lo[s - 1]);
    }
    p->stage_lo[S] = L;
    ok = ok && p->stage_lo[0] == 0 && plan.stages[S - 1].first_layer + plan.stages[S - 1].n_layers == L;
    plan_free(&plan);
    for (int s = 0; !ok && s < S; s++) {
        StageSpec sp;
        stage_split(L, S, s, &sp);
        p->stage_lo[s] = sp.lo;
    }
}

/* Which of chunk c's tensors it is the first holder of (ranks, then chunks, in order): the
 * one that contributes the tensor to a checkpoint. */
static void plan_ownership(Trainer *t, int c)
{
    struct PpTrainer *p = t->pp;
    const ParamTable *pt = model_table(p->stage[c]);
    const int me = t->groups->stage;
    p->first_holder[c] = xcalloc((size_t)pt->n + 1, 1);
    for (int i = 0; i < pt->n; i++) {
        int first = 1;
        for (int r = 0; r <= me && first; r++)
            for (int k = 0; k < p->sched.n_chunks && (r < me || k < c); k++) {
                StageSpec sp;
                spec_of(t, r, k, &sp);
                if (stage_holds(&sp, &t->cfg.model, &pt->p[i])) first = 0;
            }
        p->first_holder[c][i] = (unsigned char)first;
    }
    optim_init(&p->opt[c], t->o, pt, &t->cfg.optim, train_bf16_moments(&t->cfg.train));
}

static int count_sends(const SchedList *l)
{
    int n = 0;
    for (int i = 0; i < l->n; i++) n += l->ins[i].op == SOP_SEND_F || l->ins[i].op == SOP_SEND_B;
    return n;
}

void pp_setup(Trainer *t, const World *w, Groups *g)
{
    const Config *cfg = &t->cfg;
    const TrainConfig *tc = &cfg->train;
    const int B = tc->micro_batch_size, T = tc->seq_len, C = tc->grad_accum;
    struct PpTrainer *p = t->pp = xcalloc(1, sizeof *p);
    SchedKind kind;
    if (sched_kind_parse(cfg->parallel.schedule, &kind)) BUG("schedule '%s' passed validation", cfg->parallel.schedule);
    sched_build(&p->sched, kind, g->pp, C);
    split_layers(t);
    params_build(&p->full, &cfg->model);
    for (int c = 0; c < p->sched.n_chunks; c++) {
        spec_of(t, g->stage, c, &p->spec[c]);
        const int mode = pipe_exec_train_mode(&p->sched, g->stage, c);
        p->stage[c] = stage_create(&cfg->model, t->o, B, T, mode, &p->spec[c], g->ep > 1 ? g->ep_comm : NULL, w->node);
        model_init_params(p->stage[c], (uint64_t)tc->seed);
        plan_ownership(t, c);
    }
    t->model = p->stage[0];
    p->link = p2p_link_create(g->pp_comm, t->o, stage_io_bytes(p->stage[0]),
                              count_sends(&p->sched.rank[g->stage]) + 1);
    pipe_exec_init(&p->ex, &p->sched, g->stage, p->stage, p->link);
    p->windows = xcalloc((size_t)C, sizeof(int32_t *));
    for (int i = 0; i < C; i++) p->windows[i] = xcalloc((size_t)B * (T + 1), sizeof(int32_t));
    p->losses = xcalloc((size_t)C, sizeof(ModelLoss));
    p->host_grad = xmalloc(p->full.total * sizeof(float));
    p->host_tmp = xmalloc(p->full.total * sizeof(float));
    const size_t nc = (size_t)model_n_moe_layers(t->model) * cfg->model.n_routed_experts + 1;
    p->counts = xcalloc(nc, sizeof(float));
    p->counts_tmp = xcalloc(nc, sizeof(float));
}

void pp_free(Trainer *t)
{
    struct PpTrainer *p = t->pp;
    if (!p) return;
    pipe_exec_free(&p->ex);
    p2p_link_free(p->link);
    for (int c = 0; c < p->sched.n_chunks; c++) {
        optim_free(&p->opt[c]);
        free(p->first_holder[c]);
        model_destroy(p->stage[c]);
    }
    for (int i = 0; i < p->sched.micro_batches; i++) free(p->windows[i]);
    free(p->windows);
    free(p->losses);
    free(p->host_grad);
    free(p->host_tmp);
    free(p->counts);
    free(p->counts_tmp);
    sched_free(&p->sched);
    free(p->stage_lo);
    params_free(&p->full);
    free(p);
    t->pp = NULL;
    t->model = NULL;
}

const ParamTable *pp_table(const Trainer *t) { return &t->pp->full; }

/* full (whole table, host) += (or <-, add = 0) chunk c's local buffer dev (backend). */
static void to_full(Trainer *t, int c, float *full, const float *dev, int add)
{
    struct PpTrainer *p = t->pp;
    const ParamTable *pt = model_table(p->stage[c]);
    t->o->download(t->o, p->host_tmp, dev, pt->total * sizeof(float));
    for (int i = 0; i < pt->n; i++) {
        const Param *e = &pt->p[i];
        float *dst = full + e->global_offset;
        const float *src = p->host_tmp + e->offset;
        if (add)
            for (size_t j = 0; j < e->numel; j++) dst[j] += src[j];
        else
            memcpy(dst, src, e->numel * sizeof(float));
    }
}

/* Chunk c's local buffer dev (backend) <- its rows of full (whole table, host). */
static void from_full(Trainer *t, int c, float *dev, const float *full)
{
    struct PpTrainer *p = t->pp;
    const ParamTable *pt = model_table(p->stage[c]);
    for (int i = 0; i < pt->n; i++) {
        const Param *e = &pt->p[i];
        memcpy(p->host_tmp + e->offset, full + e->global_offset, e->numel * sizeof(float));
    }
    t->o->upload(t->o, dev, p->host_tmp, pt->total * sizeof(float));
}

/* Every chunk's gradients <- the whole gradient's rows: the sum over chunks and PP ranks (each
 * entry has at most two holders, the others add zero), then over the DP replicas (their data
 * shares; under EP an expert's gradient comes from the ranks running it, as in train.h).
 * Returns the global norm of the mean gradient (the sum / dp; optim_step applies the 1/dp). */
static double reduce_grads(Trainer *t)
{
    struct PpTrainer *p = t->pp;
    const Groups *g = t->groups;
    const size_t total = p->full.total;
    memset(p->host_grad, 0, total * sizeof(float));
    for (int c = 0; c < n_chunks(t); c++) to_full(t, c, p->host_grad, model_grads(p->stage[c]), 1);
    comm_allreduce(g->pp_comm, p->host_grad, total, COMM_F32, COMM_SUM);
    if (g->dp > 1) comm_allreduce(g->dp_comm, p->host_grad, total, COMM_F32, COMM_SUM);
    for (int c = 0; c < n_chunks(t); c++) from_full(t, c, model_grads(p->stage[c]), p->host_grad);
    double sq = 0;
    for (size_t i = 0; i < total; i++) sq += (double)p->host_grad[i] * p->host_grad[i];
    return sqrt(sq) / g->dp;
}

/* The step's expert loads: each stage counts its MoE layers; summed over chunks and ranks
 * (integer counts: exact), then the bias update on every stage. */
static void reduce_counts(Trainer *t, StepMetrics *s, double gamma)
{
    struct PpTrainer *p = t->pp;
    const size_t n = (size_t)model_n_moe_layers(t->model) * t->cfg.model.n_routed_experts;
    if (n == 0) return;
    model_expert_counts(p->stage[0], p->counts);
    for (int c = 1; c < n_chunks(t); c++) {
        model_expert_counts(p->stage[c], p->counts_tmp);
        for (size_t i = 0; i < n; i++) p->counts[i] += p->counts_tmp[i];
    }
    comm_allreduce(t->groups->pp_comm, p->counts, n, COMM_F32, COMM_SUM);
    if (t->groups->dp > 1) comm_allreduce(t->groups->dp_comm, p->counts, n, COMM_F32, COMM_SUM);
    for (int c = 0; c < n_chunks(t); c++) model_set_expert_counts(p->stage[c], p->counts);
    LoadStats ls = model_load_stats(p->stage[0]);
    s->maxvio = ls.maxvio_mean;
    s->maxvio_max = ls.maxvio_max;
    for (int c = 0; c < n_chunks(t); c++) model_bias_update(p->stage[c], gamma, t->cfg.moe.bias_zero_mean);
}

/* Per micro-batch losses summed over the PP ranks (main and MTP: one rank reports each, the
 * others hold zero; balance: each stage its layers' share), averaged over the DP replicas,
 * then the step's means. */
static void reduce_losses(Trainer *t, StepMetrics *s)
{
    struct PpTrainer *p = t->pp;
    const int M = p->sched.micro_batches, D = t->cfg.model.num_nextn_predict_layers, W = 2 + D;
    double *v = xcalloc((size_t)M * W, sizeof(double));
    for (int i = 0; i < M; i++) {
        v[i * W] = p->losses[i].main;
        v[i * W + 1] = p->losses[i].balance;
        for (int k = 0; k < D; k++) v[i * W + 2 + k] = p->losses[i].mtp[k];
    }
    comm_allreduce(t->groups->pp_comm, v, (size_t)M * W, COMM_F64, COMM_SUM);
    if (t->groups->dp > 1) {
        comm_allreduce(t->groups->dp_comm, v, (size_t)M * W, COMM_F64, COMM_SUM);
        for (int i = 0; i < M * W; i++) v[i] /= t->groups->dp;
    }
    for (int i = 0; i < M; i++) {
        s->loss += v[i * W] / M;
        s->balance += v[i * W + 1] / M;
        for (int k = 0; k < D; k++) s->mtp[k] += v[i * W + 2 + k] / M;
    }
    s->n_mtp = D;
    free(v);
}

void pp_train_step(Trainer *t, StepMetrics *s)
{
    struct PpTrainer *p = t->pp;
    const Config *c = &t->cfg;
    const int M = c->train.grad_accum;
    const double lambda = lambda_at(&c->mtp, t->tokens), gamma = gamma_at(&c->moe, t->tokens);
    for (int k = 0; k < n_chunks(t); k++) {
        model_zero_grads(p->stage[k]);
        model_zero_counts(p->stage[k]);
        model_set_loss_weights(p->stage[k], lambda, c->moe.balance_alpha, M);
    }
    for (int i = 0; i < M; i++) data_next(t->train, p->windows[i]);
    memset(p->losses, 0, (size_t)M * sizeof(ModelLoss));
    p->ex.trace = t->trace;     /* created after pp_setup; records only in traced steps */
    pipe_exec_begin(&p->ex, (const int32_t *const *)p->windows, p->losses);
    int st;
    while ((st = pipe_exec_step(&p->ex)) == PIPE_RAN) {}
    CHECK(st == PIPE_DONE);
    p->link->finish(p->link);
    reduce_losses(t, s);
    s->grad_norm = reduce_grads(t);
    s->lr = lr_at(&c->optim, t->step, c->train.steps);
    const double scale = clip_scale(s->grad_norm, c->optim.grad_clip) / t->groups->dp;
    for (int k = 0; k < n_chunks(t); k++)
        optim_step(&p->opt[k], model_params(p->stage[k]), model_grads(p->stage[k]), s->lr, scale);
    reduce_counts(t, s, gamma);
    s->max_nodes = 0;
    t->step++;
    t->tokens += (long long)M * c->train.micro_batch_size * c->train.seq_len * t->groups->dp;
}

/* One window down the stages (micro-batch 0's owners), no gradients; the last stage's losses,
 * summed over the ranks. */
static void forward_chain(Trainer *t, const int32_t *window, double *out)
{
    struct PpTrainer *p = t->pp;
    const Schedule *s = &p->sched;
    const int me = t->groups->stage, D = t->cfg.model.num_nextn_predict_layers;
    memset(out, 0, (size_t)(1 + D) * sizeof(double));
    for (int st = 0; st < s->n_stages; st++) {
        int r, c, pr = -1, pc = 0, nr = -1, nc = 0;
        sched_owner(s, 0, st, &r, &c);
        if (r != me) continue;
        Model *m = p->stage[c];
        if (st > 0) sched_owner(s, 0, st - 1, &pr, &pc);
        if (st + 1 < s->n_stages) sched_owner(s, 0, st + 1, &nr, &nc);
        if (st > 0 && pr == me) {
            stage_copy_io(m, stage_input(m, 0), stage_output(p->stage[pc], 0));
        } else if (st > 0) {
            PipeHeader h;
            p->link->recv(p->link, pr, PIPE_ACT, &h, stage_input(m, 0), stage_io_bytes(m));
            if (h.kind != PIPE_ACT || h.mb != -1 || h.stage != st - 1)
                BUG("pp: validation expected activations of stage %d, got kind %d micro-batch %d stage %d", st - 1,
                    h.kind, h.mb, h.stage);
        }
        ModelLoss l;
        stage_forward(m, 0, -1, window, 0, &l);
        if (st + 1 == s->n_stages) {
            out[0] = l.main;
            for (int k = 0; k < D; k++) out[1 + k] = l.mtp[k];
        } else if (nr != me) {
            PipeHeader h = { PIPE_ACT, -1, st };
            p->link->send(p->link, nr, &h, stage_output(m, 0), stage_io_bytes(m));
        }
    }
    p->link->finish(p->link);
    comm_allreduce(t->groups->pp_comm, out, (size_t)(1 + D), COMM_F64, COMM_SUM);
}

double pp_evaluate(Trainer *t, double *mtp)
{
    const int D = t->cfg.model.num_nextn_predict_layers, n = t->cfg.train.val_batches;
    double sum = 0, l[1 + MTP_MAX];
    for (int k = 0; k < D; k++) mtp[k] = 0;
    data_rewind(t->val);
    for (int i = 0; i < n; i++) {
        data_next(t->val, t->window);
        forward_chain(t, t->window, l);
        sum += l[0] / n;
        for (int k = 0; k < D; k++) mtp[k] += l[1 + k] / n;
    }
    if (t->groups->dp > 1) {    /* each replica its share of the windows: the mean over them */
        double all[1 + MTP_MAX];
        all[0] = sum;
        for (int k = 0; k < D; k++) all[1 + k] = mtp[k];
        comm_allreduce(t->groups->dp_comm, all, (size_t)(1 + D), COMM_F64, COMM_SUM);
        sum = all[0] / t->groups->dp;
        for (int k = 0; k < D; k++) mtp[k] = all[1 + k] / t->groups->dp;
    }
    return sum;
}

/* Whether this rank's copy of entry p goes into the gathered tables among its stage's dp
 * ranks: all of them hold the same when ep = 1 (each contributes over pp_comm only); under
 * EP a replicated tensor comes from dp rank 0 and a routed expert from the first EP group
 * (ep_index 0), which holds each expert once. */
static int dp_writer(const Groups *g, const Param *p)
{
    if (g->ep == 1) return 1;
    return p->role == ROLE_ROUTED_EXPERT ? g->ep_index == 0 : g->dp_rank == 0;
}

void pp_gather_state(Trainer *t)
{
    struct PpTrainer *p = t->pp;
    const Groups *g = t->groups;
    const size_t total = p->full.total;
    float *dst[3] = { t->host_params, t->host_m, t->host_v };
    for (int k = 0; k < 3; k++) memset(dst[k], 0, total * sizeof(float));
    for (int c = 0; c < n_chunks(t); c++) {
        const ParamTable *pt = model_table(p->stage[c]);
        const float *src[3] = { model_params(p->stage[c]), p->opt[c].m, p->opt[c].v };
        for (int k = 0; k < 3; k++) {
            t->o->download(t->o, p->host_tmp, src[k], pt->total * sizeof(float));
            for (int i = 0; i < pt->n; i++)
                if (p->first_holder[c][i] && dp_writer(g, &pt->p[i]))
                    memcpy(dst[k] + pt->p[i].global_offset, p->host_tmp + pt->p[i].offset,
                           pt->p[i].numel * sizeof(float));
        }
    }
    /* one holder writes each entry, the others add zero: exact */
    for (int k = 0; k < 3; k++) {
        comm_allreduce(g->pp_comm, dst[k], total, COMM_F32, COMM_SUM);
        if (g->ep > 1) comm_allreduce(g->dp_comm, dst[k], total, COMM_F32, COMM_SUM);
    }
}

void pp_restore(Trainer *t, int step)
{
    struct PpTrainer *p = t->pp;
    for (int c = 0; c < n_chunks(t); c++) {
        from_full(t, c, model_params(p->stage[c]), t->host_params);
        from_full(t, c, p->opt[c].m, t->host_m);
        from_full(t, c, p->opt[c].v, t->host_v);
        p->opt[c].step = step;
    }
}

void pp_print_memory(Trainer *t, FILE *f)
{
    struct PpTrainer *p = t->pp;
    const int pp = t->groups->pp, W = 5;
    double mine[5] = { 0 }, *all = xcalloc((size_t)pp * W, sizeof(double));
    for (int c = 0; c < n_chunks(t); c++) {
        ModelMemory mm;
        model_memory(p->stage[c], &mm);
        mine[0] += (double)mm.acts;
        mine[1] += (double)mm.scratch;
        mine[2] += (double)(mm.params + mm.grads + mm.copies);
        mine[3] += 2.0 * (double)model_table(p->stage[c])->total * sizeof(float);
        mine[4] += stage_n_slots(p->stage[c]);
    }
    comm_allgather(t->groups->pp_comm, all, mine, W, COMM_F64);
    const double MiB = 1048576.0;
    fprintf(f, "memory per pipeline rank (%s; each rank holds its stages' tensors):\n", t->o->name);
    fprintf(f, "  %-6s %-22s %6s %14s %16s %16s %14s\n", "rank", "stages (layers)", "slots", "activations",
            "backward bufs", "params+grads", "AdamW m, v");
    for (int r = 0; r < pp; r++) {
        char stages[64];
        int used = 0;
        for (int c = 0; c < p->sched.n_chunks; c++) {
            int st = sched_stage_of(&p->sched, r, c);
            used += snprintf(stages + used, sizeof stages - (size_t)used, "%s%d (%d-%d)", c ? ", " : "", st,
                             p->stage_lo[st], p->stage_lo[st + 1] - 1);
        }
        const double *a = all + (size_t)r * W;
        fprintf(f, "  %-6d %-22s %6.0f %10.1f MiB %12.1f MiB %12.1f MiB %10.1f MiB\n", r, stages, a[4], a[0] / MiB,
                a[1] / MiB, a[2] / MiB, a[3] / MiB);
    }
    free(all);
}
