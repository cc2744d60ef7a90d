/* kernels/cuda/cuda_optim.h - fused optimizer kernels of the CUDA backend, by C interface:
 * the gradient norm with its clip scale in one pass (no host round trip), and AdamW in one
 * pass over FP32 master weights with BF16 moments and the BF16 compute copy of the weights
 * written in the same pass.
 *
 * What it is: device functions on raw device pointers and a CUDA stream (void *, a
 * cudaStream_t; NULL: the legacy default stream), outside the op table (kernels/ops.h is
 * not changed for them). What it is not yet: called by the trainer. Where it plugs in:
 * runtime/optim.c - optim_grad_norm (o->sumsq, then a host sqrt) becomes
 * cuda_grad_norm_clip, whose device scale replaces the host clip_scale + o->scale pass, and
 * optim_step's o->adamw_update calls become cuda_adamw_fused with the clip scale read on the
 * device; the optimizer state m, v then holds BF16 (2 bytes each, half of today's FP32), and
 * the BF16 copy feeds the GEMMs instead of the per-GEMM FP32->BF16 copies of cuda_gemm.cu.
 *
 * Numerics: the same formulas as kernels/cpu/cpu_dense.c cpu_adamw_update with bf16_moments
 * (moments updated in FP32 from their BF16 values, the step taken with the FP32 values, then
 * stored rounded to nearest even); g = grad * scale in FP32 as o->scale does. The norm:
 * squares of FP32 values are exact in FP64, summed in FP64 in a fixed order (per-block
 * partials, then one block over the partials), so the result is deterministic.
 *
 * Calling sequence:
 *   double *d_norm;  cudaMalloc(&d_norm, CUDA_GRAD_NORM_SCRATCH_BYTES);
 *   cuda_grad_norm_clip(grads, n, clip, d_norm, stream);        d_norm[0] norm, [1] scale
 *   CudaAdamW a = { lr, b1, b2, eps, wd, step };
 *   cuda_adamw_fused(params, params_bf16, grads, m, v, n, &a, d_norm + 1, stream);
 */
#ifndef DSTRAIN_KERNELS_CUDA_OPTIM_H
#define DSTRAIN_KERNELS_CUDA_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct CudaAdamW {
    float lr, beta1, beta2, eps, weight_decay;
    int step;                   /* 1-based, for bias correction */
} CudaAdamW;

#define CUDA_GRAD_NORM_BLOCKS 1024
/* d_out's size: [0] the norm, [1] the clip scale, then the per-block partial sums */
#define CUDA_GRAD_NORM_SCRATCH_BYTES ((2 + CUDA_GRAD_NORM_BLOCKS) * sizeof(double))

/* d_out[0] = ||grad (n)||_2, d_out[1] = the clip scale (clip / norm when 0 < clip < norm,
 * else 1: runtime/optim.c clip_scale); d_out on the device, CUDA_GRAD_NORM_SCRATCH_BYTES. */
void cuda_grad_norm_clip(const float *grad, size_t n, double clip, double *d_out, void *stream);

/* One pass over n elements: g = grad * (float)*d_scale (d_scale NULL: 1); m, v (BF16 bits)
 * updated; param (FP32) -= lr (mhat / (sqrt(vhat) + eps) + wd param); param_bf16 (BF16
 * bits; NULL: not written) = param rounded to nearest even. */
void cuda_adamw_fused(float *param, uint16_t *param_bf16, const float *grad, uint16_t *m, uint16_t *v, size_t n,
                      const CudaAdamW *a, const double *d_scale, void *stream);

#ifdef __cplusplus
}
#endif

#endif
