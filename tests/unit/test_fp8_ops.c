/* tests/unit/test_fp8_ops.c - the CPU's FP8 emulation of the Linear GEMMs (kernels/cpu/cpu_fp8.c)
 * against a double-precision product of the same quantised operands.
 *
 * What it checks, on the fp8 CPU table: its quantisers (cpu_fp8_quantize_rows/cols) equal
 * kernels/fp8.h's tile functions bit for bit on every E4M3 value, midpoint and special value;
 * and for awkward shapes (one row, K = 200 and other K and N that are not multiples of 128,
 * K = 128 exactly):
 *   - weight_refresh: the compute copy equals, bit for bit, the master quantised in 128x128
 *     blocks (amax / 448 scales) and dequantised with kernels/fp8.h's block functions;
 *   - Fprop out = Q(x) W_q^T, Q = 1x128 tiles along IC (amax / 448 scales; and power-of-two
 *     scales for a weight with act_pow2, the routed experts' gate_up);
 *   - Dgrad dinp += Q(dy) W_q, Q = 1x128 tiles along OC;
 *   - Wgrad dW += Qt(dy)^T Qt(x), Qt = 128x1 tiles along the tokens, power-of-two scales;
 * each against sum_k a_k b_k over the reference-quantised operands in double.
 * Budget per output element: the table sums K products of FP32 operands in FP32 (OpenBLAS, any
 * order): each product and each partial sum rounds once, so the error is at most
 * (K + 1) u32 sum_k |a_k b_k| (u32 = 2^-24, first order; K u32 << 1 here). Fprop and Dgrad
 * store activations, rounded to BF16 on the fp8 table: + 2^-8 (|result| + that FP32 error)
 * (half an ulp of 8 significant bits of the FP32 sum; the Dgrad pre-fill is a BF16 value, as
 * stored activations are). Wgrad
 * writes FP32 gradients: no such term. The worst share of the budget is printed.
 * That the check can fail: the same outputs are also compared with the product of the
 * unquantised operands, which E4M3's 3 mantissa bits move by ~2^-5 relative, far outside the
 * budget; the test requires that to happen for the larger shapes (printed as "unquantised").
 * Inputs span magnitudes 10^-3..10^3 across rows and columns, so per-tile scales matter.
 * Not here: E4M3 rounding itself (tests/unit/test_fp8.c), the BF16 emulation (test_bf16.c).
 * This file includes kernels/fp8.h, so not runtime/common.h (both define bf16_round).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu.h"
#include "kernels/fp8.h"
#include "kernels/ops.h"
#include "tests/unit/testing.h"

#define U32 0x1p-24
#define A(p) ((act *)(p))
#define CA(p) ((const act *)(p))

static Ops *ops;
static uint64_t rng_state;

static double uniform(void)   /* [0, 1), xorshift64* */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 0x2545F4914F6CDD1DULL) >> 11) * 0x1p-53;
}

static float *alloc_f(size_t n) { float *p = calloc(n + 1, sizeof(float)); if (!p) abort(); return p; }

/* (rows, cols) values of mixed magnitude: row and column factors 10^[-1.5, 1.5], BF16 values
 * when bf16 (stored activations are). */
static float *mixed(int rows, int cols, int bf16)
{
    float *x = alloc_f((size_t)rows * cols);
    double *cf = malloc(sizeof(double) * (size_t)(cols + 1));
    for (int c = 0; c < cols; c++) cf[c] = pow(10.0, 3.0 * uniform() - 1.5);
    for (int r = 0; r < rows; r++) {
        double rf = pow(10.0, 3.0 * uniform() - 1.5);
        for (int c = 0; c < cols; c++) {
            float v = (float)((2.0 * uniform() - 1.0) * rf * cf[c]);
            x[(size_t)r * cols + c] = bf16 ? bf16_round(v) : v;
        }
    }
    free(cf);
    return x;
}

