/* comm/comm_nccl.h - the `nccl` backend of comm.h: device memory, one CUDA stream and one
 * NCCL communicator per Comm, bootstrapped over a host comm (mpi, or single for one rank).
 *
 * What it is: a CommBackend whose buffers are device pointers (cudaMalloc) on the current
 * device. The communicator is made from an ncclUniqueId that rank 0 of the host comm creates
 * and broadcasts over it (comm_nccl_unique_id), so MPI stays the launcher and control plane.
 * Each Comm has its own stream and events; where two exchanges may be in flight at once (the
 * MoE all-to-all and the gradient reduction, say) make two Comms: each has its own
 * communicator and stream, and NCCL runs them concurrently. Every rank must post the
 * operations of both comms in the same order (NCCL's rule for concurrent communicators).
 * What it is not: wired into comm/world.c or the trainer yet (comm.h's table is the
 * interface; callers pass device buffers where they pass host ones now).
 *
 * Semantics beyond comm.h:
 *   - Ordering: an operation starts after everything already queued on the compute stream
 *     (comm_nccl_set_compute_stream; default: the legacy default stream), through an event.
 *   - Blocking entries: with a compute stream set, the compute stream waits on an event
 *     recorded after the operation (ordered on the stream, no host sync); without one, the
 *     host waits for the operation (complete on return, as in the host backends).
 *   - Requests: one event recorded after the request's last operation; comm_wait makes the
 *     compute stream wait on it (or the host, without a compute stream). Sends and receives
 *     posted into one request form one NCCL group, issued at comm_wait (or when a collective
 *     is posted after them into that request), so a pairwise exchange cannot deadlock.
 *   - Tags are not matched: messages between two ranks arrive in posting order.
 *   - Counts are size_t (COMM_CHUNK does not apply); one request slot per operation.
 * Errors: DIE with one line, "comm nccl: ..." (no GPU, a failed NCCL or CUDA call).
 *
 * Calling sequence (collective over host):
 *   cudaSetDevice(local_rank);
 *   Comm *a = comm_nccl_create(host), *b = comm_nccl_create(host);   two independent lanes
 *   comm_nccl_set_compute_stream(a, stream); ...
 *   comm_allreduce(a, dev_grads, n, COMM_F32, COMM_SUM);
 *   comm_destroy(b); comm_destroy(a);
 * Only in a build where CMake found NCCL (DSTRAIN_HAVE_NCCL); link target dstrain_nccl.
 */
#ifndef DSTRAIN_COMM_NCCL_H
#define DSTRAIN_COMM_NCCL_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "comm/comm.h"

#define COMM_NCCL_ID_BYTES 128      /* sizeof(ncclUniqueId) */

/* id (COMM_NCCL_ID_BYTES) <- rank 0's fresh ncclUniqueId, broadcast over host (collective).
 * Needs no GPU. Returns 0, or -1 with NCCL's reason in why when rank 0 could not make one
 * (every rank returns -1 then). */
int comm_nccl_unique_id(Comm *host, void *id, char *why, size_t why_len);

/* The nccl backend over the ranks of host, on the current CUDA device (collective over host).
 * DIE with one line when no GPU is usable: "comm nccl: no CUDA GPU (...)". */
Comm *comm_nccl_create(Comm *host);

/* The stream this comm's operations run on (a cudaStream_t), and the compute stream they
 * order against (NULL: the legacy default stream, and blocking calls wait on the host). */
void *comm_nccl_stream(Comm *c);
void comm_nccl_set_compute_stream(Comm *c, void *stream);

#ifdef __cplusplus
}
#endif

#endif
