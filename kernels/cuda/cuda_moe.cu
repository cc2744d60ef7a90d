/* kernels/cuda/cuda_moe.cu - CUDA backend: router sigmoid, group-limited top-K routing and
 * its backward, expert load counts, the sequence-wise balance loss, and the expert-major
 * token permutation (layout, gather, combine).
 *
 * Not here: the expert FFNs (Linear and SwiGLU entries, one GEMM per expert launched by the
 * model from the host copy of the offsets). Math: SPEC.md section 4; expected results:
 * kernels/cpu/cpu_moe.c, whose routing this file repeats operation for operation (same
 * insertion top-k, same float sums in the same order, ties toward the lower index), so equal
 * scores give the same experts and the same weights bit for bit.
 *
 * Permutation (stable counting sort by expert, (n, k) in row-major order):
 *
 *   slots i = n*K + k, in chunks of 256:   chunk 0 | chunk 1 | ...
 *   1. per chunk, count slots per expert              hist (chunks, E)
 *   2. per expert, exclusive scan over chunks, plus the expert's first row (offsets)
 *   3. per slot, pos = hist[chunk][e] + (slots before it in its chunk with the same e)
 *
 * so within an expert, rows follow slot order exactly as on the CPU; the counts are integer
 * atomics (order-free), so the layout repeats bit for bit.
 */
#include "kernels/cuda/cuda_internal.h"

#include <math.h>
#include <string.h>

#define THREADS 256
#define PERMUTE_CHUNK 256
#define ROUTE_MAX 64            /* largest K and n_group this kernel's local lists hold */

#define GRID_STRIDE(i, n) \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

/* ---- router sigmoid ---- */

__global__ void sigmoid_forward_kernel(float *s, const float *logits, size_t n)
{
    GRID_STRIDE(i, n) s[i] = 1.0f / (1.0f + expf(-logits[i]));
}

__global__ void sigmoid_backward_kernel(float *dlogits, const float *ds, const float *s, size_t n)
{
    GRID_STRIDE(i, n) dlogits[i] += ds[i] * s[i] * (1.0f - s[i]);
}

void cuda_sigmoid_forward(Ops *o, float *s, const float *logits, size_t n)
{
    CUDA_PROF(o, "sigmoid_forward", "router");
    if (!n) return;
    sigmoid_forward_kernel<<<cuda_blocks(n, THREADS), THREADS, 0, cuda_stream(o)>>>(s, logits, n);
    CUDA_LAUNCH_CHECK();
}

void cuda_sigmoid_backward(Ops *o, float *dlogits, const float *ds, const float *s, size_t n)
{
    CUDA_PROF(o, "sigmoid_backward", "router");
    if (!n) return;
    sigmoid_backward_kernel<<<cuda_blocks(n, THREADS), THREADS, 0, cuda_stream(o)>>>(dlogits, ds, s, n);
    CUDA_LAUNCH_CHECK();
}

/* ---- routing: one thread per token ---- */

/* Offer (v, id) to the descending list vals/ids (length *len, capacity k); an equal value
 * never passes an entry already there (ties toward the id offered first). */
__device__ inline void topk_push(float *vals, int32_t *ids, int *len, int k, float v, int32_t id)
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

