/* runtime/train_pp.c - the pipeline-parallel training step, validation and checkpoint state
 * (runtime/train_pp.h). Not here: the loop, metrics and checkpoint writing (train.c), the
 * schedule (runtime/pipeline/schedule.c), running it (runtime/pipeline/executor.c).
 */
#include "runtime/train_pp.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "comm/p2p.h"
#include "model/stage.h"
#include "runtime/ckpt_shard.h"
#include "runtime/common.h"
#include "runtime/pipeline/executor.h"
#include "runtime/plan.h"
#include "runtime/pipeline/schedule.h"

/* A tensor this rank shares (runtime/train_pp.h "Ownership"): the chunks holding it here and
 * where, summed into pack[at, at + numel) and exchanged with the mirror rank. */
typedef struct Mirror {
    int n_loc;                  /* local holders: 1 or 2 chunks */
    int chunk[2];
    size_t off[2];              /* offsets in those chunks' flat tables */
    size_t numel, at;
} Mirror;

struct PpTrainer {
    Schedule sched;
    int *stage_lo;              /* [n_stages + 1] stage s runs main layers [stage_lo[s], stage_lo[s+1]) */
    ParamTable full;            /* the whole model's table: names and shapes only (ownership) */
    ParamTable own;             /* this rank's tensors, every chunk's, once: checkpoint staging */
    size_t *own_off[2];         /* [chunk][local entry]: its offset in own */
    Comm *world;                /* every rank of the job (checkpoints; not owned) */
    Model *stage[2];            /* [chunk]: each allocates only the tensors it holds */
    StageSpec spec[2];
    Shard shard[2];             /* [chunk]: regions, ZeRO-1 slices, optimizer shards (runtime/shard.h) */
    unsigned char *first_holder[2];     /* [chunk][local entry]: no earlier (rank, chunk) holds it */
    Comm *pair;                 /* this rank and its mirror rank (NULL: it shares nothing with another) */
    Mirror *mirror;             /* the tensors held twice, in global table order */
    int n_mirror;
    float *pack;                /* (the mirrored floats) host */
    size_t pack_n;
    PipeLink *link;
    PipeExec ex;
    int32_t **windows;          /* [C] (B, T+1) host */
    ModelLoss *losses;          /* [C] */
    float *counts, *counts_tmp; /* (n_moe, E) */
    struct ChunkPost { Trainer *t; int chunk; } post[2];    /* [chunk]: arm_expert_posts */
};

static int n_chunks(const Trainer *t) { return t->pp->sched.n_chunks; }

static void spec_of(const Trainer *t, int rank, int chunk, StageSpec *sp)
{
    const struct PpTrainer *p = t->pp;
    const int st = sched_stage_of(&p->sched, rank, chunk);
    sp->lo = p->stage_lo[st];
    sp->hi = p->stage_lo[st + 1];
    sp->first = sp->lo == 0;
    sp->last = sp->hi == t->cfg.model.num_hidden_layers;
    sp->n_slots = pipe_exec_slots(&p->sched, rank, chunk);
    sp->n_micro = p->sched.micro_batches;
    sp->capacity_factor = t->cfg.moe.capacity_factor;
}

/* The stages' layers: plan's split (runtime/plan.h: contiguous runs that balance the stages'
 * forward times, head and MTP counted on the last), so train runs the layout plan reports;
 * the even split if plan could not make one. */
static void split_layers(Trainer *t)
{
    struct PpTrainer *p = t->pp;
    const int S = p->sched.n_stages, L = t->cfg.model.num_hidden_layers;
    p->stage_lo = xcalloc((size_t)S + 1, sizeof(int));
    Plan plan;
    plan_compute(&plan, &t->cfg);
    int ok = plan.n_stages == S;
    for (int s = 0; ok && s < S; s++) {
        p->stage_lo[s] = plan.stages[s].first_layer;
        ok = plan.stages[s].n_layers >= 1 && (s == 0 || p->stage_lo[s] > p->stage_lo[s - 1]);
    }
    p->stage_lo[S] = L;
    ok = ok && p->stage_lo[0] == 0 && plan.stages[S - 1].first_layer + plan.stages[S - 1].n_layers == L;
    plan_free(&plan);
    for (int s = 0; !ok && s < S; s++) {
        StageSpec sp;
        stage_split(L, S, s, &sp);
        p->stage_lo[s] = sp.lo;
    }
}

/* Which of chunk c's tensors it is the first holder of (ranks, then chunks, in order): the
 * one that contributes the tensor to a checkpoint. */
