/* runtime/train.c - the training loop of one process (DESIGN.md "Data flow of one training
 * step"): micro-batches forward/backward with gradient accumulation, global-norm clipping,
 * AdamW, the router bias update from the step's expert loads, metrics, validation and
 * checkpoints, with the data-parallel reductions of train.h. Not here: argument parsing and
 * resume (train_cmd.c), the model (model/), the collectives (comm/).
 */
#include "train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../model/flops.h"
#include "common.h"
#include "runtime/ckpt_shard.h"
#include "runtime/plot.h"
#include "runtime/shard.h"
#include "synth.h"
#include "train_pp.h"

static Precision parse_precision(const char *s)
{
    if (!strcmp(s, "bf16")) return PREC_BF16;
    if (!strcmp(s, "fp8")) return PREC_FP8;
    return PREC_FP32;
}

const ParamTable *trainer_table(const Trainer *t)
{
    return t->pp ? pp_table(t) : model_table(t->model);
}

/* The data directory: with data.synthetic, an empty one gets the built-in corpus first. */
static void ensure_data(const Config *c)
{
    char *first = data_shard_path(c->data.dir, "train", 0);
    int have = access(first, R_OK) == 0;
    free(first);
    if (have || !c->data.synthetic) return;
    printf("data: no shards in '%s'; writing the built-in synthetic corpus (%lld tokens)\n", c->data.dir,
           c->data.synthetic_tokens);
    synth_prepare(c->data.dir, c->data.synthetic_tokens, (uint64_t)c->train.seed, c->model.vocab_size);
}

void trainer_setup(Trainer *t, const Config *cfg, const char *config_text, const char *run_dir, const World *w,
                   Groups *g)
{
    memset(t, 0, sizeof *t);
    t->cfg = *cfg;
    t->groups = g;
    t->root = g->dp_rank == 0 && g->stage == 0;
    t->config_text = xstrdup(config_text);
    t->run_dir = xstrdup(run_dir);
    t->last_val = NAN;
    const TrainConfig *tc = &cfg->train;
    Precision prec = parse_precision(tc->precision);
    t->o = strcmp(tc->device, "cuda") == 0 ? ops_cuda_create(prec) : ops_cpu_create(tc->threads, prec);
    /* the plan is one of pp = 1 (runtime/shard.h); a stage's own plan is not made yet, so
     * pipelines are not checked (the whole model's figure would refuse layouts that fit) */
    if (g->pp == 1) shard_check_memory(&t->mem, &t->mem_limit, cfg, t->o, g, w->local_size);

    if (t->root) ensure_data(cfg);
    comm_barrier(w->comm);
    const int B = tc->micro_batch_size, T = tc->seq_len, V = cfg->model.vocab_size;
    t->train = data_open(cfg->data.dir, "train", B, T, V, (uint64_t)tc->seed, g->dp_rank, g->dp);
    t->val = data_open(cfg->data.dir, "val", B, T, V, (uint64_t)tc->seed, g->dp_rank, g->dp);
    t->window = xcalloc((size_t)B * (T + 1), sizeof(int32_t));

    if (g->pp > 1) {
        pp_setup(t, w, g);     /* its stages' optimizers (runtime/train_pp.h) */
    } else {
        t->model = model_create_ep(&cfg->model, t->o, B, T, 1, g->ep > 1 ? g->ep_comm : NULL, w->node);
        model_init_params(t->model, (uint64_t)tc->seed);
        shard_init(&t->shard, t->o, model_table(t->model), g, &cfg->optim, tc->bf16_moments);
    }
    const ParamTable *pt = trainer_table(t);
    rng_seed(&t->rng, (uint64_t)tc->seed ^ 0x7261696e696e67ull);
    t->metrics = t->root ? metrics_open(run_dir) : NULL;
    /* room for a span per layer and phase of every micro-batch, when an executor records them */
    t->trace = trace_create_steps(w->rank, tc->trace_steps,
                                  (size_t)64 * (tc->grad_accum + 1) * (cfg->model.num_hidden_layers + 4), w->comm);
    t->ckpt = ckpt_writer_create();
    t->host_params = xmalloc(pt->total * sizeof(float));
    t->host_counts = xcalloc((size_t)model_n_moe_layers(t->model) * cfg->model.n_routed_experts + 1, sizeof(float));
    t->host_m = xmalloc(pt->total * sizeof(float));
    t->host_v = xmalloc(pt->total * sizeof(float));
    t->flops_per_token = flops_per_token(&cfg->model, T, cfg->model.num_nextn_predict_layers > 0);
}

