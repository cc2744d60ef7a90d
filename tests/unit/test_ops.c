/* tests/unit/test_ops.c - the CPU op table (kernels/ops.h) against independent references.
 *
 * What it checks: every backward entry against central finite differences of its forward
 * (accumulated in double), with gradient buffers pre-filled so that "+=" is checked too;
 * forward entries against plain double-precision loops (matmul, attention with causality,
 * RMSNorm, RoPE, SwiGLU, cross-entropy with ignored targets, gather/combine); AdamW against
 * the scalar formula over 3 steps; sumsq/add/scale; 1-thread vs 2-thread bit equality; the
 * DIE paths of the constructors. Routing and the permutation layout: test_route.c.
 * What it is not: a CUDA comparison (that test compares a GPU table against this CPU one).
 *
 * Finite differences. The loss is L = sum_j R_j out_j (R random, summed in double). For an
 * input x_i, fd(h) = (L(x+h) - L(x-h)) / (2h) has two errors:
 *   rounding:   each output the forward recomputes carries a relative error <= c * eps_f32
 *               (c derived per op, see the probes), so |fd(h) - fd_exact(h)| <= c eps M / h,
 *               M = sum over the outputs that depend on x_i of |R_j| * max(|out_j|, floor), the
 *               floor being the scale the op's rounding is relative to when it exceeds |out|
 *               (attention: max|v|, since out averages v). An output counts as dependent when
 *               it changes at any of x +- h, x +- 2h. One that never changes cancels exactly,
 *               but its true change over 2h may hide below one ulp, so the difference can miss
 *               up to |R_j| eps |out_j| / h of it: U = sum of those |R_j out_j|, budget eps U / h.
 *   truncation: h^2/6 f''' + O(h^4), estimated from the same function by Richardson:
 *               fd(2h) - fd(h) = 3 (h^2/6) f''' + O(h^4), so 2 |fd(2h) - fd(h)| / 3 bounds it
 *               with a factor-2 margin for the higher-order terms.
 * The analytic gradient is read as after - before (before: the random pre-fill), exact in
 * double up to the FP32 rounding of the stored sum, eps (|after| + |before|), plus its own
 * rounding c eps max(|g|, gfloor), gfloor bounding the terms the gradient sums (they may cancel).
 * budget = sum of those; the test reports the worst |g - fd| / budget.
 * With h = 1e-2 and O(1) inputs the budget is ~1e-4..1e-3 while a wrong gradient is off by
 * O(|g|) ~ 0.1..1, so the check can fail.
 */
#include <math.h>
#include "kernels/fp8.h"
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kernels/ops.h"
#ifdef DSTRAIN_HAVE_CUDA
#include "kernels/cuda/cuda_ops.h"
#endif
#include "runtime/common.h"
#include "tests/unit/testing.h"
#include "tests/unit/fd.h"

/* The CPU-FP32 table keeps activations as FP32 (kernels/ops.h "Roles") and the compute copy of
 * a Linear weight is its master, so host float buffers serve as act and Wgt directly. */
#define A(p) ((act *)(p))
#define CA(p) ((const act *)(p))
#define WG(p, rows, cols) (&(const Wgt){ (p), (rows), (cols), WGT_FP32, (p), 0 })

static Ops *ops;      /* 2 threads: the table under test */
static Ops *ops1;     /* 1 thread: for the thread-count equality checks */

/* |got - ref| <= bound elementwise; prints the worst share of the bound. */
static void expect_close(const char *label, const float *got, const double *ref, const double *bound, size_t n)
{
    double worst = 0.0;
    size_t wi = 0;
    for (size_t i = 0; i < n; i++) {
        double share = fabs(got[i] - ref[i]) / bound[i];
        if (!(share <= worst)) { worst = share; wi = i; }
    }
    printf("  %-34s worst %.3g of budget (n=%zu)\n", label, worst, n);
    EXPECT(worst <= 1.0, "%s: element %zu is %.9g, reference %.9g, bound %.3g", label, wi, got[wi], ref[wi],
           bound[wi]);
}

/* ---- Linear ---- */

typedef struct { float *out, *inp, *w; int N, IC, OC; } MatmulCtx;
static void matmul_fwd(void *c)
{
    MatmulCtx *m = c;
    ops->matmul_forward(ops, A(m->out), CA(m->inp), WG(m->w, m->OC, m->IC), m->N, m->IC, m->OC);
}

