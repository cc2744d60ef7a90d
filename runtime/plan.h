/* runtime/plan.h - `dstrain plan`: what a run will cost before it starts.
 *
 * From a config (model, [train], [parallel], [cluster]) the planner derives: parameters
 * (total, activated per token, per role, per pipeline stage and per rank), FLOPs per token
 * (model/flops.h), the BF16 KV cache per token, memory per rank, MoE all-to-all traffic per
 * layer over NVLink and InfiniBand, and the pipeline (F, B, W, F&B per stage, bubble, step time,
 * tokens/s/GPU, GPU-hours per trillion tokens) under the configured schedule, plus the same
 * headline figures under each of the four schedules. README "dstrain plan" states every model.
 *
 * Not here: config parsing or model validation (config.c), any FLOPs formula (model/flops.c),
 * any parameter count formula (every count is a sum over the parameter table, model/params.h).
 *
 * Files: plan.c (cmd_plan, the problems list, orchestration), plan_layout.c (blocks, stage
 * split, memory), plan_time.c (communication, pipeline: the schedule's instruction lists
 * simulated by runtime/pipeline/schedule.h), plan_report.c (text and JSON).
 *
 * Calling sequence:
 *   Plan p; plan_compute(&p, &cfg);     cfg: model/train/cluster keys valid; the layout is
 *                                       judged here: each impossible point is a problem
 *   plan_print_text(&p, stdout) or plan_print_json(&p, stdout);
 *   plan_print_timeline(&p, cols, stdout);   optional, after the text report
 *   p.n_errors > 0 -> the layout cannot run (cmd_plan exits 1 after printing);
 *   plan_free(&p);
 *
 * Units everywhere in the structs (and in the JSON): parameters as counts, FLOPs, bytes,
 * seconds, fractions (0..1); the text report scales them for reading.
 */
#ifndef DSTRAIN_PLAN_H
#define DSTRAIN_PLAN_H

#include <stdio.h>

#include "../model/params.h"
#include "config.h"

typedef enum { PLAN_1F1B, PLAN_ZB1P, PLAN_DUALPIPE, PLAN_DUALPIPEV, PLAN_SCHED_COUNT } PlanSchedule;

#define PLAN_MAX_PROBLEMS 16
#define PLAN_MSG_MAX 320

/* One block of the model as the planner sees it: main layer l at index l, MTP module k at
 * L+k-1, then the embedding and the head (final norm + lm_head) as two more items. */
typedef struct PlanItem {
    long long params;         /* table entries of the item, every routed expert */
    double replicated;        /* trained parameters replicated over DP (not routed experts) */
    double expert_rank;       /* routed-expert parameters one rank holds (all / ep) */
    double state;             /* untrained FP32 state (router bias) */
    double copy_replicated;   /* bytes of the compute copies of `replicated` (see plan_memory) */
    double copy_expert_rank;  /* bytes of the compute copies of `expert_rank` */
    double mm_fp8, mm_bf16;   /* forward matmul FLOPs per token by GEMM precision */
    double attn;              /* forward attention-core FLOPs per token */
    double act_token;         /* activation bytes stored per token for backward */
    int moe;                  /* has routed experts */
} PlanItem;

typedef struct PlanStage {
    int first_layer, n_layers;    /* main layers first_layer .. first_layer+n_layers-1 */
    int n_mtp;                    /* MTP modules (last stage only) */
    int embedding, head;          /* holds embed_tokens / final norm + lm_head */
    int n_moe;                    /* blocks with routed experts, MTP blocks included */
    long long params;             /* table parameters of the stage (every expert) */
    double fwd_flops;             /* forward FLOPs per token through the stage */
    double f_s, b_s, w_s;         /* compute per micro-batch: forward, full backward, W part */
    double a2a_fwd_s, a2a_bwd_s;  /* MoE all-to-all per micro-batch, forward / backward */
    double fb_s;                  /* overlapped forward+backward pair (DualPipe F&B) */
    double act_bytes;             /* activations stored per micro-batch */
} PlanStage;

typedef struct PlanRank {         /* one PP rank; its DP ranks are alike */
    int chunk[2], n_chunks;       /* stages it holds */
    int embedding_copy;           /* holds a copy of embed_tokens for MTP (1f1b/zb1p) */
    double params;                /* held, routed experts divided over EP */
    double replicated, expert;    /* trained: replicated over dp / routed experts (dp/ep) */
    double weight_bytes, grad_bytes, optim_bytes;
    double act_chunk_bytes;       /* one micro-batch through one of its chunks (mean) */
    double in_flight;             /* micro-batch chunks whose activations are held at peak */
    double act_bytes, workspace_bytes, total_bytes;
} PlanRank;

typedef struct PlanParams {       /* main model by role (mtp = 0), then MTP as one line */
    long long role[ROLE_COUNT], role_active[ROLE_COUNT];
    long long total, active, active_no_embedding;
    long long mtp, mtp_active, total_with_mtp, active_with_mtp;
} PlanParams;

typedef struct PlanFlops {        /* per token */
    double matmul, matmul_mtp;    /* forward matmul: main model / MTP modules (with head pass) */
    double attention_layer;       /* attention core, one layer */
    double attention, attention_mtp;
    double forward, forward_with_mtp, training, training_with_mtp;
} PlanFlops;

