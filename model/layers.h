/* model/layers.h - internal to model/: per-block weights, saved activations and the backward
 * scratch shared by all blocks. Not a public API; model/model.h is.
 *
 * A block = MLA sublayer + FFN sublayer (dense SwiGLU, or MoE with shared experts):
 *
 *   x_in ──► RMSNorm ─► MLA ──(+)──► x_mid ──► RMSNorm ─► FFN/MoE ──(+)──► x_out
 *     └────────────────────────┘        └─────────────────────────────┘
 *
 * Weights are pointers into the flat parameter buffer, bound by name from the parameter table
 * (model/params.h), once for the parameters and once, with the same offsets, for the
 * gradients. Activations are sized for one micro-batch of B x T tokens and allocated once.
 */
#ifndef DSTRAIN_LAYERS_H
#define DSTRAIN_LAYERS_H

#include <stdint.h>

#include "comm/dispatch.h"
#include "kernels/ops.h"
#include "runtime/common.h"
#include "config.h"
#include "params.h"

/* The weights a block's forward and backward read: norm weights and the router bias as FP32
 * masters, Linear weights as compute copies (kernels/ops.h Wgt) of their masters. */
typedef struct BlockWeights {
    float *ln1;             /* (C) input_layernorm */
    Wgt q_a;                /* (Rq,C)              unbound when Rq == 0 */
    float *q_a_norm;        /* (Rq)                NULL when Rq == 0 */
    Wgt q_b;                /* (H*Dqk, Rq) or q_proj (H*Dqk, C) when Rq == 0 */
    Wgt kv_a_lat, kv_a_rope;   /* kv_a_proj_with_mqa (Rkv+Dr, C): rows [0,Rkv) latent, rows
                                  [Rkv,Rkv+Dr) rope key, one compute copy each */
    float *kv_a_norm;       /* (Rkv) */
    Wgt kv_b;               /* (H*(Dn+Dv), Rkv) */
    Wgt o;                  /* (C, H*Dv) */
    float *ln2;             /* (C) post_attention_layernorm */
    /* dense FFN: gate_up (2I, C) = [gate; up] adjacent in the table, down (C, I) */
    Wgt ffn_gate_up, ffn_down;
    /* MoE */
    Wgt router;             /* (E, C), FP32 (SPEC.md section 6) */
    float *router_bias;     /* (E) selection bias: state, not trained */
    Wgt shared_gate_up, shared_down;   /* (2Fs, C), (C, Fs); unbound when Fs == 0 */
    Wgt *expert_gate_up, *expert_down; /* (E) each: expert e's (2F, C) and (C, F) */
} BlockWeights;

/* A block's gradients, in the flat FP32 gradient buffer (the parameter table's offsets). */
typedef struct BlockGrads {
    float *ln1;
    float *q_a, *q_a_norm;  /* NULL when Rq == 0 */
    float *q_b;
    float *kv_a;            /* (Rkv+Dr, C): latent rows, then rope rows */
    float *kv_a_norm;
    float *kv_b;
    float *o;
    float *ln2;
    float *ffn_gate_up, *ffn_down;
    float *router;
    float *shared_gate_up, *shared_down;
    float *experts;         /* expert e: gate_up at experts + e*expert_stride (2F, C), then down (C, F) */
    size_t expert_stride;   /* floats between consecutive experts = 3*F*C */
} BlockGrads;

typedef struct BlockActs {
    /* MLA, N = B*T rows */
    act *ln1;                   /* (N,C) */
    float *ln1_rstd;            /* (N) */
    act *cq_raw, *cq;           /* (N,Rq) x2 */
    float *cq_rstd;             /* (N) */
    act *q;                     /* (N,H,Dqk), rope applied */
    act *ckv_raw, *ckv;         /* (N,Rkv) x2 */
    float *ckv_rstd;            /* (N) */
    act *k_rope;                /* (N,Dr), rope applied */
    act *kv;                    /* (N,H,Dn+Dv) */
    act *k, *v;                 /* (N,H,Dqk), (N,H,Dv) */
    act *att;                   /* (N,H*Dv) */
    float *lse;                 /* (B,H,T) */
    act *x_mid;                 /* (N,C) residual after attention */
    /* FFN */
    act *ln2;                   /* (N,C) */
    float *ln2_rstd;            /* (N) */
    act *gu, *h;                /* dense (N,2I),(N,I); shared expert (N,2Fs),(N,Fs) */
    /* MoE */
    float *s;                   /* (N,E) sigmoid router scores (logits are not kept) */
    int32_t *idx;               /* (N,K) chosen experts */
    float *w;                   /* (N,K) routing weights */
    act *xp, *gup, *hp, *yp;    /* (R,C), (R,2F), (R,F), (R,C) rows of this rank's experts, in
                                   receive order (Dims.R: N*K for one rank, P*N*K under EP) */
    EpHandle ep;                /* dispatch layout of this micro-batch */
    act *x_out;                 /* (N,C) block output = next block's input */
} BlockActs;

/* Backward-input (B) temporaries that W does not read, shared by every block (one block is in
 * B at a time). */
