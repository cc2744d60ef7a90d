/* tests/gpu/test_gpu_fp8.c - the GPU's FP8 (kernels/cuda/cuda_fp8.cu, API in cuda_ops.h)
 * against kernels/fp8.h and the double-precision reference kernels/cpu/fp8_gemm_ref.h:
 *   1. e4m3_from_float / e4m3_to_float on the device, bit for bit with the host: every code,
 *      every midpoint between neighbours (ties to even) and one float either side of it,
 *      saturation (448, 464, 480, huge, inf), NaN payloads, +-0, subnormal floats, and random
 *      floats over the whole exponent range;
 *   2. the quantisers bit for bit (codes, scales, the zero padding of K): 1x128 tiles along
 *      rows (FP32 and BF16 input, plain and power-of-two scales), Wgrad's transposed
 *      token-padded copy (128x1 tiles, power of two), weights in 128x128 blocks and their
 *      transposed copy, on awkward shapes (1 row, K = 1, 127, 129, 200, 300) and edge tiles
 *      (all zero: the amax floor; amax below the floor; a NaN element; an inf element;
 *      subnormal inputs; every code's value);
 *   3. the three FP8 GEMMs of a Linear layer (Fprop, Dgrad, Wgrad; SPEC.md section 6) on
 *      1 row, K = 200, K not a multiple of 128, on both paths (cuBLASLt's block scaling, the
 *      tiled kernel), FP32 and BF16 output, overwrite and accumulate, each output within a
 *      budget derived below against fp8_gemm_ref over the same quantised operands (which
 *      part 2 shows identical on both sides);
 *   4. the Linear entries of an fp8 table (cuda_fp8_matmul_*: quantise, GEMM, accumulate) on a
 *      WGT_FP8 weight refreshed from its master, against the same reference.
 * The cuBLASLt path is required on sm_90; on other GPUs, where CUDA 13.0's cuBLASLt has no
 * block-scaled FP8 algorithm, its cases are reported and not counted.
 *
 * Without a GPU: prints "SKIP: no CUDA GPU (...)" and exits 77 (ctest: SKIP_RETURN_CODE).
 * Seed printed; DSTRAIN_TEST_SEED replays.
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/testing.h"
#include "kernels/cpu/fp8_gemm_ref.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/fp8.h"
#include "runtime/common.h"

static Ops *o;
static Rng rng;
static int sm;

static void *dev_put(const void *host, size_t bytes)
{
    void *d = o->alloc(o, bytes ? bytes : 1);
    if (bytes) o->upload(o, d, host, bytes);
    return d;
}

static void *host_get(const void *dev, size_t bytes)
{
    void *h = xmalloc(bytes ? bytes : 1);
    if (bytes) o->download(o, h, dev, bytes);
    o->synchronize(o);
    return h;
}

static uint32_t bits(float x) { return fp8_float_bits(x); }

/* ---- 1. single values ---- */

static void test_convert(void)
{
    size_t n = 0, cap = 4096 + 200000;
    float *x = xmalloc(cap * sizeof(float));
    for (int c = 0; c < 256; c++) {
        float v = e4m3_to_float((uint8_t)c), w = e4m3_to_float((uint8_t)(c + 1));
        x[n++] = v;
        if ((c & 0x7F) < 0x7E) {                    /* midpoint to the next code, and either side */
            float mid = (v + w) / 2;                /* exact: 4 significant bits */
            x[n++] = mid;
            x[n++] = nextafterf(mid, -INFINITY);
            x[n++] = nextafterf(mid, INFINITY);
        }
    }
    const float edge[] = { 0.0f, -0.0f, 448.0f, 449.0f, 463.999f, 464.0f, 464.00003f, 479.0f, 480.0f, 1e30f,
                           INFINITY, -448.0f, -464.0f, -464.00003f, -1e30f, -INFINITY, 0x1p-10f, 0x1.000002p-10f,
                           0x3p-10f, 0x1p-9f, 0x1p-6f, 0x1.fp-7f, 1e-45f, -1e-45f, 1e-40f, FLT_MIN, -FLT_MIN };
    for (size_t i = 0; i < sizeof edge / sizeof *edge; i++) x[n++] = edge[i];
    const uint32_t nans[] = { 0x7FC00000u, 0xFFC00000u, 0x7F800001u, 0xFFFFFFFFu, 0x7FBFFFFFu };
    for (size_t i = 0; i < sizeof nans / sizeof *nans; i++) x[n++] = fp8_bits_float(nans[i]);
    while (n < cap) x[n++] = fp8_bits_float(rng_u32(&rng));     /* every exponent, NaN and inf too */
    float *dx = dev_put(x, n * sizeof(float));
    uint8_t *dq = o->alloc(o, n);
    cuda_fp8_convert(o, dq, dx, n, 0);
    uint8_t *q = host_get(dq, n);
    int bad = 0;
    for (size_t i = 0; i < n; i++)
        if (q[i] != e4m3_from_float(x[i]) && bad++ < 5)
            fprintf(stderr, "e4m3_from_float(%a = 0x%08x): device 0x%02x, host 0x%02x\n", (double)x[i], bits(x[i]),
                    q[i], e4m3_from_float(x[i]));
    EXPECT(bad == 0, "e4m3_from_float on the device: %d of %zu values differ from the host", bad, n);
    /* decode: every code */
    uint8_t codes[256];
    for (int c = 0; c < 256; c++) codes[c] = (uint8_t)c;
    o->upload(o, dq, codes, 256);
    cuda_fp8_convert(o, dq, dx, 256, 1);
    float *y = host_get(dx, 256 * sizeof(float));
    bad = 0;
    for (int c = 0; c < 256; c++) bad += bits(y[c]) != bits(e4m3_to_float((uint8_t)c));
    EXPECT(bad == 0, "e4m3_to_float on the device: %d of 256 codes differ from the host", bad);
    printf("convert: %zu values encoded, 256 codes decoded\n", n);
    free(y);
    free(q);
    free(x);
    o->free(o, dx);
    o->free(o, dq);
}

