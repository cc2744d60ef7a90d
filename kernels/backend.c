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

static const char *precision_name(Precision p)
{
    switch (p) {
    case PREC_FP32: return "fp32";
    case PREC_BF16: return "bf16";
    case PREC_FP8: return "fp8";
    }
    return "unknown";
}

static void cpu_fill_table(Ops *o)
{
    o->alloc = cpu_alloc;
    o->free = cpu_free;
    o->zero = cpu_zero;
    o->upload = cpu_upload;
    o->download = cpu_download;
    o->synchronize = cpu_synchronize;
    o->matmul_forward = cpu_matmul_forward;
    o->matmul_backward_input = cpu_matmul_backward_input;
    o->matmul_backward_weight = cpu_matmul_backward_weight;
    o->rmsnorm_forward = cpu_rmsnorm_forward;
    o->rmsnorm_backward = cpu_rmsnorm_backward;
    o->add = cpu_add;
    o->scale = cpu_scale;
    o->sumsq = cpu_sumsq;
    o->concat_forward = cpu_concat_forward;
    o->concat_backward = cpu_concat_backward;
    o->swiglu_forward = cpu_swiglu_forward;
    o->swiglu_backward = cpu_swiglu_backward;
    o->embedding_forward = cpu_embedding_forward;
    o->embedding_backward = cpu_embedding_backward;
    o->rope_forward = cpu_rope_forward;
    o->rope_backward = cpu_rope_backward;
    o->mla_kv_split = cpu_mla_kv_split;
    o->mla_kv_split_backward = cpu_mla_kv_split_backward;
    o->attention_forward = cpu_attention_forward;
    o->attention_backward = cpu_attention_backward;
    o->xent_forward = cpu_xent_forward;
    o->xent_backward = cpu_xent_backward;
    o->sigmoid_forward = cpu_sigmoid_forward;
    o->sigmoid_backward = cpu_sigmoid_backward;
    o->moe_route = cpu_moe_route;
    o->moe_route_backward = cpu_moe_route_backward;
    o->moe_count = cpu_moe_count;
    o->moe_balance_forward = cpu_moe_balance_forward;
    o->moe_balance_backward = cpu_moe_balance_backward;
    o->moe_permute_layout = cpu_moe_permute_layout;
    o->moe_gather = cpu_moe_gather;
    o->moe_gather_backward = cpu_moe_gather_backward;
    o->moe_combine = cpu_moe_combine;
    o->moe_combine_backward = cpu_moe_combine_backward;
    o->adamw_update = cpu_adamw_update;
}

Ops *ops_cpu_create(int threads, Precision precision)
{
    if (precision != PREC_FP32)
        DIE("device 'cpu': precision '%s' is not available, the cpu backend currently supports precision "
            "'fp32' only (bf16/fp8 emulation is not implemented yet; use fp32, or device 'cuda')",
            precision_name(precision));
    if (threads < 0) DIE("device 'cpu': thread count %d is negative (use 0 for all cores)", threads);
    if (threads == 0) threads = omp_get_num_procs();
    Ops *o = xcalloc(1, sizeof *o);
    CpuState *st = xcalloc(1, sizeof *st);
    st->threads = threads;
    o->name = "cpu";
    o->precision = precision;
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
    float *a = o->alloc(o, bytes), *b = o->alloc(o, bytes), *c = o->alloc(o, bytes);
    o->upload(o, a, host, bytes);
    o->upload(o, b, host, bytes);
    o->matmul_forward(o, c, a, b, n, n, n);
    o->synchronize(o);
    long calls = 0;
    double t0 = now_seconds(), elapsed = 0.0;
    while (elapsed < 0.3) {
        o->matmul_forward(o, c, a, b, n, n, n);
        o->synchronize(o);
        calls++;
        elapsed = now_seconds() - t0;
    }
    o->free(o, a);
    o->free(o, b);
    o->free(o, c);
    free(host);
    return 2.0 * (double)n * n * n * (double)calls / elapsed;
}
