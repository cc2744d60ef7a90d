/* kernels/cuda/cuda_gemm.cu - every GEMM of the CUDA backend through cuBLASLt: the Linear
 * entries (forward, input gradient, weight gradient) and the batched products of attention.
 *
 * Not here: fused epilogues (bias/activation; the model has no Linear bias); the FP8 GEMMs of
 * WGT_FP8 weights (kernels/cuda/cuda_fp8.cu, called from the Linear entries below). The
 * semantics follow kernels/ops.h; numerics per precision:
 *   PREC_FP32: FP32 operands, CUBLAS_COMPUTE_32F (true FP32, no TF32), so GPU and CPU agree
 *              to FP32 summation-order rounding.
 *   PREC_BF16: both operands rounded to BF16 (round to nearest even) into scratch, FP32
 *              accumulation, FP32 output added to C with beta (the accumulate contract of
 *              the backward entries), as the BF16 recipe of SPEC.md section 6 keeps master
 *              values and gradients in FP32.
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

/* ---- BF16 operand copies ---- */

/* dst (batch, rows, cols) with row stride dst_ld and batch stride dst_stride = src rounded to
 * BF16, src (batch, rows, cols) with row stride ld and batch stride src_stride (elements). */
__global__ void gemm_to_bf16_strided(__nv_bfloat16 *dst, const float *src, int batch, int rows, int cols,
                                     long long ld, long long src_stride, long long dst_ld, long long dst_stride)
{
    const long long per = (long long)rows * cols, total = per * batch;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        long long b = i / per, rem = i - b * per, r = rem / cols, c = rem - r * cols;
        dst[b * dst_stride + r * dst_ld + c] = __float2bfloat16_rn(src[b * src_stride + r * ld + c]);
    }
}

/* Contiguous n values; src 16-byte aligned: four per thread step. */
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

static const __nv_bfloat16 *to_bf16(Ops *o, CudaScratch slot, const float *src, int batch, int rows, int cols,
                                    long long ld, long long stride)
{
    long long ps = packed_stride(rows, cols);
    __nv_bfloat16 *dst = (__nv_bfloat16 *)cuda_scratch(o, slot, (size_t)(ps * batch) * sizeof(__nv_bfloat16));
    cudaStream_t s = cuda_stream(o);
    long long n = (long long)rows * cols;
    if (ld == cols && cols == padded_ld(cols) && batch == 1 && ((uintptr_t)src & 15) == 0) {
        gemm_to_bf16_vec4<<<cuda_blocks((size_t)(n / 4 + 1), 256), 256, 0, s>>>(dst, src, n);
    } else {
        gemm_to_bf16_strided<<<cuda_blocks((size_t)(n * batch), 256), 256, 0, s>>>(dst, src, batch, rows, cols,
                                                                                   ld, stride, padded_ld(cols), ps);
    }
    CUDA_LAUNCH_CHECK();
    return dst;
}

/* C (batch, M, N) row stride ldc, batch stride sC: *= beta (the K = 0 product). */
__global__ void gemm_scale_c(float *C, int batch, int M, int N, long long ldc, long long sC, float beta)
{
    const long long per = (long long)M * N, total = per * batch;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        long long b = i / per, rem = i - b * per, r = rem / N, c = rem - r * N;
        float *p = C + b * sC + r * ldc + c;
        *p = beta == 0.0f ? 0.0f : beta * *p;
    }
}

/* ---- algorithm cache ---- */