static void test_matmul(int N, int IC, int OC)
{
    printf("matmul N=%d IC=%d OC=%d\n", N, IC, OC);
    MatmulCtx m = { randn((size_t)N * OC, 1), randn((size_t)N * IC, 1), randn((size_t)OC * IC, 1), N, IC, OC };
    matmul_fwd(&m);
    /* a dot product of IC terms in FP32: |err| <= (IC + 1) eps sum_k |x_k w_k| (any order) */
    double *ref = talloc((size_t)N * OC * sizeof(double)), *bound = talloc((size_t)N * OC * sizeof(double));
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double s = 0.0, a = 0.0;
            for (int i = 0; i < IC; i++) {
                s += (double)m.inp[n * IC + i] * m.w[o * IC + i];
                a += fabs((double)m.inp[n * IC + i] * m.w[o * IC + i]);
            }
            ref[n * OC + o] = s;
            bound[n * OC + o] = (IC + 1) * EPS32 * a + 1e-30;
        }
    expect_close("forward vs double", m.out, ref, bound, (size_t)N * OC);

    float *R = randn((size_t)N * OC, 1);
    float *dinp0 = randn((size_t)N * IC, 1), *dinp = fcopy(dinp0, (size_t)N * IC);
    float *dw0 = randn((size_t)OC * IC, 1), *dw = fcopy(dw0, (size_t)OC * IC);
    ops->matmul_backward_input(ops, A(dinp), CA(R), WG(m.w, OC, IC), N, IC, OC);
    ops->matmul_backward_weight(ops, dw, WG(m.w, OC, IC), CA(R), CA(m.inp), N, IC, OC);
    /* floor: an output's error is relative to sum_k |x_k w_k| <= IC max|x| max|w|; the
     * gradients sum OC (dinp) or N (dweight) products with R */
    double mx = maxabs(m.inp, (size_t)N * IC), mw = maxabs(m.w, (size_t)OC * IC), mr = maxabs(R, (size_t)N * OC);
    int len = IC > OC ? IC : OC;
    len = len > N ? len : N;
    Probe p = { matmul_fwd, &m, 1, { m.out }, { R }, { (size_t)N * OC }, IC * mx * mw, len + 1,
                fmax(OC * mr * mw, N * mr * mx) };
    fd_check("backward_input (+=)", &p, m.inp, (size_t)N * IC, dinp, dinp0);
    fd_check("backward_weight (+=)", &p, m.w, (size_t)OC * IC, dw, dw0);
    tfree_all();
}

/* ---- RMSNorm ---- */

typedef struct { float *out, *rstd, *inp, *w; int N, C; float eps; } NormCtx;
static void norm_fwd(void *c)
{
    NormCtx *m = c;
    ops->rmsnorm_forward(ops, A(m->out), m->rstd, CA(m->inp), m->w, m->N, m->C, m->eps);
}

static void test_rmsnorm(int N, int C)
{
    printf("rmsnorm N=%d C=%d\n", N, C);
    size_t nc = (size_t)N * C;
    NormCtx m = { randn(nc, 1), randn(N, 1), randn(nc, 1), randn(C, 1), N, C, 1e-5f };
    /* |x| >= 0.5 keeps every row's RMS >= 0.5, the scale on which rstd bends, far above the
     * finite-difference step (with C = 1 and x near 0, x r(x) is a step of width sqrt(eps)) */
    for (size_t i = 0; i < nc; i++) m.inp[i] += copysignf(0.5f, m.inp[i]);
    norm_fwd(&m);
    /* mean(x^2) in double, then 1/sqrt rounded once to FP32 and two FP32 products: the
     * output is within 4 eps relative, rstd within 2 eps */
    double *ref = talloc(nc * sizeof(double)), *bound = talloc(nc * sizeof(double));
    double *rref = talloc(N * sizeof(double)), *rbound = talloc(N * sizeof(double));
    for (int n = 0; n < N; n++) {
        double ss = 0.0;
        for (int c = 0; c < C; c++) ss += (double)m.inp[n * C + c] * m.inp[n * C + c];
        double r = 1.0 / sqrt(ss / C + 1e-5);
        rref[n] = r;
        rbound[n] = 2 * EPS32 * r;
        for (int c = 0; c < C; c++) {
            ref[n * C + c] = m.w[c] * m.inp[n * C + c] * r;
            bound[n * C + c] = 4 * EPS32 * fabs(ref[n * C + c]) + 1e-30;
        }
    }
    expect_close("forward vs double", m.out, ref, bound, nc);
    expect_close("rstd vs double", m.rstd, rref, rbound, N);

    float *R = randn(nc, 1), *dx0 = randn(nc, 1), *dx = fcopy(dx0, nc), *dw0 = randn(C, 1), *dw = fcopy(dw0, C);
    ops->rmsnorm_backward(ops, A(dx), dw, CA(R), CA(m.inp), m.w, m.rstd, N, C);
    /* gradient terms: r |w dy| and |x r| r^2 |sum w dy x| / C, each <= max r |w| |R| sqrt(C)
     * since |x r| <= sqrt(C); dweight sums N terms |dy x r| <= |R| sqrt(C) */
    double gf = sqrt(C) * maxabs(R, nc) * fmax(2 * maxabs(m.rstd, N) * maxabs(m.w, C), N);
    Probe p = { norm_fwd, &m, 1, { m.out }, { R }, { nc }, 0.0, 4, gf };
    fd_check("backward dinp (+=)", &p, m.inp, nc, dx, dx0);
    fd_check("backward dweight (+=)", &p, m.w, C, dw, dw0);
    tfree_all();
}

/* ---- SwiGLU, concat, embedding, sigmoid ---- */

typedef struct { float *out, *in; int N, F; } SwiCtx;
static void swiglu_fwd(void *c)
{
    SwiCtx *m = c;
    ops->swiglu_forward(ops, A(m->out), CA(m->in), m->N, m->F);
}

static void test_swiglu(int N, int F)
{
    printf("swiglu N=%d F=%d\n", N, F);
    size_t nf = (size_t)N * F;
    SwiCtx m = { randn(nf, 1), randn(2 * nf, 1.5f), N, F };
    swiglu_fwd(&m);
    /* expf within 2 ulp, then a division and two products: 8 eps relative */
    double *ref = talloc(nf * sizeof(double)), *bound = talloc(nf * sizeof(double));
    for (int n = 0; n < N; n++)
        for (int f = 0; f < F; f++) {
            double g = m.in[n * 2 * F + f], u = m.in[n * 2 * F + F + f];
            ref[n * F + f] = g / (1.0 + exp(-g)) * u;
            bound[n * F + f] = 8 * EPS32 * fabs(ref[n * F + f]) + 1e-30;
        }
    expect_close("forward vs double", m.out, ref, bound, nf);
    float *R = randn(nf, 1), *d0 = randn(2 * nf, 1), *d = fcopy(d0, 2 * nf);
    ops->swiglu_backward(ops, A(d), CA(R), CA(m.in), N, F);
    double mg = maxabs(m.in, 2 * nf);   /* terms dy u sig (1 + g (1 - sig)) and dy g sig */
    Probe p = { swiglu_fwd, &m, 1, { m.out }, { R }, { nf }, 0.0, 8, maxabs(R, nf) * mg * (1 + mg) };
    fd_check("backward (+=)", &p, m.in, 2 * nf, d, d0);
    tfree_all();
}

