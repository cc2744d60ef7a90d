/* model/model.c - the whole model as a straight list of calls: embedding, blocks, final norm,
 * head and loss; MTP modules (model/mtp.c); backward in reverse; expert loads and the router
 * bias update. Every buffer is planned in model_create (three arenas: parameters and
 * gradients, activations, backward scratch); nothing is allocated per step.
 * Reference: SPEC.md sections 2-5. Not here: the optimizer (runtime/optim.c).
 */
#include "model_internal.h"
#include "stage.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Whether this stage runs block b: its chunk [lo, hi) of the main blocks, and the MTP
 * blocks when it is the last stage. */
static int stage_has_block(const Model *m, int b)
{
    return (b >= m->lo && b < m->hi) || (m->last && b >= m->d.L);
}

/* The embedding: the first stage's, and the last stage's copy for MTP. */
static int stage_has_embed(const Model *m)
{
    return m->first || (m->last && m->d.D > 0);
}

/* Bytes of the expert-row pool of this stage's MoE layers over its slots, with `rows` rows a
 * layer (the pool's, or the worst case's). */
static size_t pool_bytes(const Model *m, int rows)
{
    size_t layers = 0;
    for (int b = 0; b < m->nblocks; b++) layers += m->is_moe[b] && stage_has_block(m, b);
    return layers * (size_t)m->n_slots * moe_pool_bytes(&m->d, rows, m->train == MODEL_TRAIN_SPLIT);
}

/* The entries of the whole table a stage keeps (params_select). */
typedef struct Keep {
    const StageSpec *sp;
    const ModelConfig *c;
} Keep;

static int keep_entry(const Param *p, void *arg)
{
    const Keep *k = arg;
    return stage_holds(k->sp, k->c, p);
}

/* One slot's activations: the stage input (the embedding's output on the first stage), its
 * blocks, and on the last stage the head's and the MTP modules'. */
static void plan_slot_acts(Model *m, ModelSlot *sl, Arena *ar)
{
    const Dims *d = &m->d;
    const size_t N = (size_t)d->N;
    sl->tokens = arena_take(ar, N * sizeof(int32_t));
    sl->targets = arena_take(ar, N * sizeof(int32_t));
    sl->x0 = arena_take(ar, N * d->C * d->act_bytes);
    for (int b = 0; b < m->nblocks; b++)
        if (stage_has_block(m, b)) block_acts_plan(&sl->acts[b], d, m->is_moe[b], m->recompute ? &m->rc : NULL, ar);
    sl->bal_loss = arena_take(ar, (size_t)(m->n_moe ? m->n_moe : 1) * d->B * sizeof(float));
    if (!m->last) return;
    sl->hf = m->recompute ? m->rc_hf : arena_take(ar, N * d->C * d->act_bytes);
    sl->hf_rstd = arena_take(ar, N * sizeof(float));
    sl->logits = arena_take(ar, N * d->V * d->act_bytes);
    sl->losses = arena_take(ar, N * sizeof(float));
    for (int k = 0; k < d->D; k++) mtp_acts_plan(&sl->mtp[k], d, m->recompute ? &m->rc_mtp : NULL, ar);
}

/* Activations of every slot, and what the slots share. */
static void plan_acts(Model *m, Arena *ar)
{
    const Dims *d = &m->d;
    const size_t N = (size_t)d->N;
    if (d->ep) ep_group_plan(d->ep, d->N, d->K, d->C, ar);
    if (m->recompute) block_dropped_plan(&m->rc, d, ar);
    if (m->recompute && m->last) {
        m->rc_hf = arena_take(ar, N * d->C * d->act_bytes);
        if (d->D > 0) mtp_dropped_plan(&m->rc_mtp, d, ar);
    }
    for (int i = 0; i < m->n_slots; i++) plan_slot_acts(m, &m->slots[i], ar);
    m->dloss_main = arena_take(ar, N * sizeof(float));
    m->logits_r = arena_take(ar, N * (d->E > 0 ? d->E : 1) * sizeof(float));
    m->rope_cos = arena_take(ar, (size_t)d->T * (d->Dr / 2) * sizeof(float));
    m->rope_sin = arena_take(ar, (size_t)d->T * (d->Dr / 2) * sizeof(float));
    m->counts = arena_take(ar, (size_t)(m->n_moe ? m->n_moe : 1) * d->E * sizeof(float));
    m->bal_dloss = arena_take(ar, (size_t)d->B * sizeof(float));
    if (m->n_micro > 0) m->step_losses = arena_take(ar, (size_t)m->n_micro * m->step_row * sizeof(float));
}

