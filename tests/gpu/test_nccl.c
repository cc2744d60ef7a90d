/* tests/gpu/test_nccl.c - the nccl comm backend (comm/comm_nccl.h). Modes:
 *   bootstrap     (any machine; several ranks under mpirun) every rank receives rank 0's
 *                 ncclUniqueId over the host comm: all equal, not all zero, and a second id
 *                 differs from the first (two communicators need two ids)
 *   nogpu         (run with CUDA_VISIBLE_DEVICES empty) comm_nccl_create must DIE with one
 *                 line, "comm nccl: no CUDA GPU (...)"; reaching the end is a failure
 *   collectives   (default; needs a GPU per rank, else "SKIP: no CUDA GPU", exit 77) every
 *                 entry on device buffers against its serial expectation, exact (small whole
 *                 numbers): blocking and through requests, two comms in flight at once, sends
 *                 and receives in one request (a ring, with >= 2 ranks), the compute-stream
 *                 ordering, a split
 * Run by test_nccl.sh (ctest gpu.test_nccl) and by device_check.sh stage 2.
 */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/testing.h"
#include "comm/comm_nccl.h"
#include "comm/world.h"
#include "runtime/common.h"

static void *dev_alloc(size_t bytes)
{
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) DIE("test_nccl: cudaMalloc of %zu bytes failed", bytes);
    return p;
}

static void up(void *d, const void *h, size_t b) { CHECK(cudaMemcpy(d, h, b, cudaMemcpyHostToDevice) == cudaSuccess); }
static void down(void *h, const void *d, size_t b) { CHECK(cudaMemcpy(h, d, b, cudaMemcpyDeviceToHost) == cudaSuccess); }

static int bootstrap(World *w)
{
    unsigned char a[COMM_NCCL_ID_BYTES], b[COMM_NCCL_ID_BYTES];
    char why[256] = "";
    EXPECT(comm_nccl_unique_id(w->comm, a, why, sizeof why) == 0, "first id: %s", why);
    EXPECT(comm_nccl_unique_id(w->comm, b, why, sizeof why) == 0, "second id: %s", why);
    unsigned char *all = xmalloc((size_t)w->size * COMM_NCCL_ID_BYTES);
    comm_allgather(w->comm, all, a, COMM_NCCL_ID_BYTES, COMM_BYTE);
    int same = 1, nonzero = 0;
    for (int r = 0; r < w->size; r++) same &= !memcmp(all + (size_t)r * COMM_NCCL_ID_BYTES, all, COMM_NCCL_ID_BYTES);
    for (int i = 0; i < COMM_NCCL_ID_BYTES; i++) nonzero |= a[i] != 0;
    EXPECT(same, "rank %d: the ranks hold different ids", w->rank);
    EXPECT(nonzero, "rank %d: the id is all zero", w->rank);
    EXPECT(memcmp(a, b, sizeof a) != 0, "rank %d: two ids are equal", w->rank);
    free(all);
    printf("rank %d of %d: ", w->rank, w->size);
    return test_finish();
}

/* buf (n floats) on the device checked against want (host), exactly */
static void expect_f(const float *dbuf, const float *want, size_t n, const char *what)
{
    float *h = xmalloc(n * sizeof(float) + 1);
    down(h, dbuf, n * sizeof(float));
    size_t bad = 0, at = 0;
    for (size_t i = 0; i < n; i++)
        if (h[i] != want[i] && !bad++) at = i;
    EXPECT(bad == 0, "%s: %zu of %zu differ, first at %zu: %g, want %g", what, bad, n, at, bad ? h[at] : 0.0,
           bad ? want[at] : 0.0);
    free(h);
}

