/* tests/unit/test_bf16.c - the CPU's BF16 emulation (kernels/cpu/cpu.h), op by op against the
 * FP32 table.
 *
 * What it checks: for every entry that stores activations, the BF16 table run on the same
 * inputs as the FP32 table (inputs BF16 values, as every stored activation of the BF16 table
 * is) stores exactly bf16(FP32 result): the emulation is "compute in FP32, round on store",
 * nothing else. That is the definition the GPU's BF16 tables are held to op by op. The budget
 * printed beside it follows from it: BF16 has 8 significant bits, so round to nearest even
 * moves a value in [2^e, 2^(e+1)) by at most half an ulp = 2^(e-8), |bf16(x) - x| <= 2^-8 |x|;
 * each stored element lies within 2^-8 |FP32 result| of the FP32 table's (+ the smallest
 * subnormal, for results that underflow); the test reports the worst share of that budget.
 * After each check the FP32 table's copy of an output takes the BF16 table's values, so the
 * next op reads the same stored inputs on both tables. Entries whose outputs are
 * always FP32 (weight gradients, norm statistics, lse, losses, router values) must agree with
 * the FP32 table bit for bit. Linear weights: the BF16 table reads compute copies rounded from
 * FP32 masters by weight_refresh, so it is given unrounded masters and the FP32 table the
 * rounded ones. A tiny model trained a step on the BF16 and on the FP8 table stores only BF16
 * values (logits) and computes with refreshed copies after its masters are rewritten.
 * Both tables run one thread, so their GEMMs block identically.
 * What it is not: a test of the FP32 arithmetic itself (test_ops.c).
 */
#include <math.h>
#include "kernels/fp8.h"
#include <stdint.h>
#include <string.h>

#include "kernels/ops.h"
#include "model/model.h"
#include "runtime/common.h"
#include "runtime/config.h"
#include "tests/unit/testing.h"

#define A(p) ((act *)(p))
#define CA(p) ((const act *)(p))

static Ops *f32, *b16;
static Rng rng;

/* The same buffer on both tables: f for the FP32 table, b for the BF16 one (host memory). */
typedef struct Pair { float *f, *b; size_t n; } Pair;

#define MAX_PAIRS 64
static Pair pairs[MAX_PAIRS];
static int n_pairs;

/* n uniform values in [-scale, scale), rounded to BF16 (stored activations are), in both. */
static Pair pair_new(size_t n, float scale)
{
    CHECK(n_pairs < MAX_PAIRS);
    Pair p = { xcalloc(n + 1, sizeof(float)), xcalloc(n + 1, sizeof(float)), n };
    for (size_t i = 0; i < n; i++) p.f[i] = p.b[i] = bf16_round(scale * (2.0f * (float)rng_uniform(&rng) - 1.0f));
    pairs[n_pairs++] = p;
    return p;
}

static void pairs_free(void)
{
    for (int i = 0; i < n_pairs; i++) {
        free(pairs[i].f);
        free(pairs[i].b);
    }
    n_pairs = 0;
}

/* An activation output: b == bf16(f) bit for bit; prints the worst share of 2^-8 |f|. Then f
 * takes b's values (what the BF16 table stored is what the next op reads). */
static void expect_act(const char *label, const Pair *p)
{
    double worst = 0.0;
    size_t bad = p->n;
    for (size_t i = 0; i < p->n; i++) {
        float want = bf16_round(p->f[i]);
        if (memcmp(&want, &p->b[i], sizeof want) != 0 && bad == p->n) bad = i;
        double share = fabs((double)p->b[i] - p->f[i]) / (ldexp(fabs(p->f[i]), -8) + 0x1p-149);
        if (share > worst) worst = share;
    }
    printf("  %-40s bf16(fp32) exactly, worst %.3f of 2^-8|x| (n=%zu)\n", label, worst, p->n);
    EXPECT(bad == p->n, "%s: element %zu is %.9g, bf16 of the fp32 table's %.9g is %.9g", label, bad,
           bad < p->n ? p->b[bad] : 0.0, bad < p->n ? p->f[bad] : 0.0, bad < p->n ? bf16_round(p->f[bad]) : 0.0);
    EXPECT(worst <= 1.0, "%s: worst share %.3f of the rounding budget", label, worst);
    memcpy(p->f, p->b, p->n * sizeof(float));
}

