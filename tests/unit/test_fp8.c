/* tests/unit/test_fp8.c - the FP8 (E4M3) and BF16 numbers of kernels/fp8.h: every code, every
 * midpoint, saturation, subnormals, signed zeros, NaN, the amax floor, power-of-two scales,
 * partial tiles and blocks, BF16 round-to-nearest-even.
 *
 * What it is not: the GEMM reference (test_fp8_gemm.c) or the cross-check against an
 * independent library (tests/interop/test_fp8_ml_dtypes.sh, PyPI's ml_dtypes).
 * Reference: SPEC.md section 6. The references here are written from the format's definition,
 * not from the header's bit tricks: a code decodes as (1 + m/8) 2^(e-7) or m 2^-9 in double;
 * the nearest code of x is found by a binary search over the sorted positive codes and a
 * comparison with the midpoint of its two neighbours (midpoints of E4M3 values have 5
 * significant bits, so they and the comparisons are exact in double); the nearest BF16 by
 * comparing the distances to its two BF16 neighbours in double (exact: both lie within one
 * binade of x, so each distance has at most 24 significant bits).
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels/fp8.h"
#include "tests/unit/testing.h"

static uint64_t rng_state;

static uint64_t rnd64(void)     /* splitmix64 */
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rnd_unit(void) { return (double)(rnd64() >> 11) * 0x1p-53; }

/* sign * 2^u, u uniform in [lo, hi): magnitudes spread evenly over binades */
static float rnd_logu(double lo, double hi)
{
    float v = (float)exp2(lo + (hi - lo) * rnd_unit());
    return (rnd64() & 1) ? -v : v;
}

static uint32_t bits(float x) { return fp8_float_bits(x); }

/* ---- references from the definition ---- */

static double ref_decode(int c)    /* NaN for 0x7F / 0xFF */
{
    int s = c & 0x80, e = (c >> 3) & 15, m = c & 7;
    if ((c & 0x7F) == 0x7F) return NAN;
    double v = e == 0 ? ldexp(m, -9) : ldexp(1.0 + m / 8.0, e - 7);
    return s ? -v : v;
}

static double ref_pos[0x7F];             /* ref_decode(0..0x7E), increasing */

/* nearest positive code of x >= 0, ties to the even code, saturating at 0x7E */
static int ref_encode_pos(double x)
{
    int lo = 0, hi = 0x7E;
    if (x >= 448.0) return 0x7E;
    while (lo < hi) {                      /* largest code with value <= x */
        int mid = (lo + hi + 1) / 2;
        if (ref_pos[mid] <= x) lo = mid; else hi = mid - 1;
    }
    double v0 = ref_pos[lo], v1 = ref_pos[lo + 1], mid = (v0 + v1) / 2;
    if (x < mid) return lo;
    if (x > mid) return lo + 1;
    return (lo & 1) ? lo + 1 : lo;
}

static int ref_encode(float x)
{
    if (isnan(x)) return 0x7F;
    int c = ref_encode_pos(fabs((double)x));
    return signbit(x) ? (c | 0x80) : c;
}

static uint16_t ref_bf16(float x)
{
    uint32_t u = bits(x);
    if (isnan(x)) return 0;                /* callers check NaN separately */
    uint32_t lo = u & 0xFFFF0000u, hi = lo + 0x10000u;
    if ((u & 0x7FFFFFFFu) >= 0x7F7F8000u)  /* beyond max bf16 + half ulp: inf (IEEE overflow) */
        return (uint16_t)((u & 0x80000000u) >> 16 | 0x7F80u);
    double d0 = fabs((double)x - (double)fp8_bits_float(lo));
    double d1 = fabs((double)fp8_bits_float(hi) - (double)x);
    if (d0 < d1) return (uint16_t)(lo >> 16);
    if (d1 < d0) return (uint16_t)(hi >> 16);
    return (uint16_t)(((lo >> 16) & 1) ? hi >> 16 : lo >> 16);
}

/* ---- E4M3 conversions ---- */

