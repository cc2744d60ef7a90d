/* tests/gpu/test_gpu_ops.c - every dense op of the CUDA table against the CPU reference:
 * Linear GEMMs, RMSNorm, elementwise entries, concat, SwiGLU, embedding, cross-entropy (both
 * the accumulating and the in-place backward), RoPE, MLA key/value assembly, causal attention
 * (also with the chunk budget forced small, so the multi-chunk path runs at small shapes),
 * AdamW, sumsq; then the device-side input checks, each in a child
 * process that must DIE with the CPU backend's message. The MoE ops: test_gpu_moe.c.
 *
 * Both precisions of the CUDA table (fp32, bf16) are checked against the CPU table of the
 * same precision (bf16: the CPU's BF16 emulation; gpu_check.h says how buffers and weights
 * are paired) on fresh random inputs (seed printed; DSTRAIN_TEST_SEED replays) and awkward
 * shapes (1, not a multiple of any tile, large, an unaligned activation offset). Budgets are
 * derived beside each check; the bf16 ones were derived against exact FP32 inputs and bound
 * the difference to the emulation too (both sides now see the same BF16 inputs), and
 * gpu_check's bf16_act_budget adds the output rounding of act results. Ops whose FP32 value
 * is the same on both sides (copies, single adds, in-order sums) are required bit-identical
 * in both precisions. Outputs of overwriting ops start as NaN (an unwritten element fails),
 * accumulating ops start from random values (so += is checked).
 *
 * Without a GPU: prints "SKIP: no CUDA GPU (...)" and exits 77 (ctest: SKIP_RETURN_CODE).
 * `test_gpu_ops --probe` only answers whether a GPU is there (0) or not (77), for scripts.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../unit/testing.h"
#include "gpu_check.h"
#include "kernels/cuda/cuda_ops.h"

/* ---- Linear ---- */

/* Budget of one GEMM element: gemm_elem_budget (gpu_check.h; test_bf16_bound checks it by
 * simulation at K = 1, where nothing but the operand rounding separates the two). Normwise:
 * FP32 ~ sqrt(K) u = 3e-6 at K = 2048, budget 1e-5; BF16 operand rounding leaves ~3.2e-3
 * (two roundings of RMS u16/sqrt(3) = 2.3e-3 each), budget 1e-2. */
static float *gemm_budget(const Pair *p, const float *absprod, size_t n, int K)
{
    float *b = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        b[i] = (float)gemm_elem_budget(p->prec == PREC_BF16, U16, K, absprod[i]) + 1e-30f;
    return b;
}

static double gemm_norm(const Pair *p) { return p->prec == PREC_BF16 ? 1e-2 : 1e-5; }

static void test_matmul(Pair *p, Rng *r, int N, int IC, int OC, int offset)
{
    char what[96];
    Ops *c = p->cpu;
    float *hx = host_uniform(r, (size_t)N * IC + offset, -1, 1), *hw = host_uniform(r, (size_t)OC * IC + offset, -1, 1);
    float *hdy = host_uniform(r, (size_t)N * OC + offset, -1, 1);
    float *ax = host_abs(hx + offset, (size_t)N * IC), *aw = host_abs(hw + offset, (size_t)OC * IC);
    float *ady = host_abs(hdy + offset, (size_t)N * OC);
    Buf x = buf_act(p, hx, (size_t)N * IC + offset), w = buf_new(p, hw, (size_t)OC * IC + offset);
    Buf dy = buf_act(p, hdy, (size_t)N * OC + offset);
    WPair wp = wpair_new(p, w.c + offset, (float *)w.g + offset, OC, IC);
    const act *xc = buf_act_c(p, &x, offset), *xg = buf_act_g(p, &x, offset);
    const act *dyc = buf_act_c(p, &dy, offset), *dyg = buf_act_g(p, &dy, offset);
    Ops *c32 = p->cpu32;    /* |A||B| for the budgets, unrounded */
    /* forward: out = x W^T */
    Buf out = buf_act_poison(p, (size_t)N * OC);
    c->matmul_forward(c, A(out.c), xc, &wp.c, N, IC, OC);
    p->gpu->matmul_forward(p->gpu, A(out.g), xg, &wp.g, N, IC, OC);
    float *prod = xcalloc((size_t)N * OC, sizeof(float));
    c32->matmul_forward(c32, A(prod), CA(ax), WG(aw, OC, IC), N, IC, OC);
    float *bud = gemm_budget(p, prod, (size_t)N * OC, IC);
    snprintf(what, sizeof what, "matmul_forward %dx%dx%d%s", N, IC, OC, offset ? " unaligned" : "");
    EXPECT(check_bound(p, what, &out, bud, 2 * U32, gemm_norm(p)), "%s", what);
    free(prod);
    free(bud);
    /* backward input: dinp (random start) += dy W */
    float *h0 = host_uniform(r, (size_t)N * IC, -1, 1);
    Buf dinp = buf_act(p, h0, (size_t)N * IC);
    c->matmul_backward_input(c, A(dinp.c), dyc, &wp.c, N, IC, OC);
    p->gpu->matmul_backward_input(p->gpu, A(dinp.g), dyg, &wp.g, N, IC, OC);
    prod = xcalloc((size_t)N * IC, sizeof(float));
    c32->matmul_backward_input(c32, A(prod), CA(ady), WG(aw, OC, IC), N, IC, OC);
    bud = gemm_budget(p, prod, (size_t)N * IC, OC);
    snprintf(what, sizeof what, "matmul_backward_input %dx%dx%d", N, IC, OC);
    EXPECT(check_bound(p, what, &dinp, bud, 2 * U32, gemm_norm(p)), "%s", what);
    free(prod);
    free(bud);
    free(h0);
    /* backward weight: dW (random start) += dy^T x */
    h0 = host_uniform(r, (size_t)OC * IC, -1, 1);
    Buf dw = buf_new(p, h0, (size_t)OC * IC);
    c->matmul_backward_weight(c, dw.c, &wp.c, dyc, xc, N, IC, OC);
    p->gpu->matmul_backward_weight(p->gpu, dw.g, &wp.g, dyg, xg, N, IC, OC);
    prod = xcalloc((size_t)OC * IC, sizeof(float));
    c32->matmul_backward_weight(c32, prod, WG(aw, OC, IC), CA(ady), CA(ax), N, IC, OC);
    bud = gemm_budget(p, prod, (size_t)OC * IC, N);
    snprintf(what, sizeof what, "matmul_backward_weight %dx%dx%d", N, IC, OC);
    EXPECT(check_bound(p, what, &dw, bud, 2 * U32, gemm_norm(p)), "%s", what);
    free(prod);
    free(bud);
    free(h0);
    wpair_free(p, &wp);
    Buf *all[] = { &x, &w, &dy, &out, &dinp, &dw };
    for (int i = 0; i < 6; i++) buf_free(p, all[i]);
    free(hx); free(hw); free(hdy); free(ax); free(aw); free(ady);
}

