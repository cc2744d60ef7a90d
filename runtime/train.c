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
#include "runtime/shard.h"
#include "synth.h"

static Precision parse_precision(const char *s)
{
    if (!strcmp(s, "bf16")) return PREC_BF16;
    if (!strcmp(s, "fp8")) return PREC_FP8;
    return PREC_FP32;
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

/* ZeRO-1 slices: dp equal slices of S = ceil(total / dp) floats (the last ones shorter or
 * empty); this rank updates [lo, hi). Host staging for the exchanges (the comm works on host
 * memory; with the cpu backend the transfers are copies). */
static void zero_plan(Trainer *t, size_t total)
{
    const int dp = t->groups->dp, r = t->groups->dp_rank;
    t->slice = (total + dp - 1) / dp;
    t->padded = t->slice * dp;
    t->lo = (size_t)r * t->slice < total ? (size_t)r * t->slice : total;
    t->hi = t->lo + t->slice < total ? t->lo + t->slice : total;
    if (dp == 1) return;
    t->zero_full = xcalloc(t->padded, sizeof(float));
    t->zero_part = xcalloc(t->slice, sizeof(float));
    t->grad_slice = t->o->alloc(t->o, t->slice * sizeof(float));
}

/* grads of the whole table -> the sum over dp ranks of this rank's slice, in t->grad_slice
 * (reduce-scatter; the padding past total is zero on every rank). */
static float *zero_reduce_grads(Trainer *t)
{
    const size_t total = model_table(t->model)->total;
    t->o->download(t->o, t->zero_full, model_grads(t->model), total * sizeof(float));
    comm_reduce_scatter(t->groups->dp_comm, t->zero_part, t->zero_full, t->slice, COMM_F32, COMM_SUM);
    t->o->upload(t->o, t->grad_slice, t->zero_part, t->slice * sizeof(float));
    return t->grad_slice;
}

/* params[lo, hi) of every rank -> every rank's params (all-gather). */
static void zero_gather_params(Trainer *t)
{
    const size_t total = model_table(t->model)->total;
    float *full = t->zero_full, *mine = full + (size_t)t->groups->dp_rank * t->slice;
    float *params = model_params(t->model);
    t->o->download(t->o, mine, params + t->lo, (t->hi - t->lo) * sizeof(float));
    comm_allgather(t->groups->dp_comm, full, mine, t->slice, COMM_F32);
    t->o->upload(t->o, params, full, total * sizeof(float));
}

/* host_m, host_v (padded; the table's moments in [0, total)) <- every rank's slice of them
 * (all-gather; collective over dp). */
static void zero_gather_moments(Trainer *t)
{
    const size_t n = t->hi - t->lo;
    float *dst[2] = { t->host_m, t->host_v }, *src[2] = { t->opt.m, t->opt.v };
    for (int k = 0; k < 2; k++) {
        float *mine = dst[k] + (size_t)t->groups->dp_rank * t->slice;
        t->o->download(t->o, mine, src[k], n * sizeof(float));
        if (t->groups->dp > 1) comm_allgather(t->groups->dp_comm, dst[k], mine, t->slice, COMM_F32);
    }
}

void trainer_setup(Trainer *t, const Config *cfg, const char *config_text, const char *run_dir, const World *w,
                   Groups *g)
{
    memset(t, 0, sizeof *t);
    t->cfg = *cfg;
    t->groups = g;
    t->root = g->dp_rank == 0;
    t->config_text = xstrdup(config_text);
    t->run_dir = xstrdup(run_dir);
    t->last_val = NAN;
    const TrainConfig *tc = &cfg->train;
    Precision prec = parse_precision(tc->precision);
    t->o = strcmp(tc->device, "cuda") == 0 ? ops_cuda_create(prec) : ops_cpu_create(tc->threads, prec);
    shard_check_memory(&t->mem, &t->mem_limit, cfg, t->o, g, w->local_size);

    if (t->root) ensure_data(cfg);
    comm_barrier(g->dp_comm);
    const int B = tc->micro_batch_size, T = tc->seq_len, V = cfg->model.vocab_size;
    t->train = data_open(cfg->data.dir, "train", B, T, V, (uint64_t)tc->seed, g->dp_rank, g->dp);
    t->val = data_open(cfg->data.dir, "val", B, T, V, (uint64_t)tc->seed, g->dp_rank, g->dp);
    t->window = xcalloc((size_t)B * (T + 1), sizeof(int32_t));

    t->model = model_create_ep(&cfg->model, t->o, B, T, 1, g->ep > 1 ? g->ep_comm : NULL, w->node);
    model_init_params(t->model, (uint64_t)tc->seed);
    const ParamTable *pt = model_table(t->model);
    zero_plan(t, pt->total);
    optim_init_shard(&t->opt, t->o, pt, &cfg->optim, tc->bf16_moments, t->lo, t->hi);
    rng_seed(&t->rng, (uint64_t)tc->seed ^ 0x7261696e696e67ull);
    t->metrics = t->root ? metrics_open(run_dir) : NULL;
    t->ckpt = ckpt_writer_create();
    t->host_params = xmalloc(pt->total * sizeof(float));
    t->host_counts = xcalloc((size_t)model_n_moe_layers(t->model) * cfg->model.n_routed_experts + 1, sizeof(float));
    t->host_m = xmalloc(t->padded * sizeof(float));
    t->host_v = xmalloc(t->padded * sizeof(float));
    t->flops_per_token = flops_per_token(&cfg->model, T, cfg->model.num_nextn_predict_layers > 0);
}

void trainer_free(Trainer *t)
{
    char err[512];
    if (ckpt_writer_finish(t->ckpt, err, sizeof err) != 0) fprintf(stderr, "dstrain: %s\n", err);
    ckpt_writer_destroy(t->ckpt);
    if (t->metrics) metrics_close(t->metrics);
    optim_free(&t->opt);
    if (t->grad_slice) t->o->free(t->o, t->grad_slice);
    free(t->zero_full);
    free(t->zero_part);
    model_destroy(t->model);
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
        model_forward(m, t->window, 1, &l);
        model_backward(m);
        s->loss += l.main / M;
        s->balance += l.balance / M;
        for (int k = 0; k < D; k++) s->mtp[k] += l.mtp[k] / M;
    }
    s->n_mtp = D;
    const int dp = t->groups->dp;
    double losses[2 + MTP_MAX] = { s->loss, s->balance };
    for (int k = 0; k < D; k++) losses[2 + k] = s->mtp[k];
    mean_over_dp(t, losses, 2 + D);
    s->loss = losses[0];
    s->balance = losses[1];
    for (int k = 0; k < D; k++) s->mtp[k] = losses[2 + k];
    /* ZeRO-1: this rank's slice of the sum of the gradients over dp ranks; the mean (the global
     * gradient) is that times 1/dp, which the norm and the optimizer's grad_scale apply (exact
     * for dp a power of two). An expert's gradient is nonzero only on the ranks holding it (one
     * per EP group: dp/ep of them, each with the tokens of its whole group), so the same sum is
     * the expert's gradient over all dp * B * T tokens. The norm sums the slices' squares. */
    float *grads = dp > 1 ? zero_reduce_grads(t) : model_grads(m);
    s->grad_norm = optim_grad_norm(&t->opt, grads);
    if (dp > 1) {
        double sq = s->grad_norm * s->grad_norm;
        comm_allreduce(t->groups->dp_comm, &sq, 1, COMM_F64, COMM_SUM);
        s->grad_norm = sqrt(sq) / dp;
    }
    s->lr = lr_at(&c->optim, t->step, c->train.steps);
    optim_step(&t->opt, model_params(m), grads, s->lr, clip_scale(s->grad_norm, c->optim.grad_clip) / dp);
    if (dp > 1) zero_gather_params(t);
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
    t->step++;
    t->tokens += (long long)M * c->train.micro_batch_size * c->train.seq_len * dp;
}