/* Backward buffers: B's scratch (shared); per slot the residual gradient stream and, with W
 * apart from B, every block's B-to-W buffers; with W right after B one set serves all. */
static void plan_backward(Model *m, Arena *ar)
{
    const Dims *d = &m->d;
    const size_t NC = (size_t)d->N * d->C * d->act_bytes;
    scratch_plan(&m->s, d, ar);
    if (m->recompute) {
        m->rc_ln2 = arena_take(ar, NC);
        m->rc_rstd = arena_take(ar, (size_t)d->N * sizeof(float));
    }
    BlockBwd shared;
    MtpBwd mtp_shared;
    if (m->train != MODEL_TRAIN_SPLIT) {
        block_bwd_plan(&shared, d, -1, ar);
        mtp_bwd_plan(&mtp_shared, d, ar);
    }
    for (int i = 0; i < m->n_slots; i++) {
        ModelSlot *sl = &m->slots[i];
        for (int b = 0; b < m->nblocks; b++) {
            if (!stage_has_block(m, b)) continue;
            if (m->train == MODEL_TRAIN_SPLIT) block_bwd_plan(&sl->bw[b], d, m->is_moe[b], ar);
            else sl->bw[b] = shared;
        }
        for (int k = 0; m->last && k < d->D; k++) {
            if (m->train == MODEL_TRAIN_SPLIT) mtp_bwd_plan(&sl->mtp_bw[k], d, ar);
            else sl->mtp_bw[k] = mtp_shared;
        }
        sl->dres = arena_take(ar, NC);
        if (m->last) {
            sl->dhf = arena_take(ar, NC);
            sl->dh_chain = arena_take(ar, NC);
        }
    }
    m->dcat = arena_take(ar, 2 * NC);
}

/* Two-pass arena: count, allocate once, take again in the same order. */
static char *arena_build(Model *m, void (*plan)(Model *, Arena *), size_t *bytes)
{
    Arena ar = { NULL, 0 };
    plan(m, &ar);
    *bytes = ar.used;
    ar.base = m->o->alloc(m->o, ar.used);
    ar.used = 0;
    plan(m, &ar);
    CHECK(ar.used == *bytes);
    return ar.base;
}

/* Weights (Linear ones with their compute copies, planned in an arena like the activations)
 * and the list of every Linear weight for the refresh. */
static void plan_weights(Model *m, Arena *ar)
{
    const ModelConfig *c = &m->cfg;
    const int E = m->table.expert_n;    /* experts held here */
    for (int b = 0, slot = 0; b < m->nblocks; b++) {
        if (m->is_moe[b]) {
            m->w[b].expert_gate_up = m->expert_wgts + (size_t)slot * 2 * E;
            m->w[b].expert_down = m->expert_wgts + (size_t)slot * 2 * E + E;
            slot++;
        }
        if (stage_has_block(m, b)) block_bind(&m->w[b], m->o, &m->table, c, m->params, b, m->is_moe[b], ar);
    }
    if (stage_has_embed(m)) m->embed = m->params + params_offset(&m->table, -1, "model.embed_tokens.weight");
    if (!m->last) return;
    for (int k = 0; k < m->d.D; k++) mtp_bind(&m->mtp_w[k], m->o, &m->table, m->params, m->d.L + k, ar);
    m->final_norm = m->params + params_offset(&m->table, -1, "model.norm.weight");
    param_bind_wgt(&m->head, m->o, &m->table, m->params, "lm_head.weight", ar);
}

static void list_weights(Model *m)
{
    int n = 0;
    for (int b = 0; b < m->nblocks; b++) n += block_wgts(&m->w[b], m->table.expert_n, NULL);
    m->wgts = xcalloc((size_t)n + m->d.D + 1, sizeof(Wgt *));
    for (int b = 0; b < m->nblocks; b++) m->n_wgts += block_wgts(&m->w[b], m->table.expert_n, m->wgts + m->n_wgts);
    if (!m->last) return;
    for (int k = 0; k < m->d.D; k++) m->wgts[m->n_wgts++] = &m->mtp_w[k].eh_proj;
    m->wgts[m->n_wgts++] = &m->head;
    m->wgts_stale = 1;
}

