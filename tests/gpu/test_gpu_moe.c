/* tests/gpu/test_gpu_moe.c - the MoE ops of the CUDA table against the CPU reference: router
 * sigmoid, group-limited top-K routing (also with forced ties, no bias, no group limit, no
 * normalisation) and its backward, expert counts, the sequence-wise balance loss, and the
 * token permutation (layout with empty and overfull experts, gather, combine, backwards).
 *
 * Routing and the permutation must agree exactly: the CUDA kernels repeat the CPU's
 * operations in the CPU's order (kernels/cuda/cuda_moe.c says how), so the chosen experts,
 * their weights, every row position and offset are compared bit for bit. Elsewhere budgets
 * are derived beside each check. Fresh random inputs every run (seed printed;
 * DSTRAIN_TEST_SEED replays); both precisions of the CUDA table against the CPU table of the
 * same precision (the routing ops do not depend on it; the permutation's activations are BF16
 * on bf16, where gathers and in-order sums stay bit-identical to the CPU's emulation and the
 * combines take gpu_check's bf16_act_budget).
 *
 * Without a GPU: prints "SKIP: no CUDA GPU (...)" and exits 77 (ctest: SKIP_RETURN_CODE).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/testing.h"
#include "gpu_check.h"
#include "kernels/cuda/cuda_ops.h"

/* sigmoid 1/(1+e^-x): the two exponentials are within 2 ulp each, then an add and a divide:
 * rtol 8 u. The backward's s (1 - s) can lose relative accuracy where s is near 1, so its
 * budget is absolute: 8 u of the largest value. */
static void test_sigmoid(Pair *p, Rng *r, size_t n)
{
    char what[96];
    float *hl = host_normal(r, n, 3), *hds = host_normal(r, n, 1), *h0 = host_normal(r, n, 1);
    Buf lg = buf_new(p, hl, n), s = buf_poison(p, n), ds = buf_new(p, hds, n), dl = buf_new(p, h0, n);
    p->cpu->sigmoid_forward(p->cpu, s.c, lg.c, n);
    p->gpu->sigmoid_forward(p->gpu, s.g, lg.g, n);
    snprintf(what, sizeof what, "sigmoid_forward %zu", n);
    EXPECT(check_close(p, what, &s, 1e-30, 8 * U32, 0), "%s", what);
    float *hs = buf_host_cpu(p, &s);   /* both backwards get the CPU's s */
    Buf s0 = buf_new(p, hs, n);
    free(hs);
    p->cpu->sigmoid_backward(p->cpu, dl.c, ds.c, s0.c, n);
    p->gpu->sigmoid_backward(p->gpu, dl.g, ds.g, s0.g, n);
    buf_free(p, &s0);
    float *ref = buf_host_cpu(p, &dl);
    double scale = host_max_abs(ref, n);
    free(ref);
    snprintf(what, sizeof what, "sigmoid_backward %zu", n);
    EXPECT(check_close(p, what, &dl, 8 * U32 * scale, 8 * U32, 0), "%s", what);
    Buf *all[] = { &lg, &s, &ds, &dl };
    for (int i = 0; i < 4; i++) buf_free(p, all[i]);
    free(hl); free(hds); free(h0);
}

/* Scores in (0, 1); ties = 1 puts them on a grid of eighths so equal values are common and
 * the lower-index rule decides. The backward: per token two FP32 sums of K terms (FMA or
 * not) then K updates: rtol 8 (K + 2) u, absolute 8 (K + 2) u of the largest value. */
