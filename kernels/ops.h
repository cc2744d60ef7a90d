/* kernels/ops.h - the op table: every computation the model performs, behind one table of
 * function pointers per backend (cpu/ reference, cuda/).
 *
 * The model (model/) says WHAT happens as a list of calls on an Ops table; a backend says HOW.
 * Fusions are entries of this table (the CPU entry runs the plain loops), so no backend
 * #ifdef appears in model/.
 *
 * Roles (DESIGN.md section 1): every pointer is typed by what it holds, not by a global float.
 *   act *        activations and activation gradients, in the table's activation type: FP32
 *                on the CPU-FP32 table; BF16 values on the CPU-BF16 and CPU-FP8 tables (the
 *                CPU keeps them in FP32 containers, act_bytes = 4, and rounds every stored
 *                value to BF16, round to nearest even, which defines the values a BF16 GPU
 *                table stores op by op; the CUDA table stores BF16 under bf16 and fp8,
 *                act_bytes = 2, and FP32 at fp32). Opaque outside kernels/: code outside plans
 *                act_bytes per element, offsets with act_at, and moves values with
 *                act_upload/act_download.
 *   float *      what is always FP32: master weights, gradients, optimizer moments (BF16
 *                values in them with AdamArgs.bf16_moments), norm weights and statistics
 *                (rstd), log-sum-exp, router logits/scores/weights, losses, expert counts.
 *   const Wgt *  a Linear weight's compute copy (see Wgt), refreshed from its FP32 master once
 *                after each optimizer step.
 *
 * Conventions (every entry):
 *   - Pointers are backend memory (host for cpu, device for cuda), row-major; token ids and
 *     routing indices are int32.
 *   - Linear weights use the Hugging Face (out, in) layout: y = x W^T.
 *   - Forward ops OVERWRITE their outputs. Backward ops ACCUMULATE (+=) into every gradient
 *     they write, activation gradients included; callers zero gradients (ops->zero) when
 *     they start a fresh accumulation. This lets a tensor used twice (the shared embedding
 *     and head under MTP, a residual stream) collect its gradient without extra adds.
 *   - Shapes are given in the dimension glossary of model/config.h.
 *
 * Calling sequence: Ops *o = ops_cpu_create(threads, PREC_FP32);
 *   Wgt w; wgt_bind(&w, o, master, OC, IC, type, storage); o->weight_refresh(o, &w);
 *   o->matmul_forward(o, out, inp, &w, N, IC, OC); ... ops_destroy(o).
 */
#ifndef DSTRAIN_OPS_H
#define DSTRAIN_OPS_H

#include <stddef.h>
#include <stdint.h>

typedef struct Ops Ops;

/* Numeric mode of a table: PREC_FP32 everywhere; PREC_BF16: BF16 activations and Linear
 * weights, FP32 accumulation; PREC_FP8: as BF16, with FP8 E4M3 Linear GEMMs (SPEC.md section
 * 6). The CPU emulates both (see "Roles"). */
typedef enum { PREC_FP32 = 0, PREC_BF16, PREC_FP8 } Precision;

/* An activation element of the table's activation type (see "Roles" above). Never
 * dereferenced outside kernels/. */
typedef struct act act;

/* Compute type of one Linear weight: FP32, BF16, or FP8 E4M3 with 128x128 block scales
 * (SPEC.md section 6). The parameter table picks it per tensor (model/params.h). */
typedef enum { WGT_FP32 = 0, WGT_BF16, WGT_FP8 } WgtType;

/* A Linear weight as the GEMM ops read it: the FP32 master (rows, cols) = (OC, IC) and its
 * compute copy in `data`, laid out by the backend in o->weight_bytes(o, type, rows, cols)
 * bytes (BF16 values; or FP8 codes, their 128x128 block scales and the transposed copy that
 * Dgrad reads). When weight_bytes is 0 the copy is the master itself (data == master: the
 * FP32 tables). The CUDA table keeps BF16 copies (FP8 codes and scales under fp8) in
 * device memory; the CPU keeps its copies as FP32 values: BF16
 * values, or the dequantised values of the FP8 blocks. The copy is stale after the master
 * changes until weight_refresh. */
