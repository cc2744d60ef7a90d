/* kernels/fp8.h - the FP8 (E4M3) and BF16 numbers of dstrain, defined once for the CPU
 * emulation and the CUDA kernels, bit for bit (SPEC.md section 6, DeepSeek-V3 TR section 3.3).
 *
 * What it is: conversions FP32 <-> E4M3 and FP32 <-> BF16, the scale rule, and the quantisers
 * of one 1x128 tile and one 128x128 block with their dequantisers. C99, header only, every
 * function `static inline`; nvcc compiles them as __host__ __device__ (FP8_HD), so a CUDA
 * kernel calls the very code the CPU emulation runs.
 * What it is not: a GEMM (kernels/cpu/fp8_gemm_ref.h is the reference), the layout of scale
 * tensors in the op table, or E5M2 (the TR uses E4M3 everywhere).
 *
 * Formats
 *   E4M3, the "fn" variant (OCP FP8, CUDA's __nv_fp8_e4m3): sign, 4 exponent bits (bias 7),
 *   3 mantissa bits; no infinities; S.1111.111 (0x7F, 0xFF) is NaN; largest finite 448
 *   (0x7E), smallest normal 2^-6 (0x08), subnormals m * 2^-9 for m = 1..7 (codes 0x01..0x07).
 *   BF16: the top 16 bits of an IEEE FP32 (same exponent range, 8 significant bits).
 *
 * e4m3_from_float(x), on the exact value of the float x:
 *   - round to nearest, ties to even (the code whose last mantissa bit is 0);
 *   - |x| >= 448 gives +-448 (0x7E / 0xFE): values in (448, 464] round to 448 anyway (464 is
 *     the midpoint towards the would-be code 480 = 0x7F, and 0x7E is the even one); above 464,
 *     +-inf included, they saturate to +-448 instead of becoming the NaN code (SPEC: finite
 *     values saturate; inf is treated the same, as a tile with an inf element is made NaN by
 *     its scale instead, see below). ml_dtypes' float8_e4m3fn cast differs there (NaN above
 *     464 and for +-inf): tests/interop/test_fp8_ml_dtypes.py compares only where they agree;
 *   - NaN (either sign, any payload) gives 0x7F;
 *   - +-0, and values that round to zero, keep their sign (0x00 / 0x80).
 * bf16_from_float(x): round to nearest, ties to even on the bits; finite values too large
 *   round to +-inf as IEEE says; NaN stays NaN (quiet bit set, sign and top payload kept).
 *
 * Scale of a tile or block (fp8_scale): amax = max |x| over the valid elements (NaN elements
 *   ignored), raised to FP8_AMAX_MIN; s = amax / 448 (IEEE FP32 division); where SPEC asks for
 *   a power of two (backward transposed copies, dispatched activations), s is rounded UP to
 *   the next power of two on its bits, so s <= s2 < 2 s and x / s2, q * s2 are exact.
 *   q = e4m3_from_float(x / s); the dequantised value is e4m3_to_float(q) * s (one FP32 product).
 *   An infinite element makes s infinite and the whole tile NaN after dequantisation (x / inf
 *   = 0, inf / inf = NaN, 0 * inf = NaN), so an overflow is never silently hidden.
 * Partial tiles and blocks (K not a multiple of 128): amax over the valid elements; padding is
 *   0, which changes no amax and quantises to code 0x00, so a zero-padded full tile gives the
 *   same scale and codes as the partial one (tests/unit/test_fp8.c checks this).
 *
 * Bit-exactness CPU = GPU: integer operations on the bits, comparisons, one IEEE division per
 *   value (__fdiv_rn on the device, so --use_fast_math cannot change it) and products only in
 *   the dequantisers (no a * b + c that a compiler could contract into an FMA).
 *
 * Calling sequence (one activation row of K values in 1x128 tiles along K):
 *     for (int k0 = 0; k0 < K; k0 += FP8_TILE) {
 *         int n = K - k0 < FP8_TILE ? K - k0 : FP8_TILE;
 *         fp8_quantize_tile(x + k0, n, 0, q + k0, &scale[k0 / FP8_TILE]);
 *         fp8_dequantize_tile(q + k0, n, scale[k0 / FP8_TILE], xq + k0);  // emulated operand
 *     }
 * A weight W (N, K) row-major in 128x128 blocks: fp8_quantize_block(W + n0 * K + k0, K, rows,
 * cols, 0, Wq + n0 * K + k0, K, &scale[(n0 / 128) * nkb + k0 / 128]) for each block.
 */
#ifndef DSTRAIN_KERNELS_FP8_H
#define DSTRAIN_KERNELS_FP8_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define FP8_HD __host__ __device__
#else
#define FP8_HD
#endif