static void test_table_and_roundtrip(void)
{
    int bad_table = 0, bad_trip = 0;
    for (int c = 0; c < 256; c++) {
        float v = e4m3_to_float((uint8_t)c);
        double r = ref_decode(c);
        if (isnan(r) ? !isnan(v) : (bits(v) != bits((float)r))) bad_table++;
        if (!isnan(r) && e4m3_from_float(v) != c) bad_trip++;
    }
    EXPECT(bad_table == 0, "%d table entries differ from the format's definition", bad_table);
    EXPECT(bad_trip == 0, "%d codes do not round-trip", bad_trip);
    EXPECT(e4m3_to_float(0x7E) == 448.0f && e4m3_to_float(0x08) == 0x1p-6f
           && e4m3_to_float(0x01) == 0x1p-9f, "448 / 2^-6 / 2^-9 codes wrong");
    EXPECT(bits(e4m3_to_float(0x80)) == 0x80000000u, "0x80 is not -0");
}

/* every midpoint of two neighbouring codes goes to the even one; one float either side goes
 * to the nearer one */
static void test_midpoints(void)
{
    int bad = 0;
    for (int i = 0; i < 0x7E; i++) {
        for (int neg = 0; neg < 2; neg++) {
            float v0 = e4m3_to_float((uint8_t)i), v1 = e4m3_to_float((uint8_t)(i + 1));
            float mid = (v0 + v1) / 2;     /* exact: 5 significant bits */
            int c0 = i | (neg << 7), c1 = (i + 1) | (neg << 7), even = (i & 1) ? c1 : c0;
            float s = neg ? -1.0f : 1.0f;
            if (e4m3_from_float(s * mid) != even) bad++;
            if (e4m3_from_float(s * nextafterf(mid, 0.0f)) != c0) bad++;
            if (e4m3_from_float(s * nextafterf(mid, 1e9f)) != c1) bad++;
            if (ref_encode(s * mid) != even) bad++;    /* the reference agrees too */
        }
    }
    EXPECT(bad == 0, "%d midpoint cases wrong", bad);
}

/* Saturation. The midpoint between 448 (0x7E) and the would-be 480 (0x7F, NaN in E4M3fn) is
 * 464, which ties to the even 0x7E; a plain round-to-nearest-even would send (464, 480] to
 * 0x7F; the header saturates every |x| >= 448 to +-448, infinities included. */
static void test_saturation(void)
{
    const float big[] = { 448.0f, nextafterf(448.0f, 1e9f), 455.0f, nextafterf(464.0f, 0.0f), 464.0f,
                          nextafterf(464.0f, 1e9f), 480.0f, 481.0f, 1e4f, 1e30f, FLT_MAX, INFINITY };
    int bad = 0;
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
        if (e4m3_from_float(big[i]) != 0x7E) bad++;
        if (e4m3_from_float(-big[i]) != 0xFE) bad++;
    }
    EXPECT(bad == 0, "%d saturation cases wrong (want 0x7E / 0xFE)", bad);
    /* below 448: 416 (0x7D, odd) and 448 (0x7E, even) have the midpoint 432 */
    EXPECT(e4m3_from_float(nextafterf(448.0f, 0.0f)) == 0x7E && e4m3_from_float(432.0f) == 0x7E
           && e4m3_from_float(nextafterf(432.0f, 0.0f)) == 0x7D && e4m3_from_float(440.0f) == 0x7E,
           "rounding just below 448 wrong");
}

static void test_subnormals_zero_nan(void)
{
    EXPECT(e4m3_from_float(0x1p-9f) == 0x01 && e4m3_from_float(0x1p-10f) == 0x00
           && e4m3_from_float(nextafterf(0x1p-10f, 1.0f)) == 0x01
           && e4m3_from_float(3 * 0x1p-10f) == 0x02 && e4m3_from_float(5 * 0x1p-10f) == 0x02
           && e4m3_from_float(15 * 0x1p-10f) == 0x08 && e4m3_from_float(nextafterf(15 * 0x1p-10f, 0.0f)) == 0x07
           && e4m3_from_float(7 * 0x1p-9f) == 0x07, "subnormal rounding wrong");
    EXPECT(e4m3_from_float(FLT_MIN) == 0x00 && e4m3_from_float(0x1p-149f) == 0x00
           && e4m3_from_float(-0x1p-149f) == 0x80 && e4m3_from_float(-0x1p-11f) == 0x80,
           "values below 2^-10 must round to a signed zero");
    EXPECT(e4m3_from_float(0.0f) == 0x00 && e4m3_from_float(-0.0f) == 0x80, "signed zeros lost");
    EXPECT(e4m3_from_float(NAN) == 0x7F && e4m3_from_float(-NAN) == 0x7F
           && e4m3_from_float(fp8_bits_float(0x7F800001u)) == 0x7F
           && e4m3_from_float(fp8_bits_float(0xFFFFFFFFu)) == 0x7F, "NaN must give 0x7F");
    EXPECT(isnan(e4m3_to_float(0x7F)) && isnan(e4m3_to_float(0xFF)), "0x7F / 0xFF must decode to NaN");
}

