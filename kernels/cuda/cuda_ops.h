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

/* The op table on device 0 (PREC_FP32: FP32 activations and GEMMs, act_bytes 4; PREC_BF16:
 * BF16 activations (act_bytes 2), BF16 compute copies of WGT_BF16 weights, FP32 accumulation,
 * FP32 masters, gradients of weights and statistics; PREC_FP8: as PREC_BF16, with FP8 GEMMs
 * for WGT_FP8 Linear weights, cuda_fp8.cu). DIE: no GPU ("device 'cuda': no CUDA GPU found
 * (...)"). */
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

/* ---- FP8 (E4M3) on the GPU: kernels/cuda/cuda_fp8.cu ----
 * The quantisers of kernels/fp8.h (the same functions, compiled __host__ __device__, so codes
 * and scales are bit-identical to the CPU's) and the block-scaled GEMM C = A B^T of SPEC.md
 * section 6 (kernels/cpu/fp8_gemm_ref.h is its reference). Not yet the op table's fp8 Linear.
 *
 * CudaFp8Mat: a (rows, K) matrix of E4M3 codes, row-major, K contiguous, each row padded with
 * code 0 to ldq = cuda_fp8_ld(K) (a multiple of 128: whole K blocks, 16-byte aligned rows;
 * code 0 adds nothing to a product and, being written only beyond the valid K, changes no
 * amax), and its FP32 scales in the layout cuBLASLt reads (ENVIRONMENT.md, to be confirmed on
 * a GPU by tests/gpu/test_gpu_fp8.c):
 *   block 0, 1x128 tiles (CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F): the row index contiguous,
 *            scale[kb * sld + r], sld = rows;
 *   block 1, 128x128 blocks (CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F): K-block index
 *            contiguous, scale[(r / 128) * sld + kb], sld = nkb rounded up to a multiple of 4.
 * nkb = ceil(K / 128). The CPU layout (fp8_gemm_ref.h) differs only in these indices.
 */
typedef struct CudaFp8Mat {
    uint8_t *q;             /* (rows, ldq) codes, device memory */
    float *scale;           /* see above, device memory */
    int rows, K, ldq;
    int block;              /* 0: 1x128 tiles; 1: 128x128 blocks */
    int sld;                /* leading dimension of the scale tensor */
} CudaFp8Mat;

static inline int cuda_fp8_ld(int K) { return (K + 127) / 128 * 128; }
static inline int cuda_fp8_kblocks(int K) { return (K + 127) / 128; }
static inline size_t cuda_fp8_scale_at(const CudaFp8Mat *m, int r, int kb)
{
    return m->block ? (size_t)(r / 128) * m->sld + kb : (size_t)kb * m->sld + r;
}
/* Bytes of a matrix's codes and scales in one allocation (256-byte aligned parts) */
size_t cuda_fp8_mat_bytes(int rows, int K, int block);
/* m over mem (cuda_fp8_mat_bytes(rows, K, block) device bytes) */
void cuda_fp8_mat_init(CudaFp8Mat *m, void *mem, int rows, int K, int block);

/* dst (rows, K) block 0 = 1x128 tiles of x (rows, K) with row stride ldx (FP32, or BF16 with
 * x_bf16): Fprop's activations, Dgrad's output gradients; pow2: power-of-two scales. */
void cuda_fp8_quantize_rows(Ops *o, CudaFp8Mat *dst, const void *x, int x_bf16, int ldx, int pow2);
/* Wgrad's transposed, token-padded copy: dst (C, n) block 0 = 128x1 tiles along the tokens
 * of x (n, C) row stride ldx, power-of-two scales (SPEC section 6); tokens padded with 0. */
void cuda_fp8_quantize_cols(Ops *o, CudaFp8Mat *dst, const void *x, int x_bf16, int n, int ldx);
/* A weight w (rows, cols) FP32 row stride ldw in 128x128 blocks: dst (rows, cols) block 1 and,
 * if dst_t is not NULL, the transposed copy dst_t (cols, rows) block 1 that Dgrad reads (the
 * same blocks transposed: same scale, same codes; tests/unit/test_fp8_gemm.c shows it exact). */
void cuda_fp8_quantize_weight(Ops *o, CudaFp8Mat *dst, CudaFp8Mat *dst_t, const float *w, int ldw);

/* Elementwise on the device, n values: decode 0: q = e4m3_from_float(x); 1: x = e4m3_to_float(q)
 * (tests hold the device's conversions to the header's on every code and tie). */
void cuda_fp8_convert(Ops *o, uint8_t *q, float *x, size_t n, int decode);
/* The device's compute capability, major * 10 + minor (90: Hopper). */
int cuda_compute_capability(Ops *o);

/* Which GEMM runs: cuBLASLt's block-scaled FP8 matmul (Hopper, sm_90: its heuristic offers no
 * algorithm elsewhere), or the plain tiled kernel of cuda_fp8.cu (any GPU: FP32 sums of the
 * exact products of each 128-block, scaled and summed in FP32), or cuBLASLt where it has an
 * algorithm and the tiled kernel otherwise. */
typedef enum { CUDA_FP8_AUTO = 0, CUDA_FP8_CUBLASLT, CUDA_FP8_TILED } CudaFp8Path;

/* c (M, N) row stride ldc, FP32 (c_bf16 0) or BF16 (c_bf16 1), = A B^T + beta c, with A (M, K)
 * = a and B (N, K) = b (the same K and ldq; not both block 1: cuBLASLt refuses 128x128 x
 * 128x128, and SPEC needs it nowhere). beta 0: c is only written. Returns the path that ran;
 * 0 when CUDA_FP8_CUBLASLT was asked and cuBLASLt has no algorithm (why says what it said). */
int cuda_fp8_gemm(Ops *o, const CudaFp8Mat *a, const CudaFp8Mat *b, void *c, int c_bf16, int ldc, float beta,
                  CudaFp8Path path, char *why, size_t why_len);

/* The Linear entries of an fp8 table for a WGT_FP8 weight (cuda_fp8.cu's comment gives the
 * recipe; kernels/ops.h the shapes and the overwrite/accumulate contract): weight_bytes of
 * its compute copy (W and W^T in 128x128 blocks), the refresh that quantises the master into
 * it, and the three GEMMs, with activations in the table's type (o->act_bytes). */
size_t cuda_fp8_weight_bytes(int rows, int cols);
void cuda_fp8_weight_refresh(Ops *o, Wgt *w);
void cuda_fp8_matmul_forward(Ops *o, void *out, const void *inp, const Wgt *w, int N, int IC, int OC);
void cuda_fp8_matmul_backward_input(Ops *o, void *dinp, const void *dout, const Wgt *w, int N, int IC, int OC);
void cuda_fp8_matmul_backward_weight(Ops *o, float *dweight, const void *dout, const void *inp, int N, int IC,
                                     int OC);

#ifdef __cplusplus
}
#endif

#endif