__global__ void moe_route_kernel(int32_t *idx, float *w, const float *s, const float *bias, RouteShape r)
{
    const int G = r.E / r.n_group, m = r.K / r.topk_group;
    for (int n = blockIdx.x * blockDim.x + threadIdx.x; n < r.N; n += gridDim.x * blockDim.x) {
        const float *sn = s + (size_t)n * r.E;   /* (E) */
        float vals[ROUTE_MAX], gscore[ROUTE_MAX];
        int32_t ids[ROUTE_MAX], out[ROUTE_MAX];
        unsigned char keep[ROUTE_MAX];
        for (int g = 0; g < r.n_group; g++) keep[g] = r.topk_group == r.n_group;
        if (r.topk_group != r.n_group) {
            for (int g = 0; g < r.n_group; g++) {
                int len = 0;
                for (int e = g * G; e < (g + 1) * G; e++)
                    topk_push(vals, ids, &len, m, sn[e] + (bias ? bias[e] : 0.0f), e);
                float sum = 0.0f;
                for (int i = 0; i < m; i++) sum += vals[i];
                gscore[g] = sum;
            }
            int len = 0;
            for (int g = 0; g < r.n_group; g++) topk_push(vals, ids, &len, r.topk_group, gscore[g], g);
            for (int i = 0; i < r.topk_group; i++) keep[ids[i]] = 1;
        }
        int len = 0;
        for (int g = 0; g < r.n_group; g++) {
            if (!keep[g]) continue;
            for (int e = g * G; e < (g + 1) * G; e++)
                topk_push(vals, out, &len, r.K, sn[e] + (bias ? bias[e] : 0.0f), e);
        }
        float sum = 0.0f;
        for (int k = 0; k < r.K; k++) sum += sn[out[k]];
        float c = r.norm_topk ? r.scaling / sum : r.scaling;
        for (int k = 0; k < r.K; k++) {
            idx[(size_t)n * r.K + k] = out[k];
            w[(size_t)n * r.K + k] = sn[out[k]] * c;
        }
    }
}

/* the shared contract (kernels/backend.c), then this kernel's local-array limit */
static void route_check(const RouteShape *r)
{
    route_shape_check(r);
    if (r->K > ROUTE_MAX || r->n_group > ROUTE_MAX)
        DIE("moe routing: num_experts_per_tok = %d or n_group = %d exceeds the cuda router's limit of %d",
            r->K, r->n_group, ROUTE_MAX);
}

void cuda_moe_route(Ops *o, int32_t *idx, float *w, const float *s, const float *bias, const RouteShape *r)
{
    CUDA_PROF(o, "moe_route", "router");
    route_check(r);
    if (r->N <= 0) return;
    moe_route_kernel<<<cuda_blocks((size_t)r->N, 128), 128, 0, cuda_stream(o)>>>(idx, w, s, bias, *r);
    CUDA_LAUNCH_CHECK();
}

/* With S = sum_k s[idx_k], w_k = c s_k / S: ds_j += c/S (dw_j - sum_k dw_k s_k / S);
 * without normalisation ds_j += c dw_j. One thread per token (it owns its row of ds). */
__global__ void moe_route_backward_kernel(float *ds, const float *dw, const float *s, const int32_t *idx,
                                          RouteShape r)
{
    for (int n = blockIdx.x * blockDim.x + threadIdx.x; n < r.N; n += gridDim.x * blockDim.x) {
        const int32_t *id = idx + (size_t)n * r.K;   /* (K) */
        const float *g = dw + (size_t)n * r.K;       /* (K) */
        const float *sn = s + (size_t)n * r.E;       /* (E) */
        float *d = ds + (size_t)n * r.E;             /* (E) */
        if (!r.norm_topk) {
            for (int k = 0; k < r.K; k++) d[id[k]] += r.scaling * g[k];
            continue;
        }
        float S = 0.0f, gs = 0.0f;
        for (int k = 0; k < r.K; k++) {
            S += sn[id[k]];
            gs += g[k] * sn[id[k]];
        }
        float c = r.scaling / S, mean = gs / S;
        for (int k = 0; k < r.K; k++) d[id[k]] += c * (g[k] - mean);
    }
}

void cuda_moe_route_backward(Ops *o, float *ds, const float *dw, const float *s, const int32_t *idx,
                             const RouteShape *r)
{
    CUDA_PROF(o, "moe_route_backward", "router");
    if (r->N <= 0) return;
    moe_route_backward_kernel<<<cuda_blocks((size_t)r->N, 128), 128, 0, cuda_stream(o)>>>(ds, dw, s, idx, *r);
    CUDA_LAUNCH_CHECK();
}