/* every 97th positive float bit pattern from 0 to inf (about 22 million, every exponent and a
 * spread of mantissas) against the reference; the negative half by symmetry on every 16th */
static void test_sweep(void)
{
    long bad = 0, n = 0;
    for (uint64_t u = 0; u <= 0x7F800000u; u += 97, n++) {
        float x = fp8_bits_float((uint32_t)u);
        int got = e4m3_from_float(x), want = ref_encode(x);
        if (got != want && bad++ < 5) fprintf(stderr, "  0x%08X (%.9g): 0x%02X, want 0x%02X\n",
                                              (unsigned)u, x, got, want);
        if ((n & 15) == 0 && e4m3_from_float(-x) != (want | 0x80)) bad++;
    }
    EXPECT(bad == 0, "%ld of %ld swept floats encode wrongly", bad, n);
}

/* ---- BF16 ---- */

static void test_bf16(void)
{
    EXPECT(bf16_from_float(1.0f + 0x1p-8f) == 0x3F80 && bf16_from_float(1.0f + 3 * 0x1p-8f) == 0x3F82
           && bf16_from_float(nextafterf(1.0f + 0x1p-8f, 2.0f)) == 0x3F81
           && bf16_from_float(-(1.0f + 0x1p-8f)) == 0xBF80, "BF16 ties / above-tie wrong");
    EXPECT(bf16_from_float(INFINITY) == 0x7F80 && bf16_from_float(-INFINITY) == 0xFF80
           && bf16_from_float(FLT_MAX) == 0x7F80 && bf16_from_float(fp8_bits_float(0x7F7F7FFFu)) == 0x7F7F,
           "BF16 inf / overflow wrong");
    int nan_ok = 1;
    const uint32_t nans[] = { 0x7F800001u, 0x7FC00000u, 0xFF800001u, 0x7FFFFFFFu, 0xFFFF8000u };
    for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++) {
        uint16_t h = bf16_from_float(fp8_bits_float(nans[i]));
        if (!isnan(bf16_to_float(h)) || (h >> 15) != (nans[i] >> 31)) nan_ok = 0;
    }
    EXPECT(nan_ok, "BF16 NaN must stay NaN with its sign");
    EXPECT(bf16_from_float(0.0f) == 0x0000 && bf16_from_float(-0.0f) == 0x8000
           && bf16_from_float(fp8_bits_float(0x00008000u)) == 0x0000
           && bf16_from_float(fp8_bits_float(0x00018000u)) == 0x0002
           && bf16_from_float(fp8_bits_float(0x00008001u)) == 0x0001, "BF16 subnormals wrong");
    EXPECT(bits(bf16_round(3.0f)) == bits(3.0f) && bf16_round(1.0f + 0x1p-7f) == 1.0f + 0x1p-7f,
           "bf16_round changes a BF16 value");
    long bad = 0, n = 0;
    for (uint64_t u = 0; u < 0x100000000ull; u += 4099, n++) {
        float x = fp8_bits_float((uint32_t)u);
        if (isnan(x)) continue;
        if (bf16_from_float(x) != ref_bf16(x)) bad++;
    }
    EXPECT(bad == 0, "%ld of %ld swept floats round to BF16 wrongly", bad, n);
}

/* ---- scales ---- */

static int is_pow2(float s) { return (bits(s) & 0x007FFFFFu) == 0 && s > 0 && isfinite(s); }

