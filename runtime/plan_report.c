/* runtime/plan_report.c - the plan as a text report and as one JSON object.
 *
 * Not here: any figure's computation (plan.c, plan_layout.c, plan_time.c); the only
 * arithmetic is unit scaling for reading. Every number of the text report is a JSON value
 * (or, in a problem message, part of the JSON problem text); tests/cli/test_plan.sh checks it.
 * JSON keys are stable snake_case, values in base units: counts, FLOPs, bytes, seconds,
 * bytes/s, fractions. The key list is in README section "dstrain plan".
 */
#include <jansson.h>
#include <math.h>
#include <string.h>

#include "../model/flops.h"
#include "common.h"
#include "plan.h"

#define GIB 1073741824.0

typedef struct Num { char s[40]; } Num;

static Num scaled(double x, const double *scale, const char *const *unit, int n, const char *plain)
{
    Num r;
    for (int i = 0; i < n; i++)
        if (fabs(x) >= scale[i]) {
            snprintf(r.s, sizeof r.s, "%.3f %s", x / scale[i], unit[i]);
            return r;
        }
    snprintf(r.s, sizeof r.s, "%.0f%s%s", x, plain[0] ? " " : "", plain);
    return r;
}

/* Parameters and other counts: B = 1e9, M = 1e6, k = 1e3; below 10000 as they are. */
static Num fcount(double x)
{
    static const double S[] = { 1e9, 1e6, 1e3 };
    static const char *const U[] = { "B", "M", "k" };
    if (fabs(x) >= 1e4) return scaled(x, S, U, 3, "");
    Num r;
    snprintf(r.s, sizeof r.s, x == floor(x) ? "%.0f" : "%.3f", x);
    return r;
}

static Num fflops(double x)
{
    static const double S[] = { 1e12, 1e9, 1e6, 1e3 };
    static const char *const U[] = { "TFLOP", "GFLOP", "MFLOP", "kFLOP" };
    return scaled(x, S, U, 4, "FLOP");
}

/* Memory: binary units (HBM sizes are GiB). */
static Num fmem(double x)
{
    static const double S[] = { GIB, 1048576.0, 1024.0 };
    static const char *const U[] = { "GiB", "MiB", "KiB" };
    return scaled(x, S, U, 3, "bytes");
}

/* Traffic: decimal units (bandwidths are GB/s). */
static Num fnet(double x)
{
    static const double S[] = { 1e9, 1e6, 1e3 };
    static const char *const U[] = { "GB", "MB", "kB" };
    return scaled(x, S, U, 3, "bytes");
}

static Num ftime(double x)
{
    static const double S[] = { 1.0, 1e-3, 1e-6, 1e-9 };
    static const char *const U[] = { "s", "ms", "us", "ns" };
    if (x == 0.0) {
        Num r = { "0 s" };
        return r;
    }
    return scaled(x, S, U, 4, "s");
}

static Num flayers(const PlanStage *st)
{
    Num r;
    if (st->n_layers == 0) snprintf(r.s, sizeof r.s, "none");
    else snprintf(r.s, sizeof r.s, "%d-%d", st->first_layer, st->first_layer + st->n_layers - 1);
    return r;
}

static int dense_layers(const Plan *p)
{
    int n = 0;
    for (int l = 0; l < p->cfg.model.num_hidden_layers; l++) n += !p->items[l].moe;
    return n;
}

