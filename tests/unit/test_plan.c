/* tests/unit/test_plan.c - dstrain plan: every formula on a tiny config computed by hand,
 * DeepSeek-V3 671B and two dense models against their published parameter counts, and the
 * layouts that cannot run.
 *
 * The tiny config's figures are worked out in the comments beside each check from the
 * tensor shapes alone (model/params.h), so a change in any planner formula shows up here.
 * Tolerance of the exact checks: every figure is a few dozen double operations on small
 * integers and short decimals, each rounding by at most 2^-53 relative, so a relative
 * 1e-12 is ~100x the worst accumulated rounding and far below any formula change.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "model/flops.h"
#include "model/params.h"
#include "runtime/config.h"
#include "runtime/pipeline/schedule.h"
#include "runtime/plan.h"
#include "tests/unit/testing.h"

#define REL 1e-12
#define NEAR(a, b) (fabs((double)(a) - (double)(b)) <= REL * fmax(1.0, fabs((double)(b))))
#define EXPECT_NEAR(a, b) EXPECT(NEAR(a, b), "%s = %.17g, expected %.17g", #a, (double)(a), (double)(b))
#define EXPECT_EQ(a, b) EXPECT((long long)(a) == (long long)(b), "%s = %lld, expected %lld", #a, \
                               (long long)(a), (long long)(b))

/* V=10 C=8 I=12 F=4 L=4 (layer 0 dense, 1-3 MoE) H=2 E=4 shared 1 K=2 Rq=4 Rkv=4 Dn=Dr=Dv=2,
 * MTP D=1; T=8, B=2, C=4 micro-batches, bf16 with BF16 moments; pp 2, dp 4, ep 4, 1f1b;
 * 4 nodes x 2 GPUs; peak 1e6 FLOP/s BF16 (2e6 FP8) at MFU 0.5 = 5e5 FLOP/s; NVLink 1e4 B/s
 * + 1 ms, IB 5e3 B/s + 2 ms; one node per token (max_nodes 1). */
static void tiny_config(Config *c)
{
    config_defaults(c);
    ModelConfig *m = &c->model;
    m->vocab_size = 10;
    m->hidden_size = 8;
    m->intermediate_size = 12;
    m->moe_intermediate_size = 4;
    m->num_hidden_layers = 4;
    m->first_k_dense_replace = 1;
    m->num_attention_heads = 2;
    m->n_routed_experts = 4;
    m->n_shared_experts = 1;
    m->num_experts_per_tok = 2;
    m->n_group = 2;
    m->topk_group = 1;
    m->q_lora_rank = 4;
    m->kv_lora_rank = 4;
    m->qk_nope_head_dim = 2;
    m->qk_rope_head_dim = 2;
    m->v_head_dim = 2;
    m->num_nextn_predict_layers = 1;
    snprintf(m->attention, sizeof m->attention, "mla");
    c->train.seq_len = 8;
    c->train.micro_batch_size = 2;
    c->train.grad_accum = 4;
    snprintf(c->train.precision, sizeof c->train.precision, "bf16");
    snprintf(c->train.bf16_moments, sizeof c->train.bf16_moments, "true");
    c->train.recompute = 1;     /* SPEC 3's layout; test_tiny_no_recompute adds the rest */
    c->moe.max_nodes = 1;
    c->moe.capacity_factor = 1;   /* the expert-row pool at the mean load (test_tiny_pool varies it) */
    c->parallel.pp = 2;
    c->parallel.dp = 4;
    c->parallel.ep = 4;
    snprintf(c->parallel.schedule, sizeof c->parallel.schedule, "1f1b");
    ClusterConfig *k = &c->cluster;
    k->gpus_per_node = 2;
    k->nodes = 4;
    k->peak_tflops_bf16 = 1e-6;
    k->peak_tflops_fp8 = 2e-6;
    k->hbm_gib = 1;
    k->nvlink_gbps = 1e-5;
    k->ib_gbps = 5e-6;
    k->nvlink_latency_us = 1000;
    k->ib_latency_us = 2000;
    k->mfu = 0.5;
}

/* Per layer: attention matrices q_a 4x8=32, q_b (2*4)x4=32, kv_a (4+2)x8=48, kv_b (2*4)x4=32,
 * o 8x(2*2)=32 -> 176; norms input 8 + q_a 4 + kv_a 4 + post 8 -> 24. Dense FFN 3 x 12x8 = 288
 * (layer 0: 488). MoE: router 4x8=32 + bias 4, shared 3 x 4x8 = 96, experts 4 x 96 = 384
 * (layers 1-3: 716 each). MTP: enorm 8 + hnorm 8 + eh_proj 8x16=128 + block 716 + norm 8 = 868.
 * Embedding 80, final norm 8, head 80. */
static void test_tiny_params(const Plan *p, const ParamTable *t)
{
    size_t sum = 0;
    for (int i = 0; i < t->n; i++) sum += t->p[i].numel;
    EXPECT_EQ(p->params.total_with_mtp, sum);                    /* one source: the table */
    EXPECT_NEAR(p->params.active_with_mtp, params_active(t, &p->cfg.model));   /* train's figure */
    EXPECT_EQ(p->params.total, 80 + 488 + 3 * 716 + 8 + 80);     /* 2804 */
    EXPECT_EQ(p->params.role[ROLE_EMBED], 80);
    EXPECT_EQ(p->params.role[ROLE_HEAD], 80);
    EXPECT_EQ(p->params.role[ROLE_ATTN], 4 * 176);
    EXPECT_EQ(p->params.role[ROLE_NORM], 4 * 24 + 8);
    EXPECT_EQ(p->params.role[ROLE_DENSE_FFN], 288);
    EXPECT_EQ(p->params.role[ROLE_SHARED_EXPERT], 3 * 96);
    EXPECT_EQ(p->params.role[ROLE_ROUTED_EXPERT], 3 * 384);
    EXPECT_EQ(p->params.role[ROLE_ROUTER], 3 * 36);
    EXPECT_EQ(p->params.role_active[ROLE_ROUTED_EXPERT], 3 * 384 * 2 / 4);   /* K/E = 2/4 */
    EXPECT_EQ(p->params.active, 2804 - 3 * 192);                              /* 2228 */
    EXPECT_EQ(p->params.active_no_embedding, 2228 - 80);
    EXPECT_EQ(p->params.mtp, 868);
    EXPECT_EQ(p->params.mtp_active, 868 - 192);
    EXPECT_EQ(p->params.total_with_mtp, 2804 + 868);
    EXPECT_EQ(p->params.active_with_mtp, 2228 + 676);
}

