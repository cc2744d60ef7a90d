/* runtime/config_validate.c - config_validate (runtime/config.h): every key checked before
 * anything is allocated, one DIE per inconsistency naming the key(s) and value(s). Split from
 * runtime/config.c (loading, --set, writing, --help), which it shares nothing with but the
 * Config struct. Not here: whether a layout is wise (the planner judges that).
 */
#include "runtime/config.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "runtime/common.h"
#include "runtime/pipeline/schedule.h"
#include "runtime/pipeline/trace.h"

#define CONFIG_MAX_THREADS 1024                    /* upper limits of validate_train */
#define CONFIG_MAX_GRAD_ACCUM 1048576               /* 2^20 micro-batches per step and rank */
#define CONFIG_MAX_STEP_TOKENS 4294967296.0        /* 2^32: 68x DeepSeek-V3's 15360 x 4096 */
#define CONFIG_MAX_RUN_TOKENS 4611686018427387904.0 /* 2^62: the token counter is int64 */

/* ---- validation: one DIE per inconsistency, naming key(s) and value(s) ---- */

static void need_at_least(const char *key, long long v, long long min)
{
    if (v < min) DIE("config: '%s' = %lld must be >= %lld", key, v, min);
}

static void need_above_f(const char *key, double v, double min)
{
    if (!(v > min)) DIE("config: '%s' = %.15g must be > %.15g", key, v, min);
}

static void need_at_least_f(const char *key, double v, double min)
{
    if (!(v >= min)) DIE("config: '%s' = %.15g must be >= %.15g", key, v, min);
}

/* a divides b (a >= 1 is checked by the caller first). */
static void need_divides(const char *ka, long long a, const char *kb, long long b)
{
    if (a < 1 || b % a) DIE("config: '%s' = %lld does not divide '%s' = %lld", ka, a, kb, b);
}

static void need_one_of(const char *key, const char *v, const char *const *options)
{
    char list[256] = "";
    for (int i = 0; options[i]; i++) {
        if (!strcmp(v, options[i])) return;
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", options[i]);
    }
    DIE("config: '%s' = '%s' is not one of: %s", key, v, list);
}

static int has_moe(const ModelConfig *m)
{
    return m->first_k_dense_replace < m->num_hidden_layers || m->num_nextn_predict_layers > 0;
}

static void validate_attention(const ModelConfig *m)
{
    static const char *const KINDS[] = { "mla", "gqa", NULL };
    need_one_of("model.attention", m->attention, KINDS);
    if (!strcmp(m->attention, "mla")) {
        need_at_least("model.q_lora_rank", m->q_lora_rank, 0);
        need_at_least("model.kv_lora_rank", m->kv_lora_rank, 1);
        need_at_least("model.qk_nope_head_dim", m->qk_nope_head_dim, 1);
        need_at_least("model.qk_rope_head_dim", m->qk_rope_head_dim, 2);
        need_at_least("model.v_head_dim", m->v_head_dim, 1);
        if (m->qk_rope_head_dim % 2)
            DIE("config: 'model.qk_rope_head_dim' = %d must be even (RoPE rotates pairs)",
                m->qk_rope_head_dim);
        return;
    }
    need_at_least("model.num_key_value_heads", m->num_key_value_heads, 0);
    if (m->num_key_value_heads > 0)
        need_divides("model.num_key_value_heads", m->num_key_value_heads, "model.num_attention_heads",
                     m->num_attention_heads);
    need_at_least("model.head_dim", m->head_dim, 0);
    if (m->head_dim == 0 && m->hidden_size % m->num_attention_heads)
        DIE("config: 'model.num_attention_heads' = %d does not divide 'model.hidden_size' = %d; "
            "set 'model.head_dim'", m->num_attention_heads, m->hidden_size);
    if (m->head_dim % 2)
        DIE("config: 'model.head_dim' = %d must be even (RoPE rotates pairs)", m->head_dim);
    if (m->head_dim == 0 && (m->hidden_size / m->num_attention_heads) % 2)
        DIE("config: 'model.hidden_size' / 'model.num_attention_heads' = %d / %d = %d is the gqa head "
            "dim and must be even (RoPE rotates pairs); set 'model.head_dim'", m->hidden_size,
            m->num_attention_heads, m->hidden_size / m->num_attention_heads);
}

static void validate_rope_scaling(const RopeScaling *r)
{
    static const char *const TYPES[] = { "none", "yarn", NULL };
    need_one_of("model.rope_scaling.type", r->type, TYPES);
    need_at_least_f("model.rope_scaling.factor", r->factor, 1);
    if (strcmp(r->type, "yarn")) return;
    need_at_least("model.rope_scaling.original_max_position_embeddings",
                  r->original_max_position_embeddings, 1);
    need_above_f("model.rope_scaling.beta_slow", r->beta_slow, 0);
    if (!(r->beta_fast > r->beta_slow))
        DIE("config: 'model.rope_scaling.beta_fast' = %.15g must be > 'model.rope_scaling.beta_slow' = %.15g",
            r->beta_fast, r->beta_slow);
}