/* ---- RMSNorm ---- */

/* The GPU sums x^2 in FP32 over <= C/256 terms per thread and an 8-level tree (the CPU in
 * double): relative error <= (C/256 + 8) u on the sum, half of it on r, plus 3 roundings in
 * w * (x * r): below 1e-5 for C <= 2^15 (2x margin at the largest). Backward: dx subtracts two
 * terms of the row's scale, so its budget is absolute, 1e-5 of the largest term; dweight
 * sums N rows (FP32 in chunks of 64, then the chunks in double): (64 + 2) u relative to the
 * sum of |terms| of a chunk, which for random signs stays within 1e-5 of the largest |ref|
 * at these N (sqrt(N) growth); budget 1e-5 relative plus 1e-5 of the largest value. */
static void test_rmsnorm(Pair *p, Rng *r, int N, int C)
{
    char what[96];
    float *hx = host_normal(r, (size_t)N * C, 1), *hw = host_uniform(r, C, 0.5f, 1.5f);
    float *hdy = host_normal(r, (size_t)N * C, 1), *h0 = host_normal(r, (size_t)N * C, 1);
    float *hw0 = host_normal(r, C, 1);
    Buf x = buf_act(p, hx, (size_t)N * C), w = buf_new(p, hw, C), dy = buf_act(p, hdy, (size_t)N * C);
    Buf y = buf_act_poison(p, (size_t)N * C), rs = buf_poison(p, N);
    Buf dx = buf_act(p, h0, (size_t)N * C), dw = buf_new(p, hw0, C);
    p->cpu->rmsnorm_forward(p->cpu, A(y.c), rs.c, CA(x.c), w.c, N, C, 1e-6f);
    p->gpu->rmsnorm_forward(p->gpu, A(y.g), rs.g, CA(x.g), w.g, N, C, 1e-6f);
    snprintf(what, sizeof what, "rmsnorm_forward %dx%d", N, C);
    EXPECT(check_close(p, what, &y, 1e-30, 1e-5, 0), "%s", what);
    snprintf(what, sizeof what, "rmsnorm_forward rstd %dx%d", N, C);
    EXPECT(check_close(p, what, &rs, 1e-30, 1e-5, 0), "%s", what);
    /* the backward of both gets the CPU's rstd, so it is tested on its own */
    float *hr = buf_host_cpu(p, &rs);
    Buf r0 = buf_new(p, hr, N);
    free(hr);
    p->cpu->rmsnorm_backward(p->cpu, A(dx.c), dw.c, CA(dy.c), CA(x.c), w.c, r0.c, N, C);
    p->gpu->rmsnorm_backward(p->gpu, A(dx.g), dw.g, CA(dy.g), CA(x.g), w.g, r0.g, N, C);
    buf_free(p, &r0);
    float *ref = buf_host_cpu(p, &dx);
    double scale = host_max_abs(ref, (size_t)N * C);
    free(ref);
    snprintf(what, sizeof what, "rmsnorm_backward dinp %dx%d", N, C);
    EXPECT(check_close(p, what, &dx, 1e-5 * scale, 1e-5, 0), "%s", what);
    ref = buf_host_cpu(p, &dw);
    scale = host_max_abs(ref, C);
    free(ref);
    snprintf(what, sizeof what, "rmsnorm_backward dweight %dx%d", N, C);
    EXPECT(check_close(p, what, &dw, 1e-5 * scale, 1e-5, 0), "%s", what);
    Buf *all[] = { &x, &w, &dy, &y, &rs, &dx, &dw };
    for (int i = 0; i < 7; i++) buf_free(p, all[i]);
    free(hx); free(hw); free(hdy); free(h0); free(hw0);
}

/* ---- elementwise, concat, SwiGLU, embedding ---- */

/* add, scale and concat are one rounding or none per element, the same on both: exact.
 * sumsq: both accumulate non-negative terms in double, n 2^-53 relative each: 1e-9 at n = 1e7. */