/* ---- 2. quantisers ---- */

/* rows x K values: per row a magnitude (some rows all zero, one below the amax floor), per
 * 128-block another, 2^-6 of spread, ~5% zeros; `edges` plants edge tiles in the first rows */
static float *rand_matrix(int rows, int K, int edges)
{
    float *x = xcalloc((size_t)rows * K, sizeof(float));
    for (int r = 0; r < rows; r++) {
        float mag = 24 * rng_uniform(&rng) - 12;
        int kind = rng_u32(&rng) % 16;
        for (int k = 0; k < K; k++) {
            float v = exp2f(mag + (float)((k / FP8_TILE * 7 + r) % 5) - 2 - 6 * rng_uniform(&rng));
            if (kind == 0) v = 0.0f;                        /* all zero: the floor */
            else if (kind == 1) v *= 1e-20f;                /* amax below the floor */
            else if (kind == 2) v = 1e-41f * (float)(k % 7);  /* subnormal inputs */
            x[(size_t)r * K + k] = rng_uniform(&rng) < 0.05f ? 0.0f : (rng_u32(&rng) & 1) ? -v : v;
        }
    }
    if (edges && rows >= 4) {
        for (int k = 0; k < K; k++) {               /* row 0: every code's value, scale 2^-3 */
            float v = e4m3_to_float((uint8_t)(k % 256));
            x[k] = isnan(v) ? 0.0f : v * 0.125f;
        }
        x[0] = 448.0f * 0.125f;                     /* pins the first tile's scale */
        x[(size_t)1 * K + K / 2] = NAN;             /* row 1: a NaN element */
        x[(size_t)2 * K + K / 3] = INFINITY;        /* row 2: an inf element */
        for (int k = 0; k < K; k++)                 /* row 3: ties of the scaled grid */
            x[(size_t)3 * K + k] = (e4m3_to_float((uint8_t)(k % 126)) + e4m3_to_float((uint8_t)(k % 126 + 1))) / 2;
        x[(size_t)3 * K] = 448.0f;
    }
    return x;
}

static void round_bf16(float *x, size_t n, uint16_t *h)
{
    for (size_t i = 0; i < n; i++) {
        h[i] = bf16_from_float(x[i]);
        x[i] = bf16_to_float(h[i]);
    }
}

/* GPU matrix m (downloaded) against host codes hq (rows, K, ld K) and host scales hs in
 * fp8_gemm_ref's layout; the padding of every row must be code 0. */
