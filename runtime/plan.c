/* runtime/plan.c - `dstrain plan CONFIG [--set ...] [--json]`: the command, the layout
 * checks, and the order in which the figures are computed (see plan.h).
 *
 * Not here: the figures themselves (plan_layout.c, plan_time.c, model/flops.c) or their
 * printing (plan_report.c).
 *
 * Errors: a bad file, key or value, or an invalid model/train/cluster setting, DIEs as for
 * train. The [parallel] layout is judged here instead, so that an impossible layout still
 * gets its report: every point that cannot work is listed (naming the key and the number that
 * breaks) in the report and on stderr, and the command exits 1; notes do not change the exit.
 */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "../model/flops.h"
#include "commands.h"
#include "common.h"
#include "plan.h"
#include "runtime/pipeline/schedule.h"

static const char *const SCHEDULE_NAMES[PLAN_SCHED_COUNT] = { "1f1b", "zb1p", "dualpipe", "dualpipev" };

const char *plan_schedule_name(PlanSchedule s) { return s < PLAN_SCHED_COUNT ? SCHEDULE_NAMES[s] : "?"; }

void plan_problem(Plan *p, int error, const char *fmt, ...)
{
    if (p->n_problems == PLAN_MAX_PROBLEMS) BUG("more than %d plan problems", PLAN_MAX_PROBLEMS);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->problem[p->n_problems], PLAN_MSG_MAX, fmt, ap);
    va_end(ap);
    p->problem_error[p->n_problems++] = error;
    p->n_errors += error;
}

/* Parameters from the table: main model by role, MTP modules as one line. Routed experts
 * count K/E of their size towards the activated figures (every layer has E equal experts,
 * so the division is exact); everything else counts fully, the router bias included. */
static void count_params(Plan *p, const ParamTable *t)
{
    const ModelConfig *m = &p->cfg.model;
    PlanParams *q = &p->params;
    const long long E = m->n_routed_experts, K = m->num_experts_per_tok;
    for (int r = 0; r < ROLE_COUNT; r++) {
        q->role[r] = (long long)params_count(t, (ParamRole)r, 0);
        q->role_active[r] = q->role[r];
    }
    CHECK(q->role[ROLE_ROUTED_EXPERT] % E == 0);
    q->role_active[ROLE_ROUTED_EXPERT] = q->role[ROLE_ROUTED_EXPERT] / E * K;
    q->total = (long long)params_count(t, ROLE_COUNT, 0);
    for (int r = 0; r < ROLE_COUNT; r++) q->active += q->role_active[r];
    q->active_no_embedding = q->active - q->role[ROLE_EMBED];
    q->mtp = (long long)params_count(t, ROLE_COUNT, 1);
    long long routed_mtp = (long long)params_count(t, ROLE_ROUTED_EXPERT, 1);
    CHECK(routed_mtp % E == 0);
    q->mtp_active = q->mtp - routed_mtp + routed_mtp / E * K;
    q->total_with_mtp = q->total + q->mtp;
    q->active_with_mtp = q->active + q->mtp_active;
}

static void count_flops(Plan *p, const ParamTable *t)
{
    const ModelConfig *m = &p->cfg.model;
    const int T = p->cfg.train.seq_len, D = m->num_nextn_predict_layers;
    PlanFlops *f = &p->flops;
    for (int i = 0; i < t->n; i++) {
        double x = flops_param_forward(&t->p[i], m);
        if (t->p[i].mtp) f->matmul_mtp += x;
        else f->matmul += x;
        if (t->p[i].role == ROLE_HEAD) f->matmul_mtp += D * x;
    }
    f->attention_layer = flops_attention_forward(m, T);
    f->attention = m->num_hidden_layers * f->attention_layer;
    f->attention_mtp = D * f->attention_layer;
    f->forward = flops_forward_table(t, m, T, 0);
    f->forward_with_mtp = flops_forward_table(t, m, T, 1);
    f->training = 3.0 * f->forward;
    f->training_with_mtp = 3.0 * f->forward_with_mtp;
}

