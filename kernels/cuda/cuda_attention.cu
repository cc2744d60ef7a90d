/* kernels/cuda/cuda_attention.cu - CUDA backend: RoPE, MLA key/value assembly and causal
 * attention (forward and backward).
 *
 * Not here: the projections around attention (Linear, cuda_gemm.cu) or the RoPE tables (built
 * by the model). Math: SPEC.md section 3; expected results: kernels/cpu/cpu_attention.c.
 *
 * Attention is the CPU reference's row-tiled algorithm (FlashAttention-2's backward order,
 * scores rebuilt from the saved log-sum-exp) with the tile products as batched cuBLASLt
 * GEMMs over the heads, so any head dims work (MLA: Dqk = Dn + Dr = 192, Dv = 128) and the
 * products run on tensor cores in BF16. For one sequence b and a chunk of query rows
 * [i0, i0+nr), causal, so only keys [0, nk = i0+nr) are touched:
 *
 *     S  (H, nr, nk) = scale Q[i0:i0+nr] K[0:nk]^T          batched GEMM over heads
 *     P  = softmax(S) masked above the diagonal, lse kept    one warp per row
 *     O[i0:i0+nr]   = P V[0:nk]                              batched GEMM
 *   backward, P rebuilt from lse:
 *     dP = dO V^T;  dS = P (dP - rowsum(dO O))               GEMM, one warp per row
 *     dV[0:nk] += P^T dO;  dQ += scale dS K;  dK[0:nk] += scale dS^T Q
 *
 * The chunk height is chosen so that one chunk's P (and dP) stays under 256 MiB; the
 * score matrix of a chunk exists only in scratch, never T x T across calls. This computes the
 * masked upper part of each diagonal chunk too (about 25% extra products at T = 4096 with
 * 1024-row chunks) and moves P through memory; a fused on-chip kernel (FlashAttention-style)
 * is the faster path and would be checked against this one.
 */
#include "kernels/cuda/cuda_internal.h"

#include <math.h>

#define THREADS 256

#define GRID_STRIDE(i, n) \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

/* ---- RoPE: rotate interleaved pairs (x[2j], x[2j+1]) by t * inv_freq[j] ---- */

template <typename T>
__global__ void rope_kernel(T *x, const float *cos, const float *sin, RopeShape s, float dir)
{
    const int half = s.Dr / 2;
    GRID_STRIDE(i, (size_t)s.N * s.H * half) {
        size_t rh = i / half;
        int j = (int)(i - rh * half), h = (int)(rh % s.H), r = (int)(rh / s.H);
        T *p = x + (size_t)r * s.row_stride + (size_t)h * s.head_stride + s.offset;   /* (Dr) */
        int t = r % s.T;
        float c = cos[(size_t)t * half + j], si = dir * sin[(size_t)t * half + j];
        float a = act_ld(p, 2 * j), b = act_ld(p, 2 * j + 1);
        act_st(p, 2 * j, a * c - b * si);
        act_st(p, 2 * j + 1, a * si + b * c);
    }
}

static void rope_launch(Ops *o, act *x, const float *cos, const float *sin, const RopeShape *s, float dir)
{
    CHECK(s->Dr % 2 == 0 && s->T > 0);
    size_t n = (size_t)s->N * s->H * (s->Dr / 2);
    if (!n || s->N <= 0 || s->H <= 0) return;
    CUDA_ACT_DISPATCH(o, T, rope_kernel<<<cuda_blocks(n, THREADS), THREADS, 0, cuda_stream(o)>>>((T *)x, cos, sin, *s,
                                                                                                dir));
    CUDA_LAUNCH_CHECK();
}

void cuda_rope_forward(Ops *o, act *x, const float *cos, const float *sin, const RopeShape *s)
{
    CUDA_PROF(o, "rope_forward", "elementwise");
    rope_launch(o, x, cos, sin, s, 1.0f);
}

