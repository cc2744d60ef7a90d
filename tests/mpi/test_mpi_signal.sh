#!/usr/bin/env bash
# tests/mpi/test_mpi_signal.sh BIN_DIR SOURCE_DIR SCRATCH_DIR - a stop signal to a 2-rank job
# (issue 12, acceptance 1; the one-process case: tests/cli/test_signal.sh). configs/tiny.toml at
# dp = 2 under mpirun; after a random step K and 0-50 ms more:
#   - SIGTERM to both ranks (what Slurm does at a time limit or preemption), or
#   - SIGUSR1 to mpirun (which forwards it to every rank; `sbatch --signal=B:USR1@120` to a batch
#     script that execs mpirun); mpirun itself answers SIGTERM by killing the ranks within ~1 s,
#     so SIGTERM must reach the ranks, not mpirun
# then: the job exits 75, the checkpoint of the step in flight exists and verifies, and
# `--resume auto` (2 ranks again) continues to a final checkpoint bit-identical to an
# uninterrupted 2-rank run. Same rank count and layout, so the reductions run in the same order
# and the comparison is exact. Trials: DSTRAIN_SIGNAL_TRIALS (default 2; 20 by hand).
BIN_DIR=$1
SRC=$2
SCRATCH=$3
. "$SRC/tests/mpi/lib.sh"
use_dstrain
COMPARE="$BIN_DIR/ckpt_compare"
TRIALS=${DSTRAIN_SIGNAL_TRIALS:-2}
# The moment: after a random step K in [1, 300] plus a random 0-50 ms; 800 steps leave at
# least 500 steps after K (~10 ms a step at 2 ranks here, 45 ms on a loaded machine)
STEPS=800
TRAIN=("$DSTRAIN" train "$SRC/configs/tiny.toml" --set train.run_dir=runs --set data.dir=data
       --set train.val_every=0 --set train.val_batches=1 --set train.steps=$STEPS
       --set train.checkpoint_every=300 --set parallel.dp=2 --set train.micro_batch_size=2)
last_step() {
    python3 -c "
import json
print(max([json.loads(l)['step'] for l in open('runs/$1/metrics.jsonl') if json.loads(l)['type'] == 'step'] or [0]))"
}
run_job() {  # run_job OUT ARGS...: like run_mpi with room for a loaded machine (300 s)
    local out=$1
    shift
    timeout -k 5 300 "${MPIRUN[@]}" -np 2 "$@" > "$out" 2>&1
    RC=$?
}
wait_step() {  # wait_step RUN K: until metrics.jsonl holds the record of step K (<= 120 s)
    for _ in $(seq 2400); do
        grep -q "\"type\":\"step\",\"step\":$2," "runs/$1/metrics.jsonl" 2> /dev/null && return 0
        sleep 0.05
    done
    return 1
}

run_job ref.txt "${TRAIN[@]}" --set train.name=ref
check "uninterrupted 2-rank run (exit $RC)" "[ $RC -eq 0 ] && [ -d runs/ref/ckpt-$STEPS ]" || show ref.txt

for i in $(seq "$TRIALS"); do
    run=trial$i
    how=ranks-TERM
    [ $((i % 2)) -eq 0 ] && how=mpirun-USR1
    k=$(python3 -c "import random; print(random.randint(1, 300))")
    delay=$(python3 -c "import random; print(round(random.uniform(0, 0.05), 3))")
    timeout -k 5 300 "${MPIRUN[@]}" -np 2 "${TRAIN[@]}" --set train.name=$run > $run.txt 2>&1 &
    tpid=$!
    wait_step $run $k
    sleep "$delay"
    mpirun_pid=$(pgrep -P $tpid)
    if [ $how = ranks-TERM ]; then
        kill -TERM $(pgrep -P "$mpirun_pid")
    else
        kill -USR1 "$mpirun_pid"
    fi
    wait $tpid
    rc=$?
    n=$(last_step $run)
    check "trial $i ($how after step $k + ${delay}s): exit 75, got $rc" "[ $rc -eq 75 ]" || show $run.txt
    check "trial $i: the stop names ckpt-$n" "grep -q 'after step $n; checkpoint .runs/$run/ckpt-$n. saved' $run.txt" \
        || show $run.txt
    check "trial $i: ckpt-$n verifies" "'$DSTRAIN' inspect runs/$run/ckpt-$n > /dev/null 2>&1"
    run_job $run.resume.txt "${TRAIN[@]}" --set train.name=$run --resume auto
    check "trial $i: --resume auto from ckpt-$n finishes (exit $RC)" \
        "[ $RC -eq 0 ] && grep -q \"resume: from 'runs/$run/ckpt-$n'\" $run.resume.txt" || show $run.resume.txt
    check "trial $i: final state bit-identical to the uninterrupted run" \
        "'$COMPARE' runs/ref/ckpt-$STEPS runs/$run/ckpt-$STEPS"
done
finish