static void test_elementwise(Pair *p, Rng *r, size_t n)
{
    char what[96];
    float *hx = host_normal(r, n, 1), *hy = host_normal(r, n, 1);
    Buf xa = buf_act(p, hx, n), ya = buf_act(p, hy, n), x = buf_new(p, hx, n), y = buf_new(p, hy, n);
    p->cpu->add(p->cpu, A(ya.c), CA(xa.c), n);
    p->gpu->add(p->gpu, A(ya.g), CA(xa.g), n);
    snprintf(what, sizeof what, "add %zu", n);
    EXPECT(check_exact(p, what, &ya), "%s", what);
    p->cpu->scale(p->cpu, y.c, -0.37f, n);
    p->gpu->scale(p->gpu, y.g, -0.37f, n);
    snprintf(what, sizeof what, "scale %zu", n);
    EXPECT(check_exact(p, what, &y), "%s", what);
    double sc = p->cpu->sumsq(p->cpu, x.c, n), sg = p->gpu->sumsq(p->gpu, x.g, n);
    double rel = sc > 0 ? fabs(sg - sc) / sc : fabs(sg);
    printf("  %s sumsq %-40zu relative error %.2e (budget 1e-09)\n", p->tag, n, rel);
    EXPECT(rel <= 1e-9, "sumsq %zu: gpu %.17g cpu %.17g", n, sg, sc);
    buf_free(p, &x);
    buf_free(p, &y);
    buf_free(p, &xa);
    buf_free(p, &ya);
    free(hx);
    free(hy);
}

static void test_concat_swiglu(Pair *p, Rng *r, int N, int A, int Bc, int F)
{
    char what[96];
    float *ha = host_normal(r, (size_t)N * A, 1), *hb = host_normal(r, (size_t)N * Bc, 1);
    float *hd = host_normal(r, (size_t)N * (A + Bc), 1);
    Buf a = buf_act(p, ha, (size_t)N * A), b = buf_act(p, hb, (size_t)N * Bc);
    Buf out = buf_act_poison(p, (size_t)N * (A + Bc)), dout = buf_act(p, hd, (size_t)N * (A + Bc));
    p->cpu->concat_forward(p->cpu, A(out.c), CA(a.c), CA(b.c), N, A, Bc);
    p->gpu->concat_forward(p->gpu, A(out.g), CA(a.g), CA(b.g), N, A, Bc);
    snprintf(what, sizeof what, "concat_forward %dx(%d+%d)", N, A, Bc);
    EXPECT(check_exact(p, what, &out), "%s", what);
    p->cpu->concat_backward(p->cpu, A(a.c), A(b.c), CA(dout.c), N, A, Bc);
    p->gpu->concat_backward(p->gpu, A(a.g), A(b.g), CA(dout.g), N, A, Bc);
    snprintf(what, sizeof what, "concat_backward %dx(%d+%d)", N, A, Bc);
    EXPECT(check_exact(p, what, &a) && check_exact(p, what, &b), "%s", what);
    /* SwiGLU: expf on the GPU and the CPU's polynomial are each within 2 ulp, so sigmoid
     * within ~6 u and the product within ~10 u: rtol 16 u. The backward's
     * (1 + g (1 - sig)) can cancel, so its budget is absolute, 16 u of the largest value. */
    float *hg = host_normal(r, (size_t)N * 2 * F, 2), *hdy = host_normal(r, (size_t)N * F, 1);
    float *h0 = host_normal(r, (size_t)N * 2 * F, 1);
    Buf gu = buf_act(p, hg, (size_t)N * 2 * F), h = buf_act_poison(p, (size_t)N * F);
    Buf dy = buf_act(p, hdy, (size_t)N * F), dgu = buf_act(p, h0, (size_t)N * 2 * F);
    p->cpu->swiglu_forward(p->cpu, A(h.c), CA(gu.c), N, F);
    p->gpu->swiglu_forward(p->gpu, A(h.g), CA(gu.g), N, F);
    snprintf(what, sizeof what, "swiglu_forward %dx%d", N, F);
    EXPECT(check_close(p, what, &h, 1e-30, 16 * U32, 0), "%s", what);
    p->cpu->swiglu_backward(p->cpu, A(dgu.c), CA(dy.c), CA(gu.c), N, F);
    p->gpu->swiglu_backward(p->gpu, A(dgu.g), CA(dy.g), CA(gu.g), N, F);
    float *ref = buf_host_cpu(p, &dgu);
    double scale = host_max_abs(ref, (size_t)N * 2 * F);
    free(ref);
    snprintf(what, sizeof what, "swiglu_backward %dx%d", N, F);
    EXPECT(check_close(p, what, &dgu, 16 * U32 * scale, 16 * U32, 0), "%s", what);
    Buf *all[] = { &a, &b, &out, &dout, &gu, &h, &dy, &dgu };
    for (int i = 0; i < 8; i++) buf_free(p, all[i]);
    free(ha); free(hb); free(hd); free(hg); free(hdy); free(h0);
}

/* Gathers are exact; the backward adds each position's row into its token's row in
 * increasing position order on both backends: exact too, repeats included. */
