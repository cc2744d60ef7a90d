/* runtime/memcheck.c - the planned memory against the limits this process is under (see
 * memcheck.h). Not here: what a run plans (runtime/train.c lists it) or device memory.
 */
#include "runtime/memcheck.h"

#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "runtime/common.h"

void memplan_add(MemPlan *p, const char *name, double bytes, int device)
{
    CHECK(p->n < MEMPLAN_MAX);
    p->item[p->n++] = (MemItem){ name, bytes, device };
}

double memplan_total(const MemPlan *p, int host_only)
{
    double s = 0;
    for (int i = 0; i < p->n; i++)
        if (!host_only || !p->item[i].device) s += p->item[i].bytes;
    return s;
}

/* The value of "key:" in a /proc file of "key: value [kB]" lines, in bytes; -1 if absent. */
static double proc_kb(const char *path, const char *key)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[256];
    double v = -1;
    const size_t n = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, n) && line[n] == ':') {
            v = strtod(line + n + 1, NULL) * 1024.0;
            break;
        }
    fclose(f);
    return v;
}

/* A file holding one number ("max" or absent: -1). */
static double read_number(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char buf[64] = { 0 };
    double v = -1;
    if (fgets(buf, sizeof buf, f) && buf[0] >= '0' && buf[0] <= '9') v = strtod(buf, NULL);
    fclose(f);
    return v;
}

/* This process's cgroup directory under /sys/fs/cgroup for the v2 line ("0::/path") or the v1
 * memory controller ("N:memory:/path"); 0 if neither. */
static int cgroup_dir(char *dir, size_t n, int *v1)
{
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (!f) return 0;
    char line[1024];
    int found = 0;
    while (!found && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *a = strchr(line, ':'), *b = a ? strchr(a + 1, ':') : NULL;
        if (!b) continue;
        *b = 0;
        if (!strcmp(a + 1, "")) {
            found = snprintf(dir, n, "/sys/fs/cgroup%s", strcmp(b + 1, "/") ? b + 1 : "") < (int)n;
            *v1 = 0;
        } else if (strstr(a + 1, "memory")) {
            found = snprintf(dir, n, "/sys/fs/cgroup/memory%s", strcmp(b + 1, "/") ? b + 1 : "") < (int)n;
            *v1 = 1;
        }
    }
    fclose(f);
    return found;
}

/* The cgroup's limit less its usage (bytes), -1 when unlimited or unknown. */
static double cgroup_room(void)
{
    char dir[1024], path[1100];
    int v1 = 0;
    if (!cgroup_dir(dir, sizeof dir, &v1)) return -1;
    snprintf(path, sizeof path, "%s/%s", dir, v1 ? "memory.limit_in_bytes" : "memory.max");
    double max = read_number(path);
    /* inside a container the path of /proc/self/cgroup may not exist: the root is its cgroup */
    if (max < 0) max = read_number(v1 ? "/sys/fs/cgroup/memory/memory.limit_in_bytes" : "/sys/fs/cgroup/memory.max");
    if (max < 0 || max >= 1e18) return -1;   /* v1 says "unlimited" with a huge number */
    snprintf(path, sizeof path, "%s/%s", dir, v1 ? "memory.usage_in_bytes" : "memory.current");
    double used = read_number(path);
    return used >= 0 && used < max ? max - used : max;
}

/* Keep the limit when its share is the tightest so far; source names it. */
static void consider(MemLimit *l, double room, int ranks, const char *source)
{
    if (room < 0) return;
    double share = room / ranks;
    if (l->bytes >= 0 && share >= l->bytes) return;
    l->bytes = share;
    snprintf(l->source, sizeof l->source, "%s", source);
}

void mem_limit(MemLimit *l, int local_ranks)
{
    const int r = local_ranks > 0 ? local_ranks : 1;
    const double G = 1073741824.0;
    char src[160];
    l->bytes = -1;
    snprintf(l->source, sizeof l->source, "no limit known");
    double avail = proc_kb("/proc/meminfo", "MemAvailable");
    snprintf(src, sizeof src, "MemAvailable %.1f GiB shared by %d rank(s) on this node", avail / G, r);
    consider(l, avail, r, src);
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        double vm = proc_kb("/proc/self/status", "VmSize"), lim = (double)rl.rlim_cur;
        snprintf(src, sizeof src, "RLIMIT_AS (ulimit -v) %.1f GiB less this process's %.1f GiB address space",
                 lim / G, vm / G);
        consider(l, vm >= 0 && vm < lim ? lim - vm : 0, 1, src);
    }
    double cg = cgroup_room();
    snprintf(src, sizeof src, "cgroup memory limit with %.1f GiB free, shared by %d rank(s) on this node", cg / G, r);
    consider(l, cg, r, src);
}

static int by_size(const void *a, const void *b)
{
    double x = ((const MemItem *)a)->bytes, y = ((const MemItem *)b)->bytes;
    return (x < y) - (x > y);
}

/* "1.5 GiB" or "12.3 MiB" */
static void fmt_bytes(char *buf, size_t n, double b)
{
    if (b >= 1073741824.0) snprintf(buf, n, "%.1f GiB", b / 1073741824.0);
    else snprintf(buf, n, "%.1f MiB", b / 1048576.0);
}

void memplan_check(const MemPlan *p, const MemLimit *l, int backend_is_host, const char *what)
{
    const double total = memplan_total(p, !backend_is_host);
    if (l->bytes < 0 || total <= l->bytes) return;
    /* name the largest items: those that, taken away, would let the rest fit (four at most) */
    MemItem s[MEMPLAN_MAX];
    int n = 0;
    for (int i = 0; i < p->n; i++)
        if (backend_is_host || !p->item[i].device) s[n++] = p->item[i];
    qsort(s, (size_t)n, sizeof s[0], by_size);
    char list[512] = "", b[32], need[32], have[32];
    double rest = total;
    int named = 0;
    for (; named < n && rest > l->bytes; named++) {
        size_t len = strlen(list);
        fmt_bytes(b, sizeof b, s[named].bytes);
        if (named == 4) {
            int more = 0;
            for (; named < n && rest > l->bytes; named++, more++) rest -= s[named].bytes;
            snprintf(list + len, sizeof list - len, " and %d more", more);
            break;
        }
        snprintf(list + len, sizeof list - len, "%s%s %s", named ? ", " : "", s[named].name, b);
        rest -= s[named].bytes;
    }
    fmt_bytes(need, sizeof need, total);
    fmt_bytes(have, sizeof have, l->bytes);
    DIE("memory: %s needs %s per rank but %s is available (%s); what does not fit: %s "
        "(shrink the model or micro-batch, or spread experts over more ranks with parallel.ep)",
        what, need, have, l->source, list);
}

void memplan_print(const MemPlan *p, const MemLimit *l, int backend_is_host, FILE *f)
{
    const double MiB = 1048576.0;
    fprintf(f, "  %-24s %10.1f MiB", backend_is_host ? "planned (all)" : "planned (host)",
            memplan_total(p, !backend_is_host) / MiB);
    if (l->bytes >= 0) fprintf(f, "  of %.1f MiB available (%s)\n", l->bytes / MiB, l->source);
    else fprintf(f, "  (%s)\n", l->source);
}