typedef struct { float *out, *a, *b; int N, A, Bc; } CatCtx;
static void concat_fwd(void *c)
{
    CatCtx *m = c;
    ops->concat_forward(ops, A(m->out), CA(m->a), CA(m->b), m->N, m->A, m->Bc);
}

static void test_concat(int N, int A, int Bc)
{
    printf("concat N=%d A=%d Bc=%d\n", N, A, Bc);
    size_t W = (size_t)A + Bc;
    CatCtx m = { randn(N * W, 1), randn((size_t)N * A, 1), randn((size_t)N * Bc, 1), N, A, Bc };
    concat_fwd(&m);
    int bad = 0;
    for (int n = 0; n < N; n++)
        for (size_t i = 0; i < W; i++)
            bad += m.out[n * W + i] != ((int)i < A ? m.a[n * A + i] : m.b[n * Bc + (i - A)]);
    EXPECT(bad == 0, "concat forward: %d elements are not the copied inputs", bad);
    float *R = randn(N * W, 1), *da0 = randn((size_t)N * A, 1), *db0 = randn((size_t)N * Bc, 1);
    float *da = fcopy(da0, (size_t)N * A), *db = fcopy(db0, (size_t)N * Bc);
    ops->concat_backward(ops, A(da), A(db), CA(R), N, A, Bc);
    Probe p = { concat_fwd, &m, 1, { m.out }, { R }, { N * W }, 0.0, 1, maxabs(R, N * W) };   /* copies */
    fd_check("backward da (+=)", &p, m.a, (size_t)N * A, da, da0);
    fd_check("backward db (+=)", &p, m.b, (size_t)N * Bc, db, db0);
    tfree_all();
}

typedef struct { float *out, *table; int32_t *tok; int N, C; } EmbCtx;
static void emb_fwd(void *c)
{
    EmbCtx *m = c;
    ops->embedding_forward(ops, A(m->out), m->tok, m->table, m->N, m->C);
}

static void test_embedding(int N, int C, int V)
{
    printf("embedding N=%d C=%d V=%d\n", N, C, V);
    EmbCtx m = { randn((size_t)N * C, 1), randn((size_t)V * C, 1), talloc(N * sizeof(int32_t)), N, C };
    for (int n = 0; n < N; n++) m.tok[n] = (int32_t)(rng_u32(&rng) % (uint32_t)V);   /* repeats likely */
    emb_fwd(&m);
    int bad = 0;
    for (int n = 0; n < N; n++) bad += memcmp(m.out + n * C, m.table + m.tok[n] * C, C * sizeof(float)) != 0;
    EXPECT(bad == 0, "embedding forward: %d rows are not the table rows", bad);
    float *R = randn((size_t)N * C, 1), *d0 = randn((size_t)V * C, 1), *d = fcopy(d0, (size_t)V * C);
    ops->embedding_backward(ops, d, CA(R), m.tok, N, C);
    Probe p = { emb_fwd, &m, 1, { m.out }, { R }, { (size_t)N * C }, 0.0, 1, N * maxabs(R, (size_t)N * C) };
    fd_check("backward dtable (+=, repeats)", &p, m.table, (size_t)V * C, d, d0);
    tfree_all();
}

typedef struct { float *s, *x; size_t n; } SigCtx;
static void sigmoid_fwd(void *c)
{
    SigCtx *m = c;
    ops->sigmoid_forward(ops, m->s, m->x, m->n);
}

static void test_sigmoid(size_t n)
{
    printf("sigmoid n=%zu\n", n);
    SigCtx m = { randn(n, 1), randn(n, 2), n };
    sigmoid_fwd(&m);
    float *R = randn(n, 1), *d0 = randn(n, 1), *d = fcopy(d0, n);
    ops->sigmoid_backward(ops, d, R, m.s, n);
    /* expf, add, divide; the gradient's 1 - s cancels relative to |ds| */
    Probe p = { sigmoid_fwd, &m, 1, { m.s }, { R }, { n }, 0.0, 4, maxabs(R, n) };
    fd_check("backward (+=)", &p, m.x, n, d, d0);
    tfree_all();
}

/* ---- RoPE and MLA key/value assembly ---- */

typedef struct { float *out, *in, *cos, *sin; RopeShape s; size_t n; } RopeCtx;
static void rope_fwd(void *c)
{
    RopeCtx *m = c;
    memcpy(m->out, m->in, m->n * sizeof(float));
    ops->rope_forward(ops, A(m->out), m->cos, m->sin, &m->s);
}