/* counts[e] += 1 per slot: float atomics of whole numbers are exact below 2^24, so the
 * result does not depend on their order. */
__global__ void moe_count_kernel(float *counts, const int32_t *idx, int n, int E, int *err)
{
    GRID_STRIDE(i, (size_t)n) {
        int e = idx[i];
        if (e < 0 || e >= E) atomicOr(err, CUDA_ERR_EXPERT_INDEX);
        else atomicAdd(&counts[e], 1.0f);
    }
}

void cuda_moe_count(Ops *o, float *counts, const int32_t *idx, int n, int E)
{
    CUDA_PROF(o, "moe_count", "router");
    if (n <= 0) return;
    CudaState *st = cuda_state(o);
    moe_count_kernel<<<cuda_blocks((size_t)n, THREADS), THREADS, 0, st->stream>>>(counts, idx, n, E, st->err_dev);
    CUDA_LAUNCH_CHECK();
}

/* ---- sequence-wise balance loss ---- */

/* f (B, E): f[b][e] = E / (K T) * slots of sequence b routed to e. One block per sequence. */
__global__ void balance_f_kernel(float *f, const int32_t *idx, int T, int E, int K, int *err)
{
    extern __shared__ int cnt[];   /* (E) */
    const int b = blockIdx.x;
    for (int e = threadIdx.x; e < E; e += blockDim.x) cnt[e] = 0;
    __syncthreads();
    const int32_t *ib = idx + (size_t)b * T * K;
    for (int i = threadIdx.x; i < T * K; i += blockDim.x) {
        int e = ib[i];
        if (e < 0 || e >= E) atomicOr(err, CUDA_ERR_EXPERT_INDEX);
        else atomicAdd(&cnt[e], 1);
    }
    __syncthreads();
    const float c = (float)E / ((float)K * (float)T);
    for (int e = threadIdx.x; e < E; e += blockDim.x) f[(size_t)b * E + e] = (float)cnt[e] * c;
}

/* One warp per token row (b, t): z = sum_e s, fs = sum_e f_e s (double). Forward keeps
 * fs / z per row; backward adds dloss_b alpha / T (f_e / z - fs / z^2) to ds. */
__global__ void balance_rows_kernel(double *ratio, float *ds, const float *dloss, const float *f, const float *s,
                                    int B, int T, int E, float alpha)
{
    const int lane = threadIdx.x & 31;
    const size_t rows = (size_t)B * T, warps = ((size_t)gridDim.x * blockDim.x) >> 5;
    for (size_t row = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5; row < rows; row += warps) {
        const size_t b = row / T;
        const float *st = s + row * E, *fb = f + b * E;   /* (E), (E) */
        double z = 0.0, fs = 0.0;
        for (int e = lane; e < E; e += 32) {
            z += st[e];
            fs += (double)fb[e] * st[e];
        }
        z = cuda_warp_sum(z);
        fs = cuda_warp_sum(fs);
        if (ratio) {
            if (lane == 0) ratio[row] = fs / z;
            continue;
        }
        const float c = dloss[b] * alpha / (float)T, iz = (float)(1.0 / z), mean = (float)(fs / z);
        float *d = ds + row * E;   /* (E) */
        for (int e = lane; e < E; e += 32) d[e] += c * iz * (fb[e] - mean);
    }
}

/* loss[b] = alpha / T * sum_t ratio[b][t], one block per sequence, fixed tree. */
__global__ void balance_sum_kernel(float *loss, const double *ratio, int T, float alpha)
{
    __shared__ double red[32];
    const int b = blockIdx.x;
    double acc = 0.0;
    for (int t = threadIdx.x; t < T; t += blockDim.x) acc += ratio[(size_t)b * T + t];
    acc = cuda_block_sum(acc, red);
    if (threadIdx.x == 0) loss[b] = (float)(alpha * acc / T);
}

