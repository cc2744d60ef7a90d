/* kernels/cuda/cuda_gemm.cu - every GEMM of the CUDA backend through cuBLASLt: the Linear
 * entries (forward, input gradient, weight gradient) and the batched products of attention.
 *
 * Not here: fused epilogues (bias/activation; the model has no Linear bias); the FP8 GEMMs of
 * WGT_FP8 weights (kernels/cuda/cuda_fp8.cu, called from the Linear entries below). The
 * semantics follow kernels/ops.h; numerics per precision:
 *   PREC_FP32: FP32 operands, CUBLAS_COMPUTE_32F (true FP32, no TF32), so GPU and CPU agree
 *              to FP32 summation-order rounding.
 *   PREC_BF16 (and PREC_FP8 for what is not an FP8 GEMM): BF16 activations read where they
 *              lie, a WGT_BF16 weight's BF16 compute copy (Wgt.data, rebuilt from the FP32
 *              master by weight_refresh once per optimizer step), FP32 accumulation; outputs
 *              in their storage type (BF16 activations rounded once, FP32 weight gradients
 *              added with beta: the accumulate contract of the backward entries). No operand
 *              is converted per call except where the two operands' types differ by design
 *              (attention's FP32 probabilities, the FP32 router's BF16 input) or when the
 *              table's activations are FP32 (a copy in the compute type, into scratch).
 *   A WGT_FP32 weight computes in FP32 whatever the table (as on the CPU: the router).
 *
 * Row-major to column-major: cuBLASLt is column-major, and a row-major (r,c) matrix with row
 * stride ld is the column-major (c,r) matrix with leading dimension ld, its transpose. So the
 * row-major problem
 *     C (M,N) = op(A) (M,K) . op(B) (K,N)
 * is the column-major problem C^T (N,M) = op(B)^T . op(A)^T on the same memory: cuBLASLt's
 * "A" is our B (transposed by cuBLASLt exactly when we transpose B: our B stored (K,N)
 * row-major already is op(B)^T column-major), its "B" is our A likewise, m = N and n = M.
 *
 * Algorithms: cuBLASLt's heuristic is asked once per shape/alignment and the answer cached
 * (cublasLtMatmulAlgo_t is plain data); expert GEMMs bring new row counts each step, so the
 * cache is bounded and simply stops inserting when full.
 */
#include "kernels/cuda/cuda_internal.h"
#include "kernels/cuda/cuda_ops.h"

#include <cuda_bf16.h>
#include <stdlib.h>
#include <string.h>

/* ---- operand copies in the compute type ---- */

__device__ __forceinline__ void conv_st(__nv_bfloat16 *p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ void conv_st(float *p, float v) { *p = v; }

/* dst (batch, rows, cols) with row stride dst_ld and batch stride dst_stride = src converted
 * (rounded to BF16, or widened to FP32: exact), src (batch, rows, cols) with row stride ld and
 * batch stride src_stride (elements). */
template <typename S, typename D>
__global__ void gemm_convert_strided(D *dst, const S *src, int batch, int rows, int cols, long long ld,
                                     long long src_stride, long long dst_ld, long long dst_stride)
{
    const long long per = (long long)rows * cols, total = per * batch;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        long long b = i / per, rem = i - b * per, r = rem / cols, c = rem - r * cols;
        conv_st(dst + b * dst_stride + r * dst_ld + c, act_ld(src, (size_t)(b * src_stride + r * ld + c)));
    }
}

/* FP32 to BF16, contiguous n values; src 16-byte aligned: four per thread step. */
__global__ void gemm_to_bf16_vec4(__nv_bfloat16 *dst, const float *src, long long n)
{
    const long long n4 = n / 4;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n4;
         i += (long long)gridDim.x * blockDim.x) {
        float4 v = reinterpret_cast<const float4 *>(src)[i];
        __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
        reinterpret_cast<__nv_bfloat162 *>(dst)[2 * i] = lo;
        reinterpret_cast<__nv_bfloat162 *>(dst)[2 * i + 1] = hi;
    }
    for (long long i = 4 * n4 + blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16_rn(src[i]);
}

/* Copy row stride: whole 16-byte units (tensor-core kernels want 16-byte aligned rows; a
 * row of 7 or 129 BF16 values would leave cuBLASLt only its slow paths, or none). Batch
 * stride: whole 256-byte units, so every batch matrix keeps full alignment. */
static long long padded_ld(int cols) { return ((long long)cols + 7) & ~7LL; }
static long long packed_stride(int rows, int cols) { return ((long long)rows * padded_ld(cols) + 127) & ~127LL; }

