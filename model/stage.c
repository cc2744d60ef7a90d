/* model/stage.c - a stage's forward, backward-input and backward-weight over its slots
 * (model/stage.h), written as the straight list of calls: embedding (first stage), blocks
 * [lo, hi), final norm, head and loss, MTP modules (last stage); backward in reverse. The
 * whole model (model_forward, model_backward) is the one-stage case.
 * Reference: SPEC.md sections 2-5. Not here: planning the buffers (model/model.c).
 */
#include "model/stage.h"

#include <stdio.h>
#include <string.h>

#include "model/model_internal.h"

static ModelSlot *use_slot(Model *m, int slot)
{
    CHECK(slot >= 0 && slot < m->n_slots);
    m->sl = &m->slots[slot];
    return m->sl;
}

/* The slot's token ids and targets from the host window (first and last stages). */
static void stage_tokens(Model *m, const int32_t *window)
{
    Ops *o = m->o;
    const Dims *d = &m->d;
    CHECK(window);
    for (int b = 0; b < d->B; b++)
        for (int t = 0; t < d->T; t++) {
            m->host_tokens[b * d->T + t] = window[b * (d->T + 1) + t];
            m->host_tokens[d->N + b * d->T + t] = window[b * (d->T + 1) + t + 1];
        }
    o->upload(o, m->sl->tokens, m->host_tokens, (size_t)d->N * sizeof(int32_t));
    o->upload(o, m->sl->targets, m->host_tokens + d->N, (size_t)d->N * sizeof(int32_t));
}

static const act *block_input(const Model *m, int b)
{
    return b > m->lo ? m->sl->acts[b - 1].x_out : m->sl->x0;
}

/* Final norm, head and loss, then the MTP modules (last stage); valid[k]: module k+1's rows
 * with a target. */
static void head_forward(Model *m, const int32_t *window, int train, int *valid)
{
    Ops *o = m->o;
    const Dims *d = &m->d;
    const act *x = block_input(m, m->hi);
    o->rmsnorm_forward(o, m->sl->hf, m->sl->hf_rstd, x, m->final_norm, d->N, d->C, (float)m->cfg.rms_norm_eps);
    o->matmul_forward(o, m->sl->logits, m->sl->hf, &m->head, d->N, d->C, d->V);
    o->xent_forward(o, m->sl->losses, m->sl->logits, m->sl->targets, d->N, d->V);
    /* training: the logits buffer becomes its own gradient now (the fused GPU path) */
    if (train) o->xent_backward(o, m->sl->logits, m->sl->logits, m->sl->targets, m->dloss_main, d->N, d->V);

    const act *h_prev = m->sl->hf;
    for (int k = 1; k <= d->D; k++) {
        valid[k - 1] = mtp_forward(m, k, window, h_prev, train);
        h_prev = m->sl->acts[d->L + k - 1].x_out;
    }
}

/* Mean of n host floats over `valid` rows, summed in order in double (model_download_mean's
 * arithmetic, so a kept loss reads as an immediate one). */
static double host_mean(const float *x, int n, int valid)
{
    double sum = 0;
    for (int i = 0; i < n; i++) sum += x[i];
    return valid > 0 ? sum / valid : 0.0;
}

/* The slot's losses now (one download per buffer). */
static void read_now(Model *m, const int *valid, ModelLoss *loss)
{
    const Dims *d = &m->d;
    if (m->last) {
        loss->main = model_download_mean(m, m->sl->losses, d->N, d->N);
        for (int k = 0; k < d->D; k++) loss->mtp[k] = model_download_mean(m, m->sl->mtp[k].losses, d->N, valid[k]);
    }
    /* each MoE layer's loss is a mean over the B sequences; layers add (the layers of other
     * stages stay zero here) */
    if (m->alpha > 0 && m->n_moe > 0) loss->balance = model_download_mean(m, m->sl->bal_loss, m->n_moe * d->B, d->B);
}

/* The slot's per-row losses into row mb of the step's (no read). */
static void keep(Model *m, int mb, const int *valid)
{
    const Dims *d = &m->d;
    const size_t N = (size_t)d->N, F = sizeof(float);
    CHECK(mb >= 0 && mb < m->n_micro);
    float *row = m->step_losses + (size_t)mb * m->step_row;
    if (m->last) {
        m->o->copy(m->o, row, m->sl->losses, N * F);
        for (int k = 0; k < d->D; k++) m->o->copy(m->o, row + N * (1 + k), m->sl->mtp[k].losses, N * F);
        memcpy(m->step_valid + (size_t)mb * MTP_MAX, valid, MTP_MAX * sizeof(int));
    }
    if (m->alpha > 0 && m->n_moe > 0)
        m->o->copy(m->o, row + N * (1 + d->D), m->sl->bal_loss, (size_t)m->n_moe * d->B * F);
}