static void validate_model(const ModelConfig *m)
{
    need_at_least("model.vocab_size", m->vocab_size, 2);
    need_at_least("model.hidden_size", m->hidden_size, 1);
    need_at_least("model.intermediate_size", m->intermediate_size, 1);
    need_at_least("model.num_hidden_layers", m->num_hidden_layers, 1);
    need_at_least("model.num_attention_heads", m->num_attention_heads, 1);
    need_at_least("model.max_position_embeddings", m->max_position_embeddings, 1);
    need_at_least("model.num_nextn_predict_layers", m->num_nextn_predict_layers, 0);
    if (m->first_k_dense_replace < 0 || m->first_k_dense_replace > m->num_hidden_layers)
        DIE("config: 'model.first_k_dense_replace' = %d is not in [0, 'model.num_hidden_layers' = %d]",
            m->first_k_dense_replace, m->num_hidden_layers);
    need_above_f("model.rms_norm_eps", m->rms_norm_eps, 0);
    need_above_f("model.rope_theta", m->rope_theta, 0);
    need_above_f("model.initializer_range", m->initializer_range, 0);
    if (m->tie_word_embeddings)
        DIE("config: 'model.tie_word_embeddings' = true is not supported (DeepSeek-V3 keeps "
            "embedding and output head separate); set it to false");
    validate_attention(m);
    validate_rope_scaling(&m->rope_scaling);
}

/* Router shape (SPEC section 4) and the [moe] keys; only called when some layer is MoE. */
static void validate_moe(const Config *c)
{
    const ModelConfig *m = &c->model;
    need_at_least("model.n_routed_experts", m->n_routed_experts, 1);
    need_at_least("model.moe_intermediate_size", m->moe_intermediate_size, 1);
    need_at_least("model.n_shared_experts", m->n_shared_experts, 0);
    need_at_least("model.num_experts_per_tok", m->num_experts_per_tok, 1);
    need_at_least("model.n_group", m->n_group, 1);
    need_divides("model.n_group", m->n_group, "model.n_routed_experts", m->n_routed_experts);
    if (m->topk_group < 1 || m->topk_group > m->n_group)
        DIE("config: 'model.topk_group' = %d is not in [1, 'model.n_group' = %d]", m->topk_group, m->n_group);
    need_divides("model.topk_group", m->topk_group, "model.num_experts_per_tok", m->num_experts_per_tok);
    int per_group = m->n_routed_experts / m->n_group;
    if (m->num_experts_per_tok > m->topk_group * per_group)
        DIE("config: 'model.num_experts_per_tok' = %d exceeds the %d experts of 'model.topk_group' = %d "
            "groups ('model.n_routed_experts' / 'model.n_group' = %d per group)",
            m->num_experts_per_tok, m->topk_group * per_group, m->topk_group, per_group);
    need_above_f("model.routed_scaling_factor", m->routed_scaling_factor, 0);
    need_at_least_f("moe.bias_update_speed", c->moe.bias_update_speed, 0);
    need_at_least("moe.bias_update_stop_tokens", c->moe.bias_update_stop_tokens, 0);
    need_at_least_f("moe.balance_alpha", c->moe.balance_alpha, 0);
    need_at_least("moe.max_nodes", c->moe.max_nodes, 1);
    need_divides("parallel.ep", c->parallel.ep, "model.n_routed_experts", m->n_routed_experts);
}

/* Token counts, bounded so every product the trainer forms is exact: the model indexes a
 * micro-batch's tokens (and their top-K rows) with an int, the run's token counter is int64.
 * Over 2^32 tokens a step is a typo (the largest published batch is 6.3e7), not a batch. */