static void plan_ownership(Trainer *t, int c)
{
    struct PpTrainer *p = t->pp;
    const ParamTable *pt = model_table(p->stage[c]);
    const int me = t->groups->stage;
    p->first_holder[c] = xcalloc((size_t)pt->n + 1, 1);
    for (int i = 0; i < pt->n; i++) {
        int first = 1;
        for (int r = 0; r <= me && first; r++)
            for (int k = 0; k < p->sched.n_chunks && (r < me || k < c); k++) {
                StageSpec sp;
                spec_of(t, r, k, &sp);
                if (stage_holds(&sp, &t->cfg.model, &pt->p[i])) first = 0;
            }
        p->first_holder[c][i] = (unsigned char)first;
    }
    shard_init(&p->shard[c], t->o, pt, t->groups, &t->cfg.optim, train_bf16_moments(&t->cfg.train));
}

/* Whether (rank, chunk) holds entry e of the whole table (its stage's tensors; the experts of
 * this rank's EP slice are checked by the caller). */
static int holds(Trainer *t, int rank, int chunk, const Param *e)
{
    StageSpec sp;
    spec_of(t, rank, chunk, &sp);
    return stage_holds(&sp, &t->cfg.model, e);
}

/* The tensors this rank holds twice (in two chunks, or here and on another PP rank: DualPipe's
 * mirror stages, the MTP embedding copy), and the pair communicator with the one other rank
 * sharing any (every schedule pairs ranks: DualPipe r with pp-1-r, 1F1B/ZB1P with MTP 0 with
 * pp-1). Collective over pp_comm. */
static void plan_mirrors(Trainer *t)
{
    struct PpTrainer *p = t->pp;
    const int me = t->groups->stage, pp = t->groups->pp, C = p->sched.n_chunks;
    int *loc[2] = { NULL, NULL }, partner = -1;
    for (int c = 0; c < C; c++) {
        const ParamTable *pt = model_table(p->stage[c]);
        loc[c] = xmalloc(((size_t)p->full.n + 1) * sizeof(int));
        for (int j = 0; j < p->full.n; j++) loc[c][j] = -1;
        for (int i = 0; i < pt->n; i++) loc[c][pt->p[i].index] = i;
    }
    p->mirror = xcalloc((size_t)p->full.n + 1, sizeof(Mirror));
    for (int j = 0; j < p->full.n; j++) {
        Mirror m = { 0 };
        for (int c = 0; c < C; c++) {
            if (loc[c][j] < 0) continue;
            const Param *e = &model_table(p->stage[c])->p[loc[c][j]];
            m.chunk[m.n_loc] = c;
            m.off[m.n_loc++] = e->offset;
            m.numel = e->numel;
        }
        if (m.n_loc == 0) continue;
        int shared = m.n_loc > 1;
        for (int r = 0; r < pp; r++)
            for (int k = 0; k < C && r != me; k++)
                if (holds(t, r, k, &p->full.p[j])) {
                    if (partner >= 0 && partner != r)
                        BUG("pp: rank %d shares tensors with ranks %d and %d (one mirror expected)", me, partner, r);
                    partner = r;
                    shared = 1;
                }
        if (!shared) continue;
        m.at = p->pack_n;
        p->pack_n += m.numel;
        p->mirror[p->n_mirror++] = m;
    }
    for (int c = 0; c < C; c++) free(loc[c]);
    p->pack = xcalloc(p->pack_n + 1, sizeof(float));
    /* every rank splits (collective); a rank without a mirror is alone in its colour */
    Comm *pair = comm_split(t->groups->pp_comm, partner < 0 ? me : (me < partner ? me : partner), me);
    if (pair->size > 1) {
        p->pair = pair;
    } else {
        comm_destroy(pair);
    }
}

typedef struct RankKeep {
    Trainer *t;
    int rank;
} RankKeep;

static int rank_keeps(const Param *e, void *arg)
{
    const RankKeep *k = arg;
    for (int c = 0; c < k->t->pp->sched.n_chunks; c++)
        if (holds(k->t, k->rank, c, e)) return 1;
    return 0;
}

/* The tensors PP rank `stage` holds in any chunk, of EP rank ep_rank's experts, once each. */
static void rank_table(Trainer *t, int stage, int ep_rank, ParamTable *out)
{
    const int E = t->cfg.model.n_routed_experts, ep = t->groups->ep;
    RankKeep k = { t, stage };
    params_select(out, &t->pp->full, ep > 1 ? ep_rank * (E / ep) : 0, ep > 1 ? E / ep : E, rank_keeps, &k);
}

/* own and each chunk entry's place in it. */
static void plan_own(Trainer *t)
{
    struct PpTrainer *p = t->pp;
    rank_table(t, t->groups->stage, t->groups->ep_rank, &p->own);
    int *at = xmalloc(((size_t)p->full.n + 1) * sizeof(int));
    for (int i = 0; i < p->own.n; i++) at[p->own.p[i].index] = i;
    for (int c = 0; c < p->sched.n_chunks; c++) {
        const ParamTable *pt = model_table(p->stage[c]);
        p->own_off[c] = xcalloc((size_t)pt->n + 1, sizeof(size_t));
        for (int i = 0; i < pt->n; i++) p->own_off[c][i] = p->own.p[at[pt->p[i].index]].offset;
    }
    free(at);
}