void stage_read_losses(Model *m, int n, ModelLoss *out)
{
    const Dims *d = &m->d;
    const int N = d->N;
    CHECK(n >= 0 && n <= m->n_micro);
    memset(out, 0, (size_t)n * sizeof *out);
    if (n == 0) return;
    m->o->download(m->o, m->host_step, m->step_losses, (size_t)n * m->step_row * sizeof(float));
    for (int mb = 0; mb < n; mb++) {
        const float *row = m->host_step + (size_t)mb * m->step_row;
        if (m->last) {
            out[mb].main = host_mean(row, N, N);
            for (int k = 0; k < d->D; k++)
                out[mb].mtp[k] = host_mean(row + (size_t)N * (1 + k), N, m->step_valid[(size_t)mb * MTP_MAX + k]);
        }
        if (m->alpha > 0 && m->n_moe > 0)
            out[mb].balance = host_mean(row + (size_t)N * (1 + d->D), m->n_moe * d->B, d->B);
    }
}

static void backward_start(Model *m)
{
    const size_t NC = (size_t)m->d.N * m->d.C * m->o->act_bytes;
    CHECK(m->train);
    m->o->zero(m->o, m->sl->dhf, NC);
    m->o->zero(m->o, m->sl->dh_chain, NC);
}

/* recompute: the final norm's output again (shared by the slots), for module 1's B and W and
 * the head's W. */
static void head_recompute(Model *m)
{
    if (!m->recompute) return;
    m->o->rmsnorm_forward(m->o, m->sl->hf, m->rc_rstd, block_input(m, m->hi), m->final_norm, m->d.N, m->d.C,
                          (float)m->cfg.rms_norm_eps);
}

/* Head and final norm, B: dhf (dL/dh^0, MTP module 1's share already in) gets the head's
 * share; dres becomes dL/d(last block's output). */
static void head_backward_input(Model *m)
{
    Ops *o = m->o;
    const Dims *d = &m->d;
    o->matmul_backward_input(o, m->sl->dhf, m->sl->logits, &m->head, d->N, d->C, d->V);
    o->zero(o, m->sl->dres, (size_t)d->N * d->C * o->act_bytes);
    o->rmsnorm_backward_input(o, m->sl->dres, m->sl->dhf, block_input(m, m->hi), m->final_norm, m->sl->hf_rstd, d->N,
                              d->C);
}

static void head_backward_weight(Model *m)
{
    Ops *o = m->o;
    const Dims *d = &m->d;
    o->matmul_backward_weight(o, m->g_head, &m->head, m->sl->logits, m->sl->hf, d->N, d->C, d->V);
    o->rmsnorm_backward_weight(o, m->g_final_norm, m->sl->dhf, block_input(m, m->hi), m->sl->hf_rstd, d->N, d->C);
}

/* Block b's weight gradients are in: model_grads_hook's call when this is its pass. */
static void after_weight(Model *m, int b)
{
    if (!m->grads_hook || b != m->hook_block || --m->hook_left > 0) return;
    void (*fn)(void *) = m->grads_hook;
    m->grads_hook = NULL;
    fn(m->grads_hook_ctx);
}

/* The units in stage_backward's order, so the head and the embedding (shared with MTP) get
 * their contributions in the same order. dres still holds dL/dx0 from stage_backward_input. */
void stage_backward_weight(Model *m, int slot)
{
    const Dims *d = &m->d;
    CHECK(m->train);
    use_slot(m, slot);
    if (m->last) {
        head_recompute(m);
        for (int k = d->D; k >= 1; k--) mtp_backward_weight(m, k);
        head_backward_weight(m);
    }
    for (int b = m->hi - 1; b >= m->lo; b--) {
        block_backward_weight(m, b, block_input(m, b));
        after_weight(m, b);
    }
    if (m->first) m->o->embedding_backward(m->o, m->g_embed, m->sl->dres, m->sl->tokens, d->N, d->C);
}

/* ---- phases ----------------------------------------------------------------------------------- */