/* Forward matmul per token = 2 x activated matmul params: layer 0 (176 + 288) -> 928; MoE
 * layer (176 + router 32 + shared 96 + experts 384*2/4) -> 992; head 80 -> 160:
 * 928 + 3*992 + 160 = 4064. Attention core per layer H*T*(Dqk+Dv) = 2*8*(4+2) = 96.
 * MTP: (eh_proj 128 + 496) * 2 + head pass 160 = 1408, plus 96. */
static void test_tiny_flops(const Plan *p, const Config *c)
{
    EXPECT_NEAR(p->flops.matmul, 4064);
    EXPECT_NEAR(p->flops.attention_layer, 96);
    EXPECT_NEAR(p->flops.attention, 384);
    EXPECT_NEAR(p->flops.forward, 4448);
    EXPECT_NEAR(p->flops.training, 3 * 4448);
    EXPECT_NEAR(p->flops.matmul_mtp, 1408);
    EXPECT_NEAR(p->flops.forward_with_mtp, 4448 + 1504);
    EXPECT_NEAR(p->flops.training_with_mtp, 3 * 5952);
    EXPECT_NEAR(flops_per_token(&c->model, 8, 1), 17856);        /* what train's MFU uses */
    EXPECT_NEAR(flops_per_token(&c->model, 8, 0), 13344);
    EXPECT_NEAR(flops_forward_per_token(&c->model, 16, 0), 4064 + 4 * 192);   /* T=16: 2x core */
    /* KV cache: (Rkv + Dr) * 2 bytes = 12 per layer per token, 4 layers, 8 tokens */
    EXPECT_NEAR(p->kv.bytes_per_token_layer, 12);
    EXPECT_NEAR(p->kv.bytes_per_token, 48);
    EXPECT_NEAR(p->kv.bytes_per_sequence, 384);
}

/* Stage split (1f1b, 2 stages). Forward FLOPs per token: dense layer 928+96 = 1024, MoE layer
 * 992+96 = 1088, tail (MTP 1504 + head 160) = 1664. Splits: {0}|{1,2,3}+tail max 4928;
 * {0,1}|{2,3}+tail 3840; {0,1,2}|{3}+tail max(3200, 2752) = 3200 -> the last.
 * Times at 5e5 FLOP/s for N = 16 tokens: F0 = 16*3200/5e5, F1 = 16*2752/5e5; W is the matmul
 * part: W0 = 16*(928+2*992)/5e5, W1 = 16*(992+1408+160)/5e5; B = 2F. */
static void test_tiny_stages(const Plan *p)
{
    EXPECT_EQ(p->n_stages, 2);
    const PlanStage *s0 = &p->stages[0], *s1 = &p->stages[1];
    EXPECT(s0->first_layer == 0 && s0->n_layers == 3 && s0->embedding && !s0->head, "stage 0 = layers 0-2");
    EXPECT(s1->first_layer == 3 && s1->n_layers == 1 && s1->head && s1->n_mtp == 1, "stage 1 = layer 3 + MTP");
    EXPECT_EQ(s0->params, 80 + 488 + 2 * 716);
    EXPECT_EQ(s1->params, 716 + 868 + 88);
    EXPECT_EQ(s0->n_moe, 2);
    EXPECT_EQ(s1->n_moe, 2);
    EXPECT_NEAR(s0->fwd_flops, 3200);
    EXPECT_NEAR(s1->fwd_flops, 2752);
    EXPECT_NEAR(s0->f_s, 0.1024);
    EXPECT_NEAR(s1->f_s, 0.088064);
    EXPECT_NEAR(s0->b_s, 0.2048);
    EXPECT_NEAR(s0->w_s, 0.093184);
    EXPECT_NEAR(s1->w_s, 0.08192);
}

/* All-to-all: ep 4 on 2 GPUs per node -> g = 2, n = 2 nodes; R = min(max_nodes 1, 2, K 2) = 1;
 * k = K/R = 2 experts in the node, d = 2*(1 - (1/2)^2) = 1.5 GPUs; IB copies R*(n-1)/n = 0.5,
 * NVLink copies R*d*(g-1)/g = 0.75 per token. BF16 copy 2C = 16 bytes, N = 16 tokens:
 * IB 16*0.5*16 = 128 B -> 128/5000 + 0.002 = 0.0276 s; NVLink 192 B -> 0.0202 s; the slower
 * wins. Combine alike; backward twice the combine. MoE layer compute 16*1088/5e5 = 0.034816 s. */
static void test_tiny_comm(const Plan *p)
{
    const PlanComm *m = &p->comm;
    EXPECT(m->moe, "tiny has MoE layers");
    EXPECT_EQ(m->ep_gpus_per_node, 2);
    EXPECT_EQ(m->ep_nodes, 2);
    EXPECT_EQ(m->reach_nodes, 1);
    EXPECT_NEAR(m->gpus_per_reached_node, 1.5);
    EXPECT_NEAR(m->copies_ib, 0.5);
    EXPECT_NEAR(m->copies_nvlink, 0.75);
    EXPECT_NEAR(m->dispatch_copy_bytes, 16);
    EXPECT_NEAR(m->dispatch_ib_bytes, 128);
    EXPECT_NEAR(m->dispatch_nvlink_bytes, 192);
    EXPECT_NEAR(m->dispatch_s, 0.0276);
    EXPECT_NEAR(m->combine_s, 0.0276);
    EXPECT_NEAR(m->backward_ib_bytes, 256);
    EXPECT_NEAR(m->backward_s, 0.0552);
    EXPECT_NEAR(m->layer_fwd_s, 0.034816);
    EXPECT_NEAR(m->ratio_fwd, 0.034816 / 0.0552);
    EXPECT_NEAR(m->ratio_bwd, 0.069632 / 0.0552);
    /* PP send: N*C*2 = 256 B over IB (dp 4 >= 2 GPUs per node): 256/5000 + 0.002 */
    EXPECT(m->p2p_ib, "stages a node apart");
    EXPECT_NEAR(m->p2p_bytes, 256);
    EXPECT_NEAR(m->p2p_s, 0.0532);
}