typedef struct GemmKey {
    int prec, transa, transb, m, n, k, batch;
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

static void pick_algo(CudaState *st, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t la, cublasLtMatrixLayout_t lb,
                      cublasLtMatrixLayout_t lc, const GemmKey *key, cublasLtMatmulAlgo_t *algo)
{
    if (!st->gemm_cache) st->gemm_cache = (GemmCache *)xcalloc(1, sizeof(GemmCache));
    GemmCache *c = st->gemm_cache;
    int found = 0, slot = cache_find(c, key, &found);
    if (found) { *algo = c->algo[slot]; return; }
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
    if (n < 1)
        DIE("cublasLt: no algorithm for a GEMM of m=%d n=%d k=%d (batch %d, %s); this shape is not supported",
            key->m, key->n, key->k, key->batch, key->prec == PREC_BF16 ? "bf16" : "fp32");
    *algo = res.algo;
    if (slot >= 0) {
        c->key[slot] = *key;
        c->algo[slot] = res.algo;
        c->used[slot] = 1;
        c->n_used++;
    }
}

/* Operands in the type the precision asks for: the caller's FP32 memory, or BF16 copies. */
static LtOperands lt_operands(Ops *o, const CudaGemm *g)
{
    const int a_rows = g->ta ? g->K : g->M, a_cols = g->ta ? g->M : g->K;   /* A as stored */
    const int b_rows = g->tb ? g->N : g->K, b_cols = g->tb ? g->K : g->N;   /* B as stored */
    LtOperands L;
    if (o->precision != PREC_FP32 && !g->fp32) {
        L.ab_type = CUDA_R_16BF;
        L.A = to_bf16(o, SCR_GEMM_B, g->B, g->batch, b_rows, b_cols, g->ldb, g->sB);
        L.B = to_bf16(o, SCR_GEMM_A, g->A, g->batch, a_rows, a_cols, g->lda, g->sA);
        L.lda = padded_ld(b_cols);
        L.ldb = padded_ld(a_cols);
        L.sa = packed_stride(b_rows, b_cols);
        L.sb = packed_stride(a_rows, a_cols);
    } else {
        L.ab_type = CUDA_R_32F;
        L.A = g->B;
        L.B = g->A;
        L.lda = g->ldb;
        L.ldb = g->lda;
        L.sa = g->sB;
        L.sb = g->sA;
    }
    return L;
}

void cuda_gemm(Ops *o, const CudaGemm *g)
{
    if (g->M <= 0 || g->N <= 0 || g->batch <= 0) return;
    CudaState *st = cuda_state(o);
    if (g->K <= 0) {
        if (g->beta != 1.0f) {
            gemm_scale_c<<<cuda_blocks((size_t)g->M * g->N * g->batch, 256), 256, 0, st->stream>>>(
                g->C, g->batch, g->M, g->N, g->ldc, g->sC, g->beta);
            CUDA_LAUNCH_CHECK();
        }
        return;
    }
    LtOperands L = lt_operands(o, g);
    const size_t ab_size = L.ab_type == CUDA_R_16BF ? 2 : 4;
    /* column-major problem: m = N, n = M; cuBLASLt's A = our B, its B = our A */
    cublasOperation_t opa = g->tb ? CUBLAS_OP_T : CUBLAS_OP_N, opb = g->ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    const long long m = g->N, n = g->M, k = g->K;
    cublasLtMatmulDesc_t desc;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    cublasLtMatrixLayout_t la = make_layout(L.ab_type, opa == CUBLAS_OP_N ? m : k, opa == CUBLAS_OP_N ? k : m,
                                            L.lda, g->batch, L.sa);
    cublasLtMatrixLayout_t lb = make_layout(L.ab_type, opb == CUBLAS_OP_N ? k : n, opb == CUBLAS_OP_N ? n : k,
                                            L.ldb, g->batch, L.sb);
    cublasLtMatrixLayout_t lc = make_layout(CUDA_R_32F, m, n, g->ldc, g->batch, g->sC);
    GemmKey key;
    memset(&key, 0, sizeof key);    /* padding bytes take part in hashing and comparing */
    key.prec = g->fp32 || o->precision == PREC_FP32 ? PREC_FP32 : PREC_BF16;
    key.transa = (int)opa;
    key.transb = (int)opb;
    key.m = (int)m;
    key.n = (int)n;
    key.k = (int)k;
    key.batch = g->batch;
    key.lda = L.lda;
    key.ldb = L.ldb;
    key.ldc = g->ldc;
    key.sa = L.sa;
    key.sb = L.sb;
    key.sc = g->sC;
    key.align_a = alignment_of(L.A, L.sa * (long long)ab_size, g->batch);
    key.align_b = alignment_of(L.B, L.sb * (long long)ab_size, g->batch);
    key.align_c = alignment_of(g->C, g->sC * 4, g->batch);
    cublasLtMatmulAlgo_t algo;
    pick_algo(st, desc, la, lb, lc, &key, &algo);
    CUBLAS_CHECK(cublasLtMatmul(st->lt, desc, &g->alpha, L.A, la, L.B, lb, &g->beta, g->C, lc, g->C, lc, &algo,
                                st->workspace, CUDA_LT_WORKSPACE, st->stream));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(la));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(lb));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(lc));
    CUBLAS_CHECK(cublasLtMatmulDescDestroy(desc));
}

/* ---- Linear (kernels/ops.h): W (OC,IC), y = x W^T ---- */

/* out (N,OC) = inp (N,IC) W^T: op(B) = W^T, W stored (OC,IC). IC = 0 gives zeros (CPU). */
static void linear_forward(Ops *o, float *out, const float *inp, const float *weight, int N, int IC, int OC,
                           int fp32)
{
    CudaGemm g = { N, OC, IC, 1, 0, 1, inp, IC, 0, weight, IC, 0, out, OC, 0, 1.0f, 0.0f, fp32 };
    cuda_gemm(o, &g);
}

