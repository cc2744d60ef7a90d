/* tests/unit/test_fp8_gemm.c - the emulated FP8 GEMM reference (kernels/cpu/fp8_gemm_ref.h) in
 * the three forms of a Linear layer (Fprop, Dgrad, Wgrad) on awkward shapes: 1 row, K = 1,
 * K = 128, K = 200, K = 300, N crossing a 128-row weight block.
 *
 * What it is not: the quantisers' rounding (test_fp8.c) or the op table's emulated Linear.
 * Reference: SPEC.md section 6. Each case is checked twice:
 *   1. against a plain double GEMM over the same dequantised inputs (a = q_a s_a in double,
 *      exact: 4 x 24 significant bits), budget derived at budget_same();
 *   2. against the double GEMM of the original FP32 inputs, budget = the quantisation error of
 *      every product (budget_quant()) plus budget 1;
 * and two structural claims of SPEC: quantising the transposed weight in 128x128 blocks gives
 * exactly the transposed codes and scales (Dgrad's copy is exact), and padding K with zeros
 * (Wgrad's token padding) changes no bit of the result.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels/cpu/fp8_gemm_ref.h"
#include "kernels/fp8.h"
#include "runtime/common.h"
#include "tests/unit/testing.h"

static Rng rng;

/* rows x K values whose magnitude varies by row and by 128-block of K (so every tile has its
 * own scale), 2^-6 of spread inside a tile, about 5% exact zeros */
static float *rand_matrix(int rows, int K)
{
    float *x = xcalloc(1, (size_t)rows * K * sizeof(float));
    for (int r = 0; r < rows; r++) {
        float row_mag = 16 * rng_uniform(&rng) - 8;
        for (int k = 0; k < K; k++) {
            float blk_mag = (float)((k / FP8_TILE * 7 + r) % 5) - 2;
            float v = exp2f(row_mag + blk_mag - 6 * rng_uniform(&rng));
            x[(size_t)r * K + k] = rng_uniform(&rng) < 0.05f ? 0.0f : (rng_u32(&rng) & 1) ? -v : v;
        }
    }
    return x;
}

static float *transpose(const float *x, int rows, int cols)
{
    float *t = xcalloc(1, (size_t)rows * cols * sizeof(float));
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) t[(size_t)c * rows + r] = x[(size_t)r * cols + c];
    return t;
}

typedef struct Quant {
    uint8_t *q;
    float *s;
    double *deq;            /* q s in double: exact */
    Fp8Operand op;
} Quant;

static Quant quantize(const float *x, int rows, int K, int block, int pow2)
{
    Quant u;
    int nkb = fp8_kblocks(K), srows = block ? (rows + FP8_TILE - 1) / FP8_TILE : rows;
    u.q = xcalloc(1, (size_t)rows * K);
    u.s = xcalloc(1, (size_t)srows * nkb * sizeof(float));
    u.deq = xcalloc(1, (size_t)rows * K * sizeof(double));
    fp8_quantize_matrix(x, rows, K, K, block, pow2, u.q, K, u.s);
    for (int r = 0; r < rows; r++)
        for (int k = 0; k < K; k++) {
            float s = u.s[(size_t)(block ? r / FP8_TILE : r) * nkb + k / FP8_TILE];
            u.deq[(size_t)r * K + k] = (double)e4m3_to_float(u.q[(size_t)r * K + k]) * s;
        }
    u.op = (Fp8Operand){ u.q, K, u.s, block };
    return u;
}

static void quant_free(Quant *u)
{
    free(u->q);
    free(u->s);
    free(u->deq);
}

/* Budget 1, |ref - D| with D the double GEMM of the dequantised inputs, S = sum |a_k b_k|,
 * u = 2^-53: the reference's block sums are exact, each scaling rounds once (u |term|) and the
 * nkb-term block sum adds (nkb - 1) u S, so |ref_d - E| <= nkb u S for the exact E; D rounds K
 * products and sums K terms: |D - E| <= K u S (first order; the second-order terms are below
 * 2^-40 of these); the final FP32 rounding adds 2^-24 |ref_d| <= 2^-24 (|D| + (K + nkb) u S).
 * Total <= 2^-24 |D| + (K + nkb + 1) 2^-52 S. */
