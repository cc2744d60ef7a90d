/* tests/unit/fd.h - the finite-difference harness of the op tests (test_ops.c, test_route.c):
 * test allocations, random inputs, and fd_check, which compares an analytic gradient with
 * central differences of a forward. The derivation of its budget is at the top of
 * test_ops.c. Include after testing.h; the including test seeds `rng`. */
#ifndef DSTRAIN_TEST_FD_H
#define DSTRAIN_TEST_FD_H

#include <math.h>
#include <string.h>

#include "runtime/common.h"
#include "tests/unit/testing.h"

#define EPS32 5.9604644775390625e-8   /* 2^-24, unit roundoff of FP32 */
#define FD_H 1e-2

static Rng rng;

/* ---- allocations freed at the end of each test ---- */

static void *arena[256];
static int arena_n;

static void *talloc(size_t bytes)
{
    CHECK(arena_n < 256);
    return arena[arena_n++] = xcalloc(1, bytes ? bytes : 1);
}

static void tfree_all(void)
{
    while (arena_n) free(arena[--arena_n]);
}

static float *randn(size_t n, float sd)
{
    float *x = talloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = sd * rng_normal(&rng);
    return x;
}

static float *fcopy(const float *x, size_t n)
{
    float *y = talloc(n * sizeof(float));
    memcpy(y, x, n * sizeof(float));
    return y;
}

static double maxabs(const float *x, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(x[i]));
    return m;
}

/* ---- finite-difference harness ---- */

typedef struct Probe {
    void (*forward)(void *ctx);   /* recompute the outputs from the current inputs */
    void *ctx;
    int nout;
    float *out[3];                /* outputs read by the loss */
    const float *R[3];            /* loss weights, same shapes */
    size_t n[3];
    double floor;                 /* error scale of an output below which |out| is not used */
    double c;                     /* relative rounding of an output or a gradient, in eps_f32 */
    double gfloor;                /* magnitude of the terms the analytic gradient sums */
} Probe;

/* Loss at the current inputs. With base: amp[o][j] becomes the largest |out_j| seen where
 * out_j differs from base (it stays -1 while out_j never changed). */
static double probe_eval(const Probe *p, float **base, double **amp)
{
    p->forward(p->ctx);
    double L = 0.0;
    for (int o = 0; o < p->nout; o++)
        for (size_t j = 0; j < p->n[o]; j++) {
            float y = p->out[o][j];
            L += (double)p->R[o][j] * y;
            if (base && y != base[o][j]) amp[o][j] = fmax(amp[o][j], fmax(fabs(y), fabs(base[o][j])));
        }
    return L;
}

static double fd_at(const Probe *p, float *x, float h, float **base, double **amp)
{
    float x0 = *x, xp = x0 + h, xm = x0 - h;
    *x = xp;
    double lp = probe_eval(p, base, amp);
    *x = xm;
    double lm = probe_eval(p, base, amp);
    *x = x0;
    return (lp - lm) / ((double)xp - (double)xm);
}

/* grad = after - before is the analytic dL/dx (before may be NULL: zero). M counts the outputs
 * that changed at any of x +- h, x +- 2h. */
static void fd_check(const char *label, const Probe *p, float *x, size_t nx, const float *after,
                     const float *before)
{
    float *base[3];
    double *amp[3];
    probe_eval(p, NULL, NULL);
    for (int o = 0; o < p->nout; o++) {
        base[o] = fcopy(p->out[o], p->n[o]);
        amp[o] = talloc(p->n[o] * sizeof(double));
    }
    double worst = 0.0, wg = 0.0, wfd = 0.0;
    size_t wi = 0;
    for (size_t i = 0; i < nx; i++) {
        for (int o = 0; o < p->nout; o++)
            for (size_t j = 0; j < p->n[o]; j++) amp[o][j] = -1.0;
        double fd1 = fd_at(p, x + i, (float)FD_H, base, amp);
        double fd2 = fd_at(p, x + i, (float)(2 * FD_H), base, amp);
        double M = 0.0, U = 0.0;
        for (int o = 0; o < p->nout; o++)
            for (size_t j = 0; j < p->n[o]; j++) {
                if (amp[o][j] >= 0.0) M += fabs(p->R[o][j]) * fmax(amp[o][j], p->floor);
                else U += fabs(p->R[o][j] * base[o][j]);
            }
        double b0 = before ? before[i] : 0.0, g = (double)after[i] - b0;
        double budget = p->c * EPS32 * M / FD_H + EPS32 * U / FD_H + 2.0 * fabs(fd2 - fd1) / 3.0
                        + EPS32 * (fabs(after[i]) + fabs(b0)) + p->c * EPS32 * fmax(fabs(g), p->gfloor);
        double share = fabs(g - fd1) / budget;
        if (!(share <= worst)) { worst = share; wi = i; wg = g; wfd = fd1; }
    }
    probe_eval(p, NULL, NULL);
    printf("  %-34s worst %.3g of budget (n=%zu)\n", label, worst, nx);
    EXPECT(worst <= 1.0, "%s: element %zu analytic %.9g, finite difference %.9g", label, wi, wg, wfd);
}

#endif