static int count_sends(const SchedList *l)
{
    int n = 0;
    for (int i = 0; i < l->n; i++) n += l->ins[i].op == SOP_SEND_F || l->ins[i].op == SOP_SEND_B;
    return n;
}

/* Floats PP rank `stage` holds of entry e in chunk c (0: not held; routed experts: one EP
 * rank's, E / ep of them). */
static size_t held_floats(Trainer *t, int stage, int c, const Param *e)
{
    const int E = t->cfg.model.n_routed_experts, ep = t->groups->ep;
    if (e->role == ROLE_ROUTED_EXPERT && e->expert >= E / ep) return 0;
    return holds(t, stage, c, e) ? e->numel : 0;
}

/* The memory this rank plans (runtime/shard.h shard_plan_memory's items, per chunk: its
 * stage's tensors, slots and ZeRO-1 slices; the checkpoint staging of its own table; the
 * pipeline's transfer buffers and the mirror pack), before any stage is allocated. */
static void plan_rank_memory(Trainer *t, const Groups *g)
{
    struct PpTrainer *p = t->pp;
    const TrainConfig *tc = &t->cfg.train;
    MemPlan *mp = &t->mem;
    const int C = p->sched.n_chunks, me = g->stage, edp = g->dp / g->ep;
    double f[8] = { 0 };    /* params, grads, acts, scratch, experts host, optimizer, zero-1 host, slice */
    double own = 0, mirrored = 0, biggest = 0, table = 0, io = 0;
    for (int c = 0; c < C; c++) {
        StageSpec sp;
        spec_of(t, me, c, &sp);
        ModelBytes mb;
        stage_plan_bytes(&t->cfg.model, t->o, tc->micro_batch_size, tc->seq_len,
                         pipe_exec_train_mode(&p->sched, me, c) | (tc->recompute ? MODEL_RECOMPUTE : 0), g->ep, &sp,
                         &mb);
        double repl = 0, expert = 0;
        for (int j = 0; j < p->full.n; j++) {
            const Param *e = &p->full.p[j];
            const double n = (double)held_floats(t, me, c, e);
            *(e->role == ROLE_ROUTED_EXPERT && g->ep > 1 ? &expert : &repl) += n;
        }
        const double sr = ceil(repl / g->dp), se = ceil(expert / edp);
        f[0] += (double)mb.params;
        f[1] += (double)mb.grads;
        f[2] += (double)mb.acts;
        f[3] += (double)mb.scratch;
        f[4] += (double)mb.experts_host;
        f[5] += 2.0 * (sr + se) * sizeof(float);
        if (g->dp > 1 && !t->o->host_memory) f[6] += (repl + sr) * sizeof(float);   /* shard.h: staging */
        if (edp > 1 && !t->o->host_memory) f[6] += (expert + se) * sizeof(float);
        f[7] += ((g->dp > 1 ? sr : 0) + (edp > 1 ? se : 0)) * sizeof(float);
        biggest = fmax(biggest, (double)mb.params);
        table += (double)mb.table;
        io = (double)tc->micro_batch_size * tc->seq_len * t->cfg.model.hidden_size * t->o->act_bytes;
    }
    for (int j = 0; j < p->full.n; j++) {   /* held once; held twice (here or on the mirror) */
        const Param *e = &p->full.p[j];
        size_t n = 0;
        int copies = 0;
        for (int c = 0; c < C; c++)
            if (held_floats(t, me, c, e)) {
                n = held_floats(t, me, c, e);
                copies++;
            }
        int twice = copies > 1;
        for (int r = 0; r < g->pp && n; r++)
            for (int c = 0; c < C; c++) twice |= r != me && holds(t, r, c, e);
        own += (double)n;
        mirrored += twice ? (double)n : 0;
    }
    memset(mp, 0, sizeof *mp);
    memplan_add(mp, "parameter table", table, 0);
    memplan_add(mp, "parameters", f[0], 1);
    memplan_add(mp, "gradients", f[1], 1);
    memplan_add(mp, "optimizer state", f[5], 1);
    memplan_add(mp, "activations", f[2], 1);
    memplan_add(mp, "backward scratch", f[3], 1);
    memplan_add(mp, "expert bookkeeping", f[4], 0);
    memplan_add(mp, "initialisation staging", biggest, 0);
    /* the own table's weights and moments, and a chunk's three while they are gathered */
    memplan_add(mp, "checkpoint staging", 3.0 * own * sizeof(float) + 3.0 * biggest, 0);
    if (f[6] > 0) memplan_add(mp, "zero-1 host staging", f[6], 0);
    if (f[7] > 0) memplan_add(mp, "zero-1 gradient slice", f[7], 1);
    /* comm/p2p.c: a staging buffer per send of the step and one more, and one to receive */
    memplan_add(mp, "pipeline transfers", (count_sends(&p->sched.rank[me]) + 3.0) * io, 0);
    memplan_add(mp, "mirror gradient pack", 2.0 * mirrored * sizeof(float), 0);
}