static double budget_same(double D, double S, int K)
{
    return 0x1p-24 * fabs(D) + (K + fp8_kblocks(K) + 1) * 0x1p-52 * S;
}

/* Quantisation error of one value x under scale s (test_fp8.c's tile_budget: half an E4M3
 * step, 2^-4 |x| for a normal code, 2^-10 s below 2^-6, plus the FP32 division) */
static double quant_err(double x, double s)
{
    return 0x1p-4 * fabs(x) * (1 + 0x1p-21) + 0x1p-10 * s * (1 + 0x1p-21) + 0x1p-22 * fabs(x);
}

typedef struct Case {
    const char *kind;
    int M, N, K;
} Case;

static double worst_same, worst_quant;

/* A (M, K) x B (N, K)^T, both given in FP32 and quantised as the kind asks */
static void check_gemm(const char *kind, int M, int N, int K, const float *A, const float *B,
                       const Quant *qa, const Quant *qb)
{
    float *c = xcalloc(1, (size_t)M * N * sizeof(float));
    fp8_gemm_ref(M, N, K, &qa->op, &qb->op, c, N);
    int nkb = fp8_kblocks(K), bad_same = 0, bad_quant = 0;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double D = 0, S = 0, X = 0, SX = 0, Q = 0;
            for (int k = 0; k < K; k++) {
                double a = qa->deq[(size_t)m * K + k], b = qb->deq[(size_t)n * K + k];
                double x = A[(size_t)m * K + k], w = B[(size_t)n * K + k];
                double sa = qa->s[(size_t)(qa->op.block ? m / FP8_TILE : m) * nkb + k / FP8_TILE];
                double sb = qb->s[(size_t)(qb->op.block ? n / FP8_TILE : n) * nkb + k / FP8_TILE];
                double ea = quant_err(x, sa), eb = quant_err(w, sb);
                D += a * b;
                S += fabs(a * b);
                X += x * w;
                SX += fabs(x * w);
                Q += ea * fabs(w) + fabs(x) * eb + ea * eb;
            }
            double r = c[(size_t)m * N + n];
            double b1 = budget_same(D, S, K);
            /* budget 2: |ref - X| <= |ref - D| + |D - E'| ... collected: the products' own
             * quantisation error Q, budget 1, and the rounding of X itself (K u SX) */
            double b2 = Q + b1 + K * 0x1p-52 * SX;
            double e1 = fabs(r - D), e2 = fabs(r - X);
            if (!(e1 <= b1)) bad_same++;
            if (!(e2 <= b2)) bad_quant++;
            if (b1 > 0 && e1 / b1 > worst_same) worst_same = e1 / b1;
            if (b2 > 0 && e2 / b2 > worst_quant) worst_quant = e2 / b2;
        }
    EXPECT(bad_same == 0, "%s M=%d N=%d K=%d: %d of %d outputs beyond the budget against the "
           "double GEMM of the dequantised inputs", kind, M, N, K, bad_same, M * N);
    EXPECT(bad_quant == 0, "%s M=%d N=%d K=%d: %d of %d outputs beyond the quantisation budget",
           kind, M, N, K, bad_quant, M * N);
    free(c);
}

/* Fprop y (T, out) = x (T, in) . W (out, in)^T: x 1x128, W 128x128 */
static void fprop(int T, int out, int in)
{
    float *x = rand_matrix(T, in), *W = rand_matrix(out, in);
    Quant qx = quantize(x, T, in, 0, 0), qw = quantize(W, out, in, 1, 0);
    check_gemm("fprop", T, out, in, x, W, &qx, &qw);
    quant_free(&qx);
    quant_free(&qw);
    free(x);
    free(W);
}

/* Dgrad dx (T, in) = dy (T, out) . W (out, in): dy 1x128, the transposed copy W^T (in, out)
 * 128x128, which must equal the transposed block quantisation of W exactly */