/* f (B,E) floats then, 8-byte aligned, B*T doubles. */
static float *balance_f(Ops *o, const int32_t *idx, int B, int T, const RouteShape *r, double **ratio)
{
    CudaState *st = cuda_state(o);
    size_t f_bytes = ((size_t)B * r->E * sizeof(float) + 7) & ~(size_t)7;
    char *buf = (char *)cuda_scratch(o, SCR_REDUCE, f_bytes + (size_t)B * T * sizeof(double));
    float *f = (float *)buf;
    *ratio = (double *)(buf + f_bytes);
    balance_f_kernel<<<B, THREADS, (size_t)r->E * sizeof(int), st->stream>>>(f, idx, T, r->E, r->K, st->err_dev);
    CUDA_LAUNCH_CHECK();
    return f;
}

void cuda_moe_balance_forward(Ops *o, float *loss, const float *s, const int32_t *idx, int B, int T,
                              const RouteShape *r, float alpha)
{
    CUDA_PROF(o, "moe_balance_forward", "router");
    if (B <= 0 || T <= 0) return;
    double *ratio;
    float *f = balance_f(o, idx, B, T, r, &ratio);
    cudaStream_t st = cuda_stream(o);
    balance_rows_kernel<<<cuda_blocks((size_t)B * T * 32, THREADS), THREADS, 0, st>>>(ratio, NULL, NULL, f, s, B, T,
                                                                                       r->E, alpha);
    CUDA_LAUNCH_CHECK();
    balance_sum_kernel<<<B, THREADS, 0, st>>>(loss, ratio, T, alpha);
    CUDA_LAUNCH_CHECK();
}

void cuda_moe_balance_backward(Ops *o, float *ds, const float *dloss, const float *s, const int32_t *idx, int B,
                               int T, const RouteShape *r, float alpha)
{
    CUDA_PROF(o, "moe_balance_backward", "router");
    if (B <= 0 || T <= 0) return;
    double *ratio;
    float *f = balance_f(o, idx, B, T, r, &ratio);
    balance_rows_kernel<<<cuda_blocks((size_t)B * T * 32, THREADS), THREADS, 0, cuda_stream(o)>>>(
        NULL, ds, dloss, f, s, B, T, r->E, alpha);
    CUDA_LAUNCH_CHECK();
}

/* ---- token permutation ---- */

__global__ void permute_hist_kernel(int32_t *hist, const int32_t *idx, int n, int E, int *err)
{
    extern __shared__ int cnt[];   /* (E) */
    for (int e = threadIdx.x; e < E; e += blockDim.x) cnt[e] = 0;
    __syncthreads();
    int i = blockIdx.x * PERMUTE_CHUNK + threadIdx.x;
    if (i < n) {
        int e = idx[i];
        if (e < 0 || e >= E) atomicOr(err, CUDA_ERR_EXPERT_INDEX);
        else atomicAdd(&cnt[e], 1);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x) hist[(size_t)blockIdx.x * E + e] = cnt[e];
}

/* One block: per expert, exclusive scan of hist over chunks; offsets = exclusive scan of the
 * totals over experts; then every chunk base gets its expert's first row added. */
__global__ void permute_scan_kernel(int32_t *hist, int32_t *offsets, int chunks, int E)
{
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        int running = 0;
        for (int c = 0; c < chunks; c++) {
            int h = hist[(size_t)c * E + e];
            hist[(size_t)c * E + e] = running;
            running += h;
        }
        offsets[e + 1] = running;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        offsets[0] = 0;
        for (int e = 0; e < E; e++) offsets[e + 1] += offsets[e];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        int base = offsets[e];
        for (int c = 0; c < chunks; c++) hist[(size_t)c * E + e] += base;
    }
}

__global__ void permute_rank_kernel(int32_t *pos, const int32_t *hist, const int32_t *idx, int n, int E)
{
    __shared__ int ex[PERMUTE_CHUNK];
    int i = blockIdx.x * PERMUTE_CHUNK + threadIdx.x;
    ex[threadIdx.x] = i < n ? idx[i] : -1;
    __syncthreads();
    if (i >= n) return;
    int e = ex[threadIdx.x];
    if (e < 0 || e >= E) return;   /* reported by the histogram */
    int rank = 0;
    for (int j = 0; j < (int)threadIdx.x; j++) rank += ex[j] == e;
    pos[i] = hist[(size_t)blockIdx.x * E + e] + rank;
}