/* Reference quantisations with kernels/fp8.h (independent loops over the same tiles). */
static float *ref_rows(const float *x, int n, int K, int pow2)
{
    float *q = alloc_f((size_t)n * K);
    uint8_t c[FP8_TILE];
    for (int r = 0; r < n; r++)
        for (int k0 = 0; k0 < K; k0 += FP8_TILE) {
            int m = K - k0 < FP8_TILE ? K - k0 : FP8_TILE;
            float s;
            fp8_quantize_tile(x + (size_t)r * K + k0, m, pow2, c, &s);
            fp8_dequantize_tile(c, m, s, q + (size_t)r * K + k0);
        }
    return q;
}

/* 128x1 tiles along the n rows (tokens): a token-padded FP8_TILE x K block per tile row, the
 * padding zero, each column of it quantised as one tile with a power-of-two scale. */
static float *ref_cols(const float *x, int n, int K)
{
    float *q = alloc_f((size_t)n * K), col[FP8_TILE];
    uint8_t c[FP8_TILE];
    for (int t0 = 0; t0 < n; t0 += FP8_TILE)
        for (int k = 0; k < K; k++) {
            for (int i = 0; i < FP8_TILE; i++) col[i] = t0 + i < n ? x[(size_t)(t0 + i) * K + k] : 0.0f;
            float s;
            fp8_quantize_tile(col, FP8_TILE, 1, c, &s);
            fp8_dequantize_tile(c, FP8_TILE, s, col);
            for (int i = 0; i < FP8_TILE && t0 + i < n; i++) q[(size_t)(t0 + i) * K + k] = col[i];
        }
    return q;
}

static float *ref_blocks(const float *w, int rows, int cols)
{
    float *q = alloc_f((size_t)rows * cols);
    static uint8_t c[FP8_TILE * FP8_TILE];
    for (int r0 = 0; r0 < rows; r0 += FP8_TILE)
        for (int c0 = 0; c0 < cols; c0 += FP8_TILE) {
            int nr = rows - r0 < FP8_TILE ? rows - r0 : FP8_TILE, nc = cols - c0 < FP8_TILE ? cols - c0 : FP8_TILE;
            float s;
            fp8_quantize_block(w + (size_t)r0 * cols + c0, cols, nr, nc, 0, c, FP8_TILE, &s);
            fp8_dequantize_block(c, FP8_TILE, nr, nc, s, q + (size_t)r0 * cols + c0, cols);
        }
    return q;
}

/* got (M,Nn) against ref = base + sum_k a(i,k) b(j,k) in double (a: (M,K) row stride lda and
 * column stride sa; likewise b), budget (K+1) u32 sum|ab| + bf16 2^-8 |ref|. Returns the worst
 * share; *unq the worst share of the same budget against the unquantised operands ua/ub. */
typedef struct Prod {
    const float *a, *b, *ua, *ub, *base;
    long lda, sa, ldb, sb;
    int M, Nn, K, bf16;
} Prod;

static double prod_share(const Prod *p, const float *got, double *unq)
{
    double worst = 0.0, worst_u = 0.0;
    for (int i = 0; i < p->M; i++)
        for (int j = 0; j < p->Nn; j++) {
            double s = p->base ? p->base[(size_t)i * p->Nn + j] : 0.0, su = s, mag = 0.0;
            for (int k = 0; k < p->K; k++) {
                double x = p->a[i * p->lda + k * p->sa], y = p->b[j * p->ldb + k * p->sb];
                s += x * y;
                su += (double)p->ua[i * p->lda + k * p->sa] * p->ub[j * p->ldb + k * p->sb];
                mag += fabs(x * y);
            }
            /* the BF16 rounding applies to the FP32 result r, |r| <= |s| + E: 2^-8 (|s| + E) */
            double e32 = (p->K + 1) * U32 * mag;
            double budget = e32 + (p->bf16 ? ldexp(fabs(s) + e32, -8) : 0.0) + 0x1p-140;
            double g = got[(size_t)i * p->Nn + j];
            if (fabs(g - s) / budget > worst) worst = fabs(g - s) / budget;
            if (fabs(g - su) / budget > worst_u) worst_u = fabs(g - su) / budget;
        }
    *unq = worst_u;
    return worst;
}

