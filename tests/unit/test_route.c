/* tests/unit/test_route.c - the MoE entries of the CPU op table: group-limited routing
 * against brute-force enumeration, the routing-weight backward, expert counts, the
 * sequence-wise balance loss, and the expert-major permutation (layout, gather, combine).
 *
 * What it is not: the expert FFNs (Linear/SwiGLU, test_ops.c) or the bias update rule.
 * Reference: SPEC.md section 4. The brute force is written from the definition, not from the
 * kernel's algorithm: every combination of topk_group groups is scored by the sum of its
 * group scores (each the sum of the m = K / topk_group largest s + bias in the group), the best
 * combination wins (ties: the combination whose lowest differing group is lower, i.e. lower
 * group index), and the top-K of s + bias inside it are taken by a full sort (ties: lower
 * expert index).
 *
 * Finite differences follow test_ops.c's derivation: the loss L = sum R_j out_j in double,
 * fd(h) with h = 1e-2, budget = c eps M / h (rounding of the outputs that change within
 * x +- 2h) + eps U / h (a change hidden below one ulp in the outputs that do not) +
 * 2 |fd(2h) - fd(h)| / 3 (truncation, Richardson) + eps (|after| + |before|) (reading the
 * accumulated gradient) + c eps max(|g|, gfloor) (the gradient's own rounding, gfloor bounding
 * the terms it sums).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels/ops.h"
#include "runtime/common.h"
#include "tests/unit/testing.h"
#include "tests/unit/fd.h"


static Ops *ops;

static float *rand_sigmoid(size_t n)
{
    float *s = talloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) s[i] = 1.0f / (1.0f + expf(-rng_normal(&rng)));
    return s;
}

/* ---- routing against brute force ---- */

/* Sum of the m largest of v (n), by selection, in double. */
static double top_m_sum(const float *v, int n, int m)
{
    char used[4096] = { 0 };
    double sum = 0.0;
    CHECK(n <= 4096);
    for (int t = 0; t < m; t++) {
        int best = -1;
        for (int i = 0; i < n; i++)
            if (!used[i] && (best < 0 || v[i] > v[best])) best = i;
        used[best] = 1;
        sum += v[best];
    }
    return sum;
}

/* The chosen experts of one token (K, descending s+bias, ties lower index) and weights. */
static void route_brute(int32_t *idx, double *w, const float *s, const float *bias, const RouteShape *r)
{
    int E = r->E, G = E / r->n_group, m = r->K / r->topk_group;
    float sb[4096];
    double gs[64];
    CHECK(E <= 4096 && r->n_group <= 16);
    for (int e = 0; e < E; e++) sb[e] = s[e] + (bias ? bias[e] : 0.0f);
    for (int g = 0; g < r->n_group; g++) gs[g] = top_m_sum(sb + g * G, G, m);
    unsigned best = 0;
    double best_sum = -INFINITY;
    for (unsigned mask = 0; mask < (1u << r->n_group); mask++) {
        if (__builtin_popcount(mask) != r->topk_group) continue;
        double sum = 0.0;
        for (int g = 0; g < r->n_group; g++) if (mask >> g & 1) sum += gs[g];
        unsigned low = (mask ^ best) & -(mask ^ best);   /* lowest group where they differ */
        if (sum > best_sum || (sum == best_sum && (mask & low))) { best_sum = sum; best = mask; }
    }
    char taken[4096] = { 0 };
    double total = 0.0;
    for (int k = 0; k < r->K; k++) {
        int pick = -1;
        for (int e = 0; e < E; e++)
            if ((best >> (e / G) & 1) && !taken[e] && (pick < 0 || sb[e] > sb[pick])) pick = e;
        taken[pick] = 1;
        idx[k] = pick;
        total += s[pick];
    }
    for (int k = 0; k < r->K; k++) w[k] = s[idx[k]] * (r->norm_topk ? r->scaling / total : r->scaling);
}