/* x laid out like the model's q: (N, H, Dn+Dr) with the rope part at offset Dn. */
static void test_rope(int N, int T, int H, int Dn, int Dr)
{
    printf("rope N=%d T=%d H=%d Dn=%d Dr=%d\n", N, T, H, Dn, Dr);
    int half = Dr / 2, D = Dn + Dr;
    size_t n = (size_t)N * H * D;
    RopeCtx m = { randn(n, 1), randn(n, 1), talloc((size_t)T * half * 4), talloc((size_t)T * half * 4),
                  { N, T, H, H * D, D, Dn, Dr }, n };
    for (int t = 0; t < T; t++)
        for (int j = 0; j < half; j++) {
            double a = t * pow(10000.0, -2.0 * j / Dr);
            m.cos[t * half + j] = (float)cos(a);
            m.sin[t * half + j] = (float)sin(a);
        }
    rope_fwd(&m);
    /* two products and a sum: 3 eps relative to |a c| + |b s| <= |a| + |b| */
    double *ref = talloc(n * sizeof(double)), *bound = talloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) { ref[i] = m.in[i]; bound[i] = 1e-30; }
    for (int r = 0; r < N; r++)
        for (int h = 0; h < H; h++)
            for (int j = 0; j < half; j++) {
                size_t i = (size_t)r * H * D + h * D + Dn + 2 * j;
                double c = m.cos[(r % T) * half + j], s = m.sin[(r % T) * half + j], a = m.in[i], b = m.in[i + 1];
                ref[i] = a * c - b * s;
                ref[i + 1] = a * s + b * c;
                bound[i] = bound[i + 1] = 3 * EPS32 * (fabs(a) + fabs(b));
            }
    expect_close("forward vs double (strided)", m.out, ref, bound, n);
    float *R = randn(n, 1), *d = fcopy(R, n);
    ops->rope_backward(ops, A(d), m.cos, m.sin, &m.s);
    Probe p = { rope_fwd, &m, 1, { m.out }, { R }, { n }, maxabs(m.in, n), 3, maxabs(R, n) };
    fd_check("backward (in place)", &p, m.in, n, d, NULL);
    tfree_all();
}

typedef struct { float *k, *v, *kv, *kr; MlaKvShape s; } KvCtx;
static void kv_fwd(void *c)
{
    KvCtx *m = c;
    ops->mla_kv_split(ops, A(m->k), A(m->v), CA(m->kv), CA(m->kr), &m->s);
}

static void test_kv_split(int N, int H, int Dn, int Dr, int Dv)
{
    printf("mla_kv_split N=%d H=%d Dn=%d Dr=%d Dv=%d\n", N, H, Dn, Dr, Dv);
    size_t nk = (size_t)N * H * (Dn + Dr), nv = (size_t)N * H * Dv, nkv = (size_t)N * H * (Dn + Dv);
    KvCtx m = { randn(nk, 1), randn(nv, 1), randn(nkv, 1), randn((size_t)N * Dr, 1), { N, H, Dn, Dr, Dv } };
    kv_fwd(&m);
    int bad = 0;
    for (int n = 0; n < N; n++)
        for (int h = 0; h < H; h++) {
            const float *kv = m.kv + ((size_t)n * H + h) * (Dn + Dv), *k = m.k + ((size_t)n * H + h) * (Dn + Dr);
            bad += memcmp(k, kv, Dn * 4) != 0;
            bad += memcmp(k + Dn, m.kr + (size_t)n * Dr, Dr * 4) != 0;
            bad += memcmp(m.v + ((size_t)n * H + h) * Dv, kv + Dn, Dv * 4) != 0;
        }
    EXPECT(bad == 0, "mla_kv_split forward: %d pieces misplaced", bad);
    float *Rk = randn(nk, 1), *Rv = randn(nv, 1);
    float *dkv0 = randn(nkv, 1), *dkv = fcopy(dkv0, nkv), *dr0 = randn((size_t)N * Dr, 1);
    float *dr = fcopy(dr0, (size_t)N * Dr);
    ops->mla_kv_split_backward(ops, A(dkv), A(dr), CA(Rk), CA(Rv), &m.s);
    Probe p = { kv_fwd, &m, 2, { m.k, m.v }, { Rk, Rv }, { nk, nv }, 0.0, 1, H * fmax(maxabs(Rk, nk), maxabs(Rv, nv)) };
    fd_check("backward dkv (+=)", &p, m.kv, nkv, dkv, dkv0);
    fd_check("backward dk_rope (+=, heads summed)", &p, m.kr, (size_t)N * Dr, dr, dr0);
    tfree_all();
}

/* ---- attention ---- */

typedef struct { float *out, *lse, *q, *k, *v; AttnShape s; } AttnCtx;
static void attn_fwd(void *c)
{
    AttnCtx *m = c;
    ops->attention_forward(ops, A(m->out), m->lse, CA(m->q), CA(m->k), CA(m->v), &m->s);
}

/* Reference of one (b, h, i) in double; returns lse, fills out (Dv), pv (Dv) = sum_j p_j |v_j|
 * and amax = max_j scale sum_d |q_d k_d|; adds p_j to colsum[j] when colsum is given. */
static double attn_ref_row(const AttnCtx *m, int b, int h, int i, double *out, double *pv, double *amax,
                           double *colsum)
{
    const AttnShape *s = &m->s;
    double sc[512], mx = -INFINITY, sum = 0.0;
    CHECK(s->T <= 512);
    *amax = 0.0;
    for (int j = 0; j <= i; j++) {
        const float *q = m->q + (((size_t)b * s->T + i) * s->H + h) * s->Dqk;
        const float *k = m->k + (((size_t)b * s->T + j) * s->H + h) * s->Dqk;
        double d = 0.0, a = 0.0;
        for (int e = 0; e < s->Dqk; e++) { d += (double)q[e] * k[e]; a += fabs((double)q[e] * k[e]); }
        sc[j] = s->scale * d;
        mx = fmax(mx, sc[j]);
        *amax = fmax(*amax, s->scale * a);
    }
    for (int j = 0; j <= i; j++) sum += exp(sc[j] - mx);
    for (int e = 0; e < s->Dv; e++) out[e] = pv[e] = 0.0;
    for (int j = 0; j <= i; j++) {
        double p = exp(sc[j] - mx) / sum;
        const float *v = m->v + (((size_t)b * s->T + j) * s->H + h) * s->Dv;
        for (int e = 0; e < s->Dv; e++) { out[e] += p * v[e]; pv[e] += p * fabs(v[e]); }
        if (colsum) colsum[j] += p;
    }
    return mx + log(sum);
}

