/* runtime/train.c - the training loop of one process (DESIGN.md "Data flow of one training
 * step"): micro-batches forward/backward with gradient accumulation, global-norm clipping,
 * AdamW, the router bias update from the step's expert loads, metrics, validation and
 * checkpoints. Not here: argument parsing and resume (train_cmd.c), the model (model/).
 */
#include "train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../model/flops.h"
#include "common.h"
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

void trainer_setup(Trainer *t, const Config *cfg, const char *config_text, const char *run_dir)
{
    memset(t, 0, sizeof *t);
    t->cfg = *cfg;
    t->config_text = xstrdup(config_text);
    t->run_dir = xstrdup(run_dir);
    t->last_val = NAN;
    const TrainConfig *tc = &cfg->train;
    Precision prec = parse_precision(tc->precision);
    t->o = strcmp(tc->device, "cuda") == 0 ? ops_cuda_create(prec) : ops_cpu_create(tc->threads, prec);

    ensure_data(cfg);
    const int B = tc->micro_batch_size, T = tc->seq_len, V = cfg->model.vocab_size;
    t->train = data_open(cfg->data.dir, "train", B, T, V, (uint64_t)tc->seed, 0, 1);
    t->val = data_open(cfg->data.dir, "val", B, T, V, (uint64_t)tc->seed, 0, 1);
    t->window = xcalloc((size_t)B * (T + 1), sizeof(int32_t));

    t->model = model_create(&cfg->model, t->o, B, T, 1);
    model_init_params(t->model, (uint64_t)tc->seed);
    const ParamTable *pt = model_table(t->model);
    optim_init(&t->opt, t->o, pt, &cfg->optim, tc->bf16_moments);
    rng_seed(&t->rng, (uint64_t)tc->seed ^ 0x7261696e696e67ull);
    t->metrics = metrics_open(run_dir);
    t->ckpt = ckpt_writer_create();
    t->host_params = xmalloc(pt->total * sizeof(float));
    t->host_m = xmalloc(pt->total * sizeof(float));
    t->host_v = xmalloc(pt->total * sizeof(float));
    t->flops_per_token = flops_per_token(&cfg->model, T, cfg->model.num_nextn_predict_layers > 0);
}

void trainer_free(Trainer *t)
{
    char err[512];
    if (ckpt_writer_finish(t->ckpt, err, sizeof err) != 0) fprintf(stderr, "dstrain: %s\n", err);
    ckpt_writer_destroy(t->ckpt);
    metrics_close(t->metrics);
    optim_free(&t->opt);
    model_destroy(t->model);
    data_close(t->train);
    data_close(t->val);
    ops_destroy(t->o);
    free(t->window);
    free(t->host_params);
    free(t->host_m);
    free(t->host_v);
    free(t->config_text);
    free(t->run_dir);
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
    return sum;
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
    s->grad_norm = optim_grad_norm(&t->opt, model_grads(m));
    s->lr = lr_at(&c->optim, t->step, c->train.steps);
    optim_step(&t->opt, model_params(m), model_grads(m), s->lr, clip_scale(s->grad_norm, c->optim.grad_clip));
    LoadStats ls = model_load_stats(m);
    s->maxvio = ls.maxvio_mean;
    s->maxvio_max = ls.maxvio_max;
    model_bias_update(m, gamma, c->moe.bias_zero_mean);
    t->step++;
    t->tokens += (long long)M * c->train.micro_batch_size * c->train.seq_len;
}

/* The training stall of a save is the download into host staging, the wait for the previous
 * save, and the writer's snapshot copy; the write itself runs in the background. */
static void save_checkpoint(Trainer *t)
{
    const ParamTable *pt = model_table(t->model);
    const size_t bytes = pt->total * sizeof(float);
    double t0 = now_seconds();
    t->o->download(t->o, t->host_params, model_params(t->model), bytes);
    t->o->download(t->o, t->host_m, t->opt.m, bytes);
    t->o->download(t->o, t->host_v, t->opt.v, bytes);
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
    metrics_val(t->metrics, t->step, t->last_val, t->cfg.model.num_nextn_predict_layers, mtp);
}

static void report_final(Trainer *t)
{
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
    const double tokens_per_step = (double)tc->grad_accum * tc->micro_batch_size * tc->seq_len;
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
        if (t->step % tc->log_every == 0 || t->step == tc->steps) metrics_step(t->metrics, &s);
        if (tc->val_every > 0 && t->step % tc->val_every == 0 && t->step < tc->steps) validate_and_log(t);
        if (tc->checkpoint_every > 0 && t->step % tc->checkpoint_every == 0 && t->step < tc->steps)
            save_checkpoint(t);
    }
    validate_and_log(t);
    save_checkpoint(t);
    report_final(t);
}