/* Memory, 1f1b. Weights 2 B, gradients 4 B, optimizer 4 + 2*2 = 8 B over dp = 4 (experts over
 * dp/ep = 1); router bias 4 B state. Rank 0 = embedding 80 + layer 0 488 + 2 x (328 replicated
 * + 96 experts per rank + 4 bias): replicated 1224, experts 192, state 8. Rank 1 = layer 3
 * (328/96/4) + MTP (480/96/4) + head 88 + a copy of the embedding 80: 976 / 192 / 8.
 * Activations per token (a = q = 2 B): MLA part 2C*2 + H*4 + Rq*2 + (Rkv+Dr)*2 + H*Dv*2 = 68;
 * dense + 2I*2 = 116; MoE + E*4 + K*8 + 2Fs*2 + K*C*2 + K*2F*2 = 180; MTP 180 + 3C*2 + 4 = 232;
 * embedding 8; head C*2 + 4 = 20. Stage 0: (8 + 116 + 180 + 180) * 16 = 7744 B, stage 1:
 * (180 + 232 + 20) * 16 = 6912 B. In flight: rank 0 min(4, 2) = 2, rank 1 one. Logits
 * workspace on rank 1: 16 * 10 * 4 = 640 B. */
static void test_tiny_memory(const Plan *p)
{
    const PlanRank *r0 = &p->ranks[0], *r1 = &p->ranks[1];
    EXPECT_NEAR(p->stages[0].act_bytes, 7744);
    EXPECT_NEAR(p->stages[1].act_bytes, 6912);
    EXPECT_NEAR(r0->params, 1424);
    EXPECT_NEAR(r0->weight_bytes, 1416 * 2 + 8 * 4);
    EXPECT_NEAR(r0->grad_bytes, 1416 * 4);
    EXPECT_NEAR(r0->optim_bytes, 1224 * 8 / 4.0 + 192 * 8);
    EXPECT_NEAR(r0->in_flight, 2);
    EXPECT_NEAR(r0->act_bytes, 15488);
    EXPECT_NEAR(r0->workspace_bytes, 0);
    EXPECT_NEAR(r0->total_bytes, 2864 + 5664 + 3984 + 15488);     /* 28000 */
    EXPECT(r1->embedding_copy, "rank 1 keeps an embedding copy for MTP");
    EXPECT_NEAR(r1->params, 1176);
    EXPECT_NEAR(r1->optim_bytes, 976 * 8 / 4.0 + 192 * 8);
    EXPECT_NEAR(r1->in_flight, 1);
    EXPECT_NEAR(r1->workspace_bytes, 640);
    EXPECT_NEAR(r1->total_bytes, 2368 + 4672 + 3488 + 6912 + 640);   /* 18080 */
    EXPECT_EQ(p->peak_rank, 0);
    EXPECT_NEAR(p->peak_rank_bytes, 28000);
}

/* Pipeline, 1f1b: each stage has 2 MoE blocks, a2a 2*(0.0276+0.0276) = 0.1104 each way.
 * Rank 0 is the busier: F' = 0.1024 + 0.1104 = 0.2128, B' = 0.2048 + 0.1104 = 0.3152,
 * W = 0.093184; rank 1 (stage 1): F' 0.088064 + 0.1104 = 0.198464, B' 0.286528, W 0.08192.
 * The simulator runs the 1F1B lists, each transfer taking p2p 256 B / 5000 + 2 ms = 0.0532 s
 * (IB: dp 4 fills a node of 2), every instruction as soon as its rank and input allow:
 *   r0 F0 [0, .2128] F1 [.2128, .4256]
 *   r1 F0 [.266, .464464] B0 [.464464, .750992] F1 [.750992, .949456] B1 [.949456, 1.235984]
 *   r0 B0 [.804192, 1.119392] F2 [1.119392, 1.332192] B1 [1.332192, 1.647392] F3 [.., 1.860192]
 *   r1 F2 [1.385392, 1.583856] B2 [.., 1.870384] F3 [1.913392, 2.111856] B3 [.., 2.398384]
 *   r0 B2 [1.923584, 2.238784] B3 [2.451584, 2.766784]
 * pipeline 2.766784; rank 0 computes 4 * 0.528 = 2.112, so the bubble is 0.654784 (the old
 * closed form (S-1)(F'+B') = 0.528 left out the two transfers on the critical path and the
 * lighter last stage). DP sync (IB: dp 4 > 2 per node): rank 0 moves 1224 * 3/4 = 918
 * params (experts: dp/ep = 1, nothing): reduce-scatter 4*918 B / 5000 = 0.7344 s, all-gather
 * 2*918 B -> 0.3672 s; exposed (0.7344 - 0.3152) + (0.3672 - 0.2128) = 0.5736. Step
 * 3.340384 s; 256 tokens per step (4 micro-batches * 16 tokens * dp 4) on 8 GPUs. */