/* Rounding of one output relative to sum_j p_j |v_j|: scores off by (Dqk+2) eps A absolute,
 * which moves each p by twice that relatively (numerator and normaliser); the normaliser and
 * the P V sums add (T+2) eps each; expf/logf a few ulp: c = 2 (Dqk+2) A + 2T + 16. */
static double attn_c(const AttnShape *s, double amax) { return 2.0 * (s->Dqk + 2) * amax + 2.0 * s->T + 16; }

static void attn_check_forward(AttnCtx *m, size_t no)
{
    const AttnShape *s = &m->s;
    size_t nl = (size_t)s->B * s->H * s->T;
    double *ref = talloc(no * sizeof(double)), *bound = talloc(no * sizeof(double));
    double *lref = talloc(nl * sizeof(double)), *lbound = talloc(nl * sizeof(double)), row[512], pv[512], amax;
    CHECK(s->Dv <= 512);
    for (int b = 0; b < s->B; b++)
        for (int h = 0; h < s->H; h++)
            for (int i = 0; i < s->T; i++) {
                size_t li = ((size_t)b * s->H + h) * s->T + i, oi = (((size_t)b * s->T + i) * s->H + h) * s->Dv;
                lref[li] = attn_ref_row(m, b, h, i, row, pv, &amax, NULL);
                /* lse = max + log(sum): the score error plus (T+4) eps relative */
                lbound[li] = (s->Dqk + 2) * amax * EPS32 + (s->T + 4) * EPS32 * (1 + fabs(lref[li]));
                for (int e = 0; e < s->Dv; e++) {
                    ref[oi + e] = row[e];
                    bound[oi + e] = attn_c(s, amax) * EPS32 * pv[e] + 1e-30;
                }
            }
    expect_close("forward out vs double", m->out, ref, bound, no);
    expect_close("forward lse vs double", m->lse, lref, lbound, nl);
}

/* Changing the keys and values of the last position must leave every earlier row unchanged. */
static void attn_check_causal(AttnCtx *m, size_t no)
{
    const AttnShape *s = &m->s;
    if (s->T < 2) return;
    float *before = fcopy(m->out, no);
    for (int b = 0; b < s->B; b++)
        for (int h = 0; h < s->H; h++) {
            size_t r = ((size_t)b * s->T + s->T - 1) * s->H + h;
            for (int e = 0; e < s->Dqk; e++) m->k[r * s->Dqk + e] += 3.0f;
            for (int e = 0; e < s->Dv; e++) m->v[r * s->Dv + e] -= 5.0f;
        }
    attn_fwd(m);
    int bad = 0;
    for (int b = 0; b < s->B; b++)
        for (int t = 0; t < s->T - 1; t++) {
            size_t o = ((size_t)b * s->T + t) * s->H * s->Dv;
            bad += memcmp(before + o, m->out + o, (size_t)s->H * s->Dv * sizeof(float)) != 0;
        }
    EXPECT(bad == 0, "attention: %d rows before the last position changed when only it changed", bad);
}

static void test_attention(int B, int T, int H, int Dqk, int Dv, int fd)
{
    printf("attention B=%d T=%d H=%d Dqk=%d Dv=%d\n", B, T, H, Dqk, Dv);
    size_t nq = (size_t)B * T * H * Dqk, no = (size_t)B * T * H * Dv;
    AttnCtx m = { randn(no, 1), randn((size_t)B * H * T, 1), randn(nq, 1), randn(nq, 1), randn(no, 1),
                  { B, T, H, Dqk, Dv, (float)(1.0 / sqrt(Dqk)) } };
    attn_fwd(&m);
    attn_check_forward(&m, no);
    attn_check_causal(&m, no);
    if (!fd) { tfree_all(); return; }
    attn_fwd(&m);
    float *R = randn(no, 1);
    float *dq0 = randn(nq, 1), *dk0 = randn(nq, 1), *dv0 = randn(no, 1);
    float *dq = fcopy(dq0, nq), *dk = fcopy(dk0, nq), *dv = fcopy(dv0, no);
    ops->attention_backward(ops, A(dq), A(dk), A(dv), CA(R), CA(m.q), CA(m.k), CA(m.v), CA(m.out), m.lse, &m.s);
    /* amax: the largest A of any row; colmax: the largest column sum of p (how many query rows
     * a key's gradient collects, in probability mass) */
    double amax = 0.0, colmax = 0.0, row[512], pv[512], a, *col = talloc((size_t)T * sizeof(double));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            for (int j = 0; j < T; j++) col[j] = 0.0;
            for (int i = 0; i < T; i++) { attn_ref_row(&m, b, h, i, row, pv, &a, col); amax = fmax(amax, a); }
            for (int j = 0; j < T; j++) colmax = fmax(colmax, col[j]);
        }
    /* gradient terms: dS = p (dP - D) with |dP|, |D| <= Dv max|R| max|v|, each rounded to c eps
     * of that; dq = scale sum_j dS k_j (p sums to 1 over j), dk = scale sum_i dS q_i and
     * dv = sum_i p R_i (p sums to at most colmax over i) */
    double mv = maxabs(m.v, no), mR = maxabs(R, no), dS = 2 * Dv * mR * mv * m.s.scale;
    Probe p = { attn_fwd, &m, 1, { m.out }, { R }, { no }, mv, attn_c(&m.s, amax), dS * maxabs(m.k, nq) };
    fd_check("backward dq (+=)", &p, m.q, nq, dq, dq0);
    p.gfloor = dS * maxabs(m.q, nq) * colmax;
    fd_check("backward dk (+=)", &p, m.k, nq, dk, dk0);
    p.gfloor = mR * colmax;
    fd_check("backward dv (+=)", &p, m.v, no, dv, dv0);
    tfree_all();
}

