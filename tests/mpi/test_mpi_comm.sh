#!/usr/bin/env bash
# tests/mpi/test_mpi_comm.sh BIN_DIR SOURCE_DIR SCRATCH_DIR - the comm layer on real MPI
# processes (comm_mpi_test in BIN_DIR): every collective against its serial expectation,
# blocking and non-blocking, on the world and on split groups (2 and 4 ranks); the group
# members of every layout against world.h's rank formula; rank, size and locality from MPI
# (and simulated nodes with DSTRAIN_RANKS_PER_NODE); a world size that does not match
# pp * dp ends every rank with one message.
BIN_DIR=$1
SCRATCH=$3
. "$2/tests/mpi/lib.sh"
T="$BIN_DIR/comm_mpi_test"

for np in 2 4; do
    run_mpi $np checks.$np.txt "$T" collectives groups world
    check "collectives, groups and world on $np ranks (exit $RC)" \
        '[ $RC -eq 0 ] && grep -q " 0 failed" checks.$np.txt' || show checks.$np.txt
done
run_mpi 4 world.rpn.txt -x DSTRAIN_RANKS_PER_NODE=3 "$T" world
check "simulated nodes of 3 ranks (exit $RC)" '[ $RC -eq 0 ] && grep -q " 0 failed" world.rpn.txt' || show world.rpn.txt

run_mpi 4 layout.ok.txt "$T" layout 2 2 2
check "layout pp=2 dp=2 ep=2 on 4 ranks (exit $RC)" '[ $RC -eq 0 ]' || show layout.ok.txt
run_mpi 2 layout.bad.txt "$T" layout 1 4 1
check "layout dp=4 on 2 ranks fails (exit $RC, ${ELAPSED}s)" '[ $RC -ne 0 ] && [ $RC -ne 124 ]' || show layout.bad.txt
want="dstrain: parallel: the job has 2 rank(s) but .parallel.pp. \* .parallel.dp. = 1 \* 4 = 4"
check "the mismatch is reported once, by rank 0" '[ "$(grep -c "$want" layout.bad.txt)" -eq 1 ]' || show layout.bad.txt
finish
