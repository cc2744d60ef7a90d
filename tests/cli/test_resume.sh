# tests/cli/test_resume.sh - checkpoints survive and resume bit for bit (issue 4, acceptance
# 1-3), on configs/tiny.toml (MTP on, bias update on):
#   1. 20 steps straight == 8 steps, stop, --resume latest, 12 more: every logged loss (17
#      significant digits, so the doubles compare exactly) and the final weights, moments and
#      state bit-identical. Warm-up ends at step 10, lambda switches after step 12 and gamma
#      stops after step 15, so the resumed part crosses all three schedule boundaries.
#   2. kill -9 at each phase of a save (DSTRAIN_CKPT_CRASH_AT): the previous checkpoint stays
#      valid, --resume latest continues from it (never from a .tmp) and reaches the same final
#      state as an uninterrupted run.
#   3. a flipped byte and a truncated file are caught by inspect and by --resume, naming the
#      file; latest falls back to the previous good checkpoint.
# Usage: bash test_resume.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR
set -u
BIN=${1:?usage: test_resume.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR}
SRC=${2:?}
SCRATCH=${3:?}
COMPARE=$(cd "$(dirname "$BIN")" && pwd)/tests/ckpt_compare
. "$(dirname "$0")/lib.sh"

# tiny: 2 micro-batches x 4 x 16 = 128 tokens per step
TRAIN=("$BIN" train "$SRC/configs/tiny.toml" --set train.run_dir=runs --set data.dir=data
       --set train.val_every=0 --set train.val_batches=1 --set optim.warmup_steps=10
       --set mtp.lambda_switch_tokens=1536 --set moe.bias_update_speed=0.01
       --set moe.bias_update_stop_tokens=1920)
losses() {  # losses RUN: "step loss mtp_loss" for every step record, exact text
    python3 -c "
import json, sys
for l in open('runs/$1/metrics.jsonl'):
    r = json.loads(l)
    if r['type'] == 'step': print(r['step'], repr(r['loss']), repr(r['mtp_loss']))"
}

# ---- 1. bitwise resume across schedule boundaries ----
"${TRAIN[@]}" --set train.name=straight --set train.steps=20 > straight.txt 2>&1
check "straight run ($(tail -c 200 straight.txt))" "[ -d runs/straight/ckpt-20 ]"
"${TRAIN[@]}" --set train.name=split --set train.steps=8 > split1.txt 2>&1
check "first half" "[ -d runs/split/ckpt-8 ]"
"${TRAIN[@]}" --set train.name=split --set train.steps=20 --resume latest > split2.txt 2>&1
check "resume says where it starts ($(grep resume: split2.txt | head -2 | tr '\n' ' '))" \
    "grep -q \"resume: from 'runs/split/ckpt-8'\" split2.txt"
check "resume reports the changed key" "grep -q \"'train.steps' changed\" split2.txt"
check "20 identical step losses" "diff <(losses straight) <(losses split) > diff.txt && [ \$(losses split | wc -l) -eq 20 ]"
check "final weights, moments and state bit-identical ($("$COMPARE" runs/straight/ckpt-20 runs/split/ckpt-20 2>&1))" \
    "'$COMPARE' runs/straight/ckpt-20 runs/split/ckpt-20 > /dev/null"
# an explicit directory works too
"${TRAIN[@]}" --set train.name=split --set train.steps=20 --resume runs/split/ckpt-8 > split3.txt 2>&1
check "--resume DIR reaches the same state" "'$COMPARE' runs/straight/ckpt-20 runs/split/ckpt-20 > /dev/null"
# a changed model shape is refused
"${TRAIN[@]}" --set train.name=split --set train.steps=20 --set model.hidden_size=48 --resume latest \
    > /dev/null 2> shape.err
check "a changed model shape is refused ($(cat shape.err))" \
    "grep -q \"'model.hidden_size' differs\" shape.err && [ \$(wc -l < shape.err) -eq 1 ]"

# ---- 2. kill -9 during a save, at every phase ----
"${TRAIN[@]}" --set train.name=ref --set train.steps=12 > ref.txt 2>&1
for phase in during-tmp-files after-tmp-files after-manifest before-rename after-rename; do
    run=crash-$phase
    DSTRAIN_CKPT_CRASH_AT=$phase DSTRAIN_CKPT_CRASH_STEP=8 "${TRAIN[@]}" --set train.name=$run \
        --set train.steps=12 --set train.checkpoint_every=4 > $run.txt 2>&1
    rc=$?
    check "$phase: the process was killed (exit $rc)" "[ $rc -eq 137 ]"
    check "$phase: ckpt-4 verifies" "'$BIN' inspect runs/$run/ckpt-4 > /dev/null 2>&1"
    want=runs/$run/ckpt-4
    [ $phase = after-rename ] && want=runs/$run/ckpt-8
    "${TRAIN[@]}" --set train.name=$run --set train.steps=12 --set train.checkpoint_every=4 \
        --resume latest > $run.resume.txt 2>&1
    check "$phase: resumed from $want ($(grep 'resume: from' $run.resume.txt))" \
        "grep -q \"resume: from '$want'\" $run.resume.txt"
    check "$phase: the continued run equals the uninterrupted one" \
        "'$COMPARE' runs/ref/ckpt-12 runs/$run/ckpt-12 > /dev/null"
    check "$phase: no .tmp directory is left" "[ -z \"\$(ls -d runs/$run/*.tmp 2> /dev/null)\" ]"
done

# ---- 3. damaged checkpoints ----
"${TRAIN[@]}" --set train.name=damage --set train.steps=15 --set train.checkpoint_every=5 > damage.txt 2>&1
check "three checkpoints" "[ -d runs/damage/ckpt-5 ] && [ -d runs/damage/ckpt-10 ] && [ -d runs/damage/ckpt-15 ]"
f=runs/damage/ckpt-15/rank-00000.h5
size=$(stat -c %s $f)
printf '\xff' | dd of=$f bs=1 seek=$((size / 2)) conv=notrunc 2> /dev/null
"$BIN" inspect runs/damage/ckpt-15 > inspect.txt 2>&1
rc=$?
check "inspect catches a flipped byte naming the file (exit $rc)" \
    "[ $rc -ne 0 ] && grep -q 'rank-00000.h5' inspect.txt"
truncate -s -1000 runs/damage/ckpt-10/rank-00000.h5
"$BIN" inspect runs/damage/ckpt-10 > inspect2.txt 2>&1
check "inspect catches a truncated file" "[ \$? -ne 0 ] && grep -q 'rank-00000.h5' inspect2.txt"
"${TRAIN[@]}" --set train.name=damage --set train.steps=16 --resume latest > damage2.txt 2>&1
check "latest skips both damaged checkpoints, saying why, and resumes from ckpt-5" \
    "grep -q 'ckpt-15' damage2.txt && grep -q 'ckpt-10' damage2.txt && grep -q \"resume: from 'runs/damage/ckpt-5'\" damage2.txt"
"${TRAIN[@]}" --set train.name=damage --set train.steps=16 --resume runs/damage/ckpt-15 > /dev/null 2> damage3.err
check "--resume of a damaged checkpoint fails naming the file ($(cat damage3.err))" \
    "grep -q 'rank-00000.h5' damage3.err && [ \$(wc -l < damage3.err) -eq 1 ]"
finish