/* An FP32 output: identical on both tables. */
static void expect_same(const char *label, const Pair *p)
{
    int same = memcmp(p->f, p->b, p->n * sizeof(float)) == 0;
    printf("  %-40s %s\n", label, same ? "fp32, identical" : "DIFFERS");
    EXPECT(same, "%s: the fp32 output differs between the tables", label);
}

/* A Linear weight (rows, cols): master m (not rounded) for the BF16 table's compute copy, its
 * BF16 rounding as the FP32 table's master. */
typedef struct WPair { Wgt f, b; float *master, *rounded; void *copy; } WPair;

static WPair wpair_new(int rows, int cols, WgtType type)
{
    WPair w;
    size_t n = (size_t)rows * cols;
    w.master = xcalloc(n + 1, sizeof(float));
    w.rounded = xcalloc(n + 1, sizeof(float));
    for (size_t i = 0; i < n; i++) {
        w.master[i] = 0.5f * (2.0f * (float)rng_uniform(&rng) - 1.0f);
        w.rounded[i] = type == WGT_BF16 ? bf16_round(w.master[i]) : w.master[i];
    }
    size_t bytes = b16->weight_bytes(b16, type, rows, cols);
    w.copy = bytes ? b16->alloc(b16, bytes) : NULL;
    wgt_bind(&w.f, f32, w.rounded, rows, cols, WGT_FP32, NULL);
    wgt_bind(&w.b, b16, w.master, rows, cols, type, w.copy);
    f32->weight_refresh(f32, &w.f);
    b16->weight_refresh(b16, &w.b);
    return w;
}

static void wpair_free(WPair *w)
{
    free(w->master);
    free(w->rounded);
    if (w->copy) b16->free(b16, w->copy);
}

static void test_linear(int N, int IC, int OC)
{
    printf("linear N=%d IC=%d OC=%d\n", N, IC, OC);
    WPair w = wpair_new(OC, IC, WGT_BF16);
    Pair x = pair_new((size_t)N * IC, 2), y = pair_new((size_t)N * OC, 1), dy = pair_new((size_t)N * OC, 1);
    Pair dx = pair_new((size_t)N * IC, 1), dw = pair_new((size_t)OC * IC, 1);
    f32->matmul_forward(f32, A(y.f), CA(x.f), &w.f, N, IC, OC);
    b16->matmul_forward(b16, A(y.b), CA(x.b), &w.b, N, IC, OC);
    expect_act("matmul_forward", &y);
    f32->matmul_backward_input(f32, A(dx.f), CA(dy.f), &w.f, N, IC, OC);
    b16->matmul_backward_input(b16, A(dx.b), CA(dy.b), &w.b, N, IC, OC);
    expect_act("matmul_backward_input (+=)", &dx);
    f32->matmul_backward_weight(f32, dw.f, &w.f, CA(dy.f), CA(x.f), N, IC, OC);
    b16->matmul_backward_weight(b16, dw.b, &w.b, CA(dy.b), CA(x.b), N, IC, OC);
    expect_same("matmul_backward_weight (+=)", &dw);
    wpair_free(&w);

    /* the router: FP32 weights and logits in every precision */
    WPair r = wpair_new(OC, IC, WGT_FP32);
    Pair lg = pair_new((size_t)N * OC, 1), dr = pair_new((size_t)OC * IC, 1);
    f32->router_forward(f32, lg.f, CA(x.f), &r.f, N, IC, OC);
    b16->router_forward(b16, lg.b, CA(x.b), &r.b, N, IC, OC);
    expect_same("router_forward", &lg);
    f32->router_backward_input(f32, A(dx.f), dy.f, &r.f, N, IC, OC);
    b16->router_backward_input(b16, A(dx.b), dy.b, &r.b, N, IC, OC);
    expect_act("router_backward_input (+=)", &dx);
    f32->router_backward_weight(f32, dr.f, dy.f, CA(x.f), N, IC, OC);
    b16->router_backward_weight(b16, dr.b, dy.b, CA(x.b), N, IC, OC);
    expect_same("router_backward_weight (+=)", &dr);
    wpair_free(&r);
    pairs_free();
}