static void compare_mat(const char *what, const CudaFp8Mat *m, const uint8_t *hq, const float *hs)
{
    const int nkb = cuda_fp8_kblocks(m->K), srows = m->block ? (m->rows + FP8_TILE - 1) / FP8_TILE : m->rows;
    uint8_t *q = host_get(m->q, (size_t)m->rows * m->ldq);
    float *s = host_get(m->scale, cuda_fp8_mat_bytes(m->rows, m->K, m->block) -
                                      (size_t)((char *)m->scale - (char *)m->q));
    int bad_q = 0, bad_pad = 0, bad_s = 0;
    for (int r = 0; r < m->rows; r++)
        for (int k = 0; k < m->ldq; k++) {
            uint8_t g = q[(size_t)r * m->ldq + k];
            if (k >= m->K) bad_pad += g != 0;
            else if (g != hq[(size_t)r * m->K + k] && bad_q++ < 3)
                fprintf(stderr, "%s: code (%d, %d) device 0x%02x host 0x%02x\n", what, r, k, g, hq[(size_t)r * m->K + k]);
        }
    for (int r = 0; r < srows; r++)
        for (int kb = 0; kb < nkb; kb++) {
            float g = s[cuda_fp8_scale_at(m, r * (m->block ? FP8_TILE : 1), kb)], h = hs[(size_t)r * nkb + kb];
            if (bits(g) != bits(h) && bad_s++ < 3)
                fprintf(stderr, "%s: scale (%d, %d) device %a host %a\n", what, r, kb, (double)g, (double)h);
        }
    EXPECT(bad_q == 0 && bad_pad == 0 && bad_s == 0, "%s: %d codes, %d padding codes, %d scales differ", what, bad_q,
           bad_pad, bad_s);
    free(q);
    free(s);
}

typedef struct DevMat { CudaFp8Mat m; void *mem; } DevMat;

static DevMat mat_new(int rows, int K, int block)
{
    DevMat d;
    d.mem = o->alloc(o, cuda_fp8_mat_bytes(rows, K, block));
    cuda_fp8_mat_init(&d.m, d.mem, rows, K, block);
    return d;
}

static void mat_free(DevMat *d) { o->free(o, d->mem); }

/* fp8_gemm_ref's operand of x (rows, K) quantised on the host (caller frees q and scale) */
static Fp8Operand host_quant(const float *x, int rows, int K, int block, int pow2)
{
    int srows = block ? (rows + FP8_TILE - 1) / FP8_TILE : rows;
    uint8_t *q = xcalloc((size_t)rows * K, 1);
    float *s = xcalloc((size_t)srows * fp8_kblocks(K), sizeof(float));
    fp8_quantize_matrix(x, rows, K, K, block, pow2, q, K, s);
    return (Fp8Operand){ q, K, s, block };
}

static void op_free(Fp8Operand *p)
{
    free((void *)p->q);
    free((void *)p->scale);
}

static float *transpose(const float *x, int rows, int cols)
{
    float *t = xmalloc((size_t)rows * cols * sizeof(float));
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) t[(size_t)c * rows + r] = x[(size_t)r * cols + c];
    return t;
}

static void test_quant_rows(int rows, int K, int pow2, int bf16)
{
    char what[96];
    float *x = rand_matrix(rows, K, 1);
    uint16_t *h = xmalloc((size_t)rows * K * sizeof(uint16_t));
    if (bf16) round_bf16(x, (size_t)rows * K, h);
    void *dx = bf16 ? dev_put(h, (size_t)rows * K * 2) : dev_put(x, (size_t)rows * K * 4);
    DevMat d = mat_new(rows, K, 0);
    cuda_fp8_quantize_rows(o, &d.m, dx, bf16, K, pow2);
    Fp8Operand ref = host_quant(x, rows, K, 0, pow2);
    snprintf(what, sizeof what, "quantize_rows %dx%d%s%s", rows, K, pow2 ? " pow2" : "", bf16 ? " bf16" : "");
    compare_mat(what, &d.m, ref.q, ref.scale);
    op_free(&ref);
    mat_free(&d);
    o->free(o, dx);
    free(h);
    free(x);
}

/* Wgrad's copy of x (n tokens, C): the host's transposed matrix (C, n) in 1x128 pow2 tiles */
static void test_quant_cols(int n, int C, int bf16)
{
    char what[96];
    float *x = rand_matrix(n, C, 0);
    uint16_t *h = xmalloc((size_t)n * C * sizeof(uint16_t));
    if (bf16) round_bf16(x, (size_t)n * C, h);
    void *dx = bf16 ? dev_put(h, (size_t)n * C * 2) : dev_put(x, (size_t)n * C * 4);
    DevMat d = mat_new(C, n, 0);
    cuda_fp8_quantize_cols(o, &d.m, dx, bf16, n, C);
    float *xt = transpose(x, n, C);
    Fp8Operand ref = host_quant(xt, C, n, 0, 1);
    snprintf(what, sizeof what, "quantize_cols %d tokens x %d%s", n, C, bf16 ? " bf16" : "");
    compare_mat(what, &d.m, ref.q, ref.scale);
    op_free(&ref);
    mat_free(&d);
    o->free(o, dx);
    free(xt);
    free(h);
    free(x);
}