typedef struct Scratch {
    act *dk, *dv, *datt;        /* (N,H*Dqk), (N,H*Dv) x2 */
    act *dh;                    /* (N, max(I,Fs)) */
    float *ds, *dw;             /* (N,E) router score gradients, (N,K) routing weight gradients */
    act *dxp, *dhp;             /* (R,C), (R,F) expert-major gradients as in BlockActs */
} Scratch;

/* What a block's backward-input (B) leaves for its backward-weight (W): the gradient of every
 * Linear's and every norm's output, written by B and read by W, so they live from B until W.
 * With W right after B (model_backward) every block shares one set; with W apart
 * (MODEL_TRAIN_SPLIT) each block of each slot has its own. */
typedef struct BlockBwd {
    /* MLA */
    act *dmid;                  /* (N,C) dL/dx_mid, o_proj's output gradient (a copy: the
                                 * residual stream's buffer becomes dL/dx_in during B) */
    act *dq;                    /* (N,H*Dqk) q_b's output gradient, rope undone */
    act *dkv;                   /* (N,H*(Dn+Dv)) */
    act *dckv, *dckv_raw;       /* (N,Rkv) kv_a_norm's output and input gradients */
    act *dk_rope;               /* (N,Dr) rope undone */
    act *dcq, *dcq_raw;         /* (N,Rq) q_a_norm's output and input gradients */
    act *dln1;                  /* (N,C) input_layernorm's output gradient */
    /* FFN */
    act *dout;                  /* (N,C) dL/dx_out, the down projections' output gradient */
    act *dgu;                   /* (N, 2*max(I,Fs)) dense or shared expert gate_up gradient */
    act *dln2;                  /* (N,C) post_attention_layernorm's output gradient */
    float *dlogits_r;           /* (N,E) router logit gradients */
    act *dyp, *dgup;            /* (R,C), (R,2F) routed experts' output and gate_up gradients */
} BlockBwd;

typedef struct Dims {
    int B, T, N, C, H, Dn, Dr, Dv, Dqk, Rq, Rkv, E, K, F, Fs, I, V, L, D;
    EpGroup *ep;                /* the expert-parallel group (NULL: one rank holds every expert) */
    int R;                      /* expert rows a rank keeps per MoE layer and slot, the pool
                                 * (moe_plan_pool): the rows it may receive, checked each forward */
    int P;                      /* ranks of the EP group (1: none) */
    double capacity_factor;     /* 'moe.capacity_factor' R was sized with (0: the worst case) */
    int act_bytes;              /* bytes of one activation element (Ops.act_bytes) */
} Dims;

void dims_from_config(Dims *d, const ModelConfig *c, int B, int T, int act_bytes);
/* The expert-row pool (model/moe.c): R = ceil(capacity_factor * N*K) rows, at most the worst
 * case P*N*K a rank of an EP group of P may receive (all K slots of all P ranks' N tokens);
 * capacity_factor 0: that worst case. A rank receives N*K rows on average (every rank sends
 * N*K and holds E/P of the E experts), so for one rank R = N*K whatever the factor (>= 1).
 * Sets d->R, d->P, d->capacity_factor. */
void moe_plan_pool(Dims *d, int P, double capacity_factor);
/* Bytes of the expert rows the pool holds per MoE layer and slot with `rows` rows: the
 * forward's xp, gup, hp, yp (2C + 3F per row) and, with split (W apart from B), the dyp and
 * dgup B leaves for W (C + 2F). */
size_t moe_pool_bytes(const Dims *d, int rows, int split);

/* Binding by name: a block's weights to the parameters (each Linear weight with its compute
 * copy taken from the arena `copies`, its type from the parameter table for o's precision;
 * expert_gate_up/expert_down must point at E Wgts each for an MoE block), and its gradients
 * to the gradient buffer (the same offsets). */
void block_bind(BlockWeights *w, Ops *o, const ParamTable *t, const ModelConfig *c, float *params, int layer,
                int moe, Arena *copies);
void block_bind_grads(BlockGrads *g, const ParamTable *t, const ModelConfig *c, float *grads, int layer, int moe);
/* Binds the whole table entry `name` as a Linear weight (compute copy from `copies`). */
void param_bind_wgt(Wgt *w, Ops *o, const ParamTable *t, float *params, const char *name, Arena *copies);
/* The block's Linear weights that are bound (list NULL: only counted); returns the count. */
int block_wgts(BlockWeights *w, int E, Wgt **list);

/* Activation and scratch planning in an arena (runtime/common.h: count, then take). shared:
 * NULL, or (train.recompute) the one set of the dropped tensors that block_dropped_plan planned,
 * which the block's members point at instead of buffers of its own. */
void block_acts_plan(BlockActs *a, const Dims *d, int moe, const BlockActs *shared, Arena *ar);
/* train.recompute (SPEC.md section 3): the tensors a block does not keep, planned once for all
 * blocks and slots: the RMSNorm outputs ln1, cq, ckv, ln2 and the MLA up-projections' outputs q
 * (W_qb; q_proj's output stays per block when Rq = 0), kv (W_kvb) and the k, v built from it.
 * Each is live only inside one synchronous call (the MLA forward, B or W) except ln2, which a
 * MoE block's F holds from its gate to its experts phase (one F pass in flight per Model). */