static void test_embedding(Pair *p, Rng *r, int N, int C, int V)
{
    char what[96];
    int32_t *ht = xmalloc((size_t)N * sizeof(int32_t));
    for (int n = 0; n < N; n++) ht[n] = (int32_t)(rng_u32(r) % (uint32_t)V);
    float *htab = host_normal(r, (size_t)V * C, 1), *hd = host_normal(r, (size_t)N * C, 1);
    IBuf tok = ibuf_new(p, ht, N);
    Buf tab = buf_new(p, htab, (size_t)V * C), out = buf_act_poison(p, (size_t)N * C);
    Buf d = buf_act(p, hd, (size_t)N * C);
    p->cpu->embedding_forward(p->cpu, A(out.c), tok.c, tab.c, N, C);
    p->gpu->embedding_forward(p->gpu, A(out.g), tok.g, tab.g, N, C);
    snprintf(what, sizeof what, "embedding_forward %dx%d V=%d", N, C, V);
    EXPECT(check_exact(p, what, &out), "%s", what);
    p->cpu->embedding_backward(p->cpu, tab.c, CA(d.c), tok.c, N, C);
    p->gpu->embedding_backward(p->gpu, tab.g, CA(d.g), tok.g, N, C);
    snprintf(what, sizeof what, "embedding_backward %dx%d V=%d", N, C, V);
    EXPECT(check_exact(p, what, &tab), "%s", what);
    ibuf_free(p, &tok);
    buf_free(p, &tab);
    buf_free(p, &out);
    buf_free(p, &d);
    free(ht); free(htab); free(hd);
}

/* ---- cross-entropy ---- */

/* lse: the GPU's per-thread online sums (<= V/512 terms) and a 9-level tree in FP32 against
 * the CPU's double sum: relative error of the sum <= (V/512 + 12) u, so |d lse| <= that + u
 * |lse|; the loss lse - x_t adds u |loss|: atol (V/512 + 16) u, rtol 2 u. The gradient
 * dl exp(x - lse) inherits |d lse| as a relative error, plus the exponential's 2 ulp:
 * rtol (V/512 + 24) u, atol the same share of the largest value (the target's -dl term
 * cancels). Rows with target -1 are ignored: loss 0, gradient 0 in place. */
static void test_xent(Pair *p, Rng *r, int N, int V)
{
    char what[96];
    int32_t *ht = xmalloc((size_t)N * sizeof(int32_t));
    for (int n = 0; n < N; n++) ht[n] = n % 5 == 3 ? -1 : (int32_t)(rng_u32(r) % (uint32_t)V);
    float *hl = host_normal(r, (size_t)N * V, 3), *hdl = host_uniform(r, N, 0.1f, 1.0f);
    float *h0 = host_normal(r, (size_t)N * V, 1);
    IBuf tg = ibuf_new(p, ht, N);
    Buf lg = buf_act(p, hl, (size_t)N * V), dl = buf_new(p, hdl, N), loss = buf_poison(p, N);
    Buf acc = buf_act(p, h0, (size_t)N * V);
    double k = (double)V / 512 + 16;
    p->cpu->xent_forward(p->cpu, loss.c, CA(lg.c), tg.c, N, V);
    p->gpu->xent_forward(p->gpu, loss.g, CA(lg.g), tg.g, N, V);
    snprintf(what, sizeof what, "xent_forward %dx%d", N, V);
    EXPECT(check_close(p, what, &loss, k * U32, 2 * U32, 0), "%s", what);
    p->cpu->xent_backward(p->cpu, A(acc.c), CA(lg.c), tg.c, dl.c, N, V);
    p->gpu->xent_backward(p->gpu, A(acc.g), CA(lg.g), tg.g, dl.g, N, V);
    snprintf(what, sizeof what, "xent_backward (accumulate) %dx%d", N, V);
    EXPECT(check_close(p, what, &acc, (k + 8) * U32, (k + 8) * U32, 0), "%s", what);
    p->cpu->xent_backward(p->cpu, A(lg.c), CA(lg.c), tg.c, dl.c, N, V);
    p->gpu->xent_backward(p->gpu, A(lg.g), CA(lg.g), tg.g, dl.g, N, V);
    float *ref = buf_host_cpu(p, &lg);
    double scale = host_max_abs(ref, (size_t)N * V);
    free(ref);
    snprintf(what, sizeof what, "xent_backward (in place) %dx%d", N, V);
    EXPECT(check_close(p, what, &lg, (k + 8) * U32 * scale, (k + 8) * U32, 0), "%s", what);
    ibuf_free(p, &tg);
    Buf *all[] = { &lg, &dl, &loss, &acc };
    for (int i = 0; i < 4; i++) buf_free(p, all[i]);
    free(ht); free(hl); free(hdl); free(h0);
}

/* ---- RoPE and MLA key/value assembly ---- */

/* A rotation element a c - b s: each product rounds (u) and the difference rounds (u), with
 * FMA contraction possible on either side: |d| <= 4 u (|a c| + |b s|) <= 4 u max|x| * 2. */