static void test_quant_weight(int rows, int cols)
{
    char what[96];
    float *w = rand_matrix(rows, cols, 1);
    void *dw = dev_put(w, (size_t)rows * cols * 4);
    DevMat d = mat_new(rows, cols, 1), dt = mat_new(cols, rows, 1);
    cuda_fp8_quantize_weight(o, &d.m, &dt.m, dw, cols);
    float *wt = transpose(w, rows, cols);
    Fp8Operand ref = host_quant(w, rows, cols, 1, 0), reft = host_quant(wt, cols, rows, 1, 0);
    snprintf(what, sizeof what, "quantize_weight %dx%d", rows, cols);
    compare_mat(what, &d.m, ref.q, ref.scale);
    snprintf(what, sizeof what, "quantize_weight %dx%d transposed copy", rows, cols);
    compare_mat(what, &dt.m, reft.q, reft.scale);
    op_free(&ref);
    op_free(&reft);
    mat_free(&d);
    mat_free(&dt);
    o->free(o, dw);
    free(wt);
    free(w);
}

/* ---- 3. GEMMs ---- */

/* Budget of one output against ref = fp8_gemm_ref (the exact block sums, scaled and summed in
 * double, rounded once), with S = sum over k of |q_a q_b| s_a s_b and u = 2^-24:
 *   in-block sums: the tiled kernel adds 128 exact products in FP32 (fmaf), |err| <= 127 u S_b;
 *     Hopper's FP8 tensor cores keep about 14 bits of the in-block sum (DeepSeek-V3 TR
 *     3.3.2), so each of the 128 products may lose 2^-13 of the largest magnitude in its sum,
 *     |err| <= 128 2^-13 S_b;
 *   scaling each block sum by s_a s_b: two FP32 roundings, 2 u S; summing nkb block terms in
 *     FP32: nkb u S; the reference's own error: nkb 2^-53 S + its FP32 rounding u |ref|.
 *   Total: (inblock + (nkb + 3) u) S + u |ref|. Accumulating (beta 1) onto c0 adds the FP32
 *   add (and cuBLASLt's separate beta product): 2 u (|c0| + |ref| + budget). A BF16 output
 *   rounds once more: 2^-8 (|expected| + budget) (BF16 keeps 8 significant bits).
 *   Relative bounds fail below FP32's normal range (2^-126; BF16's is the same): each of the
 *   at most 128 + nkb + 5 roundings above may then err by 2^-126 absolute (a flush to zero
 *   included), so (133 + nkb) 2^-126 is added. Every nonzero term s_a s_b q_a q_b is at least
 *   2^-97.5 2^-18 (fp8.h's amax floor), so only cancellation reaches that range. */
static double gemm_budget(int lt, int nkb, double S, double ref, double c0, int beta, int bf16)
{
    const double u = 0x1p-24;
    double b = ((lt ? 128 * 0x1p-13 : 127 * u) + (nkb + 3) * u) * S + u * fabs(ref) + (133 + nkb) * 0x1p-126;
    if (beta) b += 2 * u * (fabs(c0) + fabs(ref) + b);
    if (bf16) b += 0x1p-8 * (fabs(ref + c0) + b);
    return b;
}

/* S of every output from the host operands (double, exact products) */
static double *abs_products(int M, int N, int K, const Fp8Operand *a, const Fp8Operand *b)
{
    const int nkb = fp8_kblocks(K);
    double *S = xcalloc((size_t)M * N, sizeof(double));
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double acc = 0;
            for (int k = 0; k < K; k++) {
                int kb = k / FP8_TILE;
                double sa = a->scale[(size_t)(a->block ? m / FP8_TILE : m) * nkb + kb];
                double sb = b->scale[(size_t)(b->block ? n / FP8_TILE : n) * nkb + kb];
                acc += fabs((double)e4m3_to_float(a->q[(size_t)m * a->ld + k]) *
                            e4m3_to_float(b->q[(size_t)n * b->ld + k])) * sa * sb;
            }
            S[(size_t)m * N + n] = acc;
        }
    return S;
}

typedef struct GemmCase {
    const char *kind;
    int M, N, K;
    const CudaFp8Mat *a, *b;        /* device operands */
    const float *ref;               /* (M, N) fp8_gemm_ref */
    const double *S;                /* (M, N) */
} GemmCase;

static int lt_missing_noted;

/* Outputs of got (M, N) beyond c0 (NULL: 0) + ref's gemm_budget (the first 3 printed when
 * what is not NULL); *worst: the largest share of a budget */
