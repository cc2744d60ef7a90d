/* model/flops.h - model FLOPs per token: the one formula behind `dstrain plan` and the MFU
 * that `dstrain train` reports.
 *
 * Not here: hardware FLOPs (what kernels really execute, recomputation included) and any
 * timing; the planner turns these counts into times (runtime/plan_*.c).
 * Reference: the model-FLOPs convention of PaLM (Chowdhery et al. 2022, appendix B: 6 FLOPs
 * per parameter per token plus attention) and Megatron-LM (Narayanan et al. 2021); unlike
 * both, causal attention counts half the score matrix (the half a causal kernel computes).
 *
 * The formula, per token, sequence length T (every symbol from model/config.h):
 *
 *   one multiply-add = 2 FLOPs.
 *
 *   matmul (forward) = 2 * sum over the parameter table's 2-D tensors of numel * share
 *       share = K/E for a routed expert's tensors (K of E experts see the token), 1 otherwise;
 *       model.embed_tokens counts 0 (a row lookup, no matmul); 1-D tensors (norm weights, the
 *       router bias) count 0; the router GEMM mlp.gate (E,C) counts fully; lm_head counts once
 *       for the main prediction and once more per MTP module when MTP is counted (the head is
 *       shared, the matmul is not); MTP's eh_proj (C,2C) and its block count when MTP is.
 *
 *   attention core (forward) per layer = H * T * (Dqk + Dv)
 *       causal: query t sees t+1 keys, on average T/2 (the diagonal's extra 1/2 is ignored):
 *       Q K^T = 2 * H * Dqk * T/2,   P V = 2 * H * Dv * T/2.
 *       MLA: Dqk = Dn + Dr, Dv = v_head_dim.  GQA/MHA: Dqk = Dv = head_dim; the number of
 *       key/value heads does not change it (every query head still does its own products).
 *       Softmax, RoPE, RMSNorm, SwiGLU, top-k routing are elementwise and count 0.
 *
 *   forward  = matmul + (L + D_counted) * attention core,  D_counted = D with MTP, else 0
 *   training = 3 * forward   (backward = 2 * forward: an input-gradient GEMM and a
 *                              weight-gradient GEMM per forward GEMM; the attention core's
 *                              backward is likewise counted as 2x its forward)
 *
 * Recomputation (RMSNorm outputs, MLA up-projections) is NOT counted: MFU is model FLOPs
 * over peak, so recomputation lowers MFU instead of inflating the FLOPs.
 *
 * Calling sequence: flops_per_token(&cfg.model, T, with_mtp) once at start-up (it builds and
 * frees a parameter table); the planner, which holds a table, uses flops_forward_table and the
 * per-tensor pieces so its per-stage sums add up to the same total.
 */
#ifndef DSTRAIN_FLOPS_H
#define DSTRAIN_FLOPS_H

#include "config.h"
#include "params.h"

/* Attention shape resolved from a config: gqa = 1 for attention = "gqa" (then kv_heads and
 * head_dim have their zero defaults resolved: kv_heads = H, head_dim = C/H); for MLA
 * dqk = Dn + Dr, dv = Dv and kv_heads = H. */
typedef struct AttnDims {
    int gqa;
    long heads, kv_heads, head_dim, dqk, dv;
} AttnDims;

AttnDims flops_attn_dims(const ModelConfig *c);

/* Forward matmul FLOPs per token of one table entry (2 * numel * share, 0 for the embedding
 * and for 1-D entries); lm_head's extra MTP passes are not included here. */
double flops_param_forward(const Param *p, const ModelConfig *c);

/* Forward attention-core FLOPs per token of one layer at sequence length seq_len. */
double flops_attention_forward(const ModelConfig *c, int seq_len);

/* Forward FLOPs per token of the model described by t (built from c), with or without MTP. */
double flops_forward_table(const ParamTable *t, const ModelConfig *c, int seq_len, int with_mtp);

/* Forward FLOPs per token (builds a parameter table). */
double flops_forward_per_token(const ModelConfig *c, int seq_len, int with_mtp);

/* Training FLOPs per token = 3 * forward; the MFU numerator in train. */
double flops_per_token(const ModelConfig *c, int seq_len, int with_mtp);

#endif
