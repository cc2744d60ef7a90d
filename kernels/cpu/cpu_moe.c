/* kernels/cpu/cpu_moe.c - CPU backend: router sigmoid, group-limited top-K routing and its
 * backward, expert load counts, the sequence-wise balance loss, and the expert-major token
 * permutation (layout, gather, combine).
 *
 * Not here: the expert FFNs (Linear + SwiGLU entries) or the bias update (runtime, on counts).
 * Math: SPEC.md section 4 (DeepSeek-V3 TR section 2.1.2, eq. 17-20); the -inf group masking
 * follows DeepSeek's reference inference code.
 *
 * Routing of one token, E experts in n_group groups of G = E / n_group:
 *   sb = s + bias
 *   group score g = sum of the m = K / topk_group largest sb in g
 *   keep the topk_group best groups (ties: lower group index)
 *   idx = top-K of sb over kept experts, in descending sb (ties: lower expert index)
 *   w = s[idx] (/ sum s[idx] if norm_topk) * scaling
 * Experts of dropped groups are skipped, which is the -inf mask (K <= topk_group * G).
 */
#include "kernels/cpu/cpu.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#include "runtime/common.h"

void cpu_sigmoid_forward(Ops *o, float *s, const float *logits, size_t n)
{
    #pragma omp parallel for num_threads(cpu_threads(o)) if (n > 32768) schedule(static)
    for (size_t i = 0; i < n; i++) s[i] = 1.0f / (1.0f + cpu_exp(-logits[i]));
}

void cpu_sigmoid_backward(Ops *o, float *dlogits, const float *ds, const float *s, size_t n)
{
    #pragma omp parallel for num_threads(cpu_threads(o)) if (n > 32768) schedule(static)
    for (size_t i = 0; i < n; i++) dlogits[i] += ds[i] * s[i] * (1.0f - s[i]);
}

/* ---- routing ---- */

/* Offer (v, id) to the list vals/ids (descending, length *len, capacity k). An equal value
 * never passes an entry already there, so offering ids in increasing order breaks ties toward
 * the lower id. */
static void topk_push(float *vals, int32_t *ids, int *len, int k, float v, int32_t id)
{
    int n = *len;
    if (n == k && !(v > vals[k - 1])) return;
    int p = n < k ? n : k - 1;
    while (p > 0 && v > vals[p - 1]) {
        vals[p] = vals[p - 1];
        ids[p] = ids[p - 1];
        p--;
    }
    vals[p] = v;
    ids[p] = id;
    if (n < k) *len = n + 1;
}

/* Per-thread scratch of one token: float values then int32 ids and flags. */
typedef struct RouteScratch {
    float *vals;        /* (max(m, topk_group, K)) */
    float *gscore;      /* (n_group) */
    int32_t *ids;       /* (max(m, topk_group)) */
    int32_t *keep;      /* (n_group): 1 if the group is kept */
} RouteScratch;

static size_t route_scratch_floats(const RouteShape *r)
{
    size_t wide = (size_t)r->K + (size_t)r->topk_group + 16;   /* >= m, topk_group, K */
    return 2 * wide + 2 * (size_t)r->n_group;
}

static RouteScratch route_scratch(float *slot, const RouteShape *r)
{
    size_t wide = (size_t)r->K + (size_t)r->topk_group + 16;
    RouteScratch rs;
    rs.vals = slot;
    rs.gscore = slot + wide;
    rs.ids = (int32_t *)(slot + wide + r->n_group);
    rs.keep = rs.ids + wide;
    return rs;
}

/* Marks the kept groups in rs->keep (all when no group limit applies). */
static void route_groups(RouteScratch *rs, const float *s, const float *bias, const RouteShape *r)
{
    int G = r->E / r->n_group, m = r->K / r->topk_group;
    if (r->topk_group == r->n_group) {
        for (int g = 0; g < r->n_group; g++) rs->keep[g] = 1;
        return;
    }
    for (int g = 0; g < r->n_group; g++) {
        int len = 0;
        for (int e = g * G; e < (g + 1) * G; e++)
            topk_push(rs->vals, rs->ids, &len, m, s[e] + (bias ? bias[e] : 0.0f), e);
        float sum = 0.0f;
        for (int i = 0; i < m; i++) sum += rs->vals[i];
        rs->gscore[g] = sum;
        rs->keep[g] = 0;
    }
    int len = 0;
    for (int g = 0; g < r->n_group; g++) topk_push(rs->vals, rs->ids, &len, r->topk_group, rs->gscore[g], g);
    for (int i = 0; i < r->topk_group; i++) rs->keep[rs->ids[i]] = 1;
}

static void route_token(int32_t *idx, float *w, const float *s, const float *bias, const RouteShape *r,
                        RouteScratch *rs)
{
    int G = r->E / r->n_group, len = 0;
    route_groups(rs, s, bias, r);
    for (int g = 0; g < r->n_group; g++) {
        if (!rs->keep[g]) continue;
        for (int e = g * G; e < (g + 1) * G; e++)
            topk_push(rs->vals, idx, &len, r->K, s[e] + (bias ? bias[e] : 0.0f), e);
    }
    float sum = 0.0f;
    for (int k = 0; k < r->K; k++) sum += s[idx[k]];
    float c = r->norm_topk ? r->scaling / sum : r->scaling;
    for (int k = 0; k < r->K; k++) w[k] = s[idx[k]] * c;
}

