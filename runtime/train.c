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

#include "../checkpoint/hash.h"
#include "../comm/watchdog.h"
#include "../model/flops.h"
#include "common.h"
#include "runtime/ckpt_shard.h"
#include "runtime/plot.h"
#include "guard.h"
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

/* Host <-> backend copies, watched (comm/watchdog.h): a wedged device is a hang like any other. */
static void download(Trainer *t, void *host, const void *dev, size_t bytes)
{
    watchdog_op_begin("download");
    t->o->download(t->o, host, dev, bytes);
    watchdog_op_end();
}

static void upload(Trainer *t, void *dev, const void *host, size_t bytes)
{
    watchdog_op_begin("upload");
    t->o->upload(t->o, dev, host, bytes);
    watchdog_op_end();
}

int trainer_saves_live(const Trainer *t)
{
    const Shard *s = &t->shard;
    return !t->pp && t->groups->dp == 1 && !strcmp(t->o->name, "cpu") && s->n == 1 && s->r[0].lo == 0 &&
           s->r[0].hi == model_table(t->model)->total;
}

/* pp = 1, staged saves: the checkpoint staging's pages now, not inside the first save's stall
 * (page faults over gigabytes took seconds there). */
static void touch_staging(Trainer *t, size_t total)
{
    memset(t->host_params, 0, total * sizeof(float));
    memset(t->host_m, 0, total * sizeof(float));
    memset(t->host_v, 0, total * sizeof(float));
}

/* Live saves hold no staging: what resume or init-from staged through it goes back to the
 * system before training (the EMA keeps host_params, its per-step download). */
static void release_staging(Trainer *t)
{
    free(t->host_m);
    free(t->host_v);
    t->host_m = t->host_v = NULL;
    if (t->ema) return;
    free(t->host_params);
    t->host_params = NULL;
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
    t->saved_step = -1;
    t->flip_rank = t->flip_step = -1;
    const char *flip = getenv("DSTRAIN_DEBUG_FLIP_BIT");
    if (flip && *flip && sscanf(flip, "%d:%d", &t->flip_rank, &t->flip_step) != 2)
        DIE("environment: DSTRAIN_DEBUG_FLIP_BIT = '%s' is not RANK:STEP", flip);
    const TrainConfig *tc = &cfg->train;
    Precision prec = parse_precision(tc->precision);
    t->o = strcmp(tc->device, "cuda") == 0 ? ops_cuda_create(prec) : ops_cpu_create(tc->threads, prec);
    /* the plan of pp = 1 (runtime/shard.h); a pipeline rank plans and checks its stages' in
     * pp_setup, before they are allocated (runtime/train_pp.h) */
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
        const int mode = MODEL_TRAIN | (tc->recompute ? MODEL_RECOMPUTE : 0);
        t->model = model_create_ep(&cfg->model, t->o, B, T, mode, g->ep > 1 ? g->ep_comm : NULL, w->node,
                                   cfg->moe.capacity_factor);
        model_init_params(t->model, (uint64_t)tc->seed);
        shard_init(&t->shard, t->o, model_table(t->model), g, &cfg->optim, train_bf16_moments(tc));
    }
    const ParamTable *pt = trainer_table(t);
    rng_seed(&t->rng, (uint64_t)tc->seed ^ 0x7261696e696e67ull);
    /* room for a span per layer and phase of every micro-batch, when an executor records them */
    t->trace = trace_create_steps(w->rank, tc->trace_steps,
                                  (size_t)64 * (tc->grad_accum + 1) * (cfg->model.num_hidden_layers + 4), w->comm);
    t->ckpt = ckpt_writer_create();
    t->host_params = xmalloc(pt->total * sizeof(float));
    t->host_counts = xcalloc((size_t)model_n_moe_layers(t->model) * cfg->model.n_routed_experts + 1, sizeof(float));
    t->host_m = xmalloc(pt->total * sizeof(float));
    t->host_v = xmalloc(pt->total * sizeof(float));
    if (g->pp == 1 && !trainer_saves_live(t)) touch_staging(t, pt->total);
    t->sdc_sums = xcalloc((size_t)g->dp, sizeof(int64_t));
    if (tc->ema_decay > 0 && t->root) t->ema = xmalloc(pt->total * sizeof(float));   /* the root saves it */
    t->flops_per_token = flops_per_token(&cfg->model, T, cfg->model.num_nextn_predict_layers > 0);
}

