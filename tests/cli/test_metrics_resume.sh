# tests/cli/test_metrics_resume.sh - metrics.jsonl after a resume holds every step once
# (issue 12: the old code kept the re-done steps twice), configs/tiny.toml:
#   1. kill -9 between checkpoints, --resume latest: records past the checkpoint are dropped
#      (the file rewritten, the drop reported), steps 1..N appear once each, and their losses
#      equal those of an uninterrupted run (17 significant digits: bit-identical doubles)
#   2. a torn last line (a kill in the middle of a write) and val/final records past the
#      resumed step are dropped too; records up to it are kept as they were
# Usage: bash test_metrics_resume.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR
set -u
BIN=${1:?usage: test_metrics_resume.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR}
SRC=${2:?}
SCRATCH=${3:?}
. "$(dirname "$0")/lib.sh"
TRAIN=("$BIN" train "$SRC/configs/tiny.toml" --set train.run_dir=runs --set data.dir=data
       --set train.val_every=0 --set train.val_batches=1)
losses() {  # losses RUN: "step loss" of every step record, in file order
    python3 -c "
import json
for l in open('runs/$1/metrics.jsonl'):
    r = json.loads(l)
    if r['type'] == 'step': print(r['step'], repr(r['loss']))"
}
wait_step() {  # wait_step RUN N: until metrics.jsonl has a step record >= N (<= 60 s)
    for _ in $(seq 600); do
        [ -f "runs/$1/metrics.jsonl" ] && python3 -c "
import json, sys
s = [json.loads(l)['step'] for l in open('runs/$1/metrics.jsonl') if '\"type\":\"step\"' in l and l.endswith('\n')]
sys.exit(0 if s and max(s) >= $2 else 1)" && return 0
        sleep 0.1
    done
    return 1
}

# ---- 1. kill -9 between checkpoints ----
STEPS=1500
"${TRAIN[@]}" --set train.name=ref --set train.steps=$STEPS > ref.txt 2>&1
"${TRAIN[@]}" --set train.name=k --set train.steps=$STEPS --set train.checkpoint_every=200 > k.txt 2>&1 &
pid=$!
wait_step k 250          # past the first checkpoint (200), before the run ends (1500)
kill -9 $pid
wait $pid 2> /dev/null
before=$(losses k | wc -l)
"${TRAIN[@]}" --set train.name=k --set train.steps=$STEPS --resume latest > k2.txt 2>&1
from=$(sed -n "s/^resume: step \([0-9]*\),.*/\1/p" k2.txt)
check "resumed from a checkpoint ($from) behind the last logged step (killed after $before steps)" \
    "[ -n '$from' ] && [ $from -lt $before ]"
check "the dropped records are reported" "grep -q 'metrics: dropped [0-9]* records past step $from' k2.txt"
check "steps 1..$STEPS once each, equal to the uninterrupted run" "diff <(losses ref) <(losses k) > diff.txt"

# ---- 2. a torn last line, val and final records past the resumed step ----
"${TRAIN[@]}" --set train.name=t --set train.steps=25 --set train.checkpoint_every=10 --set train.val_every=10 \
    > t1.txt 2>&1
rm -rf runs/t/ckpt-25 runs/t/ckpt-20
printf '{"type":"step","step":26,"lo' >> runs/t/metrics.jsonl
head -n "$(grep -n '"type":"val","step":10' runs/t/metrics.jsonl | cut -d: -f1)" runs/t/metrics.jsonl > kept.jsonl
"${TRAIN[@]}" --set train.name=t --set train.steps=30 --set train.checkpoint_every=10 --set train.val_every=10 \
    --resume latest > t2.txt 2>&1
check "resumed from ckpt-10" "grep -q \"resume: from 'runs/t/ckpt-10'\" t2.txt"
check "the records up to step 10 are kept as they were" \
    "[ \"\$(head -n \$(wc -l < kept.jsonl) runs/t/metrics.jsonl)\" = \"\$(cat kept.jsonl)\" ]"
check "every line parses, each step/val record once, one final at 30" "python3 -c \"
import json, collections
rs = [json.loads(l) for l in open('runs/t/metrics.jsonl')]
c = collections.Counter((r['type'], r['step']) for r in rs if 'step' in r)
assert max(c.values()) == 1, c.most_common(3)
assert sorted(s for t, s in c if t == 'step') == list(range(1, 31))
assert [s for t, s in c if t == 'final'] == [30]\""
finish
