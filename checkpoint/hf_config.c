/* checkpoint/hf_config.c - holds a Hugging Face config.json against the model's config before
 * `--init-from` loads its weights: a hyper-parameter that differs, even one that changes no
 * tensor shape (routing, rope, eps), would make the weights compute another function than the
 * one they were trained as, silently.
 * Not here: reading the safetensors files (safetensors.c) or writing config.json (hf_export.c).
 * Reference: transformers' DeepseekV3Config fields and how its YaRN reads rope_scaling /
 * rope_parameters (attention_factor, mscale, mscale_all_dim; SPEC.md section 3).
 */
#define _GNU_SOURCE
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsio.h"
#include "safetensors.h"

#define CONFIG_JSON_MAX ((size_t)16 << 20)

/* The shortest of %.15g / %.17g that reads back as v (1e-05, not 1.0000000000000001e-05). */
typedef struct Num {
    char s[32];
} Num;

static Num num(double v)
{
    Num n;
    snprintf(n.s, sizeof n.s, "%.15g", v);
    if (strtod(n.s, NULL) != v) snprintf(n.s, sizeof n.s, "%.17g", v);
    return n;
}

/* A number of the JSON (integer or real); 0 when key is absent or not a number. */
static int json_number(json_t *o, const char *key, double *v)
{
    json_t *x = json_object_get(o, key);
    if (!json_is_number(x)) return 0;
    *v = json_number_value(x);
    return 1;
}

/* One numeric key: present and equal, else an error naming it with both values. q_lora_rank
 * null means 0 (no query compression). */
static int check_number(const char *path, json_t *o, const char *key, double ours, char *err, size_t errlen)
{
    double v;
    json_t *x = json_object_get(o, key);
    if (!strcmp(key, "q_lora_rank") && json_is_null(x)) v = 0;
    else if (!json_number(o, key, &v))
        return ckpt_fail(err, errlen, "init-from: '%s' has no number '%s' (the config says %s)", path, key,
                         num(ours).s);
    if (v != ours)
        return ckpt_fail(err, errlen, "init-from: '%s' = %s in '%s' but %s in the config (model.%s)", key, num(v).s,
                         path, num(ours).s, key);
    return 0;
}

static int check_bool(const char *path, json_t *o, const char *key, int ours, char *err, size_t errlen)
{
    json_t *x = json_object_get(o, key);
    if (!json_is_boolean(x))
        return ckpt_fail(err, errlen, "init-from: '%s' has no boolean '%s' (the config says %s)", path, key,
                         ours ? "true" : "false");
    if (json_is_true(x) != !!ours)
        return ckpt_fail(err, errlen, "init-from: '%s' = %s in '%s' but %s in the config (model.%s)", key,
                         json_is_true(x) ? "true" : "false", path, ours ? "true" : "false", key);
    return 0;
}

/* Fields dstrain has no key for: when present they must hold the one value dstrain computes. */
static int check_fixed(const char *path, json_t *o, char *err, size_t errlen)
{
    static const char *const strs[][2] = {
        { "hidden_act", "silu" }, { "scoring_func", "sigmoid" }, { "topk_method", "noaux_tc" },
    };
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        json_t *x = json_object_get(o, strs[i][0]);
        if (x && (!json_is_string(x) || strcmp(json_string_value(x), strs[i][1])))
            return ckpt_fail(err, errlen, "init-from: '%s' in '%s' is not \"%s\", the only one dstrain computes",
                             strs[i][0], path, strs[i][1]);
    }
    json_t *x = json_object_get(o, "rope_interleave");
    if (x && !json_is_true(x))
        return ckpt_fail(err, errlen, "init-from: 'rope_interleave' in '%s' is not true; dstrain rotates interleaved "
                         "pairs (x[2j], x[2j+1])", path);
    x = json_object_get(o, "attention_bias");
    if (x && !json_is_false(x))
        return ckpt_fail(err, errlen, "init-from: 'attention_bias' in '%s' is not false; dstrain has no biases", path);
    return 0;
}

/* YaRN as transformers computes it from this dict (transformers' _compute_yarn_parameters and
 * yarn_apply_mscale), against what dstrain computes (model/rope.c). */
