/* runtime/plan_time.c - the planner's times: compute at an assumed MFU, MoE all-to-all over
 * NVLink and InfiniBand, pipeline chunk times, bubble and step time per schedule.
 *
 * Not here: memory (plan_layout.c), FLOPs formulas (model/flops.c).
 * References: DeepSeek-V3 TR 3.2.1 (DualPipe, its bubble table, F/B/W/F&B), 3.2.2
 * (node-limited dispatch: one IB send per remote node, then NVLink forwarding, as in DeepEP),
 * 3.3.3 (FP8 dispatch, BF16 combine); SPEC.md section 8.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "runtime/pipeline/schedule.h"
#include "plan.h"

/* Seconds per token of an item's forward: FP8 GEMMs at the FP8 peak, the rest (BF16 GEMMs,
 * attention core) at the BF16 peak, both times the assumed MFU. fp32 runs are timed at the
 * BF16 peak too (the plan is for GPU runs). */
static double item_seconds(const Plan *p, const PlanItem *it, int with_attention)
{
    const ClusterConfig *k = &p->cfg.cluster;
    double r8 = k->peak_tflops_fp8 * 1e12 * k->mfu, r16 = k->peak_tflops_bf16 * 1e12 * k->mfu;
    return it->mm_fp8 / r8 + (it->mm_bf16 + (with_attention ? it->attn : 0.0)) / r16;
}

double plan_item_seconds(const Plan *p, const PlanItem *it) { return item_seconds(p, it, 1); }

/* One all-to-all: NVLink and IB transfers run at once (DeepEP pipelines IB arrival into
 * NVLink forwarding), so the slower side sets the time, plus one latency for that side. */
static double a2a_seconds(const ClusterConfig *k, double ib_bytes, double nvlink_bytes)
{
    double ib = ib_bytes > 0 ? ib_bytes / (k->ib_gbps * 1e9) + k->ib_latency_us * 1e-6 : 0.0;
    double nv = nvlink_bytes > 0 ? nvlink_bytes / (k->nvlink_gbps * 1e9) + k->nvlink_latency_us * 1e-6 : 0.0;
    return ib > nv ? ib : nv;
}

/* Expected traffic of one MoE layer per micro-batch on one GPU (every GPU alike), model:
 *   The EP group's ep ranks are consecutive: g = min(ep, gpus_per_node) per node on
 *   n = ceil(ep / g) nodes. A token reaches R = min(max_nodes, n, K) nodes (node-limited
 *   routing; the home node is one of them with probability 1/n under balanced routing) and
 *   k = K/R of its experts on each. Within a node the k experts hit
 *   d = g * (1 - (1 - 1/g)^k) distinct GPUs (experts drawn independently and uniformly).
 *   IB: one copy per remote reached node:      copies_ib     = R * (n - 1) / n
 *   NVLink: in every reached node the GPU holding the token (its home GPU, or the one the IB
 *   copy lands on) forwards it to the targets other than itself:  copies_nvlink = R * d * (g-1)/g
 *   Dispatch payload per copy: C bytes + one FP32 scale per 128 values at fp8, 2C at bf16,
 *   4C at fp32; combine per copy 2C (4C at fp32), the same copy counts in reverse.
 *   Backward: the combine's gradient is dispatch-shaped and the dispatch's combine-shaped,
 *   both in the combine format: twice the combine traffic. */