static void bind_grads(Model *m)
{
    const ModelConfig *c = &m->cfg;
    for (int b = 0; b < m->nblocks; b++)
        if (stage_has_block(m, b)) block_bind_grads(&m->g[b], &m->table, c, m->grads, b, m->is_moe[b]);
    if (stage_has_embed(m)) m->g_embed = m->grads + params_offset(&m->table, -1, "model.embed_tokens.weight");
    if (!m->last) return;
    for (int k = 0; k < m->d.D; k++) mtp_bind_grads(&m->mtp_g[k], &m->table, m->grads, m->d.L + k);
    m->g_final_norm = m->grads + params_offset(&m->table, -1, "model.norm.weight");
    m->g_head = m->grads + params_offset(&m->table, -1, "lm_head.weight");
}

/* Compute copies from the masters, when the masters may have changed (model_params). */
void model_refresh_weights(Model *m)
{
    if (!m->wgts_stale) return;
    for (int i = 0; i < m->n_wgts; i++) m->o->weight_refresh(m->o, m->wgts[i]);
    m->wgts_stale = 0;
}

/* Which blocks are MoE blocks (main layers from first_k_dense_replace on, every MTP block). */
static void mark_blocks(Model *m)
{
    m->nblocks = m->d.L + m->d.D;
    m->is_moe = xcalloc((size_t)m->nblocks, sizeof(int));
    m->moe_block = xcalloc((size_t)m->nblocks, sizeof(int));
    m->moe_slot = xcalloc((size_t)m->nblocks, sizeof(int));
    for (int b = 0; b < m->nblocks; b++) {
        m->is_moe[b] = b >= m->d.L || b >= m->cfg.first_k_dense_replace;
        m->moe_slot[b] = m->is_moe[b] ? m->n_moe : -1;
        if (m->is_moe[b]) m->moe_block[m->n_moe++] = b;
    }
}

/* The stage's place in the model and its slots (sp: model/stage.h). */
static void set_stage(Model *m, const StageSpec *sp)
{
    m->lo = sp->lo;
    m->hi = sp->hi;
    m->first = sp->first;
    m->last = sp->last;
    m->n_slots = sp->n_slots;
    m->n_micro = sp->n_micro;
}

void model_plan_bytes(const ModelConfig *c, Ops *o, int B, int T, int train, int ep, double capacity_factor,
                      ModelBytes *out)
{
    StageSpec whole = { 0, c->num_hidden_layers, 1, 1, 1, 0, capacity_factor };
    stage_plan_bytes(c, o, B, T, train, ep, &whole, out);
}

/* Floats of the tensors stage sp holds, of one EP rank's E / ep routed experts. */
static size_t stage_params(const ModelConfig *c, const StageSpec *sp, int ep)
{
    ParamTable full;
    params_build(&full, c);
    const int nl = ep > 1 ? c->n_routed_experts / ep : c->n_routed_experts;
    size_t total = 0;
    for (int i = 0; i < full.n; i++) {
        const Param *e = &full.p[i];
        if (stage_holds(sp, c, e) && (e->role != ROLE_ROUTED_EXPERT || e->expert < nl)) total += e->numel;
    }
    params_free(&full);
    return total;
}

void stage_plan_bytes(const ModelConfig *c, Ops *o, int B, int T, int train, int ep, const StageSpec *sp,
                      ModelBytes *out)
{
    memset(out, 0, sizeof *out);
    Model *m = xcalloc(1, sizeof *m);
    m->cfg = *c;
    m->o = o;
    m->train = train & ~MODEL_RECOMPUTE;
    m->recompute = !!(train & MODEL_RECOMPUTE);
    dims_from_config(&m->d, c, B, T, (int)o->act_bytes);
    if (ep > 1 && m->d.E > 0) {
        /* the group's sizes without its comm: the count passes below only take arena space */
        m->ep.size = ep;
        m->ep.E = m->d.E;
        m->ep.n_local = m->d.E / ep;
        m->d.ep = &m->ep;
    }
    moe_plan_pool(&m->d, m->d.ep ? ep : 1, sp->capacity_factor);
    set_stage(m, sp);   /* the stage with its slots (stage_create's; the whole model: model_create_ep's) */
    mark_blocks(m);
    m->slots = xcalloc((size_t)m->n_slots, sizeof(ModelSlot));
    for (int i = 0; i < m->n_slots; i++) {
        m->slots[i].acts = xcalloc((size_t)m->nblocks, sizeof(BlockActs));
        m->slots[i].bw = xcalloc((size_t)m->nblocks, sizeof(BlockBwd));
    }
    m->sl = &m->slots[0];
    m->step_row = (size_t)m->d.N * (1 + m->d.D) + (size_t)m->n_moe * B;
    size_t entries, total;
    params_measure(c, &entries, &total);
    if (!(sp->first && sp->last)) {
        total = stage_params(c, sp, ep);    /* (its table: the entries held) */
    } else if (ep > 1 && m->d.E > 0) {
        /* a rank holds E / ep of the routed experts (params_select) */
        const size_t routed = params_measure_routed(c);
        total -= routed - routed / (size_t)ep;
    }
    out->table = entries * sizeof(Param);
    out->params = total * sizeof(float);
    out->grads = m->train ? out->params : 0;
    Arena ar = { NULL, 0 };
    plan_acts(m, &ar);
    out->acts = ar.used;
    ar.used = 0;
    if (m->train) plan_backward(m, &ar);
    out->scratch = ar.used;
    out->pool = pool_bytes(m, m->d.R);
    /* model_create's per-expert host arrays: two Wgts per expert and MoE block, the counts and
     * the bias update's staging */
    const size_t E = (size_t)m->d.E, nm = (size_t)m->n_moe;
    out->experts_host = nm * 2 * (E / (size_t)(ep > 1 ? ep : 1)) * sizeof(Wgt) + nm * E * sizeof(float) +
                        E * (sizeof(float) + sizeof(double));
    free(m->is_moe);
    free(m->moe_block);
    free(m->moe_slot);
    for (int i = 0; i < m->n_slots; i++) {
        free(m->slots[i].acts);
        free(m->slots[i].bw);
    }
    free(m->slots);
    free(m);
}

