/* kernels/cuda/cuda_dense.cu - CUDA backend: elementwise entries, RMSNorm, SwiGLU, embedding,
 * softmax cross-entropy, AdamW, and device fills for benchmarks.
 *
 * Not here: GEMMs (cuda_gemm.cu), attention and RoPE (cuda_attention.cu), the router and the
 * permutation (cuda_moe.cu). Semantics: kernels/ops.h; the expected results are the CPU
 * reference's (kernels/cpu/cpu_dense.c), to rounding.
 *
 * Fusions (one pass where the CPU runs several loops): RMSNorm computes the row's sum of
 * squares and writes the normalised row in one block; cross-entropy's backward recomputes the
 * row's log-sum-exp and writes the gradient over the logits in place (dlogits == logits), so
 * no probability matrix is ever stored; AdamW updates parameter and both moments in one pass.
 *
 * Reductions that produce a parameter gradient (RMSNorm weight, embedding table) have an
 * order fixed by the shapes (row chunks summed in order; one block owns each table row), so
 * results repeat bit for bit.
 */
#include "kernels/cuda/cuda_internal.h"

#include <cuda_bf16.h>
#include <math.h>

#define THREADS 256

#define GRID_STRIDE(i, n) \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

/* ---- elementwise ---- */

template <typename T>
__global__ void add_kernel(T *y, const T *x, size_t n) { GRID_STRIDE(i, n) act_st(y, i, act_ld(y, i) + act_ld(x, i)); }
__global__ void scale_kernel(float *x, float s, size_t n) { GRID_STRIDE(i, n) x[i] *= s; }
__global__ void fill_kernel(float *p, float v, size_t n) { GRID_STRIDE(i, n) p[i] = v; }

void cuda_add(Ops *o, act *y, const act *x, size_t n)
{
    CUDA_PROF(o, "add", "elementwise");
    if (!n) return;
    CUDA_ACT_DISPATCH(o, T, add_kernel<<<cuda_blocks(n, THREADS), THREADS, 0, cuda_stream(o)>>>((T *)y, (const T *)x,
                                                                                               n));
    CUDA_LAUNCH_CHECK();
}

void cuda_scale(Ops *o, float *x, float s, size_t n)
{
    CUDA_PROF(o, "scale", "elementwise");
    if (!n) return;
    scale_kernel<<<cuda_blocks(n, THREADS), THREADS, 0, cuda_stream(o)>>>(x, s, n);
    CUDA_LAUNCH_CHECK();
}

void cuda_fill(Ops *o, float *p, size_t n, float value)
{
    if (!n) return;
    fill_kernel<<<cuda_blocks(n, THREADS), THREADS, 0, cuda_stream(o)>>>(p, value, n);
    CUDA_LAUNCH_CHECK();
}