static void moe_traffic(Plan *p)
{
    const Config *c = &p->cfg;
    const ClusterConfig *k = &c->cluster;
    PlanComm *m = &p->comm;
    const int ep = c->parallel.ep, gpn = k->gpus_per_node;
    const double K = c->model.num_experts_per_tok, C = c->model.hidden_size;
    m->ep_gpus_per_node = ep < gpn ? ep : gpn;
    m->ep_nodes = (ep + m->ep_gpus_per_node - 1) / m->ep_gpus_per_node;
    int reach = c->moe.max_nodes < m->ep_nodes ? c->moe.max_nodes : m->ep_nodes;
    m->reach_nodes = reach < (int)K ? reach : (int)K;
    const double g = m->ep_gpus_per_node, n = m->ep_nodes, R = m->reach_nodes;
    m->gpus_per_reached_node = g * (1.0 - pow(1.0 - 1.0 / g, K / R));
    m->copies_ib = R * (n - 1.0) / n;
    m->copies_nvlink = R * m->gpus_per_reached_node * (g - 1.0) / g;
    if (!strcmp(c->train.precision, "fp8")) m->dispatch_copy_bytes = C + ceil(C / 128.0) * 4.0;
    else m->dispatch_copy_bytes = C * (strcmp(c->train.precision, "fp32") ? 2.0 : 4.0);
    m->combine_copy_bytes = C * (strcmp(c->train.precision, "fp32") ? 2.0 : 4.0);
    m->dispatch_ib_bytes = m->tokens * m->copies_ib * m->dispatch_copy_bytes;
    m->dispatch_nvlink_bytes = m->tokens * m->copies_nvlink * m->dispatch_copy_bytes;
    m->dispatch_s = a2a_seconds(k, m->dispatch_ib_bytes, m->dispatch_nvlink_bytes);
    m->combine_ib_bytes = m->tokens * m->copies_ib * m->combine_copy_bytes;
    m->combine_nvlink_bytes = m->tokens * m->copies_nvlink * m->combine_copy_bytes;
    m->combine_s = a2a_seconds(k, m->combine_ib_bytes, m->combine_nvlink_bytes);
    m->backward_ib_bytes = 2.0 * m->combine_ib_bytes;
    m->backward_nvlink_bytes = 2.0 * m->combine_nvlink_bytes;
    m->backward_s = 2.0 * m->combine_s;
}

/* Communication per micro-batch and per step; needs plan_memory's ranks. */
void plan_comm(Plan *p)
{
    const Config *c = &p->cfg;
    const ClusterConfig *k = &c->cluster;
    PlanComm *m = &p->comm;
    memset(m, 0, sizeof *m);
    m->tokens = (double)c->train.micro_batch_size * c->train.seq_len;
    const PlanItem *moe = NULL;
    for (int i = 0; i < p->n_items && !moe; i++)
        if (p->items[i].moe) moe = &p->items[i];
    if (moe) {
        m->moe = 1;
        moe_traffic(p);
        m->layer_fwd_s = m->tokens * plan_item_seconds(p, moe);
        m->layer_bwd_s = 2.0 * m->layer_fwd_s;
        /* 0 when nothing leaves the GPU (ep = 1): no ratio to hide */
        m->ratio_fwd = m->combine_s > 0 ? m->layer_fwd_s / (m->dispatch_s + m->combine_s) : 0.0;
        m->ratio_bwd = m->backward_s > 0 ? m->layer_bwd_s / m->backward_s : 0.0;
    }
    /* PP: one activation (N, C) per micro-batch per stage boundary; ranks are ordered with DP
     * innermost, so neighbouring stages are a node apart once dp fills a node. */
    const double a = strcmp(c->train.precision, "fp32") ? 2.0 : 4.0;
    if (c->parallel.pp > 1 || p->n_stages > 1) {
        m->p2p_ib = c->parallel.dp >= k->gpus_per_node;
        m->p2p_bytes = m->tokens * c->model.hidden_size * a;
        m->p2p_s = m->p2p_ib ? m->p2p_bytes / (k->ib_gbps * 1e9) + k->ib_latency_us * 1e-6
                             : m->p2p_bytes / (k->nvlink_gbps * 1e9) + k->nvlink_latency_us * 1e-6;
    }
    /* ZeRO-1 per step, ring collectives: reduce-scatter the FP32 gradients and all-gather the
     * updated compute copies, each moving (n-1)/n of the data per rank, over the dp ranks
     * (dp/ep for routed experts); over IB once the DP group spans nodes. The rank with the
     * most traffic sets the time. */
    const double dp = c->parallel.dp, dpe = fmax(1.0, dp / c->parallel.ep);
    const double wb = strcmp(c->train.precision, "fp32") ? 2.0 : 4.0;
    const double bw = (c->parallel.dp > k->gpus_per_node ? k->ib_gbps : k->nvlink_gbps) * 1e9;
    m->dp_ib = c->parallel.dp > k->gpus_per_node;
    for (int r = 0; r < p->n_ranks; r++) {
        const PlanRank *rk = &p->ranks[r];
        double share = rk->replicated * (dp - 1.0) / dp + rk->expert * (dpe - 1.0) / dpe;
        m->dp_rs_bytes = fmax(m->dp_rs_bytes, 4.0 * share);
        m->dp_ag_bytes = fmax(m->dp_ag_bytes, wb * share);
    }
    m->dp_rs_s = m->dp_rs_bytes / bw;
    m->dp_ag_s = m->dp_ag_bytes / bw;
}