Model *model_create(const ModelConfig *c, Ops *o, int B, int T, int train)
{
    return model_create_ep(c, o, B, T, train, NULL, 0, 0.0);
}

Model *model_create_ep(const ModelConfig *c, Ops *o, int B, int T, int train, Comm *ep_comm, int node,
                       double capacity_factor)
{
    StageSpec whole = { 0, c->num_hidden_layers, 1, 1, 1, 0, capacity_factor };
    return stage_create(c, o, B, T, train, &whole, ep_comm, node);
}

Model *stage_create(const ModelConfig *c, Ops *o, int B, int T, int train, const StageSpec *sp, Comm *ep_comm,
                    int node)
{
    if (c->num_nextn_predict_layers > MTP_MAX)
        DIE("model: 'model.num_nextn_predict_layers' = %d is more than the %d this build supports",
            c->num_nextn_predict_layers, MTP_MAX);
    if (T <= c->num_nextn_predict_layers)
        DIE("model: 'train.seq_len' = %d leaves no position for MTP depth %d", T, c->num_nextn_predict_layers);
    if (strcmp(c->attention, "mla") != 0)
        DIE("model: 'model.attention' = '%s' can be planned but not trained; training supports 'mla'", c->attention);
    CHECK(train >= MODEL_EVAL && (train & ~MODEL_RECOMPUTE) <= MODEL_TRAIN_SPLIT);
    CHECK(sp->lo >= 0 && sp->lo <= sp->hi && sp->hi <= c->num_hidden_layers && sp->n_slots >= 1);
    CHECK(sp->first == (sp->lo == 0) && sp->last == (sp->hi == c->num_hidden_layers));
    Model *m = xcalloc(1, sizeof *m);
    m->cfg = *c;
    m->o = o;
    m->train = train & ~MODEL_RECOMPUTE;
    m->recompute = !!(train & MODEL_RECOMPUTE);
    set_stage(m, sp);
    dims_from_config(&m->d, c, B, T, (int)o->act_bytes);
    if (ep_comm && ep_comm->size > 1 && m->d.E > 0) {
        ep_group_init(&m->ep, ep_comm, node, m->d.E);
        m->d.ep = &m->ep;
    }
    moe_plan_pool(&m->d, m->d.ep ? ep_comm->size : 1, sp->capacity_factor);
    params_build(&m->table, c);
    if (!(m->first && m->last) || m->d.ep) {
        /* a stage keeps only its tensors, and of the routed experts only this rank's (DESIGN.md
         * section 5): bound by local index j, expert expert_lo + j of the routing */
        ParamTable full = m->table;
        Keep keep = { sp, c };
        const int lo = m->d.ep ? m->ep.rank * m->ep.n_local : 0, n = m->d.ep ? m->ep.n_local : c->n_routed_experts;
        params_select(&m->table, &full, lo, n, m->first && m->last ? NULL : keep_entry, &keep);
        params_free(&full);
    }
    mark_blocks(m);
    m->w = xcalloc((size_t)m->nblocks, sizeof(BlockWeights));
    m->g = xcalloc((size_t)m->nblocks, sizeof(BlockGrads));
    m->expert_wgts = xcalloc((size_t)m->n_moe * 2 * m->table.expert_n + 1, sizeof(Wgt));
    m->slots = xcalloc((size_t)m->n_slots, sizeof(ModelSlot));
    for (int i = 0; i < m->n_slots; i++) {
        m->slots[i].acts = xcalloc((size_t)m->nblocks, sizeof(BlockActs));
        m->slots[i].bw = xcalloc((size_t)m->nblocks, sizeof(BlockBwd));
    }
    m->sl = &m->slots[0];

    m->bytes_params = m->table.total * sizeof(float);
    m->params = o->alloc(o, m->bytes_params);
    if (m->train) m->grads = o->alloc(o, m->bytes_params);
    m->copy_arena = arena_build(m, plan_weights, &m->bytes_copies);
    list_weights(m);
    if (m->grads) bind_grads(m);
    m->step_row = (size_t)m->d.N * (1 + m->d.D) + (size_t)m->n_moe * B;
    m->act_arena = arena_build(m, plan_acts, &m->bytes_acts);
    if (m->train) m->scratch_arena = arena_build(m, plan_backward, &m->bytes_scratch);

    const size_t half = (size_t)m->d.Dr / 2;
    float *cs = xcalloc((size_t)T * half + 1, sizeof(float)), *sn = xcalloc((size_t)T * half + 1, sizeof(float));
    rope_tables(c, T, cs, sn, &m->attn_scale);
    o->upload(o, m->rope_cos, cs, (size_t)T * half * sizeof(float));
    o->upload(o, m->rope_sin, sn, (size_t)T * half * sizeof(float));
    free(cs);
    free(sn);

    m->host_tokens = xcalloc((size_t)m->d.N * 2, sizeof(int32_t));
    m->host_losses = xcalloc((size_t)m->d.N + (size_t)m->n_moe * B + (size_t)m->n_moe * m->d.E + 1, sizeof(float));
    m->host_counts = xcalloc((size_t)m->n_moe * m->d.E + 1, sizeof(float));
    m->host_bias = xcalloc((size_t)m->d.E + 1, sizeof(float));
    m->host_delta = xcalloc((size_t)m->d.E + 1, sizeof(double));
    m->host_weights = xcalloc((size_t)(m->d.N > B ? m->d.N : B), sizeof(float));
    m->host_idx = xcalloc((size_t)m->d.N * (m->d.K > 0 ? m->d.K : 1), sizeof(int32_t));
    m->host_step = xcalloc((size_t)m->n_micro * m->step_row + 1, sizeof(float));
    m->step_valid = xcalloc((size_t)m->n_micro * MTP_MAX + 1, sizeof(int));
    model_set_loss_weights(m, 0.0, 0.0, 1);
    return m;
}