/* quantised: s and bias on a 1/8 grid, so many exact ties in values and group sums */
static void test_route_case(const char *label, RouteShape r, int quantised, int null_bias)
{
    printf("moe_route %s: N=%d E=%d K=%d n_group=%d topk_group=%d scaling=%g norm=%d\n", label, r.N, r.E, r.K,
           r.n_group, r.topk_group, r.scaling, r.norm_topk);
    size_t ne = (size_t)r.N * r.E, nk = (size_t)r.N * r.K;
    float *s = rand_sigmoid(ne), *bias = null_bias ? NULL : randn(r.E, 0.3f);
    if (quantised) {
        for (size_t i = 0; i < ne; i++) s[i] = (float)(1 + rng_u32(&rng) % 7) / 8.0f;
        for (int e = 0; e < r.E; e++) bias[e] = (float)((int)(rng_u32(&rng) % 5) - 2) / 8.0f;
    }
    int32_t *idx = talloc(nk * sizeof(int32_t)), ref_idx[64];
    float *w = talloc(nk * sizeof(float));
    ops->moe_route(ops, idx, w, s, bias, &r);
    int bad_idx = 0;
    double worst = 0.0;
    for (int n = 0; n < r.N; n++) {
        double ref_w[64];
        route_brute(ref_idx, ref_w, s + (size_t)n * r.E, bias, &r);
        bad_idx += memcmp(ref_idx, idx + (size_t)n * r.K, r.K * sizeof(int32_t)) != 0;
        /* w = s / (sum of K values) * scaling: K additions, a division, a product */
        for (int k = 0; k < r.K; k++)
            worst = fmax(worst, fabs(w[n * r.K + k] - ref_w[k]) / ((r.K + 3) * EPS32 * fabs(ref_w[k]) + 1e-300));
    }
    printf("  %-34s %d of %d tokens differ; weights worst %.3g of budget\n", "selection", bad_idx, r.N, worst);
    EXPECT(bad_idx == 0, "moe_route %s: %d tokens chose other experts than the brute force", label, bad_idx);
    EXPECT(worst <= 1.0, "moe_route %s: weights off by %.3g of the budget", label, worst);
    tfree_all();
}

/* ---- routing backward ---- */

typedef struct { int32_t *idx, *idx0; float *w, *s, *bias; RouteShape r; int moved; } RouteCtx;
static void route_fwd(void *c)
{
    RouteCtx *m = c;
    ops->moe_route(ops, m->idx, m->w, m->s, m->bias, &m->r);
    m->moved += memcmp(m->idx, m->idx0, (size_t)m->r.N * m->r.K * sizeof(int32_t)) != 0;
}

/* bias = 2 * (a permutation of 0..E-1) keeps s + bias at least 1 apart for s in (0, 1), and
 * with m = 1 the group scores too, so +-2h never changes the selection (checked). */
static void test_route_backward(RouteShape r)
{
    printf("moe_route_backward N=%d E=%d K=%d n_group=%d topk_group=%d norm=%d\n", r.N, r.E, r.K, r.n_group,
           r.topk_group, r.norm_topk);
    CHECK(r.K / r.topk_group == 1 || r.n_group == 1);
    size_t ne = (size_t)r.N * r.E, nk = (size_t)r.N * r.K;
    RouteCtx m = { talloc(nk * 4), talloc(nk * 4), talloc(nk * 4), rand_sigmoid(ne), talloc(r.E * 4), r, 0 };
    for (int e = 0; e < r.E; e++) m.bias[e] = (float)e;
    for (int e = r.E - 1; e > 0; e--) {   /* Fisher-Yates */
        int j = (int)(rng_u32(&rng) % (uint32_t)(e + 1));
        float t = m.bias[e];
        m.bias[e] = m.bias[j];
        m.bias[j] = t;
    }
    for (int e = 0; e < r.E; e++) m.bias[e] *= 2.0f;
    ops->moe_route(ops, m.idx0, m.w, m.s, m.bias, &r);
    float *R = randn(nk, 1), *d0 = randn(ne, 1), *d = fcopy(d0, ne);
    ops->moe_route_backward(ops, d, R, m.s, m.idx0, &r);
    /* K-term sums and a division: c = 2K + 4. Gradient terms scaling/S (|dw_j| + |sum dw s| / S)
     * <= 2 scaling max|R| / S with S = sum of the K chosen s >= K min s */
    double mins = 1.0;
    for (size_t i = 0; i < ne; i++) mins = fmin(mins, m.s[i]);
    Probe p = { route_fwd, &m, 1, { m.w }, { R }, { nk }, 0.0, 2 * r.K + 4, 2 * r.scaling * maxabs(R, nk) / (r.K * mins) };
    fd_check("backward ds (+=)", &p, m.s, ne, d, d0);
    EXPECT(m.moved == 0, "moe_route_backward: the selection moved in %d finite-difference runs", m.moved);
    tfree_all();
}

