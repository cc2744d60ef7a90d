/* tests/tools/fp8_dump.c - kernels/fp8.h's encodings of a dense set of floats, and some
 * quantised tiles, as text for tests/interop/test_fp8_ml_dtypes.py, which recomputes them
 * with PyPI's ml_dtypes (an independent implementation). A test tool, not part of dstrain.
 * Usage: fp8_dump [SEED]    (writes to stdout)
 * Lines (all numbers hex; floats as their FP32 bits):
 *   # amax_min BITS                                 FP8_AMAX_MIN
 *   v XBITS E4M3 BF16                               x, e4m3_from_float(x), bf16_from_float(x)
 *   t POW2 N SCALEBITS X1 .. XN Q1 .. QN            fp8_quantize_tile of x[0..N)
 * The floats: every code's value, every midpoint between neighbouring codes and one float
 * either side, the saturation region, inf, NaN, a strided sweep over all bit patterns, random
 * magnitudes over and beyond E4M3's range, random bit patterns, and BF16 ties. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "kernels/fp8.h"

static uint64_t state;

static uint64_t rnd64(void)     /* splitmix64 */
{
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rnd_unit(void) { return (double)(rnd64() >> 11) * 0x1p-53; }

static float rnd_logu(double lo, double hi)    /* +-2^u, u uniform in [lo, hi) */
{
    float v = (float)exp2(lo + (hi - lo) * rnd_unit());
    return (rnd64() & 1) ? -v : v;
}

static void value(float x)
{
    printf("v %08x %02x %04x\n", (unsigned)fp8_float_bits(x), e4m3_from_float(x), bf16_from_float(x));
}

static void both_signs(float x) { value(x); value(-x); }

static void tile(const float *x, int n, int pow2)
{
    uint8_t q[FP8_TILE];
    float s;
    fp8_quantize_tile(x, n, pow2, q, &s);
    printf("t %d %d %08x", pow2, n, (unsigned)fp8_float_bits(s));
    for (int i = 0; i < n; i++) printf(" %08x", (unsigned)fp8_float_bits(x[i]));
    for (int i = 0; i < n; i++) printf(" %02x", q[i]);
    printf("\n");
}

int main(int argc, char **argv)
{
    unsigned long long seed = argc > 1 ? strtoull(argv[1], NULL, 10) : 1;
    state = seed;
    printf("# fp8_dump seed %llu\n# amax_min %08x\n", seed, (unsigned)fp8_float_bits(FP8_AMAX_MIN));
    for (int c = 0; c < 256; c++) value(e4m3_to_float((uint8_t)c));
    for (int c = 0; c < 0x7E; c++) {
        float mid = (e4m3_to_float((uint8_t)c) + e4m3_to_float((uint8_t)(c + 1))) / 2;
        both_signs(mid);
        both_signs(nextafterf(mid, 0.0f));
        both_signs(nextafterf(mid, 1e9f));
    }
    const float edge[] = { 448.0f, 456.0f, 464.0f, 472.0f, 480.0f, 496.0f, 512.0f, 1e4f, 3.4e38f,
                           INFINITY, NAN, 0.0f, 0x1p-10f, 0x1p-11f, 0x1p-149f, 0x1p-126f };
    for (size_t i = 0; i < sizeof edge / sizeof edge[0]; i++) {
        both_signs(edge[i]);
        both_signs(nextafterf(edge[i], 0.0f));
        both_signs(nextafterf(edge[i], INFINITY));
    }
    for (uint64_t u = 0; u < 0x100000000ull; u += 32771) value(fp8_bits_float((uint32_t)u));
    for (int i = 0; i < 100000; i++) value(rnd_logu(-14, 10));       /* E4M3 range and beyond */
    for (int i = 0; i < 50000; i++) value(fp8_bits_float((uint32_t)rnd64()));
    for (int i = 0; i < 20000; i++) {    /* BF16 ties and their neighbours */
        uint32_t u = ((uint32_t)rnd64() & 0xFFFF0000u) | 0x8000u;
        value(fp8_bits_float(u));
        value(fp8_bits_float(u - 1));
        value(fp8_bits_float(u + 1));
    }

    float x[FP8_TILE] = { 0 };
    tile(x, FP8_TILE, 0);                /* all zero: the floor */
    for (int t = 0; t < 600; t++) {
        int n = t % 3 == 0 ? FP8_TILE : 1 + (int)(rnd64() % FP8_TILE);
        double mag = -50 + 80 * rnd_unit();    /* includes tiles below the amax floor */
        for (int i = 0; i < n; i++) x[i] = rnd_logu(mag - 24, mag);
        if (t % 5 == 0) x[0] = ldexpf(448.0f, (int)mag);  /* amax / 448 a power of two */
        tile(x, n, t & 1);
    }
    return fflush(stdout) == 0 ? 0 : 1;
}