void trainer_free(Trainer *t)
{
    char err[512];
    if (ckpt_writer_finish(t->ckpt, err, sizeof err) != 0) fprintf(stderr, "dstrain: %s\n", err);
    ckpt_writer_destroy(t->ckpt);
    if (t->metrics) metrics_close(t->metrics);
    trace_free(t->trace);
    if (t->pp) pp_free(t);
    else shard_free(&t->shard, t->o);
    if (t->model) model_destroy(t->model);
    data_close(t->train);
    data_close(t->val);
    ops_destroy(t->o);
    free(t->window);
    free(t->host_params);
    free(t->host_counts);
    free(t->host_m);
    free(t->host_v);
    free(t->config_text);
    free(t->run_dir);
}

/* x (n) <- the mean of x over the dp ranks (collective). */
static void mean_over_dp(Trainer *t, double *x, int n)
{
    const Groups *g = t->groups;
    if (g->dp == 1) return;
    comm_allreduce(g->dp_comm, x, (size_t)n, COMM_F64, COMM_SUM);
    for (int i = 0; i < n; i++) x[i] /= g->dp;
}

/* The step's expert loads summed over the dp ranks (integer counts: the float sum is exact
 * below 2^24 tokens per expert), so every rank's bias update and MaxVio are the job's. */
static void sum_counts_over_dp(Trainer *t)
{
    const Groups *g = t->groups;
    const size_t n = (size_t)model_n_moe_layers(t->model) * t->cfg.model.n_routed_experts;
    if (g->dp == 1 || n == 0) return;
    float *counts = t->host_counts;
    model_expert_counts(t->model, counts);
    comm_allreduce(g->dp_comm, counts, n, COMM_F32, COMM_SUM);
    model_set_expert_counts(t->model, counts);
}

double train_evaluate(Trainer *t, double *mtp)
{
    if (t->pp) return pp_evaluate(t, mtp);
    const int D = t->cfg.model.num_nextn_predict_layers, n = t->cfg.train.val_batches;
    double sum = 0;
    for (int k = 0; k < D; k++) mtp[k] = 0;
    data_rewind(t->val);
    for (int i = 0; i < n; i++) {
        ModelLoss l;
        data_next(t->val, t->window);
        model_forward(t->model, t->window, 0, &l);
        sum += l.main / n;
        for (int k = 0; k < D; k++) mtp[k] += l.mtp[k] / n;
    }
    double all[1 + MTP_MAX];
    all[0] = sum;
    for (int k = 0; k < D; k++) all[1 + k] = mtp[k];
    mean_over_dp(t, all, 1 + D);
    for (int k = 0; k < D; k++) mtp[k] = all[1 + k];
    return all[0];
}

