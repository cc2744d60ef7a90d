/* kernels/cuda/cuda_backend.cu - the CUDA backend's table: creation (device, stream, one
 * cuBLASLt handle and workspace), memory entries, scratch, the device error word, memory
 * figures and the per-op profile.
 *
 * Not here: any op's arithmetic (cuda_gemm.cu, cuda_dense.cu, cuda_attention.cu,
 * cuda_moe.cu). Semantics of every entry: kernels/ops.h; plumbing: cuda_internal.h.
 *
 * Memory: alloc is cudaMalloc + a zeroing memset on the table's stream (the contract asks for
 * zeroed memory); the model allocates its arenas once, and scratch slots grow only on first
 * need, so the step loop allocates nothing. upload/download are copies on the stream followed
 * by a wait, so they see every op queued before them and the host buffer may be reused at
 * once.
 */
#include "kernels/cuda/cuda_internal.h"

#include <stdlib.h>
#include <string.h>

extern "C" {
#include "kernels/cuda/cuda_ops.h"
}
#include "kernels/fp8.h"

/* ---- memory entries ---- */

static void alloc_track(CudaState *st, void *p, size_t bytes)
{
    if (st->n_allocs == st->cap_allocs) {
        st->cap_allocs = st->cap_allocs ? 2 * st->cap_allocs : 64;
        CudaAlloc *a = (CudaAlloc *)realloc(st->allocs, (size_t)st->cap_allocs * sizeof(CudaAlloc));
        if (!a) DIE("out of host memory tracking device allocations");
        st->allocs = a;
    }
    st->allocs[st->n_allocs].p = p;
    st->allocs[st->n_allocs].bytes = bytes;
    st->n_allocs++;
    st->bytes_now += bytes;
    if (st->bytes_now > st->bytes_peak) st->bytes_peak = st->bytes_now;
}

static void alloc_untrack(CudaState *st, void *p)
{
    for (int i = st->n_allocs - 1; i >= 0; i--) {
        if (st->allocs[i].p != p) continue;
        st->bytes_now -= st->allocs[i].bytes;
        st->allocs[i] = st->allocs[--st->n_allocs];
        return;
    }
    BUG("cuda free: pointer %p was not allocated by this table", p);
}

/* Rounded up to 256 bytes so every allocation keeps the alignment cuBLASLt prefers. */
static void *device_alloc(CudaState *st, size_t bytes)
{
    size_t rounded = bytes ? (bytes + 255) & ~(size_t)255 : 256;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, rounded);
    if (e != cudaSuccess) {
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        DIE("out of GPU memory allocating %zu bytes on device 'cuda' (%s; %.1f GiB of %.1f GiB free, this "
            "table holds %.1f GiB; reduce 'train.micro_batch_size' or 'train.seq_len')",
            bytes, cudaGetErrorString(e), free_b / 1073741824.0, total_b / 1073741824.0,
            st->bytes_now / 1073741824.0);
    }
    alloc_track(st, p, rounded);
    return p;
}

static void device_free(CudaState *st, void *p)
{
    if (!p) return;
    alloc_untrack(st, p);
    CUDA_CHECK(cudaFree(p));
}

void *cuda_alloc(Ops *o, size_t bytes)
{
    CudaState *st = cuda_state(o);
    void *p = device_alloc(st, bytes);
    CUDA_CHECK(cudaMemsetAsync(p, 0, bytes ? bytes : 1, st->stream));
    return p;
}

void cuda_free(Ops *o, void *p) { device_free(cuda_state(o), p); }

void cuda_zero(Ops *o, void *p, size_t bytes)
{
    CUDA_PROF(o, "zero", "memory");
    if (bytes) CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, cuda_stream(o)));
}

void cuda_synchronize(Ops *o)
{
    CUDA_CHECK(cudaStreamSynchronize(cuda_stream(o)));
    cuda_check_device_errors(o);
}

void cuda_upload(Ops *o, void *dst, const void *src_host, size_t bytes)
{
    CUDA_PROF(o, "upload", "memory");
    if (!bytes) return;
    CUDA_CHECK(cudaMemcpyAsync(dst, src_host, bytes, cudaMemcpyHostToDevice, cuda_stream(o)));
    cuda_synchronize(o);
}

