/* model/model_internal.h - the Model struct and the pieces model.c and mtp.c share.
 * Internal to model/; the public API is model/model.h. */
#ifndef DSTRAIN_MODEL_INTERNAL_H
#define DSTRAIN_MODEL_INTERNAL_H

#include "../runtime/common.h"
#include "layers.h"
#include "model.h"

/* MTP module k (TR section 2.2): h' = eh_proj [RMSNorm(Emb(t_{i+k})) ; RMSNorm(h^{k-1}_i)],
 * h^k = Block(h'), logits = head(RMSNorm(h^k)). The block itself is block L+k-1 of the model. */
typedef struct MtpWeights {
    float *enorm, *hnorm;       /* (C) */
    Wgt eh_proj;                /* (C, 2C) */
    float *head_norm;           /* (C) shared_head.norm */
} MtpWeights;

typedef struct MtpGrads {
    float *enorm, *hnorm, *eh_proj, *head_norm;
} MtpGrads;

typedef struct MtpActs {
    int32_t *tokens;            /* (N) t_{i+k}, 0 past the window (those rows have no target) */
    int32_t *targets;           /* (N) t_{i+k+1}, -1 past the window */
    float *dloss;               /* (N) loss weight per row (0 where no target) */
    act *e, *en;                /* (N,C), (N,C) */
    float *en_rstd;             /* (N) */
    act *hn;                    /* (N,C) */
    float *hn_rstd;             /* (N) */
    act *cat;                   /* (N,2C) [en | hn] */
    act *hprime;                /* (N,C) the block's input */
    act *shn;                   /* (N,C) */
    float *shn_rstd;            /* (N) */
    act *logits;                /* (N,V) (gradient in place when training) */
    float *losses;              /* (N) */
} MtpActs;

/* What module k's backward-input leaves for its backward-weight (layers.h BlockBwd). */
typedef struct MtpBwd {
    act *dshn;                  /* (N,C) shared_head.norm's output gradient */
    act *dhprime;               /* (N,C) eh_proj's output gradient */
    act *den, *dhn;             /* (N,C) enorm's and hnorm's output gradients */
    act *de;                    /* (N,C) the embedding's output gradient */
} MtpBwd;

/* One micro-batch in flight on a stage (model/stage.h): its token ids, activations, losses,
 * residual gradient, and what its B leaves for its W. Only the stage's blocks are planned;
 * the head's and MTP's buffers only on the last stage. */
typedef struct ModelSlot {
    int32_t *tokens, *targets;  /* (N) */
    act *x0;                    /* (N,C) the embedding output, or the input received from the
                                 * previous stage */
    BlockActs *acts;            /* (nblocks) */
    act *hf;                    /* (N,C) final norm output = h^0 */
    float *hf_rstd;             /* (N) */
    act *logits;                /* (N,V) */
    float *losses;              /* (N) */
    float *bal_loss;            /* (n_moe, B) */
    MtpActs mtp[MTP_MAX];
    BlockBwd *bw;               /* (nblocks) what B leaves for W: per block with
                                 * MODEL_TRAIN_SPLIT, else one set every block shares */
    MtpBwd mtp_bw[MTP_MAX];     /* likewise per MTP module */
    act *dres;                  /* (N,C) residual gradient: dL/d(stage output) received by a
                                 * stage that is not last; dL/d(stage input) after B */
    act *dhf, *dh_chain;        /* (N,C) dL/dh^0, and dL/dh^k between MTP modules */
} ModelSlot;

struct Model {
    ModelConfig cfg;
    Ops *o;
    ParamTable table;
    Dims d;
    EpGroup ep;                 /* the expert-parallel group when d.ep == &ep */
    int train;                  /* MODEL_EVAL, MODEL_TRAIN or MODEL_TRAIN_SPLIT */
    int recompute;              /* MODEL_RECOMPUTE: the blocks share one set of the dropped
                                 * tensors (rc) and backward recomputes them */
    int lo, hi, first, last;    /* the stage: main blocks [lo, hi), embedding when first, final
                                 * norm, head and MTP when last (the whole model: 0, L, 1, 1) */
    int n_slots;
    ModelSlot *slots;           /* (n_slots) */
    int n_micro;                /* micro-batches a step keeps losses of (0: read at each forward) */
    size_t step_row;            /* floats of one micro-batch's losses: main (N), MTP (D x N), balance
                                 * (n_moe x B) */
    float *step_losses;         /* (n_micro, step_row) backend: the step's losses, read once */
    float *host_step;           /* (n_micro, step_row) host staging of that read */
    int *step_valid;            /* (n_micro, MTP_MAX) host: each MTP mean's divisor */
    ModelSlot *sl;              /* the slot the calls below work on */
    int lane;                   /* the EP lane the calls below exchange on (EP_LANE_F unless a
                                   StagePass sets it) */
    int nblocks;                /* L main blocks + D MTP blocks */
    int *is_moe;                /* (nblocks) */
    void (*grads_hook)(void *); /* model_grads_hook: called once, after block hook_block's W */
    void *grads_hook_ctx;       /* of its hook_left-th weight pass from now */
    int hook_block, hook_left;
    int n_moe;                  /* MoE blocks (main and MTP) */
    int *moe_block;             /* (n_moe) block index of each MoE slot */
    int *moe_slot;              /* (nblocks) MoE slot of each block, -1 for dense */