/* allreduce (blocking on a, two in flight on a and b), broadcast, allgather, reduce-scatter */
static void check_collectives(Comm *a, Comm *b, int R, int S)
{
    const size_t n = 1000;
    float *h = xmalloc(S * n * sizeof(float)), *want = xmalloc(S * n * sizeof(float));
    float *d = dev_alloc(S * n * sizeof(float)), *d2 = dev_alloc(S * n * sizeof(float));
    for (size_t i = 0; i < n; i++) { h[i] = (float)(R + 1) + (float)(i % 7); want[i] = S * (S + 1) / 2.0f + S * (float)(i % 7); }
    up(d, h, n * sizeof(float));
    comm_allreduce(a, d, n, COMM_F32, COMM_SUM);
    expect_f(d, want, n, "allreduce sum (blocking)");
    /* two exchanges in flight: a sum on a, a max on b */
    CommRequest *ra = comm_request_create(a, 2), *rb = comm_request_create(b, 2);
    up(d, h, n * sizeof(float));
    up(d2, h, n * sizeof(float));
    comm_iallreduce(a, d, n, COMM_F32, COMM_SUM, ra);
    comm_iallreduce(b, d2, n, COMM_F32, COMM_MAX, rb);
    comm_wait(rb);
    comm_wait(ra);
    expect_f(d, want, n, "allreduce sum (request, with another comm in flight)");
    for (size_t i = 0; i < n; i++) want[i] = (float)S + (float)(i % 7);
    expect_f(d2, want, n, "allreduce max (request on the second comm)");
    /* broadcast from the last rank */
    up(d, h, n * sizeof(float));
    comm_broadcast(b, d, n, COMM_F32, S - 1);
    for (size_t i = 0; i < n; i++) want[i] = (float)S + (float)(i % 7);
    expect_f(d, want, n, "broadcast from the last rank");
    /* allgather in place: block r of d holds rank r's values */
    up(d + (size_t)R * n, h, n * sizeof(float));
    comm_allgather(a, d, d + (size_t)R * n, n, COMM_F32);
    for (int r = 0; r < S; r++)
        for (size_t i = 0; i < n; i++) want[(size_t)r * n + i] = (float)(r + 1) + (float)(i % 7);
    expect_f(d, want, S * n, "allgather in place");
    /* reduce-scatter: block r of the sum of every rank's (S n) input */
    for (size_t i = 0; i < S * n; i++) h[i] = (float)(R + 1) * (float)(i % 5);
    up(d, h, S * n * sizeof(float));
    comm_ireduce_scatter(a, d2, d, n, COMM_F32, COMM_SUM, ra);
    comm_wait(ra);
    for (size_t i = 0; i < n; i++) want[i] = S * (S + 1) / 2.0f * (float)(((size_t)R * n + i) % 5);
    expect_f(d2, want, n, "reduce-scatter");
    comm_request_free(ra);
    comm_request_free(rb);
    cudaFree(d);
    cudaFree(d2);
    free(h);
    free(want);
}

/* alltoallv: rank r sends (r + p) % 3 + 1 values r * 100 + p to rank p */
static void check_alltoallv(Comm *a, int R, int S)
{
    size_t *sc = xcalloc(4 * (size_t)S, sizeof(size_t)), *so = sc + S, *rc = sc + 2 * S, *ro = sc + 3 * S;
    size_t ns = 0, nr = 0;
    for (int p = 0; p < S; p++) {
        sc[p] = (size_t)((R + p) % 3 + 1); so[p] = ns; ns += sc[p];
        rc[p] = (size_t)((p + R) % 3 + 1); ro[p] = nr; nr += rc[p];
    }
    float *h = xmalloc(ns * sizeof(float)), *want = xmalloc(nr * sizeof(float));
    for (int p = 0; p < S; p++)
        for (size_t i = 0; i < sc[p]; i++) h[so[p] + i] = (float)(R * 100 + p);
    for (int p = 0; p < S; p++)
        for (size_t i = 0; i < rc[p]; i++) want[ro[p] + i] = (float)(p * 100 + R);
    float *ds = dev_alloc(ns * sizeof(float)), *dr = dev_alloc(nr * sizeof(float));
    up(ds, h, ns * sizeof(float));
    comm_alltoallv(a, dr, rc, ro, ds, sc, so, COMM_F32);
    expect_f(dr, want, nr, "alltoallv");
    cudaFree(ds);
    cudaFree(dr);
    free(h);
    free(want);
    free(sc);
}

