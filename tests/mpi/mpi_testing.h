/* tests/mpi/mpi_testing.h - EXPECT (tests/unit/testing.h) for programs run as several MPI ranks:
 * failures name the rank, and the totals are summed over the world so every rank returns the
 * same status and rank 0 prints "N passed, N failed". */
#ifndef DSTRAIN_MPI_TESTING_H
#define DSTRAIN_MPI_TESTING_H

#include <stdint.h>
#include <stdio.h>

#include "comm/world.h"
#include "tests/unit/testing.h"

static int mpi_test_rank;

#define MEXPECT(cond, fmt, ...) EXPECT(cond, "[rank %d] " fmt, mpi_test_rank, __VA_ARGS__)

static inline int mpi_test_finish(World *w, const char *what)
{
    int64_t c[2] = { test_passed, test_failed };
    comm_allreduce(w->comm, c, 2, COMM_I64, COMM_SUM);
    if (w->rank == 0) {
        printf("%s on %d ranks: %lld passed, %lld failed\n", what, w->size, (long long)c[0], (long long)c[1]);
        fflush(stdout);
    }
    return c[1] ? 1 : 0;
}

#endif