static void test_tiny_pipeline(const Plan *p)
{
    const PlanPipe *q = &p->pipe;
    const double step = 2.766784 + 0.5736;
    EXPECT_NEAR(q->f_s, 0.2128);
    EXPECT_NEAR(q->b_s, 0.3152);
    EXPECT_NEAR(q->w_s, 0.093184);
    EXPECT_NEAR(q->fb_s, 0.3072);               /* stage 0: max(F+B 0.3072, a2a 0.2208) */
    EXPECT_NEAR(p->comm.p2p_s, 0.0532);
    EXPECT_NEAR(q->bubble_s, 0.654784);
    EXPECT_NEAR(q->pipeline_s, 2.766784);
    EXPECT_NEAR(p->comm.dp_rs_bytes, 3672);
    EXPECT_NEAR(p->comm.dp_rs_s, 0.7344);
    EXPECT_NEAR(p->comm.dp_ag_s, 0.3672);
    EXPECT_NEAR(q->dp_exposed_s, 0.5736);
    EXPECT_NEAR(q->step_s, step);
    EXPECT_NEAR(q->bubble_share, 0.654784 / step);
    EXPECT_NEAR(q->tokens_per_step, 256);
    EXPECT_NEAR(q->tokens_per_s_per_gpu, 256 / (step * 8));
    EXPECT_NEAR(q->gpu_hours_per_trillion, 1e12 / (256 / (step * 8)) / 3600);
    EXPECT_NEAR(q->mfu_bf16, 17856 * 256 / (step * 8) / 1e6);
    /* ZB1P: B splits into B - W (rank 0: 0.222016, rank 1: 0.204608) and W; rank 1 runs
     * W(k-1) after B(k), rank 0 W(k) after B(k):
     *   r0 F0 [0, .2128] F1 [.., .4256]; r1 F0 [.266, .464464] B0 [.., .669072] F1 [.., .867536]
     *   B1 [.., 1.072144] W0 [.., 1.154064]; r0 B0 [.722272, .944288] W0 [.., 1.037472]
     *   F2 [.., 1.250272] B1 [.., 1.472288] W1 [.., 1.565472] F3 [.., 1.778272]; r1 F2
     *   [1.303472, 1.501936] B2 [.., 1.706544] W1 [.., 1.788464] F3 [1.831472, 2.029936]
     *   B3 [.., 2.234544]; r0 B2 [1.778272, 2.000288] W2 [.., 2.093472] B3 [2.287744, 2.50976]
     *   W3 [.., 2.602944]
     * bubble 2.602944 - 2.112 = 0.490944 (closed form: 0.341632) */
    EXPECT_NEAR(p->rows[PLAN_ZB1P].bubble_s, 0.490944);
    EXPECT_NEAR(p->rows[PLAN_ZB1P].step_s, 2.602944 + 0.5736);
    EXPECT(p->rows[PLAN_1F1B].valid && p->rows[PLAN_ZB1P].valid, "1f1b and zb1p run");
}

/* DualPipe (pp 2, the same 2-stage split): rank r holds stage r for micro-batches 0, 1 and
 * stage 1-r for 2, 3; the ranks mirror each other. Rank 0's list: F0 (st 0) F2 (st 1) F1 (st 0)
 * B2 (st 1, fused) FB(F3 st 1, B0 st 0) B3 (st 1) B1 (st 0, W deferred) W1. With F' and B'
 * above, the pair max(0.088064 + 0.2048, 0.1104 + 0.1104) = 0.292864:
 *   F0 [0, .2128] F2 [.266, .464464] F1 [.., .677264] B2 [.., .963792]
 *   FB [1.016992, 1.309856] B3 [.., 1.596384] B1 [1.649584, 1.8716] W1 [.., 1.964784]
 * Rank 0 computes 1.805184, so the bubble is 0.1596 (the closed form, 0 for pp 2 with the
 * whole step as 4 overlapped pairs, 1.142784, missed that C = 2 pp leaves one pair per rank).
 * Activations: min(S+1 = 3, 2C = 8) = 3 chunks of the mean (7744 + 6912)/2 = 7328 B. */
static void test_tiny_dualpipe(const Config *base)
{
    Config c = *base;
    snprintf(c.parallel.schedule, sizeof c.parallel.schedule, "dualpipe");
    Plan p;
    plan_compute(&p, &c);
    EXPECT_EQ(p.n_errors, 0);
    EXPECT_NEAR(p.pipe.fb_s, 0.285696);
    EXPECT_NEAR(p.pipe.bubble_s, 0.1596);
    EXPECT_NEAR(p.pipe.pipeline_s, 1.964784);
    EXPECT_NEAR(p.ranks[0].in_flight, 3);
    EXPECT_NEAR(p.ranks[0].act_bytes, 3 * 7328);
    EXPECT(!p.ranks[1].embedding_copy, "dualpipe puts embedding and head on one rank");
    plan_free(&p);
}

/* DualPipeV (pp 2 -> 4 stages of one layer; rank 0 holds stages 0 and 3, rank 1 stages 1, 2).
 * Stage 0 (embedding, layer 0): F 16*1024/5e5 = 0.032768, W 16*928/5e5 = 0.029696, no a2a,
 * F&B 3F = 0.098304. Stages 1, 2 (one MoE layer): F 0.034816, W 0.031744, a2a 0.0552 each way,
 * F&B max(0.104448, 0.1104) = 0.1104. Stage 3 (layer 3, MTP, head): F 0.088064, W 0.08192,
 * a2a 0.1104 each way, F&B max(0.264192, 0.2208) = 0.264192. Rank 0 means: F' (0.032768 +
 * 0.198464)/2 = 0.115616, B' (0.065536 + 0.286528)/2 = 0.176032, W 0.055808, F&B 0.181248.
 * The closed form gave (4/2-1)(0.181248 + 0.176032 - 3*0.055808) = 0.189856; the plan now
 * takes the simulated DualPipeV lists (runtime/pipeline, held to SPEC 8 by test_schedule) on
 * the stage times checked here and the 0.0532 s transfer: the same figures come back from
 * sched_simulate called directly. */
