/* runtime/plan_layout.c - the planner's view of the model (blocks from the parameter table),
 * the split of layers into pipeline stages, and memory per rank.
 *
 * Not here: FLOPs formulas (model/flops.c), communication and pipeline times (plan_time.c).
 * References: SPEC.md section 3 (what is recomputed), section 6 (precisions of weights,
 * gradients, master weights and moments), section 8 (params and activations per device
 * under each schedule); DeepSeek-V3 TR 3.2.3 (recomputation), 3.3.3 (FP8 activation caching).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../model/flops.h"
#include "../model/model.h"
#include "common.h"
#include "plan.h"

/* Bytes of an activation element (FP32 at fp32, else BF16) and of a cached Linear input (FP8 +
 * one FP32 scale per 128 values at fp8, TR 3.3.3; else the activation format). */
static double act_elem_bytes(const Config *c) { return strcmp(c->train.precision, "fp32") ? 2.0 : 4.0; }

static double linear_input_bytes(const Config *c)
{
    return strcmp(c->train.precision, "fp8") ? act_elem_bytes(c) : 1.0 + 4.0 / 128.0;
}

/* Activations one block stores per token for its backward. SPEC section 3, with
 * train.recompute: every RMSNorm output and the MLA up-projections W_qb, W_kvb are recomputed
 * in backward, not stored (without it, dropped_act_token adds them back).
 * a = act_elem_bytes, q = linear_input_bytes. Every tensor counted:
 *   attention, MLA:
 *     x        C          a  block input (residual); input_layernorm recomputed from it
 *     cq       Rq         a  q_a_proj output; q_a_layernorm and W_qb recomputed (Rq > 0)
 *     q        H*Dqk      a  q_proj output when Rq = 0 (not an up-projection: stored)
 *     kv_a     Rkv+Dr     a  kv_a_proj_with_mqa output; kv_a_layernorm, W_kvb, RoPE recomputed
 *     o        H*Dv       a  attention output = o_proj input (TR keeps 12 bits; we count a)
 *     lse      H          4  softmax log-sum-exp per head (FP32); backward rebuilds P from it
 *   attention, GQA:
 *     x        C          a
 *     q, k, v  (H+2KV)*hd a  attention inputs after RoPE (plain projections: stored)
 *     o        H*hd       a
 *     lse      H          4
 *   x'         C          a  residual after attention; post_attention_layernorm recomputed
 *   dense FFN: gate|up 2I q  SwiGLU input; SwiGLU output (down_proj input) recomputed from it
 *   MoE:
 *     scores   E          4  router sigmoid scores FP32 (gate gradient, balance loss)
 *     topk     K          8  expert index int32 + routing weight FP32
 *     shared   2Fs        q  shared-expert gate|up (SwiGLU input)
 *     copies   f*K*C      q  token copies the experts received (the dispatch payload kept)
 *     gate|up  f*K*2F     q  routed SwiGLU inputs; SwiGLU outputs recomputed (TR 3.3.3)
 *     f = plan_pool_factor: a rank receives K rows per token on average but keeps a pool of
 *     f times that, sized before the step (moe.capacity_factor, at most ep: the worst case)
 *     Expert outputs are not stored: the routing-weight gradient <dy, W_down s_k> equals
 *     <W_down^T dy, s_k>, from down_proj's input gradient and the recomputed s_k.
 *   MTP module, besides its block: enorm and hnorm inputs 2C (a) (the norms and eh_proj's
 *     input recomputed), shared_head.norm input C (a), head lse 4.
 *   head: final norm input C (a), lse 4.     embedding: token id + label, 4 + 4.
 * Not counted here: the logits (a workspace, see plan_memory). */
static double block_act_token(const Config *c, int moe)
{
    const ModelConfig *m = &c->model;
    const AttnDims ad = flops_attn_dims(m);
    const double a = act_elem_bytes(c), q = linear_input_bytes(c);
    const double C = m->hidden_size, H = ad.heads;
    double b = 2.0 * C * a + H * 4.0;                             /* x, x', lse */
    if (ad.gqa) {
        b += (double)(ad.heads + 2 * ad.kv_heads) * ad.head_dim * a + H * ad.head_dim * a;
    } else {
        if (m->q_lora_rank > 0) b += m->q_lora_rank * a;
        else b += H * ad.dqk * a;
        b += (double)(m->kv_lora_rank + m->qk_rope_head_dim) * a + H * ad.dv * a;
    }
    if (!moe) return b + 2.0 * m->intermediate_size * q;
    const double E = m->n_routed_experts, K = m->num_experts_per_tok, F = m->moe_intermediate_size;
    const double Fs = (double)m->n_shared_experts * F;
    return b + E * 4.0 + K * 8.0 + 2.0 * Fs * q + plan_pool_factor(c) * K * (C + 2.0 * F) * q;
}

