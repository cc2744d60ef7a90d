/* kernels/cpu/cpu_fp8.c - CPU backend: FP8 (E4M3) emulation of the Linear GEMMs of the fp8
 * table (SPEC.md section 6, DeepSeek-V3 TR section 3.3).
 *
 * Emulation = quantise with the scales the GPU uses, dequantise, multiply in FP32 (OpenBLAS),
 * so the CPU runs exactly the operand values an FP8 GEMM sees; only the accumulation order and
 * width differ from a GPU's (FP32 here; Hopper's ~14-bit in-block sums promoted to FP32 every
 * 128 of K there). The numbers (E4M3 rounding, the scale rule, tiles and blocks) are those of
 * kernels/fp8.h, shared with the CUDA kernels.
 *
 *   weights   128x128 blocks, s = amax / 448, quantised once per optimizer step by
 *             weight_refresh; the compute copy holds the dequantised values (rows, cols) in
 *             FP32. Dgrad reads the transposed copy on a GPU; its blocks are the same square
 *             blocks transposed (quantised with the weight, exact), so the same values serve here.
 *   Fprop     out (N,OC) = Q(inp) W^T       Q: 1x128 tiles along IC, s = amax / 448; power-of-two
 *             s for a weight with act_pow2 (the routed experts' gate_up, whose input rows are
 *             the dispatch's FP8 payload: Q of a decoded payload row gives the row back, so the
 *             expert sees the same operand whether its rows crossed the wire or not, any ep)
 *   Dgrad     dinp (N,IC) += Q(dout) W      Q: 1x128 tiles along OC, s = amax / 448
 *   Wgrad     dW (OC,IC) += Qt(dout)^T Qt(inp)
 *             Qt: 128x1 tiles along the tokens N (the transposed copies, token-padded to 128:
 *             the padding is 0 and changes no amax), power-of-two scales
 * A partial tile (K or N not a multiple of 128) takes its amax over its valid elements.
 *
 * What it is not: the BF16 rounding of stored activations (the callers in cpu_dense.c round
 * what these write), or a reference for a GPU result's budget (tests hold the GPU to a
 * double-precision product of the same quantised operands).
 *
 * This file includes kernels/fp8.h and not runtime/common.h (both define a bf16_round).
 */
#include <omp.h>
#include <stdint.h>

#include "kernels/cpu/cpu.h"
#include "kernels/fp8.h"

/* fp8_dequantize(fp8_quantize(x, s), s) of kernels/fp8.h, bit for bit, without the code:
 * y = x / s (the same IEEE division), then y's nearest E4M3 value as an FP32 (ties to even):
 * |y| >= 2^-6 keeps 3 mantissa bits (a carry moves into the exponent, the next E4M3 value);
 * below, multiples of 2^-9 (adding and removing 1.5 * 2^23 rounds |y| * 512 to an integer,
 * every step exact but that one rounding); |y| >= 448 and +-inf saturate to 448; the sign is
 * kept (so -0 stays -0); NaN gives the NaN code's value. Then the same product with s.
 * Branch-free so the row loops vectorise; test_fp8_ops.c checks it against fp8.h. */
static inline float qdq(float x, float s)
{
    union { float f; uint32_t u; } y = { x / s };
    const uint32_t sign = y.u & 0x80000000u, a = y.u & 0x7FFFFFFFu;
    const uint32_t normal = (a + 0x7FFFFu + ((a >> 20) & 1u)) & 0xFFF00000u;
    union { uint32_t u; float f; } mag = { a };
    union { float f; uint32_t u; } sub = { ((mag.f * 512.0f + 12582912.0f) - 12582912.0f) * (1.0f / 512.0f) };
    uint32_t r = a >= 0x3C800000u ? normal : sub.u;
    r = a >= 0x43E00000u ? 0x43E00000u : r;
    union { uint32_t u; float f; } v = { r | sign };
    return a > 0x7F800000u ? e4m3_to_float(FP8_E4M3_NAN) * s : v.f * s;
}

/* fp8_amax on the bits (NaN ignored) of one more value */
static inline uint32_t amax_bits(uint32_t m, float x)
{
    union { float f; uint32_t u; } v = { x };
    uint32_t a = v.u & 0x7FFFFFFFu;
    return a <= 0x7F800000u && a > m ? a : m;
}

void cpu_fp8_quantize_rows(Ops *o, float *xq, const float *x, int n, int K, int pow2)
{
    #pragma omp parallel for num_threads(cpu_threads(o)) if ((size_t)n * K > 16384) schedule(static)
    for (int r = 0; r < n; r++) {
        const float *src = x + (size_t)r * K;   /* (K) */
        float *dst = xq + (size_t)r * K;        /* (K) */
        for (int k0 = 0; k0 < K; k0 += FP8_TILE) {
            int m = K - k0 < FP8_TILE ? K - k0 : FP8_TILE;
            float s = fp8_scale(fp8_amax(src + k0, m), pow2);
            for (int i = 0; i < m; i++) dst[k0 + i] = qdq(src[k0 + i], s);
        }
    }
}

