/* tests/unit/test_recompute.c - train.recompute (SPEC.md section 3, TR 3.2.3): the blocks drop
 * their RMSNorm outputs (input_layernorm, q_a_layernorm, kv_a_layernorm,
 * post_attention_layernorm) and the MLA up-projections' outputs (q_b_proj, kv_b_proj, and the
 * k, v built from kv_b_proj's), the last stage the final norm's and the MTP modules' norm
 * outputs (enorm, hnorm, their concatenation, shared_head.norm), and backward recomputes them.
 *
 * Claim 1, results: recomputation runs the forward's own ops on the same kept inputs (x_in,
 * q_a_proj's and kv_a_proj's outputs, the roped rope key, the norms' inputs) with the same
 * weights, and those ops
 * are deterministic, so every recomputed value has the forward's bits; nothing else changes.
 * Hence losses and every gradient bit-identical with and without (memcmp, no tolerance), at
 * fp32, bf16 and fp8, with W right after B (MODEL_TRAIN) and apart (MODEL_TRAIN_SPLIT, where W
 * recomputes its norms again after other blocks' B overwrote the shared set).
 * Configs: configs/tiny.toml (MTP depth 1, q_lora_rank 16) and tiny with q_lora_rank 0 (q_proj:
 * its output stays per block) and MTP depth 2; 3 micro-batches accumulated, balance loss on.
 *
 * Claim 2, memory (exact, integer byte counts), on a whole-model stage with S = 3 slots (the
 * micro-batches a pipeline stage holds): per block and slot the dropped tensors take
 *   drop = A(N*C*4) [ln1] + A(N*Rq*4) + A(N*H*Dqk*4) [cq, q: only when Rq > 0] + A(N*Rkv*4)
 *          + A(N*H*(Dn+Dv)*4) + A(N*H*Dqk*4) + A(N*H*Dv*4) [ckv, kv, k, v] + A(N*C*4) [ln2]
 * bytes (act_bytes 4 on the CPU; A rounds up to the arena's 256-byte alignment of every piece,
 * none of them the arena's last), per MTP module and slot mdrop = 3 A(N*C*4) + A(2*N*C*4) (en,
 * hn, shn, cat), per slot A(N*C*4) (the final norm's hf). With recompute the activations hold
 * each once, so acts(off) - acts(on) = (S*nblocks - 1) drop + (S*D - 1) mdrop + (S - 1) A(N*C*4),
 * and W's own ln2 and the recomputed rstd add A(N*C*4) + A(N*4) to the backward scratch.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "model/stage.h"
#include "runtime/common.h"
#include "runtime/config.h"
#include "testing.h"

#define MICRO 3
#define SLOTS 3

static void source_path(char *out, size_t n, const char *rel)
{
    const char *me = __FILE__, *tail = strstr(me, "tests/unit/test_recompute.c");
    int root = tail ? (int)(tail - me) : 0;
    snprintf(out, n, "%.*s%s", root, me, rel);
}

typedef struct Run {
    ModelLoss loss[MICRO];
    float *grads;
    size_t n;
    ModelMemory mem;
} Run;

static void run(const ModelConfig *c, Precision prec, int mode, uint64_t seed, Run *out)
{
    const int B = 2, T = 8;
    Ops *o = ops_cpu_create(1, prec);
    Model *m = model_create(c, o, B, T, mode);
    model_init_params(m, seed);
    model_zero_grads(m);
    model_zero_counts(m);
    model_set_loss_weights(m, 0.3, 1e-3, MICRO);
    Rng r;
    rng_seed(&r, seed + 1);
    int32_t win[2 * 9];
    for (int mb = 0; mb < MICRO; mb++) {
        for (int i = 0; i < B * (T + 1); i++) win[i] = (int32_t)(rng_u32(&r) % (uint32_t)c->vocab_size);
        model_forward(m, win, 1, &out->loss[mb]);
        if ((mode & ~MODEL_RECOMPUTE) == MODEL_TRAIN_SPLIT) {
            model_backward_input(m);
            model_backward_weight(m);
        } else {
            model_backward(m);
        }
    }
    out->n = model_table(m)->total;
    out->grads = xmalloc(out->n * sizeof(float));
    o->download(o, out->grads, model_grads(m), out->n * sizeof(float));
    model_destroy(m);
    StageSpec sp = { 0, c->num_hidden_layers, 1, 1, SLOTS, 0, 0.0 };
    m = stage_create(c, o, B, T, mode, &sp, NULL, 0);
    model_memory(m, &out->mem);
    model_destroy(m);
    ops_destroy(o);
}

/* A piece of n bytes in an arena (runtime/common.c arena_take: 256-byte aligned starts). */
static size_t A(size_t n) { return (n + 255) & ~(size_t)255; }

