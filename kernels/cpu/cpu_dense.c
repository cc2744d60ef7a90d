/* kernels/cpu/cpu_dense.c - CPU backend: state and memory, elementwise ops, Linear (OpenBLAS),
 * RMSNorm, SwiGLU, embedding, cross-entropy, AdamW.
 *
 * Not here: attention and RoPE (cpu_attention.c), the router and token permutation
 * (cpu_moe.c). Semantics of every entry: kernels/ops.h. Math: SPEC.md sections 2 (RMSNorm,
 * SwiGLU) and the AdamW paper (Loshchilov & Hutter, decoupled weight decay).
 *
 * Reductions that produce a parameter gradient (RMSNorm weight, embedding table) run over
 * column blocks: each column sums its rows in token order, so the bits do not depend on the
 * thread count or the block split.
 */
#include "kernels/cpu/cpu.h"
#include "kernels/fp8.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "runtime/common.h"

/* Below this much work a parallel region costs more than it saves. */
#define CPU_PAR_MIN 32768

/* ---- state and memory ---- */

int cpu_threads(Ops *o) { return ((CpuState *)o->state)->threads; }

void cpu_blas_threads(int n)
{
    if (openblas_get_num_threads() != n) openblas_set_num_threads(n);
}

size_t cpu_scratch_stride(Ops *o) { return ((CpuState *)o->state)->scratch_stride; }

float *cpu_gemm_scratch(Ops *o, size_t floats)
{
    CpuState *st = o->state;
    if (floats > st->gemm_n) {
        free(st->gemm);
        st->gemm = cpu_alloc(o, floats * sizeof(float));
        st->gemm_n = floats;
    }
    return st->gemm;
}

float *cpu_scratch(Ops *o, size_t floats)
{
    CpuState *st = o->state;
    size_t stride = (floats + 15) & ~(size_t)15;
    if (stride > st->scratch_stride) {
        free(st->scratch);
        st->scratch = cpu_alloc(o, stride * (size_t)st->threads * sizeof(float));
        st->scratch_stride = stride;
    }
    return st->scratch;
}

void cpu_state_free(Ops *o)
{
    CpuState *st = o->state;
    if (!st) return;
    free(st->scratch);
    free(st->gemm);
    free(st);
    o->state = NULL;
}

/* Buffers of 2 MiB and more start on a 2 MiB boundary and ask for transparent huge pages
 * (where the kernel grants them on request): a checkpoint's fork (checkpoint/writer.c) copies
 * one page-table entry per page of the trainer, a million of them for 4 GiB of 4 KiB pages,
 * inside the training stall. */
void *cpu_alloc(Ops *o, size_t bytes)
{
    const size_t huge = (size_t)2 << 20;
    size_t rounded = bytes ? (bytes + 63) & ~(size_t)63 : 64;
    void *p = NULL;
    if (posix_memalign(&p, rounded >= huge ? huge : 64, rounded) != 0)
        DIE("out of memory allocating %zu bytes on device 'cpu'", bytes);
    if (rounded >= huge) (void)madvise(p, rounded, MADV_HUGEPAGE);   /* advice: refused changes nothing */
    memset(p, 0, rounded);
    return p;
}

void cpu_free(Ops *o, void *p) { free(p); }
void cpu_zero(Ops *o, void *p, size_t bytes) { if (bytes) memset(p, 0, bytes); }
void cpu_upload(Ops *o, void *dst, const void *src_host, size_t bytes) { if (bytes) memcpy(dst, src_host, bytes); }
void cpu_copy(Ops *o, void *dst, const void *src, size_t bytes) { if (bytes) memcpy(dst, src, bytes); }
void cpu_download(Ops *o, void *dst_host, const void *src, size_t bytes) { if (bytes) memcpy(dst_host, src, bytes); }
void cpu_synchronize(Ops *o) {}

void cpu_act_upload(Ops *o, act *dst, const float *src_host, size_t n)
{
    if (n) memcpy(dst, src_host, n * sizeof(float));
    cpu_act_round(o, cpu_f(dst), n);
}