/* splitmix64 of (seed, i): a counter-based stream, so any split of the index range agrees. */
__device__ inline uint64_t mix64(uint64_t z)
{
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Box-Muller from two 24-bit uniforms in (0, 1]. */
__global__ void fill_normal_kernel(float *p, size_t n, float std, uint64_t seed)
{
    GRID_STRIDE(i, n) {
        uint64_t r = mix64(seed ^ mix64((uint64_t)i));
        float u1 = ((float)(r >> 40) + 1.0f) * (1.0f / 16777216.0f);
        float u2 = (float)((r >> 16) & 0xFFFFFFu) * (1.0f / 16777216.0f);
        p[i] = std * sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
    }
}

void cuda_fill_normal_dev(Ops *o, float *p, size_t n, float std, uint64_t seed)
{
    if (!n) return;
    fill_normal_kernel<<<cuda_blocks(n, THREADS), THREADS, 0, cuda_stream(o)>>>(p, n, std, seed);
    CUDA_LAUNCH_CHECK();
}

/* Fixed grid (a function of n only) of double partial sums, then one block sums them in a
 * fixed tree: the same bits every run. */
#define SUMSQ_BLOCKS 1024
__global__ void sumsq_partial_kernel(double *part, const float *x, size_t n)
{
    __shared__ double red[32];
    double acc = 0.0;
    GRID_STRIDE(i, n) acc += (double)x[i] * (double)x[i];
    acc = cuda_block_sum(acc, red);
    if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

__global__ void sumsq_final_kernel(double *out, const double *part, int nparts)
{
    __shared__ double red[32];
    double acc = 0.0;
    for (int i = threadIdx.x; i < nparts; i += blockDim.x) acc += part[i];
    acc = cuda_block_sum(acc, red);
    if (threadIdx.x == 0) out[0] = acc;
}

double cuda_sumsq(Ops *o, const float *x, size_t n)
{
    CUDA_PROF(o, "sumsq", "optimizer");
    if (!n) return 0.0;
    CudaState *st = cuda_state(o);
    unsigned blocks = cuda_blocks(n, THREADS);
    if (blocks > SUMSQ_BLOCKS) blocks = SUMSQ_BLOCKS;
    double *part = (double *)cuda_scratch(o, SCR_REDUCE, (SUMSQ_BLOCKS + 1) * sizeof(double));
    sumsq_partial_kernel<<<blocks, THREADS, 0, st->stream>>>(part, x, n);
    CUDA_LAUNCH_CHECK();
    sumsq_final_kernel<<<1, 1024, 0, st->stream>>>(part + SUMSQ_BLOCKS, part, (int)blocks);
    CUDA_LAUNCH_CHECK();
    CUDA_CHECK(cudaMemcpyAsync(st->host_f64, part + SUMSQ_BLOCKS, sizeof(double), cudaMemcpyDeviceToHost,
                               st->stream));
    CUDA_CHECK(cudaStreamSynchronize(st->stream));
    cuda_check_device_errors(o);
    return st->host_f64[0];
}

/* ---- concat: out (N,A+Bc) = [a | b] ---- */

template <typename T>
__global__ void concat_forward_kernel(T *out, const T *a, const T *b, int N, int A, int Bc)
{
    const size_t W = (size_t)A + Bc;
    GRID_STRIDE(i, (size_t)N * W) {
        size_t n = i / W, j = i - n * W;
        out[i] = j < (size_t)A ? a[n * A + j] : b[n * Bc + (j - A)];   /* a copy: no rounding */
    }
}

template <typename T>
__global__ void concat_backward_kernel(T *da, T *db, const T *dout, int N, int A, int Bc)
{
    const size_t W = (size_t)A + Bc;
    GRID_STRIDE(i, (size_t)N * W) {
        size_t n = i / W, j = i - n * W;
        T *d = j < (size_t)A ? da : db;
        size_t at = j < (size_t)A ? n * A + j : n * Bc + (j - A);
        act_st(d, at, act_ld(d, at) + act_ld(dout, i));
    }
}

void cuda_concat_forward(Ops *o, act *out, const act *a, const act *b, int N, int A, int Bc)
{
    CUDA_PROF(o, "concat_forward", "elementwise");
    size_t n = (size_t)N * ((size_t)A + Bc);
    if (!n || N <= 0) return;
    CUDA_ACT_DISPATCH(o, T, concat_forward_kernel<<<cuda_blocks(n, THREADS), THREADS, 0, cuda_stream(o)>>>(
                                (T *)out, (const T *)a, (const T *)b, N, A, Bc));
    CUDA_LAUNCH_CHECK();
}

void cuda_concat_backward(Ops *o, act *da, act *db, const act *dout, int N, int A, int Bc)
{
    CUDA_PROF(o, "concat_backward", "elementwise");
    size_t n = (size_t)N * ((size_t)A + Bc);
    if (!n || N <= 0) return;
    CUDA_ACT_DISPATCH(o, T, concat_backward_kernel<<<cuda_blocks(n, THREADS), THREADS, 0, cuda_stream(o)>>>(
                                (T *)da, (T *)db, (const T *)dout, N, A, Bc));
    CUDA_LAUNCH_CHECK();
}

/* ---- RMSNorm: y = w * x * r, r = 1/sqrt(mean(x^2) + eps); one block per row ---- */

template <typename T>
__global__ void rmsnorm_forward_kernel(T *out, float *rstd, const T *inp, const float *weight, int N, int C, float eps)
{
    __shared__ float red[32];
    for (int n = blockIdx.x; n < N; n += gridDim.x) {
        const T *x = inp + (size_t)n * C;   /* (C) */
        T *y = out + (size_t)n * C;         /* (C) */
        float ss = 0.0f;
        for (int c = threadIdx.x; c < C; c += blockDim.x) ss += act_ld(x, c) * act_ld(x, c);
        ss = cuda_block_sum(ss, red);
        float r = (float)(1.0 / sqrt((double)ss / C + (double)eps));
        for (int c = threadIdx.x; c < C; c += blockDim.x) act_st(y, c, weight[c] * (act_ld(x, c) * r));
        if (threadIdx.x == 0) rstd[n] = r;
    }
}

void cuda_rmsnorm_forward(Ops *o, act *out, float *rstd, const act *inp, const float *weight, int N, int C,
                          float eps)
{
    CUDA_PROF(o, "rmsnorm_forward", "norm");
    if (N <= 0 || C <= 0) return;
    CUDA_ACT_DISPATCH(o, T, rmsnorm_forward_kernel<<<cuda_blocks((size_t)N * THREADS, THREADS), THREADS, 0,
                                                     cuda_stream(o)>>>((T *)out, rstd, (const T *)inp, weight, N, C,
                                                                       eps));
    CUDA_LAUNCH_CHECK();
}

/* dx += r w dy - x r^3 <w dy, x> / C (one block per row). */
template <typename T>
__global__ void rmsnorm_backward_dx_kernel(T *dinp, const T *dout, const T *inp, const float *weight,
                                           const float *rstd, int N, int C)
{
    __shared__ float red[32];
    for (int n = blockIdx.x; n < N; n += gridDim.x) {
        const T *dy = dout + (size_t)n * C, *x = inp + (size_t)n * C;   /* (C) */
        T *dx = dinp + (size_t)n * C;                                    /* (C) */
        float dot = 0.0f;
        for (int c = threadIdx.x; c < C; c += blockDim.x) dot += weight[c] * act_ld(dy, c) * act_ld(x, c);
        dot = cuda_block_sum(dot, red);
        float r = rstd[n];
        float k = (float)((double)r * r * r * dot / C);
        for (int c = threadIdx.x; c < C; c += blockDim.x)
            act_st(dx, c, act_ld(dx, c) + (r * weight[c] * act_ld(dy, c) - act_ld(x, c) * k));
    }
}

/* dweight partials: part (chunks, C), chunk j sums rows [j*RMS_ROWS, ...) in order. */
#define RMS_ROWS 64
template <typename T>
__global__ void rmsnorm_dweight_partial_kernel(float *part, const T *dout, const T *inp, const float *rstd, int N,
                                               int C)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x, chunk = blockIdx.y;
    if (c >= C) return;
    int n0 = chunk * RMS_ROWS, n1 = min(N, n0 + RMS_ROWS);
    float acc = 0.0f;
    for (int n = n0; n < n1; n++) acc += act_ld(dout, (size_t)n * C + c) * act_ld(inp, (size_t)n * C + c) * rstd[n];
    part[(size_t)chunk * C + c] = acc;
}

__global__ void rmsnorm_dweight_final_kernel(float *dweight, const float *part, int chunks, int C)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double acc = 0.0;
    for (int j = 0; j < chunks; j++) acc += part[(size_t)j * C + c];
    dweight[c] += (float)acc;
}