static void report(const char *what, int N, int IC, int OC, double share, double unq, int expect_unq)
{
    printf("  %-24s N=%-4d IC=%-4d OC=%-4d worst %.3f of budget (unquantised: %.1f)\n", what, N, IC, OC, share, unq);
    EXPECT(share <= 1.0, "%s N=%d IC=%d OC=%d: worst %.3f of the budget", what, N, IC, OC, share);
    if (expect_unq)
        EXPECT(unq > 1.0, "%s N=%d IC=%d OC=%d: indistinguishable from the unquantised product (%.3f)", what, N,
               IC, OC, unq);
}

static void test_gemms(int N, int IC, int OC)
{
    const int big = (long)N * IC * OC >= 4096;
    float *master = mixed(OC, IC, 0), *x = mixed(N, IC, 1), *dy = mixed(N, OC, 1), *dx0 = mixed(N, IC, 1);
    Wgt w;
    void *copy = ops->alloc(ops, ops->weight_bytes(ops, WGT_FP8, OC, IC));
    wgt_bind(&w, ops, master, OC, IC, WGT_FP8, copy);
    ops->weight_refresh(ops, &w);
    float *wq = ref_blocks(master, OC, IC);
    int same = memcmp(wq, copy, sizeof(float) * (size_t)OC * IC) == 0;
    printf("  %-24s N=%-4d IC=%-4d OC=%-4d %s\n", "weight 128x128 blocks", N, IC, OC, same ? "bit-exact" : "DIFFERS");
    EXPECT(same, "weight_refresh OC=%d IC=%d differs from the reference block quantisation", OC, IC);

    float *out = alloc_f((size_t)N * OC), *dx = alloc_f((size_t)N * IC), *dw = alloc_f((size_t)OC * IC);
    memcpy(dx, dx0, sizeof(float) * (size_t)N * IC);
    ops->matmul_forward(ops, A(out), CA(x), &w, N, IC, OC);
    ops->matmul_backward_input(ops, A(dx), CA(dy), &w, N, IC, OC);
    ops->matmul_backward_weight(ops, dw, &w, CA(dy), CA(x), N, IC, OC);

    double unq, share;
    float *xq = ref_rows(x, N, IC, 0), *dyq = ref_rows(dy, N, OC, 0);
    Prod f = { xq, wq, x, master, NULL, IC, 1, IC, 1, N, OC, IC, 1 };
    share = prod_share(&f, out, &unq);
    report("Fprop", N, IC, OC, share, unq, big);
    w.act_pow2 = 1;     /* the routed experts' gate_up: power-of-two activation tiles */
    ops->matmul_forward(ops, A(out), CA(x), &w, N, IC, OC);
    float *xq2 = ref_rows(x, N, IC, 1);
    Prod f2 = { xq2, wq, x, master, NULL, IC, 1, IC, 1, N, OC, IC, 1 };
    share = prod_share(&f2, out, &unq);
    report("Fprop, pow2 tiles", N, IC, OC, share, unq, big);
    free(xq2);
    Prod d = { dyq, wq, dy, master, dx0, OC, 1, 1, IC, N, IC, OC, 1 };
    share = prod_share(&d, dx, &unq);
    report("Dgrad", N, IC, OC, share, unq, big);
    float *dyt = ref_cols(dy, N, OC), *xt = ref_cols(x, N, IC);
    Prod g = { dyt, xt, dy, x, NULL, 1, OC, 1, IC, OC, IC, N, 0 };
    share = prod_share(&g, dw, &unq);
    report("Wgrad", N, IC, OC, share, unq, big);

    ops->free(ops, copy);
    free(master), free(x), free(dy), free(dx0), free(wq), free(out), free(dx), free(dw);
    free(xq), free(dyq), free(dyt), free(xt);
}

/* The table's quantisers against fp8.h's tile functions, bit for bit: rows of 128 whose first
 * element is 448 (scale 1, so x / s = x) carrying every E4M3 value, every midpoint between
 * neighbours and the floats next to it (ties to even), zeros of both signs, FP32 subnormals,
 * values past 448 and NaN; then random mixed-magnitude rows, partial tiles, an all-zero tile
 * (the amax floor) and a tile holding inf (all NaN). */