void cpu_act_round(Ops *o, float *p, size_t n)
{
    if (o->precision == PREC_FP32) return;
    #pragma omp parallel for num_threads(cpu_threads(o)) if (n > CPU_PAR_MIN) schedule(static)
    for (size_t i = 0; i < n; i++) p[i] = cpu_bf16(p[i]);
}

void cpu_act_download(Ops *o, float *dst_host, const act *src, size_t n)
{
    if (n) memcpy(dst_host, src, n * sizeof(float));
}

/* ---- elementwise ---- */

void cpu_add(Ops *o, act *y_, const act *x_, size_t n)
{
    float *y = cpu_f(y_);
    const float *x = cpu_cf(x_);
    if (o->precision == PREC_FP32) {
        #pragma omp parallel for num_threads(cpu_threads(o)) if (n > CPU_PAR_MIN) schedule(static)
        for (size_t i = 0; i < n; i++) y[i] += x[i];
        return;
    }
    #pragma omp parallel for num_threads(cpu_threads(o)) if (n > CPU_PAR_MIN) schedule(static)
    for (size_t i = 0; i < n; i++) y[i] = cpu_bf16(y[i] + x[i]);
}

void cpu_scale(Ops *o, float *x, float s, size_t n)
{
    #pragma omp parallel for num_threads(cpu_threads(o)) if (n > CPU_PAR_MIN) schedule(static)
    for (size_t i = 0; i < n; i++) x[i] *= s;
}

/* Fixed chunks (a function of n only), each summed in fixed lanes, the chunks' sums in index
 * order: the same bits on any thread count. At most SUMSQ_CHUNKS partial sums, so they fit on
 * the stack. */
#define SUMSQ_CHUNKS 1024
#define SUMSQ_LANES 8
double cpu_sumsq(Ops *o, const float *x, size_t n)
{
    size_t chunk = 65536;
    if (n > chunk * SUMSQ_CHUNKS) chunk = (n + SUMSQ_CHUNKS - 1) / SUMSQ_CHUNKS;
    long nchunks = (long)((n + chunk - 1) / chunk);
    double part[SUMSQ_CHUNKS];
    #pragma omp parallel for num_threads(cpu_threads(o)) if (nchunks > 1) schedule(static)
    for (long c = 0; c < nchunks; c++) {
        size_t lo = (size_t)c * chunk, hi = lo + chunk < n ? lo + chunk : n;
        /* SUMSQ_LANES running sums (element i - lo into lane (i - lo) % SUMSQ_LANES), so the
         * adds vectorise instead of waiting on one chain; the lanes are added in a fixed tree */
        double acc[SUMSQ_LANES] = { 0 };
        size_t i = lo;
        for (; i + SUMSQ_LANES <= hi; i += SUMSQ_LANES)
            for (int k = 0; k < SUMSQ_LANES; k++) acc[k] += (double)x[i + k] * (double)x[i + k];
        for (int k = 0; i < hi; i++, k++) acc[k] += (double)x[i] * (double)x[i];
        for (int w = SUMSQ_LANES / 2; w >= 1; w /= 2)
            for (int k = 0; k < w; k++) acc[k] += acc[k + w];
        part[c] = acc[0];
    }
    double total = 0.0;
    for (long c = 0; c < nchunks; c++) total += part[c];
    return total;
}

void cpu_concat_forward(Ops *o, act *out_, const act *a_, const act *b_, int N, int A, int Bc)
{
    float *out = cpu_f(out_);
    const float *a = cpu_cf(a_), *b = cpu_cf(b_);
    size_t W = (size_t)A + (size_t)Bc;
    #pragma omp parallel for num_threads(cpu_threads(o)) if ((size_t)N * W > CPU_PAR_MIN)
    for (int n = 0; n < N; n++) {
        if (A) memcpy(out + n * W, a + (size_t)n * A, (size_t)A * sizeof(float));
        if (Bc) memcpy(out + n * W + A, b + (size_t)n * Bc, (size_t)Bc * sizeof(float));
    }   /* copies of stored activations: already in the table's type */
}