void cuda_rmsnorm_backward_input(Ops *o, act *dinp, const act *dout, const act *inp, const float *weight,
                                 const float *rstd, int N, int C)
{
    CUDA_PROF(o, "rmsnorm_backward_input", "norm");
    if (N <= 0 || C <= 0) return;
    CUDA_ACT_DISPATCH(o, T, rmsnorm_backward_dx_kernel<<<cuda_blocks((size_t)N * THREADS, THREADS), THREADS, 0,
                                                         cuda_stream(o)>>>((T *)dinp, (const T *)dout, (const T *)inp,
                                                                           weight, rstd, N, C));
    CUDA_LAUNCH_CHECK();
}

void cuda_rmsnorm_backward_weight(Ops *o, float *dweight, const act *dout, const act *inp, const float *rstd,
                                  int N, int C)
{
    CUDA_PROF(o, "rmsnorm_backward_weight", "norm");
    if (N <= 0 || C <= 0) return;
    cudaStream_t s = cuda_stream(o);
    int chunks = (N + RMS_ROWS - 1) / RMS_ROWS;
    CHECK(chunks <= 65535);
    float *part = (float *)cuda_scratch(o, SCR_REDUCE, (size_t)chunks * C * sizeof(float));
    dim3 grid((unsigned)((C + 127) / 128), (unsigned)chunks);
    CUDA_ACT_DISPATCH(o, T, rmsnorm_dweight_partial_kernel<<<grid, 128, 0, s>>>(part, (const T *)dout, (const T *)inp,
                                                                                rstd, N, C));
    CUDA_LAUNCH_CHECK();
    rmsnorm_dweight_final_kernel<<<(C + 127) / 128, 128, 0, s>>>(dweight, part, chunks, C);
    CUDA_LAUNCH_CHECK();
}