static int count_bad(const char *what, const GemmCase *g, const double *got, const float *c0, int lt, int bf16,
                     double *worst)
{
    const size_t n = (size_t)g->M * g->N;
    int bad = 0;
    *worst = 0;
    for (size_t i = 0; i < n; i++) {
        double start = c0 ? c0[i] : 0.0, want = start + g->ref[i];
        double bud = gemm_budget(lt, fp8_kblocks(g->K), g->S[i], g->ref[i], start, c0 != NULL, bf16);
        double err = fabs(got[i] - want);
        if (!(err <= bud) && bad++ < 3 && what)
            fprintf(stderr, "%s: (%zu, %zu) got %.9g want %.9g, error %.3g > budget %.3g\n", what, i / g->N,
                    i % g->N, got[i], want, err, bud);
        if (bud > 0 && err / bud > *worst) *worst = err / bud;
    }
    return bad;
}

static int check_out(const char *what, const GemmCase *g, const double *got, const float *c0, int lt, int bf16)
{
    double worst;
    int bad = count_bad(what, g, got, c0, lt, bf16, &worst);
    printf("%s: worst error %.4f of its budget\n", what, worst);
    EXPECT(bad == 0, "%s: %d of %zu outputs beyond the budget", what, bad, (size_t)g->M * g->N);
    return bad;
}

/* c (M, N) = a b^T on `path` into a fresh device buffer (start c0 when beta, else NaN, so an
 * unwritten output fails); the result as doubles, or NULL when the path did not run */
static double *gemm_out(const GemmCase *g, const CudaFp8Mat *a, const CudaFp8Mat *b, CudaFp8Path path, int bf16,
                        const float *c0, char *why, size_t why_len)
{
    const size_t n = (size_t)g->M * g->N, es = bf16 ? 2 : 4;
    float *start = xmalloc(n * sizeof(float));
    uint16_t *h = xmalloc(n * sizeof(uint16_t));
    for (size_t i = 0; i < n; i++) start[i] = c0 ? c0[i] : NAN;
    if (bf16) round_bf16(start, n, h);
    void *dc = dev_put(bf16 ? (void *)h : (void *)start, n * es);
    double *got = NULL;
    if (cuda_fp8_gemm(o, a, b, dc, bf16, g->N, c0 ? 1.0f : 0.0f, path, why, why_len)) {
        void *out = host_get(dc, n * es);
        got = xmalloc(n * sizeof(double));
        for (size_t i = 0; i < n; i++) got[i] = bf16 ? bf16_to_float(((uint16_t *)out)[i]) : ((float *)out)[i];
        free(out);
    }
    o->free(o, dc);
    free(h);
    free(start);
    return got;
}

/* One run of the case on `path` with the output kind (bf16, beta): outputs beyond the budget,
 * -1 when cuBLASLt had no algorithm */
static int run_gemm(const GemmCase *g, CudaFp8Path path, int bf16, int beta)
{
    const size_t n = (size_t)g->M * g->N;
    float *c0 = xmalloc(n * sizeof(float));
    uint16_t *h = xmalloc(n * sizeof(uint16_t));
    for (size_t i = 0; i < n; i++) c0[i] = 2 * rng_uniform(&rng) - 1;
    if (bf16) round_bf16(c0, n, h);             /* the start as the BF16 output holds it */
    char why[512], what[160];
    double *got = gemm_out(g, g->a, g->b, path, bf16, beta ? c0 : NULL, why, sizeof why);
    snprintf(what, sizeof what, "%s M=%d N=%d K=%d %s, %s out%s", g->kind, g->M, g->N, g->K,
             path == CUDA_FP8_CUBLASLT ? "cuBLASLt" : "tiled", bf16 ? "BF16" : "FP32", beta ? ", accumulate" : "");
    int bad = -1;
    if (!got) {
        EXPECT(sm != 90, "%s: cuBLASLt has no block-scaled FP8 algorithm on sm_90: %s", what, why);
        if (sm != 90 && !lt_missing_noted++) printf("NOTE (not counted): %s\n", why);
    } else {
        bad = check_out(what, g, got, beta ? c0 : NULL, path == CUDA_FP8_CUBLASLT, bf16);
    }
    free(got);
    free(h);
    free(c0);
    return bad;
}

/* ---- diagnosis: which scale layout cuBLASLt reads ----
 * The layouts (cuda_ops.h) come from ENVIRONMENT.md, unverified on a GPU. When cuBLASLt misses
 * its budget, the same codes are run with the scales rearranged in other plausible layouts and
 * each combination's count of outputs beyond budget is printed ("PROBE"), so one GPU run
 * names the layout to adopt. Not a check: it counts no pass or failure. */
static const char *const VEC_LAYOUTS[] = { "kb*rows+r", "r*nkb+kb", "kb*rows4+r" };
static const char *const BLK_LAYOUTS[] = { "rb*nkb4+kb", "rb*nkb+kb", "kb*nrb+rb", "kb*nrb4+rb" };