void pp_setup(Trainer *t, const World *w, Groups *g)
{
    const Config *cfg = &t->cfg;
    const TrainConfig *tc = &cfg->train;
    const int B = tc->micro_batch_size, T = tc->seq_len, C = tc->grad_accum;
    struct PpTrainer *p = t->pp = xcalloc(1, sizeof *p);
    SchedKind kind;
    if (sched_kind_parse(cfg->parallel.schedule, &kind)) BUG("schedule '%s' passed validation", cfg->parallel.schedule);
    sched_build(&p->sched, kind, g->pp, C);
    split_layers(t);
    params_build(&p->full, &cfg->model);
    plan_rank_memory(t, g);
    shard_check_plan(&t->mem, &t->mem_limit, cfg, t->o, w->local_size);
    for (int c = 0; c < p->sched.n_chunks; c++) {
        spec_of(t, g->stage, c, &p->spec[c]);
        const int mode = pipe_exec_train_mode(&p->sched, g->stage, c) | (tc->recompute ? MODEL_RECOMPUTE : 0);
        p->stage[c] = stage_create(&cfg->model, t->o, B, T, mode, &p->spec[c], g->ep > 1 ? g->ep_comm : NULL, w->node);
        model_init_params(p->stage[c], (uint64_t)tc->seed);
        plan_ownership(t, c);
    }
    plan_mirrors(t);
    plan_own(t);
    p->world = w->comm;
    CHECK(w->comm->rank == groups_world_rank(g->dp, g->stage, g->dp_rank));
    t->model = p->stage[0];
    p->link = p2p_link_create(g->pp_comm, t->o, stage_io_bytes(p->stage[0]),
                              count_sends(&p->sched.rank[g->stage]) + 1);
    pipe_exec_init(&p->ex, &p->sched, g->stage, p->stage, p->link);
    p->windows = xcalloc((size_t)C, sizeof(int32_t *));
    for (int i = 0; i < C; i++) p->windows[i] = xcalloc((size_t)B * (T + 1), sizeof(int32_t));
    p->losses = xcalloc((size_t)C, sizeof(ModelLoss));
    const size_t nc = (size_t)model_n_moe_layers(t->model) * cfg->model.n_routed_experts + 1;
    p->counts = xcalloc(nc, sizeof(float));
    p->counts_tmp = xcalloc(nc, sizeof(float));
}

void pp_free(Trainer *t)
{
    struct PpTrainer *p = t->pp;
    if (!p) return;
    pipe_exec_free(&p->ex);
    p2p_link_free(p->link);
    for (int c = 0; c < p->sched.n_chunks; c++) {
        shard_free(&p->shard[c], t->o);
        free(p->first_holder[c]);
        model_destroy(p->stage[c]);
    }
    for (int i = 0; i < p->sched.micro_batches; i++) free(p->windows[i]);
    free(p->windows);
    free(p->losses);
    for (int c = 0; c < p->sched.n_chunks; c++) free(p->own_off[c]);
    params_free(&p->own);
    free(p->mirror);
    free(p->pack);
    comm_destroy(p->pair);
    free(p->counts);
    free(p->counts_tmp);
    sched_free(&p->sched);
    free(p->stage_lo);
    params_free(&p->full);
    free(p);
    t->pp = NULL;
    t->model = NULL;
}

const ParamTable *pp_table(const Trainer *t) { return &t->pp->own; }

/* The tensors held twice: each chunk's gradient <- the sum over every holder (this rank's
 * chunks in chunk order, then the pair's two sums), so the copies take the same update. Only
 * those tensors travel (the pack), between exactly their two holding ranks. */
static void sum_mirrors(Trainer *t)
{
    struct PpTrainer *p = t->pp;
    Ops *o = t->o;
    if (p->n_mirror == 0) return;
    float *tmp = NULL;
    for (int k = 0; k < p->n_mirror; k++) {
        const Mirror *m = &p->mirror[k];
        float *dst = p->pack + m->at;
        o->download(o, dst, model_grads(p->stage[m->chunk[0]]) + m->off[0], m->numel * sizeof(float));
        if (m->n_loc < 2) continue;
        tmp = tmp ? tmp : xmalloc(p->pack_n * sizeof(float));
        o->download(o, tmp, model_grads(p->stage[m->chunk[1]]) + m->off[1], m->numel * sizeof(float));
        for (size_t i = 0; i < m->numel; i++) dst[i] += tmp[i];
    }
    free(tmp);
    if (p->pair) comm_allreduce(p->pair, p->pack, p->pack_n, COMM_F32, COMM_SUM);
    for (int k = 0; k < p->n_mirror; k++) {
        const Mirror *m = &p->mirror[k];
        for (int h = 0; h < m->n_loc; h++)
            o->upload(o, model_grads(p->stage[m->chunk[h]]) + m->off[h], p->pack + m->at, m->numel * sizeof(float));
    }
}

