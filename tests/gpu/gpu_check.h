/* tests/gpu/gpu_check.h - what the GPU op tests share: a pair of op tables (CPU reference and
 * CUDA under test), the same data on both, and comparisons that report the worst error as a
 * share of its budget.
 *
 * What it is: test plumbing over the op table only (kernels/ops.h), so every check runs the
 * same calls on both backends. What it is not: a test itself (test_gpu_ops.c and
 * test_gpu_moe.c are; they count passes and failures from the verdicts returned here).
 *
 * Budgets: an element passes when |gpu - cpu| <= bound_i + rtol * |cpu| (bound_i a per-element
 * absolute budget, often atol), the tensor when additionally ||gpu - cpu|| / ||cpu|| <= norm
 * (norm <= 0 skips that part); NaN anywhere in the GPU result fails. Each check prints one
 * line: the worst element's share of its budget and the normwise error against its budget.
 *
 * Calling sequence:
 *   Pair p; pair_open(&p, PREC_BF16);
 *   Buf x = buf_new(&p, host, n);  Buf y = buf_poison(&p, n);
 *   p.cpu->op(p.cpu, y.c, x.c, ...); p.gpu->op(p.gpu, y.g, x.g, ...);
 *   ok = check_close(&p, "op shape", &y, atol, rtol, norm);
 *   buf_free(&p, &x); ... pair_close(&p);
 */
#ifndef DSTRAIN_TESTS_GPU_CHECK_H
#define DSTRAIN_TESTS_GPU_CHECK_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/ops.h"
#include "runtime/common.h"

/* Both tables keep activations as FP32 for now (act_bytes = 4) and the compute copy of
 * a Linear weight is its master (weight_bytes 0), so FP32 buffers serve as act and Wgt. */
#define A(p) ((act *)(p))
#define CA(p) ((const act *)(p))
#define WG(p, rows, cols) (&(const Wgt){ (p), (rows), (cols), WGT_FP32, (p) })

/* Unit roundoffs: FP32 (24-bit significand), BF16 (8-bit significand, round to nearest). */
#define U32 (1.0 / 16777216.0)
#define U16 (1.0 / 512.0)

typedef struct Pair {
    Ops *cpu, *gpu;
    Precision prec;
    const char *tag;            /* "fp32" / "bf16" */
} Pair;

typedef struct Buf { float *c, *g; size_t n; } Buf;        /* same contents on both tables */
typedef struct IBuf { int32_t *c, *g; size_t n; } IBuf;

void pair_open(Pair *p, Precision prec);
void pair_close(Pair *p);

/* Copies of host (n) on both tables. */
Buf buf_new(Pair *p, const float *host, size_t n);
IBuf ibuf_new(Pair *p, const int32_t *host, size_t n);
/* Outputs of overwriting ops: NaN on both, so an element the op never writes fails. */
Buf buf_poison(Pair *p, size_t n);
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
int check_exact(Pair *p, const char *what, const Buf *b);
int check_exact_i(Pair *p, const char *what, const IBuf *b);

#endif