/* One optimizer step over grad_accum micro-batches; fills the loss fields of s. */
static void train_step(Trainer *t, StepMetrics *s)
{
    const Config *c = &t->cfg;
    Model *m = t->model;
    const int M = c->train.grad_accum, D = c->model.num_nextn_predict_layers;
    const double lambda = lambda_at(&c->mtp, t->tokens), gamma = gamma_at(&c->moe, t->tokens);
    model_zero_grads(m);
    model_zero_counts(m);
    model_set_loss_weights(m, lambda, c->moe.balance_alpha, M);
    for (int i = 0; i < M; i++) {
        ModelLoss l;
        data_next(t->train, t->window);
        trace_begin_phase(t->trace, TRACE_COMPUTE, "forward", 'F', i, 0);
        model_forward(m, t->window, 1, &l);
        trace_end(t->trace, TRACE_COMPUTE);
        trace_begin_phase(t->trace, TRACE_COMPUTE, "backward", 'B', i, 0);
        model_backward(m);
        trace_end(t->trace, TRACE_COMPUTE);
        s->loss += l.main / M;
        s->balance += l.balance / M;
        for (int k = 0; k < D; k++) s->mtp[k] += l.mtp[k] / M;
    }
    s->n_mtp = D;
    trace_begin(t->trace, TRACE_COMPUTE, "optimizer", -1, -1);
    const int dp = t->groups->dp;
    double losses[2 + MTP_MAX] = { s->loss, s->balance };
    for (int k = 0; k < D; k++) losses[2 + k] = s->mtp[k];
    mean_over_dp(t, losses, 2 + D);
    s->loss = losses[0];
    s->balance = losses[1];
    for (int k = 0; k < D; k++) s->mtp[k] = losses[2 + k];
    /* ZeRO-1 per region (runtime/shard.h): this rank's slices of the gradients summed over
     * the region's group; the mean (the global gradient) is that times 1/dp, which the norm
     * and the optimizer's grad_scale apply (exact for dp a power of two). */
    shard_reduce_grads(&t->shard, t->o, model_grads(m));
    s->grad_norm = shard_grad_norm(&t->shard);
    s->lr = lr_at(&c->optim, t->step, c->train.steps);
    shard_step(&t->shard, model_params(m), s->lr, clip_scale(s->grad_norm, c->optim.grad_clip) / dp);
    shard_gather_params(&t->shard, t->o, model_params(m));
    sum_counts_over_dp(t);
    s->max_nodes = model_max_nodes(m);
    if (dp > 1) {
        int32_t nodes = s->max_nodes;
        comm_allreduce(t->groups->dp_comm, &nodes, 1, COMM_I32, COMM_MAX);
        s->max_nodes = nodes;
    }
    LoadStats ls = model_load_stats(m);
    s->maxvio = ls.maxvio_mean;
    s->maxvio_max = ls.maxvio_max;
    model_bias_update(m, gamma, c->moe.bias_zero_mean);
    trace_end(t->trace, TRACE_COMPUTE);
    t->step++;
    t->tokens += (long long)M * c->train.micro_batch_size * c->train.seq_len * dp;
}

/* The training stall of a save is the download into host staging and the gathering of the
 * moments; on one rank also the wait for the previous save and the writer's snapshot copy (the
 * write itself runs in the background); on several ranks the whole two-phase save. */