static const char *prec_name(Precision p) { return p == PREC_FP32 ? "fp32" : p == PREC_BF16 ? "bf16" : "fp8"; }

static void check(const ModelConfig *c, Precision prec, int mode, uint64_t seed)
{
    Run off, on;
    run(c, prec, mode, seed, &off);
    run(c, prec, mode | MODEL_RECOMPUTE, seed, &on);
    const char *what = prec_name(prec);
    size_t nonzero = 0, first_diff = off.n;
    for (size_t i = 0; i < off.n; i++) {
        nonzero += off.grads[i] != 0.0f;
        if (first_diff == off.n && memcmp(&off.grads[i], &on.grads[i], sizeof(float)) != 0) first_diff = i;
    }
    EXPECT(off.n == on.n, "parameter counts %zu and %zu", off.n, on.n);
    EXPECT(memcmp(off.loss, on.loss, sizeof off.loss) == 0, "%s Rq %d mode %d: losses differ (%.9g vs %.9g)", what,
           c->q_lora_rank, mode, off.loss[0].main, on.loss[0].main);
    EXPECT(first_diff == off.n, "%s Rq %d mode %d: gradient %zu differs: %.9g without, %.9g with recompute", what,
           c->q_lora_rank, mode, first_diff, first_diff < off.n ? off.grads[first_diff] : 0.0,
           first_diff < off.n ? on.grads[first_diff] : 0.0);
    /* the comparison means something: most gradients are non-zero (the unrouted experts' and
     * the router bias's stay zero; 8 experts, 2 chosen per token, 16 tokens a micro-batch) */
    EXPECT(nonzero > off.n / 2, "only %zu of %zu gradients are non-zero", nonzero, off.n);

    /* claim 2, the byte counts of the header */
    const size_t N = 2 * 8, H = (size_t)c->num_attention_heads, Dqk = (size_t)(c->qk_nope_head_dim + c->qk_rope_head_dim);
    const size_t Rq = (size_t)c->q_lora_rank, C = (size_t)c->hidden_size, Dv = (size_t)c->v_head_dim;
    const size_t drop = A(N * C * 4) + (Rq > 0 ? A(N * Rq * 4) + A(N * H * Dqk * 4) : 0) +
                        A(N * (size_t)c->kv_lora_rank * 4) + A(N * H * (size_t)(c->qk_nope_head_dim + c->v_head_dim) * 4) +
                        A(N * H * Dqk * 4) + A(N * H * Dv * 4) + A(N * C * 4);
    const size_t D = (size_t)c->num_nextn_predict_layers, nblocks = (size_t)c->num_hidden_layers + D;
    const size_t mdrop = 3 * A(N * C * 4) + A(2 * N * C * 4);
    const size_t less = (SLOTS * nblocks - 1) * drop + (D > 0 ? (SLOTS * D - 1) * mdrop : 0) + (SLOTS - 1) * A(N * C * 4);
    EXPECT(off.mem.acts - on.mem.acts == less, "%s: activations %zu without, %zu with recompute; expected %zu less",
           what, off.mem.acts, on.mem.acts, less);
    EXPECT(on.mem.scratch - off.mem.scratch == A(N * C * 4) + A(N * 4), "%s: backward scratch %zu without, %zu with",
           what, off.mem.scratch, on.mem.scratch);
    printf("%s Rq %zu mtp %d %s: %zu gradients (%zu non-zero) bit-identical: %s; activations (%d slots) %zu -> %zu bytes\n",
           what, Rq, c->num_nextn_predict_layers, mode == MODEL_TRAIN ? "fused" : "split", off.n, nonzero,
           first_diff == off.n ? "yes" : "no", SLOTS, off.mem.acts, on.mem.acts);
    free(off.grads);
    free(on.grads);
}

int main(void)
{
    uint64_t seed = test_seed();
    char path[4096];
    source_path(path, sizeof path, "configs/tiny.toml");
    Config cfg;
    config_defaults(&cfg);
    config_load(&cfg, path);
    ModelConfig second = cfg.model;
    second.q_lora_rank = 0;
    second.num_nextn_predict_layers = 2;
    const Precision precs[] = { PREC_FP32, PREC_BF16, PREC_FP8 };
    for (int p = 0; p < 3; p++)
        for (int mode = MODEL_TRAIN; mode <= MODEL_TRAIN_SPLIT; mode++) {
            check(&cfg.model, precs[p], mode, seed);
            check(&second, precs[p], mode, seed);
        }
    return test_finish();
}
