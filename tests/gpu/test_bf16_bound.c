/* tests/gpu/test_bf16_bound.c - CPU simulation of the BF16 budgets of test_gpu_ops.c, so the
 * tolerances the GPU tests use are checked on every machine, GPU or not.
 *
 * What it checks: (1) the GEMM element budget gemm_elem_budget (gpu_check.h) at the small
 * shapes of test_gpu_ops (K = 1, 3, 7, 9), simulating the GPU's BF16 path (operands rounded
 * to BF16 to nearest even, exact products, FP32 accumulation and beta = 1 accumulate) against
 * the CPU's FP32 path, over many simulated runs of those checks: with the true BF16 unit
 * roundoff u16 = 2^-8 no element may exceed its budget; with 1/512 (half of it, the value once
 * in gpu_check.h) most runs must fail, which shows the simulation can tell the two apart.
 * (2) the absolute floor attn_bwd_floor_bf16 of the attention backward at T = 1, simulating
 * the GPU's order of operations (scores and dP from BF16 operands, dS K in BF16), where the
 * CPU's increments are exactly 0: the simulated dq and dk must stay within the floor, and must
 * be non-zero in some runs (the floor is needed at all).
 * (3) the output rounding of act results on a bf16 pair, bf16_act_budget (gpu_check.h): two
 * FP32 values within a budget b of each other, both rounded to BF16, anywhere in the binade
 * and placed astride a rounding midpoint, must differ by no more than it; with 2^-9 in place
 * of u16 the astride cases must mostly fail (the straddle term is needed, and sized).
 * What it is not: a check of the GPU (test_gpu_ops is); the simulation uses one summation
 * order, which the bounds cover like any other.
 */
#include <math.h>
#include "kernels/fp8.h"
#include <stdio.h>
#include <stdlib.h>

#include "../unit/testing.h"
#include "gpu_check.h"
#include "runtime/common.h"

/* One simulated element C = c0 + sum_k a_k b_k: CPU in FP32, GPU from BF16 operands. Returns
 * whether |gpu - cpu| fits the budget (with the rtol 2 u32 |cpu| of test_gpu_ops' calls). */
static int gemm_element_fits(Rng *r, int K, int accumulate, double u16)
{
    float c0 = accumulate ? 2 * rng_uniform(r) - 1 : 0, cpu = 0, gpu = 0;
    double absprod = 0;
    for (int k = 0; k < K; k++) {
        float a = 2 * rng_uniform(r) - 1, b = 2 * rng_uniform(r) - 1;
        cpu = fmaf(a, b, cpu);
        gpu += bf16_round(a) * bf16_round(b);       /* the BF16 product is exact in FP32 */
        absprod += fabs((double)a * b);
    }
    cpu += c0;
    gpu += c0;
    double budget = gemm_elem_budget(1, u16, K, absprod) + 1e-30 + 2 * U32 * fabs(cpu);
    return fabs((double)gpu - cpu) <= budget;
}

/* One simulated run of test_gpu_ops' small GEMM checks: shapes (N, IC, OC) 1x1x1, 1x7x3,
 * 5x1x9; forward (N*OC elements, K = IC), input gradient (N*IC, K = OC, accumulating),
 * weight gradient (OC*IC, K = N, accumulating). Returns the number of elements over budget. */
static int gemm_run(Rng *r, double u16)
{
    static const int shapes[3][3] = { { 1, 1, 1 }, { 1, 7, 3 }, { 5, 1, 9 } };
    int bad = 0;
    for (int s = 0; s < 3; s++) {
        int N = shapes[s][0], IC = shapes[s][1], OC = shapes[s][2];
        for (int i = 0; i < N * OC; i++) bad += !gemm_element_fits(r, IC, 0, u16);
        for (int i = 0; i < N * IC; i++) bad += !gemm_element_fits(r, OC, 1, u16);
        for (int i = 0; i < OC * IC; i++) bad += !gemm_element_fits(r, N, 1, u16);
    }
    return bad;
}

/* Attention backward at B = T = H = Dqk = Dv = 1, scale 1, inputs in [-1, 1], gradients
 * starting at base: the CPU's dq and dk increments are 0 (P = 1, dP - D = 0). The GPU's:
 * S = s bf(q) bf(k), P = exp(S - lse) with the CPU's lse, dP = bf(dO) bf(v), D = dO o in FP32
 * (o = v, the CPU's output), dS = P (dP - D), dq += s bf(dS) bf(k), dk += s bf(dS) bf(q).
 * Returns the larger share of the floor; *nonzero counts runs with a non-zero increment. */
