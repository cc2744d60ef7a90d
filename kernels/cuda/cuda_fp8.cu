/* kernels/cuda/cuda_fp8.cu - FP8 (E4M3) on the GPU: the quantisers of SPEC.md section 6 and the
 * block-scaled GEMM C = A B^T (API: kernels/cuda/cuda_ops.h, CudaFp8Mat).
 *
 * Quantisers: every number comes from kernels/fp8.h, compiled __host__ __device__ (FP8_HD):
 * fp8_amax on a lane's values, the maximum over the tile taken on the bits (exact and
 * independent of order, as fp8_amax's own loop), fp8_scale, fp8_quantize. So codes and scales
 * equal the CPU's fp8_quantize_tile / fp8_quantize_block bit for bit (tests/gpu/test_gpu_fp8.c
 * compares them on a GPU). One warp per 1x128 tile (each lane 4 consecutive values); 128x1
 * tiles (Wgrad's transposed copies) through a shared 128 x 32 tile; one block of 256 threads
 * per 128x128 weight block, which writes the block and its transpose (Dgrad's copy) at once.
 *
 * GEMMs (SPEC section 6: TN only, A (M, K) and B (N, K) K-contiguous):
 *   cuBLASLt: CUBLASLT_MATMUL_DESC_{A,B}_SCALE_MODE = VEC128_32F (1x128) or BLK128x128_32F
 *     (128x128), FAST_ACCUM off (it would skip the FP32 promotion every 128 of K), FP32
 *     compute. Column-major as in cuda_gemm.cu: cuBLASLt's m = N, n = M, its A (op T) is our B,
 *     its B (op N) our A. CUDA 13.0's cuBLASLt offers these modes on Hopper (sm_90) only
 *     (ENVIRONMENT.md); elsewhere its heuristic returns no algorithm and AUTO takes:
 *   the tiled kernel: 16x16 outputs per block, each 128-block of K summed in FP32 from exact
 *     products (two E4M3 values multiply exactly in FP32), multiplied by s_a s_b and summed
 *     over the blocks in FP32. Slow; it is the alternative path where cuBLASLt has none, and
 *     has its own, tighter, budget in the test.
 * Both read the same CudaFp8Mat; K is padded with code 0 to whole 128-blocks, which adds
 * nothing to any sum.
 *
 * The op table's fp8 Linear entries are at the end (cuda_gemm.cu calls them for WGT_FP8
 * weights); activations come in the table's type, BF16 on an fp8 table (act_bytes 2).
 * Not here (yet): fused quantise-in-epilogue.
 */
#include "kernels/cuda/cuda_internal.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/fp8.h"

#include <cuda_bf16.h>
#include <stdio.h>
#include <string.h>

#define FP8_THREADS 256

/* ---- storage ---- */

static size_t align256(size_t b) { return (b + 255) & ~(size_t)255; }

static size_t scale_count(int rows, int K, int block, int *sld)
{
    int nkb = cuda_fp8_kblocks(K);
    if (block) {
        *sld = (nkb + 3) / 4 * 4;
        return (size_t)((rows + FP8_TILE - 1) / FP8_TILE) * *sld;
    }
    *sld = rows;
    return (size_t)nkb * rows;
}

extern "C" size_t cuda_fp8_mat_bytes(int rows, int K, int block)
{
    int sld;
    return align256((size_t)rows * cuda_fp8_ld(K)) + align256(scale_count(rows, K, block, &sld) * sizeof(float));
}

extern "C" void cuda_fp8_mat_init(CudaFp8Mat *m, void *mem, int rows, int K, int block)
{
    if (rows < 1 || K < 1) DIE("cuda fp8: a quantised matrix needs rows >= 1 and K >= 1 (got %d x %d)", rows, K);
    m->rows = rows;
    m->K = K;
    m->ldq = cuda_fp8_ld(K);
    m->block = block ? 1 : 0;
    scale_count(rows, K, m->block, &m->sld);
    m->q = (uint8_t *)mem;
    m->scale = (float *)((char *)mem + align256((size_t)rows * m->ldq));
}

/* ---- device helpers ---- */

__device__ inline float fp8_load(const float *p) { return *p; }
__device__ inline float fp8_load(const __nv_bfloat16 *p) { return __bfloat162float(*p); }   /* exact */

__device__ inline uint32_t fp8_warp_max_bits(uint32_t v)
{
    for (int off = 16; off > 0; off >>= 1) {
        uint32_t o = __shfl_xor_sync(0xffffffffu, v, off);
        v = o > v ? o : v;
    }
    return v;
}