/* BF16 KV cache of the main model's layers: MLA caches the normalised latent (Rkv) and the
 * shared rope key (Dr) per layer; GQA caches K and V, 2 * KV * head_dim. MTP modules are not
 * counted (inference without speculative decoding). */
static void count_kv(Plan *p)
{
    const ModelConfig *m = &p->cfg.model;
    const AttnDims a = flops_attn_dims(m);
    double elems = a.gqa ? 2.0 * a.kv_heads * a.head_dim : (double)m->kv_lora_rank + m->qk_rope_head_dim;
    p->kv.bytes_per_token_layer = 2.0 * elems;
    p->kv.bytes_per_token = p->kv.bytes_per_token_layer * m->num_hidden_layers;
    p->kv.bytes_per_sequence = p->kv.bytes_per_token * p->cfg.train.seq_len;
}

/* The schedule's own rules (runtime/pipeline/schedule.h, the ones train applies): parity,
 * micro-batch count, a layer per stage. */
static void check_schedule(Plan *p)
{
    const int pp = p->cfg.parallel.pp, C = p->cfg.train.grad_accum;
    char err[SCHED_ERR_MAX];
    if (sched_validate((SchedKind)p->schedule, pp, C, p->cfg.model.num_hidden_layers, err, sizeof err))
        plan_problem(p, 1, "%s", err);
    else if (C < pp)
        plan_problem(p, 0, "'train.grad_accum' = %d micro-batches < 'parallel.pp' = %d: the "
                     "pipeline never fills", C, pp);
}

/* Every point of the layout that cannot work is an error naming the key and the number. */
static void check_layout(Plan *p, const ParamTable *t)
{
    const Config *c = &p->cfg;
    const int pp = c->parallel.pp, dp = c->parallel.dp, ep = c->parallel.ep;
    const int gpn = c->cluster.gpus_per_node, E = c->model.n_routed_experts;
    const int moe = params_count(t, ROLE_ROUTED_EXPERT, -1) > 0;
    if (dp % ep)
        plan_problem(p, 1, "'parallel.ep' = %d does not divide 'parallel.dp' = %d (EP groups are "
                     "carved out of the DP ranks)", ep, dp);
    if (moe && E % ep)
        plan_problem(p, 1, "'parallel.ep' = %d does not divide 'model.n_routed_experts' = %d (each "
                     "EP rank holds the same number of experts)", ep, E);
    if (moe && ep > gpn && ep % gpn)
        plan_problem(p, 1, "'parallel.ep' = %d is not a multiple of 'cluster.gpus_per_node' = %d "
                     "(an EP group fills whole nodes or fits in one)", ep, gpn);
    check_schedule(p);
    if (p->world > p->cluster_gpus)
        plan_problem(p, 1, "'parallel.pp' * 'parallel.dp' = %d GPUs exceed the %d of the cluster "
                     "('cluster.gpus_per_node' = %d * 'cluster.nodes' = %d)",
                     p->world, p->cluster_gpus, gpn, c->cluster.nodes);
    else if (p->world < p->cluster_gpus)
        plan_problem(p, 0, "the layout uses %d of the cluster's %d GPUs", p->world, p->cluster_gpus);
    if (c->model.num_nextn_predict_layers > 0 && pp > 1 && (p->schedule == PLAN_1F1B || p->schedule == PLAN_ZB1P))
        plan_problem(p, 0, "MTP on the last stage keeps a copy of embed_tokens there (DualPipe "
                     "puts the first and last stage on one rank instead)");
}

static PlanSchedule schedule_of(const char *name)
{
    for (int s = 0; s < PLAN_SCHED_COUNT; s++)
        if (!strcmp(name, SCHEDULE_NAMES[s])) return (PlanSchedule)s;
    DIE("plan: unknown 'parallel.schedule' = '%s'; expected 1f1b, zb1p, dualpipe or dualpipev", name);
}

