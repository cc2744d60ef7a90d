/* runtime/ckpt_gather.h - the whole table on the root for a one-rank checkpoint while the
 * routed experts are spread over EP ranks (runtime/shard.h): the root receives the expert
 * regions of the other ranks of its EP group (EP group 0 holds every expert) and places them,
 * with its own tensors, in full-table order.
 *
 * An interim: per-rank checkpoint files (each rank writing what it owns, DESIGN.md
 * "Checkpoints") replace it; until then the root stages three copies of the whole table.
 *
 * Calling sequence (runtime/train.c):
 *   root, experts spread:  ckpt_gather_init(&g, local_table, &cfg.model, groups);
 *   every rank, at a save: ckpt_gather_experts(&g, ...)   (collective over EP group 0)
 *   ckpt_gather_free(&g);                                  (also on a zeroed g)
 */
#ifndef DSTRAIN_CKPT_GATHER_H
#define DSTRAIN_CKPT_GATHER_H

#include "comm/world.h"
#include "model/config.h"
#include "model/params.h"

typedef struct CkptGather {
    ParamTable full;            /* the whole table (params_build) */
    float *params, *m, *v;      /* (full.total) host, full-table order */
    float *recv;                /* (3 * expert region) one peer's weights and moments */
} CkptGather;

void ckpt_gather_init(CkptGather *g, const ParamTable *local, const ModelConfig *c, const Groups *gr);
void ckpt_gather_free(CkptGather *g);
/* params, m, v: this rank's host copies (local->total each, its table layout). Ranks of EP
 * group 0 but the root send their expert regions; the root fills g and points *table, *p,
 * *am, *av at the whole table; every other rank returns at once. */
void ckpt_gather_experts(CkptGather *g, const ParamTable *local, const Groups *gr, const float *params,
                         const float *m, const float *v, const ParamTable **table, const float **p,
                         const float **am, const float **av);

#endif