/* The gradients summed over every holder and data-parallel replica, into each chunk's ZeRO-1
 * slices (runtime/shard.h: replicated tensors over dp_comm, experts over edp_comm), after the
 * mirror sums. Returns the global norm of the mean gradient: every tensor counted once (by its
 * first holder's slices), the slices' sums of squares summed over the whole job. */
static double reduce_grads(Trainer *t)
{
    struct PpTrainer *p = t->pp;
    const Groups *g = t->groups;
    sum_mirrors(t);
    double sq = 0;
    for (int c = 0; c < n_chunks(t); c++) {
        shard_reduce_grads(&p->shard[c], t->o, model_grads(p->stage[c]));
        sq += shard_slice_sumsq(&p->shard[c], p->first_holder[c]);
    }
    comm_allreduce(g->pp_comm, &sq, 1, COMM_F64, COMM_SUM);
    if (g->dp > 1) comm_allreduce(g->dp_comm, &sq, 1, COMM_F64, COMM_SUM);
    return sqrt(sq) / g->dp;
}

/* The step's expert loads: each stage counts its MoE layers; summed over chunks and ranks
 * (integer counts: exact), then the bias update on every stage. */
static void reduce_counts(Trainer *t, StepMetrics *s, double gamma)
{
    struct PpTrainer *p = t->pp;
    const size_t n = (size_t)model_n_moe_layers(t->model) * t->cfg.model.n_routed_experts;
    if (n == 0) return;
    model_expert_counts(p->stage[0], p->counts);
    for (int c = 1; c < n_chunks(t); c++) {
        model_expert_counts(p->stage[c], p->counts_tmp);
        for (size_t i = 0; i < n; i++) p->counts[i] += p->counts_tmp[i];
    }
    comm_allreduce(t->groups->pp_comm, p->counts, n, COMM_F32, COMM_SUM);
    if (t->groups->dp > 1) comm_allreduce(t->groups->dp_comm, p->counts, n, COMM_F32, COMM_SUM);
    for (int c = 0; c < n_chunks(t); c++) model_set_expert_counts(p->stage[c], p->counts);
    LoadStats ls = model_load_stats(p->stage[0]);
    s->maxvio = ls.maxvio_mean;
    s->maxvio_max = ls.maxvio_max;
    for (int c = 0; c < n_chunks(t); c++) model_bias_update(p->stage[c], gamma, t->cfg.moe.bias_zero_mean);
}

/* Per micro-batch losses summed over the PP ranks (main and MTP: one rank reports each, the
 * others hold zero; balance: each stage its layers' share), averaged over the DP replicas,
 * then the step's means. */
static void reduce_losses(Trainer *t, StepMetrics *s)
{
    struct PpTrainer *p = t->pp;
    const int M = p->sched.micro_batches, D = t->cfg.model.num_nextn_predict_layers, W = 2 + D;
    double *v = xcalloc((size_t)M * W, sizeof(double));
    for (int i = 0; i < M; i++) {
        v[i * W] = p->losses[i].main;
        v[i * W + 1] = p->losses[i].balance;
        for (int k = 0; k < D; k++) v[i * W + 2 + k] = p->losses[i].mtp[k];
    }
    comm_allreduce(t->groups->pp_comm, v, (size_t)M * W, COMM_F64, COMM_SUM);
    if (t->groups->dp > 1) {
        comm_allreduce(t->groups->dp_comm, v, (size_t)M * W, COMM_F64, COMM_SUM);
        for (int i = 0; i < M * W; i++) v[i] /= t->groups->dp;
    }
    for (int i = 0; i < M; i++) {
        s->loss += v[i * W] / M;
        s->balance += v[i * W + 1] / M;
        for (int k = 0; k < D; k++) s->mtp[k] += v[i * W + 2 + k] / M;
    }
    s->n_mtp = D;
    free(v);
}

/* model_grads_hook's call (runtime/train.c post_expert_grads): the chunk's last weight pass
 * has passed its lowest MoE block, so its experts' reduce-scatter runs during the rest of the
 * schedule. */
static void post_chunk_experts(void *ctx)
{
    const struct ChunkPost *cp = ctx;
    Trainer *t = cp->t;
    const int c = cp->chunk;
    struct PpTrainer *p = t->pp;
    trace_instant(t->trace, TRACE_COMPUTE, "reduce-scatter experts posted", -1, c);
    shard_post_grads(&p->shard[c], t->o, model_grads(p->stage[c]), shard_expert_region(&p->shard[c]));
}