typedef struct Wgt {
    float *master;          /* (rows, cols) FP32, backend memory */
    int rows, cols;
    WgtType type;
    void *data;             /* the compute copy (backend layout), or master */
    int act_pow2;           /* FP8 Fprop: the activation's 1x128 tiles take power-of-two scales
                             * (the routed experts' gate_up, whose rows arrive as the dispatch's
                             * FP8 payload: SPEC section 6); 0 (amax / 448) elsewhere. wgt_bind
                             * sets 0, the model sets it after. */
} Wgt;

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
    float grad_scale;       /* gradients are read times this (0: 1), where Ops.adamw_grad_scale */
} AdamArgs;

/* The op list, written once: X(return type, name, (parameters)). The Ops struct's fields, the
 * backends' declarations (kernels/cpu/cpu.h, kernels/cuda/cuda_internal.h), their fill
 * functions and the test that no backend leaves an entry empty all come from it.
 *
 * memory: zeroed allocation; byte copies between host and backend memory (upload,
 * download) and within backend memory (copy, buffers not overlapping); act_upload /
 * act_download convert n activations between host FP32 and the table's activation type
 * (upload rounds to it).
 *
 * Linear weights: weight_bytes is the backend memory a compute copy of type t needs (0: the
 * copy is the master itself); weight_refresh rebuilds w's compute copy from its master (once
 * after each optimizer step; see Wgt).
 *
 * Linear. out (N,OC) = inp (N,IC) @ W (OC,IC)^T.
 *   backward_input: dinp (N,IC) += dout (N,OC) @ W.
 *   backward_weight: dweight (OC,IC) += dout^T @ inp, w the weight it is the gradient of (its
 *   compute type picks the GEMM's numerics). Split so W can fill pipeline bubbles.
 * Router (kept in FP32, SPEC section 6): the same three products with FP32 logits (N,E).
 *
 * RMSNorm over the last dim C: out = weight * inp / sqrt(mean(inp^2) + eps); rstd (N).
 *   backward = backward_input (dinp += ...) then backward_weight (dweight += ...), bit for bit:
 *   the fused entry is the two halves in one call; the halves let W run apart from B.
 * add: y (n) += x (n) (activations). scale: x (n) *= s; sumsq: sum of squares of x (n) in
 * double, returned to the host (both on FP32 buffers: gradients).
 * concat: out (N,A+Bc) = [a (N,A) | b (N,Bc)] per row (MTP's [emb ; h]); backward: da += left
 * part of dout, db += right part.
 * SwiGLU: gu (N,2F) holds [gate | up] per row; out (N,F) = silu(gate) * up.
 * Embedding: out (N,C) = table[tokens[n]] (the FP32 master); backward dtable[tokens[n]] += dout[n].
 * RoPE in place on a strided slice (RopeShape); backward rotates the gradient back (in place).
 * mla_kv_split: MlaKvShape; backward: dkv (N,H,Dn+Dv) += from dk and dv, dk_rope (N,Dr) += sum
 *   over heads of dk's rope part.
 * Causal attention, softmax in FP32. q,k (B,T,H,Dqk), v (B,T,H,Dv) -> out (B,T,H,Dv);
 *   lse (B,H,T) = log-sum-exp of each scaled score row, kept for backward.
 * Cross-entropy: losses (N) = -log softmax(logits)[target]; target < 0 means ignored (loss 0).
 *   backward: dlogits (N,V) += dloss[n] * (softmax - onehot); dlogits may alias logits (then it
 *   is overwritten, not accumulated: the fused GPU path).
 * Router: s = sigmoid(logits) (n); backward dlogits += ds * s * (1 - s).
 * moe_route: selection on s + bias (group-limited, -inf masking), weights from the unbiased s:
 *   idx (N,K) int32, w (N,K). Ties break toward the lower expert index.
 * moe_route_backward: ds (N,E) += d w / d s applied to dw (N,K); selection is piecewise constant.
 * moe_count: counts (E) += tokens routed to each expert (idx has n entries).
 * Sequence-wise balance loss (TR eq. 17-20) for B sequences of T tokens: loss (B) = alpha *
 *   sum_i f_i P_i; backward ds (N,E) += dloss[b] * dL/ds (through P only).
 * moe_permute_layout: pos (N,K) the row of (token n, slot k) in the expert-major buffer;
 *   offsets (E+1) the first row of each expert. Stable: within an expert, rows follow token
 *   order. offsets is also written to host memory (offsets_host): the host launches one GEMM
 *   per expert.
 * moe_gather: xp (N*K,C): xp[pos[n,k]] = x[n]. backward: dx[n] += sum_k dxp[pos[n,k]].
 * moe_combine: y (N,C) += sum_k w[n,k] * yp[pos[n,k]]. backward: dyp[pos] += w * dy,
 *   dw += <dy, yp[pos]>.
 * adamw_update: AdamW with decoupled weight decay on n FP32 master weights. */