/* ---- counts and the balance loss ---- */

/* idx (N, K) with K distinct experts per token drawn from the first `span` experts. */
static int32_t *rand_idx(int N, int K, int E, int span)
{
    int32_t *idx = talloc((size_t)N * K * sizeof(int32_t));
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) {
            int e, dup;
            do {
                e = (int)(rng_u32(&rng) % (uint32_t)(span < E ? span : E));
                dup = 0;
                for (int j = 0; j < k; j++) dup |= idx[n * K + j] == e;
            } while (dup);
            idx[n * K + k] = e;
        }
    return idx;
}

static void test_count(int N, int K, int E)
{
    printf("moe_count N=%d K=%d E=%d\n", N, K, E);
    int32_t *idx = rand_idx(N, K, E, E);
    float *c = talloc(E * 4);
    for (int e = 0; e < E; e++) c[e] = (float)e;   /* counts accumulate */
    ops->moe_count(ops, c, idx, N * K, E);
    int bad = 0;
    for (int e = 0; e < E; e++) {
        int n = 0;
        for (int i = 0; i < N * K; i++) n += idx[i] == e;
        bad += c[e] != (float)(e + n);
    }
    EXPECT(bad == 0, "moe_count: %d experts with a wrong count", bad);
    tfree_all();
}

typedef struct { float *loss, *s; int32_t *idx; int B, T; RouteShape r; float alpha; } BalCtx;
static void bal_fwd(void *c)
{
    BalCtx *m = c;
    ops->moe_balance_forward(ops, m->loss, m->s, m->idx, m->B, m->T, &m->r, m->alpha);
}

/* The SPEC formula written out directly: f_i from counts, P_i from normalised scores. */
static double balance_direct(const BalCtx *m, int b)
{
    int E = m->r.E, K = m->r.K, T = m->T;
    double loss = 0.0;
    for (int i = 0; i < E; i++) {
        double cnt = 0.0, P = 0.0;
        for (int t = 0; t < T; t++) {
            const float *st = m->s + ((size_t)b * T + t) * E;
            double z = 0.0;
            for (int j = 0; j < E; j++) z += st[j];
            P += st[i] / z / T;
            for (int k = 0; k < K; k++) cnt += m->idx[((size_t)b * T + t) * K + k] == i;
        }
        loss += (double)E / (K * T) * cnt * P;
    }
    return m->alpha * loss;
}

static void test_balance(int B, int T, int E, int K)
{
    printf("moe_balance B=%d T=%d E=%d K=%d\n", B, T, E, K);
    size_t ne = (size_t)B * T * E;
    BalCtx m = { talloc(B * 4), rand_sigmoid(ne), rand_idx(B * T, K, E, E), B, T, { B * T, E, K, 1, 1, 1, 1 },
                 0.5f };
    bal_fwd(&m);
    /* positive terms summed in double, rounded to FP32 at the end: (E + T + 8) eps relative */
    double worst = 0.0;
    for (int b = 0; b < B; b++) {
        double ref = balance_direct(&m, b);
        worst = fmax(worst, fabs(m.loss[b] - ref) / ((E + T + 8) * EPS32 * ref + 1e-300));
    }
    printf("  %-34s worst %.3g of budget (n=%d)\n", "forward vs direct formula", worst, B);
    EXPECT(worst <= 1.0, "moe_balance_forward: %.3g of the budget", worst);
    float *R = randn(B, 1), *d0 = randn(ne, 1), *d = fcopy(d0, ne);
    ops->moe_balance_backward(ops, d, R, m.s, m.idx, B, T, &m.r, m.alpha);
    /* gradient terms alpha |R| f / (T Z), f <= E/K and Z >= E min s */
    double mins = 1.0;
    for (size_t i = 0; i < ne; i++) mins = fmin(mins, m.s[i]);
    Probe p = { bal_fwd, &m, 1, { m.loss }, { R }, { B }, 0.0, E + T + 8, m.alpha * maxabs(R, B) / (K * T * mins) };
    fd_check("backward ds (+=, through P)", &p, m.s, ne, d, d0);
    tfree_all();
}