/* Each chunk with an expert exchange posts it from its M-th weight pass, unless a tensor held
 * twice (sum_mirrors, after the schedule) lies in its expert region. */
static void arm_expert_posts(Trainer *t, int M)
{
    struct PpTrainer *p = t->pp;
    for (int c = 0; c < n_chunks(t); c++) {
        const int low = model_lowest_moe_block(p->stage[c]);
        if (shard_expert_region(&p->shard[c]) < 0 || low < 0) continue;
        int mirrored = 0;
        for (int k = 0; k < p->n_mirror; k++)
            for (int h = 0; h < p->mirror[k].n_loc; h++)
                mirrored |= p->mirror[k].chunk[h] == c &&
                            p->mirror[k].off[h] + p->mirror[k].numel > p->shard[c].r[1].base;
        if (mirrored) continue;
        p->post[c].t = t;
        p->post[c].chunk = c;
        model_grads_hook(p->stage[c], low, M, post_chunk_experts, &p->post[c]);
    }
}

void pp_train_step(Trainer *t, StepMetrics *s)
{
    struct PpTrainer *p = t->pp;
    const Config *c = &t->cfg;
    const int M = c->train.grad_accum;
    const double lambda = lambda_at(&c->mtp, t->tokens), gamma = gamma_at(&c->moe, t->tokens);
    for (int k = 0; k < n_chunks(t); k++) {
        model_zero_grads(p->stage[k]);
        model_zero_counts(p->stage[k]);
        model_set_loss_weights(p->stage[k], lambda, c->moe.balance_alpha, M);
    }
    arm_expert_posts(t, M);
    for (int i = 0; i < M; i++) data_next(t->train, p->windows[i]);
    memset(p->losses, 0, (size_t)M * sizeof(ModelLoss));
    p->ex.trace = t->trace;     /* created after pp_setup; records only in traced steps */
    pipe_exec_begin(&p->ex, (const int32_t *const *)p->windows, p->losses);
    int st;
    while ((st = pipe_exec_step(&p->ex)) == PIPE_RAN) {}
    CHECK(st == PIPE_DONE);
    p->link->finish(p->link);
    for (int k = 0; k < n_chunks(t); k++) model_grads_hook(p->stage[k], -1, 0, NULL, NULL);
    reduce_losses(t, s);
    s->grad_norm = reduce_grads(t);
    s->lr = lr_at(&c->optim, t->step, c->train.steps);
    const double scale = clip_scale(s->grad_norm, c->optim.grad_clip) / t->groups->dp;
    for (int k = 0; k < n_chunks(t); k++) {
        shard_step(&p->shard[k], model_params(p->stage[k]), s->lr, scale);
        shard_gather_params(&p->shard[k], t->o, model_params(p->stage[k]));
    }
    reduce_counts(t, s, gamma);
    s->max_nodes = 0;
    t->step++;
    t->tokens += (long long)M * c->train.micro_batch_size * c->train.seq_len * t->groups->dp;
}

/* One window down the stages (micro-batch 0's owners), no gradients; the last stage's losses,
 * summed over the ranks. */
static void forward_chain(Trainer *t, const int32_t *window, double *out)
{
    struct PpTrainer *p = t->pp;
    const Schedule *s = &p->sched;
    const int me = t->groups->stage, D = t->cfg.model.num_nextn_predict_layers;
    memset(out, 0, (size_t)(1 + D) * sizeof(double));
    for (int st = 0; st < s->n_stages; st++) {
        int r, c, pr = -1, pc = 0, nr = -1, nc = 0;
        sched_owner(s, 0, st, &r, &c);
        if (r != me) continue;
        Model *m = p->stage[c];
        if (st > 0) sched_owner(s, 0, st - 1, &pr, &pc);
        if (st + 1 < s->n_stages) sched_owner(s, 0, st + 1, &nr, &nc);
        if (st > 0 && pr == me) {
            stage_copy_io(m, stage_input(m, 0), stage_output(p->stage[pc], 0));
        } else if (st > 0) {
            PipeHeader h;
            p->link->recv(p->link, pr, PIPE_ACT, &h, stage_input(m, 0), stage_io_bytes(m));
            if (h.kind != PIPE_ACT || h.mb != -1 || h.stage != st - 1)
                BUG("pp: validation expected activations of stage %d, got kind %d micro-batch %d stage %d", st - 1,
                    h.kind, h.mb, h.stage);
        }
        ModelLoss l;
        stage_forward(m, 0, -1, window, 0, &l);
        if (st + 1 == s->n_stages) {
            out[0] = l.main;
            for (int k = 0; k < D; k++) out[1 + k] = l.mtp[k];
        } else if (nr != me) {
            PipeHeader h = { PIPE_ACT, -1, st };
            p->link->send(p->link, nr, &h, stage_output(m, 0), stage_io_bytes(m));
        }
    }
    p->link->finish(p->link);
    comm_allreduce(t->groups->pp_comm, out, (size_t)(1 + D), COMM_F64, COMM_SUM);
}