static void test_rope_kv(Pair *p, Rng *r, int B, int T, int H, int Dn, int Dr, int Dv)
{
    char what[96];
    const int N = B * T, Dqk = Dn + Dr, half = Dr / 2;
    float *hc = xmalloc((size_t)T * half * sizeof(float)), *hs = xmalloc((size_t)T * half * sizeof(float));
    for (int t = 0; t < T; t++)
        for (int j = 0; j < half; j++) {
            double ang = t * pow(10000.0, -2.0 * j / Dr);
            hc[t * half + j] = (float)cos(ang);
            hs[t * half + j] = (float)sin(ang);
        }
    float *hq = host_normal(r, (size_t)N * H * Dqk, 1);
    Buf cs = buf_new(p, hc, (size_t)T * half), sn = buf_new(p, hs, (size_t)T * half), q = buf_act(p, hq, (size_t)N * H * Dqk);
    RopeShape rq = { N, T, H, H * Dqk, Dqk, Dn, Dr };
    double tol = 8 * U32 * host_max_abs(hq, (size_t)N * H * Dqk);
    p->cpu->rope_forward(p->cpu, A(q.c), cs.c, sn.c, &rq);
    p->gpu->rope_forward(p->gpu, A(q.g), cs.g, sn.g, &rq);
    snprintf(what, sizeof what, "rope_forward %dx%dx%d rope %d", N, H, Dqk, Dr);
    EXPECT(check_close(p, what, &q, tol, 0, 0), "%s", what);
    p->cpu->rope_backward(p->cpu, A(q.c), cs.c, sn.c, &rq);
    p->gpu->rope_backward(p->gpu, A(q.g), cs.g, sn.g, &rq);
    /* bf16: the backward rotates the forward's outputs, which may already differ by their
     * bf16_act_budget, tol (1 + u16) + 2 u16 (1 + 2 u16) |y| with |y| <= sqrt(2) max|x| (a
     * rotated pair keeps its norm); the rotation passes a pair's differences on with norm
     * at most sqrt(2) times the larger: 1.5 tol + 4 u16 (1 + 2 u16) max|x| covers it */
    const double mx = host_max_abs(hq, (size_t)N * H * Dqk);
    const double carried = p->prec == PREC_FP32 ? 0 : 1.5 * tol + 4 * U16 * (1 + 2 * U16) * mx;
    snprintf(what, sizeof what, "rope_backward %dx%dx%d rope %d", N, H, Dqk, Dr);
    EXPECT(check_close(p, what, &q, 2 * tol + carried, 0, 0), "%s", what);
    /* k (N,H,Dqk), v (N,H,Dv) from kv and k_rope: copies, exact; the backward adds single
     * values and sums the heads' rope parts in head order on both: exact. */
    float *hkv = host_normal(r, (size_t)N * H * (Dn + Dv), 1), *hkr = host_normal(r, (size_t)N * Dr, 1);
    float *hdk = host_normal(r, (size_t)N * H * Dqk, 1), *hdv = host_normal(r, (size_t)N * H * Dv, 1);
    Buf kv = buf_act(p, hkv, (size_t)N * H * (Dn + Dv)), kr = buf_act(p, hkr, (size_t)N * Dr);
    Buf k = buf_act_poison(p, (size_t)N * H * Dqk), v = buf_act_poison(p, (size_t)N * H * Dv);
    Buf dk = buf_act(p, hdk, (size_t)N * H * Dqk), dv = buf_act(p, hdv, (size_t)N * H * Dv);
    MlaKvShape ks = { N, H, Dn, Dr, Dv };
    p->cpu->mla_kv_split(p->cpu, A(k.c), A(v.c), CA(kv.c), CA(kr.c), &ks);
    p->gpu->mla_kv_split(p->gpu, A(k.g), A(v.g), CA(kv.g), CA(kr.g), &ks);
    snprintf(what, sizeof what, "mla_kv_split %dx%d (%d+%d, %d)", N, H, Dn, Dr, Dv);
    EXPECT(check_exact(p, what, &k) && check_exact(p, what, &v), "%s", what);
    p->cpu->mla_kv_split_backward(p->cpu, A(kv.c), A(kr.c), CA(dk.c), CA(dv.c), &ks);
    p->gpu->mla_kv_split_backward(p->gpu, A(kv.g), A(kr.g), CA(dk.g), CA(dv.g), &ks);
    snprintf(what, sizeof what, "mla_kv_split_backward %dx%d", N, H);
    EXPECT(check_exact(p, what, &kv) && check_exact(p, what, &kr), "%s", what);
    Buf *all[] = { &cs, &sn, &q, &kv, &kr, &k, &v, &dk, &dv };
    for (int i = 0; i < 9; i++) buf_free(p, all[i]);
    free(hc); free(hs); free(hq); free(hkv); free(hkr); free(hdk); free(hdv);
}

/* ---- causal attention ---- */

/* Inputs uniform in [-1, 1] (every |value| <= 1), scale s = 1/sqrt(Dqk).
 * Scores: each backend's FP32 dot of Dqk products errs by <= Dqk u s sum|q k| <= Dqk^2 u s, so
 * they differ by delta <= 2 Dqk^2 u s; BF16 operands add 2 u16 Dqk s (q and k rounded).
 * log-sum-exp is 1-Lipschitz in the largest score change: |d lse| <= delta + (T + 2) u.
 * out = sum_j P_j v_j: |dP_j| <= 2 delta P_j, so |d out| <= (2 delta + (T + 2) u) max|v|,
 * plus (2 u16 + u16^2) max|v| when P and v are rounded to BF16 for the PV product.
 * These worst cases are loose; the precision check is normwise: FP32 ~ sqrt(K) u per product
 * over three chained products, budget 1e-5 (out) / 2e-5 (gradients); BF16 ~2.3e-3 RMS per
 * rounded operand, two to four per path, ~3e-3 (out) / ~5e-3 (gradients), budgets 2e-2 / 3e-2.
 * Gradients: a missed chunk or misplaced row moves elements by O(max|ref|), caught by an
 * elementwise budget of 1e-3 (FP32) / 5e-2 (BF16) of the largest increment; BF16 adds the
 * absolute floor attn_bwd_floor_bf16 (gpu_check.h), which alone carries T = 1 (increments 0);
 * for dk the floor is scaled by the key's column sum of P (attn_colsums, ~ln T for early keys
 * on these inputs). */