void cpu_concat_backward(Ops *o, act *da_, act *db_, const act *dout_, int N, int A, int Bc)
{
    float *da = cpu_f(da_), *db = cpu_f(db_);
    const float *dout = cpu_cf(dout_);
    size_t W = (size_t)A + (size_t)Bc;
    #pragma omp parallel for num_threads(cpu_threads(o)) if ((size_t)N * W > CPU_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *row = dout + n * W;   /* (A+Bc) */
        for (int i = 0; i < A; i++) da[(size_t)n * A + i] += row[i];
        for (int i = 0; i < Bc; i++) db[(size_t)n * Bc + i] += row[A + i];
    }
    cpu_act_round(o, da, (size_t)N * A);
    cpu_act_round(o, db, (size_t)N * Bc);
}

/* ---- Linear: out = inp W^T with W (OC,IC), row-major sgemm ---- */

/* One row-major GEMM, C (M,N) = op(A) op(B) + beta C, split into one slab per thread along
 * the longer of M and N (slab starts are multiples of 16), each slab a single-threaded sgemm
 * inside our OpenMP team. OpenBLAS's own thread pool stays at one thread: two pools on the
 * same cores spin against each other between calls. Each element's K reduction is untouched
 * by the split. Below ~4 MFLOP one call is cheaper than a parallel region. */
typedef struct Gemm {
    int ta, tb, M, N, K;
    const float *A, *B;
    int lda, ldb;
    float beta;
    float *C;
    int ldc;
} Gemm;

static void gemm_slab(const Gemm *g, int split_m, int lo, int hi)
{
    int m0 = split_m ? lo : 0, n0 = split_m ? 0 : lo;
    int M = split_m ? hi - lo : g->M, N = split_m ? g->N : hi - lo;
    const float *A = g->A + (split_m ? (g->ta ? (size_t)m0 : (size_t)m0 * g->lda) : 0);
    const float *B = g->B + (split_m ? 0 : (g->tb ? (size_t)n0 * g->ldb : (size_t)n0));
    cblas_sgemm(CblasRowMajor, g->ta ? CblasTrans : CblasNoTrans, g->tb ? CblasTrans : CblasNoTrans, M, N, g->K,
                1.0f, A, g->lda, B, g->ldb, g->beta, g->C + (size_t)m0 * g->ldc + n0, g->ldc);
}

static void gemm_parallel(Ops *o, const Gemm *g)
{
    int nt = cpu_threads(o), split_m = g->M >= g->N, dim = split_m ? g->M : g->N;
    int slab = ((dim + nt - 1) / nt + 15) & ~15;
    int slabs = (dim + slab - 1) / slab;
    cpu_blas_threads(1);
    if (slabs < 2 || 2.0 * g->M * g->N * g->K < 4e6) {
        gemm_slab(g, 1, 0, g->M);
        return;
    }
    #pragma omp parallel for num_threads(nt) schedule(static, 1)
    for (int i = 0; i < slabs; i++) gemm_slab(g, split_m, i * slab, i * slab + slab < dim ? i * slab + slab : dim);
}

/* The three Linear products on FP32 buffers (cpu.h). */
void cpu_gemm_forward(Ops *o, float *out, const float *inp, const float *weight, int N, int IC, int OC)
{
    if (N <= 0 || OC <= 0) return;
    if (IC <= 0) { memset(out, 0, (size_t)N * OC * sizeof(float)); return; }
    Gemm g = { 0, 1, N, OC, IC, inp, weight, IC, IC, 0.0f, out, OC };
    gemm_parallel(o, &g);
}

void cpu_gemm_backward_input(Ops *o, float *dinp, const float *dout, const float *weight, int N, int IC, int OC)
{
    if (N <= 0 || IC <= 0 || OC <= 0) return;
    Gemm g = { 0, 0, N, IC, OC, dout, weight, OC, IC, 1.0f, dinp, IC };
    gemm_parallel(o, &g);
}

