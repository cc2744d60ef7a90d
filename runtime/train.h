/* runtime/train.h - the training loop of one process: the Trainer holds everything a run
 * owns, train_run drives steps, validation, metrics and checkpoints.
 *
 * Data parallelism (comm/world.h groups; pp = 1): every dp rank builds the same model
 * from the same seed, reads its own share of each batch (data_open rank dp_rank of dp, so the
 * dp ranks together see what one rank with dp times the micro-batch sees), and after backward
 * the gradients are summed over dp_comm and scaled by 1/dp (losses are means over equal token
 * counts, so the global mean gradient is the mean of the ranks'). ZeRO-1: the sum is a
 * reduce-scatter, each rank keeps the AdamW moments of one slice of the flat table (dp equal
 * slices) and updates that slice of the weights, and an all-gather gives every rank the whole
 * updated table; the grad norm sums the slices' squares. Expert loads are summed over dp_comm
 * before the bias update, and losses averaged, so every rank holds the same weights. Rank 0
 * alone prints and writes metrics; for a checkpoint every rank gathers its table's moments
 * (see Checkpoints below) and on resume takes its slices of them.
 * Expert parallelism (ep > 1, dividing dp): each rank holds and runs only its E/ep experts
 * (model_create_ep, model/params.h params_select), on the tokens of its EP group; its table is
 * two regions (runtime/shard.h): replicated tensors summed over dp_comm, its experts over
 * edp_comm, each with its own ZeRO-1 slices and optimizer shard.
 * Checkpoints: one rank writes a one-rank checkpoint in the background; several ranks each
 * write the row blocks they own into their own files (runtime/ckpt_shard.h, a synchronous
 * two-phase save), and every rank resumes by reading the blocks of the tensors it holds from
 * whichever files hold them (checkpoint/ckpt.h ckpt_load), so any (dp, ep) resumes any other.
 * Pipeline parallelism (pp > 1): runtime/train_pp.h in place of the model and the regions
 * (each stage's table sharded as above) and of the per-rank checkpoints' ownership (every
 * rank writes the rows it owns of its stages' tensors).
 *
 * Calling sequence (runtime/train_cmd.c):
 *   Trainer t; trainer_setup(&t, &cfg, config_text, run_dir, world, groups);  (data, model, optimizer)
 *   [trainer_resume(&t, ckpt_dir)]                                (state from a checkpoint)
 *   t.metrics = metrics_open(run_dir, t.step)   (root; after resume)
 *   int status = train_run(&t);                                   (to cfg.train.steps or a stop)
 *   trainer_free(&t);
 */
#ifndef DSTRAIN_TRAIN_H
#define DSTRAIN_TRAIN_H

#include "../checkpoint/ckpt.h"
#include "../comm/world.h"
#include "common.h"
#include "../model/model.h"
#include "config.h"
#include "data.h"
#include "metrics.h"
#include "optim.h"
#include "runtime/memcheck.h"
#include "runtime/pipeline/trace.h"
#include "runtime/shard.h"

struct PpTrainer;