/* The rotation is orthogonal: its gradient is the inverse rotation. */
void cuda_rope_backward(Ops *o, act *dx, const float *cos, const float *sin, const RopeShape *s)
{
    CUDA_PROF(o, "rope_backward", "elementwise");
    rope_launch(o, dx, cos, sin, s, -1.0f);
}

/* ---- MLA: k = [k_nope_h | k_rope], v = v_h from kv = [k_nope_h | v_h] ---- */

template <typename T>
__global__ void mla_kv_split_kernel(T *k, T *v, const T *kv, const T *k_rope, MlaKvShape s)
{
    const int Dqk = s.Dn + s.Dr, Dkv = s.Dn + s.Dv;
    const size_t nk = (size_t)s.N * s.H * Dqk, nv = (size_t)s.N * s.H * s.Dv;
    GRID_STRIDE(i, nk + nv) {
        if (i < nk) {
            size_t nh = i / Dqk;
            int d = (int)(i - nh * Dqk);
            k[i] = d < s.Dn ? kv[nh * Dkv + d] : k_rope[(nh / s.H) * s.Dr + (d - s.Dn)];   /* copies */
        } else {
            size_t iv = i - nk, nh = iv / s.Dv;
            v[iv] = kv[nh * Dkv + s.Dn + (iv - nh * s.Dv)];
        }
    }
}

/* dkv += [dk_nope | dv] per head; dk_rope[n, d] += sum over heads in order of dk's rope part
 * (FP32 sum, one store). */
template <typename T>
__global__ void mla_kv_split_backward_kernel(T *dkv, T *dk_rope, const T *dk, const T *dv, MlaKvShape s)
{
    const int Dqk = s.Dn + s.Dr, Dkv = s.Dn + s.Dv;
    const size_t nkv = (size_t)s.N * s.H * Dkv, nr = (size_t)s.N * s.Dr;
    GRID_STRIDE(i, nkv + nr) {
        if (i < nkv) {
            size_t nh = i / Dkv;
            int d = (int)(i - nh * Dkv);
            act_st(dkv, i, act_ld(dkv, i) + (d < s.Dn ? act_ld(dk, nh * Dqk + d) : act_ld(dv, nh * s.Dv + (d - s.Dn))));
        } else {
            size_t ir = i - nkv, n = ir / s.Dr;
            int d = (int)(ir - n * s.Dr);
            float acc = act_ld(dk_rope, ir);
            for (int h = 0; h < s.H; h++) acc += act_ld(dk, (n * s.H + h) * Dqk + s.Dn + d);
            act_st(dk_rope, ir, acc);
        }
    }
}

void cuda_mla_kv_split(Ops *o, act *k, act *v, const act *kv, const act *k_rope, const MlaKvShape *s)
{
    CUDA_PROF(o, "mla_kv_split", "elementwise");
    size_t n = (size_t)s->N * s->H * (s->Dn + s->Dr + s->Dv);
    if (!n || s->N <= 0 || s->H <= 0) return;
    CUDA_ACT_DISPATCH(o, T, mla_kv_split_kernel<<<cuda_blocks(n, THREADS), THREADS, 0, cuda_stream(o)>>>(
                                (T *)k, (T *)v, (const T *)kv, (const T *)k_rope, *s));
    CUDA_LAUNCH_CHECK();
}

void cuda_mla_kv_split_backward(Ops *o, act *dkv, act *dk_rope, const act *dk, const act *dv, const MlaKvShape *s)
{
    CUDA_PROF(o, "mla_kv_split_backward", "elementwise");
    size_t n = (size_t)s->N * s->H * (s->Dn + s->Dv) + (size_t)s->N * s->Dr;
    if (!n || s->N <= 0) return;
    CUDA_ACT_DISPATCH(o, T, mla_kv_split_backward_kernel<<<cuda_blocks(n, THREADS), THREADS, 0, cuda_stream(o)>>>(
                                (T *)dkv, (T *)dk_rope, (const T *)dk, (const T *)dv, *s));
    CUDA_LAUNCH_CHECK();
}

