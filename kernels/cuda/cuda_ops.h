/* kernels/cuda/cuda_ops.h - the CUDA backend's C interface beyond the op table: creation
 * (called by kernels/backend.c), a GPU probe for tests that must skip without a GPU, device
 * fills for benchmarks, memory figures and the per-op profile.
 *
 * What it is: the few functions C code (kernels/backend.c, tests/gpu/) needs from the CUDA
 * translation units. What it is not: the ops themselves (kernels/ops.h is the contract; the
 * table returned here fills every entry).
 *
 * Calling sequence:
 *   char why[256];
 *   if (cuda_gpu_count(why, sizeof why) == 0) { ...skip: why says what the runtime said... }
 *   Ops *o = ops_cuda_create(PREC_BF16);        (kernels/ops.h; DIE without a GPU)
 *   cuda_profile_enable(o, 1); ...ops...; cuda_profile_report(o, stdout);
 *   ops_destroy(o);
 * Only available when the build found nvcc (DSTRAIN_HAVE_CUDA).
 */
#ifndef DSTRAIN_KERNELS_CUDA_OPS_H
#define DSTRAIN_KERNELS_CUDA_OPS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "kernels/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The op table on device 0 (PREC_FP32: FP32 GEMMs; PREC_BF16: BF16 GEMM operands, FP32
 * accumulation and storage). DIE: no GPU ("device 'cuda': no CUDA GPU found (...)"), or a
 * precision this backend does not run (fp8). */
Ops *cuda_ops_create(Precision precision);
void cuda_ops_destroy(Ops *o);
/* Fills every entry of o with the CUDA backend's functions (no GPU needed: the test that no
 * entry is left empty calls it). */
void cuda_ops_fill(Ops *o);

/* Number of CUDA devices; 0 when none is usable, with the runtime's reason in why. */
int cuda_gpu_count(char *why, size_t why_len);

/* p (n) = value / normal(0, std) draws from a counter-based generator keyed by seed
 * (benchmarks: initialising billions of weights on the host takes minutes). */
void cuda_fill_value(Ops *o, float *p, size_t n, float value);
void cuda_fill_normal(Ops *o, float *p, size_t n, float std, uint64_t seed);

typedef struct CudaMemStats {
    size_t table_bytes;         /* allocated through this table now (buffers, scratch, workspace) */
    size_t table_peak;          /* the most it ever held */
    size_t device_total;        /* the device's memory */
    size_t device_used;         /* in use on the device now (every process, CUDA's context too) */
    char device_name[256];
} CudaMemStats;
void cuda_memory_stats(Ops *o, CudaMemStats *s);

/* Per-op GPU time: on = 1 records an event pair around every op (it costs a little host
 * time per op; totals are best taken with it off). report prints ms and calls per op and per
 * family since the last reset, most expensive first. */
void cuda_profile_enable(Ops *o, int on);
void cuda_profile_reset(Ops *o);
void cuda_profile_report(Ops *o, FILE *f);

#ifdef __cplusplus
}
#endif

#endif
