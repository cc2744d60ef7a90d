/* model/flops.c - model FLOPs per token (the formula is written out in flops.h).
 * Not here: timings, hardware FLOPs, anything about a parallel layout. Every count comes from
 * the parameter table, so the FLOPs follow the model's real tensors, not a second formula. */
#include "flops.h"

#include <string.h>

AttnDims flops_attn_dims(const ModelConfig *c)
{
    AttnDims a;
    memset(&a, 0, sizeof a);
    a.heads = c->num_attention_heads;
    a.gqa = strcmp(c->attention, "gqa") == 0;
    if (a.gqa) {
        a.kv_heads = c->num_key_value_heads > 0 ? c->num_key_value_heads : a.heads;
        a.head_dim = c->head_dim > 0 ? c->head_dim : c->hidden_size / a.heads;
        a.dqk = a.dv = a.head_dim;
    } else {
        a.kv_heads = a.heads;
        a.head_dim = (long)c->qk_nope_head_dim + c->qk_rope_head_dim;
        a.dqk = a.head_dim;
        a.dv = c->v_head_dim;
    }
    return a;
}

double flops_param_forward(const Param *p, const ModelConfig *c)
{
    if (p->ndim != 2 || p->role == ROLE_EMBED) return 0.0;
    double share = 1.0;
    if (p->role == ROLE_ROUTED_EXPERT)
        share = (double)c->num_experts_per_tok / (double)c->n_routed_experts;
    return 2.0 * (double)p->numel * share;
}

double flops_attention_forward(const ModelConfig *c, int seq_len)
{
    AttnDims a = flops_attn_dims(c);
    /* 2*H*Dqk*T/2 + 2*H*Dv*T/2 */
    return (double)a.heads * (double)seq_len * (double)(a.dqk + a.dv);
}

double flops_forward_table(const ParamTable *t, const ModelConfig *c, int seq_len, int with_mtp)
{
    double f = 0.0, head = 0.0;
    for (int i = 0; i < t->n; i++) {
        const Param *p = &t->p[i];
        if (p->mtp && !with_mtp) continue;
        f += flops_param_forward(p, c);
        if (p->role == ROLE_HEAD) head += flops_param_forward(p, c);
    }
    int depth = with_mtp ? c->num_nextn_predict_layers : 0;
    f += depth * head;   /* each MTP module runs the shared head again */
    f += (double)(c->num_hidden_layers + depth) * flops_attention_forward(c, seq_len);
    return f;
}

double flops_forward_per_token(const ModelConfig *c, int seq_len, int with_mtp)
{
    ParamTable t;
    params_build(&t, c);
    double f = flops_forward_table(&t, c, seq_len, with_mtp);
    params_free(&t);
    return f;
}

double flops_per_token(const ModelConfig *c, int seq_len, int with_mtp)
{
    return 3.0 * flops_forward_per_token(c, seq_len, with_mtp);
}