/* The training stall of a save is the download into host staging, the wait for the previous
 * save, and the writer's snapshot copy; the write itself runs in the background. */
static void save_checkpoint(Trainer *t)
{
    /* every dp rank holds the same weights (train.h); the moments are gathered from the slices,
     * so the root's copy is the job's and the checkpoint is a one-rank one, resumable at any
     * dp. Collective over dp_comm; the root writes. */
    const ParamTable *pt = model_table(t->model);
    const size_t bytes = pt->total * sizeof(float);
    double t0 = now_seconds();
    zero_gather_moments(t);
    if (!t->root) return;
    t->o->download(t->o, t->host_params, model_params(t->model), bytes);
    CkptRequest r = {
        .run_dir = t->run_dir, .config_text = t->config_text, .table = pt,
        .params = t->host_params, .adam_m = t->host_m, .adam_v = t->host_v,
        .state = { .step = t->step, .tokens = t->tokens, .data = data_get_state(t->train), .rng = t->rng.state },
        .keep = t->cfg.train.keep_checkpoints,
        .layout = { .world_size = 1, .pp = 1, .dp = 1, .ep = 1 },
    };
    char err[1024];
    if (ckpt_save_async(t->ckpt, &r, err, sizeof err) != 0)
        metrics_log(t->metrics, "checkpoint: %s (training continues)\n", err);
    double copy_s, write_s;
    ckpt_writer_times(t->ckpt, &copy_s, &write_s);
    metrics_log(t->metrics, "checkpoint: ckpt-%d saving in the background; training stalled %.1f ms "
                            "(%.1f ms of it waiting for the previous save, %.3f s to write)\n",
                t->step, 1e3 * (now_seconds() - t0), 1e3 * ckpt_writer_wait_seconds(t->ckpt), write_s);
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
        train_step(t, &s);
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
}