double pp_evaluate(Trainer *t, double *mtp)
{
    const int D = t->cfg.model.num_nextn_predict_layers, n = t->cfg.train.val_batches;
    double sum = 0, l[1 + MTP_MAX];
    for (int k = 0; k < D; k++) mtp[k] = 0;
    data_rewind(t->val);
    for (int i = 0; i < n; i++) {
        data_next(t->val, t->window);
        forward_chain(t, t->window, l);
        sum += l[0] / n;
        for (int k = 0; k < D; k++) mtp[k] += l[1 + k] / n;
    }
    if (t->groups->dp > 1) {    /* each replica its share of the windows: the mean over them */
        double all[1 + MTP_MAX];
        all[0] = sum;
        for (int k = 0; k < D; k++) all[1 + k] = mtp[k];
        comm_allreduce(t->groups->dp_comm, all, (size_t)(1 + D), COMM_F64, COMM_SUM);
        sum = all[0] / t->groups->dp;
        for (int k = 0; k < D; k++) mtp[k] = all[1 + k] / t->groups->dp;
    }
    return sum;
}

void pp_gather_state(Trainer *t)
{
    struct PpTrainer *p = t->pp;
    float *dst[3] = { t->host_params, t->host_m, t->host_v };
    for (int c = 0; c < n_chunks(t); c++) {
        const ParamTable *pt = model_table(p->stage[c]);
        float *src[3];
        for (int k = 0; k < 3; k++) src[k] = xmalloc((pt->total + 1) * sizeof(float));
        t->o->download(t->o, src[0], model_params(p->stage[c]), pt->total * sizeof(float));
        shard_gather_moments(&p->shard[c], t->o, src[1], src[2]);
        /* a tensor in both chunks: the same values twice (its copies take the same updates) */
        for (int k = 0; k < 3; k++) {
            for (int i = 0; i < pt->n; i++)
                memcpy(dst[k] + p->own_off[c][i], src[k] + pt->p[i].offset, pt->p[i].numel * sizeof(float));
            free(src[k]);
        }
    }
}

void pp_restore(Trainer *t, int step)
{
    struct PpTrainer *p = t->pp;
    for (int c = 0; c < n_chunks(t); c++) {
        const ParamTable *pt = model_table(p->stage[c]);
        float *src[3] = { t->host_params, t->host_m, t->host_v }, *dst[3];
        for (int k = 0; k < 3; k++) {
            dst[k] = xmalloc((pt->total + 1) * sizeof(float));
            for (int i = 0; i < pt->n; i++)
                memcpy(dst[k] + pt->p[i].offset, src[k] + p->own_off[c][i], pt->p[i].numel * sizeof(float));
        }
        t->o->upload(t->o, model_params(p->stage[c]), dst[0], pt->total * sizeof(float));
        shard_load_moments(&p->shard[c], t->o, dst[1], dst[2], step);
        for (int k = 0; k < 3; k++) free(dst[k]);
    }
}

/* writes[i] <- whether PP rank `stage` writes entry i of its table rt: no earlier PP rank
 * holds it. */
static unsigned char *rank_writes(Trainer *t, int stage, const ParamTable *rt)
{
    unsigned char *w = xcalloc((size_t)rt->n + 1, 1);
    for (int i = 0; i < rt->n; i++) {
        w[i] = 1;
        for (int r = 0; r < stage && w[i]; r++)
            for (int c = 0; c < t->pp->sched.n_chunks; c++)
                if (holds(t, r, c, &rt->p[i])) w[i] = 0;
    }
    return w;
}

/* The row blocks world rank (stage, dp_rank) writes of its table rt: its tensors' rows cut
 * over its dp (or edp) group (runtime/ckpt_shard.h), of the entries it writes. */
static void rank_blocks(const Groups *g, int dp_rank, const ParamTable *rt, const unsigned char *writes,
                        long long *start, long long *count)
{
    ckpt_shard_blocks(rt, g->dp, dp_rank, g->ep, start, count);
    for (int i = 0; i < rt->n; i++)
        if (!writes[i]) start[i] = count[i] = 0;
}

typedef struct PpFiles {
    Trainer *t;
    ParamTable *tables;         /* [stage * ep + ep_rank], built when first asked for */
    unsigned char **writes;     /* [same]: rank_writes of that table (NULL: not built yet) */
} PpFiles;

