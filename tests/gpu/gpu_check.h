/* tests/gpu/gpu_check.h - what the GPU op tests share: a pair of op tables (CPU reference and
 * CUDA under test), the same data on both, and comparisons that report the worst error as a
 * share of its budget.
 *
 * What it is: test plumbing over the op table only (kernels/ops.h), so every check runs the
 * same calls on both backends. What it is not: a test itself (test_gpu_ops.c and
 * test_gpu_moe.c are; they count passes and failures from the verdicts returned here).
 *
 * The reference of a pair is the CPU table of the same precision: FP32 for fp32; for bf16 the
 * CPU's BF16 emulation (act values rounded to BF16 on every store, FP32 containers), so both
 * sides see the same BF16 inputs and round their outputs by the same rule. Buffers have a
 * role (kernels/ops.h "Roles"): act buffers (buf_act) live in each table's activation type
 * (BF16 on the cuda bf16 table: act_upload rounds, act_download widens), FP32 buffers
 * (buf_new) are FP32 on both. Linear weights (wpair_new): the master and, on bf16, a WGT_BF16
 * compute copy on each table (weight_refresh), so the GPU GEMM reads BF16 weights.
 *
 * Budgets: an element passes when |gpu - cpu| <= bound_i + rtol * |cpu| (bound_i a per-element
 * absolute budget, often atol), the tensor when additionally ||gpu - cpu|| / ||cpu|| <= norm
 * (norm <= 0 skips that part); NaN anywhere in the GPU result fails. An act buffer of a bf16
 * pair widens every element's budget for the one BF16 rounding both sides apply to FP32
 * results that differ (bf16_act_budget), and its normwise part leaves out the whole-ulp steps
 * such a rounding makes (an element's difference less 2 u16 (1 + 2 u16) |cpu|): accumulated
 * gradients near 1 with increments near 0.01 would otherwise be judged by rounding noise of
 * the sums, not by the computation. Each check prints one line: the worst element's
 * share of its budget and the normwise error against its budget.
 *
 * Calling sequence:
 *   Pair p; pair_open(&p, PREC_BF16);
 *   Buf x = buf_act(&p, host, n);  Buf y = buf_act_poison(&p, n);  Buf s = buf_new(&p, h, m);
 *   p.cpu->op(p.cpu, A(y.c), CA(x.c), ...); p.gpu->op(p.gpu, A(y.g), CA(x.g), ...);
 *   ok = check_close(&p, "op shape", &y, atol, rtol, norm);
 *   buf_free(&p, &x); ... pair_close(&p);
 */
#ifndef DSTRAIN_TESTS_GPU_CHECK_H
#define DSTRAIN_TESTS_GPU_CHECK_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/ops.h"
#include "runtime/common.h"

/* Casts to the act role, and a WGT_FP32 Wgt over an FP32 master (its own compute copy: the
 * FP32 tables, and the host-side budget products on Pair.cpu32). */
#define A(p) ((act *)(p))
#define CA(p) ((const act *)(p))
#define WG(p, rows, cols) (&(const Wgt){ (p), (rows), (cols), WGT_FP32, (p), 0 })

/* Unit roundoffs u = 2^-p of round-to-nearest with a p-bit significand (the implicit bit
 * counted): FP32 p = 24, BF16 p = 8 (7 stored bits + 1), so u16 = 2^-8. (1/512 was once
 * written here: half the true value; test_bf16_bound simulates why that fails.) */
#define U32 (1.0 / 16777216.0)
#define U16 (1.0 / 256.0)

/* Budget of one GEMM element against the FP32 CPU reference (Higham's bound): each backend's
 * FP32 sum of K products errs by at most K u (|A||B|)_ij, so their difference by
 * 2 (K + 2) u (|A||B|)_ij (two more for the final accumulate and the output rounding); BF16
 * operands add (1 + u16)^2 - 1 = 2 u16 + u16^2 per product (both factors rounded; the BF16
 * product itself is exact in FP32). absprod = (|A||B|)_ij. Shared by test_gpu_ops.c and its
 * CPU simulation (test_bf16_bound.c). */
static inline double gemm_elem_budget(int bf16_operands, double u16, int K, double absprod)
{
    double ab = bf16_operands ? 2 * u16 + u16 * u16 : 0;
    return (ab + 2.0 * (K + 2) * U32) * absprod;
}

/* Absolute floor of a BF16 attention-backward gradient (dq, or dk), the part of the error that
 * does not shrink with the CPU's increments (at T = 1 those are exactly 0: one key, P = 1 and
 * dP - rowsum(dO O) = dO.v - dO.v = 0). The GPU forms dP = dO V^T from BF16 operands: its
 * error per entry E = Dv (2 u16 + u16^2 + 2 u32) max|dO| max|v| (u32 terms: the FP32 sums of
 * dP and of rowsum(dO O)); dS_j = P_j (dP_j - D) carries P_j E, with P rebuilt from scores
 * off by delta <= 2 Dqk s (u16 + Dqk u32) max|q| max|k| (P_j grows by at most e^delta), and
 * the dS K (dS^T Q) product rounds both factors to BF16 ((1 + u16)^2). dq_i = s sum_j dS_ij k_j
 * with sum_j P_ij = 1; dk_j = s sum_i dS_ij q_i: psum is 1 for dq and, for dk, key j's column
 * sum sum_i P_ij (at most T; test_gpu_ops computes it from the CPU's lse); maxo the largest |k|
 * (dq) or |q| (dk). The terms that scale with |dS| itself
 * (its BF16 rounding, the P error times dP - D) are budgeted relative to the increments by
 * the caller. test_bf16_bound simulates this floor at T = 1. */