/* Per-stage chunk times (TR 3.2.1 notation: F forward chunk, B full backward chunk, W its
 * weight-gradient part, F&B an overlapped forward/backward pair):
 *   F = N * forward seconds per token of the stage's items; B = 2F (flops.h); W = the matmul
 *   part of F (weight gradients repeat every forward GEMM once; the attention core has no
 *   weights); the input-gradient part B - W holds the rest. A standalone chunk does not hide
 *   its MoE all-to-all: F' = F + a2a_fwd, B' = B + a2a_bwd; a pair hides one under the other:
 *   F&B = max(F + B, a2a_fwd + a2a_bwd). */
static void stage_times(Plan *p)
{
    const PlanComm *m = &p->comm;
    int *idx = xcalloc((size_t)p->n_items, sizeof(int));
    for (int s = 0; s < p->n_stages; s++) {
        PlanStage *st = &p->stages[s];
        double sec = 0.0, mm = 0.0, flops = 0.0;
        int n = plan_stage_items(p, s, idx);
        for (int j = 0; j < n; j++) {
            const PlanItem *it = &p->items[idx[j]];
            sec += item_seconds(p, it, 1);
            mm += item_seconds(p, it, 0);
            flops += it->mm_fp8 + it->mm_bf16 + it->attn;
        }
        st->fwd_flops = flops;
        st->f_s = m->tokens * sec;
        st->b_s = 2.0 * st->f_s;
        st->w_s = m->tokens * mm;
        st->a2a_fwd_s = st->n_moe * (m->dispatch_s + m->combine_s);
        st->a2a_bwd_s = st->n_moe * m->backward_s;
        st->fb_s = fmax(st->f_s + st->b_s, st->a2a_fwd_s + st->a2a_bwd_s);
    }
    free(idx);
}

/* Time the configured schedule's instruction lists (runtime/pipeline/schedule.h) under the
 * stages' times, each pipeline transfer delaying its receiver by the p2p time. The pipeline
 * time is the simulated makespan; the bubble is what the busiest rank idles in it (makespan
 * minus its compute, unoverlapped all-to-all included). A layout the schedule cannot run
 * (its error already recorded) gets the busiest rank's compute and no bubble. */
static int simulate_lists(const Plan *p, Schedule *sc, SchedSim *sim)
{
    const int C = p->pipe.micro_batches, pn = p->cfg.parallel.pp;
    char err[SCHED_ERR_MAX];
    if (sched_validate((SchedKind)p->schedule, pn, C, p->cfg.model.num_hidden_layers, err, sizeof err) ||
        sched_stages((SchedKind)p->schedule, pn) != p->n_stages)
        return -1;
    SchedCost *cost = xcalloc((size_t)p->n_stages, sizeof *cost);
    for (int s = 0; s < p->n_stages; s++) {
        const PlanStage *st = &p->stages[s];
        cost[s] = (SchedCost){ st->f_s, st->b_s, st->w_s, st->a2a_fwd_s, st->a2a_bwd_s };
    }
    sched_build(sc, (SchedKind)p->schedule, pn, C);
    sched_simulate(sc, cost, p->comm.p2p_s, sim);
    free(cost);
    return 0;
}

static void simulate(Plan *p)
{
    PlanPipe *pp = &p->pipe;
    Schedule sc;
    SchedSim sim;
    if (simulate_lists(p, &sc, &sim)) {
        pp->pipeline_s = pp->micro_batches * (pp->f_s + pp->b_s);
        pp->bubble_s = 0.0;
        return;
    }
    double busiest = 0.0;
    for (int r = 0; r < sim.pp; r++) busiest = fmax(busiest, sim.busy[r]);
    pp->pipeline_s = sim.makespan;
    pp->bubble_s = sim.makespan - busiest;
    sched_sim_free(&sim);
    sched_free(&sc);
}