void cuda_moe_permute_layout(Ops *o, int32_t *pos, int32_t *offsets, int32_t *offsets_host, const int32_t *idx,
                             int N, int K, int E)
{
    CUDA_PROF(o, "moe_permute_layout", "permute");
    CHECK(E >= 1);
    CudaState *st = cuda_state(o);
    const int n = N * K, chunks = (n + PERMUTE_CHUNK - 1) / PERMUTE_CHUNK;
    if (chunks > 0) {
        int32_t *hist = (int32_t *)cuda_scratch(o, SCR_INDEX, (size_t)chunks * E * sizeof(int32_t));
        const size_t smem = (size_t)E * sizeof(int);
        permute_hist_kernel<<<chunks, PERMUTE_CHUNK, smem, st->stream>>>(hist, idx, n, E, st->err_dev);
        CUDA_LAUNCH_CHECK();
        permute_scan_kernel<<<1, 1024, 0, st->stream>>>(hist, offsets, chunks, E);
        CUDA_LAUNCH_CHECK();
        permute_rank_kernel<<<chunks, PERMUTE_CHUNK, 0, st->stream>>>(pos, hist, idx, n, E);
        CUDA_LAUNCH_CHECK();
    } else {
        CUDA_CHECK(cudaMemsetAsync(offsets, 0, (size_t)(E + 1) * sizeof(int32_t), st->stream));
    }
    if ((size_t)E + 1 > st->host_i32_n) {
        CUDA_CHECK(cudaStreamSynchronize(st->stream));
        CUDA_CHECK(cudaFreeHost(st->host_i32));
        st->host_i32_n = (size_t)E + 1;
        CUDA_CHECK(cudaMallocHost((void **)&st->host_i32, st->host_i32_n * sizeof(int32_t)));
    }
    CUDA_CHECK(cudaMemcpyAsync(st->host_i32, offsets, (size_t)(E + 1) * sizeof(int32_t), cudaMemcpyDeviceToHost,
                               st->stream));
    CUDA_CHECK(cudaStreamSynchronize(st->stream));
    int err = 0;
    CUDA_CHECK(cudaMemcpy(&err, st->err_dev, sizeof err, cudaMemcpyDeviceToHost));
    if (err & CUDA_ERR_EXPERT_INDEX)
        DIE("moe permute: an expert index is outside 0..%d (found on device 'cuda')", E - 1);
    cuda_check_device_errors(o);
    if (offsets_host) memcpy(offsets_host, st->host_i32, (size_t)(E + 1) * sizeof(int32_t));
}

/* xp[pos[n,k]] = x[n]. */
template <typename T>
__global__ void moe_gather_kernel(T *xp, const T *x, const int32_t *pos, int N, int K, int C)
{
    GRID_STRIDE(i, (size_t)N * K * C) {
        size_t slot = i / C, c = i - slot * C;
        xp[(size_t)pos[slot] * C + c] = x[(slot / K) * C + c];   /* a copy: no rounding */
    }
}

/* dx[n] += sum over k in order of dxp[pos[n,k]] (FP32 sum, one store). */
template <typename T>
__global__ void moe_gather_backward_kernel(T *dx, const T *dxp, const int32_t *pos, int N, int K, int C)
{
    GRID_STRIDE(i, (size_t)N * C) {
        size_t n = i / C, c = i - n * C;
        float acc = act_ld(dx, i);
        for (int k = 0; k < K; k++) acc += act_ld(dxp, (size_t)pos[n * K + k] * C + c);
        act_st(dx, i, acc);
    }
}