static void pass_init(StagePass *p, Model *m, int kind, int slot, int mb, const int32_t *window)
{
    memset(p, 0, sizeof *p);
    p->m = m;
    p->kind = kind;
    p->slot = slot;
    p->mb = mb;
    p->window = window;
    p->b = -2;
    p->train = 1;
}

void stage_pass_begin(StagePass *p, Model *m, int kind, int slot, int mb, const int32_t *window)
{
    CHECK(m->train);
    pass_init(p, m, kind, slot, mb, window);
}

static const char *const EXCHANGE[2][2] = { { "dispatch", "combine" }, { "combine bwd", "dispatch bwd" } };

/* F from where it stopped to the next post (1) or the end (0). */
static int pass_forward(StagePass *p)
{
    Model *m = p->m;
    if (p->b == -2) {
        const Dims *d = &m->d;
        if (m->first || m->last) stage_tokens(m, p->window);
        model_refresh_weights(m);
        if (m->first) m->o->embedding_forward(m->o, m->sl->x0, m->sl->tokens, m->embed, d->N, d->C);
        p->b = m->lo;
        p->part = 0;
    }
    for (; p->b < m->hi; p->b++, p->part = 0) {
        if (block_forward_part(m, p->b, block_input(m, p->b), p->train, p->part)) {
            snprintf(p->exchange, sizeof p->exchange, "%s L%d", EXCHANGE[0][p->part], p->b);
            p->part++;
            return 1;
        }
    }
    if (m->last) head_forward(m, p->window, p->train, p->valid);
    if (p->loss) {
        memset(p->loss, 0, sizeof *p->loss);
        read_now(m, p->valid, p->loss);
    } else {
        keep(m, p->mb, p->valid);
    }
    return 0;
}

/* B (and W when fused) from where it stopped to the next post (1) or the end (0). */
static int pass_backward(StagePass *p)
{
    Model *m = p->m;
    const Dims *d = &m->d;
    const int fused = p->kind == STAGE_PASS_BW;
    if (p->b == -2) {
        if (m->last) {
            backward_start(m);
            head_recompute(m);
            for (int k = d->D; k >= 1; k--) {
                mtp_backward_input(m, k);
                if (fused) mtp_backward_weight(m, k);
            }
            head_backward_input(m);
            if (fused) head_backward_weight(m);
        }
        p->b = m->hi - 1;
        p->part = 0;
    }
    for (; p->b >= m->lo; p->b--, p->part = 0) {
        if (block_backward_part(m, p->b, block_input(m, p->b), m->sl->dres, p->part)) {
            snprintf(p->exchange, sizeof p->exchange, "%s L%d", EXCHANGE[1][p->part], p->b);
            p->part++;
            return 1;
        }
        if (fused) block_backward_weight(m, p->b, block_input(m, p->b));
        if (fused) after_weight(m, p->b);
    }
    if (fused && m->first) m->o->embedding_backward(m->o, m->g_embed, m->sl->dres, m->sl->tokens, d->N, d->C);
    return 0;
}

int stage_pass_run(StagePass *p)
{
    CHECK(!p->posted && !p->done);
    use_slot(p->m, p->slot);
    p->m->lane = p->kind == STAGE_PASS_F ? EP_LANE_F : EP_LANE_B;
    p->exchange[0] = 0;
    p->posted = p->kind == STAGE_PASS_F ? pass_forward(p) : pass_backward(p);
    p->done = !p->posted;
    p->m->lane = EP_LANE_F;
    return p->posted;
}

const char *stage_pass_next(StagePass *p)
{
    static const char *const PART[2][3] = { { "", " experts", " out" }, { "", " experts", " gate" } };
    const Model *m = p->m;
    const int bwd = p->kind != STAGE_PASS_F;
    if (p->b == -2 && bwd && m->last) snprintf(p->phase, sizeof p->phase, "head");
    else if (p->b == -2) snprintf(p->phase, sizeof p->phase, "L%d", bwd ? m->hi - 1 : m->lo);
    else if (p->b < m->lo || p->b >= m->hi) snprintf(p->phase, sizeof p->phase, bwd ? "embed" : "head");
    else snprintf(p->phase, sizeof p->phase, "L%d%s", p->b, PART[bwd][p->part]);
    return p->phase;
}

void stage_pass_wait(StagePass *p)
{
    CHECK(p->posted);
    use_slot(p->m, p->slot);
    block_wait(p->m, p->b, p->part, p->kind != STAGE_PASS_F);
    p->posted = 0;
}

