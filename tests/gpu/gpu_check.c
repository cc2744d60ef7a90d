/* tests/gpu/gpu_check.c - see gpu_check.h: paired buffers on the CPU and CUDA tables and the
 * comparisons with budgets. Not a test by itself. */
#include "gpu_check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void pair_open(Pair *p, Precision prec)
{
    p->cpu = ops_cpu_create(0, prec);
    p->cpu32 = ops_cpu_create(0, PREC_FP32);
    p->gpu = ops_cuda_create(prec);
    p->prec = prec;
    p->tag = prec == PREC_BF16 ? "bf16" : "fp32";
}

void pair_close(Pair *p)
{
    ops_destroy(p->cpu);
    ops_destroy(p->cpu32);
    ops_destroy(p->gpu);
}

Buf buf_new(Pair *p, const float *host, size_t n)
{
    Buf b = { p->cpu->alloc(p->cpu, n * sizeof(float)), p->gpu->alloc(p->gpu, n * sizeof(float)), n, 0 };
    p->cpu->upload(p->cpu, b.c, host, n * sizeof(float));
    p->gpu->upload(p->gpu, b.g, host, n * sizeof(float));
    return b;
}

Buf buf_act(Pair *p, const float *host, size_t n)
{
    Buf b = { p->cpu->alloc(p->cpu, n * p->cpu->act_bytes), p->gpu->alloc(p->gpu, n * p->gpu->act_bytes), n, 1 };
    p->cpu->act_upload(p->cpu, A(b.c), host, n);
    p->gpu->act_upload(p->gpu, A(b.g), host, n);
    return b;
}

act *buf_act_c(Pair *p, const Buf *b, size_t at) { return act_at(p->cpu, A(b->c), at); }
act *buf_act_g(Pair *p, const Buf *b, size_t at) { return act_at(p->gpu, A(b->g), at); }

WPair wpair_new(Pair *p, float *master_c, float *master_g, int rows, int cols)
{
    WPair w;
    WgtType t = p->prec == PREC_FP32 ? WGT_FP32 : WGT_BF16;
    Ops *os[2] = { p->cpu, p->gpu };
    Wgt *ws[2] = { &w.c, &w.g };
    float *ms[2] = { master_c, master_g };
    for (int i = 0; i < 2; i++) {
        size_t bytes = os[i]->weight_bytes(os[i], t, rows, cols);
        wgt_bind(ws[i], os[i], ms[i], rows, cols, t, bytes ? os[i]->alloc(os[i], bytes) : NULL);
        os[i]->weight_refresh(os[i], ws[i]);
    }
    return w;
}

void wpair_free(Pair *p, WPair *w)
{
    if (w->c.data != w->c.master) p->cpu->free(p->cpu, w->c.data);
    if (w->g.data != w->g.master) p->gpu->free(p->gpu, w->g.data);
}

IBuf ibuf_new(Pair *p, const int32_t *host, size_t n)
{
    IBuf b = { p->cpu->alloc(p->cpu, n * sizeof(int32_t)), p->gpu->alloc(p->gpu, n * sizeof(int32_t)), n };
    p->cpu->upload(p->cpu, b.c, host, n * sizeof(int32_t));
    p->gpu->upload(p->gpu, b.g, host, n * sizeof(int32_t));
    return b;
}

static Buf poison(Pair *p, size_t n, int act)
{
    float *h = xmalloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = NAN;
    Buf b = act ? buf_act(p, h, n) : buf_new(p, h, n);
    free(h);
    return b;
}

Buf buf_poison(Pair *p, size_t n) { return poison(p, n, 0); }
Buf buf_act_poison(Pair *p, size_t n) { return poison(p, n, 1); }

void buf_free(Pair *p, Buf *b)
{
    p->cpu->free(p->cpu, b->c);
    p->gpu->free(p->gpu, b->g);
}

void ibuf_free(Pair *p, IBuf *b)
{
    p->cpu->free(p->cpu, b->c);
    p->gpu->free(p->gpu, b->g);
}

float *buf_host_cpu(Pair *p, const Buf *b)
{
    float *h = xmalloc((b->n ? b->n : 1) * sizeof(float));
    if (b->act) p->cpu->act_download(p->cpu, h, CA(b->c), b->n);
    else p->cpu->download(p->cpu, h, b->c, b->n * sizeof(float));
    return h;
}

float *buf_host_gpu(Pair *p, const Buf *b)
{
    float *h = xmalloc((b->n ? b->n : 1) * sizeof(float));
    if (b->act) p->gpu->act_download(p->gpu, h, CA(b->g), b->n);
    else p->gpu->download(p->gpu, h, b->g, b->n * sizeof(float));
    return h;
}