void trainer_free(Trainer *t)
{
    char err[512];
    ckpt_writer_finish(t->ckpt, err, sizeof err);   /* every result was reported by train_run */
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
    free(t->sdc_sums);
    free(t->ema);
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

/* Micro-batches per step after `tokens` tokens (SPEC.md section 7: the batch-size ramp is a
 * function of tokens seen, so a resume, which restores the tokens, resumes the ramp exactly):
 * batch_ramp_start growing linearly to grad_accum over batch_ramp_tokens, then grad_accum. */
int train_accum_at(const TrainConfig *c, long long tokens)
{
    if (c->batch_ramp_start <= 0 || tokens >= c->batch_ramp_tokens) return c->grad_accum;
    long double grow = (long double)(c->grad_accum - c->batch_ramp_start) * tokens / c->batch_ramp_tokens;
    return c->batch_ramp_start + (int)grow;
}

/* model_grads_hook's call in the step's last backward, once the lowest MoE block's weight
 * gradients are in: the routed experts' gradients are final, so their reduce-scatter over
 * edp_comm runs while the dense blocks and the embedding finish backward (traced: the post,
 * then a span "backward below MoE" up to the end of that backward). */
typedef struct ExpertPost { Trainer *t; int mb; int posted; } ExpertPost;

static void post_expert_grads(void *ctx)
{
    ExpertPost *e = ctx;
    Trainer *t = e->t;
    trace_instant(t->trace, TRACE_COMPUTE, "reduce-scatter experts posted", e->mb, 0);
    shard_post_grads(&t->shard, t->o, model_grads(t->model), shard_expert_region(&t->shard));
    trace_begin_phase(t->trace, TRACE_COMPUTE, "backward below MoE", 'B', e->mb, 0);
    e->posted = 1;
}

/* One optimizer step over train_accum_at micro-batches; fills the loss fields of s. */
static void train_step(Trainer *t, StepMetrics *s)
{
    const Config *c = &t->cfg;
    Model *m = t->model;
    const int M = train_accum_at(&c->train, t->tokens), D = c->model.num_nextn_predict_layers;
    const double lambda = lambda_at(&c->mtp, t->tokens), gamma = gamma_at(&c->moe, t->tokens);
    model_zero_grads(m);
    model_zero_counts(m);
    model_set_loss_weights(m, lambda, c->moe.balance_alpha, M);
    ExpertPost post = { t, M - 1, 0 };
    if (shard_expert_region(&t->shard) >= 0 && model_lowest_moe_block(m) >= 0)
        model_grads_hook(m, model_lowest_moe_block(m), M, post_expert_grads, &post);
    for (int i = 0; i < M; i++) {
        ModelLoss l;
        data_next(t->train, t->window);
        trace_begin_phase(t->trace, TRACE_COMPUTE, "forward", 'F', i, 0);
        model_forward(m, t->window, 1, &l);
        trace_end(t->trace, TRACE_COMPUTE);
        trace_begin_phase(t->trace, TRACE_COMPUTE, "backward", 'B', i, 0);
        model_backward(m);
        if (post.posted == 1) {     /* the span "backward below MoE" */
            trace_end(t->trace, TRACE_COMPUTE);
            post.posted = 2;
        }
        trace_end(t->trace, TRACE_COMPUTE);
        s->loss += l.main / M;
        s->balance += l.balance / M;
        for (int k = 0; k < D; k++) s->mtp[k] += l.mtp[k] / M;
    }
    model_grads_hook(m, -1, 0, NULL, NULL);    /* fired by now (post lives on this stack) */
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
    if (dp > 1) trace_begin(t->trace, TRACE_COMPUTE, "reduce-scatter wait", -1, -1);
    shard_reduce_grads(&t->shard, t->o, model_grads(m));
    if (dp > 1) trace_end(t->trace, TRACE_COMPUTE);
    s->grad_norm = shard_grad_norm(&t->shard);
    s->lr = lr_at(&c->optim, t->step, c->train.steps);
    /* divergence guard: a non-finite loss or gradient never reaches the weights. Every rank
     * sees the same (reduced) loss and norm, so all skip together; the optimizers' step counts
     * still advance, so they stay equal to t->step, which a resume restores. */
    s->skipped = !isfinite(s->loss) || !isfinite(s->grad_norm);
    if (s->skipped) {
        shard_skip_step(&t->shard);
    } else {
        shard_step(&t->shard, model_params(m), s->lr, clip_scale(s->grad_norm, c->optim.grad_clip) / dp);
        shard_gather_params(&t->shard, t->o, model_params(m));
    }
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
    if (!s->skipped) model_bias_update(m, gamma, c->moe.bias_zero_mean);
    trace_end(t->trace, TRACE_COMPUTE);
    t->step++;
    t->tokens += (long long)M * c->train.micro_batch_size * c->train.seq_len * dp;
}

/* A save's result, reported on stderr at once when it failed; counts failures in a row. */
static void note_save(Trainer *t, int rc, const char *err)
{
    if (rc > 0) {
        t->failed_saves = 0;
    } else if (rc < 0) {
        t->failed_saves++;
        fflush(stdout);
        fprintf(stderr, "dstrain: %s (failed save %d in a row of at most train.max_failed_saves = %d)\n", err,
                t->failed_saves, t->cfg.train.max_failed_saves);
        fflush(stderr);
    }
}

/* Root: the result of a save that finished since the last look (wait: wait for it). */
static void poll_saves(Trainer *t, int wait)
{
    char err[1024];
    int rc = ckpt_writer_poll(t->ckpt, wait, NULL, err, sizeof err);
    note_save(t, rc, err);
}

/* No NaN or infinity in x: an exponent field of all ones. Branch-free over the bits, so the
 * compiler vectorises it (a save checks every weight inside the training stall). */
static int all_finite(const float *x, size_t n)
{
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t b;
        memcpy(&b, x + i, sizeof b);
        bad |= (b & 0x7f800000u) == 0x7f800000u;
    }
    return !bad;
}