static void test_scales(void)
{
    float floor_s = FP8_AMAX_MIN / 448.0f;
    EXPECT(fp8_scale(0.0f, 0) == floor_s && fp8_scale(1e-20f, 0) == floor_s
           && fp8_scale(FP8_AMAX_MIN, 0) == floor_s, "amax below the floor must use the floor");
    EXPECT(fp8_scale(2e-12f, 0) == 2e-12f / 448.0f, "amax above the floor must be its own");
    /* the floor's justification (fp8.h): two scales multiply, and the smallest dequantised
     * value 2^-9 s, stay normal FP32 */
    EXPECT(floor_s * floor_s >= FLT_MIN && 0x1p-9f * floor_s >= FLT_MIN,
           "FP8_AMAX_MIN lets products of scales underflow");
    EXPECT(isnan(fp8_scale(NAN, 0)) && isinf(fp8_scale(INFINITY, 1)), "NaN / inf amax must propagate");
    int bad = 0;
    for (int i = 0; i < 100000; i++) {
        float amax = i < 64 ? ldexpf(448.0f, i - 48) : fabsf(rnd_logu(-45, 120));
        float s = fp8_scale(amax, 0), s2 = fp8_scale(amax, 1);
        if (!is_pow2(s2) || !(s2 >= s) || !(s2 < 2 * s)) bad++;
        if (is_pow2(s) && s2 != s) bad++;               /* i < 64: amax/448 a power of two */
        float x = rnd_logu(-40, 0) * amax;              /* a value of such a tile */
        float y = x / s2;
        if ((double)y * s2 != (double)x) bad++;         /* division by 2^k: exact */
        uint8_t q = fp8_quantize(x, s2);
        float d = fp8_dequantize(q, s2);
        if ((double)d != (double)e4m3_to_float(q) * s2) bad++;  /* dequantising: exact */
    }
    EXPECT(bad == 0, "%d power-of-two scale checks failed", bad);
}

/* ---- tiles and blocks ---- */

/* |dequant(quant(x)) - x| <= budget. Derivation: y = fl(x / s) = (x / s)(1 + d1), |d1| <= 2^-24;
 * E4M3 rounding of y errs by at most half a step: 2^-4 |y| for a normal y (3 mantissa bits),
 * 2^-10 below 2^-6; the product q s errs by 2^-24 relative. Multiplying by s and collecting:
 * |err| <= 2^-4 |x| (1 + 2^-24) + 2^-10 s + 2^-23 (|x| + 2^-4 |x|) + tiny; budget below. */
static double tile_budget(float x, float s)
{
    return 0x1p-4 * fabs(x) * (1 + 0x1p-21) + 0x1p-10 * s * (1 + 0x1p-21) + 0x1p-22 * fabs(x);
}

static void check_tile(const float *x, int n, int pow2, int *bad, double *worst)
{
    uint8_t q[FP8_TILE];
    float s, d[FP8_TILE];
    fp8_quantize_tile(x, n, pow2, q, &s);
    fp8_dequantize_tile(q, n, s, d);
    double amax = 0;
    for (int i = 0; i < n; i++) amax = fmax(amax, fabs(x[i]));
    float want_s = fp8_scale((float)amax, pow2);
    if (bits(s) != bits(want_s)) (*bad)++;
    for (int i = 0; i < n; i++) {
        if (q[i] != e4m3_from_float(x[i] / s)) (*bad)++;
        double b = tile_budget(x[i], s), e = fabs((double)d[i] - x[i]);
        if (e > b) (*bad)++;
        if (e / b > *worst) *worst = e / b;
        if (!pow2 && fabs(x[i]) == amax && amax > FP8_AMAX_MIN && (q[i] & 0x7F) != 0x7E) (*bad)++;
    }
    /* zero padding to a full tile changes neither the scale nor a code */
    float xp[FP8_TILE] = { 0 };
    uint8_t qp[FP8_TILE];
    float sp;
    memcpy(xp, x, (size_t)n * sizeof *x);
    fp8_quantize_tile(xp, FP8_TILE, pow2, qp, &sp);
    if (bits(sp) != bits(s) || memcmp(qp, q, (size_t)n) != 0) (*bad)++;
    for (int i = n; i < FP8_TILE; i++) if (qp[i] != 0x00) (*bad)++;
}

