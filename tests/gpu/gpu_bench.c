/* tests/gpu/gpu_bench.c - times training steps of a config on device cuda: tokens/s, MFU
 * (model/flops.h against the device's datasheet dense BF16 peak, runtime/gpu_peak.h, or
 * --peak-tflops), peak device memory, and optionally the
 * GPU time per op and per op family of one profiled step. Driven by tests/bench/gpu_bench.sh.
 *
 * What it is: the training step of runtime/train.c (zero, forward, backward, clip, AdamW,
 * router bias update) on random tokens, with the weights initialised on the device (the
 * table's init rules with a device generator: host initialisation of billions of weights
 * takes minutes). What it is not: `dstrain train` (no data files, no checkpoints, no
 * validation), and not a test (it exits 0 whatever the speed).
 *
 * Usage: gpu_bench CONFIG [--set section.key=value ...] [--steps N] [--warmup N]
 *                  [--peak-tflops X] [--profile] [--label TEXT]
 * Prints a human summary and one line "RESULT {json}" for scripts. Without a GPU: prints
 * "SKIP: no CUDA GPU (...)" and exits 77.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_ops.h"
#include "model/flops.h"
#include "model/model.h"
#include "runtime/common.h"
#include "runtime/config.h"
#include "runtime/gpu_peak.h"
#include "runtime/optim.h"

typedef struct BenchArgs {
    const char *config, *label;
    char *sets[64];
    int n_sets, steps, warmup, profile;
    double peak_tflops;
} BenchArgs;

static void parse(int argc, char **argv, BenchArgs *a)
{
    memset(a, 0, sizeof *a);
    a->steps = 5;
    a->warmup = 2;
    a->peak_tflops = 0;           /* 0: the device's datasheet figure (runtime/gpu_peak.h) */
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(s, "--set") && more && a->n_sets < 64) a->sets[a->n_sets++] = argv[++i];
        else if (!strcmp(s, "--steps") && more) a->steps = atoi(argv[++i]);
        else if (!strcmp(s, "--warmup") && more) a->warmup = atoi(argv[++i]);
        else if (!strcmp(s, "--peak-tflops") && more) a->peak_tflops = atof(argv[++i]);
        else if (!strcmp(s, "--label") && more) a->label = argv[++i];
        else if (!strcmp(s, "--profile")) a->profile = 1;
        else if (s[0] != '-' && !a->config) a->config = s;
        else DIE("gpu_bench: unknown or incomplete argument '%s' (usage: gpu_bench CONFIG [--set k=v] [--steps N] "
                 "[--warmup N] [--peak-tflops X] [--profile] [--label TEXT])", s);
    }
    if (!a->config) DIE("gpu_bench: no config given (usage: gpu_bench CONFIG ...)");
    if (a->steps < 1 || a->warmup < 0) DIE("gpu_bench: --steps must be >= 1 and --warmup >= 0");
}

/* The table's init rules, drawn on the device (one seed per tensor). */
static void init_params_device(Ops *o, Model *m, const ModelConfig *c, uint64_t seed)
{
    const ParamTable *t = model_table(m);
    float *base = model_params(m);
    for (int i = 0; i < t->n; i++) {
        const Param *p = &t->p[i];
        if (p->init == INIT_NORMAL)
            cuda_fill_normal(o, base + p->offset, p->numel, (float)c->initializer_range, seed * 1000003ull + i);
        else cuda_fill_value(o, base + p->offset, p->numel, p->init == INIT_ONES ? 1.0f : 0.0f);
    }
    o->synchronize(o);
}

typedef struct Bench {
    Config cfg;
    Ops *o;
    Model *m;
    Optimizer opt;
    Rng rng;
    int32_t *window;
    int step;
} Bench;