/* The training stall of a save is the download into host staging and the gathering of the
 * moments (none for live saves, trainer_saves_live); on one rank also the wait for the previous
 * save and the fork of the writer's process (the write itself runs in the background); on
 * several ranks the whole two-phase save. */
static void save_checkpoint(Trainer *t)
{
    /* pp = 1: the moments of each region are gathered from its slices, so every rank holds its
     * own table's (runtime/shard.h); with several ranks each writes the row blocks it owns into
     * its own file (runtime/ckpt_shard.h), any (dp, ep) resuming any other. pp > 1: every rank
     * writes the rows it owns of its stages' tensors (runtime/train_pp.h pp_save), any (pp, dp,
     * ep) resuming any other. Collective. */
    const ParamTable *pt = trainer_table(t);
    double t0 = now_seconds();
    const int live = trainer_saves_live(t);
    if (t->pp) {
        pp_gather_state(t);
    } else if (!live) {
        shard_gather_moments(&t->shard, t->o, t->host_m, t->host_v);
        download(t, t->host_params, model_params(t->model), pt->total * sizeof(float));
    }
    /* live: the weights and the one region's moments in place, the table's layout */
    const float *params = live ? model_params(t->model) : t->host_params;
    const float *adam_m = live ? t->shard.r[0].opt.m : t->host_m, *adam_v = live ? t->shard.r[0].opt.v : t->host_v;
    t->saved_step = t->step;
    const int sharded = t->pp || t->groups->dp > 1;
    Comm *all = t->pp ? pp_world(t) : t->groups->dp_comm;    /* the ranks writing files */
    if (!sharded && !t->root) return;
    /* a diverged model never replaces a good checkpoint (nor pushes one out by retention); with
     * per-rank files every rank must agree (a collective) */
    int32_t bad = !all_finite(params, pt->total);
    if (sharded) comm_allreduce(all, &bad, 1, COMM_I32, COMM_MAX);
    if (t->root) poll_saves(t, 1);   /* the previous save's result, before a new one starts */
    if (bad) {
        char why[200];
        snprintf(why, sizeof why, "checkpoint of step %d: the weights are not finite (diverged); not written, the "
                 "older checkpoints are kept", t->step);
        if (t->root) note_save(t, -1, why);
        return;
    }
    CkptRequest r = {
        .run_dir = t->run_dir, .config_text = t->config_text, .table = pt,
        .params = params, .adam_m = adam_m, .adam_v = adam_v, .ema = t->ema,
        .state = { .step = t->step, .tokens = t->tokens, .data = data_get_state(t->train), .rng = t->rng.state },
        .keep = t->cfg.train.keep_checkpoints,
        .layout = { .world_size = 1, .pp = 1, .dp = 1, .ep = 1 },
    };
    char err[1024];
    if (sharded) {
        int32_t failed = (t->pp ? pp_save(t, &r, err, sizeof err)
                                : ckpt_shard_save(&r, &t->cfg.model, t->groups, err, sizeof err)) != 0;
        if (failed) fprintf(stderr, "dstrain: [rank %d] %s\n", all->rank, err);
        comm_allreduce(all, &failed, 1, COMM_I32, COMM_MAX);
        if (t->root) {
            if (failed) snprintf(err, sizeof err, "checkpoint of step %d: the save failed on at least one rank", t->step);
            note_save(t, failed ? -1 : 1, err);
            if (!failed)
                metrics_log(t->metrics, "checkpoint: ckpt-%d written by %d ranks; training stalled %.1f ms\n",
                            t->step, all->size, 1e3 * (now_seconds() - t0));
            plot_refresh(t->run_dir);
        }
        return;
    }
    if (ckpt_save_async(t->ckpt, &r, err, sizeof err) != 0) {
        note_save(t, -1, err);
        return;
    }
    double copy_s, write_s;
    ckpt_writer_times(t->ckpt, &copy_s, &write_s);
    metrics_log(t->metrics, "checkpoint: ckpt-%d saving in the background; training stalled %.1f ms "
                            "(%.1f ms of it waiting for the previous save, %.3f s to write)\n",
                t->step, 1e3 * (now_seconds() - t0), 1e3 * ckpt_writer_wait_seconds(t->ckpt), write_s);
    plot_refresh(t->run_dir);   /* loss.svg at each checkpoint and at the end (runtime/plot.h) */
}