static size_t type_size(cudaDataType_t t) { return t == CUDA_R_16BF ? 2 : 4; }

/* src (batch, rows, cols) of type from, row stride ld, batch stride stride, copied into
 * scratch slot in type to, rows padded_ld(cols) and matrices packed_stride apart. */
static const void *convert_operand(Ops *o, CudaScratch slot, const void *src, cudaDataType_t from, cudaDataType_t to,
                                   int batch, int rows, int cols, long long ld, long long stride)
{
    long long ps = packed_stride(rows, cols), pl = padded_ld(cols);
    void *dst = cuda_scratch(o, slot, (size_t)(ps * batch) * type_size(to));
    cudaStream_t s = cuda_stream(o);
    long long n = (long long)rows * cols;
    unsigned blocks = cuda_blocks((size_t)(n * batch), 256);
    if (from == CUDA_R_32F && to == CUDA_R_16BF) {
        const float *f = (const float *)src;
        __nv_bfloat16 *d = (__nv_bfloat16 *)dst;
        if (ld == cols && cols == pl && batch == 1 && ((uintptr_t)src & 15) == 0)
            gemm_to_bf16_vec4<<<cuda_blocks((size_t)(n / 4 + 1), 256), 256, 0, s>>>(d, f, n);
        else
            gemm_convert_strided<<<blocks, 256, 0, s>>>(d, f, batch, rows, cols, ld, stride, pl, ps);
    } else if (from == CUDA_R_16BF && to == CUDA_R_32F) {
        gemm_convert_strided<<<blocks, 256, 0, s>>>((float *)dst, (const __nv_bfloat16 *)src, batch, rows, cols, ld,
                                                    stride, pl, ps);
    } else if (from == CUDA_R_16BF) {
        gemm_convert_strided<<<blocks, 256, 0, s>>>((__nv_bfloat16 *)dst, (const __nv_bfloat16 *)src, batch, rows,
                                                    cols, ld, stride, pl, ps);
    } else {
        gemm_convert_strided<<<blocks, 256, 0, s>>>((float *)dst, (const float *)src, batch, rows, cols, ld, stride,
                                                    pl, ps);
    }
    CUDA_LAUNCH_CHECK();
    return dst;
}

/* C (batch, M, N) row stride ldc, batch stride sC: *= beta (the K = 0 product). */
template <typename T>
__global__ void gemm_scale_c(T *C, int batch, int M, int N, long long ldc, long long sC, float beta)
{
    const long long per = (long long)M * N, total = per * batch;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        long long b = i / per, rem = i - b * per, r = rem / N, c = rem - r * N;
        size_t at = (size_t)(b * sC + r * ldc + c);
        act_st(C, at, beta == 0.0f ? 0.0f : beta * act_ld(C, at));
    }
}

/* ---- algorithm cache ---- */

typedef struct GemmKey {
    int compute, atype, btype, ctype, transa, transb, m, n, k, batch;
    long long lda, ldb, ldc, sa, sb, sc;
    int align_a, align_b, align_c;
} GemmKey;

#define GEMM_CACHE_SLOTS 4096

typedef struct GemmCache {
    GemmKey key[GEMM_CACHE_SLOTS];
    cublasLtMatmulAlgo_t algo[GEMM_CACHE_SLOTS];
    unsigned char used[GEMM_CACHE_SLOTS];
    int n_used;
} GemmCache;