/* The two halves write disjoint outputs: one after the other is the fused op. */
void cuda_rmsnorm_backward(Ops *o, act *dinp, float *dweight, const act *dout, const act *inp, const float *weight,
                           const float *rstd, int N, int C)
{
    cuda_rmsnorm_backward_input(o, dinp, dout, inp, weight, rstd, N, C);
    cuda_rmsnorm_backward_weight(o, dweight, dout, inp, rstd, N, C);
}

/* ---- SwiGLU: gu (N,2F) = [gate | up] per row; out (N,F) = silu(gate) * up ---- */

template <typename T>
__global__ void swiglu_forward_kernel(T *out, const T *gu, int N, int F)
{
    GRID_STRIDE(i, (size_t)N * F) {
        size_t n = i / F, f = i - n * F;
        float g = act_ld(gu, n * 2 * F + f), u = act_ld(gu, n * 2 * F + F + f);
        act_st(out, i, g / (1.0f + expf(-g)) * u);
    }
}

/* d/dg silu(g) = sig(g) (1 + g (1 - sig(g))). */
template <typename T>
__global__ void swiglu_backward_kernel(T *dgu, const T *dout, const T *gu, int N, int F)
{
    GRID_STRIDE(i, (size_t)N * F) {
        size_t n = i / F, f = i - n * F;
        size_t ig = n * 2 * F + f, iu = ig + F;
        float g = act_ld(gu, ig), u = act_ld(gu, iu), dy = act_ld(dout, i);
        float sg = 1.0f / (1.0f + expf(-g));
        act_st(dgu, ig, act_ld(dgu, ig) + dy * u * sg * (1.0f + g * (1.0f - sg)));
        act_st(dgu, iu, act_ld(dgu, iu) + dy * g * sg);
    }
}

void cuda_swiglu_forward(Ops *o, act *out, const act *gu, int N, int F)
{
    CUDA_PROF(o, "swiglu_forward", "elementwise");
    if (N <= 0 || F <= 0) return;
    CUDA_ACT_DISPATCH(o, T, swiglu_forward_kernel<<<cuda_blocks((size_t)N * F, THREADS), THREADS, 0, cuda_stream(o)>>>(
                                (T *)out, (const T *)gu, N, F));
    CUDA_LAUNCH_CHECK();
}

void cuda_swiglu_backward(Ops *o, act *dgu, const act *dout, const act *gu, int N, int F)
{
    CUDA_PROF(o, "swiglu_backward", "elementwise");
    if (N <= 0 || F <= 0) return;
    CUDA_ACT_DISPATCH(o, T, swiglu_backward_kernel<<<cuda_blocks((size_t)N * F, THREADS), THREADS, 0, cuda_stream(o)>>>(
                                (T *)dgu, (const T *)dout, (const T *)gu, N, F));
    CUDA_LAUNCH_CHECK();
}

/* ---- embedding ---- */

template <typename T>
__global__ void embedding_forward_kernel(T *out, const int32_t *tokens, const float *table, int N, int C, int *err)
{
    GRID_STRIDE(i, (size_t)N * C) {
        size_t n = i / C, c = i - n * C;
        int t = tokens[n];
        if (t < 0) {
            if (c == 0) atomicOr(err, CUDA_ERR_EMBED_TOKEN);
            act_st(out, i, 0.0f);
        } else {
            act_st(out, i, table[(size_t)t * C + c]);
        }
    }
}

void cuda_embedding_forward(Ops *o, act *out, const int32_t *tokens, const float *table, int N, int C)
{
    CUDA_PROF(o, "embedding_forward", "embedding");
    if (N <= 0 || C <= 0) return;
    CudaState *st = cuda_state(o);
    CUDA_ACT_DISPATCH(o, T, embedding_forward_kernel<<<cuda_blocks((size_t)N * C, THREADS), THREADS, 0, st->stream>>>(
                                (T *)out, tokens, table, N, C, st->err_dev));
    CUDA_LAUNCH_CHECK();
}

