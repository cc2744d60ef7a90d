/* runtime/shard.h - what one rank of a training job owns and what that costs (DESIGN.md
 * section 5 "Ownership"; issue 14): the memory it plans, listed item by item and checked
 * against the memory available before anything large is allocated.
 *
 * Calling sequence (runtime/train.c, trainer_setup, before model_create):
 *   shard_plan_memory(&t->mem, cfg, ops, groups);    items of the start-up table
 *   mem_limit(&t->mem_limit, world->local_size);
 *   memplan_check(&t->mem, &t->mem_limit, backend_is_host, what);
 */
#ifndef DSTRAIN_SHARD_H
#define DSTRAIN_SHARD_H

#include "comm/world.h"
#include "kernels/ops.h"
#include "runtime/config.h"
#include "runtime/memcheck.h"

/* The bytes one rank of layout g plans for cfg (every item of the start-up memory table; the
 * ZeRO-1 slice is ceil(total / dp) floats, as runtime/train.c takes it). */
void shard_plan_memory(MemPlan *p, const Config *cfg, Ops *o, const Groups *g);
/* Plan, find the limit and refuse (DIE, one line) a plan that does not fit; what the
 * message and the start-up table need stays in p and l. */
void shard_check_memory(MemPlan *p, MemLimit *l, const Config *cfg, Ops *o, const Groups *g, int local_ranks);

#endif