/* The 4 codes of v[0..n) under s, code 0 beyond n (the padding) */
__device__ inline uchar4 fp8_codes4(const float *v, int n, float s)
{
    uchar4 c;
    c.x = n > 0 ? fp8_quantize(v[0], s) : 0;
    c.y = n > 1 ? fp8_quantize(v[1], s) : 0;
    c.z = n > 2 ? fp8_quantize(v[2], s) : 0;
    c.w = n > 3 ? fp8_quantize(v[3], s) : 0;
    return c;
}

__device__ inline int dclamp4(int n) { return n < 0 ? 0 : n > 4 ? 4 : n; }

/* ---- single values (tests: every code, ties, saturation on the device) ---- */

__global__ void fp8_convert_kernel(uint8_t *q, float *x, size_t n, int decode)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        if (decode) x[i] = e4m3_to_float(q[i]);
        else q[i] = e4m3_from_float(x[i]);
    }
}

extern "C" void cuda_fp8_convert(Ops *o, uint8_t *q, float *x, size_t n, int decode)
{
    if (n == 0) return;
    fp8_convert_kernel<<<cuda_blocks(n, FP8_THREADS), FP8_THREADS, 0, cuda_stream(o)>>>(q, x, n, decode);
    CUDA_LAUNCH_CHECK();
}

extern "C" int cuda_compute_capability(Ops *o)
{
    return cuda_state(o)->prop.major * 10 + cuda_state(o)->prop.minor;
}

/* ---- 1x128 tiles along rows ---- */

/* One warp per tile (row r, K block kb); lane l holds values k0 + 4l .. k0 + 4l + 3. */
template <typename T>
__global__ void fp8_rows_kernel(uint8_t *q, float *scale, int rows, int K, int ldq, int sld, const T *x,
                                long long ldx, int pow2)
{
    const int lane = threadIdx.x & 31, nkb = (K + FP8_TILE - 1) / FP8_TILE;
    const long long tiles = (long long)rows * nkb, step = ((long long)gridDim.x * blockDim.x) >> 5;
    for (long long t = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5; t < tiles; t += step) {
        const int r = (int)(t / nkb), kb = (int)(t % nkb), k0 = kb * FP8_TILE + 4 * lane;
        const int n = dclamp4(K - k0);
        float v[4] = { 0.0f, 0.0f, 0.0f, 0.0f };
        for (int i = 0; i < n; i++) v[i] = fp8_load(x + r * ldx + k0 + i);
        const float amax = fp8_bits_float(fp8_warp_max_bits(fp8_float_bits(fp8_amax(v, n))));
        const float s = fp8_scale(amax, pow2);
        *reinterpret_cast<uchar4 *>(q + (size_t)r * ldq + k0) = fp8_codes4(v, n, s);
        if (lane == 0) scale[(size_t)kb * sld + r] = s;
    }
}

static void check_mat(const CudaFp8Mat *m, int block, const char *what)
{
    if (!m || !m->q || !m->scale || m->rows < 1 || m->K < 1 || m->ldq != cuda_fp8_ld(m->K) || m->block != block)
        DIE("cuda fp8: %s needs a matrix made by cuda_fp8_mat_init with block %d", what, block);
}

extern "C" void cuda_fp8_quantize_rows(Ops *o, CudaFp8Mat *dst, const void *x, int x_bf16, int ldx, int pow2)
{
    check_mat(dst, 0, "quantize_rows");
    if (ldx < dst->K) DIE("cuda fp8: quantize_rows: row stride %d below K = %d", ldx, dst->K);
    const size_t tiles = (size_t)dst->rows * cuda_fp8_kblocks(dst->K);
    const unsigned blocks = cuda_blocks(tiles * 32, FP8_THREADS);
    cudaStream_t s = cuda_stream(o);
    if (x_bf16)
        fp8_rows_kernel<<<blocks, FP8_THREADS, 0, s>>>(dst->q, dst->scale, dst->rows, dst->K, dst->ldq, dst->sld,
                                                       (const __nv_bfloat16 *)x, ldx, pow2);
    else
        fp8_rows_kernel<<<blocks, FP8_THREADS, 0, s>>>(dst->q, dst->scale, dst->rows, dst->K, dst->ldq, dst->sld,
                                                       (const float *)x, ldx, pow2);
    CUDA_LAUNCH_CHECK();
}

/* ---- 128x1 tiles along the tokens (the transposed copy) ---- */

#define FP8_COLS 32     /* channels per block of fp8_cols_kernel */

