/* kernels/cpu/fp8_gemm_ref.c - the emulated FP8 GEMM reference and the whole-matrix
 * quantisers (API and numerics: kernels/cpu/fp8_gemm_ref.h; numbers: kernels/fp8.h).
 *
 * What it is not: a fast GEMM; the op table's FP8 Linear dequantises and calls its FP32 GEMM.
 * Reference: SPEC.md section 6.
 *
 * GCC contracts a * b + c into an FMA by default in GNU C where the target has one
 * (-march=native), so the scaling of a block sum may be fused with the sum over blocks: one
 * rounding fewer, within every budget derived from the header's rounding count. */
#include "kernels/cpu/fp8_gemm_ref.h"

#include "kernels/fp8.h"

int fp8_kblocks(int K)
{
    return (K + FP8_TILE - 1) / FP8_TILE;
}

static inline size_t scale_index(int block, int r, int kb, int nkb)
{
    return (size_t)(block ? r / FP8_TILE : r) * nkb + kb;
}

void fp8_quantize_matrix(const float *x, int rows, int K, int ldx, int block, int pow2,
                         uint8_t *q, int ldq, float *scale)
{
    int nkb = fp8_kblocks(K);
    int rstep = block ? FP8_TILE : 1;
    for (int r0 = 0; r0 < rows; r0 += rstep) {
        int nr = rows - r0 < rstep ? rows - r0 : rstep;
        for (int kb = 0; kb < nkb; kb++) {
            int k0 = kb * FP8_TILE, nk = K - k0 < FP8_TILE ? K - k0 : FP8_TILE;
            fp8_quantize_block(x + (size_t)r0 * ldx + k0, ldx, nr, nk, pow2,
                               q + (size_t)r0 * ldq + k0, ldq, &scale[scale_index(block, r0, kb, nkb)]);
        }
    }
}

void fp8_dequantize_matrix(const uint8_t *q, int rows, int K, int ldq, int block,
                           const float *scale, float *x, int ldx)
{
    int nkb = fp8_kblocks(K);
    for (int r = 0; r < rows; r++)
        for (int k = 0; k < K; k++)
            x[(size_t)r * ldx + k] = fp8_dequantize(q[(size_t)r * ldq + k],
                                                   scale[scale_index(block, r, k / FP8_TILE, nkb)]);
}

void fp8_gemm_ref(int M, int N, int K, const Fp8Operand *a, const Fp8Operand *b, float *c,
                  int ldc)
{
    int nkb = fp8_kblocks(K);
    for (int m = 0; m < M; m++) {
        const uint8_t *qa = a->q + (size_t)m * a->ld;
        for (int n = 0; n < N; n++) {
            const uint8_t *qb = b->q + (size_t)n * b->ld;
            double acc = 0.0;
            for (int kb = 0; kb < nkb; kb++) {
                int k0 = kb * FP8_TILE, k1 = K - k0 < FP8_TILE ? K : k0 + FP8_TILE;
                double blk = 0.0;           /* exact (header) */
                for (int k = k0; k < k1; k++)
                    blk += (double)e4m3_to_float(qa[k]) * (double)e4m3_to_float(qb[k]);
                double s = (double)a->scale[scale_index(a->block, m, kb, nkb)]
                         * (double)b->scale[scale_index(b->block, n, kb, nkb)];
                acc += blk * s;
            }
            c[(size_t)m * ldc + n] = (float)acc;
        }
    }
}
