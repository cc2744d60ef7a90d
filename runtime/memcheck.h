/* runtime/memcheck.h - the memory a run plans, checked against the memory it may use before
 * anything large is allocated (DESIGN.md "Memory is planned before step 0"; issue 14).
 *
 * A MemPlan is a list of named byte counts (the start-up memory table of one rank: parameter
 * table, parameters, gradients, optimizer state, activations, scratch, staging). mem_limit
 * finds the tightest limit this process is under, and memplan_check refuses a plan that does
 * not fit with one line naming the items that do not fit, instead of letting the kernel's
 * out-of-memory killer end the run without a message.
 *
 * Limits read (the smallest wins):
 *   MemAvailable of /proc/meminfo, shared by the ranks of this node (divided by them);
 *   RLIMIT_AS (ulimit -v) less this process's current address space (VmSize);
 *   the cgroup's memory.max (v2) or memory.limit_in_bytes (v1) less its current usage, shared
 *   by the ranks of this node.
 * Not here: device memory (a CUDA backend's parameters and activations live on the GPU; the
 * items marked device are left out of the host check and not checked against the GPU yet).
 *
 * Calling sequence:
 *   MemPlan p = { 0 }; memplan_add(&p, "parameters", bytes, 0); ...
 *   MemLimit l; mem_limit(&l, local_ranks);
 *   memplan_check(&p, &l, 1, "n_routed_experts = 8, 1.2M parameters");   DIE when it does not fit
 */
#ifndef DSTRAIN_MEMCHECK_H
#define DSTRAIN_MEMCHECK_H

#include <stddef.h>
#include <stdio.h>

#define MEMPLAN_MAX 24

typedef struct MemItem {
    const char *name;           /* static string: "parameters" */
    double bytes;
    int device;                 /* lives in the backend's memory (not the host's on cuda) */
} MemItem;

typedef struct MemPlan {
    MemItem item[MEMPLAN_MAX];
    int n;
} MemPlan;

typedef struct MemLimit {
    double bytes;               /* what this process may still take; < 0: no limit known */
    char source[160];           /* which limit: "MemAvailable 20.1 GiB / 2 ranks on this node" */
} MemLimit;

void memplan_add(MemPlan *p, const char *name, double bytes, int device);
/* Sum of the items; host_only: only those not marked device. */
double memplan_total(const MemPlan *p, int host_only);
/* The tightest limit (see above); local_ranks: ranks of this job on this node (>= 1). */
void mem_limit(MemLimit *l, int local_ranks);
/* DIE with one line when the plan (device items counted only when backend_is_host) exceeds
 * the limit; `what` names the model for the message. */
void memplan_check(const MemPlan *p, const MemLimit *l, int backend_is_host, const char *what);
/* "  planned (host)   123.4 MiB of 20.1 GiB available (MemAvailable ...)" */
void memplan_print(const MemPlan *p, const MemLimit *l, int backend_is_host, FILE *f);

#endif