static void dgrad(int T, int out, int in)
{
    float *dy = rand_matrix(T, out), *W = rand_matrix(out, in), *Wt = transpose(W, out, in);
    Quant qdy = quantize(dy, T, out, 0, 0), qwt = quantize(Wt, in, out, 1, 0);
    Quant qw = quantize(W, out, in, 1, 0);
    int bad = 0, nkb_w = fp8_kblocks(in), nkb_t = fp8_kblocks(out);
    for (int o = 0; o < out; o++)
        for (int i = 0; i < in; i++) {
            if (qw.q[(size_t)o * in + i] != qwt.q[(size_t)i * out + o]) bad++;
            if (qw.s[(size_t)(o / FP8_TILE) * nkb_w + i / FP8_TILE]
                != qwt.s[(size_t)(i / FP8_TILE) * nkb_t + o / FP8_TILE]) bad++;
        }
    EXPECT(bad == 0, "dgrad out=%d in=%d: the transposed weight copy differs from the "
           "transposed quantisation in %d places", out, in, bad);
    check_gemm("dgrad", T, in, out, dy, Wt, &qdy, &qwt);
    quant_free(&qdy);
    quant_free(&qwt);
    quant_free(&qw);
    free(dy);
    free(W);
    free(Wt);
}

/* Wgrad dW (out, in) = dy^T (out, T) . x^T (in, T): both 1x128 along tokens, power-of-two
 * scales; tokens padded with zeros to a multiple of 128 give the same bits */
static void wgrad(int T, int out, int in)
{
    float *dy = rand_matrix(T, out), *x = rand_matrix(T, in);
    float *dyt = transpose(dy, T, out), *xt = transpose(x, T, in);
    Quant qa = quantize(dyt, out, T, 0, 1), qb = quantize(xt, in, T, 0, 1);
    check_gemm("wgrad", out, in, T, dyt, xt, &qa, &qb);

    int Tp = fp8_kblocks(T) * FP8_TILE;
    float *dytp = xcalloc((size_t)out * Tp, sizeof(float)), *xtp = xcalloc((size_t)in * Tp, sizeof(float));
    for (int o = 0; o < out; o++) memcpy(dytp + (size_t)o * Tp, dyt + (size_t)o * T, (size_t)T * sizeof(float));
    for (int i = 0; i < in; i++) memcpy(xtp + (size_t)i * Tp, xt + (size_t)i * T, (size_t)T * sizeof(float));
    Quant pa = quantize(dytp, out, Tp, 0, 1), pb = quantize(xtp, in, Tp, 0, 1);
    float *c = xcalloc(1, (size_t)out * in * sizeof(float)), *cp = xcalloc(1, (size_t)out * in * sizeof(float));
    fp8_gemm_ref(out, in, T, &qa.op, &qb.op, c, in);
    fp8_gemm_ref(out, in, Tp, &pa.op, &pb.op, cp, in);
    EXPECT(memcmp(c, cp, (size_t)out * in * sizeof(float)) == 0,
           "wgrad T=%d: padding tokens to %d changed the result", T, Tp);
    quant_free(&qa);
    quant_free(&qb);
    quant_free(&pa);
    quant_free(&pb);
    free(dy); free(x); free(dyt); free(xt); free(dytp); free(xtp); free(c); free(cp);
}

int main(void)
{
    rng_seed(&rng, test_seed());
    /* (T, out, in): 1 row; K = 1, 128, 200, 300; N = 130 crosses a 128-row weight block */
    const int shapes[][3] = { { 1, 130, 200 }, { 3, 5, 128 }, { 7, 129, 300 }, { 1, 1, 1 },
                              { 2, 200, 130 }, { 130, 3, 200 } };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        int T = shapes[i][0], out = shapes[i][1], in = shapes[i][2];
        fprop(T, out, in);
        dgrad(T, out, in);
        wgrad(T, out, in);
    }
    /* budget 1 is reached (to within 2^-20) by outputs that fall on an FP32 tie just above a
     * power of two, where half an ulp is 2^-24 |D|: the bound is tight, not loose */
    printf("worst error: %.6f of the budget against the dequantised double GEMM, %.3f of the "
           "quantisation budget against the FP32 inputs\n", worst_same, worst_quant);
    return test_finish();
}