/* Every figure for one schedule; rows and the memory verdict are left to plan_compute. */
static void compute_one(Plan *p, const Config *c, const ParamTable *t)
{
    memset(p, 0, sizeof *p);
    p->cfg = *c;
    p->schedule = schedule_of(c->parallel.schedule);
    p->world = c->parallel.pp * c->parallel.dp;
    p->cluster_gpus = c->cluster.gpus_per_node * c->cluster.nodes;
    count_params(p, t);
    count_flops(p, t);
    count_kv(p);
    check_layout(p, t);
    plan_build_items(p, t);
    plan_split_stages(p);
    plan_memory(p);
    plan_comm(p);
    plan_pipeline(p);
}

void plan_compute(Plan *p, const Config *c)
{
    ParamTable t;
    params_build(&t, &c->model);
    PlanRow rows[PLAN_SCHED_COUNT];
    memset(rows, 0, sizeof rows);
    Plan *q = xcalloc(1, sizeof *q);
    for (int s = 0; s < PLAN_SCHED_COUNT; s++) {
        Config qc = *c;
        snprintf(qc.parallel.schedule, sizeof qc.parallel.schedule, "%s", SCHEDULE_NAMES[s]);
        compute_one(q, &qc, &t);
        PlanRow *r = &rows[s];
        int first = 0;
        while (first < q->n_problems && !q->problem_error[first]) first++;
        r->valid = q->n_errors == 0;
        if (!r->valid) snprintf(r->problem, sizeof r->problem, "%s", q->problem[first]);
        r->bubble_s = q->pipe.bubble_s;
        r->step_s = q->pipe.step_s;
        r->bubble_share = q->pipe.bubble_share;
        r->tokens_per_s_per_gpu = q->pipe.tokens_per_s_per_gpu;
        r->gpu_hours_per_trillion = q->pipe.gpu_hours_per_trillion;
        r->peak_rank_bytes = q->peak_rank_bytes;
        r->fits = q->peak_rank_bytes <= q->hbm_bytes;
        plan_free(q);
    }
    free(q);
    compute_one(p, c, &t);
    memcpy(p->rows, rows, sizeof rows);
    if (p->peak_rank_bytes > p->hbm_bytes) {
        const PlanRank *r = &p->ranks[p->peak_rank];
        const double G = 1073741824.0;
        plan_problem(p, 1, "pp rank %d needs %.4g GiB per GPU > 'cluster.hbm_gib' = %g (weights "
                     "%.4g, gradients %.4g, optimizer %.4g, activations %.4g, workspace %.4g GiB); "
                     "raise 'parallel.pp' or 'parallel.dp', or lower 'train.micro_batch_size'%s",
                     p->peak_rank, r->total_bytes / G, p->cfg.cluster.hbm_gib, r->weight_bytes / G,
                     r->grad_bytes / G, r->optim_bytes / G, r->act_bytes / G, r->workspace_bytes / G,
                     p->cfg.train.recompute ? "" : ", or set 'train.recompute = true'");
    }
    params_free(&t);
}

void plan_free(Plan *p)
{
    free(p->items);
    free(p->stages);
    free(p->ranks);
    p->items = NULL;
    p->stages = NULL;
    p->ranks = NULL;
}

static int timeline_cols(const char *v)
{
    char *end;
    long n = strtol(v, &end, 10);
    if (*v == '\0' || *end || n < 20 || n > 1000)
        DIE("plan: '--timeline=%s' wants a width of 20 to 1000 columns", v);
    return (int)n;
}

