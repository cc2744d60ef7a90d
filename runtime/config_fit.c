/* runtime/config_fit.c - fitting a step's batch to the pipeline schedule (runtime/config.h
 * config_fit_pipeline). The same config should scale out by changing only its parallel layout:
 * a config written for one process takes one micro-batch of B sequences a step, which DualPipe
 * cannot pipeline (it needs 2 pp micro-batches). Splitting the step's B * grad_accum sequences
 * into more, smaller micro-batches keeps every token of the step, its order in the data and the
 * validation sample; only the grouping into micro-batches changes.
 */
#include <stdio.h>
#include <string.h>

#include "runtime/common.h"
#include "runtime/config.h"
#include "runtime/pipeline/schedule.h"

int config_fit_pipeline(Config *c, char *note, size_t n)
{
    TrainConfig *t = &c->train;
    const ParallelConfig *p = &c->parallel;
    SchedKind kind;
    char err[SCHED_ERR_MAX];
    if (note && n) note[0] = '\0';
    if (p->pp <= 1 || t->batch_ramp_start > 0 || t->micro_batch_size < 1 || t->grad_accum < 1 ||
        sched_kind_parse(p->schedule, &kind) || !sched_validate(kind, p->pp, t->grad_accum, -1, err, sizeof err))
        return 0;   /* nothing to fit, or config_validate names what is wrong */
    const long long S = (long long)t->micro_batch_size * t->grad_accum;
    for (long long M = t->grad_accum + 1; M <= S && M <= (1 << 20); M++) {
        if (S % M || sched_validate(kind, p->pp, (int)M, -1, err, sizeof err)) continue;
        const int B = (int)(S / M), old_b = t->micro_batch_size, old_c = t->grad_accum, old_v = t->val_batches;
        /* validation reads val_batches micro-batches of B sequences: keep its sequences */
        const long long v = ((long long)old_v * old_b + B - 1) / B;
        t->micro_batch_size = B;
        t->grad_accum = (int)M;
        t->val_batches = v > (1 << 20) ? (1 << 20) : (int)v;
        if (note && n)
            snprintf(note, n, "pipeline: the step's %lld sequences (%d micro-batch%s of %d) run as %lld micro-batches "
                     "of %d, the fewest schedule '%s' takes at 'parallel.pp' = %d; 'train.val_batches' %d -> %d "
                     "(the same validation sequences). Set 'train.grad_accum' and 'train.micro_batch_size' to "
                     "choose otherwise.", S, old_c, old_c == 1 ? "" : "es", old_b, M, B, p->schedule, p->pp, old_v,
                     t->val_batches);
        return 1;
    }
    return 0;
}