static void test_route(Pair *p, Rng *r, RouteShape rs, int ties, int with_bias)
{
    char what[128];
    const size_t NE = (size_t)rs.N * rs.E, NK = (size_t)rs.N * rs.K;
    float *hs = host_uniform(r, NE, 0.01f, 0.99f), *hb = host_normal(r, rs.E, 0.05f);
    if (ties) {
        for (size_t i = 0; i < NE; i++) hs[i] = (float)(1 + (int)(hs[i] * 7)) / 8;
        for (int e = 0; e < rs.E; e++) hb[e] = 0;
    }
    Buf s = buf_new(p, hs, NE), b = buf_new(p, hb, rs.E), w = buf_poison(p, NK);
    int32_t *hi = xmalloc(NK * sizeof(int32_t));
    for (size_t i = 0; i < NK; i++) hi[i] = -7;
    IBuf idx = ibuf_new(p, hi, NK);
    p->cpu->moe_route(p->cpu, idx.c, w.c, s.c, with_bias ? b.c : NULL, &rs);
    p->gpu->moe_route(p->gpu, idx.g, w.g, s.g, with_bias ? b.g : NULL, &rs);
    snprintf(what, sizeof what, "moe_route N%d E%d K%d groups %d/%d%s%s%s", rs.N, rs.E, rs.K, rs.topk_group,
             rs.n_group, ties ? " ties" : "", with_bias ? "" : " no-bias", rs.norm_topk ? "" : " no-norm");
    EXPECT(check_exact_i(p, what, &idx) && check_exact(p, what, &w), "%s", what);
    float *hdw = host_normal(r, NK, 1), *h0 = host_normal(r, NE, 1);
    Buf dw = buf_new(p, hdw, NK), ds = buf_new(p, h0, NE);
    p->cpu->moe_route_backward(p->cpu, ds.c, dw.c, s.c, idx.c, &rs);
    p->gpu->moe_route_backward(p->gpu, ds.g, dw.g, s.g, idx.g, &rs);
    float *ref = buf_host_cpu(p, &ds);
    double scale = host_max_abs(ref, NE), k = 8.0 * (rs.K + 2) * U32;
    free(ref);
    snprintf(what, sizeof what, "moe_route_backward N%d E%d K%d", rs.N, rs.E, rs.K);
    EXPECT(check_close(p, what, &ds, k * scale, k, 0), "%s", what);
    /* counts: whole-number float sums, exact in any order */
    float *hc = host_uniform(r, rs.E, 0, 100);
    for (int e = 0; e < rs.E; e++) hc[e] = floorf(hc[e]);
    Buf cnt = buf_new(p, hc, rs.E);
    p->cpu->moe_count(p->cpu, cnt.c, idx.c, (int)NK, rs.E);
    p->gpu->moe_count(p->gpu, cnt.g, idx.g, (int)NK, rs.E);
    snprintf(what, sizeof what, "moe_count N%d E%d K%d", rs.N, rs.E, rs.K);
    EXPECT(check_exact(p, what, &cnt), "%s", what);
    ibuf_free(p, &idx);
    Buf *all[] = { &s, &b, &w, &dw, &ds, &cnt };
    for (int i = 0; i < 6; i++) buf_free(p, all[i]);
    free(hs); free(hb); free(hi); free(hdw); free(h0); free(hc);
}

/* Random slots (any mix of experts; the balance loss and the permutation do not need
 * distinct experts per token). mode 0: uniform; 1: every slot to expert E/2 (all other
 * experts empty); 2: only the first quarter of the experts. */
static int32_t *random_slots(Rng *r, size_t n, int E, int mode)
{
    int32_t *h = xmalloc((n ? n : 1) * sizeof(int32_t));
    int span = mode == 2 ? (E + 3) / 4 : E;
    for (size_t i = 0; i < n; i++) h[i] = mode == 1 ? E / 2 : (int32_t)(rng_u32(r) % (uint32_t)span);
    return h;
}

/* Loss: per sequence, double sums of E terms per token then of T ratios, converted once to
 * float: rtol 4 u. Backward: float arithmetic on double-derived z and mean, which may land on
 * either side of a float rounding: rtol 4 u, absolute 4 u of the largest value. */