double plan_pool_factor(const Config *c)
{
    const double ep = c->parallel.ep > 1 ? c->parallel.ep : 1.0, f = c->moe.capacity_factor;
    return f > 0 && f < ep ? f : ep;
}

/* What train.recompute = false keeps besides, per token (a each): block: input_layernorm and
 * post_attention_layernorm outputs 2C; MLA: q_a_layernorm's Rq and W_qb's H*Dqk (Rq > 0),
 * kv_a_layernorm's Rkv and W_kvb's H*(Dn+Dv); MTP module: enorm|hnorm outputs (eh_proj's
 * input) 2C and shared_head.norm's C; head: the final norm's C. (The attention kernel's k, v
 * are W_kvb's output and the rope key rearranged: a kernel reading them in place needs no
 * copy, so they are not counted; this build's copy is in train's own figure, plan_build_arenas.) */
static double dropped_act_token(const Config *c, int item)
{
    const ModelConfig *m = &c->model;
    const int L = m->num_hidden_layers, D = m->num_nextn_predict_layers;
    const double a = act_elem_bytes(c), C = m->hidden_size;
    if (c->train.recompute || item == L + D) return 0.0;   /* the embedding keeps no norm */
    if (item == L + D + 1) return C * a;
    const AttnDims ad = flops_attn_dims(m);
    double b = 2.0 * C * a;
    if (!ad.gqa) {
        if (m->q_lora_rank > 0) b += (m->q_lora_rank + ad.heads * (double)ad.dqk) * a;
        b += (m->kv_lora_rank + ad.heads * (double)(m->qk_nope_head_dim + ad.dv)) * a;
    }
    return b + (item >= L ? 3.0 * C * a : 0.0);
}

static int fp8_gemm(const Config *c, ParamRole r)
{
    if (strcmp(c->train.precision, "fp8")) return 0;
    /* SPEC section 6: Linear layers in FP8; embedding, head, router, norms stay BF16/FP32. */
    return r == ROLE_ATTN || r == ROLE_DENSE_FFN || r == ROLE_SHARED_EXPERT ||
           r == ROLE_ROUTED_EXPERT || r == ROLE_MTP_PROJ;
}

/* Bytes of one trained tensor's compute copy (SPEC section 6): FP32 at fp32 (the master is the
 * compute copy); BF16, 2 B per value, at bf16 and for what stays BF16 at fp8; at fp8 a Linear
 * weight the parameter table types FP8 (params_compute_type) holds its E4M3 codes (1 B), the
 * transposed copy Dgrad reads (1 B) and one FP32 scale per 128x128 block, which the transposed
 * copy shares (a transposed block has the same amax). */
static double copy_bytes(const Config *c, const Param *q)
{
    if (!strcmp(c->train.precision, "fp32")) return 4.0 * (double)q->numel;
    if (strcmp(c->train.precision, "fp8") || params_compute_type(q, PREC_FP8) != WGT_FP8)
        return 2.0 * (double)q->numel;
    const double blocks = ceil(q->rows / 128.0) * ceil(q->cols / 128.0);
    return 2.0 * (double)q->numel + 4.0 * blocks;
}

