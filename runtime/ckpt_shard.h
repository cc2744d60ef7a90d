/* runtime/ckpt_shard.h - a multi-rank job's checkpoint (DESIGN.md "Checkpoints"; issue 14):
 * every rank writes the row blocks it owns into its own file of ckpt-<step>.tmp/, rank 0
 * commits (checkpoint/ckpt.h ckpt_save_begin / _rank / _commit), and no rank ever holds more
 * than its own table.
 *
 * Ownership for writing: a tensor held by a group of ranks (replicated tensors: the dp ranks;
 * a routed expert under ep > 1: the dp/ep ranks of its edp group) is cut by rows among them,
 * rank k of n writing rows [rows*k/n, rows*(k+1)/n) (an empty block is not written). Every
 * row of the model is written exactly once; the files' row blocks go into the manifest, and
 * loading (ckpt_load) reads from whichever files hold them, so any (dp, ep) resumes any
 * other. The training state (step, tokens, data position, RNG) is the job's, the same on every
 * rank; each file holds it and loading takes rank 0's. Under pipeline parallelism every rank
 * of the job writes a file (runtime/train_pp.h pp_save over ckpt_shard_save_job): a tensor is
 * written by the first PP rank holding it, cut by rows over that rank's dp (experts: edp)
 * group as above; the manifest's layout records pp, dp and ep.
 *
 * Calling sequence (runtime/train.c, every rank, after gathering its moments):
 *   if (ckpt_shard_save(&req, &cfg.model, groups, err, n) != 0) report err    (pp = 1)
 *   if (pp_save(t, &req, err, n) != 0) report err                              (pp > 1)
 * Collective over dp_comm (pp = 1), over the whole job (pp > 1).
 */
#ifndef DSTRAIN_CKPT_SHARD_H
#define DSTRAIN_CKPT_SHARD_H

#include <stddef.h>

#include "checkpoint/ckpt.h"
#include "comm/world.h"
#include "model/config.h"

/* start, count (t->n each) <- the rows of each entry of t (the table of dp rank dp_rank in a
 * (dp, ep) layout) that this rank writes. */
void ckpt_shard_blocks(const ParamTable *t, int dp, int dp_rank, int ep, long long *start, long long *count);
/* req: this rank's table, host params and moments (the table's layout), state, run_dir,
 * config; its layout, rank and blocks are filled here. 0 on every rank when the checkpoint is
 * committed; -1 with err on every rank otherwise (err names the rank that failed). */
int ckpt_shard_save(const CkptRequest *req, const ModelConfig *mc, const Groups *g, char *err, size_t errlen);

/* Any layout's save (pp > 1: runtime/train_pp.h): comm holds every rank writing a file (its
 * rank there names the file); file_of (called on rank 0 for every rank r, the table kept alive
 * until the save returns) gives rank r's table and fills its blocks (start, count: max_entries
 * each). r: this rank's request with its layout, rank (comm's) and blocks filled. Returns as
 * ckpt_shard_save; collective over comm. */
typedef struct CkptShardJob {
    Comm *comm;
    int max_entries;
    const ParamTable *(*file_of)(void *arg, int r, long long *start, long long *count);
    void *arg;
} CkptShardJob;
int ckpt_shard_save_job(const CkptRequest *r, const CkptShardJob *job, char *err, size_t errlen);

#endif
