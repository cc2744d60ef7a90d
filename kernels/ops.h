/* kernels/ops.h - the op table: every computation the model performs, behind one table of
 * function pointers per backend (cpu/ reference, cuda/ later).
 *
 * The model (model/) says WHAT happens as a list of calls on an Ops table; a backend says HOW.
 * Fusions are entries of this table (the CPU entry runs the plain loops), so no backend
 * #ifdef appears in model/.
 *
 * Conventions (every entry):
 *   - Pointers are backend memory (host for cpu, device for cuda), row-major, FP32
 *     unless stated; token ids and routing indices are int32.
 *   - Linear weights use the Hugging Face (out, in) layout: y = x W^T.
 *   - Forward ops OVERWRITE their outputs. Backward ops ACCUMULATE (+=) into every gradient
 *     they write, activation gradients included; callers zero gradients (ops->zero) when
 *     they start a fresh accumulation. This lets a tensor used twice (the shared embedding
 *     and head under MTP, a residual stream) collect its gradient without extra adds.
 *   - Shapes are given in the dimension glossary of model/config.h.
 *
 * Calling sequence: Ops *o = ops_cpu_create(threads); ... o->matmul_forward(o, ...);
 * ... ops_destroy(o).
 */
#ifndef DSTRAIN_OPS_H
#define DSTRAIN_OPS_H

#include <stddef.h>
#include <stdint.h>

typedef struct Ops Ops;

/* Numeric format of Linear GEMMs. CPU emulates BF16 by rounding operands and FP8 by
 * quantise-dequantise with the tile scales of SPEC.md section 6. */
typedef enum { PREC_FP32 = 0, PREC_BF16, PREC_FP8 } Precision;

typedef struct AttnShape {
    int B, T, H;
    int Dqk;        /* query/key head dim (Dn + Dr for MLA) */
    int Dv;         /* value head dim */
    float scale;    /* softmax scale s (1/sqrt(Dqk), times mscale^2 under YaRN) */
} AttnShape;

/* RoPE on a strided slice: rows r = 0..N-1 (position t = r % T), heads h = 0..H-1; the
 * rotated values of (row r, head h) start at x + r*row_stride + h*head_stride + offset and
 * span Dr values, pairs interleaved (x[2j], x[2j+1]) with angle t*inv_freq[j].
 * cos/sin tables are (T, Dr/2), built by the model (YaRN folded in). */
typedef struct RopeShape {
    int N, T, H;
    int row_stride, head_stride, offset;
    int Dr;
} RopeShape;

/* MLA key/value assembly: k (N,H,Dn+Dr) = [k_nope_h | k_rope] per head, v (N,H,Dv), from
 * kv (N,H,Dn+Dv) = [k_nope_h | v_h] per head (kv_b_proj output) and the shared rope key. */
typedef struct MlaKvShape { int N, H, Dn, Dr, Dv; } MlaKvShape;

/* Group-limited top-K routing (SPEC.md section 4). */
typedef struct RouteShape {
    int N, E, K;
    int n_group, topk_group;
    float scaling;          /* routed_scaling_factor */
    int norm_topk;          /* normalise the K weights over the chosen experts */
} RouteShape;

typedef struct AdamArgs {
    float lr, beta1, beta2, eps, weight_decay;
    int step;               /* 1-based, for bias correction */
    int bf16_moments;       /* round m and v to BF16 after each update */
} AdamArgs;

struct Ops {
    const char *name;
    Precision precision;
    void *state;            /* backend-private: scratch, handles */

    /* memory: zeroed allocation; copies between host and backend memory */
    void *(*alloc)(Ops *o, size_t bytes);
    void (*free)(Ops *o, void *p);
    void (*zero)(Ops *o, void *p, size_t bytes);
    void (*upload)(Ops *o, void *dst, const void *src_host, size_t bytes);
    void (*download)(Ops *o, void *dst_host, const void *src, size_t bytes);
    void (*synchronize)(Ops *o);

