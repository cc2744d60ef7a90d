/* runtime/optim.h - AdamW over the parameter table, global-norm clipping, and the schedules
 * (SPEC.md section 7): learning rate (linear warm-up, constant, cosine decay to a floor) and
 * the token-driven gamma (bias update speed) and lambda (MTP weight).
 *
 * Master weights are the model's FP32 parameters; moments m, v are FP32 buffers in backend
 * memory (optionally rounded to BF16 after each update). Weight decay applies to tensors the
 * table marks `decay` (not norms); tensors not `trained` (the router bias) are never touched.
 *
 * ZeRO-1 (runtime/train.c under data parallelism): optim_init_shard gives this optimizer the
 * slice [lo, hi) of the flat table; m, v then hold only that slice, and optim_grad_norm and
 * optim_step take the gradients of that slice alone (hi - lo floats) and update params[lo, hi)
 * only. optim_init is the whole table (lo = 0, hi = total).
 *
 * Calling sequence, per step:
 *   double norm = optim_grad_norm(opt, grads);
 *   optim_step(opt, params, grads, lr_at(&cfg.optim, step, steps), clip_scale(norm, clip));
 */
#ifndef DSTRAIN_OPTIM_H
#define DSTRAIN_OPTIM_H

#include "../kernels/ops.h"
#include "../model/params.h"
#include "config.h"

typedef struct Optimizer {
    Ops *o;
    const ParamTable *table;
    size_t lo, hi;          /* the slice of the flat table this optimizer updates */
    float *m, *v;           /* (hi - lo) backend memory: moments of params[lo, hi) */
    AdamArgs args;          /* beta1, beta2, eps, weight_decay, bf16_moments; lr/step per call */
    int step;               /* optimizer steps done (AdamW bias correction uses step + 1) */
} Optimizer;

void optim_init(Optimizer *opt, Ops *o, const ParamTable *t, const OptimConfig *c, int bf16_moments);
/* The same for the slice [lo, hi) of the table (lo <= hi <= total). */
void optim_init_shard(Optimizer *opt, Ops *o, const ParamTable *t, const OptimConfig *c, int bf16_moments,
                      size_t lo, size_t hi);
void optim_free(Optimizer *opt);
/* sqrt of the sum of squares of every gradient; grads (hi - lo): the slice's. */
double optim_grad_norm(Optimizer *opt, const float *grads);
/* One AdamW step at lr of params[lo, hi) on the gradients times grad_scale (clipping; folded
 * into the update where the backend takes it, Ops.adamw_grad_scale, else grads is scaled in
 * place first); params (total), grads (hi - lo) the slice's. */
void optim_step(Optimizer *opt, float *params, float *grads, double lr, double grad_scale);

/* min(1, clip / norm); 1 when clip is 0 (off) or the norm is 0. */
double clip_scale(double norm, double clip);
/* Learning rate for 0-based `step` of `total` steps. */
double lr_at(const OptimConfig *c, int step, int total);
/* gamma and lambda after `tokens` tokens seen. */
double gamma_at(const MoeConfig *c, long long tokens);
double lambda_at(const MtpConfig *c, long long tokens);

#endif