void cpu_gemm_backward_weight(Ops *o, float *dweight, const float *dout, const float *inp, int N, int IC, int OC)
{
    if (N <= 0 || IC <= 0 || OC <= 0) return;
    Gemm g = { 1, 0, OC, IC, N, dout, inp, OC, IC, 1.0f, dweight, IC };
    gemm_parallel(o, &g);
}

/* Compute copies: FP32 weights are their masters; BF16 copies hold the rounded values in
 * FP32 containers (rows, cols). */
size_t cpu_weight_bytes(Ops *o, WgtType t, int rows, int cols)
{
    switch (t) {
    case WGT_FP32: return 0;
    case WGT_BF16: return (size_t)rows * cols * sizeof(float);
    case WGT_FP8: return cpu_fp8_weight_bytes(rows, cols);
    }
    BUG("cpu_weight_bytes: weight type %d", (int)t);
}

void cpu_weight_refresh(Ops *o, Wgt *w)
{
    const size_t n = (size_t)w->rows * w->cols;
    const float *src = w->master;
    float *dst = w->data;
    switch (w->type) {
    case WGT_FP32:
        CHECK(w->data == w->master);
        return;
    case WGT_BF16:
        #pragma omp parallel for num_threads(cpu_threads(o)) if (n > CPU_PAR_MIN) schedule(static)
        for (size_t i = 0; i < n; i++) dst[i] = cpu_bf16(src[i]);
        return;
    case WGT_FP8:
        cpu_fp8_weight_refresh(o, w);
        return;
    }
    BUG("cpu_weight_refresh: weight type %d", (int)w->type);
}

static const float *wgt_values(const Wgt *w) { return (const float *)w->data; }

void cpu_matmul_forward(Ops *o, act *out, const act *inp, const Wgt *w, int N, int IC, int OC)
{
    if (w->type == WGT_FP8) cpu_fp8_matmul_forward(o, cpu_f(out), cpu_cf(inp), wgt_values(w), N, IC, OC, w->act_pow2);
    else cpu_gemm_forward(o, cpu_f(out), cpu_cf(inp), wgt_values(w), N, IC, OC);
    cpu_act_round(o, cpu_f(out), (size_t)N * OC);
}

void cpu_matmul_backward_input(Ops *o, act *dinp, const act *dout, const Wgt *w, int N, int IC, int OC)
{
    if (w->type == WGT_FP8) cpu_fp8_matmul_backward_input(o, cpu_f(dinp), cpu_cf(dout), wgt_values(w), N, IC, OC);
    else cpu_gemm_backward_input(o, cpu_f(dinp), cpu_cf(dout), wgt_values(w), N, IC, OC);
    cpu_act_round(o, cpu_f(dinp), (size_t)N * IC);
}

void cpu_matmul_backward_weight(Ops *o, float *dweight, const Wgt *w, const act *dout, const act *inp, int N, int IC,
                                int OC)
{
    if (w->type == WGT_FP8) cpu_fp8_matmul_backward_weight(o, dweight, cpu_cf(dout), cpu_cf(inp), N, IC, OC);
    else cpu_gemm_backward_weight(o, dweight, cpu_cf(dout), cpu_cf(inp), N, IC, OC);
}

void cpu_router_forward(Ops *o, float *logits, const act *inp, const Wgt *w, int N, int C, int E)
{
    cpu_gemm_forward(o, logits, cpu_cf(inp), wgt_values(w), N, C, E);
}

void cpu_router_backward_input(Ops *o, act *dinp, const float *dlogits, const Wgt *w, int N, int C, int E)
{
    cpu_gemm_backward_input(o, cpu_f(dinp), dlogits, wgt_values(w), N, C, E);
    cpu_act_round(o, cpu_f(dinp), (size_t)N * C);
}

void cpu_router_backward_weight(Ops *o, float *dweight, const float *dlogits, const act *inp, int N, int C, int E)
{
    cpu_gemm_backward_weight(o, dweight, dlogits, cpu_cf(inp), N, C, E);
}

