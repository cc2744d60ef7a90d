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
 * Checkpoints stay one-rank checkpoints (layout {1, 1, 1, 1}; not yet the per-rank files of
 * runtime/ckpt_shard.h): the ranks sum their tensors' first holders' weights and moments into
 * full tables (exact: one non-zero term each; under EP over the dp ranks too), rank 0 writes,
 * and every rank resumes by taking its tensors' rows back (from a one-rank or a per-rank
 * checkpoint: ckpt_load reads any into the whole table), so a PP run resumes on its own layout
 * bit for bit and any layout can resume it.
 *
 * Calling sequence (runtime/train.c calls these when groups->pp > 1):
 *   pp_setup(t, w, g);   in place of the model and optimizer of trainer_setup
 *   pp_train_step(t, s) / pp_evaluate(t, mtp) / pp_gather_state(t) / pp_restore(t, step)
 *   pp_free(t);
 */
#ifndef DSTRAIN_TRAIN_PP_H
#define DSTRAIN_TRAIN_PP_H

#include "runtime/metrics.h"
#include "runtime/train.h"

void pp_setup(Trainer *t, const World *w, Groups *g);
/* The whole model's table (checkpoints and the report use it; each stage has its own). */
const ParamTable *pp_table(const Trainer *t);
void pp_free(Trainer *t);
/* One optimizer step: the schedule over grad_accum micro-batches, the sums over the PP group,
 * AdamW on the held tensors, the bias update. Collective over pp_comm. */
void pp_train_step(Trainer *t, StepMetrics *s);
/* Mean validation losses, each window forwarded down the stages (collective). */
double pp_evaluate(Trainer *t, double *mtp);
/* t->host_params, host_m, host_v <- the whole table's weights and moments (collective). */
void pp_gather_state(Trainer *t);
/* Each held tensor's weights (every stage) and moments from t->host_params/m/v; step sets the
 * optimizers' step count. */
void pp_restore(Trainer *t, int step);
/* The start-up memory table, one row per PP rank (collective; the root prints). */
void pp_print_memory(Trainer *t, FILE *f);

#endif