typedef struct PlanKv {           /* inference cache at BF16, main model layers */
    double bytes_per_token_layer, bytes_per_token, bytes_per_sequence;
} PlanKv;

typedef struct PlanComm {
    int moe;                      /* 0: no MoE layer; the all-to-all figures are 0 */
    int ep_nodes, ep_gpus_per_node, reach_nodes;
    double tokens;                /* per GPU per micro-batch: micro_batch_size * seq_len */
    double gpus_per_reached_node; /* distinct GPUs a token hits inside one reached node */
    double copies_ib, copies_nvlink;      /* per token */
    double dispatch_copy_bytes, combine_copy_bytes;
    double dispatch_ib_bytes, dispatch_nvlink_bytes, dispatch_s;
    double combine_ib_bytes, combine_nvlink_bytes, combine_s;
    double backward_ib_bytes, backward_nvlink_bytes, backward_s;
    double layer_fwd_s, layer_bwd_s;      /* compute of one MoE layer per micro-batch */
    double ratio_fwd, ratio_bwd;          /* compute / all-to-all */
    int p2p_ib;                   /* stage boundaries cross nodes */
    double p2p_bytes, p2p_s;      /* one activation transfer per micro-batch per boundary */
    int dp_ib;                    /* ZeRO-1 per step, the busiest rank: */
    double dp_rs_bytes, dp_rs_s;  /*   reduce-scatter of the FP32 gradients */
    double dp_ag_bytes, dp_ag_s;  /*   all-gather of the updated compute copies */
} PlanComm;

typedef struct PlanPipe {
    int stages;                   /* pp, or 2*pp for dualpipev */
    int micro_batches;            /* C = train.grad_accum */
    double f_s, b_s, w_s, fb_s;   /* the slowest stage's chunk times, comm included (F', B') */
    double pipeline_s;            /* makespan of the simulated schedule (runtime/pipeline) */
    double bubble_s;              /* the busiest rank's idle time in it */
    double dp_exposed_s, step_s, bubble_share;
    double tokens_per_step;       /* all DP ranks */
    double tokens_per_s_per_gpu, gpu_hours_per_trillion;
    double model_tflops_per_gpu, mfu_bf16;   /* achieved, bubble and exposed comm included */
} PlanPipe;

typedef struct PlanRow {          /* headline figures of one schedule (same config otherwise) */
    int valid;                    /* 0: the schedule cannot run this layout (see problem) */
    char problem[PLAN_MSG_MAX];
    double bubble_s, step_s, bubble_share, tokens_per_s_per_gpu, gpu_hours_per_trillion;
    double peak_rank_bytes;
    int fits;
} PlanRow;

typedef struct Plan {
    Config cfg;
    PlanSchedule schedule;
    int world, cluster_gpus;
    int n_items;                  /* L + D + 2 */
    PlanItem *items;
    int n_stages, n_ranks;
    PlanStage *stages;
    PlanRank *ranks;
    PlanParams params;
    PlanFlops flops;
    PlanKv kv;
    PlanComm comm;
    PlanPipe pipe;
    int peak_rank;
    double peak_rank_bytes, hbm_bytes;
    double pool_factor;           /* expert rows an MoE layer keeps per micro-batch, as a multiple
                                     of the mean K per token (plan_pool_factor) */
    double pool_layer_bytes;      /* their bytes per MoE layer and micro-batch */
    /* What train's start-up memory table prints at pp 1: the model's activation arena and
     * backward scratch in this build's layout (model_plan_bytes); -1 where train builds no
     * single model of the config (pp > 1, or a config it cannot train) */
    double build_act_bytes, build_scratch_bytes;
    PlanRow rows[PLAN_SCHED_COUNT];
    int n_problems, n_errors;
    int problem_error[PLAN_MAX_PROBLEMS];   /* 1: the layout cannot run; 0: a note */
    char problem[PLAN_MAX_PROBLEMS][PLAN_MSG_MAX];
} Plan;

/* Compute every figure. c's model, train and cluster keys must be valid (config_validate on
 * a trivial layout); the [parallel] layout is judged here and impossible points are recorded
 * as errors (p->n_errors), the figures computed as far as they mean anything. */
void plan_compute(Plan *p, const Config *c);
void plan_free(Plan *p);

void plan_print_text(const Plan *p, FILE *f);
void plan_print_json(const Plan *p, FILE *f);
/* An ASCII timeline of the configured schedule's simulation, cols columns wide, with each
 * rank's busy and idle time (or one line saying the schedule cannot run the layout). */
void plan_print_timeline(const Plan *p, int cols, FILE *f);

const char *plan_schedule_name(PlanSchedule s);

/* Internal to plan_*.c. */
void plan_problem(Plan *p, int error, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void plan_build_items(Plan *p, const ParamTable *t);
void plan_split_stages(Plan *p);
void plan_memory(Plan *p);
void plan_comm(Plan *p);
void plan_pipeline(Plan *p);
double plan_item_seconds(const Plan *p, const PlanItem *it);   /* compute time per token */
int plan_stage_items(const Plan *p, int s, int *idx);   /* item indices of stage s (<= n_items) */
/* The expert-row pool (model/layers.h moe_plan_pool): 'moe.capacity_factor', at most
 * parallel.ep (the worst case, which 0 selects); 1 without EP, where a rank receives exactly
 * the mean. */
double plan_pool_factor(const Config *c);

#endif
