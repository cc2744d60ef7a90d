/* kernels/cuda/cuda_internal.h - internal header of the CUDA backend (C++ translation units
 * only): its private state, the error-checking macros, scratch buffers, the profiling scope,
 * and the entry points that cuda_backend.cu puts into the op table.
 *
 * What it is: the shared plumbing of the .cu files in kernels/cuda/. What it is not: a public API; C code
 * uses kernels/ops.h and kernels/cuda/cuda_ops.h. Semantics of every entry (shapes,
 * overwrite vs accumulate): kernels/ops.h; the CPU reference (kernels/cpu/) defines the
 * expected results, including tie rules and orders.
 *
 * Execution model: one stream per table; every kernel, cuBLASLt call, memset and copy of the
 * table goes on it, so ops run in call order. upload/download/synchronize wait for the
 * stream; nothing else blocks the host except moe_permute_layout (the host needs the expert
 * offsets to launch one GEMM per expert) and sumsq (its result is returned to the host).
 *
 * Errors in device-side input checks (a negative token id, a target outside the vocabulary,
 * an expert index outside 0..E-1) cannot stop the host at the kernel: kernels set a bit in a
 * device error word, and the next point where the host waits for the stream turns it into
 * the same DIE the CPU backend gives at the call.
 *
 * Determinism: no float atomics except counting whole tokens (exact below 2^24); every
 * reduction has an order fixed by the shapes, so a run repeats bit for bit on the same GPU
 * (cuBLASLt picks its algorithm by heuristic from the shape and alignment, deterministic for
 * a given library version and device).
 */
#ifndef DSTRAIN_KERNELS_CUDA_INTERNAL_H
#define DSTRAIN_KERNELS_CUDA_INTERNAL_H

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

/* runtime/common.h is C11: its _Noreturn is C++'s [[noreturn]]. */
#define _Noreturn [[noreturn]]
extern "C" {
#include "kernels/ops.h"
#include "runtime/common.h"
}
#undef _Noreturn