/* colsum (B, H, T): key j's sum over the queries i >= j of P_ij = exp(s q_i.k_j - lse_i), in
 * double from the CPU's lse (the floor's e^delta covers the GPU's rebuilt P). */
static double *attn_colsums(const float *q, const float *k, const float *lse, const AttnShape *as)
{
    const int B = as->B, T = as->T, H = as->H, D = as->Dqk;
    double *cs = xcalloc((size_t)B * H * T, sizeof(double));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                const float *qi = q + (((size_t)b * T + i) * H + h) * D;
                double l = lse[((size_t)b * H + h) * T + i];
                for (int j = 0; j <= i; j++) {
                    const float *kj = k + (((size_t)b * T + j) * H + h) * D;
                    double dot = 0;
                    for (int d = 0; d < D; d++) dot += (double)qi[d] * kj[d];
                    cs[((size_t)b * H + h) * T + j] += exp(as->scale * dot - l);
                }
            }
    return cs;
}

static void test_attention(Pair *p, Rng *r, int B, int T, int H, int Dqk, int Dv, const char *note)
{
    char what[128];
    const size_t nqk = (size_t)B * T * H * Dqk, nv = (size_t)B * T * H * Dv, nl = (size_t)B * H * T;
    const int bf = p->prec == PREC_BF16;
    float *hq = host_uniform(r, nqk, -1, 1), *hk = host_uniform(r, nqk, -1, 1), *hv = host_uniform(r, nv, -1, 1);
    float *hdo = host_uniform(r, nv, -1, 1);
    Buf q = buf_act(p, hq, nqk), k = buf_act(p, hk, nqk), v = buf_act(p, hv, nv), dout = buf_act(p, hdo, nv);
    Buf out = buf_act_poison(p, nv), lse = buf_poison(p, nl);
    AttnShape as = { B, T, H, Dqk, Dv, (float)(1.0 / sqrt((double)Dqk)) };
    p->cpu->attention_forward(p->cpu, A(out.c), lse.c, CA(q.c), CA(k.c), CA(v.c), &as);
    p->gpu->attention_forward(p->gpu, A(out.g), lse.g, CA(q.g), CA(k.g), CA(v.g), &as);
    double delta = 2.0 * Dqk * Dqk * U32 * as.scale + (bf ? 2 * U16 * Dqk * as.scale : 0);
    double lse_tol = delta + (T + 2) * U32, out_tol = 2 * delta + (T + 2) * U32 + (bf ? 2 * U16 + U16 * U16 : 0);
    snprintf(what, sizeof what, "attention_forward %dx%dx%d (%d, %d)%s", B, T, H, Dqk, Dv, note);
    EXPECT(check_close(p, what, &out, out_tol, 0, bf ? 2e-2 : 1e-5), "%s", what);
    snprintf(what, sizeof what, "attention_forward lse%s", note);
    EXPECT(check_close(p, what, &lse, lse_tol, 0, 0), "%s", what);
    /* backward from the CPU's out and lse on both, gradients starting at random values */
    float *ho = buf_host_cpu(p, &out), *hl = buf_host_cpu(p, &lse);
    Buf o0 = buf_act(p, ho, nv), l0 = buf_new(p, hl, nl);
    float *h0q = host_uniform(r, nqk, 0.5f, 1), *h0k = host_uniform(r, nqk, 0.5f, 1), *h0v = host_uniform(r, nv, 0.5f, 1);
    Buf dq = buf_act(p, h0q, nqk), dk = buf_act(p, h0k, nqk), dv = buf_act(p, h0v, nv);
    /* the starting values as stored (BF16-rounded on a bf16 pair), so increments are exact */
    float *s0q = buf_host_cpu(p, &dq), *s0k = buf_host_cpu(p, &dk), *s0v = buf_host_cpu(p, &dv);
    p->cpu->attention_backward(p->cpu, A(dq.c), A(dk.c), A(dv.c), CA(dout.c), CA(q.c), CA(k.c), CA(v.c), CA(o0.c),
                               l0.c, &as);
    p->gpu->attention_backward(p->gpu, A(dq.g), A(dk.g), A(dv.g), CA(dout.g), CA(q.g), CA(k.g), CA(v.g), CA(o0.g),
                               l0.g, &as);
    const Buf *g[3] = { &dq, &dk, &dv };
    const float *base[3] = { s0q, s0k, s0v };
    const char *name[3] = { "dq", "dk", "dv" };
    /* BF16: plus the absolute floor of gpu_check.h (dv = P^T dO has none: its error scales
     * with its own terms), for dk times key j's column sum of P; the inputs are within
     * [-1, 1], so every max| | is 1 */
    const double unit = bf ? attn_bwd_floor_bf16(U16, Dqk, Dv, as.scale, 1, 1, 1, 1, 1, 1) : 0;
    /* from q and k as stored (BF16 on a bf16 pair), which the CPU's lse was computed from */
    float *sq = buf_host_cpu(p, &q), *sk = buf_host_cpu(p, &k);
    double *colsum = bf ? attn_colsums(sq, sk, hl, &as) : NULL, total = 0;
    free(sq);
    free(sk);
    for (size_t j = 0; bf && j < nl; j++) total += colsum[j];
    /* every row of P sums to 1: the column sums add up to B H T (FP32 lse: ~1e-6 relative) */
    EXPECT(!bf || fabs(total - (double)nl) <= 1e-4 * nl, "attention column sums %.9g, want %zu", total, nl);
    for (int i = 0; i < 3; i++) {
        float *ref = buf_host_cpu(p, g[i]);
        double inc = 0;
        for (size_t j = 0; j < g[i]->n; j++) inc = fmax(inc, fabs((double)ref[j] - base[i][j]));
        free(ref);
        snprintf(what, sizeof what, "attention_backward %s%s", name[i], note);
        float *bound = xmalloc(g[i]->n * sizeof(float));
        const int D = i == 2 ? Dv : Dqk;
        for (size_t j = 0; j < g[i]->n; j++) {
            size_t row = j / (size_t)D, t = row / H % T, b = row / H / T, h = row % H;
            double fl = i == 0 ? unit : i == 1 && bf ? unit * colsum[(b * H + h) * T + t] : 0;   /* fp32: none */
            bound[j] = (float)((bf ? 5e-2 : 1e-3) * inc + fl + 4 * U32);
        }
        EXPECT(check_delta_bound(p, what, g[i], base[i], bound, 0, bf ? 3e-2 : 2e-5), "%s", what);
        free(bound);
    }
    free(colsum);
    Buf *all[] = { &q, &k, &v, &dout, &out, &lse, &o0, &l0, &dq, &dk, &dv };
    for (int i = 0; i < 11; i++) buf_free(p, all[i]);
    free(hq); free(hk); free(hv); free(hdo); free(ho); free(hl); free(h0q); free(h0k); free(h0v);
    free(s0q); free(s0k); free(s0v);
}