    float *params, *grads;      /* (table.total) */
    BlockWeights *w;            /* (nblocks) bound to params (Linear weights: compute copies) */
    BlockGrads *g;              /* (nblocks) bound to grads */
    Wgt *expert_wgts;           /* (n_moe * 2E) the routed experts' Wgts, in BlockWeights order */
    MtpWeights mtp_w[MTP_MAX];
    MtpGrads mtp_g[MTP_MAX];
    float *embed, *final_norm;  /* into params */
    Wgt head;                   /* lm_head (V,C) */
    float *g_embed, *g_final_norm, *g_head;     /* into grads */
    Wgt **wgts;                 /* (n_wgts) every bound Linear weight, refreshed together */
    int n_wgts;
    int wgts_stale;             /* the masters may have changed since the last refresh */

    char *act_arena, *scratch_arena, *copy_arena;
    size_t bytes_params, bytes_acts, bytes_scratch, bytes_copies;

    /* activations (act_arena) */
    float *dloss_main;          /* (N) */
    float *logits_r;            /* (N,E) router logits temporary */
    float *rope_cos, *rope_sin; /* (T, Dr/2) */
    float attn_scale;
    float *counts;              /* (n_moe, E) tokens per expert since model_zero_counts */
    float *bal_dloss;           /* (B) */

    BlockActs rc;               /* recompute: the dropped tensors (block_dropped_plan) */
    act *rc_hf;                 /* (N,C) recompute, last stage: the final norm's output */
    MtpActs rc_mtp;             /* recompute, last stage: the MTP norms' (mtp_dropped_plan) */
    const ModelSlot *rc_slot;   /* recompute: the F whose ln2 rc holds (a MoE block's gate to */
    int rc_block;               /* its experts phase), for the check that no other F ran between */

    /* backward (scratch_arena) */
    Scratch s;
    act *rc_ln2;                /* (N,C) recompute: W's post_attention_layernorm output */
    float *rc_rstd;             /* (N) recompute: the recomputed norms' rstd (discarded) */
    act *dcat;                  /* (N,2C) */

    double lambda, alpha;
    int32_t *host_tokens;       /* (2N) staging */
    float *host_losses;         /* staging for downloads */
    /* host staging of the per-step bookkeeping, sized at creation (nothing allocated per step) */
    float *host_counts;         /* (n_moe, E) expert loads */
    float *host_bias;           /* (E) one layer's router bias */
    double *host_delta;         /* (E) one layer's bias update */
    float *host_weights;        /* (max(N, B)) loss weights being uploaded */
    int32_t *host_idx;          /* (N,K) routing choices, for the node-limited routing report */
    int max_nodes;              /* most nodes a token's experts lived on since model_zero_counts */
};

Ctx model_ctx(Model *m);
/* Compute copies from the masters, when the masters may have changed (model_params). */
void model_refresh_weights(Model *m);
MoeStats model_moe_stats(Model *m, int block, int train);
void block_forward(Model *m, int b, const act *x_in, int train);
/* Backward of block b: B (dres: dL/dx_out in, dL/dx_in out) and W. */
void block_backward_input(Model *m, int b, const act *x_in, act *dres);
/* A block's F (forward) or B (backward input) in parts, for the phases of model/stage.c: part 0
 * then, when it returns 1 (a MoE block: it posted an exchange on m->lane), part 1 (also posts)
 * and part 2; each exchange is waited (block_wait) before the next part. */
int block_forward_part(Model *m, int b, const act *x_in, int train, int part);
int block_backward_part(Model *m, int b, const act *x_in, act *dres, int part);
/* Waits for the exchange that part `part` - 1 of block b posted (backward: of its B). */
void block_wait(Model *m, int b, int part, int backward);
void block_backward_weight(Model *m, int b, const act *x_in);
double model_download_mean(Model *m, const float *dev, int n, int valid);

void mtp_bind(MtpWeights *w, Ops *o, const ParamTable *t, float *params, int layer, Arena *copies);
void mtp_bind_grads(MtpGrads *g, const ParamTable *t, float *grads, int layer);
/* shared: NULL, or (recompute) the one set of the norm outputs en, hn, cat (eh_proj's input)
 * and shn that every module and slot uses (mtp_dropped_plan). */
void mtp_acts_plan(MtpActs *a, const Dims *d, const MtpActs *shared, Arena *ar);
void mtp_dropped_plan(MtpActs *a, const Dims *d, Arena *ar);
/* recompute: module k's norm outputs again for its W (the final norm's output, module 1's
 * input, is the caller's: stage.c head_recompute). */
void mtp_recompute(Model *m, int k);
/* Forward of module k (1-based) from h_prev (N,C); its per-row losses in the slot's
 * mtp[k-1].losses; returns how many rows have a target (the mean's divisor). */
int mtp_forward(Model *m, int k, const int32_t *window, const act *h_prev, int train);
void mtp_bwd_plan(MtpBwd *b, const Dims *d, Arena *ar);
/* Backward of module k. B accumulates dL/dh_prev into m->dhf (k = 1) or m->dh_chain; W adds
 * its weights' gradients (the shared head's and embedding's included). */
void mtp_backward_input(Model *m, int k);
void mtp_backward_weight(Model *m, int k);

#endif