static int check_yarn(const char *path, json_t *rs, const RopeScaling *r, char *err, size_t errlen)
{
    static const char *const keys[] = { "factor", "original_max_position_embeddings", "beta_fast", "beta_slow" };
    const double ours[] = { r->factor, r->original_max_position_embeddings, r->beta_fast, r->beta_slow };
    char name[96];
    for (int i = 0; i < 4; i++) {
        double v;
        snprintf(name, sizeof name, "rope_scaling.%s", keys[i]);
        if (!json_number(rs, keys[i], &v))
            return ckpt_fail(err, errlen, "init-from: '%s' has no number '%s' (the config says %s)", path, name,
                             num(ours[i]).s);
        if (v != ours[i])
            return ckpt_fail(err, errlen, "init-from: '%s' = %s in '%s' but %s in the config (model.%s)", name,
                             num(v).s, path, num(ours[i]).s, name);
    }
    double m = 0, mad = 0, af;
    int has_m = json_number(rs, "mscale", &m), has_mad = json_number(rs, "mscale_all_dim", &mad);
    if (has_m && m != r->mscale)
        return ckpt_fail(err, errlen, "init-from: 'rope_scaling.mscale' = %s in '%s' but %s in the config",
                         num(m).s, path, num(r->mscale).s);
    if (mad != r->mscale_all_dim)   /* transformers' softmax scale reads an absent one as 0 */
        return ckpt_fail(err, errlen, "init-from: 'rope_scaling.mscale_all_dim' = %s in '%s'%s but %s in the "
                         "config", num(mad).s, path, has_mad ? "" : " (absent: 0)", num(r->mscale_all_dim).s);
    if (!json_number(rs, "attention_factor", &af)) {
        /* what transformers derives: DeepSeek's ratio only when both are non-zero */
        double f = r->factor, mf = f <= 1 ? 1 : 0.1 * log(f) + 1;
        af = m != 0 && mad != 0 ? rope_yarn_table_scale(r) : mf;
    }
    double want = rope_yarn_table_scale(r);
    if (fabs(af - want) > 1e-12 * want)
        return ckpt_fail(err, errlen, "init-from: 'rope_scaling.attention_factor' (the cos/sin scale) is %s for "
                         "transformers in '%s' but %s in the config (mscale %g / mscale_all_dim %g)", num(af).s, path,
                         num(want).s, r->mscale, r->mscale_all_dim);
    return 0;
}

/* rope_theta and rope_scaling, from either layout: transformers 4 writes rope_theta and
 * rope_scaling (null: plain RoPE), transformers 5 rope_parameters with rope_theta inside and
 * rope_type "default" for plain RoPE. */
static int check_rope(const char *path, json_t *o, const ModelConfig *c, char *err, size_t errlen)
{
    json_t *rp = json_object_get(o, "rope_parameters"), *rs = json_object_get(o, "rope_scaling");
    json_t *dict = json_is_object(rp) ? rp : rs;
    json_t *holder = json_is_object(rp) && json_object_get(rp, "rope_theta") ? rp : o;
    if (check_number(path, holder, "rope_theta", c->rope_theta, err, errlen)) return -1;
    const char *type = "none";
    if (json_is_object(dict)) {
        json_t *t = json_object_get(dict, "rope_type");
        if (!json_is_string(t)) t = json_object_get(dict, "type");
        type = json_is_string(t) ? json_string_value(t) : "default";
        if (!strcmp(type, "default")) type = "none";
    }
    int yarn = !strcmp(c->rope_scaling.type, "yarn");
    if (strcmp(type, c->rope_scaling.type) && !(!yarn && !strcmp(type, "none")))
        return ckpt_fail(err, errlen, "init-from: rope type '%s' in '%s' but '%s' in the config "
                         "(model.rope_scaling.type)", type, path, c->rope_scaling.type);
    return yarn ? check_yarn(path, dict, &c->rope_scaling, err, errlen) : 0;
}

/* Every [model] key but the ones named in safetensors.h, by the X-macro list (none forgotten). */
#define HF_SKIP(k) (!strcmp(#k, "attention") || !strcmp(#k, "num_key_value_heads") || \
                    !strcmp(#k, "head_dim") || !strcmp(#k, "initializer_range") || !strcmp(#k, "rope_theta"))
#define HF_CHECK_INT(k) check_number(path, o, #k, (double)c->k, err, errlen)
#define HF_CHECK_I64(k) check_number(path, o, #k, (double)c->k, err, errlen)
#define HF_CHECK_F64(k) check_number(path, o, #k, c->k, err, errlen)
#define HF_CHECK_BOOL(k) check_bool(path, o, #k, c->k, err, errlen)
#define HF_CHECK_STR(k) 0
#define HF_CHECK_KEY(type, key, def, help) \
    if (!HF_SKIP(key) && HF_CHECK_##type(key)) return -1;

static int check_model_keys(const char *path, json_t *o, const ModelConfig *c, char *err, size_t errlen)
{
    if (strcmp(c->attention, "mla"))
        return ckpt_fail(err, errlen, "init-from: 'model.attention' = '%s' has no DeepseekV3 form (only mla)",
                         c->attention);
    MODEL_KEYS(HF_CHECK_KEY)
    return check_fixed(path, o, err, errlen) || check_rope(path, o, c, err, errlen) ? -1 : 0;
}

int hf_config_check(const char *path, const ModelConfig *c, char *err, size_t errlen)
{
    char *text = fsio_read_file(path, CONFIG_JSON_MAX, NULL, err, errlen);
    if (!text) return -1;
    json_error_t jerr;
    json_t *o = json_loads(text, 0, &jerr);
    free(text);
    int rc;
    if (!json_is_object(o)) rc = ckpt_fail(err, errlen, "init-from: '%s' is not a JSON object (%s)", path, jerr.text);
    else rc = check_model_keys(path, o, c, err, errlen);
    json_decref(o);
    return rc;
}