void model_destroy(Model *m)
{
    if (!m) return;
    for (int i = 0; i < m->n_slots; i++) {
        for (int b = 0; b < m->nblocks; b++) block_acts_free(&m->slots[i].acts[b]);
        free(m->slots[i].acts);
        free(m->slots[i].bw);
    }
    free(m->slots);
    if (m->d.ep) ep_group_free(&m->ep);
    m->o->free(m->o, m->params);
    if (m->grads) m->o->free(m->o, m->grads);
    m->o->free(m->o, m->act_arena);
    m->o->free(m->o, m->copy_arena);
    if (m->scratch_arena) m->o->free(m->o, m->scratch_arena);
    params_free(&m->table);
    free(m->is_moe);
    free(m->moe_block);
    free(m->moe_slot);
    free(m->w);
    free(m->g);
    free(m->expert_wgts);
    free(m->wgts);
    free(m->host_tokens);
    free(m->host_losses);
    free(m->host_counts);
    free(m->host_bias);
    free(m->host_delta);
    free(m->host_weights);
    free(m->host_idx);
    free(m->host_step);
    free(m->step_valid);
    free(m);
}

const ParamTable *model_table(const Model *m) { return &m->table; }
const ModelConfig *model_config(const Model *m) { return &m->cfg; }
float *model_params(Model *m)
{
    m->wgts_stale = 1;
    return m->params;
}
float *model_grads(Model *m) { return m->grads; }
int model_n_moe_layers(const Model *m) { return m->n_moe; }