static void text_header(const Plan *p, FILE *f)
{
    const Config *c = &p->cfg;
    const ClusterConfig *k = &c->cluster;
    const int L = c->model.num_hidden_layers, dense = dense_layers(p);
    fprintf(f, "dstrain plan: %s (%s attention, %d layers: %d dense + %d MoE, MTP depth %d)\n",
            c->train.name, c->model.attention, L, dense, L - dense, c->model.num_nextn_predict_layers);
    fprintf(f, "cluster: %d nodes x %d GPUs; per GPU: BF16 %g TFLOP/s, FP8 %g TFLOP/s, HBM %s, "
            "NVLink %g GB/s (%g us), IB %g GB/s (%g us); assumed MFU %.1f%%\n",
            k->nodes, k->gpus_per_node, k->peak_tflops_bf16, k->peak_tflops_fp8,
            fmem(p->hbm_bytes).s, k->nvlink_gbps, k->nvlink_latency_us, k->ib_gbps,
            k->ib_latency_us, 100.0 * k->mfu);
    fprintf(f, "layout: pp %d x dp %d = %d GPUs, ep %d, schedule %s (%d stages), precision %s\n",
            c->parallel.pp, c->parallel.dp, p->world, c->parallel.ep,
            plan_schedule_name(p->schedule), p->n_stages, c->train.precision);
    fprintf(f, "batch: %d micro-batches x %d x %d tokens per DP rank = %s tokens per step\n\n",
            c->train.grad_accum, c->train.micro_batch_size, c->train.seq_len,
            fcount(p->pipe.tokens_per_step).s);
}

static void text_params(const Plan *p, FILE *f)
{
    const PlanParams *q = &p->params;
    static const ParamRole ORDER[] = { ROLE_EMBED, ROLE_HEAD, ROLE_ATTN, ROLE_NORM, ROLE_DENSE_FFN,
                                       ROLE_SHARED_EXPERT, ROLE_ROUTED_EXPERT, ROLE_ROUTER, ROLE_MTP_PROJ };
    fprintf(f, "parameters (from the parameter table)   %14s %18s\n", "total", "activated/token");
    for (size_t i = 0; i < sizeof ORDER / sizeof ORDER[0]; i++) {
        ParamRole r = ORDER[i];
        if (r == ROLE_MTP_PROJ) continue;   /* only MTP modules have it: in their line */
        fprintf(f, "  %-37s %14s %18s\n", params_role_name(r), fcount((double)q->role[r]).s,
                fcount((double)q->role_active[r]).s);
    }
    fprintf(f, "  %-37s %14s %18s\n", "main model", fcount((double)q->total).s, fcount((double)q->active).s);
    fprintf(f, "  %-37s %14s %18s\n", "  without the embedding lookup", "",
            fcount((double)q->active_no_embedding).s);
    fprintf(f, "  %-37s %14s %18s\n", "mtp modules (shared embedding, head)", fcount((double)q->mtp).s,
            fcount((double)q->mtp_active).s);
    fprintf(f, "  %-37s %14s %18s\n\n", "total with mtp", fcount((double)q->total_with_mtp).s,
            fcount((double)q->active_with_mtp).s);
}

static void text_flops(const Plan *p, FILE *f)
{
    const PlanFlops *x = &p->flops;
    const ModelConfig *m = &p->cfg.model;
    fprintf(f, "flops per token at seq_len %d (model/flops.h)  %14s %16s\n", p->cfg.train.seq_len,
            "forward", "training (3x)");
    fprintf(f, "  %-44s %14s\n", "matmul, activated, without embedding", fflops(x->matmul).s);
    fprintf(f, "  causal attention core, %2d x %-18s %14s\n", m->num_hidden_layers,
            fflops(x->attention_layer).s, fflops(x->attention).s);
    fprintf(f, "  %-44s %14s %16s\n", "main model", fflops(x->forward).s, fflops(x->training).s);
    fprintf(f, "  %-44s %14s\n", "mtp modules (with their head pass)", fflops(x->forward_with_mtp - x->forward).s);
    fprintf(f, "  %-44s %14s %16s\n", "with mtp", fflops(x->forward_with_mtp).s,
            fflops(x->training_with_mtp).s);
    fprintf(f, "kv cache for inference, BF16: %s per token (%s per layer), %s per %d-token sequence\n\n",
            fmem(p->kv.bytes_per_token).s, fmem(p->kv.bytes_per_token_layer).s,
            fmem(p->kv.bytes_per_sequence).s, p->cfg.train.seq_len);
}

