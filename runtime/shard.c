/* runtime/shard.c - what one rank owns and what it costs (see shard.h). Not here: the
 * training loop (train.c) or the limits themselves (memcheck.c).
 */
#include "runtime/shard.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "model/params.h"
#include "runtime/common.h"

void shard_plan_memory(MemPlan *p, const Config *cfg, Ops *o, const Groups *g)
{
    const TrainConfig *tc = &cfg->train;
    const int dp = g->dp;
    ModelBytes mb;
    model_plan_bytes(&cfg->model, o, tc->micro_batch_size, tc->seq_len, MODEL_TRAIN | (tc->recompute ? MODEL_RECOMPUTE : 0),
                     g->ep, cfg->moe.capacity_factor, &mb);
    const double total = (double)mb.params / sizeof(float);
    const double slice = dp > 1 ? (double)(((size_t)total + dp - 1) / dp) : total;
    memset(p, 0, sizeof *p);
    memplan_add(p, "parameter table", (double)mb.table, 0);
    memplan_add(p, "parameters", (double)mb.params, 1);
    memplan_add(p, "gradients", (double)mb.grads, 1);
    memplan_add(p, "optimizer state", 2.0 * slice * sizeof(float), 1);
    memplan_add(p, "activations", (double)mb.acts, 1);
    memplan_add(p, "backward scratch", (double)mb.scratch, 1);
    memplan_add(p, "expert bookkeeping", (double)mb.experts_host, 0);
    /* model_init_params fills a host copy of the whole table before the upload */
    memplan_add(p, "initialisation staging", (double)mb.params, 0);
    /* weights and both moments of the rank's table, downloaded for a save; none on one rank of
     * the CPU backend, whose saves read the live buffers (runtime/train.h trainer_saves_live),
     * except the EMA's weight download (train.ema_decay > 0) */
    const int live = dp == 1 && !strcmp(o->name, "cpu");
    memplan_add(p, "checkpoint staging", (live ? (tc->ema_decay > 0) : 3.0) * total * sizeof(float), 0);
    if (dp > 1) {
        /* the exchanges read and write backend memory where the comm shares its space (cpu
         * with mpi): no host copies then */
        if (!o->host_memory) memplan_add(p, "zero-1 host staging", (total + slice) * sizeof(float), 0);
        memplan_add(p, "zero-1 gradient slice", slice * sizeof(float), 1);
    }
}

void shard_check_memory(MemPlan *p, MemLimit *l, const Config *cfg, Ops *o, const Groups *g, int local_ranks)
{
    shard_plan_memory(p, cfg, o, g);
    shard_check_plan(p, l, cfg, o, local_ranks);
}

void shard_check_plan(const MemPlan *p, MemLimit *l, const Config *cfg, Ops *o, int local_ranks)
{
    mem_limit(l, local_ranks);
    size_t entries, total;
    params_measure(&cfg->model, &entries, &total);
    char what[256];
    snprintf(what, sizeof what, "the model (%.3g parameters in %zu tensors; 'model.n_routed_experts' = %d)",
             (double)total, entries, cfg->model.n_routed_experts);
    memplan_check(p, l, o->host_memory, what);
}

/* The comm reads and writes the ops' buffers directly: both in host memory (the cpu backend
 * with single or mpi) or both on the device (cuda with nccl). */
static int shares_memory(const Ops *o, const Comm *c)
{
    return o->host_memory == (strcmp(c->be->name, "nccl") != 0);
}

static void region_init(Region *r, Ops *o, const ParamTable *t, Comm *comm, size_t base, size_t n,
                        const OptimConfig *oc, int bf16_moments)
{
    memset(r, 0, sizeof *r);
    r->comm = comm;
    r->size = comm ? comm->size : 1;
    r->rank = comm ? comm->rank : 0;
    r->base = base;
    r->n = n;
    r->slice = (n + r->size - 1) / r->size;
    const size_t at = (size_t)r->rank * r->slice;
    r->lo = base + (at < n ? at : n);
    r->hi = base + (at + r->slice < n ? at + r->slice : n);
    if (r->size > 1 && n > 0) {     /* an empty region (a stage without experts) exchanges nothing */
        if (!shares_memory(o, comm)) {
            r->full = xcalloc(n, sizeof(float));
            r->part = xcalloc(r->slice, sizeof(float));
        }
        r->grad = o->alloc(o, r->slice * sizeof(float));
        r->req = comm_request_create(comm, 1);
    }
    optim_init_shard(&r->opt, o, t, oc, bf16_moments, r->lo, r->hi);
}

void shard_init(Shard *s, Ops *o, const ParamTable *t, const Groups *g, const OptimConfig *oc, int bf16_moments)
{
    memset(s, 0, sizeof *s);
    s->dp_comm = g->dp_comm;
    s->dp = g->dp;
    if (!t->selected) {
        s->n = 1;
        region_init(&s->r[0], o, t, g->dp_comm, 0, t->total, oc, bf16_moments);
        return;
    }
    s->n = 2;
    region_init(&s->r[0], o, t, g->dp_comm, 0, t->n_replicated, oc, bf16_moments);
    region_init(&s->r[1], o, t, g->edp_comm, t->n_replicated, t->total - t->n_replicated, oc, bf16_moments);
}

void shard_free(Shard *s, Ops *o)
{
    for (int i = 0; i < s->n; i++) {
        Region *r = &s->r[i];
        optim_free(&r->opt);
        if (r->grad) o->free(o, r->grad);
        if (r->req) {
            if (r->posted) comm_wait(r->req);
            comm_request_free(r->req);
        }
        free(r->full);
        free(r->part);
    }
    memset(s, 0, sizeof *s);
}

