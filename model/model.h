/* model/model.h - the DeepSeek-V3 model: parameters, activations, forward and backward of
 * one micro-batch, losses (main, MTP, balance), expert loads and the router bias update.
 *
 * Written once against the op table (kernels/ops.h); every buffer is planned and allocated
 * in model_create, nothing is allocated in forward/backward.
 *
 * Calling sequence (training, one optimizer step of M micro-batches):
 *   Model *m = model_create(&cfg, ops, B, T, 1);
 *   model_init_params(m, seed);                       (or upload weights)
 *   model_zero_grads(m); model_zero_counts(m);
 *   model_set_loss_weights(m, lambda, alpha, M);
 *   for each micro-batch: model_forward(m, window, 1, &loss); model_backward(m);
 *   ...optimizer on model_params/model_grads...
 *   model_bias_update(m, gamma, zero_mean, &stats);
 * Evaluation: model_create(..., 0) (no gradients), model_forward(m, window, 0, &loss).
 * Split backward (MODEL_TRAIN_SPLIT): model_backward_input(m) then, any time before the next
 * model_forward, model_backward_weight(m): the same gradients as model_backward bit for bit.
 *
 * A window is B rows of T+1 token ids (host memory): inputs are positions 0..T-1, the main
 * targets positions 1..T; MTP module k predicts position i+k+1 from position i, and positions
 * whose target lies past the window are excluded from its loss.
 */
#ifndef DSTRAIN_MODEL_H
#define DSTRAIN_MODEL_H

#include <stdint.h>
#include <stdio.h>

#include "../comm/comm.h"
#include "../kernels/ops.h"
#include "config.h"
#include "params.h"

#define MTP_MAX 8

typedef struct Model Model;

/* model_create's train argument: no gradients; gradients with W right after B (one set of
 * B-to-W buffers shared by every block); or W apart from B (one set per block: more memory). */
enum { MODEL_EVAL = 0, MODEL_TRAIN = 1, MODEL_TRAIN_SPLIT = 2 };
/* Or'ed into train (train.recompute, SPEC.md section 3): the blocks keep neither their RMSNorm
 * outputs nor the MLA up-projections' outputs (one set serves every block and slot; layers.h
 * block_dropped_plan), nor the last stage its final and MTP norms' outputs, and backward
 * recomputes them: the same results bit for bit, less memory. */
enum { MODEL_RECOMPUTE = 4 };

typedef struct ModelLoss {
    double main;                /* mean cross-entropy of the main head (nats) */
    double mtp[MTP_MAX];        /* mean cross-entropy of each MTP module */
    double balance;             /* sum over MoE layers of the mean sequence-wise balance loss */
} ModelLoss;

typedef struct LoadStats {
    double maxvio_mean;         /* MaxVio = max load / mean load - 1, averaged over MoE layers */
    double maxvio_max;          /* the largest MaxVio of any MoE layer */
} LoadStats;

/* Plans every buffer for micro-batches of B x T tokens and allocates it through ops.
 * train: MODEL_EVAL (no gradients or backward scratch), MODEL_TRAIN or MODEL_TRAIN_SPLIT,
 * each optionally | MODEL_RECOMPUTE. DIE when the config cannot be built. */
Model *model_create(const ModelConfig *c, Ops *o, int B, int T, int train);
/* The same with expert parallelism over ep_comm (P ranks, P dividing n_routed_experts; NULL or
 * one rank: model_create): every rank keeps the whole parameter table but runs only experts
 * ep_rank * E/P .. (ep_rank + 1) * E/P - 1, on the tokens every rank of the group routes to
 * them (comm/dispatch.h), so forward and backward are collective over ep_comm and the other
 * experts' weights are unused here and their gradients stay zero. node: this rank's node
 * (routing report). capacity_factor: 'moe.capacity_factor', the rows a rank keeps per MoE
 * layer for backward as a multiple of the mean B*T*K (model/layers.h moe_plan_pool; 0: the
 * worst case, P times the mean); a forward that receives more stops with one line naming the
 * key. Collective over ep_comm. */
Model *model_create_ep(const ModelConfig *c, Ops *o, int B, int T, int train, Comm *ep_comm, int node,
                       double capacity_factor);
void model_destroy(Model *m);

/* What model_create_ep would take, without taking it (for the check against the memory
 * available before anything large is allocated): the parameter table's entries (host),
 * parameters, gradients, activations and backward scratch (backend memory), and the per-expert
 * bookkeeping (host). ep: ranks of the expert-parallel group (1: none); capacity_factor as for
 * model_create_ep. pool: the expert-row pool's share of acts and scratch. Weight compute copies
 * are not counted (none under fp32, where they alias the masters). */