void block_dropped_plan(BlockActs *a, const Dims *d, Arena *ar);
void block_acts_free(BlockActs *a);     /* the host-side parts (dispatch offsets) */
void scratch_plan(Scratch *s, const Dims *d, Arena *ar);
/* moe: 1 for an MoE block, 0 for a dense one, -1 for a set every block shares. */
void block_bwd_plan(BlockBwd *b, const Dims *d, int moe, Arena *ar);

/* Rope tables and softmax scale (model/rope.c). cos/sin: host arrays (T, Dr/2). */
void rope_tables(const ModelConfig *c, int T, float *cos_host, float *sin_host, float *attn_scale);

/* Sublayer forward, backward-input (B) and backward-weight (W). Forward: x_in (N,C) ->
 * a->x_mid. B: dres (N,C) holds dL/dx_mid on entry and dL/dx_in on return; it fills bw. W:
 * the weight gradients from bw and the forward's activations, accumulated into g. B then W is
 * the fused backward bit for bit (they write disjoint buffers). */
typedef struct Ctx {
    Ops *o;
    const Dims *d;
    const ModelConfig *cfg;
    const float *rope_cos, *rope_sin;   /* backend memory (T, Dr/2) */
    float attn_scale;
    Scratch *s;                         /* backward temporaries (NULL in evaluation) */
    float *logits_r;                    /* (N,E) router logits, a forward temporary */
    int lane;                           /* the EP lane its exchanges go on (comm/dispatch.h) */
} Ctx;

void mla_forward(const Ctx *x, const BlockWeights *w, BlockActs *a, const act *x_in);
void mla_backward_input(const Ctx *x, const BlockWeights *w, BlockBwd *bw, BlockActs *a, const act *x_in,
                        act *dres);
void mla_backward_weight(const Ctx *x, const BlockWeights *w, BlockGrads *g, const BlockBwd *bw,
                         const BlockActs *a, const act *x_in);
/* train.recompute: the dropped tensors again from what the block keeps (x_in, cq_raw, ckv_raw,
 * the roped k_rope), by the forward's ops on the same inputs (the same bits). weights 0 (for B):
 * q, k, v and the cq, ckv they come from; weights 1 (for W): ln1, cq, ckv. rstd: (N) scratch
 * for the recomputed norms' rstd (the kept ones are not written). */
void mla_recompute(const Ctx *x, const BlockWeights *w, BlockActs *a, const act *x_in, float *rstd, int weights);

/* FFN sublayer: a->x_mid -> a->x_out. MoE also writes expert counts (E) when counts != NULL
 * and the per-sequence balance loss (B) when bal_loss != NULL. */
typedef struct MoeStats {
    float *counts;              /* (E) backend memory: tokens per expert, accumulated */
    float *bal_loss;            /* (B) backend memory: sequence-wise balance loss */
    float *bal_dloss;           /* (B) backend memory: d(total loss)/d(bal_loss[b]) */
    float alpha;                /* balance loss weight */
    int *max_nodes;             /* raised to the most nodes any token's experts live on (EP over
                                 * several ranks; NULL: not measured) */
    int32_t *idx_host;          /* (N,K) host staging for that measurement */
    int layer;                  /* the block's layer index, for messages */
} MoeStats;

void ffn_forward(const Ctx *x, const BlockWeights *w, BlockActs *a);
void ffn_backward_input(const Ctx *x, const BlockWeights *w, BlockBwd *bw, BlockActs *a, act *dres);
void ffn_backward_weight(const Ctx *x, const BlockWeights *w, BlockGrads *g, const BlockBwd *bw,
                         const BlockActs *a);
void moe_forward(const Ctx *x, const BlockWeights *w, BlockActs *a, MoeStats *st);
/* moe_forward and moe_backward_input as phases (DESIGN.md section 4): each of gate, experts
 * (F) and out, experts (B) ends by posting an exchange on x->lane that the caller waits for
 * (ep_*_wait on a->ep) before the next phase; moe_forward_out and moe_backward_gate post
 * nothing. The blocking functions are these phases with their waits. */
void moe_forward_gate(const Ctx *x, const BlockWeights *w, BlockActs *a, MoeStats *st);
void moe_forward_experts(const Ctx *x, const BlockWeights *w, BlockActs *a);
void moe_forward_out(const Ctx *x, BlockActs *a);
void moe_backward_out(const Ctx *x, const BlockWeights *w, BlockBwd *bw, BlockActs *a, act *dres);
void moe_backward_experts(const Ctx *x, const BlockWeights *w, BlockBwd *bw, BlockActs *a);
void moe_backward_gate(const Ctx *x, const BlockWeights *w, BlockBwd *bw, BlockActs *a, MoeStats *st, act *dres);
void moe_backward_input(const Ctx *x, const BlockWeights *w, BlockBwd *bw, BlockActs *a, MoeStats *st,
                        act *dres);
void moe_backward_weight(const Ctx *x, const BlockWeights *w, BlockGrads *g, const BlockBwd *bw,
                         const BlockActs *a);

#endif
