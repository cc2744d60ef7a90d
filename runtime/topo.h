/* runtime/topo.h - `dstrain topo`: where a job's ranks landed and what each node has to offer.
 *
 * Every rank describes itself (host, node, local rank; the node's GPUs with their PCI ids, from
 * the CUDA runtime when built with CUDA; the node's RDMA NICs from rdma-core: device, port,
 * state, link layer, speed, PCI id), the descriptions are gathered on rank 0 (comm_allgather
 * over the world), and rank 0 prints: one line per rank, then per node its GPUs, its NICs (or
 * "no RDMA devices"), and the GPU -> NIC pairing a launcher would use: each GPU takes the
 * active port whose PCI device is nearest in the sysfs PCI tree (fewest bridges between them;
 * ties go to the NIC with fewer GPUs already paired, then the first). Single-process or under
 * any MPI launcher.
 *
 * Calling sequence: main() calls topo_set_world(w) once; then cmd_topo (runtime/commands.h).
 */
#ifndef DSTRAIN_TOPO_H
#define DSTRAIN_TOPO_H

#include "comm/world.h"

void topo_set_world(World *w);

/* PCI distance between two sysfs device paths (realpath of /sys/bus/pci/devices/<id>): the
 * number of path components below their last common one, both sides added; -1 when they hang
 * off different root complexes (different first component under /sys/devices). */
int topo_pci_distance(const char *path_a, const char *path_b);

#endif
