/* kernels/cpu/cpu.h - internal header of the CPU backend: its private state and the entry
 * points that kernels/backend.c puts into the op table.
 *
 * What it is: the reference backend (host memory, OpenMP over rows, OpenBLAS for GEMMs) in
 * three precisions. PREC_FP32: FP32 everywhere. PREC_BF16 emulates a BF16 GPU table: every
 * entry computes in FP32 as before, then rounds every activation it stores to BF16 (round to
 * nearest even, cpu_act_round), kept in FP32 containers (act_bytes = 4, so the values are
 * exactly what a BF16 buffer would hold); Linear weights are read from BF16 compute copies
 * (FP32 containers, rounded from the master by weight_refresh); GEMMs accumulate in FP32.
 * Gradients, moments, norm statistics and router values stay FP32 (kernels/ops.h "Roles").
 * What it is not: a public API. Everything outside kernels/ goes through kernels/ops.h; the
 * semantics of each entry (shapes, overwrite vs accumulate) are documented there.
 *
 * Threads: every OpenMP region names its thread count (num_threads(cpu_threads(o))), so two
 * tables created with different counts in one process never exceed their own scratch slots.
 * One thread pool: OpenBLAS runs single-threaded (cpu_blas_threads(1) before each use, as its
 * count is process-wide) and large GEMMs are split across the OpenMP team instead; two pools
 * on the same cores spin against each other between calls.
 *
 * A table is used by one host thread at a time (its scratch is shared by its calls).
 *
 * Determinism: every reduction has a fixed order that does not depend on the thread count
 * (column blocks, fixed chunks, one head per thread), so 1 and 2 threads give identical bits;
 * the one exception is the Linear GEMMs, whose slab split may change OpenBLAS's blocking.
 *
 * PREC_FP8 is PREC_BF16 with the Linear GEMMs of FP8 weights emulated in FP8 (cpu_fp8.c).
 *
 * Files: cpu_dense.c (memory, elementwise, Linear, norms, embedding, loss, optimizer),
 *        cpu_fp8.c (FP8 emulation of the Linear GEMMs),
 *        cpu_attention.c (RoPE, MLA key/value assembly, causal attention),
 *        cpu_moe.c (router, balance loss, token permutation).
 */
#ifndef DSTRAIN_KERNELS_CPU_H
#define DSTRAIN_KERNELS_CPU_H

#include <stdint.h>

#include "kernels/ops.h"

typedef struct CpuState {
    int threads;            /* OpenMP threads of every region (OpenBLAS: always 1) */
    float *scratch;         /* threads * scratch_stride floats, 64-byte aligned slots */
    size_t scratch_stride;  /* floats per thread slot (a multiple of 16) */
    float *gemm;            /* gemm_n floats: quantised GEMM operands (cpu_fp8.c) */
    size_t gemm_n;
} CpuState;

/* e^x in FP32, written so that loops calling it vectorise (glibc's expf has a vector variant
 * only under -ffast-math, and float comparisons block if-conversion under the default
 * -ftrapping-math, so the range handling below works on the bits). Cody-Waite reduction
 * x = n ln2 + r with ln2 split into an exact high part and a correction (Cephes' constants),
 * |r| <= ln2/2, degree-7 Taylor polynomial (truncation r^8/8! < 6e-9 relative), times 2^n
 * built in the exponent bits. Within 2 ulp of e^x for x in [-87.3, 88.3] (normal results);
 * below that range the result is 0 (flushing e^x < 2^-126), above it inf (from x >= 88.38,
 * slightly before FLT_MAX is reached); e^-inf = 0, e^inf = inf, NaN stays NaN.
 * Inline so that it vectorises at each call site. */
static inline float cpu_exp(float x)
{
    union { float f; uint32_t u; } t = { x * 1.44269504088896341f + 12582912.0f };
    float n = t.f - 12582912.0f;                    /* round(x / ln2): 1.5 * 2^23 fixes the ulp at 1 */
    float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
    float p = 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    /* n as an integer while |n| < 2^22; t < 0 (sign bit) means x below -2^22 ln2 or -inf.
     * All-ones masks rather than selects on the result: a select there becomes a branch around
     * the FP multiply, which -ftrapping-math then refuses to if-convert. */
    int32_t k = (int32_t)(t.u - 0x4B400000u);
    uint32_t neg = -(t.u >> 31);
    uint32_t under = neg | -(uint32_t)(k < -126), over = ~neg & -(uint32_t)(k > 127);
    k = k < -126 ? -126 : k;
    k = k > 127 ? 127 : k;
    union { uint32_t u; float f; } s = { (uint32_t)(k + 127) << 23 };
    union { float f; uint32_t u; } y = { p * s.f }, xb = { x };
    uint32_t nan = -(uint32_t)((xb.u & 0x7FFFFFFFu) > 0x7F800000u);
    y.u = (y.u & ~(under | over)) | (0x7F800000u & over);   /* 0 below the range, inf above */
    y.u = (y.u & ~nan) | (xb.u & nan);                        /* NaN stays NaN */
    return y.f;
}