/* ---- RMSNorm: y = w * x * r, r = 1/sqrt(mean(x^2) + eps) ---- */

void cpu_rmsnorm_forward(Ops *o, act *out_, float *rstd, const act *inp_, const float *weight, int N, int C,
                         float eps)
{
    float *out = cpu_f(out_);
    const float *inp = cpu_cf(inp_);
    #pragma omp parallel for num_threads(cpu_threads(o)) if ((size_t)N * C > CPU_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;   /* (C) */
        float *y = out + (size_t)n * C;         /* (C) */
        double ss = 0.0;
        for (int c = 0; c < C; c++) ss += (double)x[c] * x[c];
        float r = (float)(1.0 / sqrt(ss / C + (double)eps));
        for (int c = 0; c < C; c++) y[c] = weight[c] * (x[c] * r);
        rstd[n] = r;
    }
    cpu_act_round(o, out, (size_t)N * C);
}

/* Column block [c0, c1) of dweight += sum_n dy * x * r, rows in order. */
static void rmsnorm_dweight_block(float *dweight, const float *dout, const float *inp, const float *rstd,
                                  int N, int C, int c0, int c1)
{
    double acc[256];
    for (int b0 = c0; b0 < c1; b0 += 256) {
        int b1 = b0 + 256 < c1 ? b0 + 256 : c1;
        for (int c = b0; c < b1; c++) acc[c - b0] = 0.0;
        for (int n = 0; n < N; n++) {
            const float *dy = dout + (size_t)n * C, *x = inp + (size_t)n * C;
            double r = rstd[n];
            for (int c = b0; c < b1; c++) acc[c - b0] += (double)dy[c] * x[c] * r;
        }
        for (int c = b0; c < b1; c++) dweight[c] += (float)acc[c - b0];
    }
}

/* dx = r w dy - x r^3 <w dy, x> / C (differentiating r through mean(x^2)). */
void cpu_rmsnorm_backward_input(Ops *o, act *dinp_, const act *dout_, const act *inp_, const float *weight,
                                const float *rstd, int N, int C)
{
    float *dinp = cpu_f(dinp_);
    const float *dout = cpu_cf(dout_), *inp = cpu_cf(inp_);
    #pragma omp parallel for num_threads(cpu_threads(o)) if ((size_t)N * C > CPU_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *dy = dout + (size_t)n * C, *x = inp + (size_t)n * C;   /* (C) */
        float *dx = dinp + (size_t)n * C;                                    /* (C) */
        double dot = 0.0;
        for (int c = 0; c < C; c++) dot += (double)weight[c] * dy[c] * x[c];
        float r = rstd[n];
        float k = (float)((double)r * r * r * dot / C);
        for (int c = 0; c < C; c++) dx[c] += r * weight[c] * dy[c] - x[c] * k;
    }
    cpu_act_round(o, dinp, (size_t)N * C);
}

/* Column blocks, one per thread; each column sums its rows in order whatever the threads, so
 * the result does not depend on the thread count. */
void cpu_rmsnorm_backward_weight(Ops *o, float *dweight, const act *dout_, const act *inp_, const float *rstd,
                                 int N, int C)
{
    const float *dout = cpu_cf(dout_), *inp = cpu_cf(inp_);
    int nt = cpu_threads(o);
    int par = (size_t)N * C > CPU_PAR_MIN;
    int blocks = par ? nt : 1;
    int width = (C + blocks - 1) / blocks;
    #pragma omp parallel for num_threads(nt) if (par)
    for (int b = 0; b < blocks; b++) {
        int c0 = b * width, c1 = c0 + width < C ? c0 + width : C;
        if (c0 < c1) rmsnorm_dweight_block(dweight, dout, inp, rstd, N, C, c0, c1);
    }
}