#define FP8_TILE 128          /* tile length and block side along K (SPEC section 6) */
#define FP8_E4M3_MAX 448.0f   /* largest finite E4M3 */
#define FP8_E4M3_NAN 0x7F     /* the NaN code e4m3_from_float writes */

/* The amax floor. It only has to keep s = amax / 448 away from 0; it should touch no tile that
 * carries signal. Lower bound: with amax >= 1e-12, s >= 2.2e-15 ~ 2^-48.7, so the product of
 * two scales that a GEMM epilogue forms (>= 2^-97.5) and the smallest dequantised nonzero value
 * 2^-9 * s (~ 2^-57.7) are normal FP32 numbers, nothing underflows into subnormals, and 1 / s
 * (<= 4.5e14) is finite. Upper bound: a tile whose amax lies below the floor is quantised as if
 * its amax were the floor, losing log2(floor / amax) binades of E4M3's ~17.8
 * (448 / 2^-9 = 2^17.8). The test helpers of DeepSeek's DeepGEMM clamp at 1e-4 (activations
 * at inference); in training that would bite gradient tiles of a mean-over-tokens loss, whose
 * elements are O(1 / tokens) (a tile with amax 1e-6 would lose log2(1e-4 / 1e-6) = 6.6
 * binades); 1e-12 lies six orders of magnitude below such tiles. */
#define FP8_AMAX_MIN 1e-12f

/* ---- bits ---- */

FP8_HD static inline uint32_t fp8_float_bits(float x)
{
#ifdef __CUDA_ARCH__
    return __float_as_uint(x);
#else
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
#endif
}

FP8_HD static inline float fp8_bits_float(uint32_t u)
{
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
#endif
}

/* IEEE round-to-nearest FP32 division on host and device alike */
FP8_HD static inline float fp8_div(float a, float b)
{
#ifdef __CUDA_ARCH__
    return __fdiv_rn(a, b);
#else
    return a / b;
#endif
}

/* ---- E4M3 ---- */

/* The FP32 bits of every E4M3 code (index = code); 0x7F and 0xFF decode to a quiet NaN.
 * Generated from the format's definition; tests/unit/test_fp8.c re-derives every entry. */