/* Block (channel block cb, token block kb): x[t0 .. t0+128) x [c0 .. c0+32) through shared
 * memory; warp w then quantises channels w, w + 8, ... as 1x128 tiles of the transposed matrix
 * (lane l: tokens t0 + 4l .. t0 + 4l + 3), power-of-two scales. */
template <typename T>
__global__ void fp8_cols_kernel(uint8_t *q, float *scale, int C, int n, int ldq, int sld, const T *x, long long ldx)
{
    __shared__ float tile[FP8_TILE][FP8_COLS + 1];
    const int c0 = blockIdx.x * FP8_COLS, kb = blockIdx.y, t0 = kb * FP8_TILE;
    for (int i = threadIdx.x; i < FP8_TILE * FP8_COLS; i += blockDim.x) {
        const int tt = i / FP8_COLS, cc = i % FP8_COLS;
        const int t = t0 + tt, c = c0 + cc;
        tile[tt][cc] = t < n && c < C ? fp8_load(x + t * ldx + c) : 0.0f;
    }
    __syncthreads();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int nv = dclamp4(n - (t0 + 4 * lane));
    for (int cc = warp; cc < FP8_COLS; cc += warps) {
        const int c = c0 + cc;
        if (c >= C) break;
        float v[4];
        for (int i = 0; i < 4; i++) v[i] = tile[4 * lane + i][cc];
        const float amax = fp8_bits_float(fp8_warp_max_bits(fp8_float_bits(fp8_amax(v, nv))));
        const float s = fp8_scale(amax, 1);
        *reinterpret_cast<uchar4 *>(q + (size_t)c * ldq + t0 + 4 * lane) = fp8_codes4(v, nv, s);
        if (lane == 0) scale[(size_t)kb * sld + c] = s;
    }
}

extern "C" void cuda_fp8_quantize_cols(Ops *o, CudaFp8Mat *dst, const void *x, int x_bf16, int n, int ldx)
{
    check_mat(dst, 0, "quantize_cols");
    if (n != dst->K) DIE("cuda fp8: quantize_cols: %d tokens into a copy of K = %d", n, dst->K);
    if (ldx < dst->rows) DIE("cuda fp8: quantize_cols: row stride %d below the %d channels", ldx, dst->rows);
    dim3 grid((unsigned)((dst->rows + FP8_COLS - 1) / FP8_COLS), (unsigned)cuda_fp8_kblocks(n));
    if (grid.y > 65535u) DIE("cuda fp8: quantize_cols: %d tokens exceed the grid (%u blocks of 128)", n, grid.y);
    cudaStream_t s = cuda_stream(o);
    if (x_bf16)
        fp8_cols_kernel<<<grid, FP8_THREADS, 0, s>>>(dst->q, dst->scale, dst->rows, n, dst->ldq, dst->sld,
                                                     (const __nv_bfloat16 *)x, ldx);
    else
        fp8_cols_kernel<<<grid, FP8_THREADS, 0, s>>>(dst->q, dst->scale, dst->rows, n, dst->ldq, dst->sld,
                                                     (const float *)x, ldx);
    CUDA_LAUNCH_CHECK();
}

/* ---- 128x128 weight blocks (+ the transposed copy) ---- */

/* Block (cb, rb) of w (rows, cols): thread i holds 4 consecutive values of each of its rows;
 * the block's amax on the bits, s = fp8_scale(amax, 0), codes into q and, through shared
 * memory, transposed into qt (rows of qt = columns of w; rows beyond `rows` padded with 0). */
