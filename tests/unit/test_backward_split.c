/* tests/unit/test_backward_split.c - the backward split into backward-input (B) and
 * backward-weight (W) passes (DESIGN.md section 3) against the backward that runs each
 * sublayer's W right after its B (model_backward, today's fused order).
 *
 * Claim: every B op writes only activation gradients and every W op only weight gradients;
 * W reads only what B left in the block's B-to-W buffers, so running every B first and every
 * W later changes no value, and each weight gradient receives its contributions (one per
 * tensor, except the head and embedding shared with MTP, which W visits in the same order)
 * in the same order. Hence bit-identical gradients: compared with memcmp, no tolerance.
 * Config: configs/tiny.toml with MTP depth 1 and 2, balance loss on, 3 micro-batches
 * accumulated, 1 and 2 threads.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "runtime/common.h"
#include "runtime/config.h"
#include "testing.h"

#define MICRO 3

static void source_path(char *out, size_t n, const char *rel)
{
    const char *me = __FILE__, *tail = strstr(me, "tests/unit/test_backward_split.c");
    int root = tail ? (int)(tail - me) : 0;
    snprintf(out, n, "%.*s%s", root, me, rel);
}

/* Gradients after MICRO micro-batches of random windows (seeded), fused or split. */
static float *run(const ModelConfig *c, int threads, int split, uint64_t seed, ModelLoss *loss, size_t *n)
{
    const int B = 2, T = 8;
    Ops *o = ops_cpu_create(threads, PREC_FP32);
    Model *m = model_create(c, o, B, T, split ? MODEL_TRAIN_SPLIT : MODEL_TRAIN);
    model_init_params(m, seed);
    model_zero_grads(m);
    model_zero_counts(m);
    model_set_loss_weights(m, 0.3, 1e-3, MICRO);
    Rng r;
    rng_seed(&r, seed + 1);
    int32_t win[2 * 9];
    for (int mb = 0; mb < MICRO; mb++) {
        for (int i = 0; i < B * (T + 1); i++) win[i] = (int32_t)(rng_u32(&r) % (uint32_t)c->vocab_size);
        model_forward(m, win, 1, &loss[mb]);
        if (split) {
            model_backward_input(m);
            model_backward_weight(m);
        } else {
            model_backward(m);
        }
    }
    *n = model_table(m)->total;
    float *g = xmalloc(*n * sizeof(float));
    o->download(o, g, model_grads(m), *n * sizeof(float));
    model_destroy(m);
    ops_destroy(o);
    return g;
}

static void check(const ModelConfig *c, int threads, uint64_t seed)
{
    ModelLoss lf[MICRO], ls[MICRO];
    size_t n, n2;
    float *gf = run(c, threads, 0, seed, lf, &n), *gs = run(c, threads, 1, seed, ls, &n2);
    size_t nonzero = 0, first_diff = n;
    for (size_t i = 0; i < n; i++) {
        nonzero += gf[i] != 0.0f;
        if (first_diff == n && memcmp(&gf[i], &gs[i], sizeof(float)) != 0) first_diff = i;
    }
    EXPECT(n == n2, "parameter counts %zu and %zu", n, n2);
    EXPECT(memcmp(lf, ls, sizeof lf) == 0, "losses differ (mtp %d, threads %d)", c->num_nextn_predict_layers,
           threads);
    EXPECT(first_diff == n, "mtp %d threads %d: gradient %zu differs: fused %.9g split %.9g",
           c->num_nextn_predict_layers, threads, first_diff, first_diff < n ? gf[first_diff] : 0.0,
           first_diff < n ? gs[first_diff] : 0.0);
    /* the comparison means something: most gradients are non-zero (the unrouted experts' and
     * the router bias's stay zero; tiny has 8 experts, 2 chosen per token, 16 tokens a batch) */
    EXPECT(nonzero > n / 2, "only %zu of %zu gradients are non-zero", nonzero, n);
    printf("mtp %d threads %d: %zu gradients (%zu non-zero) bit-identical: %s\n", c->num_nextn_predict_layers,
           threads, n, nonzero, first_diff == n ? "yes" : "no");
    free(gf);
    free(gs);
}

int main(void)
{
    uint64_t seed = test_seed();
    char path[4096];
    source_path(path, sizeof path, "configs/tiny.toml");
    Config cfg;
    config_defaults(&cfg);
    config_load(&cfg, path);
    for (int depth = 1; depth <= 2; depth++)
        for (int threads = 1; threads <= 2; threads++) {
            cfg.model.num_nextn_predict_layers = depth;
            check(&cfg.model, threads, seed);
        }
    return test_finish();
}