static void test_quantizers(void)
{
    const int K = 200, cap = 8192;
    float *vals = alloc_f(cap);
    int nv = 0;
    for (int c = 0; c < 0x7E && nv + 8 < cap; c++) {
        float lo = e4m3_to_float((uint8_t)c), hi = e4m3_to_float((uint8_t)(c + 1)), mid = 0.5f * (lo + hi);
        float v[] = { lo, mid, nextafterf(mid, 0.0f), nextafterf(mid, 1e9f), -mid, -lo };
        for (int i = 0; i < 6; i++) vals[nv++] = v[i];
    }
    float extra[] = { 0.0f, -0.0f, 0x1p-149f, -0x1p-140f, 0x1p-126f, 0x1p-10f, 0x1.8p-10f, 448.0f, 460.0f, 464.0f,
                      470.0f, -1000.0f, NAN, -NAN };
    for (size_t i = 0; i < sizeof extra / sizeof extra[0]; i++) vals[nv++] = extra[i];
    const int per = K - 1 - (K - 1) / FP8_TILE;   /* test values per row (one 448 per tile) */
    const int n = (nv + per - 1) / per + 6;
    float *x = alloc_f((size_t)n * K);
    for (int r = 0, v = 0; r < n - 6; r++)
        for (int k = 0; k < K; k++) x[(size_t)r * K + k] = k % FP8_TILE == 0 ? 448.0f : v < nv ? vals[v++] : 1.0f;
    float *mix = mixed(4, K, 0);
    memcpy(x + (size_t)(n - 6) * K, mix, sizeof(float) * 4 * K);
    for (int k = 0; k < K; k++) x[(size_t)(n - 2) * K + k] = 0.0f;
    for (int k = 0; k < K; k++) x[(size_t)(n - 1) * K + k] = k == 3 ? INFINITY : (float)k;
    float *got = alloc_f((size_t)n * K);
    for (int pow2 = 0; pow2 < 2; pow2++) {
        float *ref = ref_rows(x, n, K, pow2);
        cpu_fp8_quantize_rows(ops, got, x, n, K, pow2);
        int same = memcmp(got, ref, sizeof(float) * (size_t)n * K) == 0;
        printf("  %-24s %d values, pow2 %d: %s\n", "quantize rows", n * K, pow2, same ? "bit-exact" : "DIFFERS");
        EXPECT(same, "cpu_fp8_quantize_rows (pow2 %d) differs from fp8.h", pow2);
        free(ref);
    }
    /* the same values as columns: the transpose (K tokens of n columns), tokens padded */
    float *xt = alloc_f((size_t)n * K);
    for (int r = 0; r < n; r++)
        for (int k = 0; k < K; k++) xt[(size_t)k * n + r] = x[(size_t)r * K + k];
    float *ref = ref_cols(xt, K, n);
    cpu_fp8_quantize_cols(ops, got, xt, K, n);
    int same = memcmp(got, ref, sizeof(float) * (size_t)n * K) == 0;
    printf("  %-24s %d values: %s\n", "quantize cols (pow2)", n * K, same ? "bit-exact" : "DIFFERS");
    EXPECT(same, "cpu_fp8_quantize_cols differs from fp8.h");
    free(ref), free(xt), free(got), free(x), free(mix), free(vals);
}

int main(void)
{
    rng_state = test_seed() | 1;
    ops = ops_cpu_create(2, PREC_FP8);
    EXPECT(ops->precision == PREC_FP8, "fp8 table");
    test_quantizers();
    test_gemms(1, 1, 1);
    test_gemms(1, 200, 130);     /* one row; K = 200 (a full and a partial tile) */
    test_gemms(3, 128, 256);     /* K exactly one tile */
    test_gemms(200, 70, 129);    /* Wgrad over 200 tokens: a full and a padded token tile */
    test_gemms(130, 257, 5);
    ops_destroy(ops);
    return test_finish();
}