static size_t alt_index(int block, int kind, int rows, int K, int r, int kb)
{
    const size_t nkb = (size_t)fp8_kblocks(K), nrb = (size_t)(rows + FP8_TILE - 1) / FP8_TILE;
    const size_t R = (size_t)rows, R4 = (R + 3) / 4 * 4, nkb4 = (nkb + 3) / 4 * 4, nrb4 = (nrb + 3) / 4 * 4;
    if (!block) return kind == 0 ? kb * R + r : kind == 1 ? r * nkb + kb : kb * R4 + r;
    return kind == 0 ? r * nkb4 + kb : kind == 1 ? r * nkb + kb : kind == 2 ? kb * nrb + r : kb * nrb4 + r;
}

/* device scales of host operand h (rows, K) in layout `kind` */
static float *alt_scales(const Fp8Operand *h, int rows, int K, int kind)
{
    const int nkb = fp8_kblocks(K), srows = h->block ? (rows + FP8_TILE - 1) / FP8_TILE : rows;
    size_t cap = (size_t)(srows + 4) * (nkb + 4);
    float *s = xcalloc(cap, sizeof(float));
    for (int r = 0; r < srows; r++)
        for (int kb = 0; kb < nkb; kb++) s[alt_index(h->block, kind, rows, K, r, kb)] = h->scale[(size_t)r * nkb + kb];
    float *d = dev_put(s, cap * sizeof(float));
    free(s);
    return d;
}

static void probe_layouts(const GemmCase *g, const Fp8Operand *ha, const Fp8Operand *hb)
{
    const int na = ha->block ? 4 : 3, nb = hb->block ? 4 : 3;
    for (int ia = 0; ia < na; ia++)
        for (int ib = 0; ib < nb; ib++) {
            CudaFp8Mat a = *g->a, b = *g->b;
            a.scale = alt_scales(ha, g->M, g->K, ia);
            b.scale = alt_scales(hb, g->N, g->K, ib);
            char why[512];
            double *got = gemm_out(g, &a, &b, CUDA_FP8_CUBLASLT, 0, NULL, why, sizeof why), worst = 0;
            int bad = got ? count_bad(NULL, g, got, NULL, 1, 0, &worst) : -1;
            printf("PROBE %s M=%d N=%d K=%d: A scales %s, B scales %s: %d of %d outputs beyond budget%s\n", g->kind,
                   g->M, g->N, g->K, (ha->block ? BLK_LAYOUTS : VEC_LAYOUTS)[ia],
                   (hb->block ? BLK_LAYOUTS : VEC_LAYOUTS)[ib], bad, g->M * g->N, got ? "" : " (did not run)");
            free(got);
            o->free(o, a.scale);
            o->free(o, b.scale);
        }
}

static void gemm_case(const char *kind, int M, int N, int K, const CudaFp8Mat *a, const CudaFp8Mat *b,
                      const Fp8Operand *ha, const Fp8Operand *hb)
{
    char what[96];
    snprintf(what, sizeof what, "%s operand A", kind);
    compare_mat(what, a, ha->q, ha->scale);
    snprintf(what, sizeof what, "%s operand B", kind);
    compare_mat(what, b, hb->q, hb->scale);
    float *ref = xmalloc((size_t)M * N * sizeof(float));
    fp8_gemm_ref(M, N, K, ha, hb, ref, N);
    double *S = abs_products(M, N, K, ha, hb);
    GemmCase g = { kind, M, N, K, a, b, ref, S };
    const CudaFp8Path paths[2] = { CUDA_FP8_CUBLASLT, CUDA_FP8_TILED };
    int lt_bad = 0;
    for (int p = 0; p < 2; p++) {
        int bad = run_gemm(&g, paths[p], 0, 0);
        if (p == 0) lt_bad = bad > 0;
        run_gemm(&g, paths[p], 0, 1);
        run_gemm(&g, paths[p], 1, 0);
    }
    static int probed;                          /* once per pair of scale kinds */
    const int key = 1 << (2 * ha->block + hb->block);
    if (lt_bad && !(probed & key)) {
        probed |= key;
        probe_layouts(&g, ha, hb);
    }
    free(S);
    free(ref);
}

/* The three GEMMs of a Linear layer x (T, IC), W (OC, IC), dy (T, OC), as SPEC section 6 and
 * kernels/cpu/cpu_fp8.c define them. */