/* The two halves: they write disjoint outputs, so one after the other is the fused op. */
void cpu_rmsnorm_backward(Ops *o, act *dinp, float *dweight, const act *dout, const act *inp,
                          const float *weight, const float *rstd, int N, int C)
{
    cpu_rmsnorm_backward_input(o, dinp, dout, inp, weight, rstd, N, C);
    cpu_rmsnorm_backward_weight(o, dweight, dout, inp, rstd, N, C);
}

/* ---- SwiGLU: out = silu(g) * u, silu(g) = g * sigmoid(g) ---- */

void cpu_swiglu_forward(Ops *o, act *out_, const act *gu_, int N, int F)
{
    float *out = cpu_f(out_);
    const float *gu = cpu_cf(gu_);
    #pragma omp parallel for num_threads(cpu_threads(o)) if ((size_t)N * F > CPU_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *g = gu + (size_t)n * 2 * F, *u = g + F;   /* (F), (F) */
        float *y = out + (size_t)n * F;                        /* (F) */
        for (int f = 0; f < F; f++) y[f] = g[f] / (1.0f + cpu_exp(-g[f])) * u[f];
    }
    cpu_act_round(o, out, (size_t)N * F);
}

/* d/dg silu(g) = sig(g) (1 + g (1 - sig(g))). */
void cpu_swiglu_backward(Ops *o, act *dgu_, const act *dout_, const act *gu_, int N, int F)
{
    float *dgu = cpu_f(dgu_);
    const float *dout = cpu_cf(dout_), *gu = cpu_cf(gu_);
    #pragma omp parallel for num_threads(cpu_threads(o)) if ((size_t)N * F > CPU_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *g = gu + (size_t)n * 2 * F, *u = g + F;    /* (F), (F) */
        float *dg = dgu + (size_t)n * 2 * F, *du = dg + F;      /* (F), (F) */
        const float *dy = dout + (size_t)n * F;                 /* (F) */
        for (int f = 0; f < F; f++) {
            float sg = 1.0f / (1.0f + cpu_exp(-g[f]));
            dg[f] += dy[f] * u[f] * sg * (1.0f + g[f] * (1.0f - sg));
            du[f] += dy[f] * g[f] * sg;
        }
    }
    cpu_act_round(o, dgu, (size_t)N * 2 * F);
}

/* ---- embedding ---- */

void cpu_embedding_forward(Ops *o, act *out_, const int32_t *tokens, const float *table, int N, int C)
{
    float *out = cpu_f(out_);
    for (int n = 0; n < N; n++)
        if (tokens[n] < 0) DIE("embedding: token id %d at position %d is negative", tokens[n], n);
    #pragma omp parallel for num_threads(cpu_threads(o)) if ((size_t)N * C > CPU_PAR_MIN)
    for (int n = 0; n < N; n++)
        memcpy(out + (size_t)n * C, table + (size_t)tokens[n] * C, (size_t)C * sizeof(float));
    cpu_act_round(o, out, (size_t)N * C);
}

/* Column blocks: each column adds its rows in token order, so repeated tokens never race. */
void cpu_embedding_backward(Ops *o, float *dtable, const act *dout_, const int32_t *tokens, int N, int C)
{
    const float *dout = cpu_cf(dout_);
    for (int n = 0; n < N; n++)
        if (tokens[n] < 0) DIE("embedding: token id %d at position %d is negative", tokens[n], n);
    int nt = cpu_threads(o);
    int blocks = (size_t)N * C > CPU_PAR_MIN ? nt : 1;
    int width = (C + blocks - 1) / blocks;
    #pragma omp parallel for num_threads(nt) if (blocks > 1)
    for (int b = 0; b < blocks; b++) {
        int c0 = b * width, c1 = c0 + width < C ? c0 + width : C;
        for (int n = 0; n < N; n++) {
            float *dst = dtable + (size_t)tokens[n] * C;
            const float *src = dout + (size_t)n * C;
            for (int c = c0; c < c1; c++) dst[c] += src[c];
        }
    }
}

/* ---- cross-entropy with a stable log-softmax ---- */

