/* kernels/cpu/cpu_attention.c - CPU backend: RoPE, MLA key/value assembly and causal
 * attention (forward and backward).
 *
 * Not here: the projections around attention (Linear, cpu_dense.c) or the RoPE tables (built
 * by the model, YaRN folded in). Math: SPEC.md section 3; the attention backward is the
 * standard softmax derivative recomputed from the saved log-sum-exp, in the row-tiled form of
 * FlashAttention-2 (Dao, 2023, algorithm 2) without its on-chip blocking of the keys.
 *
 * Attention layout for one (b, h): query rows are processed in tiles of ATTN_TILE; a tile of
 * rows [i0, i1) needs keys [0, i1) only (causal), so about half of the T x T work is skipped:
 *
 *          keys 0 ........ T-1
 *   tile 0 [##    ]                S = scale Q_tile K[0:i1]^T     (nr, nk)  per-thread scratch
 *   tile 1 [####  ]                P = softmax(S masked j > i)    in place
 *   tile 2 [######]                O_tile = P V[0:i1]
 *
 * Nothing of size T x T survives between forward and backward: backward rebuilds P from lse.
 * Heads run in parallel (OpenMP over b*H); the per-tile GEMMs are single-threaded OpenBLAS
 * calls, so no second thread pool nests inside the OpenMP team.
 */
#include "kernels/cpu/cpu.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "runtime/common.h"

#define ATTN_TILE 64

/* Multiply-adds of QK^T and PV over all heads; below ~64k a parallel region costs more than it
 * saves. */
static int attention_parallel(const AttnShape *s)
{
    return s->B * s->H > 1 && (double)s->B * s->H * s->T * s->T * (s->Dqk + s->Dv) / 2 > 65536.0;
}

/* ---- RoPE: rotate interleaved pairs (x[2j], x[2j+1]) by t * inv_freq[j] ---- */

/* dir = +1 rotates forward, dir = -1 applies the inverse (transpose) rotation. */
static void rope_rotate(Ops *o, float *x, const float *cos, const float *sin, const RopeShape *s, float dir)
{
    CHECK(s->Dr % 2 == 0 && s->T > 0);
    int half = s->Dr / 2;
    #pragma omp parallel for num_threads(cpu_threads(o)) if ((size_t)s->N * s->H * s->Dr > 32768)
    for (int r = 0; r < s->N; r++) {
        const float *c = cos + (size_t)(r % s->T) * half;        /* (Dr/2) */
        const float *sn = sin + (size_t)(r % s->T) * half;       /* (Dr/2) */
        for (int h = 0; h < s->H; h++) {
            float *p = x + (size_t)r * s->row_stride + (size_t)h * s->head_stride + s->offset;   /* (Dr) */
            for (int j = 0; j < half; j++) {
                float a = p[2 * j], b = p[2 * j + 1], si = dir * sn[j];
                p[2 * j] = a * c[j] - b * si;
                p[2 * j + 1] = a * si + b * c[j];
            }
        }
    }
}

/* Rounds the span the rotation touched (values in it it did not write are stored
 * activations already, and rounding is idempotent). */
static void rope_round(Ops *o, act *x, const RopeShape *s)
{
    if (s->N <= 0 || s->H <= 0) return;
    size_t end = (size_t)(s->N - 1) * s->row_stride + (size_t)(s->H - 1) * s->head_stride + s->offset + s->Dr;
    cpu_act_round(o, cpu_f(x), end);
}

void cpu_rope_forward(Ops *o, act *x, const float *cos, const float *sin, const RopeShape *s)
{
    rope_rotate(o, cpu_f(x), cos, sin, s, 1.0f);
    rope_round(o, x, s);
}

/* The rotation is orthogonal, so its gradient is the inverse rotation of dx. */
void cpu_rope_backward(Ops *o, act *dx, const float *cos, const float *sin, const RopeShape *s)
{
    rope_rotate(o, cpu_f(dx), cos, sin, s, -1.0f);
    rope_round(o, dx, s);
}