/* ---- permutation ---- */

/* Against a direct construction: for each expert in order, its (n, k) in row-major order. */
static void check_layout(const char *label, const int32_t *idx, int N, int K, int E)
{
    size_t nk = (size_t)N * K;
    int32_t *pos = talloc(nk * 4 + 4), *off = talloc((E + 1) * 4), *host = talloc((E + 1) * 4);
    int32_t *ref = talloc(nk * 4 + 4), row = 0, bad_off = 0;
    for (int e = 0; e <= E; e++) off[e] = host[e] = -7;
    ops->moe_permute_layout(ops, pos, off, host, idx, N, K, E);
    for (int e = 0; e < E; e++) {
        bad_off += off[e] != row || host[e] != row;
        for (size_t i = 0; i < nk; i++) if (idx[i] == e) ref[i] = row++;
    }
    bad_off += off[E] != (int32_t)nk || host[E] != (int32_t)nk;
    printf("  %-34s N=%d K=%d E=%d\n", label, N, K, E);
    EXPECT(bad_off == 0, "moe_permute_layout %s: %d wrong offsets", label, bad_off);
    EXPECT(nk == 0 || memcmp(pos, ref, nk * 4) == 0, "moe_permute_layout %s: positions differ from the "
           "stable expert-major order", label);
}

static void test_layout(void)
{
    printf("moe_permute_layout\n");
    int N = 40;
    check_layout("random", rand_idx(N, 3, 8, 8), N, 3, 8);
    int32_t *one = talloc(N * 4), *two = talloc(N * 2 * 4);
    for (int n = 0; n < N; n++) { one[n] = 3; two[2 * n] = 5; two[2 * n + 1] = n % 2 ? 3 : 0; }
    check_layout("all to expert 3", one, N, 1, 8);
    check_layout("skewed, empty experts", two, N, 2, 8);
    check_layout("crowded in 2 of 16", rand_idx(N, 2, 16, 2), N, 2, 16);
    check_layout("no tokens", one, 0, 1, 4);
    tfree_all();
}

typedef struct { float *xp, *x, *y, *y0, *yp, *w; int32_t *pos; int N, K, C; } PermCtx;
static void gather_fwd(void *c)
{
    PermCtx *m = c;
    ops->moe_gather(ops, (act *)m->xp, (const act *)m->x, m->pos, m->N, m->K, m->C);   /* cpu: FP32 act */
}
static void combine_fwd(void *c)
{
    PermCtx *m = c;
    memcpy(m->y, m->y0, (size_t)m->N * m->C * sizeof(float));
    ops->moe_combine(ops, (act *)m->y, (const act *)m->yp, m->w, m->pos, m->N, m->K, m->C);
}