static float row_logsumexp(const float *x, int V)
{
    float mx = -INFINITY;
    double sum = 0.0;
    #pragma omp simd reduction(max:mx)
    for (int j = 0; j < V; j++) mx = x[j] > mx ? x[j] : mx;
    #pragma omp simd reduction(+:sum)
    for (int j = 0; j < V; j++) sum += cpu_exp(x[j] - mx);
    return mx + (float)log(sum);
}

static void xent_check_targets(const int32_t *targets, int N, int V)
{
    for (int n = 0; n < N; n++)
        if (targets[n] >= V)
            DIE("cross-entropy: target %d at position %d is outside the vocabulary of size %d",
                targets[n], n, V);
}

void cpu_xent_forward(Ops *o, float *losses, const act *logits_, const int32_t *targets, int N, int V)
{
    const float *logits = cpu_cf(logits_);
    xent_check_targets(targets, N, V);
    #pragma omp parallel for num_threads(cpu_threads(o)) if ((size_t)N * V > CPU_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * V;   /* (V) */
        losses[n] = targets[n] < 0 ? 0.0f : row_logsumexp(x, V) - x[targets[n]];
    }
}

/* dlogits == logits: each element is read before it is written, so the row is overwritten
 * with the gradient (ignored rows become 0). Otherwise the gradient is added. */
void cpu_xent_backward(Ops *o, act *dlogits_, const act *logits_, const int32_t *targets, const float *dloss,
                       int N, int V)
{
    float *dlogits = cpu_f(dlogits_);
    const float *logits = cpu_cf(logits_);
    xent_check_targets(targets, N, V);
    int alias = dlogits == logits;
    #pragma omp parallel for num_threads(cpu_threads(o)) if ((size_t)N * V > CPU_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * V;   /* (V) */
        float *dx = dlogits + (size_t)n * V;       /* (V), may equal x */
        int t = targets[n];
        if (t < 0) {
            if (alias) memset(dx, 0, (size_t)V * sizeof(float));
            continue;
        }
        float lse = row_logsumexp(x, V), dl = dloss[n];
        if (alias) {
            #pragma omp simd
            for (int j = 0; j < V; j++) dx[j] = dl * cpu_exp(x[j] - lse);
        } else {
            #pragma omp simd
            for (int j = 0; j < V; j++) dx[j] += dl * cpu_exp(x[j] - lse);
        }
        dx[t] -= dl;
    }
    cpu_act_round(o, dlogits, (size_t)N * V);
}

/* ---- AdamW ---- */

/* The gradient is read times grad_scale (clipping and the 1/dp mean folded in: the same float
 * product the separate scale pass gave, so one pass). The parameter step uses the FP32 moments
 * just computed; with bf16_moments the stored m and v are then rounded to BF16 (what a fused
 * kernel holding BF16 moments in memory does). */
void cpu_adamw_update(Ops *o, float *param, const float *grad, float *m, float *v, size_t n, const AdamArgs *a)
{
    CHECK(a->step >= 1);
    float b1 = a->beta1, b2 = a->beta2, lr = a->lr, eps = a->eps, wd = a->weight_decay;
    float bc1 = (float)(1.0 - pow((double)b1, a->step));
    float bc2 = (float)(1.0 - pow((double)b2, a->step));
    int round = a->bf16_moments;
    const float gs = a->grad_scale != 0.0f ? a->grad_scale : 1.0f;   /* x 1 is exact: no scale */
    #pragma omp parallel for num_threads(cpu_threads(o)) if (n > CPU_PAR_MIN) schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = grad[i] * gs;
        float mi = b1 * m[i] + (1.0f - b1) * g;
        float vi = b2 * v[i] + (1.0f - b2) * g * g;
        float mhat = mi / bc1, vhat = vi / bc2;
        param[i] -= lr * (mhat / (sqrtf(vhat) + eps) + wd * param[i]);
        m[i] = round ? bf16_round(mi) : mi;
        v[i] = round ? bf16_round(vi) : vi;
    }
}
