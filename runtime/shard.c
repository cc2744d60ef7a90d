/* runtime/shard.c - what one rank owns and what it costs (see shard.h). Not here: the
 * training loop (train.c) or the limits themselves (memcheck.c).
 */
#include "runtime/shard.h"

#include <string.h>

#include "model/model.h"
#include "model/params.h"
#include "runtime/common.h"

void shard_plan_memory(MemPlan *p, const Config *cfg, Ops *o, const Groups *g)
{
    const TrainConfig *tc = &cfg->train;
    const int dp = g->dp;
    ModelBytes mb;
    model_plan_bytes(&cfg->model, o, tc->micro_batch_size, tc->seq_len, 1, g->ep, &mb);
    const double total = (double)mb.params / sizeof(float);
    const double slice = dp > 1 ? (double)(((size_t)total + dp - 1) / dp) : total, padded = slice * dp;
    memset(p, 0, sizeof *p);
    memplan_add(p, "parameter table", (double)mb.table, 0);
    memplan_add(p, "parameters", (double)mb.params, 1);
    memplan_add(p, "gradients", (double)mb.grads, 1);
    memplan_add(p, "optimizer state", 2.0 * slice * sizeof(float), 1);
    memplan_add(p, "activations", (double)mb.acts, 1);
    memplan_add(p, "backward scratch", (double)mb.scratch, 1);
    memplan_add(p, "expert bookkeeping", (double)mb.experts_host, 0);
    /* model_init_params fills a host copy of the whole table before the upload */
    memplan_add(p, "initialisation staging", (double)mb.params, 0);
    memplan_add(p, "checkpoint staging", (total + 2.0 * padded) * sizeof(float), 0);
    if (dp > 1) {
        memplan_add(p, "zero-1 host staging", (padded + slice) * sizeof(float), 0);
        memplan_add(p, "zero-1 gradient slice", slice * sizeof(float), 1);
    }
}

void shard_check_memory(MemPlan *p, MemLimit *l, const Config *cfg, Ops *o, const Groups *g, int local_ranks)
{
    shard_plan_memory(p, cfg, o, g);
    mem_limit(l, local_ranks);
    size_t entries, total;
    params_measure(&cfg->model, &entries, &total);
    char what[256];
    snprintf(what, sizeof what, "the model (%.3g parameters in %zu tensors; 'model.n_routed_experts' = %d)",
             (double)total, entries, cfg->model.n_routed_experts);
    memplan_check(p, l, !strcmp(o->name, "cpu"), what);
}