float *host_uniform(Rng *r, size_t n, float lo, float hi)
{
    float *h = xmalloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = lo + (hi - lo) * rng_uniform(r);
    return h;
}

float *host_normal(Rng *r, size_t n, float std)
{
    float *h = xmalloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = std * rng_normal(r);
    return h;
}

float *host_abs(const float *x, size_t n)
{
    float *h = xmalloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = fabsf(x[i]);
    return h;
}

double host_max_abs(const float *x, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

/* The worst share of budget over the elements and the normwise error; bound may be NULL
 * (atol everywhere); base (may be NULL) is subtracted from both before the normwise part. */
static int compare(Pair *p, const char *what, const Buf *b, const float *bound, double atol, double rtol,
                   double norm, const float *base)
{
    float *ref = buf_host_cpu(p, b), *got = buf_host_gpu(p, b);
    double worst = 0, d2 = 0, r2 = 0;
    size_t at = 0, nan = 0;
    for (size_t i = 0; i < b->n; i++) {
        if (isnan(got[i]) && !isnan(ref[i])) { nan++; continue; }
        double d = fabs((double)got[i] - ref[i]);
        double budget = (bound ? bound[i] : atol) + rtol * fabs(ref[i]);
        const int rounded = b->act && p->prec != PREC_FP32;
        if (rounded) budget = bf16_act_budget(budget, ref[i]);
        double share = d == 0 ? 0 : budget > 0 ? d / budget : INFINITY;
        if (share > worst) { worst = share; at = i; }
        double r = (double)ref[i] - (base ? base[i] : 0.0);
        /* the normwise part measures the computation: a BF16 output rounding that lands the
         * two on neighbouring values (bounded per element above) is taken out of it */
        if (rounded) d = fmax(0.0, d - 2 * U16 * (1 + 2 * U16) * fabs(ref[i]));
        d2 += d * d;
        r2 += r * r;
    }
    double rel = r2 > 0 ? sqrt(d2 / r2) : sqrt(d2);
    int ok = nan == 0 && worst <= 1.0 && (norm <= 0 || rel <= norm);
    printf("  %s %-46s worst %7.2f%% of budget", p->tag, what, 100 * worst);
    if (norm > 0) printf(", norm %.2e (budget %.0e)", rel, norm);
    if (nan) printf(", %zu NaN (unwritten or broken)", nan);
    if (!ok && b->n) printf("  <- FAIL at %zu: gpu %.9g cpu %.9g", at, got[at], ref[at]);
    printf("\n");
    free(ref);
    free(got);
    return ok;
}

int check_close(Pair *p, const char *what, const Buf *b, double atol, double rtol, double norm)
{
    return compare(p, what, b, NULL, atol, rtol, norm, NULL);
}

int check_bound(Pair *p, const char *what, const Buf *b, const float *bound, double rtol, double norm)
{
    return compare(p, what, b, bound, 0, rtol, norm, NULL);
}

int check_delta(Pair *p, const char *what, const Buf *b, const float *base, double atol, double rtol, double norm)
{
    return compare(p, what, b, NULL, atol, rtol, norm, base);
}

int check_delta_bound(Pair *p, const char *what, const Buf *b, const float *base, const float *bound, double rtol,
                      double norm)
{
    return compare(p, what, b, bound, 0, rtol, norm, base);
}

int check_exact(Pair *p, const char *what, const Buf *b)
{
    float *ref = buf_host_cpu(p, b), *got = buf_host_gpu(p, b);
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < b->n; i++)
        if (memcmp(&ref[i], &got[i], sizeof(float)) != 0 && !bad++) first = i;
    printf("  %s %-46s %s", p->tag, what, bad ? "DIFFERS" : "bit-identical");
    if (bad) printf("  <- FAIL: %zu of %zu differ, first at %zu: gpu %.9g cpu %.9g", bad, b->n, first, got[first],
                    ref[first]);
    printf("\n");
    free(ref);
    free(got);
    return bad == 0;
}

int check_exact_i(Pair *p, const char *what, const IBuf *b)
{
    int32_t *ref = xmalloc((b->n ? b->n : 1) * sizeof(int32_t)), *got = xmalloc((b->n ? b->n : 1) * sizeof(int32_t));
    p->cpu->download(p->cpu, ref, b->c, b->n * sizeof(int32_t));
    p->gpu->download(p->gpu, got, b->g, b->n * sizeof(int32_t));
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < b->n; i++)
        if (ref[i] != got[i] && !bad++) first = i;
    printf("  %s %-46s %s", p->tag, what, bad ? "DIFFERS" : "identical");
    if (bad) printf("  <- FAIL: %zu of %zu differ, first at %zu: gpu %d cpu %d", bad, b->n, first, got[first],
                    ref[first]);
    printf("\n");
    free(ref);
    free(got);
    return bad == 0;
}