static double attn_run(Rng *r, int *nonzero)
{
    const float s = 1.0f;
    float q = 2 * rng_uniform(r) - 1, k = 2 * rng_uniform(r) - 1, v = 2 * rng_uniform(r) - 1;
    float dO = 2 * rng_uniform(r) - 1, base = 2 * rng_uniform(r) - 1;
    float lse = s * q * k, o = v;                       /* the CPU's forward */
    float S = s * (bf16_round(q) * bf16_round(k)), P = expf(S - lse);
    float dS = P * (bf16_round(dO) * bf16_round(v) - dO * o);
    float dq = base + s * (bf16_round(dS) * bf16_round(k)), dk = base + s * (bf16_round(dS) * bf16_round(q));
    double fq = attn_bwd_floor_bf16(U16, 1, 1, s, 1, 1, 1, 1, 1, 1);
    double fk = attn_bwd_floor_bf16(U16, 1, 1, s, 1, 1, 1, 1, 1, 1);      /* psum = T = 1 */
    double eq = fabs((double)dq - base), ek = fabs((double)dk - base);
    *nonzero += eq > 0 || ek > 0;
    /* the caller adds 4 u32 (the accumulate into base) to the floor, as test_gpu_ops does */
    return fmax(eq / (fq + 4 * U32), ek / (fk + 4 * U32));
}

/* Two FP32 results within b of each other (b up to 2^-12 of their size, the scale of the
 * ops' FP32 budgets and beyond), rounded to BF16; astride: on either side of the midpoint
 * between two neighbouring BF16 values (the case where rounding moves them a whole BF16 ulp
 * apart). Returns |difference| as a share of bf16_act_budget_u(b, ref, u16). */
static double act_round_run(Rng *r, double u16, int astride)
{
    float x = (2 * rng_uniform(r) - 1) * ldexpf(1.0f, (int)(rng_u32(r) % 40) - 20);
    float b = fabsf(x) * ldexpf(rng_uniform(r), -12), ra, rb;
    if (astride) {
        /* bf16 value lo, then the FP32 midpoint away from zero: half a BF16 ulp (bit 15) */
        float mid = fp8_bits_float(fp8_float_bits(bf16_round(x)) + 0x8000u);
        float t = rng_uniform(r);
        ra = mid - (mid > 0 ? 1 : -1) * t * b;
        rb = mid + (mid > 0 ? 1 : -1) * (1 - t) * b;
    } else {
        ra = x;
        rb = x + (2 * rng_uniform(r) - 1) * b;
    }
    double ref = bf16_round(ra), got = bf16_round(rb);
    double budget = bf16_act_budget_u(b, ref, u16);
    return budget > 0 ? fabs(got - ref) / budget : (got == ref ? 0 : INFINITY);
}

int main(void)
{
    Rng r;
    rng_seed(&r, test_seed());
    const int runs = 4000;
    int fail_true = 0, fail_half = 0, worst_elems = 0;
    for (int i = 0; i < runs; i++) {
        int b = gemm_run(&r, U16);
        fail_true += b > 0;
        worst_elems = b > worst_elems ? b : worst_elems;
        fail_half += gemm_run(&r, 1.0 / 512) > 0;
    }
    printf("GEMM budget, %d simulated runs of the small-shape checks: u16 = 2^-8: %d failed; "
           "u16 = 2^-9: %d failed (%.1f%%)\n", runs, fail_true, fail_half, 100.0 * fail_half / runs);
    EXPECT(fail_true == 0, "the GEMM budget with u16 = 2^-8 failed %d of %d runs (up to %d elements)", fail_true,
           runs, worst_elems);
    /* each run has 69 elements, 39 of them K = 1 products whose two rounding errors (each up
     * to 2^-8 relative) often add past a half-size budget: 99.8% of runs failed when this was
     * written, so under half would mean the simulation no longer models the rounding */
    EXPECT(fail_half > runs / 2, "the GEMM budget with u16 = 2^-9 failed only %d of %d runs", fail_half, runs);

    double worst = 0;
    int nonzero = 0;
    for (int i = 0; i < runs; i++) worst = fmax(worst, attn_run(&r, &nonzero));
    printf("attention backward T = 1, %d simulated runs: worst %.1f%% of the BF16 floor, %d with a non-zero "
           "increment\n", runs, 100 * worst, nonzero);
    EXPECT(worst <= 1.0, "the attention-backward floor was exceeded: %.3g of it", worst);
    EXPECT(nonzero > runs / 10, "only %d of %d runs had a non-zero GPU increment: the floor is untested", nonzero,
           runs);

    double act_worst = 0;
    int act_half_fail = 0;
    for (int i = 0; i < runs; i++) {
        act_worst = fmax(act_worst, fmax(act_round_run(&r, U16, 0), act_round_run(&r, U16, 1)));
        act_half_fail += act_round_run(&r, 1.0 / 512, 1) > 1.0;
    }
    printf("act output rounding, %d simulated pairs each way: worst %.1f%% of bf16_act_budget; with 2^-9, "
           "%d of %d astride pairs over\n", runs, 100 * act_worst, act_half_fail, runs);
    EXPECT(act_worst <= 1.0, "bf16_act_budget was exceeded: %.3g of it", act_worst);
    /* astride, the two round a whole BF16 ulp apart, 2^-8 to 2^-7 of |ref| by where in the
     * binade ref lies; 2 * 2^-9 |ref| covers only the low end, so most must fail */
    EXPECT(act_half_fail > runs / 2, "with u16 = 2^-9 only %d of %d astride pairs exceeded the budget", act_half_fail,
           runs);
    return test_finish();
}