/* dinp (N,IC) += dout (N,OC) W (OC,IC). */
static void linear_backward_input(Ops *o, float *dinp, const float *dout, const float *weight, int N, int IC,
                                  int OC, int fp32)
{
    if (OC <= 0) return;
    CudaGemm g = { N, IC, OC, 1, 0, 0, dout, OC, 0, weight, IC, 0, dinp, IC, 0, 1.0f, 1.0f, fp32 };
    cuda_gemm(o, &g);
}

/* dW (OC,IC) += dout^T (OC,N) inp (N,IC): op(A) = dout^T, dout stored (N,OC). */
static void linear_backward_weight(Ops *o, float *dweight, const float *dout, const float *inp, int N, int IC,
                                   int OC, int fp32)
{
    if (N <= 0) return;
    CudaGemm g = { OC, IC, N, 1, 1, 0, dout, OC, 0, inp, IC, 0, dweight, IC, 0, 1.0f, 1.0f, fp32 };
    cuda_gemm(o, &g);
}

/* Compute copies: kept for WGT_FP8 weights of an fp8 table (codes and block scales of W and
 * W^T, kernels/cuda/cuda_fp8.cu); otherwise not yet: the GEMMs read the FP32 master and round
 * both operands per call under PREC_BF16 and PREC_FP8 (lt_operands). */
size_t cuda_weight_bytes(Ops *o, WgtType t, int rows, int cols)
{
    return t == WGT_FP8 && o->precision == PREC_FP8 ? cuda_fp8_weight_bytes(rows, cols) : 0;
}

static int wgt_fp8(const Wgt *w) { return w->type == WGT_FP8 && w->data != w->master; }

void cuda_weight_refresh(Ops *o, Wgt *w)
{
    if (wgt_fp8(w)) cuda_fp8_weight_refresh(o, w);
    else CHECK(w->data == w->master);
}

static const float *wgt_f32(const Wgt *w) { return (const float *)w->data; }

void cuda_matmul_forward(Ops *o, act *out, const act *inp, const Wgt *w, int N, int IC, int OC)
{
    CUDA_PROF(o, "matmul_forward", "gemm");
    if (wgt_fp8(w)) {
        cuda_fp8_matmul_forward(o, out, inp, w, N, IC, OC);
        return;
    }
    linear_forward(o, cuda_f(out), cuda_cf(inp), wgt_f32(w), N, IC, OC, 0);
}

void cuda_matmul_backward_input(Ops *o, act *dinp, const act *dout, const Wgt *w, int N, int IC, int OC)
{
    CUDA_PROF(o, "matmul_backward_input", "gemm");
    if (wgt_fp8(w)) {
        cuda_fp8_matmul_backward_input(o, dinp, dout, w, N, IC, OC);
        return;
    }
    linear_backward_input(o, cuda_f(dinp), cuda_cf(dout), wgt_f32(w), N, IC, OC, 0);
}

void cuda_matmul_backward_weight(Ops *o, float *dweight, const Wgt *w, const act *dout, const act *inp, int N, int IC,
                                 int OC)
{
    CUDA_PROF(o, "matmul_backward_weight", "gemm");
    if (wgt_fp8(w)) {
        cuda_fp8_matmul_backward_weight(o, dweight, dout, inp, N, IC, OC);
        return;
    }
    linear_backward_weight(o, dweight, cuda_cf(dout), cuda_cf(inp), N, IC, OC, 0);
}

/* The router stays FP32 in every precision (SPEC.md section 6). */
void cuda_router_forward(Ops *o, float *logits, const act *inp, const Wgt *w, int N, int C, int E)
{
    CUDA_PROF(o, "router_forward", "gemm");
    linear_forward(o, logits, cuda_cf(inp), wgt_f32(w), N, C, E, 1);
}

void cuda_router_backward_input(Ops *o, act *dinp, const float *dlogits, const Wgt *w, int N, int C, int E)
{
    CUDA_PROF(o, "router_backward_input", "gemm");
    linear_backward_input(o, cuda_f(dinp), dlogits, wgt_f32(w), N, C, E, 1);
}

void cuda_router_backward_weight(Ops *o, float *dweight, const float *dlogits, const act *inp, int N, int C, int E)
{
    CUDA_PROF(o, "router_backward_weight", "gemm");
    linear_backward_weight(o, dweight, dlogits, cuda_cf(inp), N, C, E, 1);
}
