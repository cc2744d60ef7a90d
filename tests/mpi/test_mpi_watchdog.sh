#!/usr/bin/env bash
# tests/mpi/test_mpi_watchdog.sh BIN_DIR SOURCE_DIR SCRATCH_DIR - a hung rank ends the job
# (issue 12, acceptance 3): configs/tiny.toml at dp = 2 with train.watchdog_s = 5; after the
# first step rank 1 is stopped with SIGSTOP (it stops calling collectives, as a wedged peer
# would). Rank 0 waits in a collective; its watchdog ends it with one line naming the rank,
# the operation and the step, and mpirun ends the stopped rank. Checked: exit status 4, the
# job ends within 5 + 10 s of the SIGSTOP, no process of the job is left.
# Also: the same job without a stop finishes normally with the watchdog on (no false alarm at
# steps of ~10 ms; the limit is 500x that).
BIN_DIR=$1
SRC=$2
SCRATCH=$3
. "$SRC/tests/mpi/lib.sh"
use_dstrain
LIMIT=5
TRAIN=("$DSTRAIN" train "$SRC/configs/tiny.toml" --set train.run_dir=runs --set data.dir=data
       --set train.val_every=0 --set train.val_batches=1 --set parallel.dp=2 --set train.micro_batch_size=2
       --set train.watchdog_s=$LIMIT --set train.log_every=100)

run_mpi 2 ok.txt "${TRAIN[@]}" --set train.name=ok --set train.steps=200
check "with the watchdog on, a healthy job finishes (exit $RC)" "[ $RC -eq 0 ]" || show ok.txt

timeout -k 5 120 "${MPIRUN[@]}" -np 2 "${TRAIN[@]}" --set train.name=hang --set train.steps=1000000 > hang.txt 2>&1 &
tpid=$!
for _ in $(seq 600); do
    grep -q '"type":"step"' runs/hang/metrics.jsonl 2> /dev/null && break
    sleep 0.1
done
mpirun_pid=$(pgrep -P $tpid)
ranks=$(pgrep -P "$mpirun_pid")
victim=""
for p in $ranks; do
    tr '\0' '\n' < /proc/$p/environ | grep -qx 'OMPI_COMM_WORLD_RANK=1' && victim=$p
done
check "found rank 1 among the job's processes ($ranks)" "[ -n '$victim' ]"
t0=$(date +%s.%N)
kill -STOP "$victim"
wait $tpid
rc=$?
elapsed=$(python3 -c "import time; print(round(time.time() - $t0, 1))")
check "the watchdog ends the job with status 4, got $rc" "[ $rc -eq 4 ]" || show hang.txt
check "within $LIMIT + 10 s of the stop (${elapsed}s)" "python3 -c 'import sys; sys.exit(0 if $elapsed <= $LIMIT + 10 else 1)'"
check "one line names rank 0, the operation and the step" \
    "grep -Eq \"^\[rank 0\] dstrain: watchdog: '[a-z_]+' did not finish within $LIMIT s \(step [0-9]+\); ending the job\" hang.txt" \
    || show hang.txt
running() {  # running PID: exists and is not a zombie
    local st
    st=$(ps -o stat= -p "$1" 2> /dev/null)
    [ -n "$st" ] && [ "${st#Z}" = "$st" ]
}
alive=""
for _ in $(seq 50); do
    alive=""
    for p in $ranks $mpirun_pid; do running "$p" && alive="$alive $p"; done
    [ -z "$alive" ] && break
    sleep 0.1
done
check "no process of the job left (alive:$alive)" "[ -z '$alive' ]"
for p in $alive; do kill -9 "$p" 2> /dev/null; done
finish