static void test_dense(int N, int C)
{
    printf("norm, elementwise, embedding, loss N=%d C=%d\n", N, C);
    Pair x = pair_new((size_t)N * C, 2), y = pair_new((size_t)N * C, 1), rs = pair_new(N, 1);
    Pair w = pair_new(C, 1), dy = pair_new((size_t)N * C, 1), dx = pair_new((size_t)N * C, 1), dw = pair_new(C, 1);
    f32->rmsnorm_forward(f32, A(y.f), rs.f, CA(x.f), w.f, N, C, 1e-6f);
    b16->rmsnorm_forward(b16, A(y.b), rs.b, CA(x.b), w.b, N, C, 1e-6f);
    expect_act("rmsnorm_forward", &y);
    expect_same("rmsnorm_forward rstd", &rs);
    f32->rmsnorm_backward(f32, A(dx.f), dw.f, CA(dy.f), CA(x.f), w.f, rs.f, N, C);
    b16->rmsnorm_backward(b16, A(dx.b), dw.b, CA(dy.b), CA(x.b), w.b, rs.b, N, C);
    expect_act("rmsnorm_backward dinp (+=)", &dx);
    expect_same("rmsnorm_backward dweight (+=)", &dw);
    f32->add(f32, A(y.f), CA(x.f), (size_t)N * C);
    b16->add(b16, A(y.b), CA(x.b), (size_t)N * C);
    expect_act("add", &y);

    Pair cat = pair_new((size_t)N * 2 * C, 1), da = pair_new((size_t)N * C, 1);
    f32->concat_forward(f32, A(cat.f), CA(x.f), CA(y.f), N, C, C);
    b16->concat_forward(b16, A(cat.b), CA(x.b), CA(y.b), N, C, C);
    expect_act("concat_forward", &cat);
    f32->concat_backward(f32, A(da.f), A(dx.f), CA(cat.f), N, C, C);
    b16->concat_backward(b16, A(da.b), A(dx.b), CA(cat.b), N, C, C);
    expect_act("concat_backward da (+=)", &da);
    expect_act("concat_backward db (+=)", &dx);

    Pair h = pair_new((size_t)N * C, 1), dgu = pair_new((size_t)N * 2 * C, 1);
    f32->swiglu_forward(f32, A(h.f), CA(cat.f), N, C);
    b16->swiglu_forward(b16, A(h.b), CA(cat.b), N, C);
    expect_act("swiglu_forward", &h);
    f32->swiglu_backward(f32, A(dgu.f), CA(dy.f), CA(cat.f), N, C);
    b16->swiglu_backward(b16, A(dgu.b), CA(dy.b), CA(cat.b), N, C);
    expect_act("swiglu_backward (+=)", &dgu);

    const int V = 7;
    int32_t tok[N];
    for (int n = 0; n < N; n++) tok[n] = n % 3 == 2 ? -1 : (int32_t)(rng_u32(&rng) % V);
    int32_t ids[N];
    for (int n = 0; n < N; n++) ids[n] = tok[n] < 0 ? 0 : tok[n];
    Pair table = pair_new((size_t)V * C, 1), dtable = pair_new((size_t)V * C, 1);
    for (size_t i = 0; i < table.n; i++) table.f[i] = table.b[i] = (float)rng_normal(&rng);   /* unrounded master */
    f32->embedding_forward(f32, A(y.f), ids, table.f, N, C);
    b16->embedding_forward(b16, A(y.b), ids, table.b, N, C);
    expect_act("embedding_forward (fp32 master)", &y);
    f32->embedding_backward(f32, dtable.f, CA(dy.f), ids, N, C);
    b16->embedding_backward(b16, dtable.b, CA(dy.b), ids, N, C);
    expect_same("embedding_backward (+=)", &dtable);

    Pair lg = pair_new((size_t)N * V, 3), loss = pair_new(N, 1), dl = pair_new(N, 1), dlg = pair_new((size_t)N * V, 1);
    f32->xent_forward(f32, loss.f, CA(lg.f), tok, N, V);
    b16->xent_forward(b16, loss.b, CA(lg.b), tok, N, V);
    expect_same("xent_forward", &loss);
    f32->xent_backward(f32, A(dlg.f), CA(lg.f), tok, dl.f, N, V);
    b16->xent_backward(b16, A(dlg.b), CA(lg.b), tok, dl.b, N, V);
    expect_act("xent_backward (+=)", &dlg);
    f32->xent_backward(f32, A(lg.f), CA(lg.f), tok, dl.f, N, V);
    b16->xent_backward(b16, A(lg.b), CA(lg.b), tok, dl.b, N, V);
    expect_act("xent_backward in place", &lg);
    pairs_free();
}

