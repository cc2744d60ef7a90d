/* runtime/topo.c - `dstrain topo` (runtime/topo.h): ranks, hosts, GPUs, RDMA NICs and the
 * GPU -> NIC pairing, gathered on rank 0. GPUs through the CUDA runtime API (built with CUDA
 * only), NICs through libibverbs (built with rdma-core only), PCI placement from sysfs.
 * Not here: choosing devices for a run (this only reports), or any RDMA traffic.
 */
#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef DSTRAIN_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif
#ifdef DSTRAIN_HAVE_IBVERBS
#include <infiniband/verbs.h>
#endif

#include "runtime/commands.h"
#include "runtime/common.h"
#include "runtime/topo.h"

#define TOPO_MAX_GPUS 16
#define TOPO_MAX_PORTS 32

typedef struct TopoGpu {
    char name[64];
    char pci[32];               /* domain:bus:device.function, lower case */
} TopoGpu;

typedef struct TopoPort {
    char dev[32];               /* rdma-core device name, e.g. mlx5_0 */
    int port;
    char state[16], link[16];   /* "ACTIVE"..., "InfiniBand" / "Ethernet" */
    double gbps;                /* active width x lane rate; 0 when unknown */
    char pci[32];               /* the device's PCI id ("?" when sysfs has none) */
} TopoPort;

/* What one rank sees; plain bytes, gathered as they are (every rank runs this binary). */
typedef struct TopoRank {
    int rank, size, local_rank, local_size, node, n_nodes;
    char host[64];
    int n_gpus, n_ports;
    char gpu_note[160], nic_note[160];  /* why there are none */
    TopoGpu gpus[TOPO_MAX_GPUS];
    TopoPort ports[TOPO_MAX_PORTS];
} TopoRank;

static World *the_world;

void topo_set_world(World *w) { the_world = w; }

#ifdef DSTRAIN_HAVE_CUDA
static void lower(char *s)
{
    for (; *s; s++) *s = (char)tolower((unsigned char)*s);
}
#endif

static void find_gpus(TopoRank *r)
{
#ifdef DSTRAIN_HAVE_CUDA
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n <= 0) {
        snprintf(r->gpu_note, sizeof r->gpu_note, "no GPU (cudaGetDeviceCount: %s)",
                 e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
        cudaGetLastError();     /* clear the sticky error of a failed probe */
        return;
    }
    for (int i = 0; i < n && i < TOPO_MAX_GPUS; i++) {
        TopoGpu *g = &r->gpus[r->n_gpus++];
        struct cudaDeviceProp prop;
        if (cudaGetDeviceProperties(&prop, i) == cudaSuccess) snprintf(g->name, sizeof g->name, "%.63s", prop.name);
        else snprintf(g->name, sizeof g->name, "?");
        if (cudaDeviceGetPCIBusId(g->pci, (int)sizeof g->pci, i) != cudaSuccess) snprintf(g->pci, sizeof g->pci, "?");
        lower(g->pci);
    }
#else
    snprintf(r->gpu_note, sizeof r->gpu_note, "no GPU (this build has no CUDA)");
#endif
}

#ifdef DSTRAIN_HAVE_IBVERBS
/* Gb/s per lane of ibv_port_attr.active_speed and lanes of active_width (the InfiniBand
 * encodings: SDR 2.5, DDR 5, QDR 10, FDR10 10, FDR 14, EDR 25, HDR 50, NDR 100, XDR 200). */
static double port_gbps(int speed, int width)
{
    static const struct { int code; double gbps; } SPEED[] = {
        { 1, 2.5 }, { 2, 5 }, { 4, 10 }, { 8, 10 }, { 16, 14 }, { 32, 25 }, { 64, 50 }, { 128, 100 }, { 256, 200 },
    };
    static const struct { int code, lanes; } WIDTH[] = { { 1, 1 }, { 2, 4 }, { 4, 8 }, { 8, 12 }, { 16, 2 } };
    double lane = 0;
    int lanes = 0;
    for (size_t i = 0; i < sizeof SPEED / sizeof SPEED[0]; i++)
        if (SPEED[i].code == speed) lane = SPEED[i].gbps;
    for (size_t i = 0; i < sizeof WIDTH / sizeof WIDTH[0]; i++)
        if (WIDTH[i].code == width) lanes = WIDTH[i].lanes;
    return lane * lanes;
}

static const char *link_name(int l)
{
    return l == IBV_LINK_LAYER_INFINIBAND ? "InfiniBand" : l == IBV_LINK_LAYER_ETHERNET ? "Ethernet" : "unspecified";
}

