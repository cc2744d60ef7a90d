/* runtime/gpu_peak.h - the datasheet dense BF16 tensor-core peak of a GPU, looked up by the
 * name the CUDA runtime reports (cudaDeviceProp.name, as nvidia-smi prints it): the MFU
 * denominator of `dstrain train` on device cuda and of tests/gpu/gpu_bench.
 *
 * What it is: a small table of NVIDIA datasheet figures (dense, i.e. without the 2:4
 * sparsity that datasheets quote alongside, FP32 accumulate). What it is not: a measurement;
 * a name not in the table gives 0 and the caller falls back (train: the measured GEMM rate).
 *
 * Calling sequence:
 *   const char *model;
 *   double tflops = gpu_dense_bf16_tflops("NVIDIA H100 80GB HBM3", &model);  -> 989, "H100 SXM"
 */
#ifndef DSTRAIN_RUNTIME_GPU_PEAK_H
#define DSTRAIN_RUNTIME_GPU_PEAK_H

/* TFLOP/s, or 0 for an unknown name; *model (may be NULL) names the table row matched. */
double gpu_dense_bf16_tflops(const char *device_name, const char **model);

#endif