static uint64_t key_hash(const GemmKey *k)
{
    const unsigned char *p = (const unsigned char *)k;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < sizeof *k; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

/* The slot holding k, or the empty slot where it would go, or -1 when the table is full. */
static int cache_find(GemmCache *c, const GemmKey *k, int *found)
{
    int start = (int)(key_hash(k) % GEMM_CACHE_SLOTS);
    for (int i = 0; i < GEMM_CACHE_SLOTS; i++) {
        int s = (start + i) % GEMM_CACHE_SLOTS;
        if (!c->used[s]) { *found = 0; return c->n_used < GEMM_CACHE_SLOTS / 2 ? s : -1; }
        if (memcmp(&c->key[s], k, sizeof *k) == 0) { *found = 1; return s; }
    }
    *found = 0;
    return -1;
}

void cuda_gemm_cache_free(CudaState *st)
{
    free(st->gemm_cache);
    st->gemm_cache = NULL;
}

/* Largest power of two (<= 256) dividing the byte address and, when batched, the byte
 * stride: what an algorithm may assume about every matrix of the batch. */
static int alignment_of(const void *p, long long stride_bytes, int batch)
{
    uintptr_t a = (uintptr_t)p | (batch > 1 ? (uintptr_t)stride_bytes : 0) | 256;
    return (int)(a & (~a + 1));
}

/* ---- the call ---- */

typedef struct LtOperands {
    cudaDataType_t ab_type;
    const void *A, *B;              /* cuBLASLt's A (our B memory) and B (our A memory) */
    long long lda, ldb, sa, sb;     /* their leading dims and batch strides (elements) */
} LtOperands;

static cublasLtMatrixLayout_t make_layout(cudaDataType_t t, long long rows, long long cols, long long ld, int batch,
                                          long long stride)
{
    cublasLtMatrixLayout_t l;
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l, t, (uint64_t)rows, (uint64_t)cols, ld));
    if (batch > 1) {
        int32_t bc = batch;
        int64_t st = stride;
        CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc));
        CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &st, sizeof st));
    }
    return l;
}

/* The cached or heuristic algorithm for key; 0 when cuBLASLt offers none. */
static int pick_algo(CudaState *st, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t la, cublasLtMatrixLayout_t lb,
                      cublasLtMatrixLayout_t lc, const GemmKey *key, cublasLtMatmulAlgo_t *algo)
{
    if (!st->gemm_cache) st->gemm_cache = (GemmCache *)xcalloc(1, sizeof(GemmCache));
    GemmCache *c = st->gemm_cache;
    int found = 0, slot = cache_find(c, key, &found);
    if (found) { *algo = c->algo[slot]; return 1; }
    cublasLtMatmulPreference_t pref;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t ws = CUDA_LT_WORKSPACE;
    uint32_t al[3] = { (uint32_t)key->align_a, (uint32_t)key->align_b, (uint32_t)key->align_c };
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al[0],
                                                      sizeof al[0]));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al[1],
                                                      sizeof al[1]));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al[2],
                                                      sizeof al[2]));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al[2],
                                                      sizeof al[2]));
    cublasLtMatmulHeuristicResult_t res;
    int n = 0;
    CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(st->lt, desc, la, lb, lc, lc, pref, 1, &res, &n));
    CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    if (n < 1) return 0;
    *algo = res.algo;
    if (slot >= 0) {
        c->key[slot] = *key;
        c->algo[slot] = res.algo;
        c->used[slot] = 1;
        c->n_used++;
    }
    return 1;
}

/* Operands in the compute type: where they lie when their storage is that type (and
 * force_copy is 0), else compute-type copies in scratch. */
static LtOperands lt_operands(Ops *o, const CudaGemm *g, cudaDataType_t compute, int force_copy)
{
    const int a_rows = g->ta ? g->K : g->M, a_cols = g->ta ? g->M : g->K;   /* A as stored */
    const int b_rows = g->tb ? g->N : g->K, b_cols = g->tb ? g->K : g->N;   /* B as stored */
    LtOperands L;
    L.ab_type = compute;
    if (g->bt == compute && !force_copy) {
        L.A = g->B;
        L.lda = g->ldb;
        L.sa = g->sB;
    } else {
        L.A = convert_operand(o, SCR_GEMM_B, g->B, g->bt, compute, g->batch, b_rows, b_cols, g->ldb, g->sB);
        L.lda = padded_ld(b_cols);
        L.sa = packed_stride(b_rows, b_cols);
    }
    if (g->at == compute && !force_copy) {
        L.B = g->A;
        L.ldb = g->lda;
        L.sb = g->sA;
    } else {
        L.B = convert_operand(o, SCR_GEMM_A, g->A, g->at, compute, g->batch, a_rows, a_cols, g->lda, g->sA);
        L.ldb = padded_ld(a_cols);
        L.sb = packed_stride(a_rows, a_cols);
    }
    return L;
}

/* K = 0: C *= beta (in C's type). */
static void gemm_empty(Ops *o, const CudaGemm *g)
{
    if (g->beta == 1.0f) return;
    unsigned blocks = cuda_blocks((size_t)g->M * g->N * g->batch, 256);
    if (g->ct == CUDA_R_16BF)
        gemm_scale_c<<<blocks, 256, 0, cuda_stream(o)>>>((__nv_bfloat16 *)g->C, g->batch, g->M, g->N, g->ldc, g->sC,
                                                         g->beta);
    else
        gemm_scale_c<<<blocks, 256, 0, cuda_stream(o)>>>((float *)g->C, g->batch, g->M, g->N, g->ldc, g->sC, g->beta);
    CUDA_LAUNCH_CHECK();
}