/* ---- MLA: k = [k_nope_h | k_rope], v = v_h from kv = [k_nope_h | v_h] ---- */

static void mla_kv_split_f32(Ops *o, float *k, float *v, const float *kv, const float *k_rope, const MlaKvShape *s)
{
    int Dn = s->Dn, Dr = s->Dr, Dv = s->Dv, H = s->H;
    #pragma omp parallel for num_threads(cpu_threads(o)) if ((size_t)s->N * H * (Dn + Dv) > 32768)
    for (int n = 0; n < s->N; n++) {
        for (int h = 0; h < H; h++) {
            const float *src = kv + ((size_t)n * H + h) * (Dn + Dv);   /* (Dn+Dv) */
            float *kd = k + ((size_t)n * H + h) * (Dn + Dr);           /* (Dn+Dr) */
            memcpy(kd, src, (size_t)Dn * sizeof(float));
            memcpy(kd + Dn, k_rope + (size_t)n * Dr, (size_t)Dr * sizeof(float));
            memcpy(v + ((size_t)n * H + h) * Dv, src + Dn, (size_t)Dv * sizeof(float));
        }
    }
}

static void mla_kv_split_backward_f32(Ops *o, float *dkv, float *dk_rope, const float *dk, const float *dv,
                                      const MlaKvShape *s)
{
    int Dn = s->Dn, Dr = s->Dr, Dv = s->Dv, H = s->H;
    #pragma omp parallel for num_threads(cpu_threads(o)) if ((size_t)s->N * H * (Dn + Dv) > 32768)
    for (int n = 0; n < s->N; n++) {
        float *dr = dk_rope + (size_t)n * Dr;   /* (Dr), heads summed in order */
        for (int h = 0; h < H; h++) {
            float *dst = dkv + ((size_t)n * H + h) * (Dn + Dv);         /* (Dn+Dv) */
            const float *g = dk + ((size_t)n * H + h) * (Dn + Dr);      /* (Dn+Dr) */
            const float *gv = dv + ((size_t)n * H + h) * Dv;            /* (Dv) */
            for (int d = 0; d < Dn; d++) dst[d] += g[d];
            for (int d = 0; d < Dv; d++) dst[Dn + d] += gv[d];
            for (int d = 0; d < Dr; d++) dr[d] += g[Dn + d];
        }
    }
}

void cpu_mla_kv_split(Ops *o, act *k, act *v, const act *kv, const act *k_rope, const MlaKvShape *s)
{
    mla_kv_split_f32(o, cpu_f(k), cpu_f(v), cpu_cf(kv), cpu_cf(k_rope), s);   /* copies: no rounding */
}

void cpu_mla_kv_split_backward(Ops *o, act *dkv, act *dk_rope, const act *dk, const act *dv, const MlaKvShape *s)
{
    mla_kv_split_backward_f32(o, cpu_f(dkv), cpu_f(dk_rope), cpu_cf(dk), cpu_cf(dv), s);
    cpu_act_round(o, cpu_f(dkv), (size_t)s->N * s->H * (s->Dn + s->Dv));
    cpu_act_round(o, cpu_f(dk_rope), (size_t)s->N * s->Dr);
}

/* ---- causal attention ---- */

/* Pointers of one (b, h) inside the (B,T,H,D) tensors; rows are H*D apart. */
typedef struct HeadView {
    const float *q, *k, *v, *out;   /* row 0 of this head */
    int ldqk, ldv;                  /* H*Dqk, H*Dv */
    size_t off_qk, off_v;           /* offsets of row 0, for the gradient tensors */
} HeadView;

static HeadView head_view(const float *q, const float *k, const float *v, const float *out, const AttnShape *s,
                          int b, int h)
{
    HeadView hv;
    hv.ldqk = s->H * s->Dqk;
    hv.ldv = s->H * s->Dv;
    hv.off_qk = (size_t)b * s->T * hv.ldqk + (size_t)h * s->Dqk;
    hv.off_v = (size_t)b * s->T * hv.ldv + (size_t)h * s->Dv;
    hv.q = q + hv.off_qk;
    hv.k = k + hv.off_qk;
    hv.v = v + hv.off_v;
    hv.out = out ? out + hv.off_v : NULL;
    return hv;
}