    /* Linear. out (N,OC) = inp (N,IC) @ weight (OC,IC)^T.
     * backward_input: dinp (N,IC) += dout (N,OC) @ weight.
     * backward_weight: dweight (OC,IC) += dout^T @ inp. Split so W can fill pipeline bubbles. */
    void (*matmul_forward)(Ops *o, float *out, const float *inp, const float *weight, int N, int IC, int OC);
    void (*matmul_backward_input)(Ops *o, float *dinp, const float *dout, const float *weight, int N, int IC, int OC);
    void (*matmul_backward_weight)(Ops *o, float *dweight, const float *dout, const float *inp, int N, int IC, int OC);

    /* RMSNorm over the last dim C: out = weight * inp / sqrt(mean(inp^2) + eps); rstd (N). */
    void (*rmsnorm_forward)(Ops *o, float *out, float *rstd, const float *inp, const float *weight, int N, int C, float eps);
    void (*rmsnorm_backward)(Ops *o, float *dinp, float *dweight, const float *dout, const float *inp,
                             const float *weight, const float *rstd, int N, int C);

    /* y (n) += x (n) */
    void (*add)(Ops *o, float *y, const float *x, size_t n);
    /* x (n) *= s */
    void (*scale)(Ops *o, float *x, float s, size_t n);
    /* sum of squares of x (n), accumulated in double, returned to the host */
    double (*sumsq)(Ops *o, const float *x, size_t n);

    /* Row concatenation: out (N,A+Bc) = [a (N,A) | b (N,Bc)] per row (MTP's [emb ; h]).
     * backward: da += left part of dout, db += right part. */
    void (*concat_forward)(Ops *o, float *out, const float *a, const float *b, int N, int A, int Bc);
    void (*concat_backward)(Ops *o, float *da, float *db, const float *dout, int N, int A, int Bc);

    /* SwiGLU: gu (N,2F) holds [gate | up] per row; out (N,F) = silu(gate) * up. */
    void (*swiglu_forward)(Ops *o, float *out, const float *gu, int N, int F);
    void (*swiglu_backward)(Ops *o, float *dgu, const float *dout, const float *gu, int N, int F);

    /* Embedding: out (N,C) = table[tokens[n]]; backward dtable[tokens[n]] += dout[n]. */
    void (*embedding_forward)(Ops *o, float *out, const int32_t *tokens, const float *table, int N, int C);
    void (*embedding_backward)(Ops *o, float *dtable, const float *dout, const int32_t *tokens, int N, int C);

    /* RoPE in place; backward rotates the gradient back (in place). */
    void (*rope_forward)(Ops *o, float *x, const float *cos, const float *sin, const RopeShape *s);
    void (*rope_backward)(Ops *o, float *dx, const float *cos, const float *sin, const RopeShape *s);

    void (*mla_kv_split)(Ops *o, float *k, float *v, const float *kv, const float *k_rope, const MlaKvShape *s);
    /* dkv (N,H,Dn+Dv) += from dk and dv; dk_rope (N,Dr) += sum over heads of dk's rope part. */
    void (*mla_kv_split_backward)(Ops *o, float *dkv, float *dk_rope, const float *dk, const float *dv, const MlaKvShape *s);

    /* Causal attention, softmax in FP32. q,k (B,T,H,Dqk), v (B,T,H,Dv) -> out (B,T,H,Dv);
     * lse (B,H,T) = log-sum-exp of each scaled score row, kept for backward. */
    void (*attention_forward)(Ops *o, float *out, float *lse, const float *q, const float *k, const float *v,
                              const AttnShape *s);
    void (*attention_backward)(Ops *o, float *dq, float *dk, float *dv, const float *dout, const float *q,
                               const float *k, const float *v, const float *out, const float *lse,
                               const AttnShape *s);

    /* Cross-entropy: losses (N) = -log softmax(logits)[target]; target < 0 means ignored
     * (loss 0). backward: dlogits (N,V) += dloss[n] * (softmax - onehot); dlogits may alias
     * logits (then it is overwritten, not accumulated: the fused GPU path). */
    void (*xent_forward)(Ops *o, float *losses, const float *logits, const int32_t *targets, int N, int V);
    void (*xent_backward)(Ops *o, float *dlogits, const float *logits, const int32_t *targets,
                          const float *dloss, int N, int V);