static void test_tiles(void)
{
    int bad = 0;
    double worst = 0;
    const int ns[] = { 1, 2, 37, 127, 128 };
    for (int t = 0; t < 2000; t++) {
        int n = ns[t % 5], pow2 = (t / 5) & 1;
        float x[FP8_TILE + 1];
        double mag = -30 + 60 * rnd_unit();             /* tile magnitude 2^-30 .. 2^30 */
        for (int i = 0; i < n; i++) x[i] = rnd_logu(mag - 20, mag);
        x[n] = 1e30f;                                   /* beyond the tile: must be ignored */
        check_tile(x, n, pow2, &bad, &worst);
    }
    EXPECT(bad == 0, "%d tile checks failed", bad);
    printf("tiles: worst error %.3f of the budget\n", worst);

    float z[FP8_TILE] = { 0 }, s;
    uint8_t q[FP8_TILE];
    fp8_quantize_tile(z, FP8_TILE, 0, q, &s);
    int nz = 0;
    for (int i = 0; i < FP8_TILE; i++) nz += q[i] != 0;
    EXPECT(nz == 0 && s == FP8_AMAX_MIN / 448.0f, "an all-zero tile must give zero codes and the floor scale");

    float x[4] = { 1.0f, NAN, -2.0f, 0.5f }, d[4];
    fp8_quantize_tile(x, 4, 0, q, &s);
    EXPECT(s == 2.0f / 448.0f && q[1] == 0x7F && q[2] == 0xFE, "a NaN element must stay NaN and not set the scale");
    x[1] = INFINITY;
    fp8_quantize_tile(x, 4, 1, q, &s);
    fp8_dequantize_tile(q, 4, s, d);
    EXPECT(isnan(d[0]) && isnan(d[1]) && isnan(d[2]) && isnan(d[3]), "an inf element must make the tile NaN");
}

static void test_blocks(void)
{
    enum { LD = 300, LDQ = 140 };
    static float x[130 * LD], d[130 * LD];
    static uint8_t q[130 * LDQ];
    const int shapes[][2] = { { 128, 128 }, { 5, 77 }, { 1, 1 }, { 128, 3 }, { 1, 128 } };
    int bad = 0;
    for (int t = 0; t < 10; t++) {
        int rows = shapes[t % 5][0], cols = shapes[t % 5][1], pow2 = t >= 5;
        for (int i = 0; i < 130 * LD; i++) x[i] = rnd_logu(-10, 3);
        memset(q, 0xAA, sizeof q);
        float s;
        fp8_quantize_block(x, LD, rows, cols, pow2, q, LDQ, &s);
        double amax = 0;
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) amax = fmax(amax, fabs(x[r * LD + c]));
        if (bits(s) != bits(fp8_scale((float)amax, pow2))) bad++;
        for (int r = 0; r < 130; r++)
            for (int c = 0; c < LDQ; c++) {
                int in = r < rows && c < cols;
                if (in && q[r * LDQ + c] != e4m3_from_float(x[r * LD + c] / s)) bad++;
                if (!in && q[r * LDQ + c] != 0xAA) bad++;      /* nothing written outside */
            }
        fp8_dequantize_block(q, LDQ, rows, cols, s, d, LD);
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                if (bits(d[r * LD + c]) != bits(e4m3_to_float(q[r * LDQ + c]) * s)) bad++;
        /* zero padding to 128 x 128 changes neither scale nor codes */
        static float xp[128 * 128];
        static uint8_t qp[128 * 128];
        memset(xp, 0, sizeof xp);
        for (int r = 0; r < rows; r++) memcpy(xp + r * 128, x + r * LD, (size_t)cols * sizeof(float));
        float sp;
        fp8_quantize_block(xp, 128, 128, 128, pow2, qp, 128, &sp);
        if (bits(sp) != bits(s)) bad++;
        for (int r = 0; r < 128; r++)
            for (int c = 0; c < 128; c++)
                if (qp[r * 128 + c] != (r < rows && c < cols ? q[r * LDQ + c] : 0)) bad++;
    }
    EXPECT(bad == 0, "%d block checks failed", bad);
}

int main(void)
{
    rng_state = test_seed();
    for (int c = 0; c <= 0x7E; c++) ref_pos[c] = ref_decode(c);
    test_table_and_roundtrip();
    test_midpoints();
    test_saturation();
    test_subnormals_zero_nan();
    test_sweep();
    test_bf16();
    test_scales();
    test_tiles();
    test_blocks();
    return test_finish();
}
