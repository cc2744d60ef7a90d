/* model/config.h - the model's hyper-parameters and the dimension glossary.
 *
 * Field names are the Hugging Face DeepseekV3 config.json names (SPEC.md section 1), so a
 * config reads next to a published model card and exports without renaming. The key list is
 * an X-macro: runtime/config.c derives parsing, defaults, --help and the resolved-config
 * writer from it; nothing else lists these keys.
 *
 * Dimension glossary, used everywhere (never a local synonym):
 *   B batch (micro-batch sequences)   T sequence length     N = B*T tokens
 *   C hidden_size                     H num_attention_heads
 *   Dn/Dr/Dv qk_nope / qk_rope / v head dims                Dqk = Dn + Dr
 *   Rq q_lora_rank (0: no query compression)                Rkv kv_lora_rank
 *   E n_routed_experts   K num_experts_per_tok   F moe_intermediate_size
 *   I intermediate_size (dense FFN)  Fs = n_shared_experts * F (shared expert hidden)
 *   V vocab_size         L num_hidden_layers     D num_nextn_predict_layers (MTP depth)
 *
 * X(type, key, default-as-text, help). Types: INT (int), I64 (long long), F64 (double),
 * BOOL (int 0/1), STR (char[CONFIG_STR_MAX]). Defaults are parsed by the same code as files.
 */
#ifndef DSTRAIN_MODEL_CONFIG_H
#define DSTRAIN_MODEL_CONFIG_H

#define CONFIG_STR_MAX 256

#define MODEL_KEYS(X) \
    X(INT, vocab_size, "256", "vocabulary size V") \
    X(INT, hidden_size, "128", "hidden size C") \
    X(INT, intermediate_size, "384", "dense SwiGLU hidden size I (layers before first_k_dense_replace)") \
    X(INT, moe_intermediate_size, "128", "per-expert SwiGLU hidden size F") \
    X(INT, num_hidden_layers, "4", "number of transformer blocks L") \
    X(INT, first_k_dense_replace, "1", "layers 0..k-1 use the dense FFN, the rest MoE") \
    X(INT, num_attention_heads, "4", "attention heads H") \
    X(INT, n_routed_experts, "8", "routed experts per MoE layer E") \
    X(INT, n_shared_experts, "1", "shared experts (hidden = n_shared_experts * F)") \
    X(INT, num_experts_per_tok, "2", "routed experts per token K") \
    X(INT, n_group, "4", "expert groups for group-limited routing") \
    X(INT, topk_group, "2", "groups kept per token") \
    X(F64, routed_scaling_factor, "2.5", "scale applied to the normalised routing weights") \
    X(BOOL, norm_topk_prob, "true", "normalise the K routing weights to sum 1 before scaling") \
    X(INT, q_lora_rank, "64", "query compression rank Rq (0: no compression, q_proj)") \
    X(INT, kv_lora_rank, "32", "key/value latent rank Rkv") \
    X(INT, qk_nope_head_dim, "32", "per-head query/key dims without RoPE Dn") \
    X(INT, qk_rope_head_dim, "16", "per-head query/key RoPE dims Dr (even)") \
    X(INT, v_head_dim, "32", "per-head value dims Dv") \
    X(F64, rms_norm_eps, "1e-6", "RMSNorm epsilon") \
    X(F64, rope_theta, "10000", "RoPE base theta") \
    X(INT, max_position_embeddings, "4096", "longest position the model is configured for") \
    X(INT, num_nextn_predict_layers, "1", "multi-token prediction depth D (0: off)") \
    X(BOOL, tie_word_embeddings, "false", "tie embedding and output head (must be false)") \
    X(F64, initializer_range, "0.006", "standard deviation of the normal weight init") \
    X(STR, attention, "mla", "attention kind: mla (DeepSeek) or gqa (dense models, plan only)") \
    X(INT, num_key_value_heads, "0", "gqa only: key/value heads (0: = num_attention_heads)") \
    X(INT, head_dim, "0", "gqa only: per-head dims (0: hidden_size / num_attention_heads)")

/* [model.rope_scaling]: YaRN (TR section 4.3); type "none" disables it. */
#define ROPE_SCALING_KEYS(X) \
    X(STR, type, "none", "none or yarn") \
    X(F64, factor, "1", "context extension factor s") \
    X(INT, original_max_position_embeddings, "4096", "context length before extension") \
    X(F64, beta_fast, "32", "YaRN ramp: rotations above which frequencies are kept") \
    X(F64, beta_slow, "1", "YaRN ramp: rotations below which frequencies are interpolated") \
    X(F64, mscale, "1", "YaRN attention temperature coefficient") \
    X(F64, mscale_all_dim, "1", "YaRN mscale divisor coefficient")

#define CONFIG_CT_INT int
#define CONFIG_CT_I64 long long
#define CONFIG_CT_F64 double
#define CONFIG_CT_BOOL int
#define CONFIG_FIELD(type, key, def, help) CONFIG_FIELD_##type(key)
#define CONFIG_FIELD_INT(key) int key;
#define CONFIG_FIELD_I64(key) long long key;
#define CONFIG_FIELD_F64(key) double key;
#define CONFIG_FIELD_BOOL(key) int key;
#define CONFIG_FIELD_STR(key) char key[CONFIG_STR_MAX];

typedef struct RopeScaling { ROPE_SCALING_KEYS(CONFIG_FIELD) } RopeScaling;

/* YaRN's cos/sin table scale, mscale(factor, mscale) / mscale(factor, mscale_all_dim)
 * (model/rope.c; export writes it as rope_scaling.attention_factor). */
double rope_yarn_table_scale(const RopeScaling *rs);

typedef struct ModelConfig {
    MODEL_KEYS(CONFIG_FIELD)
    RopeScaling rope_scaling;
} ModelConfig;

#endif