static void text_stages(const Plan *p, FILE *f)
{
    fprintf(f, "pipeline stages (%d; per micro-batch of %s tokens; a2a = MoE all-to-all)\n", p->n_stages,
            fcount(p->comm.tokens).s);
    fprintf(f, "  %5s %-7s %3s %11s %13s %11s %11s %11s %11s %11s %11s %11s\n", "stage", "layers", "mtp",
            "params", "fwd/token", "F", "B", "W", "a2a F", "a2a B", "F&B", "activations");
    for (int s = 0; s < p->n_stages; s++) {
        const PlanStage *st = &p->stages[s];
        fprintf(f, "  %5d %-7s %3d %11s %13s %11s %11s %11s %11s %11s %11s %11s\n", s, flayers(st).s,
                st->n_mtp, fcount((double)st->params).s, fflops(st->fwd_flops).s, ftime(st->f_s).s,
                ftime(st->b_s).s, ftime(st->w_s).s, ftime(st->a2a_fwd_s).s, ftime(st->a2a_bwd_s).s,
                ftime(st->fb_s).s, fmem(st->act_bytes).s);
    }
    fprintf(f, "\n");
}

static void text_memory(const Plan *p, FILE *f)
{
    fprintf(f, "memory per GPU by pp rank (its dp ranks alike; HBM %s)\n", fmem(p->hbm_bytes).s);
    fprintf(f, "  %4s %-7s %11s %11s %11s %11s %11s %9s %11s %11s %11s\n", "rank", "stages", "params",
            "weights", "gradients", "optimizer", "act/chunk", "in flight", "activations", "workspace",
            "total");
    for (int r = 0; r < p->n_ranks; r++) {
        const PlanRank *k = &p->ranks[r];
        char stages[24];
        if (k->n_chunks == 2) snprintf(stages, sizeof stages, "%d,%d", k->chunk[0], k->chunk[1]);
        else snprintf(stages, sizeof stages, "%d%s", k->chunk[0], k->embedding_copy ? "+emb" : "");
        fprintf(f, "  %4d %-7s %11s %11s %11s %11s %11s %9.1f %11s %11s %11s\n", r, stages,
                fcount(k->params).s, fmem(k->weight_bytes).s, fmem(k->grad_bytes).s,
                fmem(k->optim_bytes).s, fmem(k->act_chunk_bytes).s, k->in_flight, fmem(k->act_bytes).s,
                fmem(k->workspace_bytes).s, fmem(k->total_bytes).s);
    }
    fprintf(f, "  peak: pp rank %d, %s of %s\n", p->peak_rank, fmem(p->peak_rank_bytes).s,
            fmem(p->hbm_bytes).s);
    if (p->comm.moe)
        fprintf(f, "  expert-row pool: %s per MoE layer and micro-batch = %g x the mean rows ('moe.capacity_factor' "
                "= %g; at most ep = %d x, the worst case)\n", fmem(p->pool_layer_bytes).s, p->pool_factor,
                p->cfg.moe.capacity_factor, p->cfg.parallel.ep);
    if (p->build_act_bytes >= 0)
        fprintf(f, "  train's start-up table (this build, FP32 containers, train.recompute = %s): activations "
                "%.0f bytes, backward scratch %.0f bytes\n", p->cfg.train.recompute ? "true" : "false",
                p->build_act_bytes, p->build_scratch_bytes);
    fprintf(f, "\n");
}

