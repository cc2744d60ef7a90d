# tests/cli/test_lock.sh - one trainer per run directory (issue 12, "two trainers on one run
# directory"), configs/tiny.toml:
#   1. while trainer A runs, trainer B on the same run is refused: exit 1, one stderr line
#      naming A's host and pid; A is untouched (it finishes its steps: stopped by SIGTERM it
#      exits 75 with its checkpoint, and metrics.jsonl holds each of its steps once)
#   2. a stale lock: A killed with kill -9 leaves the lock file (naming the dead A); B starts
#      anyway (flock locks die with their process) and rewrites it with its own pid
#   3. another run name in the same run_dir is not blocked
# Usage: bash test_lock.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR
set -u
BIN=${1:?usage: test_lock.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR}
SRC=${2:?}
SCRATCH=${3:?}
. "$(dirname "$0")/lib.sh"
# 3000 steps take ~7 s here: A is still running when B starts right after A's first step
TRAIN=("$BIN" train "$SRC/configs/tiny.toml" --set train.run_dir=runs --set data.dir=data
       --set train.val_every=0 --set train.val_batches=1 --set train.steps=3000)
wait_first_step() {
    for _ in $(seq 300); do
        grep -q '"type":"step"' "runs/$1/metrics.jsonl" 2> /dev/null && return 0
        sleep 0.1
    done
    return 1
}
HOST=$(hostname)

# ---- 1. a second trainer is refused ----
"${TRAIN[@]}" --set train.name=a > a.txt 2> a.err &
A=$!
wait_first_step a
"${TRAIN[@]}" --set train.name=a --set train.steps=5 > b.txt 2> b.err
rc=$?
check "B refused with status 1, got $rc ($(cat b.err))" "[ $rc -eq 1 ]"
check "one line naming A's host and pid" \
    "[ \$(wc -l < b.err) -eq 1 ] && grep -q \"'runs/a' is in use by host $HOST pid $A \" b.err"
check "B wrote nothing to the run (no 'dstrain train' banner in log.txt twice)" \
    "[ \$(grep -c '^step     1/' runs/a/log.txt) -eq 1 ]"
"${TRAIN[@]}" --set train.name=other --set train.steps=3 > other.txt 2>&1
check "3. another run in the same run_dir trains" "[ \$? -eq 0 ]"
kill -TERM $A
wait $A
rc=$?
check "A went on and stops normally (exit $rc)" "[ $rc -eq 75 ]"
check "A's steps once each in metrics.jsonl" "python3 -c \"
import json, collections
c = collections.Counter(json.loads(l)['step'] for l in open('runs/a/metrics.jsonl') if json.loads(l)['type'] == 'step')
assert max(c.values()) == 1\""

# ---- 2. the lock of a dead process ----
"${TRAIN[@]}" --set train.name=dead > dead.txt 2>&1 &
D=$!
wait_first_step dead
kill -9 $D
wait $D 2> /dev/null
check "the lock file names the dead trainer" "grep -q 'pid $D\$' runs/dead/lock"
"${TRAIN[@]}" --set train.name=dead --set train.steps=5 --resume auto > dead2.txt 2> dead2.err
rc=$?
check "a new trainer takes over the stale lock (exit $rc; $(cat dead2.err))" "[ $rc -eq 0 ]"
check "the lock file names the new one" "! grep -q 'pid $D\$' runs/dead/lock && grep -q '^host $HOST pid ' runs/dead/lock"
finish