/* ---- cross-entropy ---- */

typedef struct { float *loss, *logits; int32_t *tgt; int N, V; } XentCtx;
static void xent_fwd(void *c)
{
    XentCtx *m = c;
    ops->xent_forward(ops, m->loss, CA(m->logits), m->tgt, m->N, m->V);
}

static void test_xent(int N, int V)
{
    printf("xent N=%d V=%d\n", N, V);
    size_t nv = (size_t)N * V;
    XentCtx m = { randn(N, 1), randn(nv, 2), talloc(N * sizeof(int32_t)), N, V };
    for (int n = 0; n < N; n++) m.tgt[n] = n % 3 == 1 ? -1 : (int32_t)(rng_u32(&rng) % (uint32_t)V);
    xent_fwd(&m);
    /* lse = max + log(sum of V exps): (V + 4) eps relative to |lse| + |x_t|, then a difference */
    double *ref = talloc(N * sizeof(double)), *bound = talloc(N * sizeof(double));
    for (int n = 0; n < N; n++) {
        const float *x = m.logits + (size_t)n * V;
        double mx = -INFINITY, sum = 0.0;
        for (int j = 0; j < V; j++) mx = fmax(mx, x[j]);
        for (int j = 0; j < V; j++) sum += exp(x[j] - mx);
        double lse = mx + log(sum);
        ref[n] = m.tgt[n] < 0 ? 0.0 : lse - x[m.tgt[n]];
        bound[n] = m.tgt[n] < 0 ? 1e-300 : (V + 4) * EPS32 * (fabs(lse) + fabs(x[m.tgt[n]]) + 1);
    }
    expect_close("forward vs double (ignored = 0)", m.loss, ref, bound, N);

    float *R = randn(N, 1), *d0 = randn(nv, 1), *d = fcopy(d0, nv);
    ops->xent_backward(ops, A(d), CA(m.logits), m.tgt, R, N, V);
    /* gradient dl (p - onehot): p - 1 cancels relative to |dl| */
    Probe p = { xent_fwd, &m, 1, { m.loss }, { R }, { N }, maxabs(m.logits, nv) + 1, V + 4, maxabs(R, N) };
    fd_check("backward (+=)", &p, m.logits, nv, d, d0);

    /* dlogits == logits overwrites: equal (as values; 0 + -0 is +0) to the gradient added to zeros */
    float *fresh = talloc(nv * sizeof(float)), *inplace = fcopy(m.logits, nv);
    ops->xent_backward(ops, A(fresh), CA(m.logits), m.tgt, R, N, V);
    ops->xent_backward(ops, A(inplace), CA(inplace), m.tgt, R, N, V);
    int bad = 0;
    for (size_t i = 0; i < nv; i++) bad += fresh[i] != inplace[i];
    EXPECT(bad == 0, "xent backward in place differs from out of place in %d elements", bad);
    tfree_all();
}

/* ---- AdamW against the scalar formula ---- */

/* Reference in double. Budgets (derived per step, summed over steps since an earlier error
 * carries into p with factor 1 - lr wd <= 1):
 *   m: FP32 products and a sum, 3 eps per step relative to mabs = b1 mabs + (1-b1)|g|;
 *   v: 3 eps per step relative to v (no cancellation);
 *   u = mhat / (sqrt(vhat) + eps): the m error over the denominator, plus |u| times half the
 *      v relative error and 6 eps for the division, sqrt and bias corrections;
 *   p: lr (u error + 2 eps wd |p|) + 2 eps |p| for the final products and difference.
 * With BF16 moments the stored m, v must be BF16 numbers, and may differ from the reference
 * by one BF16 step (2^-8 relative, at most 2^-7 of the value) per step where a rounding tie
 * falls differently; that enters u through the same chain. */