/* One cuBLASLt call over operands L; 0 (nothing run) when cuBLASLt has no algorithm. */
static int lt_run(Ops *o, const CudaGemm *g, const LtOperands *L)
{
    CudaState *st = cuda_state(o);
    const size_t ab_size = type_size(L->ab_type);
    /* column-major problem: m = N, n = M; cuBLASLt's A = our B, its B = our A */
    cublasOperation_t opa = g->tb ? CUBLAS_OP_T : CUBLAS_OP_N, opb = g->ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    const long long m = g->N, n = g->M, k = g->K;
    cublasLtMatmulDesc_t desc;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    cublasLtMatrixLayout_t la = make_layout(L->ab_type, opa == CUBLAS_OP_N ? m : k, opa == CUBLAS_OP_N ? k : m,
                                            L->lda, g->batch, L->sa);
    cublasLtMatrixLayout_t lb = make_layout(L->ab_type, opb == CUBLAS_OP_N ? k : n, opb == CUBLAS_OP_N ? n : k,
                                            L->ldb, g->batch, L->sb);
    cublasLtMatrixLayout_t lc = make_layout(g->ct, m, n, g->ldc, g->batch, g->sC);
    GemmKey key;
    memset(&key, 0, sizeof key);    /* padding bytes take part in hashing and comparing */
    key.compute = (int)L->ab_type;
    key.atype = (int)L->ab_type;
    key.btype = (int)L->ab_type;
    key.ctype = (int)g->ct;
    key.transa = (int)opa;
    key.transb = (int)opb;
    key.m = (int)m;
    key.n = (int)n;
    key.k = (int)k;
    key.batch = g->batch;
    key.lda = L->lda;
    key.ldb = L->ldb;
    key.ldc = g->ldc;
    key.sa = L->sa;
    key.sb = L->sb;
    key.sc = g->sC;
    key.align_a = alignment_of(L->A, L->sa * (long long)ab_size, g->batch);
    key.align_b = alignment_of(L->B, L->sb * (long long)ab_size, g->batch);
    key.align_c = alignment_of(g->C, g->sC * (long long)type_size(g->ct), g->batch);
    cublasLtMatmulAlgo_t algo;
    int ok = pick_algo(st, desc, la, lb, lc, &key, &algo);
    if (ok)
        CUBLAS_CHECK(cublasLtMatmul(st->lt, desc, &g->alpha, L->A, la, L->B, lb, &g->beta, g->C, lc, g->C, lc, &algo,
                                    st->workspace, CUDA_LT_WORKSPACE, st->stream));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(la));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(lb));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(lc));
    CUBLAS_CHECK(cublasLtMatmulDescDestroy(desc));
    return ok;
}

/* C (batch, M, N) BF16, row stride ldc, batch stride sC = C * beta + P (P packed (batch, M,
 * N) FP32), one rounding per element (beta 0: C is only written). */
__global__ void gemm_add_bf16(__nv_bfloat16 *C, const float *P, int batch, int M, int N, long long ldc, long long sC,
                              float beta)
{
    const long long per = (long long)M * N, total = per * batch;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        long long b = i / per, rem = i - b * per, r = rem / N, c = rem - r * N;
        size_t at = (size_t)(b * sC + r * ldc + c);
        float prev = beta == 0.0f ? 0.0f : beta * act_ld(C, at);
        act_st(C, at, prev + P[i]);
    }
}

/* A BF16 output through an FP32 product in scratch, then added into C: cuBLASLt multiplies
 * FP32 operands into FP32 outputs only (the router's input gradient under BF16 activations),
 * and an output row stride it refuses (a BF16 row of 3 values) leaves this way too. */
static void gemm_via_fp32_c(Ops *o, const CudaGemm *g)
{
    const size_t per = (size_t)g->M * g->N;
    CudaGemm f = *g;
    f.C = cuda_scratch(o, SCR_GEMM_C, per * g->batch * sizeof(float));
    f.ldc = g->N;
    f.sC = (long long)per;
    f.beta = 0.0f;
    f.ct = CUDA_R_32F;
    cuda_gemm(o, &f);
    gemm_add_bf16<<<cuda_blocks(per * g->batch, 256), 256, 0, cuda_stream(o)>>>(
        (__nv_bfloat16 *)g->C, (const float *)f.C, g->batch, g->M, g->N, g->ldc, g->sC, g->beta);
    CUDA_LAUNCH_CHECK();
}