static void test_linear(int T, int IC, int OC)
{
    float *x = rand_matrix(T, IC, 0), *w = rand_matrix(OC, IC, 0), *dy = rand_matrix(T, OC, 0);
    float *xt = transpose(x, T, IC), *wt = transpose(w, OC, IC), *dyt = transpose(dy, T, OC);
    float *dx_ = dev_put(x, (size_t)T * IC * 4), *dw_ = dev_put(w, (size_t)OC * IC * 4);
    float *ddy = dev_put(dy, (size_t)T * OC * 4);
    DevMat xq = mat_new(T, IC, 0), wq = mat_new(OC, IC, 1), wtq = mat_new(IC, OC, 1), dyq = mat_new(T, OC, 0);
    DevMat dytq = mat_new(OC, T, 0), xtq = mat_new(IC, T, 0);
    cuda_fp8_quantize_rows(o, &xq.m, dx_, 0, IC, 0);
    cuda_fp8_quantize_weight(o, &wq.m, &wtq.m, dw_, IC);
    cuda_fp8_quantize_rows(o, &dyq.m, ddy, 0, OC, 0);
    cuda_fp8_quantize_cols(o, &dytq.m, ddy, 0, T, OC);
    cuda_fp8_quantize_cols(o, &xtq.m, dx_, 0, T, IC);
    Fp8Operand hx = host_quant(x, T, IC, 0, 0), hw = host_quant(w, OC, IC, 1, 0);
    Fp8Operand hwt = host_quant(wt, IC, OC, 1, 0), hdy = host_quant(dy, T, OC, 0, 0);
    Fp8Operand hdyt = host_quant(dyt, OC, T, 0, 1), hxt = host_quant(xt, IC, T, 0, 1);
    gemm_case("Fprop", T, OC, IC, &xq.m, &wq.m, &hx, &hw);
    gemm_case("Dgrad", T, IC, OC, &dyq.m, &wtq.m, &hdy, &hwt);
    gemm_case("Wgrad", OC, IC, T, &dytq.m, &xtq.m, &hdyt, &hxt);
    Fp8Operand *ops[] = { &hx, &hw, &hwt, &hdy, &hdyt, &hxt };
    for (int i = 0; i < 6; i++) op_free(ops[i]);
    DevMat *mats[] = { &xq, &wq, &wtq, &dyq, &dytq, &xtq };
    for (int i = 0; i < 6; i++) mat_free(mats[i]);
    o->free(o, dx_);
    o->free(o, dw_);
    o->free(o, ddy);
    free(x), free(w), free(dy), free(xt), free(wt), free(dyt);
}

/* ---- 4. the fp8 table's Linear entries (cuda_fp8_matmul_*) on a WGT_FP8 weight ---- */

/* n activations of the table from host (which then holds the values as stored) */
static void *act_put(float *host, size_t n)
{
    void *d = o->alloc(o, n * (size_t)o->act_bytes);
    o->act_upload(o, d, host, n);
    o->act_download(o, host, d, n);
    o->synchronize(o);
    return d;
}

static double *act_get(const void *d, size_t n, int act)
{
    float *f = xmalloc(n * sizeof(float));
    if (act) o->act_download(o, f, d, n);
    else o->download(o, f, d, n * sizeof(float));
    o->synchronize(o);
    double *g = xmalloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) g[i] = f[i];
    free(f);
    return g;
}

/* the entry's result (device d, activation type or FP32) against c0 + the reference; the
 * entries take whichever GEMM path AUTO finds, so cuBLASLt's (wider) budget */
static void op_check(const char *what, const void *d, int act, int M, int N, int K, const Fp8Operand *ha,
                     const Fp8Operand *hb, const float *c0)
{
    float *ref = xmalloc((size_t)M * N * sizeof(float));
    fp8_gemm_ref(M, N, K, ha, hb, ref, N);
    double *S = abs_products(M, N, K, ha, hb), *got = act_get(d, (size_t)M * N, act);
    GemmCase g = { what, M, N, K, NULL, NULL, ref, S };
    check_out(what, &g, got, c0, 1, act && o->act_bytes == 2);
    free(got);
    free(S);
    free(ref);
}