static void test_adamw(int bf16)
{
    printf("adamw n=37 bf16_moments=%d\n", bf16);
    enum { n = 37, steps = 3 };
    AdamArgs a = { 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 0, bf16, 1.0f };
    float *p = randn(n, 1), *m = talloc(n * 4), *v = talloc(n * 4);
    double pr[n], mr[n], vr[n], mabs[n], bp[n], bm[n], bv[n];
    for (int i = 0; i < n; i++) { pr[i] = p[i]; mr[i] = vr[i] = mabs[i] = bp[i] = bm[i] = bv[i] = 0.0; }
    double rel = bf16 ? 0.0078125 : 3 * EPS32;   /* per-step relative error of a stored moment */
    for (int t = 1; t <= steps; t++) {
        float *g = randn(n, 1);
        g[0] = 0.0f;
        a.step = t;
        ops->adamw_update(ops, p, g, m, v, n, &a);
        double bc1 = 1 - pow(0.9f, t), bc2 = 1 - pow(0.95f, t);
        for (int i = 0; i < n; i++) {
            double mi = 0.9f * mr[i] + (1 - 0.9f) * (double)g[i];
            double vi = 0.95f * vr[i] + (1 - 0.95f) * (double)g[i] * g[i];
            mabs[i] = 0.9f * mabs[i] + (1 - 0.9f) * fabs(g[i]);
            double den = sqrt(vi / bc2) + 1e-8f, u = mi / bc1 / den;
            bm[i] += rel * mabs[i];
            bv[i] += rel * vi;
            double ue = bm[i] / bc1 / den + fabs(u) * (0.5 * bv[i] / fmax(vi, 1e-300) + 6 * EPS32);
            pr[i] -= 1e-2f * (u + 0.1f * pr[i]);
            bp[i] += 1e-2f * (ue + 2 * EPS32 * 0.1f * fabs(pr[i])) + 2 * EPS32 * fabs(pr[i]);
            mr[i] = bf16 ? bf16_round((float)mi) : mi;
            vr[i] = bf16 ? bf16_round((float)vi) : vi;
        }
    }
    int notbf16 = 0;
    for (int i = 0; i < n; i++) {
        bp[i] += 1e-300; bm[i] += 1e-300; bv[i] += 1e-300;
        notbf16 += bf16 && (bf16_round(m[i]) != m[i] || bf16_round(v[i]) != v[i]);
    }
    expect_close("param after 3 steps", p, pr, bp, n);
    expect_close("m after 3 steps", m, mr, bm, n);
    expect_close("v after 3 steps", v, vr, bv, n);
    EXPECT(notbf16 == 0, "adamw: %d moments are not BF16 numbers with bf16_moments on", notbf16);
    tfree_all();
}

/* ---- add, scale, sumsq ---- */

static void test_reductions(size_t n)
{
    printf("add/scale/sumsq n=%zu\n", n);
    float *x = randn(n, 1), *y = randn(n, 1), *y0 = fcopy(y, n);
    ops->add(ops, A(y), CA(x), n);
    ops->scale(ops, y, 0.5f, n);
    int bad = 0;
    for (size_t i = 0; i < n; i++) bad += y[i] != (y0[i] + x[i]) * 0.5f;   /* one rounding each: exact */
    EXPECT(bad == 0, "add/scale: %d elements differ from (y + x) * 0.5", bad);
    /* squares of FP32 values are exact in double; n additions: n 2^-53 relative */
    double ref = 0.0;
    for (size_t i = 0; i < n; i++) ref += (double)x[i] * x[i];
    double got = ops->sumsq(ops, x, n), got1 = ops1->sumsq(ops1, x, n);
    EXPECT(fabs(got - ref) <= n * 1.12e-16 * ref + 1e-300, "sumsq %.17g, reference %.17g", got, ref);
    EXPECT(got == got1, "sumsq differs between 1 and 2 threads: %.17g vs %.17g", got1, got);
    tfree_all();
}

/* ---- 1 thread and 2 threads give the same bits (no BLAS-thread dependence here) ---- */

static void test_thread_equality(void)
{
    printf("thread-count equality\n");
    AttnShape s = { 2, 70, 2, 12, 8, 0.3f };
    size_t nq = 2 * 70 * 2 * 12, no = 2 * 70 * 2 * 8, nl = 2 * 2 * 70;
    float *q = randn(nq, 1), *k = randn(nq, 1), *v = randn(no, 1), *dout = randn(no, 1);
    float *buf[2][5];
    Ops *tab[2] = { ops1, ops };
    for (int t = 0; t < 2; t++) {
        float *out = buf[t][0] = talloc(no * 4), *lse = buf[t][1] = talloc(nl * 4);
        tab[t]->attention_forward(tab[t], A(out), lse, CA(q), CA(k), CA(v), &s);
        buf[t][2] = talloc(nq * 4); buf[t][3] = talloc(nq * 4); buf[t][4] = talloc(no * 4);
        tab[t]->attention_backward(tab[t], A(buf[t][2]), A(buf[t][3]), A(buf[t][4]), CA(dout), CA(q), CA(k), CA(v),
                                   CA(out), lse, &s);
    }
    size_t sz[5] = { no, nl, nq, nq, no };
    int bad = 0;
    for (int i = 0; i < 5; i++) bad += memcmp(buf[0][i], buf[1][i], sz[i] * 4) != 0;
    EXPECT(bad == 0, "attention: %d of 5 tensors differ between 1 and 2 threads", bad);

    int N = 300, C = 130, V = 7;   /* N*C above the parallel threshold; repeated tokens */
    float *x = randn((size_t)N * C, 1), *w = randn(C, 1), *dy = randn((size_t)N * C, 1), *r = talloc(N * 4);
    int32_t *tok = talloc(N * 4);
    for (int i = 0; i < N; i++) tok[i] = (int32_t)(rng_u32(&rng) % V);
    float *g[2][3];
    for (int t = 0; t < 2; t++) {
        g[t][0] = talloc((size_t)N * C * 4); g[t][1] = talloc(C * 4); g[t][2] = talloc((size_t)V * C * 4);
        tab[t]->rmsnorm_forward(tab[t], A(g[t][0]), r, CA(x), w, N, C, 1e-6f);
        tab[t]->rmsnorm_backward(tab[t], A(g[t][0]), g[t][1], CA(dy), CA(x), w, r, N, C);
        tab[t]->embedding_backward(tab[t], g[t][2], CA(dy), tok, N, C);
    }
    EXPECT(memcmp(g[0][0], g[1][0], (size_t)N * C * 4) == 0, "rmsnorm dinp differs between thread counts");
    EXPECT(memcmp(g[0][1], g[1][1], C * 4) == 0, "rmsnorm dweight differs between thread counts");
    EXPECT(memcmp(g[0][2], g[1][2], (size_t)V * C * 4) == 0, "embedding dtable differs between thread counts");
    /* the split halves (backward-input, then backward-weight) are the fused op bit for bit, and
     * copy moves bytes unchanged */
    for (int t = 0; t < 2; t++) {
        float *dx = talloc((size_t)N * C * 4), *dw = talloc(C * 4);
        tab[t]->rmsnorm_forward(tab[t], A(dx), r, CA(x), w, N, C, 1e-6f);
        tab[t]->rmsnorm_backward_input(tab[t], A(dx), CA(dy), CA(x), w, r, N, C);
        tab[t]->rmsnorm_backward_weight(tab[t], dw, CA(dy), CA(x), r, N, C);
        EXPECT(memcmp(dx, g[t][0], (size_t)N * C * 4) == 0, "rmsnorm_backward_input differs from the fused dinp");
        EXPECT(memcmp(dw, g[t][1], C * 4) == 0, "rmsnorm_backward_weight differs from the fused dweight");
        tab[t]->copy(tab[t], dx, dy, (size_t)N * C * 4);
        EXPECT(memcmp(dx, dy, (size_t)N * C * 4) == 0, "copy changed the bytes");
    }
    tfree_all();
}