/* The PCI id of an RDMA device: the last component of its sysfs device link. */
static void nic_pci(const char *dev, char *out, size_t len)
{
    char link[PATH_MAX], real[PATH_MAX];
    snprintf(link, sizeof link, "/sys/class/infiniband/%s/device", dev);
    const char *base = realpath(link, real) ? strrchr(real, '/') : NULL;
    snprintf(out, len, "%s", base ? base + 1 : "?");
}

static void add_ports(TopoRank *r, struct ibv_device *d)
{
    const char *name = ibv_get_device_name(d);
    struct ibv_context *ctx = ibv_open_device(d);
    struct ibv_device_attr attr;
    if (!ctx || ibv_query_device(ctx, &attr) != 0) {
        if (ctx) ibv_close_device(ctx);
        return;
    }
    for (int p = 1; p <= attr.phys_port_cnt && r->n_ports < TOPO_MAX_PORTS; p++) {
        struct ibv_port_attr pa;
        if (ibv_query_port(ctx, (uint8_t)p, &pa) != 0) continue;
        TopoPort *t = &r->ports[r->n_ports++];
        snprintf(t->dev, sizeof t->dev, "%s", name);
        t->port = p;
        snprintf(t->state, sizeof t->state, "%s", ibv_port_state_str(pa.state));
        snprintf(t->link, sizeof t->link, "%s", link_name(pa.link_layer));
        t->gbps = port_gbps(pa.active_speed, pa.active_width);
        nic_pci(name, t->pci, sizeof t->pci);
    }
    ibv_close_device(ctx);
}
#endif

static void find_nics(TopoRank *r)
{
#ifdef DSTRAIN_HAVE_IBVERBS
    int n = 0;
    struct ibv_device **list = ibv_get_device_list(&n);
    for (int i = 0; list && i < n; i++) add_ports(r, list[i]);
    if (list) ibv_free_device_list(list);
    if (r->n_ports == 0) snprintf(r->nic_note, sizeof r->nic_note, "no RDMA devices (rdma-core lists none)");
#else
    snprintf(r->nic_note, sizeof r->nic_note, "no RDMA devices (this build has no rdma-core)");
#endif
}

int topo_pci_distance(const char *a, const char *b)
{
    const char *pre = "/sys/devices/";
    size_t lp = strlen(pre);
    if (strncmp(a, pre, lp) || strncmp(b, pre, lp)) return -1;
    a += lp;
    b += lp;
    int common = 0;     /* components equal in both, from the root complex down */
    while (*a && *b) {
        size_t la = strcspn(a, "/"), lb = strcspn(b, "/");
        if (la != lb || strncmp(a, b, la)) break;
        common++;
        a += la + (a[la] == '/');
        b += lb + (b[lb] == '/');
    }
    if (common == 0) return -1;
    int rest = 0;
    for (const char *s = a; *s; s += strcspn(s, "/"), s += *s == '/') rest++;
    for (const char *s = b; *s; s += strcspn(s, "/"), s += *s == '/') rest++;
    return rest;
}

/* Distance between a GPU and a NIC by PCI id (INT_MAX when sysfs does not place both). */
static int pci_distance(const char *gpu, const char *nic)
{
    char pa[PATH_MAX], pb[PATH_MAX], ra[PATH_MAX], rb[PATH_MAX];
    snprintf(pa, sizeof pa, "/sys/bus/pci/devices/%s", gpu);
    snprintf(pb, sizeof pb, "/sys/bus/pci/devices/%s", nic);
    if (!realpath(pa, ra) || !realpath(pb, rb)) return INT_MAX;
    int d = topo_pci_distance(ra, rb);
    return d < 0 ? INT_MAX - 1 : d;
}