/* y[n] += sum over k in order of w[n,k] yp[pos[n,k]] (FP32 sum, one store). */
template <typename T>
__global__ void moe_combine_kernel(T *y, const T *yp, const float *w, const int32_t *pos, int N, int K, int C)
{
    GRID_STRIDE(i, (size_t)N * C) {
        size_t n = i / C, c = i - n * C;
        float acc = act_ld(y, i);
        for (int k = 0; k < K; k++) acc += w[n * K + k] * act_ld(yp, (size_t)pos[n * K + k] * C + c);
        act_st(y, i, acc);
    }
}

/* One block per slot (n, k), which owns row pos[n,k] of dyp: dyp[row] += w dy[n];
 * dw[n,k] += <dy[n], yp[row]> (double, fixed tree). */
template <typename T>
__global__ void moe_combine_backward_kernel(T *dyp, float *dw, const T *dy, const T *yp, const float *w,
                                            const int32_t *pos, int N, int K, int C)
{
    __shared__ double red[32];
    for (size_t slot = blockIdx.x; slot < (size_t)N * K; slot += gridDim.x) {
        const size_t n = slot / K, row = (size_t)pos[slot] * C;
        const T *g = dy + n * C;   /* (C) */
        const float wk = w[slot];
        double dot = 0.0;
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            const float gc = act_ld(g, c);
            act_st(dyp, row + c, act_ld(dyp, row + c) + wk * gc);
            dot += (double)gc * act_ld(yp, row + c);
        }
        dot = cuda_block_sum(dot, red);
        if (threadIdx.x == 0) dw[slot] += (float)dot;
    }
}

void cuda_moe_gather(Ops *o, act *xp, const act *x, const int32_t *pos, int N, int K, int C)
{
    CUDA_PROF(o, "moe_gather", "permute");
    size_t n = (size_t)N * K * C;
    if (!n || N <= 0 || K <= 0 || C <= 0) return;
    CUDA_ACT_DISPATCH(o, T, moe_gather_kernel<<<cuda_blocks(n, THREADS), THREADS, 0, cuda_stream(o)>>>(
                                (T *)xp, (const T *)x, pos, N, K, C));
    CUDA_LAUNCH_CHECK();
}

void cuda_moe_gather_backward(Ops *o, act *dx, const act *dxp, const int32_t *pos, int N, int K, int C)
{
    CUDA_PROF(o, "moe_gather_backward", "permute");
    size_t n = (size_t)N * C;
    if (!n || N <= 0 || C <= 0) return;
    CUDA_ACT_DISPATCH(o, T, moe_gather_backward_kernel<<<cuda_blocks(n, THREADS), THREADS, 0, cuda_stream(o)>>>(
                                (T *)dx, (const T *)dxp, pos, N, K, C));
    CUDA_LAUNCH_CHECK();
}

void cuda_moe_combine(Ops *o, act *y, const act *yp, const float *w, const int32_t *pos, int N, int K, int C)
{
    CUDA_PROF(o, "moe_combine", "permute");
    size_t n = (size_t)N * C;
    if (!n || N <= 0 || C <= 0) return;
    CUDA_ACT_DISPATCH(o, T, moe_combine_kernel<<<cuda_blocks(n, THREADS), THREADS, 0, cuda_stream(o)>>>(
                                (T *)y, (const T *)yp, w, pos, N, K, C));
    CUDA_LAUNCH_CHECK();
}

void cuda_moe_combine_backward(Ops *o, act *dyp, float *dw, const act *dy, const act *yp, const float *w,
                               const int32_t *pos, int N, int K, int C)
{
    CUDA_PROF(o, "moe_combine_backward", "permute");
    if (N <= 0 || K <= 0 || C <= 0) return;
    CUDA_ACT_DISPATCH(o, T, moe_combine_backward_kernel<<<cuda_blocks((size_t)N * K * 128, 128), 128, 0,
                                                          cuda_stream(o)>>>((T *)dyp, dw, (const T *)dy,
                                                                            (const T *)yp, w, pos, N, K, C));
    CUDA_LAUNCH_CHECK();
}
