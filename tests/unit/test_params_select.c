/* tests/unit/test_params_select.c - a rank's selection of the parameter table (model/params.h
 * params_select, DESIGN.md section 5; issue 14): for every EP size dividing E and every slice,
 *   - the selection holds every non-routed entry and exactly the routed experts of its slice,
 *     each with the full table's name, shape and global index;
 *   - the flat buffer is two regions, replicated entries then experts, in offset order, with
 *     gate_proj/up_proj adjacent and a layer's experts consecutive (the model binds them so);
 *   - the slices of all EP ranks cover the experts once: their expert regions add up to the
 *     full table's routed floats;
 *   - initialisation is seeded by global index: every selected tensor starts with the bytes of
 *     the same tensor in the full table (so every layout starts from identical weights);
 *   - selecting every expert is the full table unchanged (the one-region case);
 *   - a stage's filter (PP) and an EP slice together: exactly the entries both keep, each with
 *     its global index and global_offset (its place in the full table), table order with every
 *     expert held, two regions otherwise, initialised as in the full table;
 *   - params_measure agrees with params_build (entries, floats, routed floats).
 */
#include <string.h>

#include "model/params.h"
#include "runtime/config.h"
#include "testing.h"

static void check_slice(const ParamTable *full, const ModelConfig *c, const float *w_full, int ep, int r,
                        size_t *routed_sum)
{
    const int nl = c->n_routed_experts / ep;
    ParamTable t;
    params_select(&t, full, r * nl, nl, NULL, NULL);
    EXPECT(t.selected == (ep > 1), "ep %d: selected flag %d", ep, t.selected);
    int want_n = 0, bad_entry = 0, bad_order = 0, bad_init = 0;
    for (int i = 0; i < full->n; i++) {
        const Param *p = &full->p[i];
        want_n += p->role != ROLE_ROUTED_EXPERT || (p->expert >= r * nl && p->expert < (r + 1) * nl);
    }
    EXPECT(t.n == want_n, "ep %d rank %d: %d entries, want %d", ep, r, t.n, want_n);
    float *w = calloc(t.total + 1, sizeof(float));
    params_init(&t, c, w, 1234);
    size_t at = 0;
    for (int i = 0; i < t.n; i++) {
        const Param *p = &t.p[i], *q = &full->p[p->index];
        bad_entry += strcmp(p->name, q->name) != 0 || p->numel != q->numel || p->role != q->role;
        bad_entry += p->role == ROLE_ROUTED_EXPERT && (p->expert < r * nl || p->expert >= (r + 1) * nl);
        bad_order += p->offset != at;                                  /* offset order, no gaps */
        bad_order += t.selected && (p->role == ROLE_ROUTED_EXPERT) != (p->offset >= t.n_replicated);
        bad_init += memcmp(w + p->offset, w_full + q->offset, p->numel * sizeof(float)) != 0;
        at += p->numel;
    }
    EXPECT(at == t.total, "ep %d rank %d: entries cover %zu of %zu floats", ep, r, at, t.total);
    EXPECT(!bad_entry, "ep %d rank %d: %d entries differ from the full table's", ep, r, bad_entry);
    EXPECT(!bad_order, "ep %d rank %d: %d entries out of region/offset order", ep, r, bad_order);
    EXPECT(!bad_init, "ep %d rank %d: %d tensors start from other values than in the full table", ep, r,
           bad_init);
    /* the model's binding rule: up_proj right after gate_proj, expert e+1 right after expert e */
    char g[PARAM_NAME_MAX], u[PARAM_NAME_MAX], n1[PARAM_NAME_MAX];
    snprintf(g, sizeof g, "model.layers.1.mlp.experts.%d.gate_proj.weight", r * nl);
    snprintf(u, sizeof u, "model.layers.1.mlp.experts.%d.up_proj.weight", r * nl);
    const Param *pg = params_find(&t, g), *pu = params_find(&t, u);
    EXPECT(pg && pu && pu->offset == pg->offset + pg->numel, "ep %d rank %d: gate/up not adjacent", ep, r);
    if (nl > 1) {
        snprintf(n1, sizeof n1, "model.layers.1.mlp.experts.%d.gate_proj.weight", r * nl + 1);
        const Param *pn = params_find(&t, n1);
        EXPECT(pg && pn && pn->offset == pg->offset + 3 * pg->numel, "ep %d rank %d: experts not consecutive",
               ep, r);
    }
    *routed_sum += t.total - t.n_replicated;
    free(w);
    params_free(&t);
}