void plan_print_timeline(const Plan *p, int cols, FILE *f)
{
    Schedule sc;
    SchedSim sim;
    if (simulate_lists(p, &sc, &sim)) {
        fprintf(f, "timeline: none, schedule '%s' cannot run this layout\n", plan_schedule_name(p->schedule));
        return;
    }
    fprintf(f, "timeline (%s, %d micro-batches, %d columns of %.4g ms; F B W forward, backward input,\n"
            "backward weight, X an overlapped F&B; upper case first chunk, lower case second; . idle)\n",
            plan_schedule_name(p->schedule), p->pipe.micro_batches, cols,
            1e3 * sim.makespan / cols);
    sched_print_ascii(&sc, &sim, cols, f);
    for (int r = 0; r < sim.pp; r++)
        fprintf(f, "  rank %2d busy %.4g s, idle %.4g s, at most %d micro-batch chunks in flight\n", r,
                sim.busy[r], sim.idle[r], sim.peak_in_flight[r]);
    sched_sim_free(&sim);
    sched_free(&sc);
}

/* Chunk times, the simulated pipeline and the step; needs plan_memory's ranks and plan_comm.
 *   Per rank, chunk times are the mean over the chunks it holds (DualPipe: C/2 micro-batches
 *   through each of its two stages; DualPipeV: every micro-batch through both); F', B', W,
 *   F&B below are each the max over ranks of those means (reported, not used for the step).
 *   The step adds what the ZeRO-1 DP sync does not hide: the reduce-scatter runs under the
 *   last micro-batch's backward B' (bucketed, as DDP does), the all-gather under the next
 *   step's first forward F':  exposed = max(0, rs - B') + max(0, ag - F'). */
void plan_pipeline(Plan *p)
{
    const Config *c = &p->cfg;
    PlanPipe *pp = &p->pipe;
    const PlanComm *m = &p->comm;
    memset(pp, 0, sizeof *pp);
    pp->stages = p->n_stages;
    pp->micro_batches = c->train.grad_accum;
    stage_times(p);
    for (int r = 0; r < p->n_ranks; r++) {
        const PlanRank *rk = &p->ranks[r];
        double f = 0.0, b = 0.0, w = 0.0, fb = 0.0;
        for (int k = 0; k < rk->n_chunks; k++) {
            const PlanStage *st = &p->stages[rk->chunk[k]];
            f += (st->f_s + st->a2a_fwd_s) / rk->n_chunks;
            b += (st->b_s + st->a2a_bwd_s) / rk->n_chunks;
            w += st->w_s / rk->n_chunks;
            fb += st->fb_s / rk->n_chunks;
        }
        pp->f_s = fmax(pp->f_s, f);
        pp->b_s = fmax(pp->b_s, b);
        pp->w_s = fmax(pp->w_s, w);
        pp->fb_s = fmax(pp->fb_s, fb);
    }
    const double C = pp->micro_batches;
    simulate(p);
    pp->dp_exposed_s = fmax(0.0, m->dp_rs_s - pp->b_s) + fmax(0.0, m->dp_ag_s - pp->f_s);
    pp->step_s = pp->pipeline_s + pp->dp_exposed_s;
    pp->bubble_share = pp->step_s > 0 ? pp->bubble_s / pp->step_s : 0.0;
    pp->tokens_per_step = C * m->tokens * c->parallel.dp;
    pp->tokens_per_s_per_gpu = pp->tokens_per_step / (pp->step_s * p->world);
    pp->gpu_hours_per_trillion = 1e12 / pp->tokens_per_s_per_gpu / 3600.0;
    pp->model_tflops_per_gpu = p->flops.training_with_mtp * pp->tokens_per_s_per_gpu / 1e12;
    pp->mfu_bf16 = pp->model_tflops_per_gpu / c->cluster.peak_tflops_bf16;
}
