/* tests/unit/test_shard.c - the memory one rank plans for its ZeRO-1 exchange (runtime/shard.h
 * shard_plan_memory; issue 14: no host staging where ops and comm share a memory space):
 *   - cpu ops (Ops.host_memory): the gradients are reduce-scattered straight from the gradient
 *     buffer into the slice and the parameters gathered in place, so the plan has a gradient
 *     slice but no "zero-1 host staging";
 *   - the same plan with the ops' buffers marked as not host memory (a device backend beside a
 *     host comm, e.g. cuda with mpi): the staging is back, one copy of the rank's table (total)
 *     and one slice (ceil(total / dp)) in floats, nothing padded;
 *   - dp = 1: neither (nothing is exchanged).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "comm/world.h"
#include "kernels/ops.h"
#include "runtime/config.h"
#include "runtime/shard.h"
#include "tests/unit/testing.h"

static const MemItem *item(const MemPlan *p, const char *name)
{
    for (int i = 0; i < p->n; i++)
        if (!strcmp(p->item[i].name, name)) return &p->item[i];
    return NULL;
}

static void test_plan(Ops *o, int dp, int ep)
{
    Config c;
    config_defaults(&c);
    Groups g;
    memset(&g, 0, sizeof g);
    g.pp = 1;
    g.dp = dp;
    g.ep = ep;
    MemPlan p;
    shard_plan_memory(&p, &c, o, &g);
    const MemItem *params = item(&p, "parameters");
    EXPECT(params && params->bytes > 0, "dp %d ep %d: the plan has the parameters", dp, ep);
    if (!params) return;
    const double total = params->bytes / sizeof(float), slice = ceil(total / dp);
    const MemItem *staging = item(&p, "zero-1 host staging"), *part = item(&p, "zero-1 gradient slice");
    printf("dp %d ep %d, ops %s memory: %.0f floats, staging %.0f bytes, slice %.0f bytes\n", dp, ep,
           o->host_memory ? "host" : "device", total, staging ? staging->bytes : 0.0, part ? part->bytes : 0.0);
    if (dp == 1) {
        EXPECT(!staging && !part, "dp 1: nothing exchanged, nothing planned for it");
        return;
    }
    EXPECT(part && part->bytes == slice * sizeof(float), "dp %d: the gradient slice is ceil(total / dp) floats", dp);
    if (o->host_memory)
        EXPECT(!staging, "dp %d ep %d, host-memory ops: no zero-1 host staging (planned %.0f bytes)", dp, ep,
               staging ? staging->bytes : 0.0);
    else
        EXPECT(staging && staging->bytes == (total + slice) * sizeof(float),
               "dp %d ep %d, device-memory ops: staging of total + slice floats (%.0f bytes), planned %.0f", dp,
               ep, (total + slice) * sizeof(float), staging ? staging->bytes : -1.0);
}

int main(void)
{
    Ops *o = ops_cpu_create(1, PREC_FP32);
    EXPECT(o->host_memory == 1, "the cpu backend's buffers are host memory");
    const int layouts[][2] = { { 1, 1 }, { 2, 1 }, { 4, 2 }, { 4, 4 } };
    for (int host = 1; host >= 0; host--) {
        o->host_memory = host;      /* what a device backend reports */
        for (size_t i = 0; i < sizeof layouts / sizeof layouts[0]; i++) test_plan(o, layouts[i][0], layouts[i][1]);
    }
    o->host_memory = 1;
    ops_destroy(o);
    return test_finish();
}