static void test_balance(Pair *p, Rng *r, int B, int T, int E, int K)
{
    char what[96];
    const size_t N = (size_t)B * T;
    RouteShape rs = { (int)N, E, K, 1, 1, 1.0f, 1 };
    float *hs = host_uniform(r, N * E, 0.01f, 0.99f), *hdl = host_uniform(r, B, 0.1f, 1), *h0 = host_normal(r, N * E, 1);
    int32_t *hi = random_slots(r, N * K, E, 0);
    IBuf idx = ibuf_new(p, hi, N * K);
    Buf s = buf_new(p, hs, N * E), loss = buf_poison(p, B), dl = buf_new(p, hdl, B), ds = buf_new(p, h0, N * E);
    p->cpu->moe_balance_forward(p->cpu, loss.c, s.c, idx.c, B, T, &rs, 1e-3f);
    p->gpu->moe_balance_forward(p->gpu, loss.g, s.g, idx.g, B, T, &rs, 1e-3f);
    snprintf(what, sizeof what, "moe_balance_forward B%d T%d E%d K%d", B, T, E, K);
    EXPECT(check_close(p, what, &loss, 1e-30, 4 * U32, 0), "%s", what);
    p->cpu->moe_balance_backward(p->cpu, ds.c, dl.c, s.c, idx.c, B, T, &rs, 1e-3f);
    p->gpu->moe_balance_backward(p->gpu, ds.g, dl.g, s.g, idx.g, B, T, &rs, 1e-3f);
    float *ref = buf_host_cpu(p, &ds);
    double scale = host_max_abs(ref, N * E);
    free(ref);
    snprintf(what, sizeof what, "moe_balance_backward B%d T%d E%d K%d", B, T, E, K);
    EXPECT(check_close(p, what, &ds, 4 * U32 * scale, 4 * U32, 0), "%s", what);
    ibuf_free(p, &idx);
    Buf *all[] = { &s, &loss, &dl, &ds };
    for (int i = 0; i < 4; i++) buf_free(p, all[i]);
    free(hs); free(hdl); free(h0); free(hi);
}

/* Layout, gather and gather backward are exact (copies; sums of the same terms in the same
 * slot order). Combine adds K weighted rows in slot order with a multiply-add each (FMA or
 * not): rtol 4 (K + 1) u, absolute the same share of the largest value. Combine backward:
 * dyp one multiply-add (2 u), dw a double dot converted once (2 u): rtol 4 u. */
static void test_permute(Pair *p, Rng *r, int N, int K, int E, int C, int mode)
{
    char what[128];
    const size_t NK = (size_t)N * K;
    const size_t big = NK > (size_t)E + 1 ? NK : (size_t)E + 1;
    int32_t *hi = random_slots(r, NK, E, mode), *hp = xmalloc(big * sizeof(int32_t));
    int32_t *oc = xcalloc((size_t)E + 1, sizeof(int32_t)), *og = xcalloc((size_t)E + 1, sizeof(int32_t));
    for (size_t i = 0; i < big; i++) hp[i] = -3;   /* poison: every position must be written */
    IBuf idx = ibuf_new(p, hi, NK), pos = ibuf_new(p, hp, NK), off = ibuf_new(p, hp, (size_t)E + 1);
    p->cpu->moe_permute_layout(p->cpu, pos.c, off.c, oc, idx.c, N, K, E);
    p->gpu->moe_permute_layout(p->gpu, pos.g, off.g, og, idx.g, N, K, E);
    snprintf(what, sizeof what, "moe_permute_layout N%d K%d E%d load %d", N, K, E, mode);
    EXPECT(check_exact_i(p, what, &pos) && check_exact_i(p, what, &off), "%s", what);
    EXPECT(memcmp(oc, og, ((size_t)E + 1) * sizeof(int32_t)) == 0, "%s: host offsets differ", what);
    float *hx = host_normal(r, (size_t)N * C, 1), *hw = host_uniform(r, NK, 0, 1), *hyp = host_normal(r, NK * C, 1);
    float *hy0 = host_normal(r, (size_t)N * C, 1), *hdy = host_normal(r, (size_t)N * C, 1);
    float *hdyp0 = host_normal(r, NK * C, 1), *hdw0 = host_normal(r, NK, 1);
    Buf x = buf_act(p, hx, (size_t)N * C), xp = buf_act_poison(p, NK * C), w = buf_new(p, hw, NK);
    Buf yp = buf_act(p, hyp, NK * C), y = buf_act(p, hy0, (size_t)N * C), dy = buf_act(p, hdy, (size_t)N * C);
    Buf dyp = buf_act(p, hdyp0, NK * C), dw = buf_new(p, hdw0, NK), dx = buf_act(p, hy0, (size_t)N * C);
    p->cpu->moe_gather(p->cpu, A(xp.c), CA(x.c), pos.c, N, K, C);
    p->gpu->moe_gather(p->gpu, A(xp.g), CA(x.g), pos.g, N, K, C);
    snprintf(what, sizeof what, "moe_gather N%d K%d C%d", N, K, C);
    EXPECT(check_exact(p, what, &xp), "%s", what);
    p->cpu->moe_gather_backward(p->cpu, A(dx.c), CA(yp.c), pos.c, N, K, C);
    p->gpu->moe_gather_backward(p->gpu, A(dx.g), CA(yp.g), pos.g, N, K, C);
    snprintf(what, sizeof what, "moe_gather_backward N%d K%d C%d", N, K, C);
    EXPECT(check_exact(p, what, &dx), "%s", what);
    p->cpu->moe_combine(p->cpu, A(y.c), CA(yp.c), w.c, pos.c, N, K, C);
    p->gpu->moe_combine(p->gpu, A(y.g), CA(yp.g), w.g, pos.g, N, K, C);
    float *ref = buf_host_cpu(p, &y);
    double scale = host_max_abs(ref, (size_t)N * C), k = 4.0 * (K + 1) * U32;
    free(ref);
    snprintf(what, sizeof what, "moe_combine N%d K%d C%d", N, K, C);
    EXPECT(check_close(p, what, &y, k * scale, k, 0), "%s", what);
    p->cpu->moe_combine_backward(p->cpu, A(dyp.c), dw.c, CA(dy.c), CA(yp.c), w.c, pos.c, N, K, C);
    p->gpu->moe_combine_backward(p->gpu, A(dyp.g), dw.g, CA(dy.g), CA(yp.g), w.g, pos.g, N, K, C);
    ref = buf_host_cpu(p, &dyp);
    scale = host_max_abs(ref, NK * C);
    free(ref);
    snprintf(what, sizeof what, "moe_combine_backward dyp N%d K%d C%d", N, K, C);
    EXPECT(check_close(p, what, &dyp, 4 * U32 * scale, 4 * U32, 0), "%s", what);
    ref = buf_host_cpu(p, &dw);
    scale = host_max_abs(ref, NK);
    free(ref);
    snprintf(what, sizeof what, "moe_combine_backward dw N%d K%d C%d", N, K, C);
    EXPECT(check_close(p, what, &dw, 4 * U32 * scale, 4 * U32, 0), "%s", what);
    IBuf *ib[] = { &idx, &pos, &off };
    for (int i = 0; i < 3; i++) ibuf_free(p, ib[i]);
    Buf *all[] = { &x, &xp, &w, &yp, &y, &dy, &dyp, &dw, &dx };
    for (int i = 0; i < 9; i++) buf_free(p, all[i]);
    free(hi); free(hp); free(oc); free(og); free(hx); free(hw); free(hyp); free(hy0); free(hdy);
    free(hdyp0); free(hdw0);
}

