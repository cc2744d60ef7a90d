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

#include "../kernels/ops.h"
#include "../runtime/common.h"
#include "../comm/dispatch.h"
#include "config.h"
#include "params.h"

typedef struct BlockWeights {
    float *ln1;             /* (C) input_layernorm */
    float *q_a, *q_a_norm;  /* (Rq,C), (Rq)        NULL when Rq == 0 */
    float *q_b;             /* (H*Dqk, Rq) or q_proj (H*Dqk, C) when Rq == 0 */
    float *kv_a;            /* (Rkv+Dr, C): rows [0,Rkv) latent, rows [Rkv,Rkv+Dr) rope key */
    float *kv_a_norm;       /* (Rkv) */
    float *kv_b;            /* (H*(Dn+Dv), Rkv) */
    float *o;               /* (C, H*Dv) */
    float *ln2;             /* (C) post_attention_layernorm */
    /* dense FFN: gate_up (2I, C) = [gate; up] adjacent in the table, down (C, I) */
    float *ffn_gate_up, *ffn_down;
    /* MoE */
    float *router;          /* (E, C) */
    float *router_bias;     /* (E) selection bias: state, not trained */
    float *shared_gate_up, *shared_down;   /* (2Fs, C), (C, Fs); NULL when Fs == 0 */
    float *experts;         /* expert e: gate_up at experts + e*expert_stride (2F, C), then down (C, F) */
    size_t expert_stride;   /* floats between consecutive experts = 3*F*C */
} BlockWeights;

typedef struct BlockActs {
    /* MLA, N = B*T rows */
    float *ln1, *ln1_rstd;      /* (N,C), (N) */
    float *cq_raw, *cq, *cq_rstd;   /* (N,Rq) x2, (N) */
    float *q;                   /* (N,H,Dqk), rope applied */
    float *ckv_raw, *ckv, *ckv_rstd;   /* (N,Rkv) x2, (N) */
    float *k_rope;              /* (N,Dr), rope applied */
    float *kv;                  /* (N,H,Dn+Dv) */
    float *k, *v;               /* (N,H,Dqk), (N,H,Dv) */
    float *att, *lse;           /* (N,H*Dv), (B,H,T) */
    float *x_mid;               /* (N,C) residual after attention */
    /* FFN */
    float *ln2, *ln2_rstd;      /* (N,C), (N) */
    float *gu, *h;              /* dense (N,2I),(N,I); shared expert (N,2Fs),(N,Fs) */
    /* MoE */
    float *s;                   /* (N,E) sigmoid router scores (logits are not kept) */
    int32_t *idx;               /* (N,K) chosen experts */
    float *w;                   /* (N,K) routing weights */
    float *xp, *gup, *hp, *yp;  /* (R,C), (R,2F), (R,F), (R,C) rows of this rank's experts, in
                                   receive order (Dims.R: N*K for one rank, P*N*K under EP) */
    EpHandle ep;                /* dispatch layout of this micro-batch */
    float *x_out;               /* (N,C) block output = next block's input */
} BlockActs;

/* Backward temporaries, shared by every block (one block is in backward at a time). */
typedef struct Scratch {
    float *dln;                 /* (N,C) gradient of a sublayer's normed input */
    float *dq, *dk, *dv, *datt; /* (N,H*Dqk) x2, (N,H*Dv) x2 */
    float *dkv, *dckv, *dcq;    /* (N,H*(Dn+Dv)), (N,Rkv), (N,Rq) */
    float *dckv_raw, *dcq_raw;  /* (N,Rkv), (N,Rq) */
    float *dk_rope;             /* (N,Dr) */
    float *dgu, *dh;            /* (N, 2*max(I,Fs)), (N, max(I,Fs)) */
    float *ds, *dlogits_r;      /* (N,E) router score / logit gradients */
    float *dw;                  /* (N,K) */
    float *dxp, *dgup, *dhp, *dyp;   /* expert-major gradients as in BlockActs */
} Scratch;

typedef struct Dims {
    int B, T, N, C, H, Dn, Dr, Dv, Dqk, Rq, Rkv, E, K, F, Fs, I, V, L, D;
    EpGroup *ep;                /* the expert-parallel group (NULL: one rank holds every expert) */
    int R;                      /* expert rows a rank may hold: recv_cap = P*N*K (N*K for one rank) */
} Dims;

void dims_from_config(Dims *d, const ModelConfig *c, int B, int T);

/* Binding weights by name; the same offsets serve params and grads. */
void block_bind(BlockWeights *w, const ParamTable *t, const ModelConfig *c, float *base, int layer, int moe);

/* Activation and scratch planning in an arena (runtime/common.h: count, then take). */
void block_acts_plan(BlockActs *a, const Dims *d, int moe, Arena *ar);
void block_acts_free(BlockActs *a);     /* the host-side parts (dispatch offsets) */
void scratch_plan(Scratch *s, const Dims *d, Arena *ar);

/* Rope tables and softmax scale (model/rope.c). cos/sin: host arrays (T, Dr/2). */
void rope_tables(const ModelConfig *c, int T, float *cos_host, float *sin_host, float *attn_scale);

/* Sublayer forward/backward. x_in (N,C) -> a->x_mid; backward: dres (N,C) holds
 * dL/dx_mid on entry and dL/dx_in on return. */
typedef struct Ctx {
    Ops *o;
    const Dims *d;
    const ModelConfig *cfg;
    const float *rope_cos, *rope_sin;   /* backend memory (T, Dr/2) */
    float attn_scale;
    Scratch *s;                         /* backward temporaries (NULL in evaluation) */
    float *logits_r;                    /* (N,E) router logits, a forward temporary */
} Ctx;

void mla_forward(const Ctx *x, const BlockWeights *w, BlockActs *a, const float *x_in);
void mla_backward(const Ctx *x, const BlockWeights *w, BlockWeights *g, BlockActs *a, const float *x_in,
                  float *dres);

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
} MoeStats;

void ffn_forward(const Ctx *x, const BlockWeights *w, BlockActs *a);
void ffn_backward(const Ctx *x, const BlockWeights *w, BlockWeights *g, BlockActs *a, float *dres);
void moe_forward(const Ctx *x, const BlockWeights *w, BlockActs *a, MoeStats *st);
void moe_backward(const Ctx *x, const BlockWeights *w, BlockWeights *g, BlockActs *a, MoeStats *st,
                  float *dres);

#endif