static void usage(FILE *f)
{
    fprintf(f,
        "usage: dstrain plan CONFIG [--set section.key=value ...] [--json | --timeline[=COLS]]\n"
        "\n"
        "What a run of CONFIG will cost, before it starts: parameters (total, activated per\n"
        "token, per role, per pipeline stage and per rank), FLOPs per token, the BF16 KV cache\n"
        "per token, memory per GPU (activations as 'train.recompute' sets them; at pp 1 also the\n"
        "activation bytes train's start-up table will print), MoE all-to-all traffic and time\n"
        "over NVLink and InfiniBand, and the pipeline (F, B, W, F&B, bubble, step time,\n"
        "tokens/s/GPU, GPU-hours per trillion tokens) for the [parallel] layout on the [cluster]\n"
        "machine at its assumed 'cluster.mfu'; the headline figures are also given under each\n"
        "schedule (1f1b, zb1p, dualpipe, dualpipev). Nothing is allocated or run. README section\n"
        "\"dstrain plan\" has the formulas.\n"
        "\n"
        "options:\n"
        "  --set section.key=value   override a config key (repeatable), as for train\n"
        "  --json                    print one JSON object instead of the text report\n"
        "  --timeline[=COLS]         after the text report, draw the simulated schedule per rank\n"
        "                            as ASCII, COLS columns wide (default 100, 20 to 1000)\n"
        "  --help                    this text\n"
        "\n"
        "exit status: 0 when the layout can run; 1 when it cannot (each reason is printed in the\n"
        "report and on stderr, naming the key and the number that breaks) or on a bad config.\n");
}

int cmd_plan(int argc, char **argv)
{
    const char *path = NULL;
    int json = 0, timeline = 0;
    Config c;
    config_defaults(&c);
    /* Overrides apply after the file, in order: collect them first. */
    const char **sets = xcalloc((size_t)argc, sizeof *sets);
    int n_sets = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            usage(stdout);
            free(sets);
            return 0;
        }
        if (!strcmp(arg, "--json")) json = 1;
        else if (!strcmp(arg, "--timeline")) timeline = 100;
        else if (!strncmp(arg, "--timeline=", 11)) timeline = timeline_cols(arg + 11);
        else if (!strncmp(arg, "--set=", 6)) sets[n_sets++] = arg + 6;
        else if (!strcmp(arg, "--set")) {
            if (i + 1 == argc) DIE("plan: option '--set' needs section.key=value; see dstrain plan --help");
            sets[n_sets++] = argv[++i];
        } else if (arg[0] == '-') {
            DIE("plan: unknown option '%s'; see dstrain plan --help", arg);
        } else if (path) {
            DIE("plan: one CONFIG expected, got '%s' and '%s'", path, arg);
        } else {
            path = arg;
        }
    }
    if (!path) DIE("plan: missing CONFIG; usage: dstrain plan CONFIG [--set ...] [--json | --timeline]");
    if (json && timeline) DIE("plan: '--timeline' draws text; it does not go with '--json'");
    config_load(&c, path);
    for (int i = 0; i < n_sets; i++) config_set(&c, sets[i]);
    free(sets);
    char fit_note[512];
    if (config_fit_pipeline(&c, fit_note, sizeof fit_note) && !json) printf("%s\n\n", fit_note);
    /* The model, train and cluster keys must be valid as for train; the layout is the plan's
     * to judge (with its report), so validate with a trivial one. */
    Config trivial = c;
    trivial.parallel.pp = trivial.parallel.dp = trivial.parallel.ep = 1;
    snprintf(trivial.parallel.schedule, sizeof trivial.parallel.schedule, "1f1b");
    config_validate(&trivial);

    Plan *p = xcalloc(1, sizeof *p);
    plan_compute(p, &c);
    if (json) plan_print_json(p, stdout);
    else plan_print_text(p, stdout);
    if (timeline) plan_print_timeline(p, timeline, stdout);
    fflush(stdout);
    for (int i = 0; i < p->n_problems; i++)
        if (p->problem_error[i]) fprintf(stderr, "dstrain: plan: %s\n", p->problem[i]);
    int status = p->n_errors ? 1 : 0;
    plan_free(p);
    free(p);
    return status;
}