/* Operands read in place may be unaligned (a BF16 row of 7 values); when cuBLASLt has no
 * algorithm for them, the call is repeated over aligned, padded copies. */
void cuda_gemm(Ops *o, const CudaGemm *g)
{
    if (g->M <= 0 || g->N <= 0 || g->batch <= 0) return;
    if (g->K <= 0) {
        gemm_empty(o, g);
        return;
    }
    const cudaDataType_t compute = g->fp32 || o->precision == PREC_FP32 ? CUDA_R_32F : CUDA_R_16BF;
    if (compute == CUDA_R_32F && g->ct == CUDA_R_16BF) {
        gemm_via_fp32_c(o, g);
        return;
    }
    LtOperands L = lt_operands(o, g, compute, 0);
    if (lt_run(o, g, &L)) return;
    if (g->at == compute || g->bt == compute) {
        LtOperands P = lt_operands(o, g, compute, 1);
        if (lt_run(o, g, &P)) return;
    }
    if (g->ct == CUDA_R_16BF) {
        gemm_via_fp32_c(o, g);
        return;
    }
    DIE("cublasLt: no algorithm for a GEMM of m=%d n=%d k=%d (batch %d, %s operands, %s output); this shape is "
        "not supported", g->N, g->M, g->K, g->batch, compute == CUDA_R_16BF ? "bf16" : "fp32",
        g->ct == CUDA_R_16BF ? "bf16" : "fp32");
}

/* ---- Linear (kernels/ops.h): W (OC,IC), y = x W^T ---- */

/* A Linear's operands: x (activations, the table's type at), W (wt: FP32 master or BF16
 * compute copy), fp32: compute in FP32 (a WGT_FP32 weight, the router). */
typedef struct LinearArgs {
    const void *W;
    cudaDataType_t wt, at;
    int fp32;
} LinearArgs;

/* out (N,OC) = inp (N,IC) W^T: op(B) = W^T, W stored (OC,IC). IC = 0 gives zeros (CPU).
 * out_t: the output's type (activations, or the router's FP32 logits). */
static void linear_forward(Ops *o, void *out, cudaDataType_t out_t, const void *inp, const LinearArgs *w, int N,
                           int IC, int OC)
{
    CudaGemm g = { N, OC, IC, 1, 0, 1, inp, IC, 0, w->W, IC, 0, out, OC, 0, 1.0f, 0.0f, w->fp32, w->at, w->wt,
                   out_t };
    cuda_gemm(o, &g);
}

/* dinp (N,IC) += dout (N,OC) W (OC,IC); dout of type dout_t, dinp an activation. */
static void linear_backward_input(Ops *o, void *dinp, const void *dout, cudaDataType_t dout_t, const LinearArgs *w,
                                  int N, int IC, int OC)
{
    if (OC <= 0) return;
    CudaGemm g = { N, IC, OC, 1, 0, 0, dout, OC, 0, w->W, IC, 0, dinp, IC, 0, 1.0f, 1.0f, w->fp32, dout_t, w->wt,
                   w->at };
    cuda_gemm(o, &g);
}

/* dW (OC,IC) += dout^T (OC,N) inp (N,IC): op(A) = dout^T, dout stored (N,OC); dW FP32. */
static void linear_backward_weight(Ops *o, float *dweight, const void *dout, cudaDataType_t dout_t, const void *inp,
                                   cudaDataType_t inp_t, int N, int IC, int OC, int fp32)
{
    if (N <= 0) return;
    CudaGemm g = { OC, IC, N, 1, 1, 0, dout, OC, 0, inp, IC, 0, dweight, IC, 0, 1.0f, 1.0f, fp32, dout_t, inp_t,
                   CUDA_R_32F };
    cuda_gemm(o, &g);
}

/* Compute copies: a WGT_FP8 weight of an fp8 table keeps codes and block scales of W and W^T
 * (kernels/cuda/cuda_fp8.cu); a WGT_BF16 weight of a bf16 or fp8 table keeps W rounded to
 * BF16 (rows, cols), rebuilt by weight_refresh; a WGT_FP32 weight (and every weight of an
 * fp32 table) is its master. */
static int wgt_fp8(const Wgt *w) { return w->type == WGT_FP8 && w->data != w->master; }
static int wgt_bf16(const Wgt *w) { return w->type == WGT_BF16 && w->data != w->master; }