static void test_tiny_dualpipev(const Config *base)
{
    Config c = *base;
    snprintf(c.parallel.schedule, sizeof c.parallel.schedule, "dualpipev");
    Plan p;
    plan_compute(&p, &c);
    EXPECT_EQ(p.n_errors, 0);
    EXPECT_EQ(p.n_stages, 4);
    for (int s = 0; s < 4; s++) EXPECT(p.stages[s].first_layer == s && p.stages[s].n_layers == 1, "stage %d", s);
    EXPECT(p.ranks[0].chunk[0] == 0 && p.ranks[0].chunk[1] == 3, "rank 0 holds stages 0 and 3");
    EXPECT_NEAR(p.stages[0].fb_s, 0.098304);
    EXPECT_NEAR(p.stages[1].fb_s, 0.1104);
    EXPECT_NEAR(p.pipe.f_s, 0.115616);
    EXPECT_NEAR(p.pipe.b_s, 0.176032);
    EXPECT_NEAR(p.pipe.w_s, 0.055808);
    EXPECT_NEAR(p.pipe.fb_s, 0.181248);
    Schedule sc;
    SchedSim sim;
    SchedCost cost[4];
    for (int s = 0; s < 4; s++)
        cost[s] = (SchedCost){ p.stages[s].f_s, p.stages[s].b_s, p.stages[s].w_s, p.stages[s].a2a_fwd_s,
                               p.stages[s].a2a_bwd_s };
    sched_build(&sc, SCHED_DUALPIPEV, 2, 4);
    sched_simulate(&sc, cost, 0.0532, &sim);
    EXPECT_NEAR(p.pipe.pipeline_s, sim.makespan);
    EXPECT_NEAR(p.pipe.bubble_s, sim.makespan - fmax(sim.busy[0], sim.busy[1]));
    EXPECT(p.pipe.bubble_s > 0 && p.pipe.bubble_s < sim.makespan, "bubble %g", p.pipe.bubble_s);
    sched_sim_free(&sim);
    sched_free(&sc);
    /* activations: S+1 = 5 chunks of rank 0's mean ((8+116)*16 + 6912)/2 = 4448 B */
    EXPECT_NEAR(p.ranks[0].act_bytes, 5 * 4448);
    plan_free(&p);
}

/* FP8: linear GEMMs at the FP8 peak, Linear inputs cached in FP8 + a scale per 128 values,
 * dispatch payload C + ceil(C/128)*4 = 12 bytes. MoE layer: FP8 GEMMs 2*(176 + 96 + 192) = 928,
 * BF16 GEMM the router 64; activations 68 + E*4 + K*8 + (2Fs + K*C + K*2F)*(1 + 4/128)
 * = 100 + 40*1.03125 = 141.25 B per token; dense layer 68 + 24*1.03125 = 92.75. */
/* The expert-row pool: an MoE layer keeps f x the mean K rows per token, f = the capacity
 * factor capped at ep (4 here; 0 selects that worst case), 1 without EP. Each row holds the
 * token copy and the routed gate|up, C + 2F = 16 values of 2 B (bf16): 64 B per token and
 * unit of f on top of the fixture's f = 1 figures, and N = 16 tokens x f x 2 x 32 B =
 * 1024 f B per layer and micro-batch. */