static void text_comm(const Plan *p, FILE *f)
{
    const PlanComm *m = &p->comm;
    if (!m->moe) {
        fprintf(f, "moe all-to-all: none (no MoE layer)\n");
    } else {
        fprintf(f, "moe all-to-all per layer per micro-batch (%s tokens per GPU)\n", fcount(m->tokens).s);
        fprintf(f, "  ep group: %d GPUs = %d nodes x %d; a token reaches %d nodes ('moe.max_nodes' = %d), "
                "%.3f GPUs in each\n", p->cfg.parallel.ep, m->ep_nodes, m->ep_gpus_per_node,
                m->reach_nodes, p->cfg.moe.max_nodes, m->gpus_per_reached_node);
        fprintf(f, "  copies per token leaving the GPU: %.3f over IB, %.3f over NVLink\n", m->copies_ib,
                m->copies_nvlink);
        fprintf(f, "  dispatch (%s a copy): IB %s, NVLink %s, %s\n", fnet(m->dispatch_copy_bytes).s,
                fnet(m->dispatch_ib_bytes).s, fnet(m->dispatch_nvlink_bytes).s, ftime(m->dispatch_s).s);
        fprintf(f, "  combine  (%s a copy): IB %s, NVLink %s, %s\n", fnet(m->combine_copy_bytes).s,
                fnet(m->combine_ib_bytes).s, fnet(m->combine_nvlink_bytes).s, ftime(m->combine_s).s);
        fprintf(f, "  backward (both, combine format): IB %s, NVLink %s, %s\n", fnet(m->backward_ib_bytes).s,
                fnet(m->backward_nvlink_bytes).s, ftime(m->backward_s).s);
        fprintf(f, "  compute of one MoE layer: forward %s, backward %s\n", ftime(m->layer_fwd_s).s,
                ftime(m->layer_bwd_s).s);
        if (m->combine_s > 0)
            fprintf(f, "  computation / communication: forward %.3f, backward %.3f\n", m->ratio_fwd, m->ratio_bwd);
        else
            fprintf(f, "  computation / communication: no traffic (ep = 1)\n");
    }
    if (m->p2p_bytes > 0)
        fprintf(f, "pp send per micro-batch per stage boundary: %s over %s, %s (delays each receive "
                "in the simulated schedule)\n",
                fnet(m->p2p_bytes).s, m->p2p_ib ? "IB" : "NVLink", ftime(m->p2p_s).s);
    fprintf(f, "dp sync per step over %s (ZeRO-1): reduce-scatter %s, %s; all-gather %s, %s\n\n",
            m->dp_ib ? "IB" : "NVLink", fnet(m->dp_rs_bytes).s, ftime(m->dp_rs_s).s,
            fnet(m->dp_ag_bytes).s, ftime(m->dp_ag_s).s);
}

static void text_pipeline(const Plan *p, FILE *f)
{
    const PlanPipe *q = &p->pipe;
    fprintf(f, "pipeline (%s, %d stages, %d micro-batches; simulated: the busiest rank, exposed all-to-all "
            "included)\n",
            plan_schedule_name(p->schedule), q->stages, q->micro_batches);
    fprintf(f, "  F %s, B %s, W %s, F&B %s\n", ftime(q->f_s).s, ftime(q->b_s).s, ftime(q->w_s).s,
            ftime(q->fb_s).s);
    fprintf(f, "  bubble %s = %.2f%% of the step; step %s (pipeline %s + exposed dp sync %s)\n",
            ftime(q->bubble_s).s, 100.0 * q->bubble_share, ftime(q->step_s).s, ftime(q->pipeline_s).s,
            ftime(q->dp_exposed_s).s);
    fprintf(f, "  %.1f tokens/s/GPU; %s GPU-hours per trillion tokens\n", q->tokens_per_s_per_gpu,
            fcount(q->gpu_hours_per_trillion).s);
    fprintf(f, "  achieved model FLOPs: %.1f TFLOP/s per GPU = %.2f%% MFU against the BF16 peak\n\n",
            q->model_tflops_per_gpu, 100.0 * q->mfu_bf16);
}