void plan_build_items(Plan *p, const ParamTable *t)
{
    const Config *c = &p->cfg;
    const ModelConfig *m = &c->model;
    const int L = m->num_hidden_layers, D = m->num_nextn_predict_layers;
    const int EMB = L + D, HEAD = L + D + 1;
    p->n_items = L + D + 2;
    p->items = xcalloc((size_t)p->n_items, sizeof(PlanItem));
    double head_pass = 0.0;
    for (int i = 0; i < t->n; i++) {
        const Param *q = &t->p[i];
        int idx = q->layer >= 0 ? q->layer : (q->role == ROLE_EMBED ? EMB : HEAD);
        CHECK(idx >= 0 && idx < p->n_items);
        PlanItem *it = &p->items[idx];
        it->params += (long long)q->numel;
        if (!q->trained) it->state += (double)q->numel;
        else if (q->role == ROLE_ROUTED_EXPERT) {
            it->expert_rank += (double)q->numel / c->parallel.ep;
            it->copy_expert_rank += copy_bytes(c, q) / c->parallel.ep;
        } else {
            it->replicated += (double)q->numel;
            it->copy_replicated += copy_bytes(c, q);
        }
        if (q->role == ROLE_ROUTED_EXPERT) it->moe = 1;
        double f = flops_param_forward(q, m);
        if (fp8_gemm(c, q->role)) it->mm_fp8 += f;
        else it->mm_bf16 += f;
        if (q->role == ROLE_HEAD) head_pass += f;
    }
    const double attn = flops_attention_forward(m, c->train.seq_len);
    const double a = act_elem_bytes(c);
    for (int l = 0; l < L + D; l++) {
        PlanItem *it = &p->items[l];
        it->attn = attn;
        it->act_token = block_act_token(c, it->moe);
        if (l >= L) {            /* MTP module: its own pass through the shared head */
            it->mm_bf16 += head_pass;
            it->act_token += 3.0 * m->hidden_size * a + 4.0;
        }
    }
    p->items[EMB].act_token = 8.0;
    p->items[HEAD].act_token = m->hidden_size * a + 4.0;
    for (int i = 0; i < p->n_items; i++) p->items[i].act_token += dropped_act_token(c, i);
}

/* One step of the split's dynamic programme: the cost of appending a stage of weight w to a
 * split of cost acc. Min-max mode keeps the heaviest stage; sum-of-squares mode (bound >= 0)
 * adds w^2 and refuses stages heavier than bound. */
static double split_cost(double acc, double w, double bound)
{
    if (bound < 0) return acc > w ? acc : w;
    return w > bound ? INFINITY : acc + w * w;
}

/* Split layers 0..L-1 (prefix sums P, P[0] = 0) into S contiguous non-empty stages, the last
 * carrying an extra weight tail. Returns the optimal cost; first[s] receives stage s's first
 * layer (first[S] = L). Ties go to the earliest cut. */
static double split_dp(const double *P, int L, int S, double tail, double bound, int *first)
{
    double *cost = xcalloc((size_t)(S + 1) * (size_t)(L + 1), sizeof(double));   /* (S+1,L+1) */
    int *from = xcalloc((size_t)(S + 1) * (size_t)(L + 1), sizeof(int));
#define AT(s, i) ((size_t)(s) * (size_t)(L + 1) + (size_t)(i))
    for (size_t i = 0; i < (size_t)(S + 1) * (size_t)(L + 1); i++) cost[i] = INFINITY;
    cost[AT(0, 0)] = 0.0;
    for (int s = 1; s <= S; s++) {
        for (int i = s; i <= L - (S - s); i++) {
            for (int j = s - 1; j < i; j++) {
                if (!isfinite(cost[AT(s - 1, j)])) continue;
                double w = P[i] - P[j] + (s == S ? tail : 0.0);
                double v = split_cost(cost[AT(s - 1, j)], w, bound);
                if (v < cost[AT(s, i)]) {
                    cost[AT(s, i)] = v;
                    from[AT(s, i)] = j;
                }
            }
        }
    }
    double best = cost[AT(S, L)];
    first[S] = L;
    for (int s = S, i = L; s > 0; s--) {
        i = from[AT(s, i)];
        first[s - 1] = i;
    }
#undef AT
    free(cost);
    free(from);
    return best;
}

