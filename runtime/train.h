/* runtime/train.h - the training loop of one process: the Trainer holds everything a run
 * owns, train_run drives steps, validation, metrics and checkpoints.
 *
 * Calling sequence (runtime/train_cmd.c):
 *   Trainer t; trainer_setup(&t, &cfg, config_text, run_dir);   (data, model, optimizer)
 *   [trainer_resume(&t, ckpt_dir)]                                (state from a checkpoint)
 *   train_run(&t);                                                (to cfg.train.steps)
 *   trainer_free(&t);
 */
#ifndef DSTRAIN_TRAIN_H
#define DSTRAIN_TRAIN_H

#include "../checkpoint/ckpt.h"
#include "common.h"
#include "../model/model.h"
#include "config.h"
#include "data.h"
#include "metrics.h"
#include "optim.h"

typedef struct Trainer {
    Config cfg;
    char *config_text;          /* the resolved config, as written to the run directory */
    char *run_dir;
    Ops *o;
    Model *model;
    Optimizer opt;
    DataLoader *train, *val;
    int32_t *window;            /* (B, T+1) host tokens of one micro-batch */
    Metrics *metrics;
    CkptWriter *ckpt;
    float *host_params, *host_m, *host_v;   /* checkpoint staging (table.total each) */
    int step;                   /* optimizer steps done */
    long long tokens;           /* tokens seen */
    Rng rng;                    /* reserved for stochastic training choices; checkpointed */
    double peak_flops;          /* measured GEMM FLOP/s of this backend */
    double flops_per_token;     /* training FLOPs per token (model/flops.h) */
    double last_val;            /* last validation loss (NAN before the first) */
} Trainer;

void trainer_setup(Trainer *t, const Config *cfg, const char *config_text, const char *run_dir);
/* Restore weights, optimizer moments and state from a verified checkpoint directory. */
void trainer_resume(Trainer *t, const char *ckpt_dir);
/* Replace the initial weights with those of a Hugging Face directory (dstrain export). */
void trainer_init_from(Trainer *t, const char *hf_dir);
/* Train from t->step to cfg.train.steps; validation and checkpoints at their intervals and at
 * the end. */
void train_run(Trainer *t);
/* Mean main (and MTP) validation loss over cfg.train.val_batches micro-batches. */
double train_evaluate(Trainer *t, double *mtp);
void trainer_free(Trainer *t);

#endif
