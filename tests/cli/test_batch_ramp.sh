# tests/cli/test_batch_ramp.sh - the batch-size ramp (SPEC.md section 7; issue 12), on
# configs/tiny.toml with grad_accum = 4 and a ramp from 1 micro-batch per step over 1280 tokens
# (a micro-batch is 4 x 16 = 64 tokens):
#   1. the tokens of every step follow the rule: accum = 1 + floor(3 * tokens / 1280) micro-
#      batches until 1280 tokens are seen, 4 after (tokens per step 64, 64, ..., 256)
#   2. resume across the ramp is exact: 20 steps straight == 7 steps, --resume latest, 13 more
#      (the ramp is a function of the checkpointed tokens): every step loss and the final
#      weights, moments and state bit-identical
#   3. a ramp that starts above grad_accum, or has no length, is a one-line config error
# Usage: bash test_batch_ramp.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR
set -u
BIN=${1:?usage: test_batch_ramp.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR}
SRC=${2:?}
SCRATCH=${3:?}
COMPARE=$(cd "$(dirname "$BIN")" && pwd)/tests/ckpt_compare
. "$(dirname "$0")/lib.sh"
TRAIN=("$BIN" train "$SRC/configs/tiny.toml" --set train.run_dir=runs --set data.dir=data
       --set train.val_every=0 --set train.val_batches=1 --set train.grad_accum=4
       --set train.batch_ramp_start=1 --set train.batch_ramp_tokens=1280 --set optim.decay_steps=15)
# (decay_steps fixed: by default the cosine decay runs to train.steps, which the split run changes)
records() {  # records RUN: "step tokens loss" of every step record
    python3 -c "
import json
for l in open('runs/$1/metrics.jsonl'):
    r = json.loads(l)
    if r['type'] == 'step': print(r['step'], r['tokens'], repr(r['loss']))"
}

"${TRAIN[@]}" --set train.name=straight --set train.steps=20 > straight.txt 2>&1
check "ramped run finishes ($(tail -c 200 straight.txt))" "[ -d runs/straight/ckpt-20 ]"
check "the banner reports the ramp" "grep -q 'batch ramp: 1 micro-batches per step at the start' straight.txt"
check "tokens per step follow the ramp rule" "records straight | python3 -c \"
import sys
tokens, want = 0, []
for step in range(1, 21):
    accum = 4 if tokens >= 1280 else 1 + (3 * tokens) // 1280
    tokens += accum * 64
    want.append(tokens)
got = [int(l.split()[1]) for l in sys.stdin]
assert got == want, (got, want)
assert got[0] == 64 and got[-1] - got[-2] == 256\""

"${TRAIN[@]}" --set train.name=split --set train.steps=7 > split1.txt 2>&1
"${TRAIN[@]}" --set train.name=split --set train.steps=20 --resume latest > split2.txt 2>&1
check "resumed inside the ramp" "grep -q \"resume: from 'runs/split/ckpt-7'\" split2.txt"
check "20 identical step records (tokens and losses)" "diff <(records straight) <(records split) > diff.txt"
check "final state bit-identical ($("$COMPARE" runs/straight/ckpt-20 runs/split/ckpt-20 2>&1))" \
    "'$COMPARE' runs/straight/ckpt-20 runs/split/ckpt-20 > /dev/null"

expect_error "'train.batch_ramp_start' = 5 exceeds 'train.grad_accum' = 4" train "$SRC/configs/tiny.toml" \
    --set train.grad_accum=4 --set train.batch_ramp_start=5 --set train.batch_ramp_tokens=100
expect_error "needs 'train.batch_ramp_tokens' > 0" train "$SRC/configs/tiny.toml" --set train.batch_ramp_start=1
finish