void cuda_copy(Ops *o, void *dst, const void *src, size_t bytes)
{
    CUDA_PROF(o, "copy", "memory");
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cuda_stream(o)));
}

void cuda_download(Ops *o, void *dst_host, const void *src, size_t bytes)
{
    CUDA_PROF(o, "download", "memory");
    if (!bytes) return;
    CUDA_CHECK(cudaMemcpyAsync(dst_host, src, bytes, cudaMemcpyDeviceToHost, cuda_stream(o)));
    cuda_synchronize(o);
}

/* FP32 activations (act_bytes = 4): byte copies. BF16 (act_bytes = 2): converted on the host
 * with kernels/fp8.h's bf16_from_float (the CPU emulation's rounding, bit for bit) and
 * bf16_to_float (exact), through a host buffer the size of the BF16 data. */
void cuda_act_upload(Ops *o, act *dst, const float *src_host, size_t n)
{
    if (o->act_bytes == 4) {
        cuda_upload(o, dst, src_host, n * 4);
        return;
    }
    if (!n) return;
    uint16_t *h = (uint16_t *)xmalloc(n * sizeof(uint16_t));
    for (size_t i = 0; i < n; i++) h[i] = bf16_from_float(src_host[i]);
    cuda_upload(o, dst, h, n * sizeof(uint16_t));
    free(h);
}

void cuda_act_download(Ops *o, float *dst_host, const act *src, size_t n)
{
    if (o->act_bytes == 4) {
        cuda_download(o, dst_host, src, n * 4);
        return;
    }
    if (!n) return;
    uint16_t *h = (uint16_t *)xmalloc(n * sizeof(uint16_t));
    cuda_download(o, h, src, n * sizeof(uint16_t));
    for (size_t i = 0; i < n; i++) dst_host[i] = bf16_to_float(h[i]);
    free(h);
}

void *cuda_scratch(Ops *o, CudaScratch slot, size_t bytes)
{
    CudaState *st = cuda_state(o);
    if (bytes > st->scratch_bytes[slot]) {
        device_free(st, st->scratch[slot]);    /* cudaFree waits for queued work */
        size_t grown = bytes + bytes / 8;      /* headroom: shapes that creep up do not regrow each call */
        st->scratch[slot] = device_alloc(st, grown);
        st->scratch_bytes[slot] = grown;
    }
    return st->scratch[slot];
}

void cuda_check_device_errors(Ops *o)
{
    CudaState *st = cuda_state(o);
    int err = 0;
    CUDA_CHECK(cudaMemcpy(&err, st->err_dev, sizeof err, cudaMemcpyDeviceToHost));
    if (!err) return;
    if (err & CUDA_ERR_EMBED_TOKEN) DIE("embedding: a token id is negative (found on device 'cuda')");
    if (err & CUDA_ERR_XENT_TARGET)
        DIE("cross-entropy: a target is outside the vocabulary (found on device 'cuda')");
    DIE("moe: an expert index is outside 0..E-1 (found on device 'cuda')");
}

/* ---- profile ---- */

static int prof_op_index(CudaProfile *p, const char *name, const char *family)
{
    for (int i = 0; i < p->n_ops; i++)
        if (p->names[i] == name || strcmp(p->names[i], name) == 0) return i;
    CHECK(p->n_ops < CUDA_PROF_MAX_OPS);
    p->names[p->n_ops] = name;
    p->families[p->n_ops] = family;
    p->ms[p->n_ops] = 0;
    p->calls[p->n_ops] = 0;
    return p->n_ops++;
}

/* Reads back every pending event pair (waits for the last one). */
static void prof_drain(CudaState *st)
{
    CudaProfile *p = &st->prof;
    if (!p->pending) return;
    CUDA_CHECK(cudaEventSynchronize(p->end[p->pending - 1]));
    for (int i = 0; i < p->pending; i++) {
        float ms = 0;
        CUDA_CHECK(cudaEventElapsedTime(&ms, p->begin[i], p->end[i]));
        p->ms[p->slot_op[i]] += ms;
        p->calls[p->slot_op[i]]++;
    }
    p->pending = 0;
}