/* bias may be NULL (no correction bias). */
void cpu_moe_route(Ops *o, int32_t *idx, float *w, const float *s, const float *bias, const RouteShape *r)
{
    route_shape_check(r);
    float *scratch = cpu_scratch(o, route_scratch_floats(r));
    size_t stride = cpu_scratch_stride(o);
    #pragma omp parallel for num_threads(cpu_threads(o)) if ((size_t)r->N * r->E > 32768)
    for (int n = 0; n < r->N; n++) {
        RouteScratch rs = route_scratch(scratch + (size_t)omp_get_thread_num() * stride, r);
        route_token(idx + (size_t)n * r->K, w + (size_t)n * r->K, s + (size_t)n * r->E, bias, r, &rs);
    }
}

/* With S = sum_k s[idx_k] and w_k = c s_k / S: ds_j += c/S (dw_j - sum_k dw_k s_k / S).
 * Without normalisation: ds_j += c dw_j. */
void cpu_moe_route_backward(Ops *o, float *ds, const float *dw, const float *s, const int32_t *idx,
                            const RouteShape *r)
{
    int K = r->K, E = r->E;
    #pragma omp parallel for num_threads(cpu_threads(o)) if ((size_t)r->N * K > 32768)
    for (int n = 0; n < r->N; n++) {
        const int32_t *id = idx + (size_t)n * K;   /* (K) */
        const float *g = dw + (size_t)n * K;       /* (K) */
        const float *sn = s + (size_t)n * E;       /* (E) */
        float *d = ds + (size_t)n * E;             /* (E) */
        if (!r->norm_topk) {
            for (int k = 0; k < K; k++) d[id[k]] += r->scaling * g[k];
            continue;
        }
        float S = 0.0f, gs = 0.0f;
        for (int k = 0; k < K; k++) { S += sn[id[k]]; gs += g[k] * sn[id[k]]; }
        float c = r->scaling / S, mean = gs / S;
        for (int k = 0; k < K; k++) d[id[k]] += c * (g[k] - mean);
    }
}

void cpu_moe_count(Ops *o, float *counts, const int32_t *idx, int n, int E)
{
    for (int i = 0; i < n; i++) {
        CHECK(idx[i] >= 0 && idx[i] < E);
        counts[idx[i]] += 1.0f;
    }
}

/* ---- sequence-wise balance loss ---- */

/* f (E) = E / (K T) * tokens of this sequence routed to each expert. */
static void balance_f(float *f, const int32_t *idx, int T, int E, int K)
{
    for (int e = 0; e < E; e++) f[e] = 0.0f;
    for (int i = 0; i < T * K; i++) {
        CHECK(idx[i] >= 0 && idx[i] < E);
        f[idx[i]] += 1.0f;
    }
    float c = (float)E / ((float)K * (float)T);
    for (int e = 0; e < E; e++) f[e] *= c;
}

void cpu_moe_balance_forward(Ops *o, float *loss, const float *s, const int32_t *idx, int B, int T,
                             const RouteShape *r, float alpha)
{
    int E = r->E, K = r->K;
    float *scratch = cpu_scratch(o, (size_t)E);
    size_t stride = cpu_scratch_stride(o);
    #pragma omp parallel for num_threads(cpu_threads(o)) if ((size_t)B * T * E > 32768)
    for (int b = 0; b < B; b++) {
        float *f = scratch + (size_t)omp_get_thread_num() * stride;   /* (E) */
        balance_f(f, idx + (size_t)b * T * K, T, E, K);
        double total = 0.0;   /* sum_i f_i P_i = (1/T) sum_t (sum_i f_i s_it) / Z_t */
        for (int t = 0; t < T; t++) {
            const float *st = s + ((size_t)b * T + t) * E;   /* (E) */
            double z = 0.0, fs = 0.0;
            for (int e = 0; e < E; e++) { z += st[e]; fs += (double)f[e] * st[e]; }
            total += fs / z;
        }
        loss[b] = (float)(alpha * total / T);
    }
}