static void text_schedules(const Plan *p, FILE *f)
{
    fprintf(f, "schedules (same model, layout and cluster)\n");
    fprintf(f, "  %-10s %11s %8s %11s %13s %14s %11s\n", "schedule", "bubble", "share", "step",
            "tokens/s/GPU", "GPU-hours/T", "peak memory");
    for (int s = 0; s < PLAN_SCHED_COUNT; s++) {
        const PlanRow *r = &p->rows[s];
        const char *mark = (PlanSchedule)s == p->schedule ? " (configured)" : "";
        if (!r->valid) {
            fprintf(f, "  %-10s cannot run: %s%s\n", plan_schedule_name((PlanSchedule)s), r->problem, mark);
            continue;
        }
        fprintf(f, "  %-10s %11s %7.2f%% %11s %13.1f %14s %11s%s%s\n", plan_schedule_name((PlanSchedule)s),
                ftime(r->bubble_s).s, 100.0 * r->bubble_share, ftime(r->step_s).s, r->tokens_per_s_per_gpu,
                fcount(r->gpu_hours_per_trillion).s, fmem(r->peak_rank_bytes).s,
                r->fits ? "" : " over HBM", mark);
    }
    fprintf(f, "\n");
}

void plan_print_text(const Plan *p, FILE *f)
{
    text_header(p, f);
    text_params(p, f);
    text_flops(p, f);
    text_stages(p, f);
    text_memory(p, f);
    text_comm(p, f);
    text_pipeline(p, f);
    text_schedules(p, f);
    for (int i = 0; i < p->n_problems; i++)
        fprintf(f, "%s: %s\n", p->problem_error[i] ? "error" : "note", p->problem[i]);
    if (p->n_errors) fprintf(f, "verdict: this layout cannot run (%d errors)\n", p->n_errors);
    else fprintf(f, "verdict: this layout can run\n");
}

/* ---- JSON ---- */

static void jnum(json_t *o, const char *key, double v)
{
    CHECK(isfinite(v));
    json_object_set_new(o, key, json_real(v));
}

static void jint(json_t *o, const char *key, long long v) { json_object_set_new(o, key, json_integer(v)); }
static void jstr(json_t *o, const char *key, const char *v) { json_object_set_new(o, key, json_string(v)); }
static void jbool(json_t *o, const char *key, int v) { json_object_set_new(o, key, json_boolean(v)); }

static json_t *json_config(const Plan *p)
{
    const Config *c = &p->cfg;
    const ClusterConfig *k = &c->cluster;
    json_t *o = json_object(), *m = json_object(), *l = json_object(), *u = json_object();
    const int L = c->model.num_hidden_layers, dense = dense_layers(p);
    jstr(m, "name", c->train.name);
    jstr(m, "attention", c->model.attention);
    jint(m, "num_hidden_layers", L);
    jint(m, "dense_layers", dense);
    jint(m, "moe_layers", L - dense);
    jint(m, "mtp_depth", c->model.num_nextn_predict_layers);
    json_object_set_new(o, "model", m);
    jint(l, "pp", c->parallel.pp);
    jint(l, "dp", c->parallel.dp);
    jint(l, "ep", c->parallel.ep);
    jint(l, "world", p->world);
    jstr(l, "schedule", plan_schedule_name(p->schedule));
    jint(l, "stages", p->n_stages);
    jint(l, "micro_batches", c->train.grad_accum);
    jint(l, "micro_batch_size", c->train.micro_batch_size);
    jint(l, "seq_len", c->train.seq_len);
    jnum(l, "tokens_per_step", p->pipe.tokens_per_step);
    jstr(l, "precision", c->train.precision);
    json_object_set_new(o, "layout", l);
    jint(u, "gpus_per_node", k->gpus_per_node);
    jint(u, "nodes", k->nodes);
    jint(u, "gpus", p->cluster_gpus);
    jnum(u, "peak_flops_bf16", k->peak_tflops_bf16 * 1e12);
    jnum(u, "peak_flops_fp8", k->peak_tflops_fp8 * 1e12);
    jnum(u, "hbm_bytes", p->hbm_bytes);
    jnum(u, "nvlink_bytes_per_s", k->nvlink_gbps * 1e9);
    jnum(u, "ib_bytes_per_s", k->ib_gbps * 1e9);
    jnum(u, "nvlink_latency_s", k->nvlink_latency_us * 1e-6);
    jnum(u, "ib_latency_s", k->ib_latency_us * 1e-6);
    jnum(u, "mfu", k->mfu);
    json_object_set_new(o, "cluster", u);
    return o;
}