static void test_attention(int B, int T, int H, int Dn, int Dr, int Dv)
{
    printf("rope, kv split, attention B=%d T=%d H=%d Dn=%d Dr=%d Dv=%d\n", B, T, H, Dn, Dr, Dv);
    const int N = B * T, Dqk = Dn + Dr;
    Pair cs = pair_new((size_t)T * Dr / 2, 1), sn = pair_new((size_t)T * Dr / 2, 1);
    for (int i = 0; i < T * Dr / 2; i++) {   /* rotation tables: FP32 values of angles */
        double a = (i / (Dr / 2)) * pow(10000.0, -2.0 * (i % (Dr / 2)) / Dr);
        cs.f[i] = cs.b[i] = (float)cos(a);
        sn.f[i] = sn.b[i] = (float)sin(a);
    }
    Pair q = pair_new((size_t)N * H * Dqk, 1), kr = pair_new((size_t)N * Dr, 1);
    RopeShape rq = { N, T, H, H * Dqk, Dqk, Dn, Dr };
    f32->rope_forward(f32, A(q.f), cs.f, sn.f, &rq);
    b16->rope_forward(b16, A(q.b), cs.b, sn.b, &rq);
    expect_act("rope_forward (strided heads)", &q);
    Pair dq0 = pair_new((size_t)N * H * Dqk, 1);
    f32->rope_backward(f32, A(dq0.f), cs.f, sn.f, &rq);
    b16->rope_backward(b16, A(dq0.b), cs.b, sn.b, &rq);
    expect_act("rope_backward", &dq0);

    Pair kv = pair_new((size_t)N * H * (Dn + Dv), 1), k = pair_new((size_t)N * H * Dqk, 1);
    Pair v = pair_new((size_t)N * H * Dv, 1);
    MlaKvShape ks = { N, H, Dn, Dr, Dv };
    f32->mla_kv_split(f32, A(k.f), A(v.f), CA(kv.f), CA(kr.f), &ks);
    b16->mla_kv_split(b16, A(k.b), A(v.b), CA(kv.b), CA(kr.b), &ks);
    expect_act("mla_kv_split k", &k);
    expect_act("mla_kv_split v", &v);

    Pair out = pair_new((size_t)N * H * Dv, 1), lse = pair_new((size_t)B * H * T, 1);
    AttnShape as = { B, T, H, Dqk, Dv, 1.0f / sqrtf((float)Dqk) };
    f32->attention_forward(f32, A(out.f), lse.f, CA(q.f), CA(k.f), CA(v.f), &as);
    b16->attention_forward(b16, A(out.b), lse.b, CA(q.b), CA(k.b), CA(v.b), &as);
    expect_act("attention_forward", &out);
    expect_same("attention_forward lse", &lse);
    Pair dout = pair_new((size_t)N * H * Dv, 1), dq = pair_new((size_t)N * H * Dqk, 1);
    Pair dk = pair_new((size_t)N * H * Dqk, 1), dv = pair_new((size_t)N * H * Dv, 1);
    f32->attention_backward(f32, A(dq.f), A(dk.f), A(dv.f), CA(dout.f), CA(q.f), CA(k.f), CA(v.f), CA(out.f),
                            lse.f, &as);
    b16->attention_backward(b16, A(dq.b), A(dk.b), A(dv.b), CA(dout.b), CA(q.b), CA(k.b), CA(v.b), CA(out.b),
                            lse.b, &as);
    expect_act("attention_backward dq (+=)", &dq);
    expect_act("attention_backward dk (+=)", &dk);
    expect_act("attention_backward dv (+=)", &dv);

    Pair dkr = pair_new((size_t)N * Dr, 1);
    f32->mla_kv_split_backward(f32, A(kv.f), A(dkr.f), CA(dk.f), CA(dv.f), &ks);
    b16->mla_kv_split_backward(b16, A(kv.b), A(dkr.b), CA(dk.b), CA(dv.b), &ks);
    expect_act("mla_kv_split_backward dkv (+=)", &kv);
    expect_act("mla_kv_split_backward dk_rope (+=)", &dkr);
    pairs_free();
}