/* One optimizer step as runtime/train.c runs it; returns the mean main loss. */
static double bench_step(Bench *b)
{
    const Config *c = &b->cfg;
    const int B = c->train.micro_batch_size, T = c->train.seq_len, M = c->train.grad_accum;
    double loss = 0;
    model_zero_grads(b->m);
    model_zero_counts(b->m);
    model_set_loss_weights(b->m, c->mtp.lambda, c->moe.balance_alpha, M);
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < B * (T + 1); j++) b->window[j] = (int32_t)(rng_u32(&b->rng) % (uint32_t)c->model.vocab_size);
        ModelLoss l;
        model_forward(b->m, b->window, 1, &l);
        model_backward(b->m);
        loss += l.main / M;
    }
    double norm = optim_grad_norm(&b->opt, model_grads(b->m));
    optim_step(&b->opt, model_params(b->m), model_grads(b->m), lr_at(&c->optim, b->step, c->train.steps),
               clip_scale(norm, c->optim.grad_clip));
    model_bias_update(b->m, c->moe.bias_update_speed, c->moe.bias_zero_mean);
    b->o->synchronize(b->o);
    b->step++;
    return loss;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    BenchArgs a;
    parse(argc, argv, &a);
    char why[256];
    if (!cuda_gpu_count(why, sizeof why)) {
        printf("SKIP: no CUDA GPU (%s)\n", why);
        return 77;
    }
    Bench b;
    memset(&b, 0, sizeof b);
    config_defaults(&b.cfg);
    config_load(&b.cfg, a.config);
    for (int i = 0; i < a.n_sets; i++) config_set(&b.cfg, a.sets[i]);
    config_validate(&b.cfg);
    const Config *c = &b.cfg;
    const int B = c->train.micro_batch_size, T = c->train.seq_len, D = c->model.num_nextn_predict_layers;
    Precision prec = !strcmp(c->train.precision, "bf16") ? PREC_BF16 : !strcmp(c->train.precision, "fp8") ? PREC_FP8
                                                                                                          : PREC_FP32;
    double t0 = now_seconds();
    b.o = ops_cuda_create(prec);
    b.m = model_create(&c->model, b.o, B, T, 1);
    init_params_device(b.o, b.m, &c->model, (uint64_t)c->train.seed);
    optim_init(&b.opt, b.o, model_table(b.m), &c->optim, train_bf16_moments(&c->train));
    rng_seed(&b.rng, (uint64_t)c->train.seed);
    b.window = xcalloc((size_t)B * (T + 1), sizeof(int32_t));
    const char *label = a.label ? a.label : c->train.name;
    printf("gpu_bench %s: %s, %s, micro-batch %d x %d x %d accumulated, MTP depth %d (set up in %.1f s)\n", label,
           a.config, c->train.precision, B, T, c->train.grad_accum, D, now_seconds() - t0);
    model_print_memory(b.m, stdout);

    double first = 0, last = 0, *times = xcalloc((size_t)a.steps, sizeof(double));
    for (int i = 0; i < a.warmup + a.steps; i++) {
        double s0 = now_seconds();
        double loss = bench_step(&b);
        double dt = now_seconds() - s0;
        if (i == 0) first = loss;
        last = loss;
        if (i >= a.warmup) times[i - a.warmup] = dt;
        printf("  step %2d%s %.3f s, loss %.4f\n", i + 1, i < a.warmup ? " (warm-up)" : "", dt, loss);
    }
    qsort(times, (size_t)a.steps, sizeof(double), cmp_double);
    const double step_s = times[a.steps / 2], tokens = (double)B * T * c->train.grad_accum;
    const double fpt = flops_per_token(&c->model, T, D > 0), tps = tokens / step_s;
    CudaMemStats ms;
    cuda_memory_stats(b.o, &ms);
    if (a.peak_tflops <= 0) a.peak_tflops = gpu_dense_bf16_tflops(ms.device_name, NULL);
    if (a.peak_tflops <= 0)
        DIE("gpu_bench: GPU '%s' is not in runtime/gpu_peak.c's table: give --peak-tflops", ms.device_name);
    const double mfu = tps * fpt / (a.peak_tflops * 1e12);
    const double GiB = 1073741824.0;
    printf("%s on %s: %.3f s/step (median of %d), %.0f tokens/s, %.2f GFLOP/token (training, %s MTP) -> "
           "%.1f TFLOP/s = %.1f%% MFU of %.0f TFLOP/s\n", label, ms.device_name, step_s, a.steps, tps, fpt / 1e9,
           D > 0 ? "with" : "without", tps * fpt / 1e12, 100 * mfu, a.peak_tflops);
    printf("memory: %.2f GiB peak through the table, %.2f GiB in use on the device of %.2f GiB\n",
           ms.table_peak / GiB, ms.device_used / GiB, ms.device_total / GiB);
    printf("loss: %.4f at the first step, %.4f at the last (ln V = %.4f)\n", first, last,
           log((double)c->model.vocab_size));
    if (a.profile) {
        cuda_profile_enable(b.o, 1);
        cuda_profile_reset(b.o);
        double s0 = now_seconds();
        bench_step(&b);
        double dt = now_seconds() - s0;
        printf("profiled step: %.3f s with an event pair around every op\n", dt);
        cuda_profile_report(b.o, stdout);
        cuda_profile_enable(b.o, 0);
    }
    printf("RESULT {\"label\":\"%s\",\"device\":\"%s\",\"precision\":\"%s\",\"tokens_per_step\":%.0f,"
           "\"step_s\":%.6f,\"tokens_per_s\":%.1f,\"flops_per_token\":%.6e,\"mtp\":%d,\"mfu\":%.5f,"
           "\"peak_tflops\":%.1f,\"table_peak_gib\":%.3f,\"device_used_gib\":%.3f,\"loss_first\":%.5f,"
           "\"loss_last\":%.5f}\n", label, ms.device_name, c->train.precision, tokens, step_s, tps, fpt, D > 0, mfu,
           a.peak_tflops, ms.table_peak / GiB, ms.device_used / GiB, first, last);
    free(times);
    free(b.window);
    optim_free(&b.opt);
    model_destroy(b.m);
    ops_destroy(b.o);
    return 0;
}