static json_t *json_params(const Plan *p)
{
    const PlanParams *q = &p->params;
    json_t *o = json_object(), *roles = json_object(), *mtp = json_object();
    for (int r = 0; r < ROLE_COUNT; r++) {
        if (r == ROLE_MTP_PROJ) continue;
        json_t *x = json_object();
        jint(x, "total", q->role[r]);
        jint(x, "activated", q->role_active[r]);
        json_object_set_new(roles, params_role_name((ParamRole)r), x);
    }
    json_object_set_new(o, "by_role", roles);
    jint(o, "total", q->total);
    jint(o, "activated", q->active);
    jint(o, "activated_without_embedding", q->active_no_embedding);
    jint(mtp, "total", q->mtp);
    jint(mtp, "activated", q->mtp_active);
    json_object_set_new(o, "mtp", mtp);
    jint(o, "total_with_mtp", q->total_with_mtp);
    jint(o, "activated_with_mtp", q->active_with_mtp);
    return o;
}

static json_t *json_flops(const Plan *p)
{
    const PlanFlops *x = &p->flops;
    json_t *o = json_object();
    jnum(o, "matmul_forward", x->matmul);
    jnum(o, "attention_forward_per_layer", x->attention_layer);
    jnum(o, "attention_forward", x->attention);
    jnum(o, "forward", x->forward);
    jnum(o, "training", x->training);
    jnum(o, "mtp_matmul_forward", x->matmul_mtp);
    jnum(o, "mtp_attention_forward", x->attention_mtp);
    jnum(o, "mtp_forward", x->forward_with_mtp - x->forward);
    jnum(o, "forward_with_mtp", x->forward_with_mtp);
    jnum(o, "training_with_mtp", x->training_with_mtp);
    return o;
}

static json_t *json_stages(const Plan *p)
{
    json_t *a = json_array();
    for (int s = 0; s < p->n_stages; s++) {
        const PlanStage *st = &p->stages[s];
        json_t *o = json_object();
        jint(o, "stage", s);
        jint(o, "first_layer", st->first_layer);
        jint(o, "last_layer", st->first_layer + st->n_layers - 1);
        jint(o, "layers", st->n_layers);
        jint(o, "mtp_modules", st->n_mtp);
        jint(o, "moe_blocks", st->n_moe);
        jbool(o, "embedding", st->embedding);
        jbool(o, "head", st->head);
        jint(o, "params", st->params);
        jnum(o, "forward_flops_per_token", st->fwd_flops);
        jnum(o, "f_s", st->f_s);
        jnum(o, "b_s", st->b_s);
        jnum(o, "w_s", st->w_s);
        jnum(o, "a2a_forward_s", st->a2a_fwd_s);
        jnum(o, "a2a_backward_s", st->a2a_bwd_s);
        jnum(o, "fb_s", st->fb_s);
        jnum(o, "activation_bytes_per_micro_batch", st->act_bytes);
        json_array_append_new(a, o);
    }
    return a;
}