static void test_tiny_pool(const Config *base)
{
    Plan p1;
    plan_compute(&p1, base);
    EXPECT_NEAR(p1.pool_factor, 1);
    EXPECT_NEAR(p1.pool_layer_bytes, 1024);
    const struct { double key; int ep, dp; double f; } cases[] = {
        { 2, 4, 4, 2 }, { 0, 4, 4, 4 }, { 8, 4, 4, 4 }, { 2.5, 2, 4, 2 }, { 3, 1, 4, 1 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        Config c = *base;
        c.moe.capacity_factor = cases[i].key;
        c.parallel.ep = cases[i].ep;
        c.parallel.dp = cases[i].dp;
        Config c1 = c;
        c1.moe.capacity_factor = 1;
        Plan p, q;
        plan_compute(&p, &c);
        plan_compute(&q, &c1);
        EXPECT_NEAR(p.pool_factor, cases[i].f);
        EXPECT_NEAR(p.pool_layer_bytes, 1024 * cases[i].f);
        EXPECT_NEAR(p.items[1].act_token - q.items[1].act_token, 64 * (cases[i].f - 1));
        EXPECT_NEAR(p.items[0].act_token, q.items[0].act_token);   /* the dense layer keeps no rows */
        plan_free(&p);
        plan_free(&q);
    }
    plan_free(&p1);
}

static void test_tiny_fp8(const Config *base)
{
    Config c = *base;
    snprintf(c.train.precision, sizeof c.train.precision, "fp8");
    Plan p;
    plan_compute(&p, &c);
    EXPECT_NEAR(p.items[1].mm_fp8, 928);
    EXPECT_NEAR(p.items[1].mm_bf16, 64);
    EXPECT_NEAR(p.items[1].act_token, 141.25);
    EXPECT_NEAR(p.items[0].act_token, 92.75);
    EXPECT_NEAR(p.comm.dispatch_copy_bytes, 12);
    EXPECT_NEAR(p.comm.combine_copy_bytes, 16);
    /* layer 1 forward: 16 * (928/(2e6*0.5) + (64 + 96)/(1e6*0.5)) = 0.01484800 + 0.00512 */
    EXPECT_NEAR(p.comm.layer_fwd_s, 16 * (928 / 1e6 + 160 / 5e5));
    EXPECT_NEAR(p.flops.training_with_mtp, 17856);   /* FLOPs do not depend on precision */
    /* Compute copies at fp8 (SPEC 6): an FP8 Linear weight keeps its codes (1 B) and the
     * transposed copy (1 B), i.e. the 2 B/param of its BF16 copy, plus one FP32 scale per
     * 128x128 block; every tiny matrix is under 128 wide, so one 4 B scale per tensor. FP8
     * tensors: MLA q_a, q_b, kv_a, kv_b, o = 5; dense gate/up/down 3; shared expert 3; one
     * routed expert per rank (4 experts over ep 4) 3; MTP adds eh_proj. Embedding, head,
     * router and norms stay 2 B. Rank 0 (layers 0-2): 8 + 11 + 11 = 30 tensors -> +120 B over
     * test_tiny_memory's 2864; rank 1 (layer 3, MTP, head, embedding copy): 11 + 12 = 23 ->
     * +92 B over 2368. Activations: stage 0 = (8 + 92.75 + 141.25 + 141.25) * 16 = 6132 B. */
    EXPECT_NEAR(p.ranks[0].weight_bytes, 2864 + 120);
    EXPECT_NEAR(p.ranks[1].weight_bytes, 2368 + 92);
    EXPECT_NEAR(p.stages[0].act_bytes, 6132);
    EXPECT_NEAR(p.ranks[0].optim_bytes, 1224 * 8 / 4.0 + 192 * 8);   /* BF16 moments */
    plan_free(&p);
    /* FP32 moments (train.bf16_moments off): master 4 + 2 x 4 = 12 B per param */
    snprintf(c.train.bf16_moments, sizeof c.train.bf16_moments, "false");
    plan_compute(&p, &c);
    EXPECT_NEAR(p.ranks[0].optim_bytes, 1224 * 12 / 4.0 + 192 * 12);
    plan_free(&p);
    /* fp32: the master is the compute copy, 4 B for every trained param + the 4 B bias state;
     * activations at 4 B */
    snprintf(c.train.precision, sizeof c.train.precision, "fp32");
    plan_compute(&p, &c);
    EXPECT_NEAR(p.ranks[0].weight_bytes, 1416 * 4 + 8 * 4);
    EXPECT_NEAR(p.ranks[0].optim_bytes, 1224 * 8 / 4.0 + 192 * 8);   /* 2 x 4 B moments */
    plan_free(&p);
}

static int has_problem(const Plan *p, const char *text)
{
    for (int i = 0; i < p->n_problems; i++)
        if (p->problem_error[i] && strstr(p->problem[i], text)) return 1;
    return 0;
}

/* Acceptance 3: each impossible layout is an error naming the key and the number. */
static void test_layout_errors(const Config *base)
{
    Config c;
    Plan p;
#define BAD(edit, text) do { c = *base; edit; plan_compute(&p, &c); \
        EXPECT(p.n_errors >= 1 && has_problem(&p, text), "%s: no error with '%s'", #edit, text); \
        plan_free(&p); } while (0)
    BAD(c.parallel.ep = 3, "'parallel.ep' = 3 does not divide 'parallel.dp' = 4");
    BAD((c.parallel.ep = 3, c.parallel.dp = 6, c.cluster.nodes = 6),
        "'parallel.ep' = 3 does not divide 'model.n_routed_experts' = 4");
    BAD((c.parallel.pp = 3, c.cluster.nodes = 6, strcpy(c.parallel.schedule, "dualpipe")),
        "'parallel.pp' = 3 must be even for schedule 'dualpipe'");
    BAD((c.train.grad_accum = 3, strcpy(c.parallel.schedule, "dualpipe")),
        "'train.grad_accum' = 3 micro-batches is below 2 * 'parallel.pp' = 4");
    BAD((c.train.grad_accum = 5, strcpy(c.parallel.schedule, "dualpipe")),
        "'train.grad_accum' = 5 must be even for schedule 'dualpipe'");
    BAD((c.parallel.pp = 8, c.parallel.dp = 1, c.parallel.ep = 1),
        "'model.num_hidden_layers' = 4 cannot fill 8 pipeline stages");
#undef BAD
    /* dualpipev with pp 2 needs 4 layers: tiny has exactly 4, so it runs */
    c = *base;
    strcpy(c.parallel.schedule, "dualpipev");
    plan_compute(&p, &c);
    EXPECT_EQ(p.n_errors, 0);
    plan_free(&p);
    c = *base;
    c.cluster.nodes = 3;
    plan_compute(&p, &c);
    EXPECT(has_problem(&p, "'parallel.pp' * 'parallel.dp' = 8 GPUs exceed the 6 of the cluster"), "world > cluster");
    plan_free(&p);
    /* memory: rank 0 needs 28000 B = 2.608e-05 GiB; HBM of 2e-5 GiB = 21474.8 B cannot hold it */
    c = *base;
    c.cluster.hbm_gib = 2e-5;
    plan_compute(&p, &c);
    EXPECT(has_problem(&p, "pp rank 0 needs 2.608e-05 GiB per GPU > 'cluster.hbm_gib' = 2e-05"), "memory over HBM");
    EXPECT(!p.rows[PLAN_1F1B].fits && p.rows[PLAN_1F1B].valid, "1f1b row: valid layout, over HBM");
    plan_free(&p);
    /* a schedule that cannot run this layout is marked in its row, the configured one runs */
    c = *base;
    c.parallel.pp = 1;
    c.parallel.dp = 8;
    c.cluster.nodes = 4;
    plan_compute(&p, &c);
    EXPECT_EQ(p.n_errors, 0);
    EXPECT(!p.rows[PLAN_DUALPIPE].valid && strstr(p.rows[PLAN_DUALPIPE].problem, "'parallel.pp' = 1 must be even"),
           "dualpipe row names the odd pp");
    plan_free(&p);
}

/* train.recompute = false (issue 14): every RMSNorm output and the MLA up-projections are kept
 * besides, per token at a = 2 B: a block 2C*2 (input/post-attention norms) + (Rq + H*Dqk)*2
 * (q_a_layernorm, W_qb) + (Rkv + H*(Dn+Dv))*2 (kv_a_layernorm, W_kvb) = 32 + 24 + 24 = 80; the
 * MTP module 80 + 3C*2 = 128 (enorm|hnorm, shared_head.norm); the head C*2 = 16 (final norm).
 * Stage 0 (embedding, 3 blocks): 7744 + 240 * 16 = 11584; stage 1 (block, MTP, head):
 * 6912 + 224 * 16 = 10496. Train's own figure (pp 1 only): the model keeps per block and
 * slot, at 4 B in 256-byte arena pieces (N = 16), ln1 512 + cq 256 + q 512 + ckv 256 + kv 512
 * + k 512 + v 256 + ln2 512 = 3328, once for all 5 blocks with recompute: 4 x 3328 = 13312
 * less; backward scratch 512 (W's ln2) + 256 (an rstd of 64 B) more. */
static void test_tiny_no_recompute(const Config *base)
{
    Config c = *base;
    c.train.recompute = 0;
    Plan p;
    plan_compute(&p, &c);
    EXPECT_NEAR(p.stages[0].act_bytes, 11584);
    EXPECT_NEAR(p.stages[1].act_bytes, 10496);
    EXPECT(p.build_act_bytes < 0, "pp 2: no train figure expected, got %g", p.build_act_bytes);
    plan_free(&p);
    c.parallel.pp = 1;
    plan_compute(&p, &c);
    const double off = p.build_act_bytes, off_scratch = p.build_scratch_bytes;
    plan_free(&p);
    c.train.recompute = 1;
    plan_compute(&p, &c);
    EXPECT(off > 0, "pp 1: train's activation figure %g", off);
    EXPECT_NEAR(off - p.build_act_bytes, 13312);
    EXPECT_NEAR(p.build_scratch_bytes - off_scratch, 768);
    plan_free(&p);
}

/* Acceptance 2 on the hand-computed tiny config. */
static void test_tiny(void)
{
    Config c;
    tiny_config(&c);
    ParamTable t;
    params_build(&t, &c.model);
    Plan p;
    plan_compute(&p, &c);
    EXPECT_EQ(p.n_errors, 0);
    test_tiny_params(&p, &t);
    test_tiny_flops(&p, &c);
    test_tiny_stages(&p);
    test_tiny_comm(&p);
    test_tiny_memory(&p);
    test_tiny_pipeline(&p);
    plan_free(&p);
    params_free(&t);
    test_tiny_dualpipe(&c);
    test_tiny_dualpipev(&c);
    test_tiny_fp8(&c);
    test_tiny_pool(&c);
    test_tiny_no_recompute(&c);
    test_layout_errors(&c);
}

/* DeepSeek-V3 671B from the published hyper-parameters (SPEC.md section 1; TR 3.2 layout). */
static void v3_config(Config *c)
{
    config_defaults(c);
    ModelConfig *m = &c->model;
    m->vocab_size = 129280;
    m->hidden_size = 7168;
    m->intermediate_size = 18432;
    m->moe_intermediate_size = 2048;
    m->num_hidden_layers = 61;
    m->first_k_dense_replace = 3;
    m->num_attention_heads = 128;
    m->n_routed_experts = 256;
    m->n_shared_experts = 1;
    m->num_experts_per_tok = 8;
    m->n_group = 8;
    m->topk_group = 4;
    m->q_lora_rank = 1536;
    m->kv_lora_rank = 512;
    m->qk_nope_head_dim = 128;
    m->qk_rope_head_dim = 64;
    m->v_head_dim = 128;
    m->num_nextn_predict_layers = 1;
    m->max_position_embeddings = 163840;
    c->train.seq_len = 4096;
    c->train.micro_batch_size = 1;
    c->train.grad_accum = 120;
    snprintf(c->train.precision, sizeof c->train.precision, "fp8");
    snprintf(c->train.bf16_moments, sizeof c->train.bf16_moments, "true");
    c->train.recompute = 1;     /* TR 3.2.3 */
    c->moe.max_nodes = 4;
    c->moe.capacity_factor = 1.5;   /* as configs/deepseek-v3-671b.toml */
    c->parallel.pp = 16;
    c->parallel.dp = 128;
    c->parallel.ep = 64;
    snprintf(c->parallel.schedule, sizeof c->parallel.schedule, "dualpipe");
    c->cluster.gpus_per_node = 8;
    c->cluster.nodes = 256;
}

/* Acceptance 1 (figures from DeepSeek-V3's README_WEIGHTS.md and the TR). */
static void check_v3(const Plan *p, const char *what)
{
    const double VC = 129280.0 * 7168.0;   /* one embedding-sized matrix, 0.927B */
    /* "671B": the tolerance 0.5%; the table gives 671.026B (+0.004%). */
    EXPECT(fabs(p->params.total - 671e9) <= 0.005 * 671e9, "%s: total %lld", what, p->params.total);
    /* "36.7B activated, including 0.9B embedding and 0.9B output head": the table matches it
     * when the embedding, a row lookup, is left out: 36.626B (-0.2%), tolerance 0.5% as above.
     * Counting the embedding fully (the plan's "activated") adds exactly one V*C: 37.552B,
     * the TR's "37B" headline. */
    EXPECT(fabs(p->params.active_no_embedding - 36.7e9) <= 0.005 * 36.7e9, "%s: activated without "
           "embedding %lld", what, p->params.active_no_embedding);
    EXPECT_NEAR(p->params.active - p->params.active_no_embedding, VC);
    /* "MTP: 11.5B unique parameters, excluding the shared 0.9B embedding and 0.9B head": the
     * table gives 11.610B (+0.96%); the difference is eh_proj (C x 2C = 0.103B): without it
     * 11.507B (+0.06%). Tolerance 1%: the same README's "14B" for the MTP weights file is 4%
     * off the 13.46B those tensors hold, so its figures are rounded loosely; the tighter
     * check on the module without eh_proj keeps the test sharp. */
    EXPECT(fabs(p->params.mtp - 11.5e9) <= 0.01 * 11.5e9, "%s: mtp %lld", what, p->params.mtp);
    EXPECT(fabs(p->params.mtp - 7168.0 * 14336.0 - 11.5e9) <= 0.005 * 11.5e9, "%s: mtp without eh_proj", what);
    /* "685B on Hugging Face = 671B main + 14B MTP": the MTP file repeats embedding and head. */
    EXPECT(fabs(p->params.total_with_mtp + 2 * VC - 685e9) <= 0.005 * 685e9, "%s: HF total", what);
}

/* Sums over stages and ranks add up to the model (nothing lost or counted twice). */
static void check_sums(const Plan *p)
{
    long long params = 0;
    double flops = 0.0;
    for (int s = 0; s < p->n_stages; s++) {
        params += p->stages[s].params;
        flops += p->stages[s].fwd_flops;
    }
    EXPECT_EQ(params, p->params.total_with_mtp);
    EXPECT(fabs(flops - p->flops.forward_with_mtp) <= 1e-12 * flops, "stage flops %.17g vs %.17g", flops,
           p->flops.forward_with_mtp);
    EXPECT_NEAR(p->flops.forward, p->flops.matmul + p->flops.attention);
    EXPECT_NEAR(p->flops.forward_with_mtp, p->flops.forward + p->flops.matmul_mtp + p->flops.attention_mtp);
}

/* The repository root, from this file's path (CMake compiles it by absolute path). */
static void source_path(char *out, size_t n, const char *rel)
{
    const char *me = __FILE__, *tail = strstr(me, "tests/unit/test_plan.c");
    int root = tail ? (int)(tail - me) : 0;
    snprintf(out, n, "%.*s%s", root, me, rel);
}

static void test_deepseek_v3(void)
{
    Config c;
    v3_config(&c);
    Plan p;
    plan_compute(&p, &c);
    check_v3(&p, "v3 (C)");
    check_sums(&p);
    EXPECT_EQ(p.n_errors, 0);
    EXPECT_NEAR(p.flops.training_with_mtp, flops_per_token(&c.model, 4096, 1));
    /* MLA caches Rkv + Dr = 576 BF16 values per layer: 1152 B x 61 layers */
    EXPECT_NEAR(p.kv.bytes_per_token, 1152.0 * 61);
    /* Split: the last stage carries head + MTP (about 6 layers' time at fp8), so with one
     * layer it is still the slowest; the other 60 layers go 4 to a stage. */
    for (int s = 0; s < 15; s++) EXPECT_EQ(p.stages[s].n_layers, 4);
    EXPECT_EQ(p.stages[15].n_layers, 1);
    /* EP 64 over 8-GPU nodes: 8 nodes, a token reaches M = 4 of them, 3.5 over IB */
    EXPECT_EQ(p.comm.ep_nodes, 8);
    EXPECT_NEAR(p.comm.copies_ib, 3.5);
    EXPECT_NEAR(p.comm.dispatch_copy_bytes, 7168 + 56 * 4);
    EXPECT(p.peak_rank_bytes <= p.hbm_bytes, "671B layout fits in 80 GiB");
    char path[1024];
    source_path(path, sizeof path, "configs/deepseek-v3-671b.toml");
    FILE *f = fopen(path, "r");
    if (f) {
        fclose(f);
        Config fc;
        config_defaults(&fc);
        config_load(&fc, path);
        Plan q;
        plan_compute(&q, &fc);
        check_v3(&q, path);
        EXPECT_EQ(q.params.total, p.params.total);
        EXPECT_EQ(q.params.mtp, p.params.mtp);
        EXPECT_EQ(q.n_errors, 0);
        plan_free(&q);
    } else {
        printf("SKIP loading %s (not found): the C-built config was checked\n", path);
    }
    plan_free(&p);
}

/* Dense GQA/MHA models through the same table: published parameter counts. */
static void test_dense(void)
{
    Config c;
    config_defaults(&c);
    ModelConfig *m = &c.model;
    snprintf(m->attention, sizeof m->attention, "gqa");
    m->vocab_size = 128256;                        /* Llama 3 8B */
    m->hidden_size = 4096;
    m->intermediate_size = 14336;
    m->num_hidden_layers = 32;
    m->first_k_dense_replace = 32;
    m->num_attention_heads = 32;
    m->num_key_value_heads = 8;
    m->head_dim = 0;                               /* resolves to C/H = 128 */
    m->num_nextn_predict_layers = 0;
    c.train.seq_len = 8192;
    ParamTable t;
    params_build(&t, m);
    const Param *k = params_find(&t, "model.layers.31.self_attn.k_proj.weight");
    EXPECT(k && k->rows == 8 * 128 && k->cols == 4096, "k_proj is (KV*hd, C)");
    EXPECT(params_find(&t, "model.layers.0.mlp.gate_proj.weight") != NULL, "dense mlp on layer 0");
    EXPECT(params_find(&t, "model.layers.31.mlp.down_proj.weight") != NULL, "dense mlp on layer 31");
    params_free(&t);
    Plan p;
    plan_compute(&p, &c);
    EXPECT_EQ(p.params.total, 8030261248LL);       /* meta-llama/Meta-Llama-3-8B */
    EXPECT_EQ(p.params.active, p.params.total);
    EXPECT(!p.comm.moe, "no MoE");
    EXPECT_NEAR(p.flops.attention_layer, 32.0 * 8192 * 256);   /* H*T*(hd+hd) */
    EXPECT_NEAR(p.kv.bytes_per_token, 2.0 * 8 * 128 * 2 * 32); /* K and V, BF16, 32 layers */
    check_sums(&p);
    plan_free(&p);
    m->vocab_size = 32000;                         /* Llama 2 7B: MHA */
    m->intermediate_size = 11008;
    m->num_key_value_heads = 0;                    /* resolves to H */
    c.train.seq_len = 4096;
    plan_compute(&p, &c);
    EXPECT_EQ(p.params.total, 6738415616LL);       /* meta-llama/Llama-2-7b-hf */
    EXPECT_NEAR(p.kv.bytes_per_token, 2.0 * 32 * 128 * 2 * 32);
    plan_free(&p);
}

int main(void)
{
    test_tiny();
    test_deepseek_v3();
    test_dense();
    return test_finish();
}