static const ParamTable *pp_file(void *arg, int r, long long *start, long long *count)
{
    PpFiles *f = arg;
    const Groups *g = f->t->groups;
    const int stage = r / g->dp, dp_rank = r % g->dp, k = stage * g->ep + dp_rank % g->ep;
    if (!f->writes[k]) {
        rank_table(f->t, stage, dp_rank % g->ep, &f->tables[k]);
        f->writes[k] = rank_writes(f->t, stage, &f->tables[k]);
    }
    rank_blocks(g, dp_rank, &f->tables[k], f->writes[k], start, count);
    return &f->tables[k];
}

int pp_save(Trainer *t, const CkptRequest *req, char *err, size_t errlen)
{
    struct PpTrainer *p = t->pp;
    const Groups *g = t->groups;
    long long *start = xcalloc(2 * (size_t)p->own.n + 1, sizeof(long long)), *count = start + p->own.n;
    unsigned char *writes = rank_writes(t, g->stage, &p->own);
    rank_blocks(g, g->dp_rank, &p->own, writes, start, count);
    free(writes);
    CkptRequest r = *req;
    r.table = &p->own;
    r.rank = p->world->rank;
    r.layout = (CkptLayout){ .world_size = p->world->size, .pp = g->pp, .dp = g->dp, .ep = g->ep };
    r.row_start = start;
    r.row_count = count;
    const size_t n = (size_t)g->pp * g->ep;
    PpFiles f = { t, xcalloc(n, sizeof(ParamTable)), xcalloc(n, sizeof(unsigned char *)) };
    CkptShardJob job = { p->world, p->full.n, pp_file, &f };
    int rc = ckpt_shard_save_job(&r, &job, err, errlen);
    for (size_t k = 0; k < n; k++)
        if (f.writes[k]) {
            params_free(&f.tables[k]);
            free(f.writes[k]);
        }
    free(f.tables);
    free(f.writes);
    free(start);
    return rc;
}

Comm *pp_world(const Trainer *t) { return t->pp->world; }

void pp_print_memory(Trainer *t, FILE *f)
{
    struct PpTrainer *p = t->pp;
    const int pp = t->groups->pp, W = 9;
    double mine[9] = { 0 }, *all = xcalloc((size_t)pp * W, sizeof(double));
    for (int c = 0; c < n_chunks(t); c++) {
        ModelMemory mm;
        model_memory(p->stage[c], &mm);
        mine[0] += (double)mm.acts;
        mine[1] += (double)mm.scratch;
        mine[2] += (double)(mm.params + mm.grads + mm.copies);
        mine[3] += (double)shard_optim_floats(&p->shard[c]) * sizeof(float);
        mine[4] += stage_n_slots(p->stage[c]);
        mine[5] += (double)(mm.params + mm.grads) + (double)shard_optim_floats(&p->shard[c]) * sizeof(float);
    }
    Plan plan;
    plan_compute(&plan, &t->cfg);
    const PlanRank *pr = &plan.ranks[t->groups->stage];
    mine[6] = plan.n_ranks == pp ? pr->weight_bytes + pr->grad_bytes + pr->optim_bytes : -1;
    plan_free(&plan);
    mine[7] = memplan_total(&t->mem, 0);
    mine[8] = memplan_total(&t->mem, 1);
    comm_allgather(t->groups->pp_comm, all, mine, W, COMM_F64);
    const double MiB = 1048576.0;
    fprintf(f, "memory per pipeline rank (%s; each rank holds its stages' tensors):\n", t->o->name);
    fprintf(f, "  %-6s %-22s %6s %14s %16s %16s %14s\n", "rank", "stages (layers)", "slots", "activations",
            "backward bufs", "params+grads", "AdamW m, v");
    for (int r = 0; r < pp; r++) {
        char stages[64];
        int used = 0;
        for (int c = 0; c < p->sched.n_chunks; c++) {
            int st = sched_stage_of(&p->sched, r, c);
            used += snprintf(stages + used, sizeof stages - (size_t)used, "%s%d (%d-%d)", c ? ", " : "", st,
                             p->stage_lo[st], p->stage_lo[st + 1] - 1);
        }
        const double *a = all + (size_t)r * W;
        fprintf(f, "  %-6d %-22s %6.0f %10.1f MiB %12.1f MiB %12.1f MiB %10.1f MiB\n", r, stages, a[4], a[0] / MiB,
                a[1] / MiB, a[2] / MiB, a[3] / MiB);
    }
    fprintf(f, "memory planned per pipeline rank before allocation (runtime/shard.h items, checked against %s):\n",
            t->mem_limit.bytes < 0 ? "no known limit" : t->mem_limit.source);
    for (int r = 0; r < pp; r++) {
        const double *a = all + (size_t)r * W;
        fprintf(f, "  rank %-3d planned %10.3f MiB (host %.3f MiB) | params+grads+optimizer %10.3f MiB "
                "(dstrain plan: %.3f MiB)\n", r, a[7] / MiB, a[8] / MiB, a[5] / MiB, a[6] / MiB);
    }
    free(all);
}