static void test_moe_rows(int N, int K, int C)
{
    printf("gather / combine N=%d K=%d C=%d\n", N, K, C);
    int32_t pos[N * K];
    for (int i = 0; i < N * K; i++) pos[i] = i;
    for (int i = N * K - 1; i > 0; i--) {   /* a random permutation of the rows */
        int j = (int)(rng_u32(&rng) % (uint32_t)(i + 1)), t = pos[i];
        pos[i] = pos[j];
        pos[j] = t;
    }
    Pair x = pair_new((size_t)N * C, 1), xp = pair_new((size_t)N * K * C, 1), w = pair_new((size_t)N * K, 1);
    Pair y = pair_new((size_t)N * C, 1), dx = pair_new((size_t)N * C, 1), dyp = pair_new((size_t)N * K * C, 1);
    Pair dw = pair_new((size_t)N * K, 1);
    f32->moe_gather(f32, A(xp.f), CA(x.f), pos, N, K, C);
    b16->moe_gather(b16, A(xp.b), CA(x.b), pos, N, K, C);
    expect_act("moe_gather", &xp);
    f32->moe_gather_backward(f32, A(dx.f), CA(xp.f), pos, N, K, C);
    b16->moe_gather_backward(b16, A(dx.b), CA(xp.b), pos, N, K, C);
    expect_act("moe_gather_backward (+=)", &dx);
    f32->moe_combine(f32, A(y.f), CA(xp.f), w.f, pos, N, K, C);
    b16->moe_combine(b16, A(y.b), CA(xp.b), w.b, pos, N, K, C);
    expect_act("moe_combine (+=)", &y);
    f32->moe_combine_backward(f32, A(dyp.f), dw.f, CA(x.f), CA(xp.f), w.f, pos, N, K, C);
    b16->moe_combine_backward(b16, A(dyp.b), dw.b, CA(x.b), CA(xp.b), w.b, pos, N, K, C);
    expect_act("moe_combine_backward dyp (+=)", &dyp);
    expect_same("moe_combine_backward dw (+=)", &dw);

    float host[5] = { 1.0f, 1.00390625f, 1.0f + 0x1p-9f, -3.14159265f, 1e-3f }, back[5];
    act *dev = b16->alloc(b16, sizeof host);
    b16->act_upload(b16, dev, host, 5);
    b16->act_download(b16, back, dev, 5);
    int ok = 1;
    for (int i = 0; i < 5; i++) ok &= back[i] == bf16_round(host[i]);
    EXPECT(ok, "act_upload does not round to bf16");
    printf("  %-40s %s\n", "act_upload rounds to bf16", ok ? "yes" : "NO");
    b16->free(b16, dev);
    pairs_free();
}

/* One training step of a tiny model on table t (bf16 or fp8): the logits it stores are BF16
 * values, the losses finite, and rewritten masters reach the compute copies. */