/* S (nr, nk) = scale * Q[i0:i0+nr] K[0:nk]^T. */
static void tile_scores(float *S, const HeadView *hv, int i0, int nr, int nk, const AttnShape *s)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, nk, s->Dqk, s->scale,
                hv->q + (size_t)i0 * hv->ldqk, hv->ldqk, hv->k, hv->ldqk, 0.0f, S, nk);
}

static void attention_forward_head(float *out, float *lse, const HeadView *hv, const AttnShape *s, float *S)
{
    for (int i0 = 0; i0 < s->T; i0 += ATTN_TILE) {
        int nr = s->T - i0 < ATTN_TILE ? s->T - i0 : ATTN_TILE, nk = i0 + nr;
        tile_scores(S, hv, i0, nr, nk, s);
        for (int r = 0; r < nr; r++) {
            float *row = S + (size_t)r * nk;   /* (nk); keys j <= i are visible */
            int i = i0 + r;
            float mx = row[0], sum = 0.0f;
            #pragma omp simd reduction(max:mx)
            for (int j = 1; j <= i; j++) mx = row[j] > mx ? row[j] : mx;
            #pragma omp simd reduction(+:sum)
            for (int j = 0; j <= i; j++) {
                row[j] = cpu_exp(row[j] - mx);
                sum += row[j];
            }
            float inv = 1.0f / sum;
            for (int j = 0; j <= i; j++) row[j] *= inv;
            for (int j = i + 1; j < nk; j++) row[j] = 0.0f;
            lse[i] = mx + logf(sum);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, s->Dv, nk, 1.0f, S, nk, hv->v, hv->ldv,
                    0.0f, out + (size_t)i0 * hv->ldv, hv->ldv);
    }
}

static void attention_forward_f32(Ops *o, float *out, float *lse, const float *q, const float *k,
                                  const float *v, const AttnShape *s)
{
    if (s->B <= 0 || s->T <= 0 || s->H <= 0) return;
    CHECK(s->Dqk > 0 && s->Dv > 0);
    int nt = cpu_threads(o);
    float *scratch = cpu_scratch(o, (size_t)ATTN_TILE * s->T);
    size_t stride = cpu_scratch_stride(o);
    cpu_blas_threads(1);
    #pragma omp parallel for num_threads(nt) if (attention_parallel(s)) schedule(static)
    for (int bh = 0; bh < s->B * s->H; bh++) {
        int b = bh / s->H, h = bh % s->H;
        HeadView hv = head_view(q, k, v, NULL, s, b, h);
        float *S = scratch + (size_t)omp_get_thread_num() * stride;   /* (ATTN_TILE, T) */
        attention_forward_head(out + hv.off_v, lse + (size_t)bh * s->T, &hv, s, S);
    }
}

/* One row tile of the backward of one head:
 *   P = exp(S - lse) (0 above the diagonal)      dP = dO V^T
 *   dS = P * (dP - rowsum(dO * O))                (softmax derivative)
 *   dV += P^T dO    dQ += scale dS K    dK += scale dS^T Q */