/* a ring of sends/receives in one request (>= 2 ranks); barrier; copy; the compute stream */
static void check_p2p_and_streams(Comm *a, int R, int S)
{
    const size_t n = 257;
    float *h = xmalloc(n * sizeof(float)), *want = xmalloc(n * sizeof(float));
    float *d = dev_alloc(n * sizeof(float)), *d2 = dev_alloc(n * sizeof(float));
    if (S > 1) {
        CommRequest *r = comm_request_create(a, 2);
        for (size_t i = 0; i < n; i++) h[i] = (float)(R * 1000 + (int)i);
        up(d, h, n * sizeof(float));
        comm_isend(a, d, n, COMM_F32, (R + 1) % S, 0, r);
        comm_irecv(a, d2, n, COMM_F32, (R + S - 1) % S, 0, r);
        comm_wait(r);
        for (size_t i = 0; i < n; i++) want[i] = (float)(((R + S - 1) % S) * 1000 + (int)i);
        expect_f(d2, want, n, "ring send/receive in one request");
        comm_request_free(r);
    }
    comm_barrier(a);
    for (size_t i = 0; i < n; i++) h[i] = (float)i;
    up(d, h, n * sizeof(float));
    comm_icopy(a, d2, d, n * sizeof(float), NULL);
    expect_f(d2, h, n, "copy");
    /* ordered against a compute stream: a memset queued there precedes the allreduce, the
     * download queued after it sees the result */
    cudaStream_t cs;
    CHECK(cudaStreamCreateWithFlags(&cs, cudaStreamNonBlocking) == cudaSuccess);
    comm_nccl_set_compute_stream(a, cs);
    CHECK(cudaMemsetAsync(d, 0, n * sizeof(float), cs) == cudaSuccess);
    comm_allreduce(a, d, n, COMM_F32, COMM_SUM);
    CHECK(cudaMemcpyAsync(h, d, n * sizeof(float), cudaMemcpyDeviceToHost, cs) == cudaSuccess);
    CHECK(cudaStreamSynchronize(cs) == cudaSuccess);
    int zero = 1;
    for (size_t i = 0; i < n; i++) zero &= h[i] == 0.0f;
    EXPECT(zero, "compute-stream ordering: the allreduce ran before the memset queued ahead of it");
    comm_nccl_set_compute_stream(a, NULL);
    CHECK(cudaStreamDestroy(cs) == cudaSuccess);
    cudaFree(d);
    cudaFree(d2);
    free(h);
    free(want);
}

static int collectives(World *w)
{
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        printf("SKIP: no CUDA GPU (the nccl collectives need one per rank)\n");
        return 77;
    }
    CHECK(cudaSetDevice(w->local_rank % count) == cudaSuccess);
    Comm *a = comm_nccl_create(w->comm), *b = comm_nccl_create(w->comm);
    const int R = a->rank, S = a->size;
    EXPECT(R == w->rank && S == w->size, "nccl rank/size %d/%d, world %d/%d", R, S, w->rank, w->size);
    check_collectives(a, b, R, S);
    check_alltoallv(a, R, S);
    check_p2p_and_streams(a, R, S);
    Comm *half = comm_split(a, R % 2, R), *half_b = comm_split(b, R % 2, R);
    check_collectives(half, half_b, half->rank, half->size);
    comm_destroy(half_b);
    comm_destroy(half);
    comm_destroy(b);
    comm_destroy(a);
    printf("nccl collectives, rank %d of %d: ", R, S);
    return test_finish();
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "collectives";
    World *w = world_init(argc, argv);
    int rc;
    if (!strcmp(mode, "bootstrap")) rc = bootstrap(w);
    else if (!strcmp(mode, "nogpu")) {
        comm_nccl_create(w->comm);
        printf("FAIL: comm_nccl_create returned without a GPU\n");
        rc = 1;
    } else if (!strcmp(mode, "collectives")) rc = collectives(w);
    else DIE("test_nccl: unknown mode '%s' (bootstrap, nogpu, collectives)", mode);
    world_free(w);
    return rc;
}
