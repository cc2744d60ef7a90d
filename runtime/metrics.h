/* runtime/metrics.h - what a run reports: one console line per logged step, the same
 * fields as one JSON object per line in <run>/metrics.jsonl, and every console line also in
 * <run>/log.txt.
 *
 * metrics.jsonl records have "type": "start" (sizes, FLOPs per token, the measured GEMM
 * rate), "step" (per logged step), "val" (validation), "final"
 * (end of run: final validation loss beside the source's entropy rate when known). Keys are
 * documented in README.md and stay stable.
 */
#ifndef DSTRAIN_METRICS_H
#define DSTRAIN_METRICS_H

#include <stdio.h>

#include "../model/model.h"

typedef struct StepMetrics {
    int step, steps;            /* 1-based step just done, total */
    long long tokens;           /* tokens seen after this step */
    double loss;                /* main cross-entropy (nats), mean over the step */
    int n_mtp;
    double mtp[MTP_MAX];        /* each MTP module's cross-entropy */
    double balance;             /* sequence-wise balance loss (weighted by alpha) */
    double lr, grad_norm;
    double tokens_per_s;
    double mfu;                 /* model FLOP/s / measured peak, in [0, 1] */
    double maxvio, maxvio_max;  /* expert-load imbalance (mean and max over MoE layers) */
    int max_nodes;              /* most nodes a token's experts lived on (0: experts on one rank) */
    double step_s, eta_s;
    int skipped;                /* non-finite loss or grad norm: the optimizer step was skipped */
} StepMetrics;

typedef struct Metrics Metrics;

/* Opens (appends to) <run_dir>/metrics.jsonl and <run_dir>/log.txt; DIE if it cannot.
 * step: the step the run starts from (0, or the resumed checkpoint's): records of later steps
 * (left by a run that went on past its last checkpoint) and a torn last line are dropped
 * first, the file rewritten atomically, so every step appears once. */
Metrics *metrics_open(const char *run_dir, int step);
void metrics_close(Metrics *m);
/* printf to stdout and log.txt. */
void metrics_log(Metrics *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The run's fixed figures: parameters, training FLOPs per token, tokens per step, and the
 * GEMM rate measured at start-up (the MFU denominator). */
void metrics_start(Metrics *m, double params, double active_params, double flops_per_token,
                   double tokens_per_step, double peak_flops);
void metrics_step(Metrics *m, const StepMetrics *s);
void metrics_val(Metrics *m, int step, double loss, int n_mtp, const double *mtp);
/* The end-of-run record; entropy_rate < 0 when the data has no known entropy. */
void metrics_final(Metrics *m, int step, double val_loss, double entropy_rate, double loss_floor,
                   double unigram_entropy);

#endif
