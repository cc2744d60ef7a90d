# tests/cli/test_signal.sh - a stop signal costs nothing (issue 12, acceptance 1; DESIGN.md
# "Operations"), on configs/tiny.toml, one process (the 2-rank mpirun case:
# tests/mpi/test_mpi_signal.sh):
#   1. SIGTERM / SIGINT / SIGUSR1 at a random moment (after a random step): exit 75, one line on
#      stderr naming the signal and the checkpoint, the checkpoint of the step in flight (the
#      last step in metrics.jsonl) exists and verifies; `--resume auto` continues to a final
#      checkpoint bit-identical to an uninterrupted run (tests/tools/ckpt_compare), and every
#      step appears once in metrics.jsonl.
#   2. a second signal ends the process at once: status 128+N, no checkpoint of that step.
#   3. --resume auto on a run with no checkpoint starts fresh; with a checkpoint directory that
#      does not verify it refuses (never trains over it).
# Trials: DSTRAIN_SIGNAL_TRIALS (default 3, to keep CI short; 20 by hand:
#   DSTRAIN_SIGNAL_TRIALS=20 bash tests/cli/test_signal.sh build/dev/dstrain . /tmp/sig).
# Usage: bash test_signal.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR
set -u
BIN=${1:?usage: test_signal.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR}
SRC=${2:?}
SCRATCH=${3:?}
TRIALS=${DSTRAIN_SIGNAL_TRIALS:-3}
COMPARE=$(cd "$(dirname "$BIN")" && pwd)/tests/ckpt_compare
. "$(dirname "$0")/lib.sh"

# The moment: after a random step K in [1, 500] (metrics.jsonl shows it), plus a random 0-50 ms
# (somewhere inside a later step or a save). 1500 steps leave at least 1000 steps after K, so
# the signal lands inside the loop on any machine (2.3 ms a step here, ~35 ms under ASan).
STEPS=1500
TRAIN=("$BIN" train "$SRC/configs/tiny.toml" --set train.run_dir=runs --set data.dir=data
       --set train.val_every=0 --set train.val_batches=1 --set train.steps=$STEPS
       --set train.checkpoint_every=1000)
last_step() {  # last_step RUN: the highest step record in metrics.jsonl
    python3 -c "
import json
print(max([json.loads(l)['step'] for l in open('runs/$1/metrics.jsonl') if json.loads(l)['type'] == 'step'] or [0]))"
}
steps_once() {  # steps_once RUN: steps 1..STEPS each exactly once
    python3 -c "
import json, collections
c = collections.Counter(json.loads(l)['step'] for l in open('runs/$1/metrics.jsonl') if json.loads(l)['type'] == 'step')
assert sorted(c) == list(range(1, $STEPS + 1)) and max(c.values()) == 1, (len(c), max(c.values()))"
}
wait_step() {  # wait_step RUN K: until metrics.jsonl holds the record of step K (<= 120 s)
    for _ in $(seq 2400); do
        grep -q "\"type\":\"step\",\"step\":$2," "runs/$1/metrics.jsonl" 2> /dev/null && return 0
        sleep 0.05
    done
    return 1
}

"${TRAIN[@]}" --set train.name=ref > ref.txt 2>&1
check "uninterrupted reference run ($(tail -c 200 ref.txt))" "[ -d runs/ref/ckpt-$STEPS ]"

SIGNALS=(TERM INT USR1)
for i in $(seq "$TRIALS"); do
    sig=${SIGNALS[$(((i - 1) % 3))]}
    run=trial$i
    k=$(python3 -c "import random; print(random.randint(1, 500))")
    delay=$(python3 -c "import random; print(round(random.uniform(0, 0.05), 3))")
    "${TRAIN[@]}" --set train.name=$run > $run.txt 2> $run.err &
    pid=$!
    wait_step $run $k
    sleep "$delay"
    kill -$sig $pid
    wait $pid
    rc=$?
    n=$(last_step $run)
    check "trial $i (SIG$sig after step $k + ${delay}s): exit 75, got $rc ($(cat $run.err))" "[ $rc -eq 75 ]"
    check "trial $i: one stderr line naming SIG$sig and ckpt-$n" \
        "[ \$(wc -l < $run.err) -eq 1 ] && grep -q 'stopped by SIG$sig after step $n; checkpoint .runs/$run/ckpt-$n. saved' $run.err"
    check "trial $i: the checkpoint of the step in flight (ckpt-$n) verifies" \
        "'$BIN' inspect runs/$run/ckpt-$n > /dev/null 2>&1"
    "${TRAIN[@]}" --set train.name=$run --resume auto > $run.resume.txt 2>&1
    rc=$?
    check "trial $i: --resume auto from ckpt-$n finishes (exit $rc)" \
        "[ $rc -eq 0 ] && grep -q \"resume: from 'runs/$run/ckpt-$n'\" $run.resume.txt"
    check "trial $i: final state bit-identical to the uninterrupted run" \
        "'$COMPARE' runs/ref/ckpt-$STEPS runs/$run/ckpt-$STEPS > /dev/null"
    check "trial $i: every step once in metrics.jsonl" "steps_once $run"
done

# ---- 2. a second signal: out at once ----
"${TRAIN[@]}" --set train.name=twice > twice.txt 2> twice.err &
pid=$!
wait_step twice 1
kill -INT $pid
kill -TERM $pid
wait $pid
rc=$?
check "a second signal ends the run at once (exit $rc: 130 or 143; $(cat twice.err))" \
    "{ [ $rc -eq 130 ] || [ $rc -eq 143 ]; } && grep -q 'second stop signal' twice.err"

# ---- 3. --resume auto with nothing to resume ----
"${TRAIN[@]}" --set train.name=fresh --set train.steps=5 --resume auto > fresh.txt 2> fresh.err
rc=$?
check "--resume auto on a new run starts fresh (exit $rc; $(cat fresh.err))" \
    "[ $rc -eq 0 ] && grep -q 'starting fresh' fresh.txt && [ -d runs/fresh/ckpt-5 ]"
"${TRAIN[@]}" --set train.name=fresh --set train.steps=5 --resume latest > /dev/null 2>&1
check "(--resume latest then resumes it)" "[ \$? -eq 0 ]"
mkdir -p runs/broken/ckpt-3
"${TRAIN[@]}" --set train.name=broken --set train.steps=5 --resume auto > broken.txt 2> broken.err
rc=$?
check "--resume auto refuses a run whose checkpoints do not verify (exit $rc; $(cat broken.err))" \
    "[ $rc -eq 1 ] && [ \$(wc -l < broken.err) -eq 1 ] && grep -q 'no checkpoint' broken.err"
finish