static void validate_batch(const Config *c)
{
    const TrainConfig *t = &c->train;
    const int k = c->model.num_experts_per_tok > 1 ? c->model.num_experts_per_tok : 1;
    const double rows = (double)t->micro_batch_size * (t->seq_len + 1.0) * k;   /* exact < 2^53 */
    if (rows > INT_MAX)
        DIE("config: 'train.micro_batch_size' x ('train.seq_len' + 1) x 'model.num_experts_per_tok' "
            "= %d x %.0f x %d = %.4g exceeds %d; use a smaller micro-batch", t->micro_batch_size,
            t->seq_len + 1.0, k, rows, INT_MAX);
    const int dp = c->parallel.dp > 1 ? c->parallel.dp : 1;   /* dp < 1: validate_parallel */
    /* double: factors >= 1, so partial products <= the total: exact below 2^53 */
    const double per_step_f = (double)t->grad_accum * t->micro_batch_size * t->seq_len * dp;
    if (per_step_f > CONFIG_MAX_STEP_TOKENS)
        DIE("config: 'train.grad_accum' x 'micro_batch_size' x 'seq_len' x 'parallel.dp' = %d x %d x %d "
            "x %d = %.4g tokens per step exceeds %.4g", t->grad_accum, t->micro_batch_size, t->seq_len,
            dp, per_step_f, CONFIG_MAX_STEP_TOKENS);
    const long long per_step = (long long)per_step_f;
    if ((double)per_step * t->steps > CONFIG_MAX_RUN_TOKENS)
        DIE("config: 'train.steps' x tokens per step = %d x %lld = %.4g tokens exceeds %.4g", t->steps,
            per_step, (double)per_step * t->steps, CONFIG_MAX_RUN_TOKENS);
}

static void validate_train(const Config *c)
{
    static const char *const DEVICES[] = { "cpu", "cuda", NULL };
    static const char *const PRECISIONS[] = { "fp32", "bf16", "fp8", NULL };
    const TrainConfig *t = &c->train;
    if (!t->name[0]) DIE("config: 'train.name' is empty; give the run a name");
    if (strchr(t->name, '/') || t->name[0] == '.')
        DIE("config: 'train.name' = '%s' must be one directory name (no '/', no leading '.')", t->name);
    if (!t->run_dir[0]) DIE("config: 'train.run_dir' is empty; use \".\" for the current directory");
    need_at_least("train.steps", t->steps, 1);
    need_at_least("train.micro_batch_size", t->micro_batch_size, 1);
    need_at_least("train.seq_len", t->seq_len, 1);
    if (t->grad_accum < 1 || t->grad_accum > CONFIG_MAX_GRAD_ACCUM)
        DIE("config: 'train.grad_accum' = %d is not in [1, %d]", t->grad_accum, CONFIG_MAX_GRAD_ACCUM);
    validate_batch(c);
    if (t->seq_len > c->model.max_position_embeddings)
        DIE("config: 'train.seq_len' = %d exceeds 'model.max_position_embeddings' = %d",
            t->seq_len, c->model.max_position_embeddings);
    need_one_of("train.device", t->device, DEVICES);
    need_one_of("train.precision", t->precision, PRECISIONS);
    need_one_of("train.bf16_moments", t->bf16_moments, (const char *const[]){ "auto", "true", "false", NULL });
    /* 100000 OpenMP threads overflow the runtime's stacks (a crash); 1024 > any machine's cores */
    if (t->threads < 0 || t->threads > CONFIG_MAX_THREADS)
        DIE("config: 'train.threads' = %d is not in [0, %d] (0: all cores)", t->threads, CONFIG_MAX_THREADS);
    need_at_least("train.log_every", t->log_every, 1);
    need_at_least("train.val_every", t->val_every, 0);
    /* validation always runs at the end of the run (val_every = 0 means only there), so 0
     * batches would report the mean of nothing as a loss of 0 */
    need_at_least("train.val_batches", t->val_batches, 1);
    need_at_least("train.checkpoint_every", t->checkpoint_every, 0);
    need_at_least("train.keep_checkpoints", t->keep_checkpoints, 1);
    need_at_least("train.max_failed_saves", t->max_failed_saves, 1);
    need_at_least("train.max_bad_steps", t->max_bad_steps, 1);
    need_at_least_f("train.spike_factor", t->spike_factor, 0);
    need_at_least_f("train.watchdog_s", t->watchdog_s, 0);
    need_at_least("train.sdc_every", t->sdc_every, 0);
    if (!(t->ema_decay >= 0 && t->ema_decay < 1))
        DIE("config: 'train.ema_decay' = %.15g is not in [0, 1) (0 turns the EMA off)", t->ema_decay);
    need_at_least("train.batch_ramp_start", t->batch_ramp_start, 0);
    if (t->batch_ramp_start > t->grad_accum)
        DIE("config: 'train.batch_ramp_start' = %d exceeds 'train.grad_accum' = %d (the ramp grows to grad_accum)",
            t->batch_ramp_start, t->grad_accum);
    if (t->batch_ramp_tokens < 0) DIE("config: 'train.batch_ramp_tokens' = %lld is negative", t->batch_ramp_tokens);
    if (t->batch_ramp_start > 0 && t->batch_ramp_tokens == 0)
        DIE("config: 'train.batch_ramp_start' = %d needs 'train.batch_ramp_tokens' > 0 (the length of the ramp)",
            t->batch_ramp_start);
    int traced[TRACE_MAX_STEPS], n_traced;
    char why[256];
    if ((n_traced = trace_steps_parse(t->trace_steps, traced, TRACE_MAX_STEPS, why, sizeof why)) < 0)
        DIE("config: 'train.trace_steps' = \"%s\": %s", t->trace_steps, why);
    if (n_traced > 0 && traced[n_traced - 1] > t->steps)
        DIE("config: 'train.trace_steps' = \"%s\" names step %d, past 'train.steps' = %d", t->trace_steps,
            traced[n_traced - 1], t->steps);
}