/* ---- causal attention ---- */

/* Rows of one chunk: row = h * nr + r is query i = i0 + r of head h; keys j <= i visible. */
typedef struct AttnChunk {
    int H, nr, nk, i0, T, Dv;
    long long ldv;          /* H * Dv: row stride of out / dout */
} AttnChunk;

/* P (H, nr, nk): scores in, probabilities out (0 above the diagonal); lse_b (H, T) of this
 * sequence. One warp per row. */
__global__ void attn_softmax_rows_kernel(float *P, float *lse_b, AttnChunk c)
{
    const int lane = threadIdx.x & 31;
    const size_t rows = (size_t)c.H * c.nr;
    const size_t warps = ((size_t)gridDim.x * blockDim.x) >> 5;
    for (size_t row = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5; row < rows; row += warps) {
        const int h = (int)(row / c.nr), r = (int)(row % c.nr), i = c.i0 + r;
        float *p = P + row * c.nk;   /* (nk) */
        float mx = -INFINITY;
        for (int j = lane; j <= i; j += 32) mx = fmaxf(mx, p[j]);
        mx = cuda_warp_max(mx);
        float sum = 0.0f;
        for (int j = lane; j <= i; j += 32) {
            float e = expf(p[j] - mx);
            p[j] = e;
            sum += e;
        }
        sum = cuda_warp_sum(sum);
        const float inv = 1.0f / sum;
        for (int j = lane; j <= i; j += 32) p[j] *= inv;
        for (int j = i + 1 + lane; j < c.nk; j += 32) p[j] = 0.0f;
        if (lane == 0) lse_b[(size_t)h * c.T + i] = mx + logf(sum);
    }
}

/* P (H, nr, nk): scores in, P = exp(S - lse) out; dP (H, nr, nk): dO V^T in, dS = P (dP - D)
 * out, D = rowsum(dO * O); both 0 above the diagonal. dout_c, out_c: row i0 of this sequence
 * (rows ldv apart, head h at h * Dv). One warp per row. */
template <typename T>
__global__ void attn_backward_rows_kernel(float *P, float *dP, const float *lse_b, const T *dout_c, const T *out_c,
                                          AttnChunk c)
{
    const int lane = threadIdx.x & 31;
    const size_t rows = (size_t)c.H * c.nr;
    const size_t warps = ((size_t)gridDim.x * blockDim.x) >> 5;
    for (size_t row = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5; row < rows; row += warps) {
        const int h = (int)(row / c.nr), r = (int)(row % c.nr), i = c.i0 + r;
        const T *go = dout_c + (size_t)r * c.ldv + (size_t)h * c.Dv;   /* (Dv) */
        const T *oo = out_c + (size_t)r * c.ldv + (size_t)h * c.Dv;    /* (Dv) */
        float D = 0.0f;
        for (int d = lane; d < c.Dv; d += 32) D += act_ld(go, d) * act_ld(oo, d);
        D = cuda_warp_sum(D);
        const float l = lse_b[(size_t)h * c.T + i];
        float *p = P + row * c.nk, *dp = dP + row * c.nk;   /* (nk) */
        for (int j = lane; j <= i; j += 32) {
            float pj = expf(p[j] - l);
            p[j] = pj;
            dp[j] = pj * (dp[j] - D);
        }
        for (int j = i + 1 + lane; j < c.nk; j += 32) {
            p[j] = 0.0f;
            dp[j] = 0.0f;
        }
    }
}

/* Query rows per chunk: one chunk's (H, rows, T) floats within the state's chunk budget
 * (256 MiB unless overridden), a multiple of 64 when above 64. */
