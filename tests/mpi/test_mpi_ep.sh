#!/usr/bin/env bash
# tests/mpi/test_mpi_ep.sh BIN_DIR SOURCE_DIR SCRATCH_DIR - MoE dispatch/combine over EP groups
# of real MPI processes (ep_mpi_test in BIN_DIR, which documents the checks): 2 ranks (EP 1, 2)
# and 4 ranks (EP 1, 2, 4), uniform, random, hot, one-expert and empty loads, every received
# row checked against its route and combine/backward against the serial formula and the
# one-rank path; once more with two simulated nodes of 2 ranks (EP 4 spans both).
BIN_DIR=$1
SCRATCH=$3
. "$2/tests/mpi/lib.sh"
T="$BIN_DIR/ep_mpi_test"

for np in 2 4; do
    run_mpi $np ep.$np.txt "$T"
    check "dispatch/combine on $np ranks (exit $RC)" '[ $RC -eq 0 ] && grep -q " 0 failed" ep.$np.txt' \
        || show ep.$np.txt
done
run_mpi 4 ep.nodes.txt -x DSTRAIN_RANKS_PER_NODE=2 "$T"
check "dispatch/combine over 2 simulated nodes (exit $RC)" '[ $RC -eq 0 ] && grep -q " 0 failed" ep.nodes.txt' \
    || show ep.nodes.txt
finish