/* The pairing of one node (described by r): each GPU to the nearest active port. */
static void print_pairing(const TopoRank *r)
{
    if (r->n_gpus == 0 || r->n_ports == 0) {
        printf("  pairing: none (%s%s%s)\n", r->n_gpus == 0 ? "no GPU" : "", r->n_gpus + r->n_ports == 0 ? ", " : "",
               r->n_ports == 0 ? "no RDMA devices" : "");
        return;
    }
    int used[TOPO_MAX_PORTS] = { 0 };
    for (int g = 0; g < r->n_gpus; g++) {
        int best = -1, best_d = INT_MAX;
        for (int p = 0; p < r->n_ports; p++) {
            if (strcmp(r->ports[p].state, "PORT_ACTIVE") && strcmp(r->ports[p].state, "active")) continue;
            int d = pci_distance(r->gpus[g].pci, r->ports[p].pci);
            if (best < 0 || d < best_d || (d == best_d && used[p] < used[best])) best = p, best_d = d;
        }
        if (best < 0) {
            printf("  pairing: GPU %d (%s) -> none (no active port)\n", g, r->gpus[g].pci);
            continue;
        }
        used[best]++;
        const TopoPort *t = &r->ports[best];
        if (best_d >= INT_MAX - 1)
            printf("  pairing: GPU %d (%s) -> %s port %d (%s; %s)\n", g, r->gpus[g].pci, t->dev, t->port, t->pci,
                   best_d == INT_MAX ? "PCI placement unknown" : "different root complex");
        else
            printf("  pairing: GPU %d (%s) -> %s port %d (%s; %d PCI hops)\n", g, r->gpus[g].pci, t->dev, t->port,
                   t->pci, best_d);
    }
}

static void print_node(const TopoRank *r)
{
    printf("node %d (%s): %d rank%s\n", r->node, r->host, r->local_size, r->local_size == 1 ? "" : "s");
    if (r->n_gpus == 0) printf("  GPUs: %s\n", r->gpu_note);
    for (int g = 0; g < r->n_gpus; g++) printf("  GPU %d: %s, PCI %s\n", g, r->gpus[g].name, r->gpus[g].pci);
    if (r->n_ports == 0) printf("  NICs: %s\n", r->nic_note);
    for (int p = 0; p < r->n_ports; p++) {
        const TopoPort *t = &r->ports[p];
        printf("  NIC %s port %d: state %s, link layer %s, speed ", t->dev, t->port, t->state, t->link);
        if (t->gbps > 0) printf("%g Gb/s", t->gbps);
        else printf("unknown");
        printf(", PCI %s\n", t->pci);
    }
    print_pairing(r);
}

static void print_report(const TopoRank *all, int size, const char *backend)
{
    printf("topology: %d rank%s on %d node%s (backend %s)\n", size, size == 1 ? "" : "s", all[0].n_nodes,
           all[0].n_nodes == 1 ? "" : "s", backend);
    printf("%-6s %-24s %-5s %-11s %s\n", "rank", "host", "node", "local rank", "GPU (local rank mod GPUs)");
    for (int i = 0; i < size; i++) {
        const TopoRank *r = &all[i];
        char gpu[64];
        if (r->n_gpus) snprintf(gpu, sizeof gpu, "%d (%s)", r->local_rank % r->n_gpus, r->gpus[r->local_rank % r->n_gpus].pci);
        else snprintf(gpu, sizeof gpu, "no GPU");
        char local[24];
        snprintf(local, sizeof local, "%d of %d", r->local_rank, r->local_size);
        printf("%-6d %-24s %-5d %-11s %s\n", r->rank, r->host, r->node, local, gpu);
    }
    for (int i = 0; i < size; i++)
        if (all[i].local_rank == 0) print_node(&all[i]);
}

static void topo_usage(FILE *f)
{
    fprintf(f, "usage: dstrain topo\n"
               "Where the job's ranks are and what their nodes hold: one line per rank (host, node,\n"
               "local rank, the GPU a launcher gives it: local rank mod the node's GPUs), then per\n"
               "node its GPUs with PCI ids (CUDA builds; 'no GPU' otherwise), its RDMA NICs from\n"
               "rdma-core (device, port, state, link layer, speed, PCI id; 'no RDMA devices' where\n"
               "there are none) and the GPU -> NIC pairing: each GPU takes the active port nearest\n"
               "to it in the PCI tree. Run it alone or under mpirun/srun; rank 0 prints.\n");
}

int cmd_topo(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            topo_usage(stdout);
            return 0;
        }
        DIE("topo: unexpected argument '%s' (see dstrain topo --help)", argv[i]);
    }
    World *w = the_world;
    CHECK(w != NULL);
    TopoRank *me = xcalloc(1, sizeof *me);
    *me = (TopoRank){ .rank = w->rank, .size = w->size, .local_rank = w->local_rank, .local_size = w->local_size,
                      .node = w->node, .n_nodes = w->n_nodes };
    if (gethostname(me->host, sizeof me->host - 1) != 0) snprintf(me->host, sizeof me->host, "?");
    find_gpus(me);
    find_nics(me);
    TopoRank *all = xcalloc((size_t)w->size, sizeof *all);
    comm_allgather(w->comm, all, me, sizeof *me, COMM_BYTE);
    if (w->rank == 0) print_report(all, w->size, w->backend);
    fflush(stdout);
    free(all);
    free(me);
    return 0;
}