static int attn_chunk_rows(Ops *o, const AttnShape *s)
{
    size_t per_row = (size_t)s->H * s->T * sizeof(float);
    size_t rows = cuda_state(o)->attn_chunk_bytes / per_row;
    if (rows < 1) rows = 1;
    if (rows > (size_t)s->T) rows = (size_t)s->T;
    if (rows > 64) rows &= ~(size_t)63;
    return (int)rows;
}

static unsigned warp_rows_blocks(size_t rows) { return cuda_blocks(rows * 32, THREADS); }

/* S (H, nr, nk) = scale Q[i0:i0+nr] K[0:nk]^T for sequence b, into P (FP32). */
static void attn_scores(Ops *o, float *P, const act *q, const act *k, const AttnShape *s, int b, int i0, int nr)
{
    const long long ldqk = (long long)s->H * s->Dqk, nk = i0 + nr;
    const size_t seq = (size_t)b * s->T * ldqk;
    const cudaDataType_t at = cuda_act_type(o);
    CudaGemm g = { nr, (int)nk, s->Dqk, s->H, 0, 1, act_at_c(o, q, seq + (size_t)i0 * ldqk), ldqk, s->Dqk,
                   act_at_c(o, k, seq), ldqk, s->Dqk, P, nk, (long long)nr * nk, s->scale, 0.0f, 0, at, at,
                   CUDA_R_32F };
    cuda_gemm(o, &g);
}

/* Activations are read and written in the table's type (act_at offsets); P and dP stay FP32
 * for the softmax rows and are rounded to BF16 as GEMM operands under PREC_BF16 (a copy per
 * chunk: cuBLASLt multiplies operands of one type). */
void cuda_attention_forward(Ops *o, act *out, float *lse, const act *q, const act *k, const act *v,
                            const AttnShape *s)
{
    CUDA_PROF(o, "attention_forward", "attention");
    if (s->B <= 0 || s->T <= 0 || s->H <= 0) return;
    CHECK(s->Dqk > 0 && s->Dv > 0);
    const int R = attn_chunk_rows(o, s);
    const long long ldv = (long long)s->H * s->Dv;
    const cudaDataType_t at = cuda_act_type(o);
    float *P = (float *)cuda_scratch(o, SCR_ATTN_P, (size_t)s->H * R * s->T * sizeof(float));
    for (int b = 0; b < s->B; b++) {
        const size_t seq_v = (size_t)b * s->T * ldv;
        for (int i0 = 0; i0 < s->T; i0 += R) {
            const int nr = s->T - i0 < R ? s->T - i0 : R, nk = i0 + nr;
            attn_scores(o, P, q, k, s, b, i0, nr);
            AttnChunk c = { s->H, nr, nk, i0, s->T, s->Dv, ldv };
            attn_softmax_rows_kernel<<<warp_rows_blocks((size_t)s->H * nr), THREADS, 0, cuda_stream(o)>>>(
                P, lse + (size_t)b * s->H * s->T, c);
            CUDA_LAUNCH_CHECK();
            CudaGemm pv = { nr, s->Dv, nk, s->H, 0, 0, P, nk, (long long)nr * nk, act_at_c(o, v, seq_v), ldv, s->Dv,
                            act_at(o, out, seq_v + (size_t)i0 * ldv), ldv, s->Dv, 1.0f, 0.0f, 0, CUDA_R_32F, at, at };
            cuda_gemm(o, &pv);
        }
    }
}

/* The activations of one backward call. */
typedef struct AttnBwd {
    act *dq, *dk, *dv;
    const act *dout, *q, *k, *v, *out;
    const float *lse;
} AttnBwd;

