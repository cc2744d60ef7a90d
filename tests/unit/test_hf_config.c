/* tests/unit/test_hf_config.c - hf_config_check (checkpoint/hf_config.c): the config.json of a
 * Hugging Face directory against the model's config, in the layouts transformers 4 and 5
 * write, and the YaRN cases where transformers computes another scale than dstrain.
 * Each case writes a config.json (hf_write_config's, then edited as text) and expects
 * acceptance or one error naming the key. No randomness: fixed texts.
 */
#define _GNU_SOURCE
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint/safetensors.h"
#include "runtime/config.h"
#include "testing.h"

static char dir[] = "/tmp/dstrain_hf_config_XXXXXX";

/* Writes c's export config.json, applies edit (a JSON object merged into the root, the value
 * "DEL" deleting the key; rope_edit: the same into rope_scaling), and checks it against want. */
static int is_del(json_t *v) { return json_is_string(v) && !strcmp(json_string_value(v), "DEL"); }

static int check_with(const ModelConfig *written, const ModelConfig *want, const char *edit, const char *rope_edit,
                      char *err, size_t errlen)
{
    char path[256];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (hf_write_config(path, written, err, errlen)) return -2;
    json_t *root = json_load_file(path, 0, NULL);
    json_t *e = edit ? json_loads(edit, 0, NULL) : NULL, *re = rope_edit ? json_loads(rope_edit, 0, NULL) : NULL;
    const char *k;
    json_t *v;
    json_object_foreach(e, k, v) {
        if (is_del(v)) json_object_del(root, k);
        else json_object_set(root, k, v);
    }
    json_t *rs = json_object_get(root, "rope_scaling");
    json_object_foreach(re, k, v) {
        if (is_del(v)) json_object_del(rs, k);
        else json_object_set(rs, k, v);
    }
    json_dump_file(root, path, JSON_INDENT(1));
    json_decref(root);
    json_decref(e);
    json_decref(re);
    err[0] = 0;
    return hf_config_check(path, want, err, errlen);
}

static void expect_case(const char *what, const ModelConfig *w, const ModelConfig *c, const char *edit,
                        const char *rope_edit, const char *want_err)
{
    char err[1024];
    int rc = check_with(w, c, edit, rope_edit, err, sizeof err);
    if (!want_err) EXPECT(rc == 0, "%s: refused: %s", what, err);
    else EXPECT(rc == -1 && strstr(err, want_err) && !strchr(err, '\n'), "%s: rc %d, '%s' (want '%s')", what, rc, err,
                want_err);
}

int main(void)
{
    if (!mkdtemp(dir)) return 1;
    Config base;
    config_defaults(&base);
    ModelConfig m = base.model, other;

    expect_case("an export of the same model", &m, &m, NULL, NULL, NULL);
    other = m;
    other.norm_topk_prob = !m.norm_topk_prob;
    expect_case("norm_topk_prob differs", &other, &m, NULL, NULL, "'norm_topk_prob' = false in");
    other = m;
    other.n_group = 2;
    expect_case("n_group differs", &other, &m, NULL, NULL, "'n_group' = 2 in");
    expect_case("a missing key", &m, &m, "{\"topk_group\": \"DEL\"}", NULL,
                "has no number 'topk_group' (the config says 2)");
    expect_case("hidden_act", &m, &m, "{\"hidden_act\": \"gelu\"}", NULL, "'hidden_act' in");
    expect_case("rope_interleave false", &m, &m, "{\"rope_interleave\": false}", NULL, "'rope_interleave' in");
    /* transformers 5: rope_parameters with rope_theta inside, "default" for plain RoPE */
    expect_case("transformers 5 layout", &m, &m,
                "{\"rope_theta\": \"DEL\", \"rope_parameters\": {\"rope_theta\": 10000.0, \"rope_type\": \"default\"}}",
                NULL, NULL);
    expect_case("transformers 5, another theta", &m, &m,
                "{\"rope_theta\": \"DEL\", \"rope_parameters\": {\"rope_theta\": 50000, \"rope_type\": \"default\"}}",
                NULL, "'rope_theta' = 50000 in");
    expect_case("q_lora_rank null against 64", &m, &m, "{\"q_lora_rank\": null}", NULL,
                "'q_lora_rank' = 0 in");

    ModelConfig y = m;
    snprintf(y.rope_scaling.type, sizeof y.rope_scaling.type, "yarn");
    y.rope_scaling.factor = 4;
    expect_case("yarn export (mscale 1, mscale_all_dim 1)", &y, &y, NULL, NULL, NULL);
    expect_case("yarn against plain rope", &m, &y, NULL, NULL, "rope type 'none' in");
    /* both 1 and no attention_factor: transformers derives DeepSeek's ratio, 1 */
    expect_case("yarn without attention_factor, both 1", &y, &y, NULL, "{\"attention_factor\": null}", NULL);
    ModelConfig y0 = y;
    y0.rope_scaling.mscale = 0;
    expect_case("mscale 0 with attention_factor", &y0, &y0, NULL, NULL, NULL);
    expect_case("mscale 0 without attention_factor", &y0, &y0, NULL, "{\"attention_factor\": null}",
                "'rope_scaling.attention_factor' (the cos/sin scale) is 1.1386294361119891 for transformers");
    /* transformers' softmax scale reads an absent mscale_all_dim as 0 */
    expect_case("mscale_all_dim absent", &y, &y, NULL, "{\"mscale_all_dim\": \"DEL\"}",
                "'rope_scaling.mscale_all_dim' = 0 in");
    expect_case("another beta_fast", &y, &y, NULL, "{\"beta_fast\": 16}", "'rope_scaling.beta_fast' = 16 in");

    char path[256];
    snprintf(path, sizeof path, "%s/config.json", dir);
    remove(path);
    rmdir(dir);
    return test_finish();
}