void plan_split_stages(Plan *p)
{
    const ModelConfig *m = &p->cfg.model;
    const int L = m->num_hidden_layers, D = m->num_nextn_predict_layers;
    const int S = p->schedule == PLAN_DUALPIPEV ? 2 * p->cfg.parallel.pp : p->cfg.parallel.pp;
    p->n_stages = S;
    p->stages = xcalloc((size_t)S, sizeof(PlanStage));
    int *first = xcalloc((size_t)S + 1, sizeof(int));
    if (L >= S) {
        /* Stages are contiguous runs of layers that minimise the slowest stage's forward
         * time (the head and the MTP modules ride on the last stage, the embedding lookup on
         * the first costs nothing); among such splits, the most even one. */
        double *P = xcalloc((size_t)L + 1, sizeof(double));
        for (int l = 0; l < L; l++) P[l + 1] = P[l] + plan_item_seconds(p, &p->items[l]);
        double tail = plan_item_seconds(p, &p->items[L + D + 1]);
        for (int k = 0; k < D; k++) tail += plan_item_seconds(p, &p->items[L + k]);
        double worst = split_dp(P, L, S, tail, -1.0, first);
        double even = split_dp(P, L, S, tail, worst * (1.0 + 1e-9), first);
        CHECK(isfinite(even));
        free(P);
    } else {   /* an error is recorded; one layer per stage so the figures stay finite */
        for (int s = 0; s <= S; s++) first[s] = s < L ? s : L;
    }
    for (int s = 0; s < S; s++) {
        PlanStage *st = &p->stages[s];
        st->first_layer = first[s];
        st->n_layers = first[s + 1] - first[s];
        st->embedding = s == 0;
        st->head = s == S - 1;
        st->n_mtp = st->head ? D : 0;
        for (int l = st->first_layer; l < st->first_layer + st->n_layers; l++) {
            st->params += p->items[l].params;
            st->n_moe += p->items[l].moe;
        }
        if (st->head)
            for (int k = 0; k <= D; k++) {   /* MTP modules, then the head */
                const PlanItem *it = &p->items[k < D ? L + k : L + D + 1];
                st->params += it->params;
                st->n_moe += it->moe;
            }
        if (st->embedding) st->params += p->items[L + D].params;
    }
    free(first);
}

int plan_stage_items(const Plan *p, int s, int *idx)
{
    const PlanStage *st = &p->stages[s];
    const int L = p->cfg.model.num_hidden_layers, D = p->cfg.model.num_nextn_predict_layers;
    int n = 0;
    if (st->embedding) idx[n++] = L + D;
    for (int l = st->first_layer; l < st->first_layer + st->n_layers; l++) idx[n++] = l;
    if (st->head) {
        for (int k = 0; k < D; k++) idx[n++] = L + k;
        idx[n++] = L + D + 1;
    }
    return n;
}

/* Train's own figures at pp 1 (Plan.build_act_bytes): the model's planning code counts its
 * arenas without allocating them. Activations are FP32 containers on every backend of this
 * build (kernels/ops.h: act_bytes 4), whatever train.precision rounds them to. */
static void plan_build_arenas(Plan *p)
{
    const Config *c = &p->cfg;
    const ModelConfig *m = &c->model;
    p->build_act_bytes = p->build_scratch_bytes = -1.0;
    if (c->parallel.pp != 1 || strcmp(m->attention, "mla") || m->num_nextn_predict_layers > MTP_MAX ||
        c->train.seq_len <= m->num_nextn_predict_layers || c->parallel.ep < 1 ||
        (m->n_routed_experts > 0 && m->n_routed_experts % c->parallel.ep))
        return;
    Ops o;
    memset(&o, 0, sizeof o);
    o.act_bytes = sizeof(float);
    ModelBytes mb;
    model_plan_bytes(m, &o, c->train.micro_batch_size, c->train.seq_len,
                     MODEL_TRAIN | (c->train.recompute ? MODEL_RECOMPUTE : 0), c->parallel.ep, c->moe.capacity_factor,
                     &mb);
    p->build_act_bytes = (double)mb.acts;
    p->build_scratch_bytes = (double)mb.scratch;
}

/* Stage activations per micro-batch and, per rank, parameters, gradients, optimizer state
 * (ZeRO-1), activations at the schedule's peak and the logits workspace. Conventions (SPEC 6):
 * compute copies BF16 (FP32 at fp32, where the master is the compute copy; at fp8 the FP8
 * Linear weights as codes + transposed codes + 128x128 block scales, copy_bytes), the router bias
 * FP32 state; gradients FP32 for every trained parameter held (ZeRO-1 shards only optimizer
 * state); FP32 master + two AdamW moments (BF16 when train.bf16_moments resolves true, else FP32) sharded
 * over the ranks that replicate the parameter: dp for dense ones, dp/ep for routed experts.
 * DualPipe's two copies of a stage keep separate optimizer shards (2x everything, SPEC 8). */