/* Save the checkpoint of this step (unless it is already being saved) and wait for it: the
 * exit status (TRAIN_EXIT_SAVE when it failed, else ok), the same on every rank. */
static int save_and_wait(Trainer *t, int ok)
{
    if (t->saved_step != t->step) save_checkpoint(t);
    int32_t status = ok;
    if (t->root) {
        poll_saves(t, 1);
        if (t->failed_saves > 0) status = TRAIN_EXIT_SAVE;   /* a success sets it to 0 */
    }
    /* the root is (stage 0, dp rank 0): down its pipeline first, then across each stage */
    if (t->groups->pp > 1) comm_broadcast(t->groups->pp_comm, &status, 1, COMM_I32, 0);
    if (t->groups->dp > 1) comm_broadcast(t->groups->dp_comm, &status, 1, COMM_I32, 0);
    return status;
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

/* Divergence bookkeeping of one step (the same on every rank): skipped steps in a row, and
 * the spike rule against the running mean of the finite losses (reported, not acted on). */
static void watch_loss(Trainer *t, const StepMetrics *s)
{
    const TrainConfig *tc = &t->cfg.train;
    if (s->skipped) {
        t->bad_steps++;
        t->bad_total++;
        if (t->root) {
            fflush(stdout);
            fprintf(stderr, "dstrain: step %d: loss %g, grad norm %g: not finite, optimizer step skipped "
                    "(%d in a row, the run stops at %d; %lld skipped in all)\n", s->step, s->loss, s->grad_norm,
                    t->bad_steps, tc->max_bad_steps, t->bad_total);
        }
        return;
    }
    t->bad_steps = 0;
    /* the mean of the first losses is a poor yardstick (they fall fast): judge from the 10th on */
    if (tc->spike_factor > 0 && t->loss_n >= 10 && s->loss > tc->spike_factor * t->loss_mean && t->root) {
        fflush(stdout);
        fprintf(stderr, "dstrain: step %d: loss spike: %.4f is %.2fx its running mean %.4f (train.spike_factor "
                "= %g)\n", s->step, s->loss, s->loss / t->loss_mean, t->loss_mean, tc->spike_factor);
    }
    /* running mean: the plain mean over the first 100 finite losses, then an exponential mean
     * over about the last 100 */
    t->loss_n++;
    double w = t->loss_n < 100 ? 1.0 / t->loss_n : 0.01;
    t->loss_mean += w * (s->loss - t->loss_mean);
}

/* The checkpoint every checkpoint_every steps, except inside a run of non-finite steps: their
 * weights are those before the run (skipped steps change nothing) or worse, and saving them
 * would only push good checkpoints out by retention. */
static void periodic_save(Trainer *t)
{
    if (t->bad_steps == 0) {
        save_checkpoint(t);
        return;
    }
    if (t->root)
        fprintf(stderr, "dstrain: checkpoint of step %d not written: step %d was not finite (the older checkpoints "
                "are kept)\n", t->step, t->step);
}

/* ema <- decay * ema + (1 - decay) * weights, on the host after every applied step (TR 3.2.3:
 * the EMA lives in CPU memory; here it is updated synchronously, one download and one pass over
 * the weights per step, so resume stays bit-exact). */
static void ema_update(Trainer *t)
{
    const size_t n = model_table(t->model)->total;
    const float d = (float)t->cfg.train.ema_decay, e = 1.0f - d;
    download(t, t->host_params, model_params(t->model), n * sizeof(float));
    for (size_t i = 0; i < n; i++) t->ema[i] = d * t->ema[i] + e * t->host_params[i];
}

/* The debug hook: one bit of the first weight flipped on one rank (a stand-in for a bad DRAM
 * cell or a miscomputing core). */
static void debug_flip(Trainer *t)
{
    if (t->groups->dp_rank != t->flip_rank || t->step != t->flip_step) return;
    float w;
    uint32_t bits;
    download(t, &w, model_params(t->model), sizeof w);
    memcpy(&bits, &w, sizeof bits);
    bits ^= 1u;
    memcpy(&w, &bits, sizeof w);
    upload(t, model_params(t->model), &w, sizeof w);
    fprintf(stderr, "dstrain: DSTRAIN_DEBUG_FLIP_BIT: flipped a bit of the weights of dp rank %d after step %d\n",
            t->groups->dp_rank, t->step);
}

/* Silent data corruption check: every dp rank holds the same weights bit for bit (train.h:
 * the all-gather of ZeRO-1 gives each the same values), so their XXH64 checksums must agree.
 * Collective over dp_comm (every rank sees every checksum and decides alike): 0, or
 * TRAIN_EXIT_SDC with one line from the root naming the ranks that differ from dp rank 0. */
static int sdc_check(Trainer *t)
{
    const Groups *g = t->groups;
    /* the replicated region only (the whole table when ep = 1): under EP each rank's experts
     * are its own, not replicas (runtime/shard.h) */
    const Region *rep = &t->shard.r[0];
    const size_t bytes = rep->n * sizeof(float);
    download(t, t->host_params, model_params(t->model) + rep->base, bytes);
    int64_t mine = (int64_t)ckpt_hash64(t->host_params, bytes);
    comm_allgather(g->dp_comm, t->sdc_sums, &mine, 1, COMM_I64);
    char ranks[256] = "";
    int bad = 0, first = 0;
    for (int r = 1; r < g->dp; r++) {
        if (t->sdc_sums[r] == t->sdc_sums[0]) continue;
        if (!bad) first = r;
        size_t at = strlen(ranks);
        if (at < sizeof ranks - 16) snprintf(ranks + at, sizeof ranks - at, "%s%d", bad ? ", " : "", r);
        bad++;
    }
    if (!bad) return 0;
    if (t->root) {
        fflush(stdout);
        fprintf(stderr, "dstrain: silent data corruption check after step %d: the weights of dp rank%s %s differ "
                "from dp rank 0's (XXH64 %016llx vs %016llx); stopping without a checkpoint, the older ones are "
                "from before (exit status %d)\n", t->step, bad > 1 ? "s" : "", ranks,
                (unsigned long long)t->sdc_sums[first], (unsigned long long)t->sdc_sums[0],
                TRAIN_EXIT_SDC);
    }
    return TRAIN_EXIT_SDC;
}

/* Why to stop after this step, agreed by every rank (one all-reduce of the local reasons):
 * the exit status to stop with, or 0 to go on. */
static int agree_stop(Trainer *t)
{
    const TrainConfig *tc = &t->cfg.train;
    if (t->root) poll_saves(t, 0);
    int32_t why[3] = {
        guard_stop_signal(),
        t->bad_steps >= tc->max_bad_steps,
        t->failed_saves >= tc->max_failed_saves,
    };
    if (t->groups->dp > 1) comm_allreduce(t->groups->dp_comm, why, 3, COMM_I32, COMM_MAX);
    if (t->groups->pp > 1) comm_allreduce(t->groups->pp_comm, why, 3, COMM_I32, COMM_MAX);   /* every stage */
    if (why[2]) return TRAIN_EXIT_SAVE;
    if (why[1]) return TRAIN_EXIT_DIVERGED;
    if (why[0]) return TRAIN_EXIT_STOPPED;
    return 0;
}

/* End the run early with status (agree_stop's). A stop signal saves the step first. */
static int stop_run(Trainer *t, int status)
{
    const int sig = guard_stop_signal();
    if (status == TRAIN_EXIT_STOPPED) status = save_and_wait(t, TRAIN_EXIT_STOPPED);
    if (!t->root) return status;
    fflush(stdout);
    if (status == TRAIN_EXIT_STOPPED)
        fprintf(stderr, "dstrain: stopped by %s after step %d; checkpoint '%s/ckpt-%d' saved (exit status %d: "
                "resume with --resume auto)\n", sig ? guard_signal_name(sig) : "a signal on another rank",
                t->step, t->run_dir, t->step, status);
    else if (status == TRAIN_EXIT_DIVERGED)
        fprintf(stderr, "dstrain: stopped after step %d: %d non-finite steps in a row (train.max_bad_steps); the "
                "checkpoints in '%s' are from before (exit status %d)\n", t->step, t->bad_steps, t->run_dir, status);
    else
        fprintf(stderr, "dstrain: stopped after step %d: checkpoint saves failing (train.max_failed_saves = %d; "
                "exit status %d)\n", t->step, t->cfg.train.max_failed_saves, status);
    return status;
}

int train_run(Trainer *t)
{
    const TrainConfig *tc = &t->cfg.train;
    double started = now_seconds();
    int first = t->step;
    if (trainer_saves_live(t)) release_staging(t);
    while (t->step < tc->steps) {
        StepMetrics s;
        memset(&s, 0, sizeof s);
        const double tokens_per_step =
            (double)train_accum_at(tc, t->tokens) * tc->micro_batch_size * tc->seq_len * t->groups->dp;
        double t0 = now_seconds();
        trace_step_begin(t->trace, t->step + 1);
        watchdog_step_begin(t->step + 1);
        if (t->pp) pp_train_step(t, &s);
        else train_step(t, &s);
        watchdog_step_end();
        trace_step_end(t->trace);
        s.step_s = now_seconds() - t0;
        s.step = t->step;
        s.steps = tc->steps;
        s.tokens = t->tokens;
        s.tokens_per_s = tokens_per_step / s.step_s;
        s.mfu = t->peak_flops > 0 ? s.tokens_per_s * t->flops_per_token / t->peak_flops : 0;
        s.eta_s = (now_seconds() - started) / (t->step - first) * (tc->steps - t->step);
        if (t->metrics && (t->step % tc->log_every == 0 || t->step == tc->steps || s.skipped))
            metrics_step(t->metrics, &s);
        watch_loss(t, &s);
        if (t->ema && !s.skipped) ema_update(t);
        if (t->flip_rank >= 0) debug_flip(t);
        if (tc->sdc_every > 0 && t->groups->dp > 1 && t->step % tc->sdc_every == 0 && sdc_check(t))
            return TRAIN_EXIT_SDC;
        int stop = agree_stop(t);
        if (stop) return stop_run(t, stop);
        if (tc->val_every > 0 && t->step % tc->val_every == 0 && t->step < tc->steps) validate_and_log(t);
        if (tc->checkpoint_every > 0 && t->step % tc->checkpoint_every == 0 && t->step < tc->steps)
            periodic_save(t);
    }
    validate_and_log(t);
    int status = save_and_wait(t, TRAIN_EXIT_DONE);
    report_final(t);
    trace_finish(t->trace, t->run_dir);
    if (status != TRAIN_EXIT_DONE && t->root)
        fprintf(stderr, "dstrain: the final checkpoint of step %d was not saved (exit status %d)\n", t->step, status);
    return status;
}