static void test_gather_combine(int N, int K, int E, int C)
{
    printf("moe_gather/combine N=%d K=%d E=%d C=%d\n", N, K, E, C);
    size_t nc = (size_t)N * C, pc = nc * K;
    int32_t *idx = rand_idx(N, K, E, E), *off = talloc((E + 1) * 4), *host = talloc((E + 1) * 4);
    PermCtx m = { randn(pc, 1), randn(nc, 1), randn(nc, 1), randn(nc, 1), randn(pc, 1), randn((size_t)N * K, 1),
                  talloc((size_t)N * K * 4), N, K, C };
    ops->moe_permute_layout(ops, m.pos, off, host, idx, N, K, E);
    gather_fwd(&m);
    combine_fwd(&m);
    int bad = 0;
    double worst = 0.0;
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            double ref = m.y0[n * C + c], mag = fabs(ref);
            for (int k = 0; k < K; k++) {
                const float *row = m.yp + (size_t)m.pos[n * K + k] * C;
                ref += (double)m.w[n * K + k] * row[c];
                mag += fabs((double)m.w[n * K + k] * row[c]);
                bad += m.xp[(size_t)m.pos[n * K + k] * C + c] != m.x[n * C + c];
            }
            /* K products and K additions onto y */
            worst = fmax(worst, fabs(m.y[n * C + c] - ref) / ((2 * K + 1) * EPS32 * mag + 1e-300));
        }
    printf("  %-34s worst %.3g of budget (n=%zu)\n", "combine forward (+=) vs double", worst, nc);
    EXPECT(bad == 0, "moe_gather: %d elements are not the token's row", bad);
    EXPECT(worst <= 1.0, "moe_combine: %.3g of the budget", worst);

    float *Rx = randn(pc, 1), *Ry = randn(nc, 1);
    float *dx0 = randn(nc, 1), *dx = fcopy(dx0, nc), *dyp0 = randn(pc, 1), *dyp = fcopy(dyp0, pc);
    float *dw0 = randn((size_t)N * K, 1), *dw = fcopy(dw0, (size_t)N * K);
    ops->moe_gather_backward(ops, (act *)dx, (const act *)Rx, m.pos, N, K, C);
    ops->moe_combine_backward(ops, (act *)dyp, dw, (const act *)Ry, (const act *)m.yp, m.w, m.pos, N, K, C);
    double ma = fmax(maxabs(m.yp, pc), maxabs(m.w, (size_t)N * K)) + maxabs(m.y0, nc);
    Probe pg = { gather_fwd, &m, 1, { m.xp }, { Rx }, { pc }, 0.0, 1, K * maxabs(Rx, pc) };
    Probe pcb = { combine_fwd, &m, 1, { m.y }, { Ry }, { nc }, 0.0, 2 * K + C + 1, C * maxabs(Ry, nc) * ma };
    fd_check("gather backward dx (+=)", &pg, m.x, nc, dx, dx0);
    fd_check("combine backward dyp (+=)", &pcb, m.yp, pc, dyp, dyp0);
    fd_check("combine backward dw (+=)", &pcb, m.w, (size_t)N * K, dw, dw0);
    tfree_all();
}

int main(void)
{
    rng_seed(&rng, test_seed());
    ops = ops_cpu_create(2, PREC_FP32);

    test_route_case("DeepSeek-V3", (RouteShape){ 64, 256, 8, 8, 4, 2.5f, 1 }, 0, 0);
    test_route_case("m=3", (RouteShape){ 64, 32, 6, 4, 2, 2.5f, 1 }, 0, 0);
    test_route_case("m=3 unnormalised", (RouteShape){ 64, 32, 6, 4, 2, 1.5f, 0 }, 0, 0);
    test_route_case("plain top-K", (RouteShape){ 64, 16, 4, 1, 1, 1.0f, 1 }, 0, 0);
    test_route_case("all groups kept", (RouteShape){ 16, 12, 3, 3, 3, 1.0f, 1 }, 0, 0);
    test_route_case("ties", (RouteShape){ 64, 32, 4, 8, 2, 2.5f, 1 }, 1, 0);
    test_route_case("odd sizes, no bias", (RouteShape){ 5, 7, 3, 1, 1, 1.0f, 1 }, 0, 1);
    test_route_case("one expert", (RouteShape){ 1, 1, 1, 1, 1, 1.0f, 1 }, 0, 0);
    test_route_backward((RouteShape){ 3, 8, 2, 4, 2, 2.5f, 1 });
    test_route_backward((RouteShape){ 2, 5, 3, 1, 1, 1.5f, 0 });
    test_count(10, 3, 7);
    test_balance(2, 3, 6, 2);
    test_balance(1, 1, 3, 1);
    test_layout();
    test_gather_combine(5, 2, 4, 3);
    test_gather_combine(1, 1, 1, 1);

    ops_destroy(ops);
    return test_finish();
}