typedef struct Trainer {
    Config cfg;
    char *config_text;          /* the resolved config, as written to the run directory */
    char *run_dir;
    Ops *o;
    Model *model;               /* the model; under pp > 1 this rank's first stage */
    struct PpTrainer *pp;       /* pipeline state when groups->pp > 1 (runtime/train_pp.h), else NULL */
    DataLoader *train, *val;
    int32_t *window;            /* (B, T+1) host tokens of one micro-batch */
    Groups *groups;             /* the parallel layout (not owned) */
    int root;                   /* stage 0, dp_rank 0: prints, writes metrics and checkpoints */
    Metrics *metrics;           /* NULL except on the root */
    CkptWriter *ckpt;
    float *host_counts;         /* (n_moe_layers, E) expert loads being summed over dp */
    float *host_params;         /* (total) checkpoint staging, trainer_table's layout (live saves:
                                 * resume / init-from / EMA only, trainer_saves_live) */
    float *host_m, *host_v;     /* (total) checkpoint staging, gathered from the slices (live
                                 * saves: resume / init-from only; NULL once training runs) */
    Shard shard;                /* regions, ZeRO-1 slices and optimizer shards (runtime/shard.h;
                                 * pp = 1: train_pp.c keeps its stages' optimizers) */
    int step;                   /* optimizer steps done */
    long long tokens;           /* tokens seen */
    Rng rng;                    /* reserved for stochastic training choices; checkpointed */
    double peak_flops;          /* measured GEMM FLOP/s of this backend */
    double flops_per_token;     /* training FLOPs per token (model/flops.h) */
    double last_val;            /* last validation loss (NAN before the first) */
    Trace *trace;               /* the steps train.trace_steps names (NULL: none) */
    /* operations (DESIGN.md "Operations"; runtime/guard.h for the exit statuses) */
    int saved_step;             /* step of the last save started (-1: none this process) */
    int failed_saves;           /* root: failed saves in a row */
    int bad_steps;              /* non-finite steps in a row (skipped) */
    long long bad_total;        /* non-finite steps skipped in this process */
    double loss_mean;           /* running mean of the finite losses (spike rule) */
    int loss_n;                 /* finite losses in loss_mean so far */
    int64_t *sdc_sums;          /* (dp) every dp rank's weight checksum (train.sdc_every) */
    int flip_rank, flip_step;   /* DSTRAIN_DEBUG_FLIP_BIT=RANK:STEP (tests; -1: none) */
    float *ema;                 /* (total) root: host EMA of the weights (train.ema_decay > 0), else NULL */
    MemPlan mem;                /* the memory this rank planned (runtime/shard.h) */
    MemLimit mem_limit;         /* and the limit it was checked against */
} Trainer;

/* g: the job's groups (kept, not owned). Collective over g->dp_comm (rank 0 writes the
 * synthetic corpus when needed, the others wait for it). */
void trainer_setup(Trainer *t, const Config *cfg, const char *config_text, const char *run_dir, const World *w,
                   Groups *g);
/* The table the checkpoint staging is laid out in: this rank's (model/params.h params_select:
 * under EP its experts only; under pp > 1 its stages' tensors, runtime/train_pp.h pp_table). */
const ParamTable *trainer_table(const Trainer *t);
/* Whether this rank's checkpoints are written from the live buffers, with no host staging:
 * pp = 1 on one rank on the CPU backend (weights and the one region's moments are host memory
 * in the table's layout; the save's forked writer reads them copy-on-write, checkpoint/ckpt.h).
 * Otherwise a save downloads them into host_params, host_m, host_v first (touched at set-up
 * under pp = 1). */
int trainer_saves_live(const Trainer *t);
/* Restore weights, optimizer moments and state from a verified checkpoint directory. */
void trainer_resume(Trainer *t, const char *ckpt_dir);
/* The EMA's starting point (train.ema_decay > 0; after resume / init-from): the checkpoint's EMA
 * when ckpt_dir (may be NULL) holds one, else the current weights. */
void trainer_init_ema(Trainer *t, const char *ckpt_dir);
/* Replace the initial weights with those of a Hugging Face directory (dstrain export). */
void trainer_init_from(Trainer *t, const char *hf_dir);
/* Train from t->step to cfg.train.steps; validation and checkpoints at their intervals and at
 * the end. Collective over the groups: every rank calls it. At the end of every step the ranks
 * agree (one all-reduce) whether to stop early: a stop signal (a checkpoint of the step is
 * saved, then TRAIN_EXIT_STOPPED), train.max_bad_steps non-finite steps in a row
 * (TRAIN_EXIT_DIVERGED), train.max_failed_saves failed saves in a row (TRAIN_EXIT_SAVE), and
 * every train.sdc_every steps whether the dp replicas' weights still agree (TRAIN_EXIT_SDC).
 * Debug hook for the SDC test: DSTRAIN_DEBUG_FLIP_BIT=RANK:STEP flips the lowest bit of the
 * first weight on dp rank RANK after step STEP.
 * Returns the exit status of runtime/guard.h, the same on every rank. */
int train_run(Trainer *t);
/* Mean main (and MTP) validation loss over cfg.train.val_batches micro-batches (each rank its
 * share of them, averaged over dp_comm; collective). */
double train_evaluate(Trainer *t, double *mtp);
void trainer_free(Trainer *t);
/* Micro-batches per step (per dp rank) after `tokens` tokens: the batch-size ramp
 * (train.batch_ramp_start -> train.grad_accum over train.batch_ramp_tokens), then grad_accum. */
int train_accum_at(const TrainConfig *c, long long tokens);

/* The world main() started, for cmd_train (set once, before the command runs). */
void train_set_world(World *w);

#endif
