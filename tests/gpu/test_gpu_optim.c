/* tests/gpu/test_gpu_optim.c - the fused optimizer kernels (kernels/cuda/cuda_optim.h)
 * against the CPU path they replace: the norm of the gradients (o->sumsq) with the clip
 * scale (runtime/optim.c clip_scale), the scaled gradients (o->scale) and AdamW with BF16
 * moments (cpu_adamw_update, bf16_moments = 1), on fresh random inputs (seed printed), with
 * and without clipping, at n = 1 and n = 1000003, steps 1 and 7. Outputs start poisoned
 * (NaN / all-ones BF16) so an unwritten element fails.
 * Without a GPU: "SKIP: no CUDA GPU (...)", exit 77.
 */
#include <cuda_runtime.h>
#include "kernels/fp8.h"
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/testing.h"
#include "gpu_check.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_optim.h"
#include "runtime/optim.h"

#define U64 (1.0 / 9007199254740992.0)

static void *dmalloc(size_t b)
{
    void *p = NULL;
    CHECK(cudaMalloc(&p, b ? b : 1) == cudaSuccess);
    return p;
}
static void up(void *d, const void *h, size_t b) { CHECK(cudaMemcpy(d, h, b, cudaMemcpyHostToDevice) == cudaSuccess); }
static void down(void *h, const void *d, size_t b) { CHECK(cudaMemcpy(h, d, b, cudaMemcpyDeviceToHost) == cudaSuccess); }

static uint16_t bits16(float x)
{
    uint32_t u;
    x = bf16_round(x);
    memcpy(&u, &x, 4);
    return (uint16_t)(u >> 16);
}

static float from16(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float x;
    memcpy(&x, &u, 4);
    return x;
}

typedef struct Case { size_t n; int step; double clip_frac; } Case;

/* Worst |got - want| / (atol + rtol |want|) over n; NaN fails. */
static double worst_share(const float *got, const float *want, size_t n, double atol, double rtol)
{
    double w = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(got[i])) return INFINITY;
        double d = fabs((double)got[i] - want[i]);
        w = fmax(w, d / (atol + rtol * fabs(want[i])));
    }
    return w;
}

static void run_case(Ops *c, Rng *r, Case k)
{
    const size_t n = k.n;
    float *p = host_uniform(r, n, -1, 1), *g = host_normal(r, n, 0.1f), *m = host_normal(r, n, 0.01f);
    float *v = host_uniform(r, n, 0, 0.01f);
    uint16_t *m16 = xmalloc(n * 2), *v16 = xmalloc(n * 2), *pb = xmalloc(n * 2);
    for (size_t i = 0; i < n; i++) { m[i] = bf16_round(m[i]); v[i] = bf16_round(v[i]); m16[i] = bits16(m[i]); v16[i] = bits16(v[i]); }
    /* GPU: norm + scale, then the fused pass */
    float *dp = dmalloc(n * 4), *dg = dmalloc(n * 4);
    uint16_t *dm = dmalloc(n * 2), *dv = dmalloc(n * 2), *dpb = dmalloc(n * 2);
    double *dn = dmalloc(CUDA_GRAD_NORM_SCRATCH_BYTES), gn[2];
    up(dp, p, n * 4); up(dg, g, n * 4); up(dm, m16, n * 2); up(dv, v16, n * 2);
    CHECK(cudaMemset(dpb, 0xff, n * 2) == cudaSuccess);                      /* BF16 NaN */
    /* CPU: the trainer's path */
    double cnorm = sqrt(c->sumsq(c, g, n)), clip = k.clip_frac * cnorm, cscale = clip_scale(cnorm, clip);
    cuda_grad_norm_clip(dg, n, clip, dn, NULL);
    CudaAdamW a = { 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, k.step };
    cuda_adamw_fused(dp, dpb, dg, dm, dv, n, &a, dn + 1, NULL);
    CHECK(cudaDeviceSynchronize() == cudaSuccess);
    down(gn, dn, sizeof gn);
    if (cscale != 1.0) c->scale(c, g, (float)cscale, n);
    AdamArgs ca = { a.lr, a.beta1, a.beta2, a.eps, a.weight_decay, k.step, 1, 1.0f };
    c->adamw_update(c, p, g, m, v, n, &ca);
    /* the norm: two FP64 sums of n exact squares, each within (n - 1) u64 relative; the
     * square root halves it; the scale clip / norm adds one rounding */
    double nb = (double)n * U64 + 4 * U64;
    EXPECT(fabs(gn[0] - cnorm) <= nb * cnorm, "n %zu: grad norm %.17g, cpu %.17g", n, gn[0], cnorm);
    EXPECT(fabs(gn[1] - cscale) <= 2 * nb * cscale, "n %zu: clip scale %.17g, cpu %.17g", n, gn[1], cscale);
    /* AdamW: the budgets of test_gpu_ops' test_adamw (16 u32 (1 + lr max|t|), BF16 moments one
     * BF16 ulp, 2^-7 relative); the scaled gradient may differ by one FP32 rounding of the scale,
     * inside the same budget */
    float *gp = xmalloc(n * 4), *gm = xmalloc(n * 4), *gv = xmalloc(n * 4), *gb = xmalloc(n * 4), *cb = xmalloc(n * 4);
    down(gp, dp, n * 4); down(m16, dm, n * 2); down(v16, dv, n * 2); down(pb, dpb, n * 2);
    double bc1 = 1 - pow(0.9, k.step), bc2 = 1 - pow(0.95, k.step), tmax = 0;
    for (size_t i = 0; i < n; i++) {
        gm[i] = from16(m16[i]); gv[i] = from16(v16[i]); gb[i] = from16(pb[i]); cb[i] = bf16_round(p[i]);
        tmax = fmax(tmax, fabs(m[i] / bc1) / (sqrt(v[i] / bc2) + 1e-8));
    }
    double sp = worst_share(gp, p, n, 16 * U32 * (1 + 1e-2 * tmax), 0), sm = worst_share(gm, m, n, 1e-30, 1.0 / 128);
    double sv = worst_share(gv, v, n, 1e-30, 1.0 / 128), sb = worst_share(gb, cb, n, 1e-30, 1.0 / 128);
    printf("  fused adamw n %zu step %d, clip scale %.3f: norm %.6g (cpu %.6g), worst share of budget: param %.2f, m %.2f, "
           "v %.2f, bf16 copy %.2f\n", n, k.step, gn[1], gn[0], cnorm, sp, sm, sv, sb);
    EXPECT(sp <= 1 && sm <= 1 && sv <= 1 && sb <= 1, "n %zu step %d: fused AdamW outside its budget", n, k.step);
    cudaFree(dp); cudaFree(dg); cudaFree(dm); cudaFree(dv); cudaFree(dpb); cudaFree(dn);
    free(p); free(g); free(m); free(v); free(m16); free(v16); free(pb); free(gp); free(gm); free(gv); free(gb); free(cb);
}

int main(void)
{
    char why[256];
    if (cuda_gpu_count(why, sizeof why) == 0) {
        printf("SKIP: no CUDA GPU (%s)\n", why);
        return 77;
    }
    Rng r;
    rng_seed(&r, test_seed());
    Ops *c = ops_cpu_create(0, PREC_FP32);
    const Case cases[] = { { 1, 1, 2.0 }, { 1000003, 1, 2.0 }, { 1000003, 7, 0.5 }, { 1000003, 3, 0.0 } };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(c, &r, cases[i]);
    ops_destroy(c);
    return test_finish();
}