/* Writes the positions m in [m0, m0 + blockDim) with tokens[m] == tok into list, in
 * increasing order; returns how many (every thread gets it). */
__device__ int block_collect_matches(int *list, int *warp_count, const int32_t *tokens, int m0, int N, int tok)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    int m = m0 + threadIdx.x;
    bool hit = m < N && tokens[m] == tok;
    unsigned mask = __ballot_sync(0xffffffffu, hit);
    __syncthreads();                    /* list and warp_count are free again */
    if (lane == 0) warp_count[warp] = __popc(mask);
    __syncthreads();
    int before = 0, total = 0;
    for (int w = 0; w < nwarps; w++) {
        before += w < warp ? warp_count[w] : 0;
        total += warp_count[w];
    }
    if (hit) list[before + __popc(mask & ((1u << lane) - 1u))] = m;
    __syncthreads();
    return total;
}

/* Block per token position n. The first position of each token id (its leader) adds the
 * gradient rows of every position with that id into the table row, in increasing position
 * order; no two blocks write the same row, so there is no race and no atomic. */
template <typename T>
__global__ void embedding_backward_kernel(float *dtable, const T *dout, const int32_t *tokens, int N, int C, int *err)
{
    __shared__ int list[THREADS];
    __shared__ int warp_count[THREADS / 32];
    for (int n = blockIdx.x; n < N; n += gridDim.x) {
        const int tok = tokens[n];
        if (tok < 0) {
            if (threadIdx.x == 0) atomicOr(err, CUDA_ERR_EMBED_TOKEN);
            continue;
        }
        int seen = 0;
        for (int m = threadIdx.x; m < n; m += blockDim.x) seen |= tokens[m] == tok;
        if (__syncthreads_or(seen)) continue;
        float *row = dtable + (size_t)tok * C;   /* (C) */
        for (int m0 = n; m0 < N; m0 += blockDim.x) {
            int count = block_collect_matches(list, warp_count, tokens, m0, N, tok);
            for (int i = 0; i < count; i++) {
                const T *src = dout + (size_t)list[i] * C;   /* (C) */
                for (int c = threadIdx.x; c < C; c += blockDim.x) row[c] += act_ld(src, c);
            }
        }
    }
}

void cuda_embedding_backward(Ops *o, float *dtable, const act *dout, const int32_t *tokens, int N, int C)
{
    CUDA_PROF(o, "embedding_backward", "embedding");
    if (N <= 0 || C <= 0) return;
    CudaState *st = cuda_state(o);
    CUDA_ACT_DISPATCH(o, T, embedding_backward_kernel<<<cuda_blocks((size_t)N * THREADS, THREADS), THREADS, 0,
                                                        st->stream>>>(dtable, (const T *)dout, tokens, N, C,
                                                                      st->err_dev));
    CUDA_LAUNCH_CHECK();
}

/* ---- cross-entropy: one block per row, online max and sum in one pass ---- */

/* lse of row x (V): each thread keeps (max, sum) of its elements; the block combines them. */
template <typename T>
__device__ float row_logsumexp(const T *x, int V, float *redf)
{
    float mx = -INFINITY, sum = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float v = act_ld(x, j);
        if (v > mx) {
            sum = sum * expf(mx - v) + 1.0f;
            mx = v;
        } else {
            sum += expf(v - mx);
        }
    }
    __syncthreads();
    float bmax = cuda_warp_max(mx);
    if ((threadIdx.x & 31) == 0) redf[threadIdx.x >> 5] = bmax;
    __syncthreads();
    bmax = -INFINITY;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) bmax = fmaxf(bmax, redf[w]);
    float part = mx == -INFINITY ? 0.0f : sum * expf(mx - bmax);
    float total = cuda_block_sum(part, redf);
    return bmax + logf(total);
}

template <typename T>
__global__ void xent_forward_kernel(float *losses, const T *logits, const int32_t *targets, int N, int V, int *err)
{
    __shared__ float redf[32];
    for (int n = blockIdx.x; n < N; n += gridDim.x) {
        const int t = targets[n];
        if (t >= V) {
            if (threadIdx.x == 0) { atomicOr(err, CUDA_ERR_XENT_TARGET); losses[n] = 0.0f; }
            continue;
        }
        if (t < 0) {
            if (threadIdx.x == 0) losses[n] = 0.0f;
            continue;
        }
        const T *x = logits + (size_t)n * V;   /* (V) */
        float lse = row_logsumexp(x, V, redf);
        if (threadIdx.x == 0) losses[n] = lse - act_ld(x, t);
    }
}

