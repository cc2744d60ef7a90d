/* runtime/shard.h - what one rank of a training job owns and what that costs (DESIGN.md
 * section 5 "Ownership"; issue 14): its regions of the parameter table with their ZeRO-1
 * slices and optimizer shards, and the memory it plans, listed item by item and checked
 * against the memory available before anything large is allocated.
 *
 * Regions. A rank's table (model/params.h params_select) is one region when every rank holds
 * every expert (ep = 1): [0, total), gradients summed over dp_comm. With ep > 1 it is two:
 *   replicated [0, n_replicated)       summed over dp_comm (every rank holds them)
 *   experts    [n_replicated, total)   summed over edp_comm (the dp/ep ranks holding the same
 *                                      experts); an expert's gradient there already carries
 *                                      the tokens of its whole EP group (dispatch backward)
 * Each region has its own ZeRO-1 slices (size equal slices of ceil(n / size) floats, the last
 * shorter or empty) and its own AdamW shard. Both sums are the global gradient times dp (the
 * caller's 1/dp scale applies to both); the global norm is one all-reduce over dp_comm of the
 * slices' sums of squares (every element lies in exactly one slice of one rank).
 *
 * Calling sequence, per step:
 *   during the last backward, once region i's gradients are final (the experts': after the
 *   lowest MoE block's weight gradients, model_grads_hook):
 *     shard_post_grads(&s, o, model_grads(m), shard_expert_region(&s));   non-blocking
 *   after backward:
 *   shard_reduce_grads(&s, o, model_grads(m));     posts the rest, waits: region gradients ready
 *   double norm = shard_grad_norm(&s, g) / ... (see shard_grad_norm)
 *   shard_step(&s, model_params(m), g, lr, scale);
 *   shard_gather_params(&s, o, model_params(m));
 *
 * Calling sequence (runtime/train.c, trainer_setup, before model_create):
 *   shard_plan_memory(&t->mem, cfg, ops, groups);    items of the start-up table
 *   mem_limit(&t->mem_limit, world->local_size);
 *   memplan_check(&t->mem, &t->mem_limit, backend_is_host, what);
 */
#ifndef DSTRAIN_SHARD_H
#define DSTRAIN_SHARD_H

#include "comm/world.h"
#include "kernels/ops.h"
#include "model/params.h"
#include "runtime/config.h"
#include "runtime/memcheck.h"
#include "runtime/optim.h"

typedef struct Region {
    Comm *comm;                 /* the group its gradients are summed over */
    int size, rank;             /* of comm (1, 0: nothing to exchange) */
    size_t base, n;             /* floats [base, base + n) of the rank's flat table */
    size_t slice;               /* ZeRO-1: slice = ceil(n / size), the last ones shorter or empty */
    size_t lo, hi;              /* this rank's slice, absolute in the flat table */
    float *full, *part;         /* host staging (n), (slice) when size > 1 and the comm cannot
                                 * read the ops' memory (cuda with mpi); NULL otherwise: the
                                 * exchanges read the gradients and write the slice directly */
    float *grad;                /* backend (slice): the summed gradients of [lo, hi), size > 1 */
    CommRequest *req;           /* the reduce-scatter in flight (size > 1) */
    int posted;                 /* shard_post_grads done, shard_reduce_grads not yet */
    Optimizer opt;              /* AdamW moments of [lo, hi) */
} Region;

typedef struct Shard {
    Region r[2];
    int n;                      /* regions: 1 (ep = 1) or 2 (replicated, experts) */
    Comm *dp_comm;
    int dp;
    float *grads[2];            /* each region's slice gradients after shard_reduce_grads */
} Shard;

/* Regions, slices and optimizer shards of table t under layout g (collective: none). */
void shard_init(Shard *s, Ops *o, const ParamTable *t, const Groups *g, const OptimConfig *oc, int bf16_moments);
void shard_free(Shard *s, Ops *o);
/* Post region i's reduce-scatter (non-blocking) of its final gradients in grads; nothing when
 * its group is one rank or it is posted already. The gradients must not change until
 * shard_reduce_grads. Collective over the region's group (every rank posts in the same order). */
void shard_post_grads(Shard *s, Ops *o, const float *grads, int i);
/* The routed experts' region when it has its own exchange (ep > 1, more than one rank holding
 * the same experts), else -1. */
int shard_expert_region(const Shard *s);
/* Sum each region's gradients over its group into this rank's slice (reduce-scatter; nothing
 * when the group is one rank): posts the regions not posted yet, then waits for all. Collective
 * over dp_comm and edp_comm. */
void shard_reduce_grads(Shard *s, Ops *o, float *grads);
/* The norm of the summed gradients over every slice of every rank: with one region on one
 * rank the slice's own norm; otherwise sqrt of the all-reduce over dp_comm of the slices'
 * sums of squares, divided by dp (the norm of the mean gradient). Collective. */
double shard_grad_norm(Shard *s);
/* The sum of squares of this rank's slices of the summed gradients (after shard_reduce_grads),
 * over the table entries whose counted[entry] is non-zero (counted NULL: every entry); no
 * exchange (under PP the caller sums it over the ranks, each tensor counted by one holder). */
double shard_slice_sumsq(Shard *s, const unsigned char *counted);
/* AdamW on each region's slice (grad_scale: clipping and the 1/dp mean). */
void shard_step(Shard *s, float *params, double lr, double grad_scale);
/* A skipped step (not finite): the optimizers' step counts advance, nothing else changes. */
void shard_skip_step(Shard *s);
/* Every region's updated slices to every rank of its group (all-gather). Collective. */
void shard_gather_params(Shard *s, Ops *o, float *params);
/* host_m, host_v (t->total each, the rank's table layout) <- the moments of every slice of
 * every region (all-gather; collective). */
void shard_gather_moments(Shard *s, Ops *o, float *host_m, float *host_v);
/* The moments of this rank's slices from host_m, host_v (t->total each, the rank's layout). */
void shard_load_moments(Shard *s, Ops *o, const float *host_m, const float *host_v, int step);
/* Floats of optimizer state this rank holds (both moments, every region). */
size_t shard_optim_floats(const Shard *s);

/* The bytes one rank of layout g plans for cfg (every item of the start-up memory table; the
 * ZeRO-1 slice is ceil(total / dp) floats, as runtime/train.c takes it). */
void shard_plan_memory(MemPlan *p, const Config *cfg, Ops *o, const Groups *g);
/* Plan, find the limit and refuse (DIE, one line) a plan that does not fit; what the
 * message and the start-up table need stays in p and l. */
void shard_check_memory(MemPlan *p, MemLimit *l, const Config *cfg, Ops *o, const Groups *g, int local_ranks);
/* The same check of a plan made elsewhere (a pipeline rank's: runtime/train_pp.c). */
void shard_check_plan(const MemPlan *p, MemLimit *l, const Config *cfg, Ops *o, int local_ranks);

#endif