static void save_checkpoint(Trainer *t)
{
    /* pp = 1: the moments of each region are gathered from its slices, so every rank holds its
     * own table's (runtime/shard.h); with several ranks each writes the row blocks it owns into
     * its own file (runtime/ckpt_shard.h), any (dp, ep) resuming any other. pp > 1: the stages'
     * tensors are gathered into whole tables (runtime/train_pp.h) and the root writes a one-rank
     * checkpoint. Collective. */
    const ParamTable *pt = trainer_table(t);
    double t0 = now_seconds();
    if (t->pp) {
        pp_gather_state(t);
        if (!t->root) return;
    } else {
        shard_gather_moments(&t->shard, t->o, t->host_m, t->host_v);
        t->o->download(t->o, t->host_params, model_params(t->model), pt->total * sizeof(float));
    }
    CkptRequest r = {
        .run_dir = t->run_dir, .config_text = t->config_text, .table = pt,
        .params = t->host_params, .adam_m = t->host_m, .adam_v = t->host_v,
        .state = { .step = t->step, .tokens = t->tokens, .data = data_get_state(t->train), .rng = t->rng.state },
        .keep = t->cfg.train.keep_checkpoints,
        .layout = { .world_size = 1, .pp = 1, .dp = 1, .ep = 1 },
    };
    char err[1024];
    if (!t->pp && t->groups->dp > 1) {
        if (ckpt_shard_save(&r, &t->cfg.model, t->groups, err, sizeof err) != 0)
            fprintf(stderr, "dstrain: [rank %d] %s (training continues)\n", t->groups->dp_rank, err);
        else if (t->metrics)
            metrics_log(t->metrics, "checkpoint: ckpt-%d written by %d ranks; training stalled %.1f ms\n", t->step,
                        t->groups->dp, 1e3 * (now_seconds() - t0));
        if (t->root) plot_refresh(t->run_dir);
        return;
    }
    if (ckpt_save_async(t->ckpt, &r, err, sizeof err) != 0)
        metrics_log(t->metrics, "checkpoint: %s (training continues)\n", err);
    double copy_s, write_s;
    ckpt_writer_times(t->ckpt, &copy_s, &write_s);
    metrics_log(t->metrics, "checkpoint: ckpt-%d saving in the background; training stalled %.1f ms "
                            "(%.1f ms of it waiting for the previous save, %.3f s to write)\n",
                t->step, 1e3 * (now_seconds() - t0), 1e3 * ckpt_writer_wait_seconds(t->ckpt), write_s);
    plot_refresh(t->run_dir);   /* loss.svg at each checkpoint and at the end (runtime/plot.h) */
}

static void validate_and_log(Trainer *t)
{
    double mtp[MTP_MAX];
    t->last_val = train_evaluate(t, mtp);
    if (t->metrics) metrics_val(t->metrics, t->step, t->last_val, t->cfg.model.num_nextn_predict_layers, mtp);
}

static void report_final(Trainer *t)
{
    if (!t->metrics) return;
    DataMeta meta;
    double rate = -1, floor = -1, unigram = -1;
    if (data_read_meta(t->cfg.data.dir, &meta) == 0 && meta.has_entropy) {
        rate = meta.entropy_rate_nats;
        floor = data_meta_loss_floor(&meta, t->cfg.train.seq_len);
        unigram = meta.unigram_entropy_nats;
    }
    metrics_final(t->metrics, t->step, t->last_val, rate, floor, unigram);
    plot_refresh(t->run_dir);   /* again, with the final record's loss floor */
}

void train_run(Trainer *t)
{
    const TrainConfig *tc = &t->cfg.train;
    const double tokens_per_step = (double)tc->grad_accum * tc->micro_batch_size * tc->seq_len * t->groups->dp;
    double started = now_seconds();
    int first = t->step;
    while (t->step < tc->steps) {
        StepMetrics s;
        memset(&s, 0, sizeof s);
        double t0 = now_seconds();
        trace_step_begin(t->trace, t->step + 1);
        if (t->pp) pp_train_step(t, &s);
        else train_step(t, &s);
        trace_step_end(t->trace);
        s.step_s = now_seconds() - t0;
        s.step = t->step;
        s.steps = tc->steps;
        s.tokens = t->tokens;
        s.tokens_per_s = tokens_per_step / s.step_s;
        s.mfu = t->peak_flops > 0 ? s.tokens_per_s * t->flops_per_token / t->peak_flops : 0;
        s.eta_s = (now_seconds() - started) / (t->step - first) * (tc->steps - t->step);
        if (t->metrics && (t->step % tc->log_every == 0 || t->step == tc->steps)) metrics_step(t->metrics, &s);
        if (tc->val_every > 0 && t->step % tc->val_every == 0 && t->step < tc->steps) validate_and_log(t);
        if (tc->checkpoint_every > 0 && t->step % tc->checkpoint_every == 0 && t->step < tc->steps)
            save_checkpoint(t);
    }
    validate_and_log(t);
    save_checkpoint(t);
    report_final(t);
    trace_finish(t->trace, t->run_dir);
}