typedef struct ModelBytes {
    size_t table, params, grads, acts, scratch, experts_host, pool;
} ModelBytes;
void model_plan_bytes(const ModelConfig *c, Ops *o, int B, int T, int train, int ep, double capacity_factor,
                      ModelBytes *out);

const ParamTable *model_table(const Model *m);
const ModelConfig *model_config(const Model *m);
/* The FP32 masters (backend memory, table order), writable: the Linear weights' compute
 * copies (kernels/ops.h Wgt) are rebuilt from them before the next model_forward. */
float *model_params(Model *m);
float *model_grads(Model *m);           /* backend memory, table order; NULL if !train */
/* Bytes per lifetime class, for the start-up memory table. */
void model_print_memory(const Model *m, FILE *f);
/* pool: the expert-row pool's share of acts and scratch (model/layers.h moe_plan_pool). */
typedef struct ModelMemory { size_t params, grads, copies, acts, scratch, pool; } ModelMemory;
void model_memory(const Model *m, ModelMemory *mm);
/* The Linear weights' compute copies as the recipe holds them (SPEC section 6; the CPU
 * emulation keeps FP32 values instead): bf16 values of BF16 copies (2 B each), fp8 values of
 * FP8 copies (codes and transposed codes, 1 B each) and their 128x128 blocks (one FP32 scale
 * each, shared by the transposed copy), counted per bound weight (gate and up fused). */
typedef struct ModelCopies { size_t bf16, fp8, fp8_blocks; } ModelCopies;
void model_copies(const Model *m, ModelCopies *mc);
static inline size_t model_copies_bytes(const ModelCopies *mc) { return 2 * (mc->bf16 + mc->fp8) + 4 * mc->fp8_blocks; }

/* Initial weights from the table's init rules, deterministic in seed. */
void model_init_params(Model *m, uint64_t seed);

/* lambda: MTP weight; alpha: balance loss weight; n_micro: micro-batches per step (losses
 * are means over the step). */
void model_set_loss_weights(Model *m, double lambda, double alpha, int n_micro);
void model_zero_grads(Model *m);
void model_zero_counts(Model *m);

/* window: (B, T+1) host token ids. train = 1 keeps what backward needs and counts loads. */
void model_forward(Model *m, const int32_t *window, int train, ModelLoss *loss);
/* Gradients of the weighted total loss of the last model_forward, accumulated into grads:
 * each sublayer's backward-input (B) then its backward-weight (W). */
void model_backward(Model *m);
/* The same in two passes (MODEL_TRAIN_SPLIT only): every B (activation gradients, through the
 * EP exchanges), then every W (weight gradients only: no communication), each gradient tensor
 * receiving its contributions in model_backward's order. */
void model_backward_input(Model *m);
void model_backward_weight(Model *m);

/* Calls fn(ctx) once, right after block `block`'s weight gradients are accumulated in the
 * nth weight pass from now (model_backward, a fused stage backward pass or
 * stage_backward_weight: each makes one pass over every block of the stage), then forgets it
 * (fn NULL: forget now). The trainer arms it at a step's start with n = the step's micro-batches
 * at the lowest MoE block, to post the routed experts' gradient exchange as soon as their last
 * contribution is in, while the blocks below and the embedding still run. */
void model_grads_hook(Model *m, int block, int nth, void (*fn)(void *ctx), void *ctx);
/* The stage's lowest MoE block of the main layers, or -1 when it has none. */
int model_lowest_moe_block(const Model *m);

/* Logits (V) of the main head at position pos of row 0 after model_forward (host copy). */
void model_logits(Model *m, int pos, float *out);

int model_n_moe_layers(const Model *m);
/* Token counts per expert (n_moe_layers x E, host) accumulated since model_zero_counts. */
void model_expert_counts(Model *m, float *counts);
/* MaxVio statistics of the counts since model_zero_counts. */
LoadStats model_load_stats(Model *m);
/* The most nodes any token's K experts lived on in the forwards since model_zero_counts
 * (node-limited routing: at most topk_group when each expert group lives on one node); 0 when
 * the experts are not spread over several EP ranks. */
int model_max_nodes(const Model *m);
/* Replace the counts (after summing them over ranks). */
void model_set_expert_counts(Model *m, const float *counts);
/* Router bias update (SPEC.md section 4): b_i += gamma * sign(mean load - load_i) for every
 * MoE layer, from the counts since model_zero_counts (callers sum them over ranks first). */
void model_bias_update(Model *m, double gamma, int zero_mean);

#endif