/* A pipeline stage's filter: the blocks from layer 1 on and what follows them (a last stage). */
static int keep_late(const Param *p, void *arg)
{
    const int *lo = arg;
    return p->layer >= *lo || (p->layer < 0 && p->role != ROLE_EMBED);
}

static void check_stage(const ParamTable *full, const ModelConfig *c, const float *w_full, int ep, int r)
{
    const int nl = c->n_routed_experts / ep;
    int lo = 1, want_n = 0, bad = 0;
    ParamTable t;
    params_select(&t, full, r * nl, nl, keep_late, &lo);
    for (int i = 0; i < full->n; i++) {
        const Param *p = &full->p[i];
        const int held = p->role != ROLE_ROUTED_EXPERT || (p->expert >= r * nl && p->expert < (r + 1) * nl);
        want_n += keep_late(p, &lo) && held;
    }
    EXPECT(t.n == want_n && t.selected == (ep > 1), "stage, ep %d rank %d: %d entries (want %d), selected %d", ep, r,
           t.n, want_n, t.selected);
    float *w = calloc(t.total + 1, sizeof(float));
    params_init(&t, c, w, 1234);
    size_t at = 0;
    for (int i = 0; i < t.n; i++) {
        const Param *p = &t.p[i], *q = &full->p[p->index];
        bad += strcmp(p->name, q->name) != 0 || p->global_offset != q->offset || !keep_late(p, &lo);
        bad += p->offset != at || (i > 0 && ep == 1 && p->index < t.p[i - 1].index);
        bad += ep > 1 && (p->role == ROLE_ROUTED_EXPERT) != (p->offset >= t.n_replicated);
        bad += memcmp(w + p->offset, w_full + q->offset, p->numel * sizeof(float)) != 0;
        at += p->numel;
    }
    EXPECT(!bad && at == t.total && (ep > 1 || t.n_replicated == t.total),
           "stage, ep %d rank %d: %d entries wrong (index, offsets, order, regions or init)", ep, r, bad);
    free(w);
    params_free(&t);
}

int main(void)
{
    Config cfg;
    config_defaults(&cfg);
    ModelConfig *c = &cfg.model;   /* configs/tiny.toml's shape */
    c->vocab_size = 32;
    c->hidden_size = 32;
    c->intermediate_size = 64;
    c->moe_intermediate_size = 16;
    c->num_hidden_layers = 2;
    c->first_k_dense_replace = 1;
    c->num_attention_heads = 2;
    c->n_routed_experts = 8;
    c->n_shared_experts = 1;
    c->num_experts_per_tok = 2;
    c->n_group = 4;
    c->topk_group = 1;
    c->q_lora_rank = 16;
    c->kv_lora_rank = 16;
    c->qk_nope_head_dim = 8;
    c->qk_rope_head_dim = 4;
    c->v_head_dim = 8;
    c->num_nextn_predict_layers = 1;
    config_validate(&cfg);
    ParamTable full;
    params_build(&full, c);
    float *w_full = calloc(full.total, sizeof(float));
    params_init(&full, c, w_full, 1234);

    size_t entries, total;
    params_measure(c, &entries, &total);
    size_t routed = 0;
    for (int i = 0; i < full.n; i++)
        if (full.p[i].role == ROLE_ROUTED_EXPERT) routed += full.p[i].numel;
    EXPECT(entries == (size_t)full.n && total == full.total, "measure %zu entries %zu floats, build %d %zu",
           entries, total, full.n, full.total);
    EXPECT(params_measure_routed(c) == routed, "measured routed %zu, built %zu", params_measure_routed(c), routed);

    for (int ep = 1; ep <= c->n_routed_experts; ep *= 2) {
        size_t routed_sum = 0;
        for (int r = 0; r < ep; r++) check_slice(&full, c, w_full, ep, r, &routed_sum);
        if (ep > 1) EXPECT(routed_sum == routed, "ep %d: expert regions add up to %zu, want %zu", ep, routed_sum, routed);
    }
    for (int ep = 1; ep <= 2; ep++)
        for (int r = 0; r < ep; r++) check_stage(&full, c, w_full, ep, r);
    ParamTable all;
    params_select(&all, &full, 0, c->n_routed_experts, NULL, NULL);
    int same = all.n == full.n && all.total == full.total && all.n_replicated == full.total;
    for (int i = 0; same && i < full.n; i++) same = !memcmp(&all.p[i], &full.p[i], sizeof(Param));
    EXPECT(same, "selecting every expert changed the table");
    params_free(&all);
    params_free(&full);
    free(w_full);
    return test_finish();
}