/* Threads of this table (>= 1). */
int cpu_threads(Ops *o);
/* Set OpenBLAS's process-wide thread count to n if it differs. Call outside OpenMP regions. */
void cpu_blas_threads(int n);
/* Per-thread scratch of at least `floats` floats each; slot t starts at the returned pointer
 * + t * cpu_scratch_stride(o). Grows (never shrinks) on first need; call it outside OpenMP
 * regions, before the region that uses it. Contents are undefined. */
float *cpu_scratch(Ops *o, size_t floats);
size_t cpu_scratch_stride(Ops *o);
/* One buffer of at least `floats` floats for a GEMM's quantised operands; grows on first
 * need, contents undefined, one user at a time (outside OpenMP regions). */
float *cpu_gemm_scratch(Ops *o, size_t floats);
/* Release the state's buffers (the table itself is freed by ops_destroy). */
void cpu_state_free(Ops *o);

/* The entries of the table (kernels/ops.h OPS_ENTRIES), each cpu_<entry>: memory, Linear,
 * norms, elementwise, embedding, loss and optimizer in cpu_dense.c; RoPE, MLA assembly and
 * attention in cpu_attention.c; router, balance loss and permutation in cpu_moe.c. */
#define CPU_DECLARE(ret, name, params) ret cpu_##name params;
OPS_ENTRIES(CPU_DECLARE)
#undef CPU_DECLARE

/* x rounded to BF16 (round to nearest, ties to even, on the bits), returned as FP32: the top
 * 16 bits of the result are the BF16 value. Overflow rounds to +-inf as IEEE says; NaN stays
 * NaN (quiet bit set, sign and top payload kept). Branch-free so the loops calling it
 * vectorise. The same numbers as bf16_from_float of SPEC.md section 6. */
static inline float cpu_bf16(float x)
{
    union { float f; uint32_t u; } v = { x };
    uint32_t r = (v.u + 0x7FFFu + ((v.u >> 16) & 1u)) & 0xFFFF0000u;
    uint32_t nan = -(uint32_t)((v.u & 0x7FFFFFFFu) > 0x7F800000u);
    v.u = (r & ~nan) | ((v.u | 0x00400000u) & 0xFFFF0000u & nan);
    return v.f;
}

/* Rounds n stored activations to the table's activation type: BF16 on the BF16 and FP8
 * tables, nothing on the FP32 table. Every entry calls it on what it wrote. */
void cpu_act_round(Ops *o, float *p, size_t n);

/* The Linear products on FP32 buffers (cpu_dense.c): out (N,OC) = inp W^T (overwrites);
 * dinp (N,IC) += dout W; dweight (OC,IC) += dout^T inp. */
void cpu_gemm_forward(Ops *o, float *out, const float *inp, const float *weight, int N, int IC, int OC);
void cpu_gemm_backward_input(Ops *o, float *dinp, const float *dout, const float *weight, int N, int IC, int OC);
void cpu_gemm_backward_weight(Ops *o, float *dweight, const float *dout, const float *inp, int N, int IC, int OC);

/* FP8 emulation (cpu_fp8.c): the compute copy of an FP8 weight (bytes, refresh) and the three
 * products with quantised operands; wq is that compute copy (dequantised block values). */
size_t cpu_fp8_weight_bytes(int rows, int cols);
/* xq (n,K) = x quantised and dequantised: rows in 1x128 tiles along K (scales amax / 448, or
 * powers of two when pow2); cols: columns in 128x1 tiles along the n tokens, power-of-two
 * scales. Bit for bit kernels/fp8.h's fp8_quantize_tile + fp8_dequantize_tile. */
void cpu_fp8_quantize_rows(Ops *o, float *xq, const float *x, int n, int K, int pow2);
void cpu_fp8_quantize_cols(Ops *o, float *xq, const float *x, int n, int K);
void cpu_fp8_weight_refresh(Ops *o, Wgt *w);
void cpu_fp8_matmul_forward(Ops *o, float *out, const float *inp, const float *wq, int N, int IC, int OC, int pow2);
void cpu_fp8_matmul_backward_input(Ops *o, float *dinp, const float *dout, const float *wq, int N, int IC, int OC);
void cpu_fp8_matmul_backward_weight(Ops *o, float *dweight, const float *dout, const float *inp, int N, int IC,
                                    int OC);

/* Activations are FP32 containers on every CPU table (act_bytes = 4). */
static inline float *cpu_f(act *p) { return (float *)p; }
static inline const float *cpu_cf(const act *p) { return (const float *)p; }

#endif
