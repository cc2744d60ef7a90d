/* tests/unit/test_moe_pool.c - the expert-row pool (model/layers.h moe_plan_pool): rows per MoE
 * layer and slot from 'moe.capacity_factor', and what model_plan_bytes takes for it. Integer
 * sizes, compared exactly. The overflow error needs an EP group of several ranks:
 * tests/mpi/test_mpi_capacity.sh. */
#include <string.h>

#include "model/model_internal.h"
#include "runtime/common.h"
#include "runtime/config.h"
#include "tests/unit/testing.h"

/* N*K = 32 * 2 = 64 mean rows; the worst case is P x that. */
static void test_rows(void)
{
    const struct { int P; double f; int rows; } cases[] = {
        { 4, 0, 256 },      /* 0: the worst case */
        { 4, 1, 64 },       /* the mean */
        { 4, 3, 192 },
        { 4, 2.01, 129 },   /* ceil(128.64) */
        { 4, 4, 256 },      /* at ep: the worst case */
        { 4, 8, 256 },      /* capped */
        { 1, 0, 64 },       /* one rank receives exactly the mean, whatever the factor */
        { 1, 4, 64 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        Dims d;
        memset(&d, 0, sizeof d);
        d.N = 32;
        d.K = 2;
        moe_plan_pool(&d, cases[i].P, cases[i].f);
        EXPECT(d.R == cases[i].rows && d.P == cases[i].P && d.capacity_factor == cases[i].f,
               "P %d factor %g: %d rows, expected %d", cases[i].P, cases[i].f, d.R, cases[i].rows);
    }
}

/* configs/tiny.toml's shape: C 32, F 16, E 8, K 2; 2 MoE blocks (layer 1 and the MTP block). */
static ModelConfig tiny(void)
{
    Config full;
    config_defaults(&full);
    ModelConfig c = full.model;
    c.vocab_size = 32;
    c.hidden_size = 32;
    c.intermediate_size = 64;
    c.moe_intermediate_size = 16;
    c.num_hidden_layers = 2;
    c.first_k_dense_replace = 1;
    c.num_attention_heads = 2;
    c.n_routed_experts = 8;
    c.num_experts_per_tok = 2;
    c.n_group = 4;
    c.topk_group = 1;
    c.q_lora_rank = 16;
    c.kv_lora_rank = 16;
    c.qk_nope_head_dim = 8;
    c.qk_rope_head_dim = 4;
    c.v_head_dim = 8;
    c.num_nextn_predict_layers = 1;
    return c;
}

/* B 2 x T 16 at ep 4: worst 256 rows, factor 3: 192. The pool (2 layers x rows x (2C + 3F =
 * 112) x 4 B) is all the activations change by; the backward scratch changes by the rows of the
 * buffers B shares across layers (dyp + dgup: C + 2F; dxp + dhp: C + F; 112 values), which the
 * pool bounds too (a forward never holds more rows than it). */
static void test_plan_bytes(void)
{
    Ops *o = ops_cpu_create(1, PREC_FP32);
    const ModelConfig c = tiny();
    ModelBytes worst, f3, one;
    model_plan_bytes(&c, o, 2, 16, MODEL_TRAIN, 4, 0.0, &worst);
    model_plan_bytes(&c, o, 2, 16, MODEL_TRAIN, 4, 3.0, &f3);
    model_plan_bytes(&c, o, 2, 16, MODEL_TRAIN, 1, 3.0, &one);
    const size_t row = 112 * sizeof(float);
    EXPECT(worst.pool == 2 * 256 * row, "worst-case pool %zu bytes, expected %zu", worst.pool, 2 * 256 * row);
    EXPECT(f3.pool == 2 * 192 * row, "factor-3 pool %zu bytes, expected %zu", f3.pool, 2 * 192 * row);
    EXPECT(one.pool == 2 * 64 * row, "one-rank pool %zu bytes, expected %zu", one.pool, 2 * 64 * row);
    EXPECT(worst.acts - f3.acts == worst.pool - f3.pool, "activations differ by %zu, the pools by %zu",
           worst.acts - f3.acts, worst.pool - f3.pool);
    EXPECT(worst.scratch - f3.scratch == 64 * row, "scratch differs by %zu, expected %zu",
           worst.scratch - f3.scratch, 64 * row);
    EXPECT(worst.params == f3.params && worst.grads == f3.grads, "parameters and gradients do not depend on it");
    ops_destroy(o);
}

/* A one-rank model: the start-up table's pool row names the rows, the factor and the bytes. */
static void test_print(void)
{
    Ops *o = ops_cpu_create(1, PREC_FP32);
    const ModelConfig c = tiny();
    Model *m = model_create_ep(&c, o, 2, 16, MODEL_TRAIN, NULL, 0, 4.0);
    ModelMemory mm;
    model_memory(m, &mm);
    EXPECT(mm.pool == 2 * 64 * 112 * sizeof(float), "pool %zu bytes", mm.pool);
    FILE *f = tmpfile();
    model_print_memory(m, f);
    rewind(f);
    char text[2048];
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = 0;
    fclose(f);
    EXPECT(strstr(text, "(57344 bytes of the above: 64 rows per MoE layer and slot = 1 x the mean 64 "
                        "('moe.capacity_factor' = 4, at most ep 1 x); worst case 57344 bytes)") != NULL,
           "pool row missing or wrong in:\n%s", text);
    model_destroy(m);
    ops_destroy(o);
}

int main(void)
{
    test_rows();
    test_plan_bytes();
    test_print();
    return test_finish();
}
