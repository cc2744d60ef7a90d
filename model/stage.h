/* model/stage.h - a pipeline stage: a chunk of main blocks [lo, hi), plus the embedding when it
 * is the first stage, plus final norm, head and the MTP modules when it is the last
 * (DESIGN.md section 2), with activation slots for the micro-batches it holds at once.
 *
 * A stage is a Model (model/model.h) built over part of the blocks. Its parameter table
 * (model_table) holds only the tensors the stage runs (stage_holds; params_select): its
 * parameters and gradients are allocated for those alone, each entry keeping its
 * global_offset in the whole model's table and its initialisation (seeded by its global
 * index), so every layout starts from the same weights and a tensor's gradient is the sum over
 * the stages that hold it. The whole model is the one-stage case: model_forward/model_backward
 * are stage_forward/stage_backward on slot 0 of {0, L, first, last, 1 slot}.
 *
 * Not here: which micro-batch sits in which slot, transfers between stages, the order of F,
 * B and W (runtime/pipeline/executor.h).
 *
 * Calling sequence (one micro-batch in slot i of a middle stage):
 *   Model *s = stage_create(&cfg, ops, B, T, MODEL_TRAIN_SPLIT, &spec, NULL, 0);
 *   ... receive the previous stage's output into stage_input(s, i) ...
 *   stage_forward(s, i, mb, window, 1, NULL);        window: host (B, T+1) ids (first/last)
 *   ... send stage_output(s, i); later receive dL/d(output) into stage_output_grad(s, i) ...
 *   stage_backward_input(s, i);  ... send stage_input_grad(s, i) ...
 *   stage_backward_weight(s, i);                      (or stage_backward: B and W together)
 *   ... after the step's micro-batches: stage_read_losses(s, C, losses);   one read
 * The slot is free again after its W. A last stage needs no received gradient; a first stage
 * receives no input (it embeds the window's tokens).
 */
#ifndef DSTRAIN_STAGE_H
#define DSTRAIN_STAGE_H

#include "model/model.h"

typedef struct StageSpec {
    int lo, hi;             /* main blocks [lo, hi) */
    int first, last;        /* lo == 0: embedding here; hi == L: final norm, head, MTP here */
    int n_slots;            /* micro-batches held at once (>= 1) */
    int n_micro;            /* micro-batches a step keeps losses of on the device (0: none) */
    double capacity_factor; /* 'moe.capacity_factor': the expert-row pool (model/layers.h
                               moe_plan_pool; 0: the worst case) */
} StageSpec;

/* Whether stage sp holds table entry p: its blocks [lo, hi); the embedding when first, and
 * when last (MTP's copy, if c has MTP modules); final norm, head and the MTP modules when last. */
int stage_holds(const StageSpec *sp, const ModelConfig *c, const Param *p);

/* Stage s of S over L main blocks, split as evenly as integers allow (the first L % S
 * stages get one block more); n_slots 1. Needs 1 <= S <= L. */
void stage_split(int L, int S, int s, StageSpec *sp);

/* model_plan_bytes (model/model.h) for the stage sp: its tensors (of one EP rank's experts
 * when ep > 1), its slots' activations and backward buffers (train: stage_create's mode). */
void stage_plan_bytes(const ModelConfig *c, Ops *o, int B, int T, int train, int ep, const StageSpec *sp,
                      ModelBytes *out);

/* As model_create_ep, for the stage sp. Collective over ep_comm when it has several ranks. */
Model *stage_create(const ModelConfig *c, Ops *o, int B, int T, int train, const StageSpec *sp, Comm *ep_comm,
                    int node);

/* Forward of micro-batch mb in `slot`: window (host, B x (T+1) ids) is read on the first stage
 * (tokens) and the last (targets; may be NULL elsewhere). With loss, the losses are read at
 * once: the last stage's main and MTP losses; every stage's share of the balance loss (its
 * MoE layers); zero otherwise. With loss NULL they stay on the device, in row mb of the
 * step's losses (mb < n_micro), for stage_read_losses. */
void stage_forward(Model *m, int slot, int mb, const int32_t *window, int train, ModelLoss *loss);
/* The losses of micro-batches 0 .. n-1 kept since their forwards, in one download: out[mb] as
 * stage_forward's loss would have been (bit for bit: the same sums); only the rows of
 * micro-batches this stage ran mean anything. */
void stage_read_losses(Model *m, int n, ModelLoss *out);
/* B and W of the slot unit by unit (model_backward's order). */
void stage_backward(Model *m, int slot);
/* B of the slot (MODEL_TRAIN_SPLIT, or with W straight after): activation gradients. */
void stage_backward_input(Model *m, int slot);
/* W of the slot after its B: weight gradients only. */
void stage_backward_weight(Model *m, int slot);

/* Boundary tensors of a slot, (N, C) activations of stage_io_bytes bytes each: the input a
 * stage that is not first receives; the output a stage that is not last sends; the gradient
 * of that output it receives before B; the gradient of its input it sends after B. */
act *stage_input(Model *m, int slot);
const act *stage_output(Model *m, int slot);
act *stage_output_grad(Model *m, int slot);
const act *stage_input_grad(Model *m, int slot);
size_t stage_io_bytes(const Model *m);
/* dst <- src, one boundary tensor in the stage's backend memory (a hand-off between two
 * stages of one rank). */
void stage_copy_io(Model *m, act *dst, const act *src);
int stage_n_slots(const Model *m);
int stage_n_micro(const Model *m);

/* A stage's F or B of one micro-batch as phases (DESIGN.md section 4), for the executor's FB
 * ping-pong: a phase runs the units up to and including one that POSTS an EP exchange on the
 * pass's lane (F: EP_LANE_F; B: EP_LANE_B) - a MoE block's dispatch, combine, or their
 * backward - and returns; the caller may run other work (the other pass), then calls
 * stage_pass_wait before the next phase. stage_forward, stage_backward and
 * stage_backward_input are these passes with each exchange waited at once, so a phased run does
 * the same arithmetic in the same order as an unphased one (bit-identical results).
 *   StagePass p; stage_pass_begin(&p, m, STAGE_PASS_F, slot, mb, window);
 *   while (stage_pass_run(&p)) { ...other work...; stage_pass_wait(&p); }
 * stage_pass_next names the phase the next run starts with ("L3": block 3 from its start, with
 * the embedding or the head before it when the pass starts there; "L3 experts", "L3 out" (F)
 * or "L3 gate" (B): the parts after an exchange; "head", "embed": what is left after the
 * last block); p.exchange names what the last run posted ("dispatch L3", "combine L3",
 * "combine bwd L3", "dispatch bwd L3"). */
enum { STAGE_PASS_F, STAGE_PASS_B, STAGE_PASS_BW };   /* forward; backward input; B and W fused */
typedef struct StagePass {
    Model *m;
    int kind, slot, mb;
    const int32_t *window;
    int b, part;                /* next block and its part (model_internal.h); b = -2: not started */
    int posted;                 /* an exchange is in flight: stage_pass_wait before running on */
    int done;
    int train;                  /* F: counts and gradients' seeds (stage_forward's train); 1 here */
    ModelLoss *loss;            /* F: read the losses now (stage_forward's loss); NULL here */
    int valid[MTP_MAX];
    char phase[24], exchange[24];
} StagePass;
void stage_pass_begin(StagePass *p, Model *m, int kind, int slot, int mb, const int32_t *window);
/* Runs the next phase: 1 if it ended by posting an exchange, 0 when the pass is done. */
int stage_pass_run(StagePass *p);
void stage_pass_wait(StagePass *p);
const char *stage_pass_next(StagePass *p);

#endif