static void attention_backward_tile(float *dq, float *dk, float *dv, const float *dout, const float *lse,
                                    const HeadView *hv, const AttnShape *s, int i0, float *P, float *dP)
{
    int nr = s->T - i0 < ATTN_TILE ? s->T - i0 : ATTN_TILE, nk = i0 + nr;
    const float *dO = dout + (size_t)i0 * hv->ldv;   /* (nr, Dv), row stride ldv */
    tile_scores(P, hv, i0, nr, nk, s);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, nk, s->Dv, 1.0f, dO, hv->ldv, hv->v, hv->ldv,
                0.0f, dP, nk);
    for (int r = 0; r < nr; r++) {
        int i = i0 + r;
        float *p = P + (size_t)r * nk, *dp = dP + (size_t)r * nk;   /* (nk) */
        const float *go = dO + (size_t)r * hv->ldv, *oo = hv->out + (size_t)i * hv->ldv;   /* (Dv) */
        float D = 0.0f, l = lse[i];
        #pragma omp simd reduction(+:D)
        for (int d = 0; d < s->Dv; d++) D += go[d] * oo[d];
        #pragma omp simd
        for (int j = 0; j <= i; j++) {
            p[j] = cpu_exp(p[j] - l);
            dp[j] = p[j] * (dp[j] - D);
        }
        for (int j = i + 1; j < nk; j++) { p[j] = 0.0f; dp[j] = 0.0f; }
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, s->Dv, nr, 1.0f, P, nk, dO, hv->ldv, 1.0f,
                dv, hv->ldv);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, s->Dqk, nk, s->scale, dP, nk, hv->k, hv->ldqk,
                1.0f, dq + (size_t)i0 * hv->ldqk, hv->ldqk);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, s->Dqk, nr, s->scale, dP, nk,
                hv->q + (size_t)i0 * hv->ldqk, hv->ldqk, 1.0f, dk, hv->ldqk);
}

static void attention_backward_f32(Ops *o, float *dq, float *dk, float *dv, const float *dout,
                                   const float *q, const float *k, const float *v, const float *out,
                                   const float *lse, const AttnShape *s)
{
    if (s->B <= 0 || s->T <= 0 || s->H <= 0) return;
    CHECK(s->Dqk > 0 && s->Dv > 0);
    int nt = cpu_threads(o);
    size_t tile = (size_t)ATTN_TILE * s->T;
    float *scratch = cpu_scratch(o, 2 * tile);
    size_t stride = cpu_scratch_stride(o);
    cpu_blas_threads(1);
    #pragma omp parallel for num_threads(nt) if (attention_parallel(s)) schedule(static)
    for (int bh = 0; bh < s->B * s->H; bh++) {
        int b = bh / s->H, h = bh % s->H;
        HeadView hv = head_view(q, k, v, out, s, b, h);
        float *P = scratch + (size_t)omp_get_thread_num() * stride;   /* (ATTN_TILE, T) */
        float *dP = P + tile;                                          /* (ATTN_TILE, T) */
        for (int i0 = 0; i0 < s->T; i0 += ATTN_TILE)
            attention_backward_tile(dq + hv.off_qk, dk + hv.off_qk, dv + hv.off_v, dout + hv.off_v,
                                    lse + (size_t)bh * s->T, &hv, s, i0, P, dP);
    }
}

void cpu_attention_forward(Ops *o, act *out, float *lse, const act *q, const act *k, const act *v,
                           const AttnShape *s)
{
    attention_forward_f32(o, cpu_f(out), lse, cpu_cf(q), cpu_cf(k), cpu_cf(v), s);
    if (s->B > 0 && s->T > 0 && s->H > 0) cpu_act_round(o, cpu_f(out), (size_t)s->B * s->T * s->H * s->Dv);
}

void cpu_attention_backward(Ops *o, act *dq, act *dk, act *dv, const act *dout, const act *q, const act *k,
                            const act *v, const act *out, const float *lse, const AttnShape *s)
{
    attention_backward_f32(o, cpu_f(dq), cpu_f(dk), cpu_f(dv), cpu_cf(dout), cpu_cf(q), cpu_cf(k), cpu_cf(v),
                           cpu_cf(out), lse, s);
    if (s->B <= 0 || s->T <= 0 || s->H <= 0) return;
    const size_t rows = (size_t)s->B * s->T * s->H;
    cpu_act_round(o, cpu_f(dq), rows * s->Dqk);
    cpu_act_round(o, cpu_f(dk), rows * s->Dqk);
    cpu_act_round(o, cpu_f(dv), rows * s->Dv);
}