static void pass_through(Model *m, int kind, int slot)
{
    StagePass p;
    stage_pass_begin(&p, m, kind, slot, 0, NULL);
    while (stage_pass_run(&p)) stage_pass_wait(&p);
}

/* The phases of pass_forward, each exchange waited at once; loss: read now (else kept for
 * stage_read_losses). */
void stage_forward(Model *m, int slot, int mb, const int32_t *window, int train, ModelLoss *loss)
{
    StagePass p;
    CHECK(!train || m->train);
    pass_init(&p, m, STAGE_PASS_F, slot, mb, window);
    p.train = train;
    p.loss = loss;
    while (stage_pass_run(&p)) stage_pass_wait(&p);
}

/* B and W unit by unit (MTP modules last to first, head, blocks last to first, embedding):
 * the phases of pass_backward, each exchange waited at once. */
void stage_backward(Model *m, int slot) { pass_through(m, STAGE_PASS_BW, slot); }

void stage_backward_input(Model *m, int slot) { pass_through(m, STAGE_PASS_B, slot); }

/* The whole model: the one-stage case on slot 0. */
void model_forward(Model *m, const int32_t *window, int train, ModelLoss *loss)
{
    CHECK(m->first && m->last);
    stage_forward(m, 0, 0, window, train, loss);
}

void model_backward(Model *m)
{
    CHECK(m->first && m->last);
    stage_backward(m, 0);
}

void model_backward_input(Model *m)
{
    CHECK(m->train == MODEL_TRAIN_SPLIT && m->first && m->last);
    stage_backward_input(m, 0);
}

void model_backward_weight(Model *m)
{
    CHECK(m->train == MODEL_TRAIN_SPLIT && m->first && m->last);
    stage_backward_weight(m, 0);
}

void model_grads_hook(Model *m, int block, int nth, void (*fn)(void *ctx), void *ctx)
{
    CHECK(!fn || (block >= m->lo && block < m->hi && nth >= 1));
    m->grads_hook = fn;
    m->grads_hook_ctx = ctx;
    m->hook_block = block;
    m->hook_left = nth;
}

int model_lowest_moe_block(const Model *m)
{
    const int k = m->cfg.first_k_dense_replace > m->lo ? m->cfg.first_k_dense_replace : m->lo;
    return k < m->hi && k < m->d.L && m->is_moe[k] ? k : -1;
}

int stage_holds(const StageSpec *sp, const ModelConfig *c, const Param *p)
{
    const int L = c->num_hidden_layers;
    if (p->layer >= L) return sp->last;
    if (p->layer >= 0) return p->layer >= sp->lo && p->layer < sp->hi;
    if (p->role == ROLE_EMBED) return sp->first || (sp->last && c->num_nextn_predict_layers > 0);
    return sp->last;        /* final norm, head */
}

void stage_split(int L, int S, int s, StageSpec *sp)
{
    CHECK(S >= 1 && S <= L && s >= 0 && s < S);
    int base = L / S, extra = L % S;
    sp->lo = s * base + (s < extra ? s : extra);
    sp->hi = sp->lo + base + (s < extra);
    sp->first = sp->lo == 0;
    sp->last = sp->hi == L;
    sp->n_slots = 1;
    sp->n_micro = 0;
    sp->capacity_factor = 0.0;
}

act *stage_input(Model *m, int slot)
{
    CHECK(slot >= 0 && slot < m->n_slots && !m->first);
    return m->slots[slot].x0;
}

const act *stage_output(Model *m, int slot)
{
    CHECK(slot >= 0 && slot < m->n_slots && !m->last);
    ModelSlot *sl = &m->slots[slot];
    return m->hi > m->lo ? sl->acts[m->hi - 1].x_out : sl->x0;
}

act *stage_output_grad(Model *m, int slot)
{
    CHECK(slot >= 0 && slot < m->n_slots && !m->last && m->train);
    return m->slots[slot].dres;
}

const act *stage_input_grad(Model *m, int slot)
{
    CHECK(slot >= 0 && slot < m->n_slots && !m->first && m->train);
    return m->slots[slot].dres;
}

size_t stage_io_bytes(const Model *m) { return (size_t)m->d.N * m->d.C * m->o->act_bytes; }
int stage_n_slots(const Model *m) { return m->n_slots; }
int stage_n_micro(const Model *m) { return m->n_micro; }
void stage_copy_io(Model *m, act *dst, const act *src) { m->o->copy(m->o, dst, src, stage_io_bytes(m)); }