int cuda_prof_begin(Ops *o, const char *name, const char *family)
{
    CudaState *st = cuda_state(o);
    CudaProfile *p = &st->prof;
    if (p->pending == CUDA_PROF_EVENTS) prof_drain(st);
    int slot = p->pending++;
    p->slot_op[slot] = prof_op_index(p, name, family);
    CUDA_CHECK(cudaEventRecord(p->begin[slot], st->stream));
    return slot;
}

void cuda_prof_end(Ops *o, int slot)
{
    CudaState *st = cuda_state(o);
    CUDA_CHECK(cudaEventRecord(st->prof.end[slot], st->stream));
}

extern "C" void cuda_profile_enable(Ops *o, int on)
{
    CudaState *st = cuda_state(o);
    CudaProfile *p = &st->prof;
    if (on && !p->begin) {
        p->begin = (cudaEvent_t *)xcalloc(CUDA_PROF_EVENTS, sizeof(cudaEvent_t));
        p->end = (cudaEvent_t *)xcalloc(CUDA_PROF_EVENTS, sizeof(cudaEvent_t));
        p->slot_op = (int *)xcalloc(CUDA_PROF_EVENTS, sizeof(int));
        for (int i = 0; i < CUDA_PROF_EVENTS; i++) {
            CUDA_CHECK(cudaEventCreate(&p->begin[i]));
            CUDA_CHECK(cudaEventCreate(&p->end[i]));
        }
    }
    if (!on) prof_drain(st);
    p->on = on;
}

extern "C" void cuda_profile_reset(Ops *o)
{
    CudaState *st = cuda_state(o);
    prof_drain(st);
    for (int i = 0; i < st->prof.n_ops; i++) {
        st->prof.ms[i] = 0;
        st->prof.calls[i] = 0;
    }
}

extern "C" void cuda_profile_report(Ops *o, FILE *f)
{
    CudaState *st = cuda_state(o);
    CudaProfile *p = &st->prof;
    prof_drain(st);
    int order[CUDA_PROF_MAX_OPS];
    double total = 0;
    for (int i = 0; i < p->n_ops; i++) {
        order[i] = i;
        total += p->ms[i];
    }
    for (int i = 1; i < p->n_ops; i++)      /* insertion sort, most expensive first */
        for (int j = i; j > 0 && p->ms[order[j]] > p->ms[order[j - 1]]; j--) {
            int t = order[j]; order[j] = order[j - 1]; order[j - 1] = t;
        }
    fprintf(f, "cuda profile: %.1f ms of GPU time in ops\n", total);
    fprintf(f, "  %-28s %-12s %10s %6s %9s\n", "op", "family", "ms", "%", "calls");
    for (int i = 0; i < p->n_ops; i++) {
        int k = order[i];
        if (!p->calls[k]) continue;
        fprintf(f, "  %-28s %-12s %10.2f %6.1f %9ld\n", p->names[k], p->families[k], p->ms[k],
                total > 0 ? 100.0 * p->ms[k] / total : 0.0, p->calls[k]);
    }
    fprintf(f, "  by family:\n");
    int done[CUDA_PROF_MAX_OPS] = { 0 };
    for (int i = 0; i < p->n_ops; i++) {
        int k = order[i];
        if (done[k] || !p->calls[k]) continue;
        double ms = 0;
        for (int j = 0; j < p->n_ops; j++)
            if (!done[j] && strcmp(p->families[j], p->families[k]) == 0) { ms += p->ms[j]; done[j] = 1; }
        fprintf(f, "  %-28s %10.2f ms %6.1f%%\n", p->families[k], ms, total > 0 ? 100.0 * ms / total : 0.0);
    }
}

/* ---- figures, probe ---- */

extern "C" void cuda_memory_stats(Ops *o, CudaMemStats *s)
{
    CudaState *st = cuda_state(o);
    size_t free_b = 0, total_b = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    s->table_bytes = st->bytes_now;
    s->table_peak = st->bytes_peak;
    s->device_total = total_b;
    s->device_used = total_b - free_b;
    snprintf(s->device_name, sizeof s->device_name, "%s", st->prop.name);
}