/* ---- AdamW ---- */

/* m, v: two products and a sum each (FMA or not): |d| <= 4 u |value|; with BF16 moments the
 * stored values may straddle a rounding boundary: one BF16 ulp, <= 2^-7 relative.
 * param -= lr (t + wd p), t = mhat / (sqrt(vhat) + eps) in ~8 roundings: |d param| <=
 * u |p| + lr 8 u (|t| + wd |p|) + lr |t| 4 u (the moments' own difference): budget
 * 16 u (max|p| + lr max|t|), t taken from the CPU's result. */
static void test_adamw(Pair *p, Rng *r, size_t n, int bf16_moments, int step)
{
    char what[96];
    float *hp = host_uniform(r, n, -1, 1), *hg = host_normal(r, n, 0.1f), *hm = host_normal(r, n, 0.01f);
    float *hv = host_uniform(r, n, 0, 0.01f);
    Buf pa = buf_new(p, hp, n), gr = buf_new(p, hg, n), m = buf_new(p, hm, n), v = buf_new(p, hv, n);
    AdamArgs a = { 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, step, bf16_moments, 1.0f };
    p->cpu->adamw_update(p->cpu, pa.c, gr.c, m.c, v.c, n, &a);
    p->gpu->adamw_update(p->gpu, pa.g, gr.g, m.g, v.g, n, &a);
    float *rm = buf_host_cpu(p, &m), *rv = buf_host_cpu(p, &v);
    double bc1 = 1 - pow(0.9, step), bc2 = 1 - pow(0.95, step), tmax = 0;
    for (size_t i = 0; i < n; i++) tmax = fmax(tmax, fabs(rm[i] / bc1) / (sqrt(rv[i] / bc2) + 1e-8));
    double mtol = bf16_moments ? 1.0 / 128 : 4 * U32;
    snprintf(what, sizeof what, "adamw_update %zu step %d%s param", n, step, bf16_moments ? " bf16-moments" : "");
    EXPECT(check_close(p, what, &pa, 16 * U32 * (1 + 1e-2 * tmax), 0, 0), "%s", what);
    snprintf(what, sizeof what, "adamw_update %zu step %d moments", n, step);
    EXPECT(check_close(p, what, &m, 1e-30, mtol, 0) && check_close(p, what, &v, 1e-30, mtol, 0), "%s", what);
    Buf *all[] = { &pa, &gr, &m, &v };
    for (int i = 0; i < 4; i++) buf_free(p, all[i]);
    free(hp); free(hg); free(hm); free(hv); free(rm); free(rv);
}

/* ---- device-side input checks, in child processes ---- */

/* Runs the failure `mode` in a child; it must exit 1 with one line on stderr holding want. */
static int run_child(const char *mode, const char *want)
{
    char self[4096], err[] = "/tmp/dstrain-gpu-child-XXXXXX", cmd[8400], line[2048] = "";
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0) return 0;
    self[len] = 0;
    int fd = mkstemp(err);
    if (fd < 0) return 0;
    close(fd);
    snprintf(cmd, sizeof cmd, "'%s' --child %s > /dev/null 2> '%s'", self, mode, err);
    int status = system(cmd), lines = 0;
    FILE *f = fopen(err, "r");
    char buf[2048];
    while (f && fgets(buf, sizeof buf, f)) {
        if (!lines++) snprintf(line, sizeof line, "%s", buf);
    }
    if (f) fclose(f);
    unlink(err);
    int rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    int ok = rc == 1 && lines == 1 && strstr(line, want) != NULL;
    printf("  child %-20s exit %d, %d line(s): %s%s", mode, rc, lines, line, lines ? "" : "\n");
    return ok;
}