/* alias (dlogits == logits): the row is overwritten with its gradient, each element read by
 * the thread that then writes it; otherwise the gradient is added. The target's element
 * takes (old + g) - dloss before its one store, the CPU's order (one rounding under BF16). */
template <typename T>
__global__ void xent_backward_kernel(T *dlogits, const T *logits, const int32_t *targets, const float *dloss, int N,
                                     int V, int alias, int *err)
{
    __shared__ float redf[32];
    for (int n = blockIdx.x; n < N; n += gridDim.x) {
        const int t = targets[n];
        const T *x = logits + (size_t)n * V;   /* (V) */
        T *dx = dlogits + (size_t)n * V;       /* (V), may equal x */
        if (t >= V) {
            if (threadIdx.x == 0) atomicOr(err, CUDA_ERR_XENT_TARGET);
            continue;
        }
        if (t < 0) {
            if (alias)
                for (int j = threadIdx.x; j < V; j += blockDim.x) act_st(dx, j, 0.0f);
            continue;
        }
        float lse = row_logsumexp(x, V, redf), dl = dloss[n];
        for (int j = threadIdx.x; j < V; j += blockDim.x) {
            float g = dl * expf(act_ld(x, j) - lse);
            float v = alias ? g : act_ld(dx, j) + g;
            if (j == t) v -= dl;
            act_st(dx, j, v);
        }
        __syncthreads();    /* the next row's reads of redf follow this row's */
    }
}

void cuda_xent_forward(Ops *o, float *losses, const act *logits, const int32_t *targets, int N, int V)
{
    CUDA_PROF(o, "xent_forward", "xent");
    if (N <= 0) return;
    CudaState *st = cuda_state(o);
    CUDA_ACT_DISPATCH(o, T, xent_forward_kernel<<<cuda_blocks((size_t)N * 512, 512), 512, 0, st->stream>>>(
                                losses, (const T *)logits, targets, N, V, st->err_dev));
    CUDA_LAUNCH_CHECK();
}

void cuda_xent_backward(Ops *o, act *dlogits, const act *logits, const int32_t *targets, const float *dloss, int N,
                        int V)
{
    CUDA_PROF(o, "xent_backward", "xent");
    if (N <= 0) return;
    CudaState *st = cuda_state(o);
    CUDA_ACT_DISPATCH(o, T, xent_backward_kernel<<<cuda_blocks((size_t)N * 512, 512), 512, 0, st->stream>>>(
                                (T *)dlogits, (const T *)logits, targets, dloss, N, V, dlogits == logits,
                                st->err_dev));
    CUDA_LAUNCH_CHECK();
}

/* ---- AdamW (decoupled weight decay), one pass over parameter and moments ---- */

__global__ void adamw_kernel(float *param, const float *grad, float *m, float *v, size_t n, float b1, float b2,
                             float lr, float eps, float wd, float bc1, float bc2, int round)
{
    GRID_STRIDE(i, n) {
        float g = grad[i];
        float mi = b1 * m[i] + (1.0f - b1) * g;
        float vi = b2 * v[i] + (1.0f - b2) * g * g;
        float mhat = mi / bc1, vhat = vi / bc2;
        param[i] -= lr * (mhat / (sqrtf(vhat) + eps) + wd * param[i]);
        m[i] = round ? __bfloat162float(__float2bfloat16_rn(mi)) : mi;
        v[i] = round ? __bfloat162float(__float2bfloat16_rn(vi)) : vi;
    }
}

void cuda_adamw_update(Ops *o, float *param, const float *grad, float *m, float *v, size_t n, const AdamArgs *a)
{
    CUDA_PROF(o, "adamw_update", "optimizer");
    CHECK(a->step >= 1);
    if (!n) return;
    float bc1 = (float)(1.0 - pow((double)a->beta1, a->step));
    float bc2 = (float)(1.0 - pow((double)a->beta2, a->step));
    adamw_kernel<<<cuda_blocks(n, THREADS), THREADS, 0, cuda_stream(o)>>>(
        param, grad, m, v, n, a->beta1, a->beta2, a->lr, a->eps, a->weight_decay, bc1, bc2, a->bf16_moments);
    CUDA_LAUNCH_CHECK();
}
