/* kernels/cpu/fp8_gemm_ref.h - the emulated FP8 GEMM reference of SPEC.md section 6 and the
 * whole-matrix quantisers that feed it.
 *
 * What it is: C = A B^T from E4M3 codes and their scales, in the TN form every FP8 product of
 * SPEC section 6 takes (A (M, K), B (N, K), K contiguous in both), computed as SPEC defines
 * the reference: each 128-block of K sums its exact products q_a q_b in double (exact: every
 * product of two E4M3 values is an integer multiple of 2^-18 of magnitude <= 448^2 < 2^17.7,
 * so a sum of 128 is a multiple of 2^-18 below 2^24.7, an integer below 2^43 < 2^53 in those
 * units), is multiplied by s_a s_b (a double product of two floats, exact) with one rounding,
 * the blocks are summed in double, and the result is rounded once to FP32. It is the yardstick for the GPU's FP8 GEMMs (which must lie
 * within a budget derived from Hopper's in-block accumulation) and for the CPU emulation.
 * What it is not: fast (one double multiply-add per product, no blocking), or the op-table
 * entry (the CPU emulation quantises, dequantises and calls its FP32 GEMM).
 *
 * Scales (Fp8Operand.block):
 *   0: 1x128 tiles, one scale per row and per 128 of K:      scale[r * nkb + kb]
 *   1: 128x128 blocks, one per 128 rows and per 128 of K:    scale[(r / 128) * nkb + kb]
 *   with nkb = ceil(K / 128); the last tile/block of a row may be partial (amax over its valid
 *   elements, fp8.h). The three GEMMs of a Linear layer y = x W^T (x (T, in), W (out, in)):
 *     Fprop  y  (T, out)  = x (T, in) 1x128           . W   (out, in) 128x128
 *     Dgrad  dx (T, in)   = dy (T, out) 1x128         . W^T (in, out) 128x128 (transposed copy)
 *     Wgrad  dW (out, in) = dy^T (out, T) 1x128 pow2  . x^T (in, T) 1x128 pow2 (T padded with 0)
 *
 * Calling sequence:
 *     fp8_quantize_matrix(x, T, in, in, 0, 0, xq, in, xs);       // activations, 1x128
 *     fp8_quantize_matrix(W, out, in, in, 1, 0, wq, in, ws);     // weights, 128x128
 *     Fp8Operand a = { xq, in, xs, 0 }, b = { wq, in, ws, 1 };
 *     fp8_gemm_ref(T, out, in, &a, &b, y, out);
 */
#ifndef DSTRAIN_KERNELS_CPU_FP8_GEMM_REF_H
#define DSTRAIN_KERNELS_CPU_FP8_GEMM_REF_H

#include <stdint.h>

typedef struct Fp8Operand {
    const uint8_t *q;       /* (rows, K) E4M3 codes, row-major, leading dimension ld */
    int ld;
    const float *scale;     /* layout by block, see above */
    int block;              /* 0: 1x128 tiles; 1: 128x128 blocks */
} Fp8Operand;

/* number of 128-wide blocks along K: ceil(K / 128) */
int fp8_kblocks(int K);

/* x (rows, K) FP32, row-major with leading dimension ldx -> q (rows, K) codes with leading
 * dimension ldq and the scales in the layout of `block` (pow2: power-of-two scales). */
void fp8_quantize_matrix(const float *x, int rows, int K, int ldx, int block, int pow2,
                         uint8_t *q, int ldq, float *scale);

/* The inverse: x[r * ldx + k] = e4m3_to_float(q) * scale (FP32, as the CPU emulation feeds
 * its GEMM). */
void fp8_dequantize_matrix(const uint8_t *q, int rows, int K, int ldq, int block,
                           const float *scale, float *x, int ldx);

/* c (M, N) FP32 with leading dimension ldc, OVERWRITTEN with A (M, K) B (N, K)^T. K >= 1. */
void fp8_gemm_ref(int M, int N, int K, const Fp8Operand *a, const Fp8Operand *b, float *c,
                  int ldc);

#endif