/* d loss_b / d s_it = alpha / T (f_i / Z_t - (sum_j f_j s_jt) / Z_t^2); f is constant. */
void cpu_moe_balance_backward(Ops *o, float *ds, const float *dloss, const float *s, const int32_t *idx, int B,
                              int T, const RouteShape *r, float alpha)
{
    int E = r->E, K = r->K;
    float *scratch = cpu_scratch(o, (size_t)E);
    size_t stride = cpu_scratch_stride(o);
    #pragma omp parallel for num_threads(cpu_threads(o)) if ((size_t)B * T * E > 32768)
    for (int b = 0; b < B; b++) {
        float *f = scratch + (size_t)omp_get_thread_num() * stride;   /* (E) */
        balance_f(f, idx + (size_t)b * T * K, T, E, K);
        float c = dloss[b] * alpha / (float)T;
        for (int t = 0; t < T; t++) {
            const float *st = s + ((size_t)b * T + t) * E;   /* (E) */
            float *d = ds + ((size_t)b * T + t) * E;         /* (E) */
            double z = 0.0, fs = 0.0;
            for (int e = 0; e < E; e++) { z += st[e]; fs += (double)f[e] * st[e]; }
            float iz = (float)(1.0 / z), mean = (float)(fs / z);
            for (int e = 0; e < E; e++) d[e] += c * iz * (f[e] - mean);
        }
    }
}

/* ---- token permutation ---- */

/* Counting sort by expert, (n, k) in row-major order, so each expert's rows keep token order. */
void cpu_moe_permute_layout(Ops *o, int32_t *pos, int32_t *offsets, int32_t *offsets_host, const int32_t *idx,
                            int N, int K, int E)
{
    int32_t *cursor = (int32_t *)cpu_scratch(o, (size_t)E);   /* (E), thread slot 0 */
    for (int e = 0; e <= E; e++) offsets[e] = 0;
    for (size_t i = 0; i < (size_t)N * K; i++) {
        if (idx[i] < 0 || idx[i] >= E)
            DIE("moe permute: expert index %d at slot %zu is outside 0..%d", idx[i], i, E - 1);
        offsets[idx[i] + 1]++;
    }
    for (int e = 0; e < E; e++) {
        offsets[e + 1] += offsets[e];
        cursor[e] = offsets[e];
    }
    for (size_t i = 0; i < (size_t)N * K; i++) pos[i] = cursor[idx[i]]++;
    if (offsets_host && offsets_host != offsets) memcpy(offsets_host, offsets, (size_t)(E + 1) * sizeof(int32_t));
}

void cpu_moe_gather(Ops *o, act *xp_, const act *x_, const int32_t *pos, int N, int K, int C)
{
    float *xp = cpu_f(xp_);
    const float *x = cpu_cf(x_);
    #pragma omp parallel for num_threads(cpu_threads(o)) if ((size_t)N * K * C > 32768)
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++)
            memcpy(xp + (size_t)pos[(size_t)n * K + k] * C, x + (size_t)n * C, (size_t)C * sizeof(float));
}   /* copies of stored activations: already in the table's type */

void cpu_moe_gather_backward(Ops *o, act *dx_, const act *dxp_, const int32_t *pos, int N, int K, int C)
{
    float *dx = cpu_f(dx_);
    const float *dxp = cpu_cf(dxp_);
    #pragma omp parallel for num_threads(cpu_threads(o)) if ((size_t)N * K * C > 32768)
    for (int n = 0; n < N; n++) {
        float *d = dx + (size_t)n * C;   /* (C) */
        for (int k = 0; k < K; k++) {
            const float *g = dxp + (size_t)pos[(size_t)n * K + k] * C;   /* (C) */
            for (int c = 0; c < C; c++) d[c] += g[c];
        }
    }
    cpu_act_round(o, dx, (size_t)N * C);
}

void cpu_moe_combine(Ops *o, act *y_, const act *yp_, const float *w, const int32_t *pos, int N, int K, int C)
{
    float *y = cpu_f(y_);
    const float *yp = cpu_cf(yp_);
    #pragma omp parallel for num_threads(cpu_threads(o)) if ((size_t)N * K * C > 32768)
    for (int n = 0; n < N; n++) {
        float *out = y + (size_t)n * C;   /* (C) */
        for (int k = 0; k < K; k++) {
            const float *src = yp + (size_t)pos[(size_t)n * K + k] * C;   /* (C) */
            float wk = w[(size_t)n * K + k];
            for (int c = 0; c < C; c++) out[c] += wk * src[c];
        }
    }
    cpu_act_round(o, y, (size_t)N * C);
}

/* Each (n, k) owns its row pos[n, k], so rows of dyp never race. */
void cpu_moe_combine_backward(Ops *o, act *dyp_, float *dw, const act *dy_, const act *yp_, const float *w,
                              const int32_t *pos, int N, int K, int C)
{
    float *dyp = cpu_f(dyp_);
    const float *dy = cpu_cf(dy_), *yp = cpu_cf(yp_);
    #pragma omp parallel for num_threads(cpu_threads(o)) if ((size_t)N * K * C > 32768)
    for (int n = 0; n < N; n++) {
        const float *g = dy + (size_t)n * C;   /* (C) */
        for (int k = 0; k < K; k++) {
            size_t row = (size_t)pos[(size_t)n * K + k] * C;
            float wk = w[(size_t)n * K + k];
            double dot = 0.0;
            for (int c = 0; c < C; c++) {
                dyp[row + c] += wk * g[c];
                dot += (double)g[c] * yp[row + c];
            }
            dw[(size_t)n * K + k] += (float)dot;
        }
    }
    cpu_act_round(o, dyp, (size_t)N * K * C);
}