static int child_main(const char *mode)
{
    if (!strcmp(mode, "nogpu")) {
        setenv("CUDA_VISIBLE_DEVICES", "", 1);
        ops_cuda_create(PREC_BF16);
        return 0;
    }
    Ops *o = ops_cuda_create(PREC_FP32);
    int32_t bad[4] = { 0, 1, -1, 2 };
    int32_t *t = o->alloc(o, sizeof bad);
    float *x = o->alloc(o, 4 * 8 * sizeof(float)), *y = o->alloc(o, 4 * 8 * sizeof(float));
    int32_t *pos = o->alloc(o, sizeof bad), *off = o->alloc(o, 9 * sizeof(int32_t)), host[9];
    if (!strcmp(mode, "xent-target")) bad[2] = 8;
    if (!strcmp(mode, "permute-index")) bad[2] = 8;
    o->upload(o, t, bad, sizeof bad);
    if (!strcmp(mode, "embed-negative")) o->embedding_forward(o, A(y), t, x, 4, 8);
    if (!strcmp(mode, "xent-target")) o->xent_forward(o, y, CA(x), t, 4, 8);
    if (!strcmp(mode, "permute-index")) o->moe_permute_layout(o, pos, off, host, t, 4, 1, 8);
    o->synchronize(o);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 2 && !strcmp(argv[1], "--child")) return child_main(argv[2]);
    char why[256];
    int gpus = cuda_gpu_count(why, sizeof why);
    if (argc > 1 && !strcmp(argv[1], "--probe")) {
        printf("%s: %s\n", gpus ? "GPU" : "SKIP: no CUDA GPU", why);
        return gpus ? 0 : 77;
    }
    /* runs everywhere: a hidden or absent GPU is the one-line DIE of ops_cuda_create */
    EXPECT(run_child("nogpu", "device 'cuda': no CUDA GPU found"), "no-GPU message");
    if (!gpus) {
        printf("SKIP: no CUDA GPU (%s)\n", why);
        return test_failed ? 1 : 77;
    }
    Rng r;
    rng_seed(&r, test_seed());
    for (int prec = 0; prec < 2; prec++) {
        Pair p;
        pair_open(&p, prec ? PREC_BF16 : PREC_FP32);
        int mm[][4] = { { 1, 1, 1, 0 }, { 1, 7, 3, 0 }, { 5, 1, 9, 0 }, { 37, 129, 65, 0 }, { 37, 129, 65, 1 },
                        { 300, 257, 1000, 0 }, { 1024, 2048, 512, 0 } };
        for (int i = 0; i < 7; i++) test_matmul(&p, &r, mm[i][0], mm[i][1], mm[i][2], mm[i][3]);
        int rn[][2] = { { 1, 1 }, { 3, 7 }, { 37, 2048 }, { 1000, 513 } };
        for (int i = 0; i < 4; i++) test_rmsnorm(&p, &r, rn[i][0], rn[i][1]);
        test_elementwise(&p, &r, 1);
        test_elementwise(&p, &r, 10000019);
        test_concat_swiglu(&p, &r, 1, 1, 1, 1);
        test_concat_swiglu(&p, &r, 2048, 512, 512, 1024);
        test_concat_swiglu(&p, &r, 37, 33, 65, 100);
        test_embedding(&p, &r, 1, 1, 1);
        test_embedding(&p, &r, 500, 33, 7);
        test_embedding(&p, &r, 4096, 256, 32768);
        int xs[][2] = { { 1, 1 }, { 7, 1000 }, { 33, 32768 }, { 3, 50001 } };
        for (int i = 0; i < 4; i++) test_xent(&p, &r, xs[i][0], xs[i][1]);
        test_rope_kv(&p, &r, 1, 1, 1, 1, 2, 1);
        test_rope_kv(&p, &r, 2, 37, 3, 8, 4, 8);
        test_rope_kv(&p, &r, 1, 300, 4, 128, 64, 128);
        test_attention(&p, &r, 1, 1, 1, 1, 1, "");
        test_attention(&p, &r, 2, 37, 3, 12, 8, "");
        test_attention(&p, &r, 1, 300, 4, 192, 128, "");
        test_attention(&p, &r, 2, 1000, 2, 192, 128, "");
        test_adamw(&p, &r, 1, 0, 1);
        test_adamw(&p, &r, 1000003, 0, 10);
        test_adamw(&p, &r, 1000003, 1, 3);
        pair_close(&p);
        /* a 20000-byte chunk budget: 12 and 4 query rows per chunk, so many chunks run */
        setenv("DSTRAIN_CUDA_ATTN_CHUNK_BYTES", "20000", 1);
        pair_open(&p, prec ? PREC_BF16 : PREC_FP32);
        test_attention(&p, &r, 2, 130, 3, 20, 12, " chunked");
        test_attention(&p, &r, 1, 300, 4, 192, 128, " chunked");
        pair_close(&p);
        unsetenv("DSTRAIN_CUDA_ATTN_CHUNK_BYTES");
    }
    EXPECT(run_child("embed-negative", "embedding: a token id is negative"), "negative token");
    EXPECT(run_child("xent-target", "cross-entropy: a target is outside the vocabulary"), "target >= V");
    EXPECT(run_child("permute-index", "moe permute: an expert index is outside 0..7"), "expert index");
    return test_finish();
}