void model_memory(const Model *m, ModelMemory *mm)
{
    mm->pool = pool_bytes(m, m->d.R);
    mm->params = m->bytes_params;
    mm->grads = m->grads ? m->bytes_params : 0;
    mm->copies = m->bytes_copies;
    mm->acts = m->bytes_acts;
    mm->scratch = m->bytes_scratch;
}

void model_copies(const Model *m, ModelCopies *mc)
{
    memset(mc, 0, sizeof *mc);
    for (int i = 0; i < m->n_wgts; i++) {
        const Wgt *w = m->wgts[i];
        const size_t n = (size_t)w->rows * w->cols;
        if (w->type == WGT_BF16) mc->bf16 += n;
        if (w->type != WGT_FP8) continue;
        mc->fp8 += n;
        mc->fp8_blocks += (size_t)((w->rows + 127) / 128) * (size_t)((w->cols + 127) / 128);
    }
}

/* The copies line: what this table allocates, and under bf16/fp8 what the recipe holds. */
static void print_copies(const Model *m, FILE *f, double MiB)
{
    fprintf(f, "  %-24s %10.1f MiB", "weight compute copies", m->bytes_copies / MiB);
    if (m->o->precision == PREC_FP32) {
        fprintf(f, "  (none: the FP32 masters are the compute copies)\n");
        return;
    }
    ModelCopies mc;
    model_copies(m, &mc);
    fprintf(f, "  (%s; as the %s recipe holds them: %zu bytes = BF16 2 B x %zu values + FP8 codes and "
            "transposed codes 2 B x %zu values + %zu 128x128 block scales x 4 B)\n",
            !strcmp(m->o->name, "cpu") ? "FP32 values in the CPU emulation" : "this device's layout",
            m->o->precision == PREC_FP8 ? "fp8" : "bf16",
            model_copies_bytes(&mc), mc.bf16, mc.fp8, mc.fp8_blocks);
}

void model_print_memory(const Model *m, FILE *f)
{
    const double MiB = 1024.0 * 1024.0;
    fprintf(f, "memory (%s):\n", m->o->name);
    fprintf(f, "  %-24s %10.1f MiB  (%zu parameters)\n", "parameters", m->bytes_params / MiB, m->table.total);
    fprintf(f, "  %-24s %10.1f MiB\n", "gradients", (m->grads ? m->bytes_params : 0) / MiB);
    print_copies(m, f, MiB);
    fprintf(f, "  %-24s %10.1f MiB  (micro-batch %d x %d)\n", "activations", m->bytes_acts / MiB, m->d.B, m->d.T);
    fprintf(f, "  %-24s %10.1f MiB\n", "backward scratch", m->bytes_scratch / MiB);
    if (m->n_moe == 0) return;
    const Dims *d = &m->d;
    const int mean = d->N * d->K;
    fprintf(f, "  %-24s %10.1f MiB  (%zu bytes of the above: %d rows per MoE layer and slot = %g x the mean %d "
            "('moe.capacity_factor' = %g, at most ep %d x); worst case %zu bytes)\n", "expert-row pool",
            pool_bytes(m, d->R) / MiB, pool_bytes(m, d->R), d->R, (double)d->R / mean, mean, d->capacity_factor, d->P,
            pool_bytes(m, d->P * mean));
}

void model_init_params(Model *m, uint64_t seed)
{
    float *host = xmalloc(m->bytes_params);
    params_init(&m->table, &m->cfg, host, seed);
    m->o->upload(m->o, m->params, host, m->bytes_params);
    m->wgts_stale = 1;
    free(host);
}

void model_set_loss_weights(Model *m, double lambda, double alpha, int n_micro)
{
    const Dims *d = &m->d;
    float *h = m->host_weights;
    m->lambda = lambda;
    m->alpha = alpha;
    for (int n = 0; n < d->N; n++) h[n] = (float)(1.0 / ((double)d->N * n_micro));
    m->o->upload(m->o, m->dloss_main, h, (size_t)d->N * sizeof(float));
    for (int k = 1; k <= d->D; k++) {
        /* module k has B*(T-k) positions with a target inside the window */
        double scale = lambda / d->D / ((double)d->B * (d->T - k) * n_micro);
        for (int n = 0; n < d->N; n++) h[n] = (n % d->T) + k + 1 <= d->T ? (float)scale : 0.0f;
        for (int i = 0; m->last && i < m->n_slots; i++)
            m->o->upload(m->o, m->slots[i].mtp[k - 1].dloss, h, (size_t)d->N * sizeof(float));
    }
    for (int b = 0; b < d->B; b++) h[b] = (float)(1.0 / ((double)d->B * n_micro));
    m->o->upload(m->o, m->bal_dloss, h, (size_t)d->B * sizeof(float));
}