#define FP8_E4M3_TABLE_BITS { \
    0x00000000u, 0x3B000000u, 0x3B800000u, 0x3BC00000u, 0x3C000000u, 0x3C200000u, 0x3C400000u, 0x3C600000u, \
    0x3C800000u, 0x3C900000u, 0x3CA00000u, 0x3CB00000u, 0x3CC00000u, 0x3CD00000u, 0x3CE00000u, 0x3CF00000u, \
    0x3D000000u, 0x3D100000u, 0x3D200000u, 0x3D300000u, 0x3D400000u, 0x3D500000u, 0x3D600000u, 0x3D700000u, \
    0x3D800000u, 0x3D900000u, 0x3DA00000u, 0x3DB00000u, 0x3DC00000u, 0x3DD00000u, 0x3DE00000u, 0x3DF00000u, \
    0x3E000000u, 0x3E100000u, 0x3E200000u, 0x3E300000u, 0x3E400000u, 0x3E500000u, 0x3E600000u, 0x3E700000u, \
    0x3E800000u, 0x3E900000u, 0x3EA00000u, 0x3EB00000u, 0x3EC00000u, 0x3ED00000u, 0x3EE00000u, 0x3EF00000u, \
    0x3F000000u, 0x3F100000u, 0x3F200000u, 0x3F300000u, 0x3F400000u, 0x3F500000u, 0x3F600000u, 0x3F700000u, \
    0x3F800000u, 0x3F900000u, 0x3FA00000u, 0x3FB00000u, 0x3FC00000u, 0x3FD00000u, 0x3FE00000u, 0x3FF00000u, \
    0x40000000u, 0x40100000u, 0x40200000u, 0x40300000u, 0x40400000u, 0x40500000u, 0x40600000u, 0x40700000u, \
    0x40800000u, 0x40900000u, 0x40A00000u, 0x40B00000u, 0x40C00000u, 0x40D00000u, 0x40E00000u, 0x40F00000u, \
    0x41000000u, 0x41100000u, 0x41200000u, 0x41300000u, 0x41400000u, 0x41500000u, 0x41600000u, 0x41700000u, \
    0x41800000u, 0x41900000u, 0x41A00000u, 0x41B00000u, 0x41C00000u, 0x41D00000u, 0x41E00000u, 0x41F00000u, \
    0x42000000u, 0x42100000u, 0x42200000u, 0x42300000u, 0x42400000u, 0x42500000u, 0x42600000u, 0x42700000u, \
    0x42800000u, 0x42900000u, 0x42A00000u, 0x42B00000u, 0x42C00000u, 0x42D00000u, 0x42E00000u, 0x42F00000u, \
    0x43000000u, 0x43100000u, 0x43200000u, 0x43300000u, 0x43400000u, 0x43500000u, 0x43600000u, 0x43700000u, \
    0x43800000u, 0x43900000u, 0x43A00000u, 0x43B00000u, 0x43C00000u, 0x43D00000u, 0x43E00000u, 0x7FC00000u, \
    0x80000000u, 0xBB000000u, 0xBB800000u, 0xBBC00000u, 0xBC000000u, 0xBC200000u, 0xBC400000u, 0xBC600000u, \
    0xBC800000u, 0xBC900000u, 0xBCA00000u, 0xBCB00000u, 0xBCC00000u, 0xBCD00000u, 0xBCE00000u, 0xBCF00000u, \
    0xBD000000u, 0xBD100000u, 0xBD200000u, 0xBD300000u, 0xBD400000u, 0xBD500000u, 0xBD600000u, 0xBD700000u, \
    0xBD800000u, 0xBD900000u, 0xBDA00000u, 0xBDB00000u, 0xBDC00000u, 0xBDD00000u, 0xBDE00000u, 0xBDF00000u, \
    0xBE000000u, 0xBE100000u, 0xBE200000u, 0xBE300000u, 0xBE400000u, 0xBE500000u, 0xBE600000u, 0xBE700000u, \
    0xBE800000u, 0xBE900000u, 0xBEA00000u, 0xBEB00000u, 0xBEC00000u, 0xBED00000u, 0xBEE00000u, 0xBEF00000u, \
    0xBF000000u, 0xBF100000u, 0xBF200000u, 0xBF300000u, 0xBF400000u, 0xBF500000u, 0xBF600000u, 0xBF700000u, \
    0xBF800000u, 0xBF900000u, 0xBFA00000u, 0xBFB00000u, 0xBFC00000u, 0xBFD00000u, 0xBFE00000u, 0xBFF00000u, \
    0xC0000000u, 0xC0100000u, 0xC0200000u, 0xC0300000u, 0xC0400000u, 0xC0500000u, 0xC0600000u, 0xC0700000u, \
    0xC0800000u, 0xC0900000u, 0xC0A00000u, 0xC0B00000u, 0xC0C00000u, 0xC0D00000u, 0xC0E00000u, 0xC0F00000u, \
    0xC1000000u, 0xC1100000u, 0xC1200000u, 0xC1300000u, 0xC1400000u, 0xC1500000u, 0xC1600000u, 0xC1700000u, \
    0xC1800000u, 0xC1900000u, 0xC1A00000u, 0xC1B00000u, 0xC1C00000u, 0xC1D00000u, 0xC1E00000u, 0xC1F00000u, \
    0xC2000000u, 0xC2100000u, 0xC2200000u, 0xC2300000u, 0xC2400000u, 0xC2500000u, 0xC2600000u, 0xC2700000u, \
    0xC2800000u, 0xC2900000u, 0xC2A00000u, 0xC2B00000u, 0xC2C00000u, 0xC2D00000u, 0xC2E00000u, 0xC2F00000u, \
    0xC3000000u, 0xC3100000u, 0xC3200000u, 0xC3300000u, 0xC3400000u, 0xC3500000u, 0xC3600000u, 0xC3700000u, \
    0xC3800000u, 0xC3900000u, 0xC3A00000u, 0xC3B00000u, 0xC3C00000u, 0xC3D00000u, 0xC3E00000u, 0xFFC00000u \
}

static const uint32_t fp8_e4m3_bits_host[256] = FP8_E4M3_TABLE_BITS;
#ifdef __CUDACC__
static __constant__ uint32_t fp8_e4m3_bits_dev[256] = FP8_E4M3_TABLE_BITS;
#endif

FP8_HD static inline float e4m3_to_float(uint8_t code)
{
#ifdef __CUDA_ARCH__
    return fp8_bits_float(fp8_e4m3_bits_dev[code]);
#else
    return fp8_bits_float(fp8_e4m3_bits_host[code]);
#endif
}

FP8_HD static inline uint8_t e4m3_from_float(float x)
{
    uint32_t u = fp8_float_bits(x);
    uint32_t sign = (u >> 24) & 0x80u;
    uint32_t a = u & 0x7FFFFFFFu;                    /* |x| */
    if (a > 0x7F800000u) return FP8_E4M3_NAN;
    if (a >= 0x43E00000u) return (uint8_t)(sign | 0x7Eu);   /* |x| >= 448, inf: saturate */
    if (a >= 0x3C800000u) {                          /* |x| >= 2^-6: a normal E4M3 */
        /* keep 3 of the 23 mantissa bits, ties to even; a carry out of the mantissa moves
         * into the exponent, which is the next code. Float exponent E maps to E - 120. */
        uint32_t r = a + 0x7FFFFu + ((a >> 20) & 1u);
        return (uint8_t)(sign | ((r >> 20) - (120u << 3)));
    }
    /* |x| < 2^-6: code = |x| / 2^-9 rounded to an integer 0..8, ties to even (8 is the
     * smallest normal, 0x08). |x| = m 2^(E-150) with m the 24-bit significand, so
     * |x| / 2^-9 = m 2^-(141-E), a right shift of m by 141 - E >= 21. */
    uint32_t e = a >> 23;
    if (e == 0 || 141u - e > 24u) return (uint8_t)sign;  /* below 2^-10: rounds to 0 */
    uint32_t shift = 141u - e;
    uint32_t m = (a & 0x7FFFFFu) | 0x800000u;
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return (uint8_t)(sign | q);
}