static void test_model_step(Ops *t)
{
    printf("tiny model on the %s table\n", t->precision == PREC_FP8 ? "fp8" : "bf16");
    Config full;
    config_defaults(&full);
    ModelConfig c = full.model;
    c.vocab_size = 24;
    c.hidden_size = 16;
    c.intermediate_size = 32;
    c.moe_intermediate_size = 8;
    c.num_hidden_layers = 2;
    c.first_k_dense_replace = 1;
    c.num_attention_heads = 2;
    c.n_routed_experts = 4;
    c.n_shared_experts = 1;
    c.num_experts_per_tok = 2;
    c.n_group = 2;
    c.topk_group = 1;
    c.q_lora_rank = 8;
    c.kv_lora_rank = 8;
    c.qk_nope_head_dim = 4;
    c.qk_rope_head_dim = 4;
    c.v_head_dim = 4;
    c.num_nextn_predict_layers = 1;
    const int B = 2, T = 6;
    Model *m = model_create(&c, t, B, T, 1);
    model_init_params(m, 5);
    model_set_loss_weights(m, 0.3, 1e-3, 1);
    int32_t window[B * (T + 1)];
    for (int i = 0; i < B * (T + 1); i++) window[i] = (int32_t)(rng_u32(&rng) % (uint32_t)c.vocab_size);
    ModelLoss loss;
    model_zero_grads(m);
    model_forward(m, window, 1, &loss);
    model_backward(m);
    float logits[24];
    int ok = isfinite(loss.main) && isfinite(loss.mtp[0]);
    model_forward(m, window, 0, &loss);   /* evaluation keeps the logits (training overwrites them) */
    model_logits(m, T - 1, logits);
    int stored = 1;
    for (int v = 0; v < c.vocab_size; v++) stored &= logits[v] == bf16_round(logits[v]);
    printf("  %-40s loss %.4f, logits bf16: %s\n", "forward + backward", loss.main, stored ? "yes" : "NO");
    EXPECT(ok && isfinite(loss.main), "the bf16 model's losses are not finite");
    EXPECT(stored, "the bf16 model stores logits that are not bf16 values");

    /* new masters written through model_params reach the compute copies: the model then
     * computes what a model created with those masters computes, bit for bit */
    const size_t total = model_table(m)->total;
    float *host = xcalloc(total, sizeof(float)), again[24];
    t->download(t, host, model_params(m), total * sizeof(float));
    for (size_t i = 0; i < total; i++) host[i] *= 1.5f;
    t->upload(t, model_params(m), host, total * sizeof(float));
    model_forward(m, window, 0, &loss);
    model_logits(m, T - 1, logits);
    Model *fresh = model_create(&c, t, B, T, 0);
    t->upload(t, model_params(fresh), host, total * sizeof(float));
    model_forward(fresh, window, 0, &loss);
    model_logits(fresh, T - 1, again);
    int same = memcmp(logits, again, sizeof logits) == 0;
    printf("  %-40s %s\n", "masters changed -> copies refreshed", same ? "yes" : "NO");
    EXPECT(same, "the bf16 model computes with stale weight copies after model_params was written");
    model_destroy(fresh);
    free(host);
    model_destroy(m);
}

int main(void)
{
    rng_seed(&rng, test_seed());
    f32 = ops_cpu_create(1, PREC_FP32);
    b16 = ops_cpu_create(1, PREC_BF16);
    EXPECT(b16->act_bytes == sizeof(float) && b16->precision == PREC_BF16, "bf16 table: act_bytes, precision");
    test_linear(1, 1, 1);
    test_linear(5, 13, 9);
    test_linear(33, 64, 40);     /* above the GEMM's parallel threshold: still one thread */
    test_dense(1, 1);
    test_dense(7, 11);
    test_attention(1, 1, 1, 2, 2, 2);
    test_attention(2, 9, 2, 4, 4, 3);
    test_attention(1, 70, 1, 3, 2, 2);   /* crosses the CPU kernel's 64-row tile */
    test_moe_rows(1, 1, 3);
    test_moe_rows(6, 2, 5);
    test_model_step(b16);
    Ops *fp8 = ops_cpu_create(1, PREC_FP8);
    test_model_step(fp8);
    ops_destroy(fp8);
    ops_destroy(f32);
    ops_destroy(b16);
    return test_finish();
}