#define CUDA_CHECK(call) do { cudaError_t e_ = (call); if (e_ != cudaSuccess) \
    fatal(1, __FILE__, __LINE__, "cuda: %s failed: %s", #call, cudaGetErrorString(e_)); } while (0)
#define CUBLAS_CHECK(call) do { cublasStatus_t s_ = (call); if (s_ != CUBLAS_STATUS_SUCCESS) \
    fatal(1, __FILE__, __LINE__, "cublas: %s failed: %s", #call, cublasLtGetStatusString(s_)); } while (0)
/* After every kernel launch: a bad configuration is reported at the launch, not later. */
#define CUDA_LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())

/* Device error bits set by input checks inside kernels (see the header comment). */
enum {
    CUDA_ERR_EMBED_TOKEN = 1,       /* embedding: negative token id */
    CUDA_ERR_XENT_TARGET = 2,       /* cross-entropy: target >= V */
    CUDA_ERR_EXPERT_INDEX = 4,      /* moe permute/count/balance: expert index outside 0..E-1 */
};

/* Scratch slots: each grows on first need and never shrinks (like the CPU backend's scratch),
 * so the steady state allocates nothing. Slots used at the same time must differ. */
typedef enum {
    SCR_GEMM_A,         /* compute-type copy of a GEMM's A operand (cuda_gemm) */
    SCR_GEMM_B,         /* compute-type copy of a GEMM's B operand */
    SCR_GEMM_C,         /* FP32 product of an FP32 GEMM with a BF16 output (cuda_gemm) */
    SCR_ATTN_P,         /* attention: probabilities of one query chunk (H, rows, keys) */
    SCR_ATTN_DP,        /* attention backward: dP / dS of one query chunk */
    SCR_REDUCE,         /* partial sums of reductions (rmsnorm dweight, sumsq, balance loss) */
    SCR_INDEX,          /* int32 work of the permutation and embedding backward */
    SCR_FP8_A,          /* FP8 codes + scales of a Linear's quantised operand (cuda_fp8.cu) */
    SCR_FP8_B,          /* the second one (Wgrad) */
    SCR_COUNT
} CudaScratch;

/* Per-op GPU time when profiling is on: one entry per op name. */
#define CUDA_PROF_MAX_OPS 64
#define CUDA_PROF_EVENTS 4096   /* event pairs buffered before they are read back */

typedef struct CudaProfile {
    int on;
    int n_ops;
    const char *names[CUDA_PROF_MAX_OPS];
    const char *families[CUDA_PROF_MAX_OPS];
    double ms[CUDA_PROF_MAX_OPS];
    long calls[CUDA_PROF_MAX_OPS];
    cudaEvent_t *begin, *end;       /* (CUDA_PROF_EVENTS) */
    int *slot_op;                   /* (CUDA_PROF_EVENTS) op index of each pending pair */
    int pending;
} CudaProfile;

typedef struct CudaAlloc { void *p; size_t bytes; } CudaAlloc;

typedef struct CudaState {
    int device;
    cudaDeviceProp prop;
    cudaStream_t stream;
    cublasLtHandle_t lt;
    void *workspace;                /* cuBLASLt workspace, CUDA_LT_WORKSPACE bytes */
    int *err_dev;                   /* (1) device error word */
    void *scratch[SCR_COUNT];
    size_t scratch_bytes[SCR_COUNT];
    int32_t *host_i32;              /* pinned (host_i32_n) staging for small results */
    size_t host_i32_n;
    double *host_f64;               /* pinned (1) staging for sumsq */
    CudaAlloc *allocs;              /* live allocations of the table (for the memory figures) */
    int n_allocs, cap_allocs;
    size_t bytes_now, bytes_peak;
    struct GemmCache *gemm_cache;   /* cuBLASLt algorithms by shape (cuda_gemm.cu) */
    struct Fp8Cache *fp8_cache;     /* the same for the FP8 GEMMs (cuda_fp8.cu) */
    size_t attn_chunk_bytes;        /* scratch of one attention chunk's P (cuda_attention.cu);
                                       DSTRAIN_CUDA_ATTN_CHUNK_BYTES overrides, for tests */
    CudaProfile prof;
} CudaState;

#define CUDA_LT_WORKSPACE ((size_t)32 << 20)

static inline CudaState *cuda_state(Ops *o) { return (CudaState *)o->state; }
static inline cudaStream_t cuda_stream(Ops *o) { return ((CudaState *)o->state)->stream; }

/* Scratch slot of at least `bytes` bytes (device memory, contents undefined). Growing frees
 * the old buffer, which waits for the device, so it never races with queued work. */
void *cuda_scratch(Ops *o, CudaScratch slot, size_t bytes);
/* Device error word: DIE with the CPU backend's message if a kernel set a bit. Call only
 * where the host has waited for the stream. */
void cuda_check_device_errors(Ops *o);
/* Blocks for a 1-D launch of n items, capped (kernels stride over the rest). */
static inline unsigned cuda_blocks(size_t n, unsigned threads)
{
    size_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 1 ? 1 : b > 65535u * 16u ? 65535u * 16u : b);
}

/* Profiling scope: records an event pair around an op when profiling is on. */
int cuda_prof_begin(Ops *o, const char *name, const char *family);
void cuda_prof_end(Ops *o, int slot);
struct CudaProfScope {
    Ops *o;
    int slot;
    CudaProfScope(Ops *ops, const char *name, const char *family)
        : o(ops), slot(cuda_state(ops)->prof.on ? cuda_prof_begin(ops, name, family) : -1) {}
    ~CudaProfScope() { if (slot >= 0) cuda_prof_end(o, slot); }
};
#define CUDA_PROF(o, name, family) CudaProfScope prof_scope_(o, name, family)

/* Row-major GEMM C (M,N) = alpha op(A) op(B) + beta C, batched with element strides;
 * op(A) is (M,K): A stored (M,K) with row stride lda, or (K,M) when ta (op(A) = A^T).
 * Same for B with (K,N) / (N,K). Each matrix has its storage type (at, bt, ct: CUDA_R_32F,
 * the value 0, so an initializer that leaves them out means FP32, or CUDA_R_16BF). The
 * compute: FP32 operands and CUBLAS_COMPUTE_32F when fp32 is set or the table is PREC_FP32,
 * else BF16 operands with FP32 accumulation. An operand already in the compute type is read
 * where it lies; one that is not (FP32 attention probabilities under BF16, BF16 activations
 * into the FP32 router) is converted into scratch for the call. C is written in its own type
 * (BF16: alpha op(A) op(B) + beta C formed in FP32, then rounded once). Defined in
 * cuda_gemm.cu. */
typedef struct CudaGemm {
    int M, N, K, batch;
    int ta, tb;
    const void *A; long long lda, sA;
    const void *B; long long ldb, sB;
    void *C; long long ldc, sC;
    float alpha, beta;
    int fp32;                       /* 1: FP32 operands whatever the precision (the router) */
    cudaDataType_t at, bt, ct;      /* storage types of A, B, C (0: CUDA_R_32F) */
} CudaGemm;
void cuda_gemm(Ops *o, const CudaGemm *g);
void cuda_gemm_cache_free(CudaState *st);
void cuda_fp8_cache_free(CudaState *st);

/* The entries of the table (kernels/ops.h OPS_ENTRIES), each cuda_<entry>: memory in
 * cuda_backend.cu, Linear and router in cuda_gemm.cu, norms, elementwise, embedding, loss and
 * optimizer in cuda_dense.cu, RoPE, MLA assembly and attention in cuda_attention.cu, router
 * selection, balance loss and permutation in cuda_moe.cu. */
#define CUDA_DECLARE(ret, name, params) ret cuda_##name params;
OPS_ENTRIES(CUDA_DECLARE)
#undef CUDA_DECLARE

/* Activation storage (kernels/ops.h "Roles"): FP32 (act_bytes = 4) on a PREC_FP32 table,
 * BF16 (act_bytes = 2, __nv_bfloat16) on PREC_BF16 and PREC_FP8 tables. Every kernel that reads
 * or writes an act is one template over the element type T (float or __nv_bfloat16): it loads
 * with act_ld (BF16 to FP32 is exact), computes in FP32 and stores with act_st, which rounds to
 * nearest even, the rule of the CPU emulation (kernels/fp8.h bf16_from_float; the two differ
 * only in which NaN a NaN becomes). On float storage both are plain accesses, so the FP32
 * table runs the same instructions as before the templates. */
__device__ __forceinline__ float act_ld(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ float act_ld(const __nv_bfloat16 *p, size_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void act_st(float *p, size_t i, float v) { p[i] = v; }
__device__ __forceinline__ void act_st(__nv_bfloat16 *p, size_t i, float v) { p[i] = __float2bfloat16_rn(v); }

/* Runs the statements with T the table's activation element type:
 *   CUDA_ACT_DISPATCH(o, T, kernel<T><<<g, b, 0, s>>>((T *)out, (const T *)inp, n));  */
#define CUDA_ACT_DISPATCH(o, T, ...) do { \
        if ((o)->act_bytes == 2) { typedef __nv_bfloat16 T; __VA_ARGS__; } \
        else { typedef float T; __VA_ARGS__; } \
    } while (0)

/* The CUDA data type of the table's activations (cuBLASLt layouts). */
static inline cudaDataType_t cuda_act_type(const Ops *o) { return o->act_bytes == 2 ? CUDA_R_16BF : CUDA_R_32F; }

void cuda_fill(Ops *o, float *p, size_t n, float value);
void cuda_fill_normal_dev(Ops *o, float *p, size_t n, float std, uint64_t seed);

/* Block-wide sums for kernels of BLOCK threads (a multiple of 32, at most 1024); every
 * thread gets the total. The order is fixed by the block size: deterministic. */
template <typename T>
__device__ inline T cuda_warp_sum(T v)
{
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

template <typename T>
__device__ inline T cuda_block_sum(T v, T *shared32)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
    v = cuda_warp_sum(v);
    __syncthreads();                /* shared32 may still be read by a previous call */
    if (lane == 0) shared32[warp] = v;
    __syncthreads();
    T t = lane < nwarps ? shared32[lane] : T(0);
    return cuda_warp_sum(t);
}

__device__ inline float cuda_warp_max(float v)
{
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

#endif