/* Each tile is FP8_TILE tokens of one column: the column amax of a row block, then its rows. */
void cpu_fp8_quantize_cols(Ops *o, float *xq, const float *x, int n, int K)
{
    const int blocks = (n + FP8_TILE - 1) / FP8_TILE;
    float *scale = cpu_scratch(o, (size_t)K);
    const size_t stride = cpu_scratch_stride(o);
    #pragma omp parallel for num_threads(cpu_threads(o)) if ((size_t)n * K > 16384) schedule(static)
    for (int b = 0; b < blocks; b++) {
        float *s = scale + (size_t)omp_get_thread_num() * stride;   /* (K) */
        uint32_t *m = (uint32_t *)s;                                 /* (K) amax bits, then scales */
        int t0 = b * FP8_TILE, t1 = t0 + FP8_TILE < n ? t0 + FP8_TILE : n;
        for (int c = 0; c < K; c++) m[c] = 0;
        for (int t = t0; t < t1; t++)
            for (int c = 0; c < K; c++) m[c] = amax_bits(m[c], x[(size_t)t * K + c]);
        for (int c = 0; c < K; c++) {
            union { uint32_t u; float f; } a = { m[c] };
            s[c] = fp8_scale(a.f, 1);
        }
        for (int t = t0; t < t1; t++)
            for (int c = 0; c < K; c++) xq[(size_t)t * K + c] = qdq(x[(size_t)t * K + c], s[c]);
    }
}

size_t cpu_fp8_weight_bytes(int rows, int cols) { return (size_t)rows * cols * sizeof(float); }

/* data (rows, cols) = the dequantised 128x128-block quantisation of the master. */
void cpu_fp8_weight_refresh(Ops *o, Wgt *w)
{
    const int rows = w->rows, cols = w->cols;
    const int br = (rows + FP8_TILE - 1) / FP8_TILE, bc = (cols + FP8_TILE - 1) / FP8_TILE;
    float *dst = w->data;
    #pragma omp parallel for num_threads(cpu_threads(o)) if ((size_t)rows * cols > 16384) schedule(static)
    for (int b = 0; b < br * bc; b++) {
        uint8_t q[FP8_TILE * FP8_TILE];   /* 16 KiB of codes */
        int r0 = b / bc * FP8_TILE, c0 = b % bc * FP8_TILE;
        int nr = rows - r0 < FP8_TILE ? rows - r0 : FP8_TILE, nc = cols - c0 < FP8_TILE ? cols - c0 : FP8_TILE;
        size_t at = (size_t)r0 * cols + c0;
        float s;
        fp8_quantize_block(w->master + at, cols, nr, nc, 0, q, FP8_TILE, &s);
        fp8_dequantize_block(q, FP8_TILE, nr, nc, s, dst + at, cols);
    }
}

void cpu_fp8_matmul_forward(Ops *o, float *out, const float *inp, const float *wq, int N, int IC, int OC, int pow2)
{
    if (N <= 0 || OC <= 0 || IC <= 0) {
        cpu_gemm_forward(o, out, inp, wq, N, IC, OC);
        return;
    }
    float *xq = cpu_gemm_scratch(o, (size_t)N * IC);
    cpu_fp8_quantize_rows(o, xq, inp, N, IC, pow2);
    cpu_gemm_forward(o, out, xq, wq, N, IC, OC);
}

void cpu_fp8_matmul_backward_input(Ops *o, float *dinp, const float *dout, const float *wq, int N, int IC, int OC)
{
    if (N <= 0 || IC <= 0 || OC <= 0) return;
    float *dq = cpu_gemm_scratch(o, (size_t)N * OC);
    cpu_fp8_quantize_rows(o, dq, dout, N, OC, 0);
    cpu_gemm_backward_input(o, dinp, dq, wq, N, IC, OC);
}

void cpu_fp8_matmul_backward_weight(Ops *o, float *dweight, const float *dout, const float *inp, int N, int IC,
                                    int OC)
{
    if (N <= 0 || IC <= 0 || OC <= 0) return;
    float *dq = cpu_gemm_scratch(o, (size_t)N * (OC + IC)), *xq = dq + (size_t)N * OC;
    cpu_fp8_quantize_cols(o, dq, dout, N, OC);
    cpu_fp8_quantize_cols(o, xq, inp, N, IC);
    cpu_gemm_backward_weight(o, dweight, dq, xq, N, IC, OC);
}