#define OPS_ENTRIES(X) \
    X(void *, alloc, (Ops *o, size_t bytes)) \
    X(void, free, (Ops *o, void *p)) \
    X(void, zero, (Ops *o, void *p, size_t bytes)) \
    X(void, upload, (Ops *o, void *dst, const void *src_host, size_t bytes)) \
    X(void, download, (Ops *o, void *dst_host, const void *src, size_t bytes)) \
    X(void, copy, (Ops *o, void *dst, const void *src, size_t bytes)) \
    X(void, synchronize, (Ops *o)) \
    X(void, act_upload, (Ops *o, act *dst, const float *src_host, size_t n)) \
    X(void, act_download, (Ops *o, float *dst_host, const act *src, size_t n)) \
    X(size_t, weight_bytes, (Ops *o, WgtType t, int rows, int cols)) \
    X(void, weight_refresh, (Ops *o, Wgt *w)) \
    X(void, matmul_forward, (Ops *o, act *out, const act *inp, const Wgt *w, int N, int IC, int OC)) \
    X(void, matmul_backward_input, (Ops *o, act *dinp, const act *dout, const Wgt *w, int N, int IC, int OC)) \
    X(void, matmul_backward_weight, (Ops *o, float *dweight, const Wgt *w, const act *dout, const act *inp, \
                                     int N, int IC, int OC)) \
    X(void, router_forward, (Ops *o, float *logits, const act *inp, const Wgt *w, int N, int C, int E)) \
    X(void, router_backward_input, (Ops *o, act *dinp, const float *dlogits, const Wgt *w, int N, int C, int E)) \
    X(void, router_backward_weight, (Ops *o, float *dweight, const float *dlogits, const act *inp, int N, int C, \
                                     int E)) \
    X(void, rmsnorm_forward, (Ops *o, act *out, float *rstd, const act *inp, const float *weight, int N, int C, \
                              float eps)) \
    X(void, rmsnorm_backward, (Ops *o, act *dinp, float *dweight, const act *dout, const act *inp, \
                               const float *weight, const float *rstd, int N, int C)) \
    X(void, rmsnorm_backward_input, (Ops *o, act *dinp, const act *dout, const act *inp, const float *weight, \
                                     const float *rstd, int N, int C)) \
    X(void, rmsnorm_backward_weight, (Ops *o, float *dweight, const act *dout, const act *inp, const float *rstd, \
                                      int N, int C)) \
    X(void, add, (Ops *o, act *y, const act *x, size_t n)) \
    X(void, scale, (Ops *o, float *x, float s, size_t n)) \
    X(double, sumsq, (Ops *o, const float *x, size_t n)) \
    X(void, concat_forward, (Ops *o, act *out, const act *a, const act *b, int N, int A, int Bc)) \
    X(void, concat_backward, (Ops *o, act *da, act *db, const act *dout, int N, int A, int Bc)) \
    X(void, swiglu_forward, (Ops *o, act *out, const act *gu, int N, int F)) \
    X(void, swiglu_backward, (Ops *o, act *dgu, const act *dout, const act *gu, int N, int F)) \
    X(void, embedding_forward, (Ops *o, act *out, const int32_t *tokens, const float *table, int N, int C)) \
    X(void, embedding_backward, (Ops *o, float *dtable, const act *dout, const int32_t *tokens, int N, int C)) \
    X(void, rope_forward, (Ops *o, act *x, const float *cos, const float *sin, const RopeShape *s)) \
    X(void, rope_backward, (Ops *o, act *dx, const float *cos, const float *sin, const RopeShape *s)) \
    X(void, mla_kv_split, (Ops *o, act *k, act *v, const act *kv, const act *k_rope, const MlaKvShape *s)) \
    X(void, mla_kv_split_backward, (Ops *o, act *dkv, act *dk_rope, const act *dk, const act *dv, \
                                    const MlaKvShape *s)) \
    X(void, attention_forward, (Ops *o, act *out, float *lse, const act *q, const act *k, const act *v, \
                                const AttnShape *s)) \
    X(void, attention_backward, (Ops *o, act *dq, act *dk, act *dv, const act *dout, const act *q, const act *k, \
                                 const act *v, const act *out, const float *lse, const AttnShape *s)) \
    X(void, xent_forward, (Ops *o, float *losses, const act *logits, const int32_t *targets, int N, int V)) \
    X(void, xent_backward, (Ops *o, act *dlogits, const act *logits, const int32_t *targets, const float *dloss, \
                            int N, int V)) \
    X(void, sigmoid_forward, (Ops *o, float *s, const float *logits, size_t n)) \
    X(void, sigmoid_backward, (Ops *o, float *dlogits, const float *ds, const float *s, size_t n)) \
    X(void, moe_route, (Ops *o, int32_t *idx, float *w, const float *s, const float *bias, const RouteShape *r)) \
    X(void, moe_route_backward, (Ops *o, float *ds, const float *dw, const float *s, const int32_t *idx, \
                                 const RouteShape *r)) \
    X(void, moe_count, (Ops *o, float *counts, const int32_t *idx, int n, int E)) \
    X(void, moe_balance_forward, (Ops *o, float *loss, const float *s, const int32_t *idx, int B, int T, \
                                  const RouteShape *r, float alpha)) \
    X(void, moe_balance_backward, (Ops *o, float *ds, const float *dloss, const float *s, const int32_t *idx, \
                                   int B, int T, const RouteShape *r, float alpha)) \
    X(void, moe_permute_layout, (Ops *o, int32_t *pos, int32_t *offsets, int32_t *offsets_host, \
                                 const int32_t *idx, int N, int K, int E)) \
    X(void, moe_gather, (Ops *o, act *xp, const act *x, const int32_t *pos, int N, int K, int C)) \
    X(void, moe_gather_backward, (Ops *o, act *dx, const act *dxp, const int32_t *pos, int N, int K, int C)) \
    X(void, moe_combine, (Ops *o, act *y, const act *yp, const float *w, const int32_t *pos, int N, int K, int C)) \
    X(void, moe_combine_backward, (Ops *o, act *dyp, float *dw, const act *dy, const act *yp, const float *w, \
                                   const int32_t *pos, int N, int K, int C)) \
    X(void, adamw_update, (Ops *o, float *param, const float *grad, float *m, float *v, size_t n, \
                           const AdamArgs *a))