void model_zero_grads(Model *m)
{
    CHECK(m->grads);
    m->o->zero(m->o, m->grads, m->bytes_params);
}

int model_max_nodes(const Model *m) { return m->max_nodes; }

void model_zero_counts(Model *m)
{
    m->max_nodes = 0;
    m->o->zero(m->o, m->counts, (size_t)(m->n_moe ? m->n_moe : 1) * m->d.E * sizeof(float));
}

Ctx model_ctx(Model *m)
{
    Ctx x = { m->o, &m->d, &m->cfg, m->rope_cos, m->rope_sin, m->attn_scale, m->train ? &m->s : NULL,
              m->logits_r, m->lane };
    return x;
}

MoeStats model_moe_stats(Model *m, int block, int train)
{
    int slot = m->moe_slot[block];
    MoeStats st = { NULL, NULL, m->bal_dloss, (float)m->alpha, NULL, m->host_idx, block };
    if (slot < 0) return st;
    if (train) {
        st.counts = m->counts + (size_t)slot * m->d.E;
        st.max_nodes = &m->max_nodes;
    }
    st.bal_loss = m->sl->bal_loss + (size_t)slot * m->d.B;
    return st;
}

void block_forward(Model *m, int b, const act *x_in, int train)
{
    Ctx x = model_ctx(m);
    mla_forward(&x, &m->w[b], &m->sl->acts[b], x_in);
    if (m->is_moe[b]) {
        MoeStats st = model_moe_stats(m, b, train);
        moe_forward(&x, &m->w[b], &m->sl->acts[b], &st);
    } else {
        ffn_forward(&x, &m->w[b], &m->sl->acts[b]);
    }
}

void block_backward_input(Model *m, int b, const act *x_in, act *dres)
{
    Ctx x = model_ctx(m);
    if (m->is_moe[b]) {
        MoeStats st = model_moe_stats(m, b, 1);
        moe_backward_input(&x, &m->w[b], &m->sl->bw[b], &m->sl->acts[b], &st, dres);
    } else {
        ffn_backward_input(&x, &m->w[b], &m->sl->bw[b], &m->sl->acts[b], dres);
    }
    if (m->recompute) mla_recompute(&x, &m->w[b], &m->sl->acts[b], x_in, m->rc_rstd, 0);
    mla_backward_input(&x, &m->w[b], &m->sl->bw[b], &m->sl->acts[b], x_in, dres);
}

int block_forward_part(Model *m, int b, const act *x_in, int train, int part)
{
    Ctx x = model_ctx(m);
    BlockActs *a = &m->sl->acts[b];
    if (part == 1) {
        /* ln2, shared by every block under recompute, must still be this F's */
        CHECK(!m->recompute || (m->rc_slot == m->sl && m->rc_block == b));
        moe_forward_experts(&x, &m->w[b], a);
        return 1;
    }
    if (part == 2) {
        moe_forward_out(&x, a);
        return 0;
    }
    mla_forward(&x, &m->w[b], a, x_in);
    if (!m->is_moe[b]) {
        ffn_forward(&x, &m->w[b], a);
        return 0;
    }
    MoeStats st = model_moe_stats(m, b, train);
    moe_forward_gate(&x, &m->w[b], a, &st);
    m->rc_slot = m->sl;
    m->rc_block = b;
    return 1;
}

int block_backward_part(Model *m, int b, const act *x_in, act *dres, int part)
{
    Ctx x = model_ctx(m);
    BlockActs *a = &m->sl->acts[b];
    BlockBwd *bw = &m->sl->bw[b];
    if (part == 1) {
        moe_backward_experts(&x, &m->w[b], bw, a);
        return 1;
    }
    if (part == 0 && m->is_moe[b]) {
        moe_backward_out(&x, &m->w[b], bw, a, dres);
        return 1;
    }
    if (part == 2) {
        MoeStats st = model_moe_stats(m, b, 1);
        moe_backward_gate(&x, &m->w[b], bw, a, &st, dres);
    } else {
        ffn_backward_input(&x, &m->w[b], bw, a, dres);
    }
    if (m->recompute) mla_recompute(&x, &m->w[b], a, x_in, m->rc_rstd, 0);
    mla_backward_input(&x, &m->w[b], bw, a, x_in, dres);
    return 0;
}