extern "C" int cuda_gpu_count(char *why, size_t why_len)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n <= 0) {
        if (why && why_len)
            snprintf(why, why_len, "cudaGetDeviceCount: %s",
                     e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
        cudaGetLastError();     /* clear the sticky error of a failed probe */
        return 0;
    }
    if (why && why_len) snprintf(why, why_len, "%d device%s", n, n == 1 ? "" : "s");
    return n;
}

extern "C" void cuda_fill_value(Ops *o, float *p, size_t n, float value) { cuda_fill(o, p, n, value); }

extern "C" void cuda_fill_normal(Ops *o, float *p, size_t n, float std, uint64_t seed)
{
    cuda_fill_normal_dev(o, p, n, std, seed);
}

/* ---- the table ---- */

extern "C" void cuda_ops_fill(Ops *o)
{
#define CUDA_FILL(ret, name, params) o->name = cuda_##name;
    OPS_ENTRIES(CUDA_FILL)
#undef CUDA_FILL
}

extern "C" Ops *cuda_ops_create(Precision precision)
{
    char why[256];
    if (cuda_gpu_count(why, sizeof why) == 0) DIE("device 'cuda': no CUDA GPU found (%s)", why);
    CudaState *st = (CudaState *)xcalloc(1, sizeof *st);
    st->device = 0;
    CUDA_CHECK(cudaSetDevice(st->device));
    CUDA_CHECK(cudaGetDeviceProperties(&st->prop, st->device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&st->stream, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasLtCreate(&st->lt));
    st->workspace = device_alloc(st, CUDA_LT_WORKSPACE);
    st->err_dev = (int *)device_alloc(st, sizeof(int));
    CUDA_CHECK(cudaMemsetAsync(st->err_dev, 0, sizeof(int), st->stream));
    st->attn_chunk_bytes = (size_t)256 << 20;
    const char *chunk = getenv("DSTRAIN_CUDA_ATTN_CHUNK_BYTES");
    if (chunk && atoll(chunk) > 0) st->attn_chunk_bytes = (size_t)atoll(chunk);
    st->host_i32_n = 1024;
    CUDA_CHECK(cudaMallocHost((void **)&st->host_i32, st->host_i32_n * sizeof(int32_t)));
    CUDA_CHECK(cudaMallocHost((void **)&st->host_f64, sizeof(double)));
    Ops *o = (Ops *)xcalloc(1, sizeof *o);
    o->name = "cuda";
    o->precision = precision;
    o->act_bytes = precision == PREC_FP32 ? sizeof(float) : sizeof(__nv_bfloat16);   /* kernels/ops.h "Roles" */
    o->state = st;
    cuda_ops_fill(o);
    if (getenv("DSTRAIN_CUDA_PROFILE") && atoi(getenv("DSTRAIN_CUDA_PROFILE")) > 0) cuda_profile_enable(o, 1);
    cuda_synchronize(o);
    return o;
}

extern "C" void cuda_ops_destroy(Ops *o)
{
    if (!o) return;
    CudaState *st = cuda_state(o);
    CUDA_CHECK(cudaStreamSynchronize(st->stream));
    if (st->prof.on && getenv("DSTRAIN_CUDA_PROFILE")) cuda_profile_report(o, stderr);
    if (st->prof.begin) {
        for (int i = 0; i < CUDA_PROF_EVENTS; i++) {
            cudaEventDestroy(st->prof.begin[i]);
            cudaEventDestroy(st->prof.end[i]);
        }
        free(st->prof.begin);
        free(st->prof.end);
        free(st->prof.slot_op);
    }
    for (int s = 0; s < SCR_COUNT; s++) device_free(st, st->scratch[s]);
    device_free(st, st->workspace);
    device_free(st, st->err_dev);
    cuda_gemm_cache_free(st);
    cuda_fp8_cache_free(st);
    CUBLAS_CHECK(cublasLtDestroy(st->lt));
    CUDA_CHECK(cudaStreamDestroy(st->stream));
    CUDA_CHECK(cudaFreeHost(st->host_i32));
    CUDA_CHECK(cudaFreeHost(st->host_f64));
    /* buffers the caller never freed are released with the context; not an error here */
    free(st->allocs);
    free(st);
    free(o);
}