__global__ void fp8_weight_kernel(uint8_t *q, float *scale, int ldq, int sld, uint8_t *qt, float *scale_t, int ldqt,
                                  int sldt, const float *w, long long ldw, int rows, int cols)
{
    __shared__ uint8_t codes[FP8_TILE][FP8_TILE + 4];
    __shared__ uint32_t wmax[FP8_THREADS / 32];
    const int cb = blockIdx.x, rb = blockIdx.y, r0 = rb * FP8_TILE, c0 = cb * FP8_TILE;
    const int nr = rows - r0 < FP8_TILE ? rows - r0 : FP8_TILE, nc = cols - c0 < FP8_TILE ? cols - c0 : FP8_TILE;
    const int cc = (threadIdx.x * 4) % FP8_TILE, rstep = blockDim.x * 4 / FP8_TILE;
    const int nv = dclamp4(nc - cc);
    uint32_t m = 0;
    for (int rr = threadIdx.x * 4 / FP8_TILE; rr < nr; rr += rstep) {
        float v[4] = { 0.0f, 0.0f, 0.0f, 0.0f };
        for (int i = 0; i < nv; i++) v[i] = w[(r0 + rr) * ldw + c0 + cc + i];
        uint32_t a = fp8_float_bits(fp8_amax(v, nv));
        m = a > m ? a : m;
    }
    m = fp8_warp_max_bits(m);
    if ((threadIdx.x & 31) == 0) wmax[threadIdx.x >> 5] = m;
    __syncthreads();
    m = 0;
    for (int i = 0; i < (int)(blockDim.x >> 5); i++) m = wmax[i] > m ? wmax[i] : m;
    const float s = fp8_scale(fp8_bits_float(m), 0);
    for (int rr = threadIdx.x * 4 / FP8_TILE; rr < FP8_TILE; rr += rstep) {
        float v[4] = { 0.0f, 0.0f, 0.0f, 0.0f };
        const int n = rr < nr ? nv : 0;
        for (int i = 0; i < n; i++) v[i] = w[(r0 + rr) * ldw + c0 + cc + i];
        uchar4 c = fp8_codes4(v, n, s);
        codes[rr][cc] = c.x, codes[rr][cc + 1] = c.y, codes[rr][cc + 2] = c.z, codes[rr][cc + 3] = c.w;
        if (rr < nr) *reinterpret_cast<uchar4 *>(q + (size_t)(r0 + rr) * ldq + c0 + cc) = c;
    }
    if (threadIdx.x == 0) scale[(size_t)rb * sld + cb] = s;
    if (!qt) return;
    __syncthreads();
    /* transposed: row c0 + j of qt holds codes[0..128)[j] at K positions r0 .. r0 + 128 */
    const int rr = (threadIdx.x * 4) % FP8_TILE;
    for (int j = threadIdx.x * 4 / FP8_TILE; j < nc; j += rstep) {
        uchar4 c = make_uchar4(codes[rr][j], codes[rr + 1][j], codes[rr + 2][j], codes[rr + 3][j]);
        *reinterpret_cast<uchar4 *>(qt + (size_t)(c0 + j) * ldqt + r0 + rr) = c;
    }
    if (threadIdx.x == 0) scale_t[(size_t)cb * sldt + rb] = s;
}

extern "C" void cuda_fp8_quantize_weight(Ops *o, CudaFp8Mat *dst, CudaFp8Mat *dst_t, const float *w, int ldw)
{
    check_mat(dst, 1, "quantize_weight");
    if (dst_t) {
        check_mat(dst_t, 1, "quantize_weight's transposed copy");
        if (dst_t->rows != dst->K || dst_t->K != dst->rows)
            DIE("cuda fp8: quantize_weight: transposed copy %d x %d of a %d x %d weight", dst_t->rows, dst_t->K,
                dst->rows, dst->K);
    }
    if (ldw < dst->K) DIE("cuda fp8: quantize_weight: row stride %d below %d columns", ldw, dst->K);
    dim3 grid((unsigned)cuda_fp8_kblocks(dst->K), (unsigned)cuda_fp8_kblocks(dst->rows));
    if (grid.y > 65535u) DIE("cuda fp8: quantize_weight: %d rows exceed the grid", dst->rows);
    fp8_weight_kernel<<<grid, FP8_THREADS, 0, cuda_stream(o)>>>(
        dst->q, dst->scale, dst->ldq, dst->sld, dst_t ? dst_t->q : NULL, dst_t ? dst_t->scale : NULL,
        dst_t ? dst_t->ldq : 0, dst_t ? dst_t->sld : 0, w, ldw, dst->rows, dst->K);
    CUDA_LAUNCH_CHECK();
}

/* ---- GEMM: the tiled kernel ---- */

#define FP8_GT 16       /* output tile side of fp8_gemm_tiled */

__device__ inline float fp8_scale_of(const float *scale, int block, int sld, int r, int kb)
{
    return block ? scale[(size_t)(r / FP8_TILE) * sld + kb] : scale[(size_t)kb * sld + r];
}

__device__ inline void fp8_store(float *p, float v, float beta) { *p = beta == 0.0f ? v : v + beta * *p; }
__device__ inline void fp8_store(__nv_bfloat16 *p, float v, float beta)
{
    *p = __float2bfloat16_rn(beta == 0.0f ? v : v + beta * __bfloat162float(*p));
}