/* One chunk of the backward of sequence b (see the file comment). */
static void attn_backward_chunk(Ops *o, const AttnBwd *a, const AttnShape *s, int b, int i0, int nr, float *P,
                                float *dP)
{
    const int nk = i0 + nr;
    const long long ldqk = (long long)s->H * s->Dqk, ldv = (long long)s->H * s->Dv, pstride = (long long)nr * nk;
    const size_t seq_qk = (size_t)b * s->T * ldqk, seq_v = (size_t)b * s->T * ldv;
    const cudaDataType_t at = cuda_act_type(o), f32 = CUDA_R_32F;
    const act *dO = act_at_c(o, a->dout, seq_v + (size_t)i0 * ldv);    /* (nr, H, Dv) */
    const act *Qc = act_at_c(o, a->q, seq_qk + (size_t)i0 * ldqk);     /* (nr, H, Dqk) */
    attn_scores(o, P, a->q, a->k, s, b, i0, nr);
    CudaGemm dpg = { nr, nk, s->Dv, s->H, 0, 1, dO, ldv, s->Dv, act_at_c(o, a->v, seq_v), ldv, s->Dv, dP, nk, pstride,
                     1.0f, 0.0f, 0, at, at, f32 };
    cuda_gemm(o, &dpg);
    AttnChunk c = { s->H, nr, nk, i0, s->T, s->Dv, ldv };
    const act *Oc = act_at_c(o, a->out, seq_v + (size_t)i0 * ldv);
    CUDA_ACT_DISPATCH(o, T, attn_backward_rows_kernel<<<warp_rows_blocks((size_t)s->H * nr), THREADS, 0,
                                                        cuda_stream(o)>>>(P, dP, a->lse + (size_t)b * s->H * s->T,
                                                                          (const T *)dO, (const T *)Oc, c));
    CUDA_LAUNCH_CHECK();
    /* dV[0:nk] += P^T dO */
    CudaGemm dvg = { nk, s->Dv, nr, s->H, 1, 0, P, nk, pstride, dO, ldv, s->Dv, act_at(o, a->dv, seq_v), ldv, s->Dv,
                     1.0f, 1.0f, 0, f32, at, at };
    cuda_gemm(o, &dvg);
    /* dQ[i0:i0+nr] += scale dS K[0:nk] */
    CudaGemm dqg = { nr, s->Dqk, nk, s->H, 0, 0, dP, nk, pstride, act_at_c(o, a->k, seq_qk), ldqk, s->Dqk,
                     act_at(o, a->dq, seq_qk + (size_t)i0 * ldqk), ldqk, s->Dqk, s->scale, 1.0f, 0, f32, at, at };
    cuda_gemm(o, &dqg);
    /* dK[0:nk] += scale dS^T Q[i0:i0+nr] */
    CudaGemm dkg = { nk, s->Dqk, nr, s->H, 1, 0, dP, nk, pstride, Qc, ldqk, s->Dqk, act_at(o, a->dk, seq_qk), ldqk,
                     s->Dqk, s->scale, 1.0f, 0, f32, at, at };
    cuda_gemm(o, &dkg);
}

void cuda_attention_backward(Ops *o, act *dq, act *dk, act *dv, const act *dout, const act *q, const act *k,
                             const act *v, const act *out, const float *lse, const AttnShape *s)
{
    CUDA_PROF(o, "attention_backward", "attention");
    if (s->B <= 0 || s->T <= 0 || s->H <= 0) return;
    CHECK(s->Dqk > 0 && s->Dv > 0);
    const int R = attn_chunk_rows(o, s);
    const size_t chunk = (size_t)s->H * R * s->T * sizeof(float);
    float *P = (float *)cuda_scratch(o, SCR_ATTN_P, chunk);
    float *dP = (float *)cuda_scratch(o, SCR_ATTN_DP, chunk);
    const AttnBwd a = { dq, dk, dv, dout, q, k, v, out, lse };
    for (int b = 0; b < s->B; b++)
        for (int i0 = 0; i0 < s->T; i0 += R)
            attn_backward_chunk(o, &a, s, b, i0, s->T - i0 < R ? s->T - i0 : R, P, dP);
}