/* ---- BF16 ---- */

FP8_HD static inline uint16_t bf16_from_float(float x)
{
    uint32_t u = fp8_float_bits(x);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

FP8_HD static inline float bf16_to_float(uint16_t h)
{
    return fp8_bits_float((uint32_t)h << 16);
}

/* x rounded to the nearest BF16, as an FP32 */
FP8_HD static inline float bf16_round(float x)
{
    return bf16_to_float(bf16_from_float(x));
}

/* ---- scales ---- */

/* The smallest power of two >= s, for s a positive normal FP32 (what fp8_scale passes; the
 * floor keeps s >= 2.2e-15). inf and NaN pass through; 0 and subnormals give 2^-126. */
FP8_HD static inline float fp8_pow2_ceil(float s)
{
    uint32_t u = fp8_float_bits(s), ex = u & 0x7F800000u;
    if (ex == 0x7F800000u) return s;
    if (ex == 0) return fp8_bits_float(0x00800000u);
    if (u & 0x007FFFFFu) ex += 0x00800000u;          /* not a power of two: next binade */
    return fp8_bits_float(ex);
}

/* max |x_i| over n values, NaN ignored (each NaN element quantises to the NaN code itself);
 * on the bits, so it is exact and independent of order */
FP8_HD static inline float fp8_amax(const float *x, int n)
{
    uint32_t m = 0;
    for (int i = 0; i < n; i++) {
        uint32_t a = fp8_float_bits(x[i]) & 0x7FFFFFFFu;
        if (a <= 0x7F800000u && a > m) m = a;
    }
    return fp8_bits_float(m);
}

/* The scale of a tile whose largest magnitude is amax (>= 0); pow2 != 0: a power of two */
FP8_HD static inline float fp8_scale(float amax, int pow2)
{
    if (amax < FP8_AMAX_MIN) amax = FP8_AMAX_MIN;
    float s = fp8_div(amax, FP8_E4M3_MAX);
    return pow2 ? fp8_pow2_ceil(s) : s;
}

/* One value under scale s */
FP8_HD static inline uint8_t fp8_quantize(float x, float s)
{
    return e4m3_from_float(fp8_div(x, s));
}

FP8_HD static inline float fp8_dequantize(uint8_t q, float s)
{
    return e4m3_to_float(q) * s;
}

/* ---- tiles and blocks ---- */

/* A 1x128 tile: n (1..FP8_TILE) valid values x[0..n) -> codes q[0..n) and *scale.
 * Writes exactly n codes; a caller that needs a padded tile writes code 0 beyond n. */
FP8_HD static inline void fp8_quantize_tile(const float *x, int n, int pow2, uint8_t *q,
                                            float *scale)
{
    float s = fp8_scale(fp8_amax(x, n), pow2);
    for (int i = 0; i < n; i++) q[i] = fp8_quantize(x[i], s);
    *scale = s;
}

FP8_HD static inline void fp8_dequantize_tile(const uint8_t *q, int n, float scale, float *x)
{
    for (int i = 0; i < n; i++) x[i] = fp8_dequantize(q[i], scale);
}

/* A 128x128 block: rows x cols (each 1..FP8_TILE) valid values of a row-major matrix,
 * x[r * ldx + c], -> codes q[r * ldq + c] and *scale (amax over the valid values). Writes
 * exactly rows x cols codes. */
FP8_HD static inline void fp8_quantize_block(const float *x, int ldx, int rows, int cols,
                                             int pow2, uint8_t *q, int ldq, float *scale)
{
    float amax = 0.0f;
    for (int r = 0; r < rows; r++) {
        float a = fp8_amax(x + (size_t)r * ldx, cols);
        if (a > amax) amax = a;
    }
    float s = fp8_scale(amax, pow2);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) q[(size_t)r * ldq + c] = fp8_quantize(x[(size_t)r * ldx + c], s);
    *scale = s;
}

FP8_HD static inline void fp8_dequantize_block(const uint8_t *q, int ldq, int rows, int cols,
                                               float scale, float *x, int ldx)
{
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) x[(size_t)r * ldx + c] = fp8_dequantize(q[(size_t)r * ldq + c], scale);
}

#endif