/* c (M, N) = A B^T (+ beta c): block (bx, by) computes outputs by*16 + ty, bx*16 + tx; per
 * 128-block of K both 16 x 128 code tiles are decoded into shared memory, each output sums its
 * 128 exact products in FP32 (fmaf: one rounding per step), and adds blk * (s_a s_b). */
template <typename TO>
__global__ void fp8_gemm_tiled(int M, int N, int ldq, int nkb, const uint8_t *qa, const float *sa, int a_block,
                               int a_sld, const uint8_t *qb, const float *sb, int b_block, int b_sld, TO *c,
                               long long ldc, float beta)
{
    __shared__ float As[FP8_GT][FP8_TILE + 1], Bs[FP8_GT][FP8_TILE + 1];
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * FP8_GT + tx;
    const int m0 = blockIdx.y * FP8_GT, n0 = blockIdx.x * FP8_GT, m = m0 + ty, n = n0 + tx;
    float acc = 0.0f;
    for (int kb = 0; kb < nkb; kb++) {
        for (int i = tid; i < FP8_GT * FP8_TILE; i += FP8_GT * FP8_GT) {
            const int rr = i / FP8_TILE, kk = i % FP8_TILE;
            const size_t at = (size_t)kb * FP8_TILE + kk;
            As[rr][kk] = m0 + rr < M ? e4m3_to_float(qa[(size_t)(m0 + rr) * ldq + at]) : 0.0f;
            Bs[rr][kk] = n0 + rr < N ? e4m3_to_float(qb[(size_t)(n0 + rr) * ldq + at]) : 0.0f;
        }
        __syncthreads();
        if (m < M && n < N) {
            float blk = 0.0f;
            for (int k = 0; k < FP8_TILE; k++) blk = fmaf(As[ty][k], Bs[tx][k], blk);
            const float s = fp8_scale_of(sa, a_block, a_sld, m, kb) * fp8_scale_of(sb, b_block, b_sld, n, kb);
            acc = fmaf(blk, s, acc);
        }
        __syncthreads();
    }
    if (m < M && n < N) fp8_store(c + (size_t)m * ldc + n, acc, beta);
}

static void tiled_gemm(Ops *o, const CudaFp8Mat *a, const CudaFp8Mat *b, void *c, int c_bf16, int ldc, float beta)
{
    dim3 grid((unsigned)((b->rows + FP8_GT - 1) / FP8_GT), (unsigned)((a->rows + FP8_GT - 1) / FP8_GT));
    dim3 block(FP8_GT, FP8_GT);
    if (grid.y > 65535u) DIE("cuda fp8: tiled GEMM: %d rows exceed the grid", a->rows);
    const int nkb = cuda_fp8_kblocks(a->K);
    cudaStream_t s = cuda_stream(o);
    if (c_bf16)
        fp8_gemm_tiled<<<grid, block, 0, s>>>(a->rows, b->rows, a->ldq, nkb, a->q, a->scale, a->block, a->sld, b->q,
                                              b->scale, b->block, b->sld, (__nv_bfloat16 *)c, ldc, beta);
    else
        fp8_gemm_tiled<<<grid, block, 0, s>>>(a->rows, b->rows, a->ldq, nkb, a->q, a->scale, a->block, a->sld, b->q,
                                              b->scale, b->block, b->sld, (float *)c, ldc, beta);
    CUDA_LAUNCH_CHECK();
}

/* ---- GEMM: cuBLASLt ---- */

typedef struct LtFp8 {
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulPreference_t pref;
} LtFp8;

static void lt_fp8_destroy(LtFp8 *L)
{
    if (L->pref) cublasLtMatmulPreferenceDestroy(L->pref);
    if (L->lc) cublasLtMatrixLayoutDestroy(L->lc);
    if (L->lb) cublasLtMatrixLayoutDestroy(L->lb);
    if (L->la) cublasLtMatrixLayoutDestroy(L->la);
    if (L->desc) cublasLtMatmulDescDestroy(L->desc);
}