int main(void)
{
    char why[256];
    if (!cuda_gpu_count(why, sizeof why)) {
        printf("SKIP: no CUDA GPU (%s)\n", why);
        return 77;
    }
    Rng r;
    rng_seed(&r, test_seed());
    for (int prec = 0; prec < 2; prec++) {
        Pair p;
        pair_open(&p, prec ? PREC_BF16 : PREC_FP32);
        test_sigmoid(&p, &r, 1);
        test_sigmoid(&p, &r, 4096 * 32 + 7);
        RouteShape shapes[] = {
            { 1, 1, 1, 1, 1, 1.0f, 1 },         /* one expert */
            { 37, 8, 2, 4, 2, 2.5f, 1 },        /* configs/tiny.toml */
            { 4096, 32, 6, 4, 2, 2.5f, 1 },     /* configs/bench-m.toml */
            { 1000, 256, 8, 8, 4, 2.5f, 1 },    /* DeepSeek-V3 */
            { 333, 16, 4, 1, 1, 1.0f, 0 },      /* no group limit, no normalisation */
        };
        for (int i = 0; i < 5; i++) {
            test_route(&p, &r, shapes[i], 0, 1);
            test_route(&p, &r, shapes[i], 1, 1);
        }
        test_route(&p, &r, shapes[1], 0, 0);
        test_balance(&p, &r, 1, 1, 1, 1);
        test_balance(&p, &r, 4, 16, 8, 2);
        test_balance(&p, &r, 2, 4096, 32, 6);
        test_permute(&p, &r, 1, 1, 1, 1, 0);
        test_permute(&p, &r, 37, 2, 8, 33, 0);
        test_permute(&p, &r, 300, 6, 32, 100, 1);
        test_permute(&p, &r, 1000, 8, 256, 64, 2);
        test_permute(&p, &r, 4096, 6, 32, 2048, 0);
        pair_close(&p);
    }
    return test_finish();
}