    /* Router: s = sigmoid(logits) (n); backward dlogits += ds * s * (1 - s). */
    void (*sigmoid_forward)(Ops *o, float *s, const float *logits, size_t n);
    void (*sigmoid_backward)(Ops *o, float *dlogits, const float *ds, const float *s, size_t n);
    /* Selection on s + bias (group-limited, -inf masking), weights from the unbiased s:
     * idx (N,K) int32, w (N,K). Ties break toward the lower expert index. */
    void (*moe_route)(Ops *o, int32_t *idx, float *w, const float *s, const float *bias, const RouteShape *r);
    /* ds (N,E) += d w / d s applied to dw (N,K); selection is piecewise constant. */
    void (*moe_route_backward)(Ops *o, float *ds, const float *dw, const float *s, const int32_t *idx,
                               const RouteShape *r);
    /* counts (E) += tokens routed to each expert (idx has n entries). */
    void (*moe_count)(Ops *o, float *counts, const int32_t *idx, int n, int E);

    /* Sequence-wise balance loss (TR eq. 17-20) for B sequences of T tokens:
     * loss (B) = alpha * sum_i f_i P_i; backward ds (N,E) += dloss[b] * dL/ds (through P only). */
    void (*moe_balance_forward)(Ops *o, float *loss, const float *s, const int32_t *idx, int B, int T,
                                const RouteShape *r, float alpha);
    void (*moe_balance_backward)(Ops *o, float *ds, const float *dloss, const float *s, const int32_t *idx,
                                 int B, int T, const RouteShape *r, float alpha);

    /* Token permutation for the experts. pos (N,K): the row of (token n, slot k) in the
     * expert-major buffer; offsets (E+1): the first row of each expert. Stable: within an
     * expert, rows follow token order. offsets is also written to host memory (offsets_host)
     * because the host launches one GEMM per expert. */
    void (*moe_permute_layout)(Ops *o, int32_t *pos, int32_t *offsets, int32_t *offsets_host,
                               const int32_t *idx, int N, int K, int E);
    /* xp (N*K,C): xp[pos[n,k]] = x[n]. backward: dx[n] += sum_k dxp[pos[n,k]]. */
    void (*moe_gather)(Ops *o, float *xp, const float *x, const int32_t *pos, int N, int K, int C);
    void (*moe_gather_backward)(Ops *o, float *dx, const float *dxp, const int32_t *pos, int N, int K, int C);
    /* y (N,C) += sum_k w[n,k] * yp[pos[n,k]]. backward: dyp[pos] += w * dy, dw += <dy, yp[pos]>. */
    void (*moe_combine)(Ops *o, float *y, const float *yp, const float *w, const int32_t *pos, int N, int K, int C);
    void (*moe_combine_backward)(Ops *o, float *dyp, float *dw, const float *dy, const float *yp, const float *w,
                                 const int32_t *pos, int N, int K, int C);

    /* AdamW with decoupled weight decay on n FP32 master weights. */
    void (*adamw_update)(Ops *o, float *param, const float *grad, float *m, float *v, size_t n, const AdamArgs *a);
};

/* DIE unless r is a routing every backend can run: n_group divides E, 1 <= topk_group <=
 * n_group, K a positive multiple of topk_group, and K / topk_group experts fit in a group.
 * Backends call it at the top of moe_route (kernels/backend.c). */
void route_shape_check(const RouteShape *r);

/* CPU backend (kernels/cpu/). threads = 0: all cores. */
Ops *ops_cpu_create(int threads, Precision precision);
/* CUDA backend (kernels/cuda/); DIE when built without CUDA or when no GPU is present. */
Ops *ops_cuda_create(Precision precision);
void ops_destroy(Ops *o);

/* Measured FP32 GEMM rate of this backend in FLOP/s (square-ish shapes, ~0.3 s). */
double ops_measure_gemm_flops(Ops *o, int n);

#endif
