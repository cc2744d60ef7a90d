/* runtime/optim.c - AdamW over contiguous runs of the parameter table, clipping, schedules.
 * Not here: the AdamW arithmetic itself (the backend's adamw_update). */
#include "optim.h"

#include <math.h>

#include "common.h"

void optim_init(Optimizer *opt, Ops *o, const ParamTable *t, const OptimConfig *c, int bf16_moments)
{
    opt->o = o;
    opt->table = t;
    opt->m = o->alloc(o, t->total * sizeof(float));
    opt->v = o->alloc(o, t->total * sizeof(float));
    AdamArgs a = { 0.0f, (float)c->beta1, (float)c->beta2, (float)c->eps, (float)c->weight_decay, 0, bf16_moments };
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
    return sqrt(opt->o->sumsq(opt->o, grads, opt->table->total));
}

void optim_step(Optimizer *opt, float *params, float *grads, double lr, double grad_scale)
{
    Ops *o = opt->o;
    const ParamTable *t = opt->table;
    if (grad_scale != 1.0) o->scale(o, grads, (float)grad_scale, t->total);
    opt->step++;
    AdamArgs a = opt->args;
    a.lr = (float)lr;
    a.step = opt->step;
    /* one update per run of adjacent tensors with the same (trained, decay) flags */
    for (int i = 0; i < t->n;) {
        int j = i + 1;
        while (j < t->n && t->p[j].trained == t->p[i].trained && t->p[j].decay == t->p[i].decay) j++;
        if (t->p[i].trained) {
            size_t off = t->p[i].offset, n = t->p[j - 1].offset + t->p[j - 1].numel - off;
            a.weight_decay = t->p[i].decay ? opt->args.weight_decay : 0.0f;
            o->adamw_update(o, params + off, grads + off, opt->m + off, opt->v + off, n, &a);
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
