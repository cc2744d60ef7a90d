/* runtime/optim.c - AdamW over contiguous runs of the parameter table, clipping, schedules.
 * Not here: the AdamW arithmetic itself (the backend's adamw_update). */
#include "optim.h"

#include <math.h>

#include "common.h"

void optim_init(Optimizer *opt, Ops *o, const ParamTable *t, const OptimConfig *c, int bf16_moments)
{
    optim_init_shard(opt, o, t, c, bf16_moments, 0, t->total);
}

void optim_init_shard(Optimizer *opt, Ops *o, const ParamTable *t, const OptimConfig *c, int bf16_moments,
                      size_t lo, size_t hi)
{
    CHECK(lo <= hi && hi <= t->total);
    opt->o = o;
    opt->table = t;
    opt->lo = lo;
    opt->hi = hi;
    /* zeroed; one float at least, so that an empty slice still has a buffer */
    opt->m = o->alloc(o, (hi - lo + 1) * sizeof(float));
    opt->v = o->alloc(o, (hi - lo + 1) * sizeof(float));
    AdamArgs a = { 0.0f, (float)c->beta1, (float)c->beta2, (float)c->eps, (float)c->weight_decay, 0, bf16_moments, 1.0f };
    opt->args = a;
    opt->step = 0;
}

void optim_free(Optimizer *opt)
{
    opt->o->free(opt->o, opt->m);
    opt->o->free(opt->o, opt->v);
}

double optim_grad_norm(Optimizer *opt, const float *grads)
{
    /* untrained tensors never receive a gradient, so the whole buffer can be summed */
    return sqrt(opt->o->sumsq(opt->o, grads, opt->hi - opt->lo));
}

void optim_step(Optimizer *opt, float *params, float *grads, double lr, double grad_scale)
{
    Ops *o = opt->o;
    const ParamTable *t = opt->table;
    const size_t lo = opt->lo, hi = opt->hi;
    /* one pass: the scale folded into the update where the backend takes it */
    if (grad_scale != 1.0 && !o->adamw_grad_scale) o->scale(o, grads, (float)grad_scale, hi - lo);
    opt->step++;
    AdamArgs a = opt->args;
    a.grad_scale = o->adamw_grad_scale ? (float)grad_scale : 1.0f;
    a.lr = (float)lr;
    a.step = opt->step;
    /* one update per run of adjacent tensors with the same (trained, decay) flags, cut to the
     * slice */
    for (int i = 0; i < t->n;) {
        int j = i + 1;
        while (j < t->n && t->p[j].trained == t->p[i].trained && t->p[j].decay == t->p[i].decay) j++;
        size_t off = t->p[i].offset, end = t->p[j - 1].offset + t->p[j - 1].numel;
        if (off < lo) off = lo;
        if (end > hi) end = hi;
        if (t->p[i].trained && off < end) {
            a.weight_decay = t->p[i].decay ? opt->args.weight_decay : 0.0f;
            o->adamw_update(o, params + off, grads + (off - lo), opt->m + (off - lo), opt->v + (off - lo),
                            end - off, &a);
        }
        i = j;
    }
}

double clip_scale(double norm, double clip)
{
    if (clip <= 0 || norm <= clip || !(norm > 0)) return 1.0;
    return clip / norm;
}

double lr_at(const OptimConfig *c, int step, int total)
{
    if (step < c->warmup_steps) return c->lr * (step + 1) / c->warmup_steps;
    int s = step - c->warmup_steps - c->constant_steps;
    if (s < 0) return c->lr;
    int decay = c->decay_steps > 0 ? c->decay_steps : total - c->warmup_steps - c->constant_steps;
    double p = decay > 0 ? (double)s / decay : 1.0;
    if (p > 1) p = 1;
    return c->lr_min + (c->lr - c->lr_min) * 0.5 * (1.0 + cos(M_PI * p));
}

double gamma_at(const MoeConfig *c, long long tokens)
{
    return c->bias_update_stop_tokens > 0 && tokens >= c->bias_update_stop_tokens ? 0.0 : c->bias_update_speed;
}

double lambda_at(const MtpConfig *c, long long tokens)
{
    return c->lambda_switch_tokens > 0 && tokens >= c->lambda_switch_tokens ? c->lambda_later : c->lambda;
}
