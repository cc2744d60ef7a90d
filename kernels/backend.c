/* kernels/backend.c - creation and destruction of op tables, and the GEMM-rate probe.
 *
 * What it is: ops_cpu_create fills the table with the CPU backend (kernels/cpu/); ops_cuda_create
 * hands over to the CUDA backend (kernels/cuda/, which provides cuda_ops_create and
 * cuda_ops_destroy) when this binary was built with CUDA; ops_measure_gemm_flops times any
 * backend through its own table.
 * What it is not: a place for op code. Semantics of every entry: kernels/ops.h.
 */
#include "kernels/ops.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu.h"
#include "runtime/common.h"

#ifdef DSTRAIN_HAVE_CUDA
extern Ops *cuda_ops_create(Precision precision);
extern void cuda_ops_destroy(Ops *o);
#endif

static void cpu_fill_table(Ops *o)
{
#define CPU_FILL(ret, name, params) o->name = cpu_##name;
    OPS_ENTRIES(CPU_FILL)
#undef CPU_FILL
}

const char *ops_first_empty(const Ops *o)
{
#define OPS_EMPTY(ret, name, params) if (!o->name) return #name;
    OPS_ENTRIES(OPS_EMPTY)
#undef OPS_EMPTY
    return NULL;
}

void wgt_bind(Wgt *w, Ops *o, float *master, int rows, int cols, WgtType type, void *storage)
{
    CHECK(rows >= 0 && cols >= 0);
    size_t bytes = o->weight_bytes(o, type, rows, cols);
    w->master = master;
    w->rows = rows;
    w->cols = cols;
    w->type = type;
    w->data = bytes ? storage : (void *)master;
    w->act_pow2 = 0;
}

Ops *ops_cpu_create(int threads, Precision precision)
{
    if (threads < 0) DIE("device 'cpu': thread count %d is negative (use 0 for all cores)", threads);
    if (threads == 0) threads = omp_get_num_procs();
    Ops *o = xcalloc(1, sizeof *o);
    CpuState *st = xcalloc(1, sizeof *st);
    st->threads = threads;
    o->name = "cpu";
    o->precision = precision;
    o->act_bytes = sizeof(float);
    o->host_memory = 1;
    o->adamw_grad_scale = 1;
    o->state = st;
    cpu_fill_table(o);
    omp_set_num_threads(threads);
    cpu_blas_threads(1);   /* GEMMs are split over the OpenMP team (kernels/cpu/cpu.h) */
    return o;
}

Ops *ops_cuda_create(Precision precision)
{
#ifdef DSTRAIN_HAVE_CUDA
    return cuda_ops_create(precision);
#else
    DIE("device 'cuda': this dstrain was built without CUDA (nvcc was not found at build time)");
#endif
}

void route_shape_check(const RouteShape *r)
{
    if (r->n_group < 1 || r->E % r->n_group != 0)
        DIE("moe routing: n_group = %d does not divide n_routed_experts = %d", r->n_group, r->E);
    if (r->topk_group < 1 || r->topk_group > r->n_group)
        DIE("moe routing: topk_group = %d must lie in 1..n_group = %d", r->topk_group, r->n_group);
    if (r->K < 1 || r->K % r->topk_group != 0)
        DIE("moe routing: num_experts_per_tok = %d is not a positive multiple of topk_group = %d",
            r->K, r->topk_group);
    if (r->K / r->topk_group > r->E / r->n_group)
        DIE("moe routing: num_experts_per_tok = %d exceeds the %d experts of the kept groups", r->K,
            r->topk_group * (r->E / r->n_group));
}

void ops_destroy(Ops *o)
{
    if (!o) return;
    if (strcmp(o->name, "cpu") == 0) {
        cpu_state_free(o);
        free(o);
        return;
    }
#ifdef DSTRAIN_HAVE_CUDA
    cuda_ops_destroy(o);
#else
    BUG("ops_destroy: unknown backend '%s'", o->name);
#endif
}

/* out (n,n) = a (n,n) b^T through the table's own matmul_forward, after one warm-up call,
 * repeated until ~0.3 s have passed; 2 n^3 FLOP per call. */
double ops_measure_gemm_flops(Ops *o, int n)
{
    CHECK(n > 0);
    size_t elems = (size_t)n * n, bytes = elems * sizeof(float);
    float *host = xmalloc(bytes);
    for (size_t i = 0; i < elems; i++) host[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
    act *a = o->alloc(o, elems * o->act_bytes), *c = o->alloc(o, elems * o->act_bytes);
    float *b = o->alloc(o, bytes);
    o->act_upload(o, a, host, elems);
    o->upload(o, b, host, bytes);
    Wgt w;
    void *copy = o->weight_bytes(o, WGT_FP32, n, n) ? o->alloc(o, o->weight_bytes(o, WGT_FP32, n, n)) : NULL;
    wgt_bind(&w, o, b, n, n, WGT_FP32, copy);
    o->weight_refresh(o, &w);
    o->matmul_forward(o, c, a, &w, n, n, n);
    o->synchronize(o);
    long calls = 0;
    double t0 = now_seconds(), elapsed = 0.0;
    while (elapsed < 0.3) {
        o->matmul_forward(o, c, a, &w, n, n, n);
        o->synchronize(o);
        calls++;
        elapsed = now_seconds() - t0;
    }
    o->free(o, a);
    o->free(o, b);
    o->free(o, c);
    if (copy) o->free(o, copy);
    free(host);
    return 2.0 * (double)n * n * n * (double)calls / elapsed;
}