static json_t *json_memory(const Plan *p)
{
    json_t *o = json_object(), *a = json_array();
    for (int r = 0; r < p->n_ranks; r++) {
        const PlanRank *k = &p->ranks[r];
        json_t *x = json_object(), *ch = json_array();
        jint(x, "pp_rank", r);
        for (int i = 0; i < k->n_chunks; i++) json_array_append_new(ch, json_integer(k->chunk[i]));
        json_object_set_new(x, "stages", ch);
        jbool(x, "embedding_copy", k->embedding_copy);
        jnum(x, "params", k->params);
        jnum(x, "weight_bytes", k->weight_bytes);
        jnum(x, "gradient_bytes", k->grad_bytes);
        jnum(x, "optimizer_bytes", k->optim_bytes);
        jnum(x, "activation_bytes_per_chunk", k->act_chunk_bytes);
        jnum(x, "chunks_in_flight", k->in_flight);
        jnum(x, "activation_bytes", k->act_bytes);
        jnum(x, "workspace_bytes", k->workspace_bytes);
        jnum(x, "total_bytes", k->total_bytes);
        json_array_append_new(a, x);
    }
    json_object_set_new(o, "ranks", a);
    jint(o, "peak_pp_rank", p->peak_rank);
    jnum(o, "peak_bytes", p->peak_rank_bytes);
    jnum(o, "hbm_bytes", p->hbm_bytes);
    jbool(o, "recompute", p->cfg.train.recompute);
    if (p->build_act_bytes >= 0) {
        jnum(o, "train_activation_bytes", p->build_act_bytes);
        jnum(o, "train_scratch_bytes", p->build_scratch_bytes);
    }
    jbool(o, "fits", p->peak_rank_bytes <= p->hbm_bytes);
    jnum(o, "expert_pool_factor", p->pool_factor);
    jnum(o, "expert_pool_bytes_per_layer", p->pool_layer_bytes);
    return o;
}

static json_t *json_comm(const Plan *p)
{
    const PlanComm *m = &p->comm;
    json_t *o = json_object();
    jbool(o, "moe", m->moe);
    jnum(o, "tokens_per_micro_batch", m->tokens);
    jint(o, "ep_nodes", m->ep_nodes);
    jint(o, "ep_gpus_per_node", m->ep_gpus_per_node);
    jint(o, "max_nodes", p->cfg.moe.max_nodes);
    jint(o, "reached_nodes", m->reach_nodes);
    jnum(o, "gpus_per_reached_node", m->gpus_per_reached_node);
    jnum(o, "copies_ib_per_token", m->copies_ib);
    jnum(o, "copies_nvlink_per_token", m->copies_nvlink);
    jnum(o, "dispatch_bytes_per_copy", m->dispatch_copy_bytes);
    jnum(o, "dispatch_ib_bytes", m->dispatch_ib_bytes);
    jnum(o, "dispatch_nvlink_bytes", m->dispatch_nvlink_bytes);
    jnum(o, "dispatch_s", m->dispatch_s);
    jnum(o, "combine_bytes_per_copy", m->combine_copy_bytes);
    jnum(o, "combine_ib_bytes", m->combine_ib_bytes);
    jnum(o, "combine_nvlink_bytes", m->combine_nvlink_bytes);
    jnum(o, "combine_s", m->combine_s);
    jnum(o, "backward_ib_bytes", m->backward_ib_bytes);
    jnum(o, "backward_nvlink_bytes", m->backward_nvlink_bytes);
    jnum(o, "backward_s", m->backward_s);
    jnum(o, "layer_forward_s", m->layer_fwd_s);
    jnum(o, "layer_backward_s", m->layer_bwd_s);
    if (m->combine_s > 0) {
        jnum(o, "compute_to_comm_forward", m->ratio_fwd);
        jnum(o, "compute_to_comm_backward", m->ratio_bwd);
    } else {
        json_object_set_new(o, "compute_to_comm_forward", json_null());
        json_object_set_new(o, "compute_to_comm_backward", json_null());
    }
    jstr(o, "pp_link", m->p2p_ib ? "ib" : "nvlink");
    jnum(o, "pp_bytes_per_micro_batch", m->p2p_bytes);
    jnum(o, "pp_s", m->p2p_s);
    jstr(o, "dp_link", m->dp_ib ? "ib" : "nvlink");
    jnum(o, "dp_reduce_scatter_bytes", m->dp_rs_bytes);
    jnum(o, "dp_reduce_scatter_s", m->dp_rs_s);
    jnum(o, "dp_all_gather_bytes", m->dp_ag_bytes);
    jnum(o, "dp_all_gather_s", m->dp_ag_s);
    return o;
}