/* ---- the op list: no backend leaves an entry empty ---- */

/* Every entry of OPS_ENTRIES is filled in the CPU tables (each precision) and in the CUDA
 * backend's compiled-in fill (checked without a GPU); and the check finds an emptied entry. */
static void test_entries_filled(void)
{
    const Precision precs[] = { PREC_FP32, PREC_BF16, PREC_FP8 };
    for (size_t i = 0; i < sizeof precs / sizeof precs[0]; i++) {
        Ops *o = ops_cpu_create(1, precs[i]);
        const char *e = ops_first_empty(o);
        EXPECT(e == NULL, "cpu table (precision %d) leaves '%s' empty", (int)precs[i], e);
        ops_destroy(o);
    }
    const char *empty;
#ifdef DSTRAIN_HAVE_CUDA
    Ops cuda;
    memset(&cuda, 0, sizeof cuda);
    cuda_ops_fill(&cuda);
    empty = ops_first_empty(&cuda);
    EXPECT(empty == NULL, "cuda table leaves '%s' empty", empty);
    printf("  %-34s cpu and cuda tables filled\n", "op entries");
#else
    printf("  %-34s cpu table filled (cuda not built)\n", "op entries");
#endif
    Ops copy = *ops;
    copy.moe_combine = NULL;
    empty = ops_first_empty(&copy);
    EXPECT(empty && strcmp(empty, "moe_combine") == 0, "an emptied entry is not found (got '%s')", empty);
}

/* ---- DIE paths: run in a child, check its exit status and stderr ---- */

static void die_threads(void) { ops_cpu_create(-1, PREC_FP32); }
#ifndef DSTRAIN_HAVE_CUDA /* with CUDA built in, tests/gpu checks the no-GPU message */
static void die_cuda(void) { ops_destroy(ops_cuda_create(PREC_FP32)); }
#endif

static void call_void(void *fn) { ((void (*)(void))fn)(); }

static void expect_die(const char *label, void (*fn)(void), const char *needle)
{
    char msg[1024];
    int code = test_run_child(call_void, (void *)fn, msg, sizeof msg);
    printf("  %-34s exit %d: %s", label, code, msg);
    EXPECT(code == 1, "%s: expected exit status 1", label);
    EXPECT(strstr(msg, needle) != NULL, "%s: message lacks \"%s\"", label, needle);
}

int main(void)
{
    rng_seed(&rng, test_seed());
    ops = ops_cpu_create(2, PREC_FP32);
    ops1 = ops_cpu_create(1, PREC_FP32);
    EXPECT(strcmp(ops->name, "cpu") == 0 && ops->precision == PREC_FP32, "table name/precision");

    test_matmul(1, 1, 1);
    test_matmul(5, 7, 3);
    test_matmul(3, 17, 9);
    test_rmsnorm(1, 1);
    test_rmsnorm(3, 7);
    test_swiglu(2, 5);
    test_concat(3, 2, 5);
    test_concat(2, 1, 0);
    test_embedding(9, 4, 3);
    test_sigmoid(11);
    test_rope(6, 4, 2, 3, 4);
    test_rope(1, 1, 1, 0, 2);
    test_kv_split(3, 2, 3, 2, 4);
    test_attention(2, 5, 2, 6, 4, 1);
    test_attention(1, 1, 1, 3, 2, 1);
    test_attention(1, 70, 1, 3, 2, 1);        /* crosses the 64-row tile of the CPU kernel */
    test_attention(2, 130, 3, 20, 12, 0);     /* several tiles, forward only */
    test_xent(5, 7);
    test_xent(3, 1);
    test_adamw(0);
    test_adamw(1);
    test_reductions(1);
    test_reductions(200003);                  /* several fixed chunks of the sumsq reduction */
    test_thread_equality();
    test_entries_filled();

    expect_die("cpu with -1 threads", die_threads, "thread count -1 is negative");
#ifndef DSTRAIN_HAVE_CUDA
    expect_die("cuda without CUDA", die_cuda,
               "device 'cuda': this dstrain was built without CUDA (nvcc was not found at build time)");
#endif
    ops_destroy(ops);
    ops_destroy(ops1);
    return test_finish();
}