static void test_linear_ops(int T, int IC, int OC)
{
    char what[96];
    float *x = rand_matrix(T, IC, 0), *w = rand_matrix(OC, IC, 0), *dy = rand_matrix(T, OC, 0);
    void *dx = act_put(x, (size_t)T * IC), *ddy = act_put(dy, (size_t)T * OC);
    float *dw = dev_put(w, (size_t)OC * IC * 4);
    Wgt wg = { dw, OC, IC, WGT_FP8, o->alloc(o, cuda_fp8_weight_bytes(OC, IC)), 0 };
    cuda_fp8_weight_refresh(o, &wg);
    float *xt = transpose(x, T, IC), *wt = transpose(w, OC, IC), *dyt = transpose(dy, T, OC);
    Fp8Operand hx = host_quant(x, T, IC, 0, 0), hw = host_quant(w, OC, IC, 1, 0);
    Fp8Operand hwt = host_quant(wt, IC, OC, 1, 0), hdy = host_quant(dy, T, OC, 0, 0);
    Fp8Operand hdyt = host_quant(dyt, OC, T, 0, 1), hxt = host_quant(xt, IC, T, 0, 1);
    float *start = xmalloc((size_t)T * (IC > OC ? IC : OC) * sizeof(float));
    for (size_t i = 0; i < (size_t)T * OC; i++) start[i] = NAN;        /* forward overwrites */
    void *out = act_put(start, (size_t)T * OC);
    cuda_fp8_matmul_forward(o, out, dx, &wg, T, IC, OC);
    snprintf(what, sizeof what, "entry matmul_forward fp8 %dx%dx%d", T, IC, OC);
    op_check(what, out, 1, T, OC, IC, &hx, &hw, NULL);
    for (size_t i = 0; i < (size_t)T * IC; i++) start[i] = 2 * rng_uniform(&rng) - 1;
    void *dinp = act_put(start, (size_t)T * IC);
    cuda_fp8_matmul_backward_input(o, dinp, ddy, &wg, T, IC, OC);
    snprintf(what, sizeof what, "entry matmul_backward_input fp8 %dx%dx%d", T, IC, OC);
    op_check(what, dinp, 1, T, IC, OC, &hdy, &hwt, start);
    float *g0 = xmalloc((size_t)OC * IC * sizeof(float));
    for (size_t i = 0; i < (size_t)OC * IC; i++) g0[i] = 2 * rng_uniform(&rng) - 1;
    float *dgw = dev_put(g0, (size_t)OC * IC * 4);
    cuda_fp8_matmul_backward_weight(o, dgw, ddy, dx, T, IC, OC);
    snprintf(what, sizeof what, "entry matmul_backward_weight fp8 %dx%dx%d", T, IC, OC);
    op_check(what, dgw, 0, OC, IC, T, &hdyt, &hxt, g0);
    Fp8Operand *ops[] = { &hx, &hw, &hwt, &hdy, &hdyt, &hxt };
    for (int i = 0; i < 6; i++) op_free(ops[i]);
    void *dev[] = { dx, ddy, dw, wg.data, out, dinp, dgw };
    for (int i = 0; i < 7; i++) o->free(o, dev[i]);
    free(x), free(w), free(dy), free(xt), free(wt), free(dyt), free(start), free(g0);
}

int main(int argc, char **argv)
{
    char why[256];
    int probe = argc > 1 && !strcmp(argv[1], "--probe");
    if (cuda_gpu_count(why, sizeof why) == 0) {
        printf("SKIP: no CUDA GPU (%s)\n", why);
        return 77;
    }
    if (probe) return 0;
    rng_seed(&rng, test_seed());
    o = cuda_ops_create(PREC_BF16);
    sm = cuda_compute_capability(o);
    printf("device sm_%d\n", sm);
    test_convert();
    const int shapes[][2] = { { 1, 1 }, { 1, 128 }, { 3, 127 }, { 4, 129 }, { 5, 200 }, { 130, 300 }, { 257, 1024 } };
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
        for (int v = 0; v < 4; v++) test_quant_rows(shapes[i][0], shapes[i][1], v & 1, v >> 1);
    const int tok[][2] = { { 1, 1 }, { 1, 40 }, { 127, 33 }, { 129, 70 }, { 200, 64 }, { 300, 5 } };
    for (size_t i = 0; i < sizeof tok / sizeof *tok; i++)
        for (int bf16 = 0; bf16 < 2; bf16++) test_quant_cols(tok[i][0], tok[i][1], bf16);
    const int wsh[][2] = { { 1, 1 }, { 4, 200 }, { 130, 200 }, { 256, 384 }, { 300, 129 } };
    for (size_t i = 0; i < sizeof wsh / sizeof *wsh; i++) test_quant_weight(wsh[i][0], wsh[i][1]);
    const int lin[][3] = { { 1, 256, 128 }, { 3, 200, 144 }, { 130, 200, 320 }, { 257, 384, 256 } };
    for (size_t i = 0; i < sizeof lin / sizeof *lin; i++) test_linear(lin[i][0], lin[i][1], lin[i][2]);
    for (size_t i = 0; i < sizeof lin / sizeof *lin; i++) test_linear_ops(lin[i][0], lin[i][1], lin[i][2]);
    cuda_ops_destroy(o);
    return test_finish();
}