static json_t *json_pipeline(const Plan *p)
{
    const PlanPipe *q = &p->pipe;
    json_t *o = json_object(), *rows = json_array();
    jstr(o, "schedule", plan_schedule_name(p->schedule));
    jint(o, "stages", q->stages);
    jint(o, "micro_batches", q->micro_batches);
    jnum(o, "f_s", q->f_s);
    jnum(o, "b_s", q->b_s);
    jnum(o, "w_s", q->w_s);
    jnum(o, "fb_s", q->fb_s);
    jnum(o, "bubble_s", q->bubble_s);
    jnum(o, "bubble_share", q->bubble_share);
    jnum(o, "pipeline_s", q->pipeline_s);
    jnum(o, "dp_sync_exposed_s", q->dp_exposed_s);
    jnum(o, "step_s", q->step_s);
    jnum(o, "tokens_per_s_per_gpu", q->tokens_per_s_per_gpu);
    jnum(o, "gpu_hours_per_trillion_tokens", q->gpu_hours_per_trillion);
    jnum(o, "model_flops_per_s_per_gpu", q->model_tflops_per_gpu * 1e12);
    jnum(o, "mfu_bf16", q->mfu_bf16);
    for (int s = 0; s < PLAN_SCHED_COUNT; s++) {
        const PlanRow *r = &p->rows[s];
        json_t *x = json_object();
        jstr(x, "schedule", plan_schedule_name((PlanSchedule)s));
        jbool(x, "configured", (PlanSchedule)s == p->schedule);
        jbool(x, "valid", r->valid);
        json_object_set_new(x, "problem", r->valid ? json_null() : json_string(r->problem));
        jnum(x, "bubble_s", r->bubble_s);
        jnum(x, "bubble_share", r->bubble_share);
        jnum(x, "step_s", r->step_s);
        jnum(x, "tokens_per_s_per_gpu", r->tokens_per_s_per_gpu);
        jnum(x, "gpu_hours_per_trillion_tokens", r->gpu_hours_per_trillion);
        jnum(x, "peak_memory_bytes", r->peak_rank_bytes);
        jbool(x, "fits", r->fits);
        json_array_append_new(rows, x);
    }
    json_object_set_new(o, "schedules", rows);
    return o;
}

void plan_print_json(const Plan *p, FILE *f)
{
    json_t *root = json_config(p), *kv = json_object(), *probs = json_array();
    json_object_set_new(root, "params", json_params(p));
    json_object_set_new(root, "flops_per_token", json_flops(p));
    jnum(kv, "bytes_per_token_per_layer", p->kv.bytes_per_token_layer);
    jnum(kv, "bytes_per_token", p->kv.bytes_per_token);
    jnum(kv, "bytes_per_sequence", p->kv.bytes_per_sequence);
    json_object_set_new(root, "kv_cache_bf16", kv);
    json_object_set_new(root, "stages", json_stages(p));
    json_object_set_new(root, "memory", json_memory(p));
    json_object_set_new(root, "communication", json_comm(p));
    json_object_set_new(root, "pipeline", json_pipeline(p));
    for (int i = 0; i < p->n_problems; i++) {
        json_t *x = json_object();
        jbool(x, "error", p->problem_error[i]);
        jstr(x, "message", p->problem[i]);
        json_array_append_new(probs, x);
    }
    json_object_set_new(root, "problems", probs);
    jbool(root, "ok", p->n_errors == 0);
    /* 15 significant digits: every double prints short (0.39, not 0.39000000000000001) and
     * still far finer than any figure deserves */
    if (json_dumpf(root, f, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15)) != 0)
        DIE("plan: cannot write the JSON report");
    fputc('\n', f);
    json_decref(root);
}