size_t cuda_weight_bytes(Ops *o, WgtType t, int rows, int cols)
{
    if (t == WGT_FP8 && o->precision == PREC_FP8) return cuda_fp8_weight_bytes(rows, cols);
    if (t == WGT_BF16 && o->precision != PREC_FP32) return (size_t)rows * cols * sizeof(__nv_bfloat16);
    return 0;
}

__global__ void weight_to_bf16_kernel(__nv_bfloat16 *dst, const float *src, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16_rn(src[i]);
}

void cuda_weight_refresh(Ops *o, Wgt *w)
{
    CUDA_PROF(o, "weight_refresh", "optimizer");
    if (wgt_fp8(w)) {
        cuda_fp8_weight_refresh(o, w);
    } else if (wgt_bf16(w)) {
        size_t n = (size_t)w->rows * w->cols;
        if (!n) return;
        weight_to_bf16_kernel<<<cuda_blocks(n, 256), 256, 0, cuda_stream(o)>>>((__nv_bfloat16 *)w->data, w->master,
                                                                                n);
        CUDA_LAUNCH_CHECK();
    } else {
        CHECK(w->data == w->master);
    }
}

/* The GEMM operands of a non-FP8 Linear weight. */
static LinearArgs linear_args(const Ops *o, const Wgt *w)
{
    LinearArgs a;
    a.W = w->data;
    a.wt = wgt_bf16(w) ? CUDA_R_16BF : CUDA_R_32F;
    a.at = cuda_act_type(o);
    a.fp32 = w->type == WGT_FP32 || (w->type == WGT_BF16 && !wgt_bf16(w) && o->precision == PREC_FP32);
    return a;
}

void cuda_matmul_forward(Ops *o, act *out, const act *inp, const Wgt *w, int N, int IC, int OC)
{
    CUDA_PROF(o, "matmul_forward", "gemm");
    if (wgt_fp8(w)) {
        cuda_fp8_matmul_forward(o, out, inp, w, N, IC, OC);
        return;
    }
    LinearArgs a = linear_args(o, w);
    linear_forward(o, out, a.at, inp, &a, N, IC, OC);
}

void cuda_matmul_backward_input(Ops *o, act *dinp, const act *dout, const Wgt *w, int N, int IC, int OC)
{
    CUDA_PROF(o, "matmul_backward_input", "gemm");
    if (wgt_fp8(w)) {
        cuda_fp8_matmul_backward_input(o, dinp, dout, w, N, IC, OC);
        return;
    }
    LinearArgs a = linear_args(o, w);
    linear_backward_input(o, dinp, dout, a.at, &a, N, IC, OC);
}

void cuda_matmul_backward_weight(Ops *o, float *dweight, const Wgt *w, const act *dout, const act *inp, int N, int IC,
                                 int OC)
{
    CUDA_PROF(o, "matmul_backward_weight", "gemm");
    if (wgt_fp8(w)) {
        cuda_fp8_matmul_backward_weight(o, dweight, dout, inp, N, IC, OC);
        return;
    }
    LinearArgs a = linear_args(o, w);
    linear_backward_weight(o, dweight, dout, a.at, inp, a.at, N, IC, OC, a.fp32);
}

/* The router stays FP32 in every precision (SPEC.md section 6): FP32 master, FP32 logits; its
 * BF16 input is widened (exactly) into scratch for the call, its input gradient rounded to
 * the activation type. */
static LinearArgs router_args(const Ops *o, const Wgt *w)
{
    LinearArgs a = { w->master, CUDA_R_32F, cuda_act_type(o), 1 };
    return a;
}

void cuda_router_forward(Ops *o, float *logits, const act *inp, const Wgt *w, int N, int C, int E)
{
    CUDA_PROF(o, "router_forward", "gemm");
    LinearArgs a = router_args(o, w);
    linear_forward(o, logits, CUDA_R_32F, inp, &a, N, C, E);
}

void cuda_router_backward_input(Ops *o, act *dinp, const float *dlogits, const Wgt *w, int N, int C, int E)
{
    CUDA_PROF(o, "router_backward_input", "gemm");
    LinearArgs a = router_args(o, w);
    linear_backward_input(o, dinp, dlogits, CUDA_R_32F, &a, N, C, E);
}

void cuda_router_backward_weight(Ops *o, float *dweight, const float *dlogits, const act *inp, int N, int C, int E)
{
    CUDA_PROF(o, "router_backward_weight", "gemm");
    linear_backward_weight(o, dweight, dlogits, CUDA_R_32F, inp, cuda_act_type(o), N, C, E, 1);
}