#define OPS_FIELD(ret, name, params) ret (*name) params;
struct Ops {
    const char *name;
    Precision precision;
    size_t act_bytes;       /* bytes of one act element in backend memory */
    int host_memory;        /* capability: backend buffers are host memory (cpu), so host code and
                             * a host-memory comm (single, mpi) read and write them directly */
    int adamw_grad_scale;   /* capability: adamw_update applies AdamArgs.grad_scale (else the
                             * caller scales the gradients first) */
    void *state;            /* backend-private: scratch, handles */
    OPS_ENTRIES(OPS_FIELD)
};
#undef OPS_FIELD

/* p + n activation elements (pointer arithmetic on the opaque act type). */
static inline act *act_at(const Ops *o, act *p, size_t n) { return (act *)((char *)p + n * o->act_bytes); }
static inline const act *act_at_c(const Ops *o, const act *p, size_t n)
{
    return (const act *)((const char *)p + n * o->act_bytes);
}

/* Binds w to a master (rows, cols) with compute type `type`; storage holds
 * o->weight_bytes(o, type, rows, cols) bytes of backend memory (unused when that is 0; NULL
 * while an arena only counts). The copy is built by the next o->weight_refresh(o, w). */
void wgt_bind(Wgt *w, Ops *o, float *master, int rows, int cols, WgtType type, void *storage);

/* The name of the first entry of o left empty (NULL), or NULL when every entry is filled. */
const char *ops_first_empty(const Ops *o);

/* DIE unless r is a routing every backend can run: n_group divides E, 1 <= topk_group <=
 * n_group, K a positive multiple of topk_group, and K / topk_group experts fit in a group.
 * Backends call it at the top of moe_route (kernels/backend.c). */
void route_shape_check(const RouteShape *r);

/* CPU backend (kernels/cpu/). threads = 0: all cores. precision: fp32, or bf16 / fp8
 * emulated (kernels/cpu/cpu.h). */
Ops *ops_cpu_create(int threads, Precision precision);
/* CUDA backend (kernels/cuda/); DIE when built without CUDA or when no GPU is present. */
Ops *ops_cuda_create(Precision precision);
void ops_destroy(Ops *o);

/* Measured FP32 GEMM rate of this backend in FLOP/s (square-ish shapes, ~0.3 s). */
double ops_measure_gemm_flops(Ops *o, int n);

#endif