void plan_memory(Plan *p)
{
    const Config *c = &p->cfg;
    const int fp32 = !strcmp(c->train.precision, "fp32");
    const double ob = (fp32 ? 0.0 : 4.0) + 2.0 * (train_bf16_moments(&c->train) ? 2.0 : 4.0);
    const double dp = c->parallel.dp, dpe = fmax(1.0, dp / c->parallel.ep);
    const double N = (double)c->train.micro_batch_size * c->train.seq_len;
    const int pp = c->parallel.pp, C = c->train.grad_accum, S = p->n_stages;
    const int L = c->model.num_hidden_layers, D = c->model.num_nextn_predict_layers;
    int *idx = xcalloc((size_t)p->n_items, sizeof(int));
    for (int s = 0; s < S; s++) {
        int n = plan_stage_items(p, s, idx);
        for (int k = 0; k < n; k++) p->stages[s].act_bytes += N * p->items[idx[k]].act_token;
    }
    const int dual = p->schedule == PLAN_DUALPIPE || p->schedule == PLAN_DUALPIPEV;
    p->n_ranks = pp;
    p->ranks = xcalloc((size_t)pp, sizeof(PlanRank));
    p->peak_rank = 0;
    p->peak_rank_bytes = 0.0;
    for (int r = 0; r < pp; r++) {
        PlanRank *rk = &p->ranks[r];
        rk->n_chunks = dual ? 2 : 1;
        rk->chunk[0] = r;
        rk->chunk[1] = dual ? S - 1 - r : -1;
        rk->embedding_copy = !dual && D > 0 && pp > 1 && r == pp - 1;
        double repl = 0.0, expert = 0.0, state = 0.0, act = 0.0, copies = 0.0;
        int head = 0;
        for (int k = 0; k < rk->n_chunks; k++) {
            int s = rk->chunk[k];
            int n = plan_stage_items(p, s, idx);
            for (int j = 0; j < n; j++) {
                const PlanItem *it = &p->items[idx[j]];
                repl += it->replicated;
                expert += it->expert_rank;
                state += it->state;
                copies += it->copy_replicated + it->copy_expert_rank;
            }
            act += p->stages[s].act_bytes;
            head |= p->stages[s].head;
        }
        if (rk->embedding_copy) {
            repl += p->items[L + D].replicated;
            copies += p->items[L + D].copy_replicated;
        }
        rk->replicated = repl;
        rk->expert = expert;
        rk->params = repl + expert + state;
        rk->weight_bytes = copies + state * 4.0;
        rk->grad_bytes = (repl + expert) * 4.0;
        rk->optim_bytes = repl * ob / dp + expert * ob / dpe;
        rk->act_chunk_bytes = act / rk->n_chunks;
        /* SPEC 8: 1F1B/ZB1P rank r holds pp - r micro-batches of its stage at the peak;
         * DualPipe(V) holds S + 1 chunk activations over its two chunks. */
        rk->in_flight = dual ? fmin(S + 1.0, 2.0 * C) : fmin((double)C, (double)(pp - r));
        rk->act_bytes = rk->in_flight * rk->act_chunk_bytes;
        /* One micro-batch's FP32 logits while the loss and its gradient are formed. */
        rk->workspace_bytes = head ? N * c->model.vocab_size * 4.0 : 0.0;
        rk->total_bytes = rk->weight_bytes + rk->grad_bytes + rk->optim_bytes + rk->act_bytes +
                          rk->workspace_bytes;
        if (rk->total_bytes > p->peak_rank_bytes) {
            p->peak_rank_bytes = rk->total_bytes;
            p->peak_rank = r;
        }
    }
    p->hbm_bytes = c->cluster.hbm_gib * 1073741824.0;
    const ModelConfig *m = &c->model;
    p->pool_factor = plan_pool_factor(c);
    p->pool_layer_bytes = N * p->pool_factor * m->num_experts_per_tok *
                          (m->hidden_size + 2.0 * m->moe_intermediate_size) * linear_input_bytes(c);
    free(idx);
    plan_build_arenas(p);
}