static int exchanges(const Region *r) { return r->size > 1 && r->n > 0; }

void shard_post_grads(Shard *s, Ops *o, const float *grads, int i)
{
    CHECK(i >= 0 && i < s->n);
    Region *r = &s->r[i];
    if (!exchanges(r) || r->posted) return;
    const float *send = grads + r->base;
    float *recv = r->grad;
    if (r->full) {      /* staged through the host: the comm cannot read backend memory */
        o->download(o, r->full, send, r->n * sizeof(float));
        send = r->full;
        recv = r->part;
    }
    comm_ireduce_scatter_v(r->comm, recv, send, r->n, r->slice, COMM_F32, COMM_SUM, r->req);
    r->posted = 1;
}

int shard_expert_region(const Shard *s)
{
    return s->n == 2 && exchanges(&s->r[1]) ? 1 : -1;
}

void shard_reduce_grads(Shard *s, Ops *o, float *grads)
{
    for (int i = 0; i < s->n; i++) shard_post_grads(s, o, grads, i);
    for (int i = 0; i < s->n; i++) {
        Region *r = &s->r[i];
        if (!exchanges(r)) {
            s->grads[i] = grads + r->lo;
            continue;
        }
        comm_wait(r->req);
        r->posted = 0;
        if (r->full) o->upload(o, r->grad, r->part, (r->hi - r->lo) * sizeof(float));
        s->grads[i] = r->grad;
    }
}

double shard_grad_norm(Shard *s)
{
    /* the slices' sums of squares as they are (untrained tensors never get a gradient, so
     * whole slices), one all-reduce of their sum */
    double sq = 0;
    for (int i = 0; i < s->n; i++) sq += s->r[i].opt.o->sumsq(s->r[i].opt.o, s->grads[i], s->r[i].hi - s->r[i].lo);
    if (s->dp > 1) comm_allreduce(s->dp_comm, &sq, 1, COMM_F64, COMM_SUM);
    return sqrt(sq) / s->dp;
}

double shard_slice_sumsq(Shard *s, const unsigned char *counted)
{
    double sq = 0;
    for (int i = 0; i < s->n; i++) {
        const Region *r = &s->r[i];
        const ParamTable *t = r->opt.table;
        Ops *o = r->opt.o;
        /* runs of adjacent counted entries, cut to the slice */
        for (int a = 0; a < t->n;) {
            int b = a + 1;
            const int on = !counted || counted[a];
            while (b < t->n && (!counted || counted[b]) == on) b++;
            size_t lo = t->p[a].offset, hi = t->p[b - 1].offset + t->p[b - 1].numel;
            if (lo < r->lo) lo = r->lo;
            if (hi > r->hi) hi = r->hi;
            if (on && lo < hi) sq += o->sumsq(o, s->grads[i] + (lo - r->lo), hi - lo);
            a = b;
        }
    }
    return sq;
}

void shard_step(Shard *s, float *params, double lr, double grad_scale)
{
    for (int i = 0; i < s->n; i++) optim_step(&s->r[i].opt, params, s->grads[i], lr, grad_scale);
}

void shard_skip_step(Shard *s)
{
    for (int i = 0; i < s->n; i++) s->r[i].opt.step++;
}

void shard_gather_params(Shard *s, Ops *o, float *params)
{
    for (int i = 0; i < s->n; i++) {
        Region *r = &s->r[i];
        if (!exchanges(r)) continue;
        if (!r->full) {     /* in place in the backend's buffer */
            comm_allgather_v(r->comm, params + r->base, r->n, r->slice, COMM_F32);
            continue;
        }
        o->download(o, r->full + (r->lo - r->base), params + r->lo, (r->hi - r->lo) * sizeof(float));
        comm_allgather_v(r->comm, r->full, r->n, r->slice, COMM_F32);
        o->upload(o, params + r->base, r->full, r->n * sizeof(float));
    }
}

void shard_gather_moments(Shard *s, Ops *o, float *host_m, float *host_v)
{
    for (int i = 0; i < s->n; i++) {
        Region *r = &s->r[i];
        float *dst[2] = { host_m, host_v }, *src[2] = { r->opt.m, r->opt.v };
        for (int k = 0; k < 2; k++) {
            if (r->n == 0) continue;
            if (r->size == 1) {
                o->download(o, dst[k] + r->base, src[k], r->n * sizeof(float));
                continue;
            }
            /* the host tables themselves are the gather's buffers */
            o->download(o, dst[k] + r->lo, src[k], (r->hi - r->lo) * sizeof(float));
            comm_allgather_v(r->comm, dst[k] + r->base, r->n, r->slice, COMM_F32);
        }
    }
}

void shard_load_moments(Shard *s, Ops *o, const float *host_m, const float *host_v, int step)
{
    for (int i = 0; i < s->n; i++) {
        Region *r = &s->r[i];
        o->upload(o, r->opt.m, host_m + r->lo, (r->hi - r->lo) * sizeof(float));
        o->upload(o, r->opt.v, host_v + r->lo, (r->hi - r->lo) * sizeof(float));
        r->opt.step = step;
    }
}

size_t shard_optim_floats(const Shard *s)
{
    size_t n = 0;
    for (int i = 0; i < s->n; i++) n += 2 * (s->r[i].hi - s->r[i].lo);
    return n;
}
