/* model/params.h - the parameter table: the one list of the model's tensors.
 *
 * Every tensor appears once, with its Hugging Face DeepseekV3 name, shape, initialisation,
 * weight-decay flag and role. Flat buffer offsets, the optimizer's groups, checkpoint dataset
 * names, export names, parameter counts (dstrain plan) and test labels all come from here.
 *
 * Order in the flat buffer = table order:
 *   model.embed_tokens.weight                                   (V,C)
 *   per layer l < L:  model.layers.l.
 *     input_layernorm.weight (C)
 *     self_attn.q_a_proj.weight (Rq,C) q_a_layernorm.weight (Rq) q_b_proj.weight (H*Dqk,Rq)
 *         or, when Rq == 0, self_attn.q_proj.weight (H*Dqk,C)
 *     self_attn.kv_a_proj_with_mqa.weight (Rkv+Dr,C) kv_a_layernorm.weight (Rkv)
 *     self_attn.kv_b_proj.weight (H*(Dn+Dv),Rkv) self_attn.o_proj.weight (C,H*Dv)
 *     post_attention_layernorm.weight (C)
 *     dense (l < first_k_dense_replace): mlp.{gate_proj,up_proj} (I,C), mlp.down_proj (C,I)
 *     MoE: mlp.gate.weight (E,C), mlp.gate.e_score_correction_bias (E) [state, not trained]
 *          mlp.shared_experts.{gate_proj,up_proj} (Fs,C), down_proj (C,Fs)   (if Fs > 0)
 *          mlp.experts.e.{gate_proj,up_proj} (F,C), down_proj (C,F)  for e < E
 *   per MTP module k = 1..D, as layer index L+k-1 (DeepSeek's published naming):
 *     enorm.weight (C) hnorm.weight (C) eh_proj.weight (C,2C) ...a full MoE block as above...
 *     shared_head.norm.weight (C)
 *   model.norm.weight (C), lm_head.weight (V,C)
 * gate_proj is always directly followed by up_proj, so one GEMM with OC = 2*hidden computes
 * both ([gate | up] per row); model code relies on it and checks it.
 */
#ifndef DSTRAIN_PARAMS_H
#define DSTRAIN_PARAMS_H

#include <stddef.h>

#include "config.h"
#include "kernels/ops.h"

typedef enum {
    ROLE_EMBED, ROLE_HEAD, ROLE_ATTN, ROLE_DENSE_FFN, ROLE_SHARED_EXPERT, ROLE_ROUTED_EXPERT,
    ROLE_ROUTER, ROLE_NORM, ROLE_MTP_PROJ, ROLE_COUNT
} ParamRole;

typedef enum { INIT_NORMAL, INIT_ONES, INIT_ZEROS } ParamInit;

#define PARAM_NAME_MAX 96

typedef struct Param {
    char name[PARAM_NAME_MAX];
    int ndim;               /* 1 or 2 */
    long rows, cols;        /* shape (rows, cols); cols = 1 when ndim == 1 */
    size_t numel;
    size_t offset;          /* in floats, within the flat buffer */
    ParamRole role;
    ParamInit init;
    int decay;              /* AdamW weight decay applies */
    int trained;            /* 0: state the optimizer never touches (router bias) */
    int layer;              /* block index (MTP k at L+k-1); -1 for embedding, final norm, head */
    int expert;             /* routed expert index; -1 otherwise */
    int mtp;                /* 1 for tensors of an MTP module (layer >= L) */
    int index;              /* position in the full table (params_build), kept by params_select:
                             * initialisation is seeded by it */
    size_t global_offset;   /* offset in the whole model's flat buffer (== offset there) */
} Param;

typedef struct ParamTable {
    Param *p;
    int n;
    size_t total;           /* floats in the flat buffer */
    int expert_lo, expert_n;    /* routed experts held: expert_lo .. expert_lo + expert_n - 1 */
    size_t n_replicated;    /* floats of the replicated region [0, n_replicated); the routed
                             * experts' region is [n_replicated, total) (params_select) */
    int selected;           /* the routed experts held are a strict subset (EP; params_select);
                             * a pipeline stage's filter alone does not set it */
    int filtered;           /* params_select's keep left entries out (a pipeline stage's or
                             * rank's tensors): other tensors of a checkpoint are not its */
} ParamTable;

/* Build the table for a (validated) config; no tensor memory is allocated. */
void params_build(ParamTable *t, const ModelConfig *c);
void params_free(ParamTable *t);
/* Whether a rank keeps entry p (arg: the caller's; e.g. a pipeline stage, model/stage.h). */
typedef int (*ParamKeep)(const Param *p, void *arg);
/* A rank's table (DESIGN.md section 5 "Ownership"): the entries of full that keep accepts
 * (keep NULL: every one; under PP a stage's tensors) except the routed experts outside
 * [expert_lo, expert_lo + expert_n) (EP), every entry keeping its name, shape, global index
 * and global_offset (so a selection initialises its tensors as the full table does and maps
 * back to it). keep NULL with every expert selected: an exact copy (same offsets, one region:
 * n_replicated = total). With every expert selected otherwise: the kept entries in table order,
 * one region. With a strict subset of the experts the entries (and the flat buffer, in the same
 * order) form two regions: the replicated entries first, in table order, then the selected
 * experts' entries, in table order (so an expert's gate_proj, up_proj, down_proj stay adjacent
 * and a layer's experts consecutive). */
void params_select(ParamTable *out, const ParamTable *full, int expert_lo, int expert_n, ParamKeep keep, void *arg);
/* What params_build would build, without building it: the number of entries and the floats of
 * the flat buffer (so a table too large for memory is refused before it is built). */
void params_measure(const ModelConfig *c, size_t *entries, size_t *total);
/* Of those floats, the routed experts' (all E of every MoE block). */
size_t params_measure_routed(const ModelConfig *c);
/* The entry with this exact name, or NULL. */
const Param *params_find(const ParamTable *t, const char *name);
/* Offset of "model.layers.<layer>.<suffix>" (layer < 0: the name is used as is); DIE if absent. */
size_t params_offset(const ParamTable *t, int layer, const char *suffix);
/* Sum of numel over entries matching role (or every role when role = ROLE_COUNT) and, when
 * mtp >= 0, the MTP flag. */
size_t params_count(const ParamTable *t, ParamRole role, int mtp);
const char *params_role_name(ParamRole role);
/* Compute type of a Linear weight under a table precision (SPEC.md section 6): FP32 under
 * fp32; BF16 under bf16; FP8 under fp8 for attention projections, dense FFN, shared and routed
 * experts and the MTP projection, the output head in BF16; the router in FP32 always.
 * Embedding and norm weights are read as FP32 masters (never Linear compute copies). */
WgtType params_compute_type(const Param *p, Precision prec);
/* Parameters one token touches: every tensor except routed experts counts fully, routed
 * experts count K/E of their size (each token reaches K of E experts per layer). */
double params_active(const ParamTable *t, const ModelConfig *c);

/* Fill a host buffer with the initial values (normal(0, initializer_range), ones, zeros),
 * deterministic in seed and independent of the order of other tensors: each tensor draws
 * from its own stream seeded by (seed, global index), so a selection starts from the same
 * weights as the full table. */
void params_init(const ParamTable *t, const ModelConfig *c, float *host, unsigned long long seed);

#endif
