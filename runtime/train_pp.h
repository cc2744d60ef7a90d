/* runtime/train_pp.h - the parts of the training loop that differ under pipeline parallelism
 * (parallel.pp > 1, with dp data-parallel replicas of the pipeline and ep expert-parallel
 * ranks inside each stage's replicas): each PP rank builds only its stages (model/stage.h;
 * two chunks under DualPipe and DualPipeV), runs its schedule's instruction list with the
 * executor (runtime/pipeline/executor.h) over MPI point-to-point (comm/p2p.h), and updates only
 * the parameters its stages hold.
 *
 * Ownership: a stage allocates, binds and updates only its tensors (model/stage.h
 * stage_holds: its blocks; the embedding when first; final norm, head and the MTP modules, with
 * an embedding copy for MTP, when last). Each chunk's table is sharded as at pp = 1
 * (runtime/shard.h): replicated tensors summed over dp_comm, under EP its experts over
 * edp_comm, each region with its ZeRO-1 slices and optimizer shard. A tensor held twice
 * (DualPipe's mirror stages: stage s on ranks s and pp-1-s; the first and last stages'
 * embeddings under 1F1B/ZB1P with MTP; DualPipeV's two chunks of rank 0) has its gradient
 * summed first between exactly its holders: the rank's own chunks, then a pair communicator
 * with the one other PP rank it shares tensors with, carrying those tensors only, so both
 * copies take the same update. The global norm counts each tensor once: the first holder's
 * (ranks, then chunks, in order) slices' sums of squares, summed over pp_comm and dp_comm.
 * Under EP the stage's MoE layers run their experts across the EP group (the replicas of one
 * PP rank run the same list, so their exchanges match) and a stage holds only its EP rank's
 * experts (model/params.h params_select).
 *
 * Checkpoints are per-rank files (runtime/ckpt_shard.h), written by every rank of the job:
 * its table for them is its chunks' tensors once each (pp_table; the host staging of train.h
 * is that size, never the whole model's), and it writes the rows of the tensors no earlier PP
 * rank holds, cut over its dp (experts: edp) group as at pp = 1; rank 0 commits (the manifest's
 * layout records pp, dp and ep). Loading is ckpt_load with that table: each rank reads its
 * tensors' rows from whichever files hold them, so a PP run resumes on its own layout bit for
 * bit and any (pp, dp, ep) layout resumes any other.
 *
 * Memory: before any stage is allocated, pp_setup plans this rank's bytes (runtime/shard.h's
 * items for its chunks: their tensors, ZeRO-1 slices, slots' activations and backward
 * buffers; the checkpoint staging of its own table; the pipeline's transfer buffers and the
 * mirror pack) and refuses a plan over the memory available with one line (runtime/memcheck.h);
 * pp_print_memory prints every rank's plan and its params+grads+optimizer beside dstrain
 * plan's figure for that rank.
 *
 * Calling sequence (runtime/train.c calls these when groups->pp > 1):
 *   pp_setup(t, w, g);   in place of the model and optimizer of trainer_setup
 *   pp_train_step(t, s) / pp_evaluate(t, mtp) / pp_gather_state(t) + pp_save / pp_restore(t, step)
 *   pp_free(t);
 */
#ifndef DSTRAIN_TRAIN_PP_H
#define DSTRAIN_TRAIN_PP_H

#include "runtime/metrics.h"
#include "runtime/train.h"

void pp_setup(Trainer *t, const World *w, Groups *g);
/* This rank's tensors (every chunk's, once each; the experts of its EP rank): the layout of
 * the checkpoint staging t->host_params, host_m, host_v. */
const ParamTable *pp_table(const Trainer *t);
void pp_free(Trainer *t);
/* One optimizer step: the schedule over grad_accum micro-batches, the sums over the PP group,
 * AdamW on the held tensors, the bias update. Collective over pp_comm. */
void pp_train_step(Trainer *t, StepMetrics *s);
/* Mean validation losses, each window forwarded down the stages (collective). */
double pp_evaluate(Trainer *t, double *mtp);
/* t->host_params, host_m, host_v <- this rank's weights and moments (pp_table's layout; the
 * moments gathered from the ZeRO-1 slices: collective over dp_comm and edp_comm). */
void pp_gather_state(Trainer *t);
/* Each held tensor's weights (every stage) and moments from t->host_params/m/v (pp_table's
 * layout); step sets the optimizers' step count. */
void pp_restore(Trainer *t, int step);
/* Write this rank's file of the checkpoint req describes (req: the staging, state and run
 * directory; table, rank, layout and blocks are set here) and commit on rank 0: as
 * ckpt_shard_save, collective over the whole job (pp_world). */
int pp_save(Trainer *t, const CkptRequest *req, char *err, size_t errlen);
/* Every rank of the job. */
Comm *pp_world(const Trainer *t);
/* The start-up memory table, one row per PP rank (collective; the root prints). */
void pp_print_memory(Trainer *t, FILE *f);

#endif