void block_wait(Model *m, int b, int part, int backward)
{
    EpHandle *h = &m->sl->acts[b].ep;
    if (!backward) {
        if (part == 1) ep_dispatch_wait(m->o, h);
        else ep_combine_wait(m->o, h);
    } else {
        if (part == 1) ep_combine_backward_wait(m->o, h);
        else ep_dispatch_backward_wait(m->o, h);
    }
}

void block_backward_weight(Model *m, int b, const act *x_in)
{
    Ctx x = model_ctx(m);
    const BlockActs *a = &m->sl->acts[b];
    BlockActs rc;
    if (m->recompute) {
        /* the norm outputs the weight gradients read, again: ln1, cq, ckv into the shared set,
         * ln2 into W's own buffer (an F between a MoE block's phases may hold the shared ln2) */
        rc = *a;
        rc.ln2 = m->rc_ln2;
        mla_recompute(&x, &m->w[b], &rc, x_in, m->rc_rstd, 1);
        m->o->rmsnorm_forward(m->o, rc.ln2, m->rc_rstd, rc.x_mid, m->w[b].ln2, m->d.N, m->d.C,
                              (float)m->cfg.rms_norm_eps);
        a = &rc;
    }
    if (m->is_moe[b])
        moe_backward_weight(&x, &m->w[b], &m->g[b], &m->sl->bw[b], a);
    else
        ffn_backward_weight(&x, &m->w[b], &m->g[b], &m->sl->bw[b], a);
    mla_backward_weight(&x, &m->w[b], &m->g[b], &m->sl->bw[b], a, x_in);
}

/* Mean of the first n host losses over the rows whose weight mask is set. */
double model_download_mean(Model *m, const float *dev, int n, int valid)
{
    m->o->download(m->o, m->host_losses, dev, (size_t)n * sizeof(float));
    double sum = 0;
    for (int i = 0; i < n; i++) sum += m->host_losses[i];
    return valid > 0 ? sum / valid : 0.0;
}

void model_logits(Model *m, int pos, float *out)
{
    CHECK(pos >= 0 && pos < m->d.T);
    m->o->act_download(m->o, out, act_at_c(m->o, m->sl->logits, (size_t)pos * m->d.V), (size_t)m->d.V);
}

void model_expert_counts(Model *m, float *counts)
{
    m->o->download(m->o, counts, m->counts, (size_t)m->n_moe * m->d.E * sizeof(float));
}

void model_set_expert_counts(Model *m, const float *counts)
{
    m->o->upload(m->o, m->counts, counts, (size_t)m->n_moe * m->d.E * sizeof(float));
}

static double layer_maxvio(const float *load, int E)
{
    double sum = 0, max = 0;
    for (int i = 0; i < E; i++) {
        sum += load[i];
        if (load[i] > max) max = load[i];
    }
    return sum > 0 ? max / (sum / E) - 1.0 : 0.0;
}

LoadStats model_load_stats(Model *m)
{
    LoadStats st = { 0, 0 };
    if (m->n_moe == 0) return st;
    const int E = m->d.E;
    float *c = m->host_counts;
    model_expert_counts(m, c);
    for (int l = 0; l < m->n_moe; l++) {
        double v = layer_maxvio(c + (size_t)l * E, E);
        st.maxvio_mean += v / m->n_moe;
        if (v > st.maxvio_max) st.maxvio_max = v;
    }
    return st;
}

void model_bias_update(Model *m, double gamma, int zero_mean)
{
    if (m->n_moe == 0 || gamma == 0) return;
    const int E = m->d.E;
    float *c = m->host_counts, *bias = m->host_bias;
    double *delta = m->host_delta;
    model_expert_counts(m, c);
    for (int l = 0; l < m->n_moe; l++) {
        float *bias_dev = m->w[m->moe_block[l]].router_bias;
        if (!bias_dev) continue;    /* a layer of another stage */
        const float *load = c + (size_t)l * E;
        m->o->download(m->o, bias, bias_dev, (size_t)E * sizeof(float));
        /* sign(mean - load_i) = sign(total - E * load_i): exact, since loads are integer
         * counts well below 2^53 */
        double total = 0, dmean = 0;
        for (int i = 0; i < E; i++) total += load[i];
        for (int i = 0; i < E; i++) {
            double diff = total - (double)E * load[i];
            delta[i] = gamma * (double)((diff > 0) - (diff < 0));
            dmean += delta[i] / E;
        }
        for (int i = 0; i < E; i++) bias[i] = (float)(bias[i] + delta[i] - (zero_mean ? dmean : 0.0));
        m->o->upload(m->o, bias_dev, bias, (size_t)E * sizeof(float));
    }
}
