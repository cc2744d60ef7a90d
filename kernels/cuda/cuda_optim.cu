/* kernels/cuda/cuda_optim.cu - see cuda_optim.h: the fused gradient norm + clip scale and
 * the fused AdamW pass (BF16 moments, BF16 weight copy). */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>

#define _Noreturn [[noreturn]]
#include "kernels/cuda/cuda_optim.h"
extern "C" {
#include "runtime/common.h"
}
#undef _Noreturn

#define OPT_THREADS 256

#define OPT_CHECK(call) do { cudaError_t e_ = (call); \
        if (e_ != cudaSuccess) DIE("cuda optim: %s failed: %s", #call, cudaGetErrorString(e_)); } while (0)

/* Sum of a block's values in a fixed order (tree over shared memory). */
__device__ static double block_sum(double x)
{
    __shared__ double s[OPT_THREADS];
    s[threadIdx.x] = x;
    __syncthreads();
    for (int w = OPT_THREADS / 2; w > 0; w /= 2) {
        if (threadIdx.x < w) s[threadIdx.x] += s[threadIdx.x + w];
        __syncthreads();
    }
    return s[0];
}

__global__ void grad_sumsq_partials(const float *g, size_t n, double *partials)
{
    double acc = 0;
    for (size_t i = blockIdx.x * (size_t)OPT_THREADS + threadIdx.x; i < n; i += (size_t)gridDim.x * OPT_THREADS) {
        double x = g[i];
        acc += x * x;               /* exact: a 24-bit significand squared fits in 53 bits */
    }
    double s = block_sum(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

__global__ void grad_norm_finish(double *out, double clip)
{
    const double *partials = out + 2;
    double acc = 0;
    for (int i = threadIdx.x; i < CUDA_GRAD_NORM_BLOCKS; i += OPT_THREADS) acc += partials[i];
    double s = block_sum(acc);
    if (threadIdx.x == 0) {
        double norm = sqrt(s);
        out[0] = norm;
        out[1] = (clip <= 0 || norm <= clip || !(norm > 0)) ? 1.0 : clip / norm;
    }
}

extern "C" void cuda_grad_norm_clip(const float *grad, size_t n, double clip, double *d_out, void *stream)
{
    cudaStream_t s = (cudaStream_t)stream;
    grad_sumsq_partials<<<CUDA_GRAD_NORM_BLOCKS, OPT_THREADS, 0, s>>>(grad, n, d_out + 2);
    OPT_CHECK(cudaGetLastError());
    grad_norm_finish<<<1, OPT_THREADS, 0, s>>>(d_out, clip);
    OPT_CHECK(cudaGetLastError());
}

__device__ static float bf16_load(uint16_t b) { return __uint_as_float((unsigned)b << 16); }
__device__ static uint16_t bf16_store(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }

/* The formulas of cpu_adamw_update with bf16_moments, products and sums kept apart (no FMA
 * contraction: __fmul_rn/__fadd_rn) so that each rounding matches the CPU's C source. */
__global__ void adamw_fused_kernel(float *param, uint16_t *param_bf16, const float *grad, uint16_t *m, uint16_t *v,
                                   size_t n, CudaAdamW a, float bc1, float bc2, const double *d_scale)
{
    const float scale = d_scale ? (float)*d_scale : 1.0f;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float g = scale == 1.0f ? grad[i] : __fmul_rn(grad[i], scale);
        float mi = __fadd_rn(__fmul_rn(a.beta1, bf16_load(m[i])), __fmul_rn(1.0f - a.beta1, g));
        float vi = __fadd_rn(__fmul_rn(a.beta2, bf16_load(v[i])), __fmul_rn(__fmul_rn(1.0f - a.beta2, g), g));
        float mhat = __fdiv_rn(mi, bc1), vhat = __fdiv_rn(vi, bc2);
        float p = param[i];
        float upd = __fadd_rn(__fdiv_rn(mhat, __fadd_rn(__fsqrt_rn(vhat), a.eps)), __fmul_rn(a.weight_decay, p));
        p = __fsub_rn(p, __fmul_rn(a.lr, upd));
        param[i] = p;
        if (param_bf16) param_bf16[i] = bf16_store(p);
        m[i] = bf16_store(mi);
        v[i] = bf16_store(vi);
    }
}

extern "C" void cuda_adamw_fused(float *param, uint16_t *param_bf16, const float *grad, uint16_t *m, uint16_t *v,
                                 size_t n, const CudaAdamW *a, const double *d_scale, void *stream)
{
    if (a->step < 1) DIE("cuda optim: AdamW step %d (1-based)", a->step);
    if (!n) return;
    const float bc1 = (float)(1.0 - pow((double)a->beta1, a->step));
    const float bc2 = (float)(1.0 - pow((double)a->beta2, a->step));
    size_t blocks = (n + OPT_THREADS - 1) / OPT_THREADS;
    if (blocks > 132 * 32) blocks = 132 * 32;        /* grid-stride beyond a few waves of an H100 */
    adamw_fused_kernel<<<(unsigned)blocks, OPT_THREADS, 0, (cudaStream_t)stream>>>(param, param_bf16, grad, m, v, n,
                                                                                   *a, bc1, bc2, d_scale);
    OPT_CHECK(cudaGetLastError());
}