static inline double attn_bwd_floor_bf16(double u16, int Dqk, int Dv, double s, double maxq, double maxk,
                                         double maxdo, double maxv, double maxo, double psum)
{
    double E = Dv * (2 * u16 + u16 * u16 + 2 * U32) * maxdo * maxv;
    double delta = 2.0 * Dqk * s * (u16 + Dqk * U32) * maxq * maxk;
    return s * maxo * E * psum * exp(delta) * (1 + u16) * (1 + u16);
}

/* An FP32 result r and a second one within budget b of it, each rounded to BF16 (round to
 * nearest: |rnd(x) - x| <= u16 |x|), differ by at most b + u16 (|r| + |r| + b); with |r| <=
 * |rnd(r)| / (1 - u16) that is within b (1 + u16) + 2 u16 (1 + 2 u16) |ref| of the rounded
 * reference ref (u16 <= 1/256, so 1 / (1 - u16) <= 1 + 2 u16). test_bf16_bound simulates it. */
static inline double bf16_act_budget_u(double b, double ref, double u16)
{
    return b * (1 + u16) + 2 * u16 * (1 + 2 * u16) * fabs(ref);
}
static inline double bf16_act_budget(double b, double ref) { return bf16_act_budget_u(b, ref, U16); }

typedef struct Pair {
    Ops *cpu, *gpu;
    Ops *cpu32;                 /* a CPU FP32 table for budget products (|A||B|): no rounding */
    Precision prec;
    const char *tag;            /* "fp32" / "bf16" */
} Pair;

/* same contents on both tables; g is device memory of the cuda table (FP32, or BF16 for an
 * act buffer of a bf16 pair: offset it with act_at, never with + on a float pointer) */
typedef struct Buf { float *c; void *g; size_t n; int act; } Buf;
typedef struct IBuf { int32_t *c, *g; size_t n; } IBuf;
/* A Linear weight on both tables (see the header comment) */
typedef struct WPair { Wgt c, g; } WPair;

void pair_open(Pair *p, Precision prec);
void pair_close(Pair *p);

/* Copies of host (n) on both tables: FP32 (buf_new) or activations (buf_act). */
Buf buf_new(Pair *p, const float *host, size_t n);
Buf buf_act(Pair *p, const float *host, size_t n);
IBuf ibuf_new(Pair *p, const int32_t *host, size_t n);
/* Outputs of overwriting ops: NaN on both, so an element the op never writes fails. */
Buf buf_poison(Pair *p, size_t n);
Buf buf_act_poison(Pair *p, size_t n);
/* The weight (rows, cols) whose FP32 master is master_c / master_g (FP32 memory of each
 * table); WGT_FP32 on an fp32 pair, WGT_BF16 (compute copies refreshed) on bf16. */
WPair wpair_new(Pair *p, float *master_c, float *master_g, int rows, int cols);
void wpair_free(Pair *p, WPair *w);
/* b's element `at` on each table, as act pointers */
act *buf_act_c(Pair *p, const Buf *b, size_t at);
act *buf_act_g(Pair *p, const Buf *b, size_t at);
void buf_free(Pair *p, Buf *b);
void ibuf_free(Pair *p, IBuf *b);
/* Host copies (caller frees). */
float *buf_host_cpu(Pair *p, const Buf *b);
float *buf_host_gpu(Pair *p, const Buf *b);

/* Fresh random host arrays (caller frees): uniform in [lo, hi), normal(0, std). */
float *host_uniform(Rng *r, size_t n, float lo, float hi);
float *host_normal(Rng *r, size_t n, float std);
float *host_abs(const float *x, size_t n);
double host_max_abs(const float *x, size_t n);

/* Verdicts: 1 pass, 0 fail (already printed). */
int check_close(Pair *p, const char *what, const Buf *b, double atol, double rtol, double norm);
/* Per-element absolute budgets bound (host, n). */
int check_bound(Pair *p, const char *what, const Buf *b, const float *bound, double rtol, double norm);
/* Accumulating ops: the normwise part compares the increments (result - base, base the
 * host copy of the starting values), so large starting values do not dilute it. */
int check_delta(Pair *p, const char *what, const Buf *b, const float *base, double atol, double rtol, double norm);
/* check_delta with per-element absolute budgets bound (host, n). */
int check_delta_bound(Pair *p, const char *what, const Buf *b, const float *base, const float *bound, double rtol,
                      double norm);
int check_exact(Pair *p, const char *what, const Buf *b);
int check_exact_i(Pair *p, const char *what, const IBuf *b);

#endif
