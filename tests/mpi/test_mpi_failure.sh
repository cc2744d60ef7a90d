#!/usr/bin/env bash
# tests/mpi/test_mpi_failure.sh BIN_DIR SOURCE_DIR SCRATCH_DIR - a failing rank ends the whole
# job, within a bound, with a message naming the rank (no hang):
#   - rank 2 of 4 hits DIE while the others wait in a barrier: the job exits non-zero and the
#     message is "[rank 2] dstrain: ..." (MPI_Abort through the fatal hook of world_init)
#   - rank 1 of 4 is killed with kill -9 while every rank waits in a receive: mpirun notices,
#     names rank 1 and signal 9, ends the others, and exits non-zero
# Each run is bounded by timeout 60; exit 124 means it hung.
BIN_DIR=$1
SCRATCH=$3
. "$2/tests/mpi/lib.sh"
T="$BIN_DIR/comm_mpi_test"

run_mpi 4 die.txt "$T" die 2
check "DIE on rank 2 ends the job (exit $RC, ${ELAPSED}s)" '[ $RC -ne 0 ] && [ $RC -ne 124 ] && [ $ELAPSED -lt 60 ]' \
    || show die.txt
check "the message names rank 2" '[ "$(grep -c "dstrain: test: rank 2 stops on purpose" die.txt)" -eq 1 ] &&
    tr "\n" " " < die.txt | grep -q "\[rank 2\] .*dstrain: test: rank 2 stops on purpose"' || show die.txt
check "no barrier returned" '! grep -q "barrier returned" die.txt' || show die.txt
# (OpenMPI's own "MPI_ABORT was invoked on rank 2" notice is not checked: OpenMPI 4.1 sometimes
# fails to forward its help text, "ORTE_ERROR_LOG: Data unpack would read past end of buffer")

mkdir pids
t0=$SECONDS
( timeout -k 5 60 "${MPIRUN[@]}" -np 4 "$T" hang pids > kill.txt 2>&1; echo $? > kill.rc ) &
for _ in $(seq 300); do
    [ "$(ls pids | wc -l)" -eq 4 ] && break
    sleep 0.1
done
check "all 4 ranks started" '[ "$(ls pids | wc -l)" -eq 4 ]'
victim=$(cat pids/pid.1 2> /dev/null)
[ -n "$victim" ] && kill -9 "$victim"
wait
RC=$(cat kill.rc)
ELAPSED=$((SECONDS - t0))
check "kill -9 of rank 1 ends the job (exit $RC, ${ELAPSED}s)" \
    '[ "$RC" -ne 0 ] && [ "$RC" -ne 124 ] && [ $ELAPSED -lt 60 ]' || show kill.txt
check "mpirun names rank 1 and the signal" 'grep -q "rank 1 .*signal 9" kill.txt' || show kill.txt
running() {  # running PID: the process exists and is not a zombie waiting for init to reap it
    local st
    st=$(ps -o stat= -p "$1" 2> /dev/null)
    [ -n "$st" ] && [ "${st#Z}" = "$st" ]
}
alive=""
for _ in $(seq 50); do
    alive=""
    for f in pids/pid.*; do running "$(cat "$f")" && alive="$alive $(cat "$f")"; done
    [ -z "$alive" ] && break
    sleep 0.1
done
check "no rank left running (alive:$alive)" '[ -z "$alive" ]'
finish