/* The descriptors of c = a b^T in cuBLASLt's terms; the first failing status, else success. */
static cublasStatus_t lt_fp8_describe(LtFp8 *L, const CudaFp8Mat *a, const CudaFp8Mat *b, int c_bf16, int ldc)
{
    const cublasOperation_t opa = CUBLAS_OP_T, opb = CUBLAS_OP_N;
    const int8_t fast = 0;
    const int32_t mode_a = b->block ? CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F : CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
    const int32_t mode_b = a->block ? CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F : CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
    const void *scale_a = b->scale, *scale_b = a->scale;
    const uint64_t ws = CUDA_LT_WORKSPACE;
    cublasStatus_t s;
#define LT_TRY(call) do { s = (call); if (s != CUBLAS_STATUS_SUCCESS) return s; } while (0)
    LT_TRY(cublasLtMatmulDescCreate(&L->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LT_TRY(cublasLtMatmulDescSetAttribute(L->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    LT_TRY(cublasLtMatmulDescSetAttribute(L->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    LT_TRY(cublasLtMatmulDescSetAttribute(L->desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof fast));
    LT_TRY(cublasLtMatmulDescSetAttribute(L->desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode_a, sizeof mode_a));
    LT_TRY(cublasLtMatmulDescSetAttribute(L->desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode_b, sizeof mode_b));
    LT_TRY(cublasLtMatmulDescSetAttribute(L->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &scale_a, sizeof scale_a));
    LT_TRY(cublasLtMatmulDescSetAttribute(L->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &scale_b, sizeof scale_b));
    /* cuBLASLt's A: k x m column-major = our b (N, K) row-major; its B: k x n = our a */
    LT_TRY(cublasLtMatrixLayoutCreate(&L->la, CUDA_R_8F_E4M3, (uint64_t)b->ldq, (uint64_t)b->rows, b->ldq));
    LT_TRY(cublasLtMatrixLayoutCreate(&L->lb, CUDA_R_8F_E4M3, (uint64_t)a->ldq, (uint64_t)a->rows, a->ldq));
    LT_TRY(cublasLtMatrixLayoutCreate(&L->lc, c_bf16 ? CUDA_R_16BF : CUDA_R_32F, (uint64_t)b->rows,
                                      (uint64_t)a->rows, ldc));
    LT_TRY(cublasLtMatmulPreferenceCreate(&L->pref));
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(L->pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
#undef LT_TRY
    return CUBLAS_STATUS_SUCCESS;
}

/* ---- cuBLASLt's answer per shape: an algorithm, or that it has none (AUTO then goes straight
 * to the tiled kernel). Open addressing, bounded; when full, the heuristic is asked each call. */

typedef struct Fp8Key { int m, n, k, blocks, c_bf16, ldc, beta_zero, align_c; } Fp8Key;

#define FP8_CACHE_SLOTS 1024

typedef struct Fp8Cache {
    Fp8Key key[FP8_CACHE_SLOTS];
    cublasLtMatmulAlgo_t algo[FP8_CACHE_SLOTS];
    signed char state[FP8_CACHE_SLOTS];     /* 0 empty, 1 algo, -1 no algorithm */
    int n_used;
} Fp8Cache;

void cuda_fp8_cache_free(CudaState *st)
{
    free(st->fp8_cache);
    st->fp8_cache = NULL;
}

/* The slot of k (*found), or the empty slot where it goes, or -1 when the table is full. */
static int fp8_cache_slot(CudaState *st, const Fp8Key *k, int *found)
{
    if (!st->fp8_cache) st->fp8_cache = (Fp8Cache *)xcalloc(1, sizeof(Fp8Cache));
    Fp8Cache *c = st->fp8_cache;
    unsigned h = 2166136261u;
    const int *v = &k->m;
    for (size_t i = 0; i < sizeof *k / sizeof(int); i++) h = (h ^ (unsigned)v[i]) * 16777619u;
    *found = 0;
    for (int i = 0; i < FP8_CACHE_SLOTS; i++) {
        int s = (int)((h + (unsigned)i) % FP8_CACHE_SLOTS);
        if (!c->state[s]) return c->n_used < FP8_CACHE_SLOTS / 2 ? s : -1;
        if (!memcmp(&c->key[s], k, sizeof *k)) { *found = 1; return s; }
    }
    return -1;
}

/* Largest power of two (<= 256) dividing the address: what the algorithm may assume of C/D. */
static int fp8_alignment(const void *p)
{
    uintptr_t a = (uintptr_t)p | 256;
    return (int)(a & (~a + 1));
}

/* 1: ran; 0: cuBLASLt has no algorithm or refused (why says which status) */
static int lt_fp8_gemm(Ops *o, const CudaFp8Mat *a, const CudaFp8Mat *b, void *c, int c_bf16, int ldc, float beta,
                       char *why, size_t why_len)
{
    CudaState *st = cuda_state(o);
    LtFp8 L = {};
    cublasLtMatmulAlgo_t algo;
    const float alpha = 1.0f;
    const char *stage = "describing the matmul";
    Fp8Key key;
    memset(&key, 0, sizeof key);
    key = { b->rows, a->rows, a->ldq, 2 * a->block + b->block, c_bf16, ldc, beta == 0.0f, fp8_alignment(c) };
    int found = 0, slot = fp8_cache_slot(st, &key, &found);
    cublasStatus_t s = found && st->fp8_cache->state[slot] < 0 ? CUBLAS_STATUS_NOT_SUPPORTED
                                                                : lt_fp8_describe(&L, a, b, c_bf16, ldc);
    if (found && st->fp8_cache->state[slot] < 0) stage = "(no algorithm for this shape, remembered)";
    if (s == CUBLAS_STATUS_SUCCESS && found) {
        algo = st->fp8_cache->algo[slot];
    } else if (s == CUBLAS_STATUS_SUCCESS) {
        stage = "asking the heuristic";
        uint32_t al = (uint32_t)key.align_c;
        cublasLtMatmulHeuristicResult_t res;
        int n = 0;
        s = cublasLtMatmulPreferenceSetAttribute(L.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al, sizeof al);
        if (s == CUBLAS_STATUS_SUCCESS)
            s = cublasLtMatmulPreferenceSetAttribute(L.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al, sizeof al);
        if (s == CUBLAS_STATUS_SUCCESS)
            s = cublasLtMatmulAlgoGetHeuristic(st->lt, L.desc, L.la, L.lb, L.lc, L.lc, L.pref, 1, &res, &n);
        if (s == CUBLAS_STATUS_SUCCESS && n < 1) s = CUBLAS_STATUS_NOT_SUPPORTED;
        if (slot >= 0 && (s == CUBLAS_STATUS_SUCCESS || s == CUBLAS_STATUS_NOT_SUPPORTED)) {
            st->fp8_cache->key[slot] = key;
            st->fp8_cache->state[slot] = s == CUBLAS_STATUS_SUCCESS ? 1 : -1;
            if (s == CUBLAS_STATUS_SUCCESS) st->fp8_cache->algo[slot] = res.algo;
            st->fp8_cache->n_used++;
        }
        if (s == CUBLAS_STATUS_SUCCESS) algo = res.algo;
    }
    if (s == CUBLAS_STATUS_SUCCESS) {
        stage = "running the matmul";
        s = cublasLtMatmul(st->lt, L.desc, &alpha, b->q, L.la, a->q, L.lb, &beta, c, L.lc, c, L.lc, &algo,
                           st->workspace, CUDA_LT_WORKSPACE, st->stream);
    }
    lt_fp8_destroy(&L);
    if (s == CUBLAS_STATUS_SUCCESS) return 1;
    if (why && why_len)
        snprintf(why, why_len, "cuBLASLt FP8 %s (m=%d n=%d k=%d, scales %s x %s, %s out, beta %g, sm_%d%d): %s",
                 stage, b->rows, a->rows, a->ldq, a->block ? "128x128" : "1x128", b->block ? "128x128" : "1x128",
                 c_bf16 ? "BF16" : "FP32", (double)beta, st->prop.major, st->prop.minor, cublasLtGetStatusString(s));
    return 0;
}

extern "C" int cuda_fp8_gemm(Ops *o, const CudaFp8Mat *a, const CudaFp8Mat *b, void *c, int c_bf16, int ldc,
                             float beta, CudaFp8Path path, char *why, size_t why_len)
{
    check_mat(a, a ? a->block : 0, "gemm's A");
    check_mat(b, b ? b->block : 0, "gemm's B");
    if (a->K != b->K) DIE("cuda fp8: gemm: A has K = %d, B has K = %d", a->K, b->K);
    if (a->block && b->block) DIE("cuda fp8: gemm: both operands in 128x128 blocks (cuBLASLt refuses it)");
    if (ldc < b->rows) DIE("cuda fp8: gemm: ldc %d below N = %d", ldc, b->rows);
    if (why && why_len) why[0] = 0;
    if (path != CUDA_FP8_TILED && lt_fp8_gemm(o, a, b, c, c_bf16, ldc, beta, why, why_len)) return CUDA_FP8_CUBLASLT;
    if (path == CUDA_FP8_CUBLASLT) return 0;
    tiled_gemm(o, a, b, c, c_bf16, ldc, beta);
    return CUDA_FP8_TILED;
}

/* ---- the Linear GEMMs of an fp8 table (SPEC section 6; kernels/cpu/cpu_fp8.c on the CPU) ----
 * A WGT_FP8 weight's compute copy (Wgt.data) holds two matrices, each cuda_fp8_mat_bytes:
 * W (rows, cols) and its transposed copy W^T (cols, rows), both in 128x128 blocks, rebuilt
 * from the FP32 master by cuda_fp8_weight_refresh. Activations are read and written in the
 * table's activation type (act_bytes 4: FP32, 2: BF16); weight gradients are FP32.
 *   Fprop   out (N, OC)  = Q(inp) W^T          Q: 1x128 tiles along IC
 *   Dgrad   dinp (N, IC) += Q(dout) (W^T)^T    Q: 1x128 tiles along OC; the transposed copy
 *   Wgrad   dW (OC, IC)  += Qt(dout) Qt(inp)^T Qt: 128x1 tiles along the N tokens (padded to
 *                                              128 with 0), power-of-two scales */

static void weight_mats(const Wgt *w, CudaFp8Mat *m, CudaFp8Mat *mt)
{
    cuda_fp8_mat_init(m, w->data, w->rows, w->cols, 1);
    cuda_fp8_mat_init(mt, (char *)w->data + cuda_fp8_mat_bytes(w->rows, w->cols, 1), w->cols, w->rows, 1);
}

extern "C" size_t cuda_fp8_weight_bytes(int rows, int cols)
{
    if (rows < 1 || cols < 1) return 0;
    return cuda_fp8_mat_bytes(rows, cols, 1) + cuda_fp8_mat_bytes(cols, rows, 1);
}

extern "C" void cuda_fp8_weight_refresh(Ops *o, Wgt *w)
{
    if (w->type != WGT_FP8 || w->data == w->master) DIE("cuda fp8: weight_refresh of a weight without an FP8 copy");
    CudaFp8Mat m, mt;
    weight_mats(w, &m, &mt);
    cuda_fp8_quantize_weight(o, &m, &mt, w->master, w->cols);
}

/* A scratch matrix (rows, K) block 0 in slot */
static CudaFp8Mat scratch_mat(Ops *o, CudaScratch slot, int rows, int K)
{
    CudaFp8Mat m;
    cuda_fp8_mat_init(&m, cuda_scratch(o, slot, cuda_fp8_mat_bytes(rows, K, 0)), rows, K, 0);
    return m;
}

static void zero_act(Ops *o, void *p, size_t n)
{
    CUDA_CHECK(cudaMemsetAsync(p, 0, n * (size_t)o->act_bytes, cuda_stream(o)));
}

extern "C" void cuda_fp8_matmul_forward(Ops *o, void *out, const void *inp, const Wgt *w, int N, int IC, int OC)
{
    if (N <= 0 || OC <= 0) return;
    if (IC <= 0) { zero_act(o, out, (size_t)N * OC); return; }
    CudaFp8Mat m, mt, xq = scratch_mat(o, SCR_FP8_A, N, IC);
    weight_mats(w, &m, &mt);
    cuda_fp8_quantize_rows(o, &xq, inp, o->act_bytes == 2, IC, w->act_pow2);
    cuda_fp8_gemm(o, &xq, &m, out, o->act_bytes == 2, OC, 0.0f, CUDA_FP8_AUTO, NULL, 0);
}

extern "C" void cuda_fp8_matmul_backward_input(Ops *o, void *dinp, const void *dout, const Wgt *w, int N, int IC,
                                               int OC)
{
    if (N <= 0 || IC <= 0 || OC <= 0) return;
    CudaFp8Mat m, mt, dq = scratch_mat(o, SCR_FP8_A, N, OC);
    weight_mats(w, &m, &mt);
    cuda_fp8_quantize_rows(o, &dq, dout, o->act_bytes == 2, OC, 0);
    cuda_fp8_gemm(o, &dq, &mt, dinp, o->act_bytes == 2, IC, 1.0f, CUDA_FP8_AUTO, NULL, 0);
}

extern "C" void cuda_fp8_matmul_backward_weight(Ops *o, float *dweight, const void *dout, const void *inp, int N,
                                                int IC, int OC)
{
    if (N <= 0 || IC <= 0 || OC <= 0) return;
    CudaFp8Mat dt = scratch_mat(o, SCR_FP8_A, OC, N), xt = scratch_mat(o, SCR_FP8_B, IC, N);
    cuda_fp8_quantize_cols(o, &dt, dout, o->act_bytes == 2, N, OC);
    cuda_fp8_quantize_cols(o, &xt, inp, o->act_bytes == 2, N, IC);
    cuda_fp8_gemm(o, &dt, &xt, dweight, 0, IC, 1.0f, CUDA_FP8_AUTO, NULL, 0);
}