static void validate_optim(const OptimConfig *o)
{
    need_above_f("optim.lr", o->lr, 0);
    need_at_least_f("optim.lr_min", o->lr_min, 0);
    if (o->lr_min > o->lr) DIE("config: 'optim.lr_min' = %.15g exceeds 'optim.lr' = %.15g", o->lr_min, o->lr);
    if (!(o->beta1 >= 0 && o->beta1 < 1)) DIE("config: 'optim.beta1' = %.15g is not in [0, 1)", o->beta1);
    if (!(o->beta2 >= 0 && o->beta2 < 1)) DIE("config: 'optim.beta2' = %.15g is not in [0, 1)", o->beta2);
    need_above_f("optim.eps", o->eps, 0);
    need_at_least_f("optim.weight_decay", o->weight_decay, 0);
    need_at_least_f("optim.grad_clip", o->grad_clip, 0);
    need_at_least("optim.warmup_steps", o->warmup_steps, 0);
    need_at_least("optim.constant_steps", o->constant_steps, 0);
    need_at_least("optim.decay_steps", o->decay_steps, 0);
}

/* The pipeline rules are the schedule's (runtime/pipeline/schedule.h), the ones plan applies;
 * micro-batches per step are 'train.grad_accum'. */
static void validate_parallel(const Config *c)
{
    static const char *const SCHEDULES[] = { "1f1b", "zb1p", "dualpipe", "dualpipev", NULL };
    const ParallelConfig *p = &c->parallel;
    need_at_least("parallel.pp", p->pp, 1);
    need_at_least("parallel.dp", p->dp, 1);
    need_at_least("parallel.ep", p->ep, 1);
    need_divides("parallel.ep", p->ep, "parallel.dp", p->dp);
    need_one_of("parallel.schedule", p->schedule, SCHEDULES);
    SchedKind kind;
    char err[SCHED_ERR_MAX];
    if (sched_kind_parse(p->schedule, &kind)) BUG("schedule '%s' passed need_one_of", p->schedule);
    if (sched_validate(kind, p->pp, c->train.grad_accum, c->model.num_hidden_layers, err, sizeof err))
        DIE("config: %s", err);
}

static void validate_cluster(const ClusterConfig *k)
{
    need_at_least("cluster.gpus_per_node", k->gpus_per_node, 1);
    need_at_least("cluster.nodes", k->nodes, 1);
    need_above_f("cluster.peak_tflops_bf16", k->peak_tflops_bf16, 0);
    need_above_f("cluster.peak_tflops_fp8", k->peak_tflops_fp8, 0);
    need_above_f("cluster.hbm_gib", k->hbm_gib, 0);
    need_above_f("cluster.nvlink_gbps", k->nvlink_gbps, 0);
    need_above_f("cluster.ib_gbps", k->ib_gbps, 0);
    need_above_f("cluster.nvlink_latency_us", k->nvlink_latency_us, 0);
    need_above_f("cluster.ib_latency_us", k->ib_latency_us, 0);
    if (!(k->mfu > 0 && k->mfu <= 1)) DIE("config: 'cluster.mfu' = %.15g is not in (0, 1]", k->mfu);
}

void config_validate(const Config *c)
{
    validate_model(&c->model);
    validate_train(c);
    validate_optim(&c->optim);
    need_at_least_f("mtp.lambda", c->mtp.lambda, 0);
    need_at_least_f("mtp.lambda_later", c->mtp.lambda_later, 0);
    need_at_least("mtp.lambda_switch_tokens", c->mtp.lambda_switch_tokens, 0);
    if (!c->data.dir[0]) DIE("config: 'data.dir' is empty; name the directory of token shards");
    need_at_least("data.synthetic_tokens", c->data.synthetic_tokens, 1000);
    validate_parallel(c);
    if (has_moe(&c->model)) validate_moe(c);
    if (c->moe.capacity_factor != 0 && !(c->moe.capacity_factor >= 1))
        DIE("config: 'moe.capacity_factor' = %.15g must be 0 (the worst case) or >= 1 (the mean load)",
            c->moe.capacity_factor);
    validate_cluster(&c->cluster);
}
