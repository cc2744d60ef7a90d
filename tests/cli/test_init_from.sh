# tests/cli/test_init_from.sh - `dstrain train --init-from HF_DIR` starts from exported weights
# (issue 4): tiny trained 10 steps, exported, then a new run started from the export with a
# learning rate of 1e-30 (its update, ~1e-31 of a weight, rounds away in FP32) and gamma 0
# (router biases untouched): both checkpoints give bit-identical logits on a fixed batch.
# Also: a directory that lacks a tensor is refused naming it; --init-from with --resume too.
# Usage: bash test_init_from.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR
set -u
BIN=${1:?usage: test_init_from.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR}
SRC=${2:?}
SCRATCH=${3:?}
DUMP=$(cd "$(dirname "$BIN")" && pwd)/tests/dump_logits
. "$(dirname "$0")/lib.sh"

SET=(--set train.run_dir=runs --set data.dir=data --set train.val_every=0 --set train.val_batches=1)
"$BIN" train "$SRC/configs/tiny.toml" "${SET[@]}" --set train.name=a --set train.steps=10 > a.txt 2>&1
check "tiny trained" "[ -d runs/a/ckpt-10 ]"
"$BIN" export --ckpt runs/a/ckpt-10 --out hf > export.txt 2>&1
check "exported" "[ -s hf/config.json ]"
"$BIN" train "$SRC/configs/tiny.toml" "${SET[@]}" --set train.name=b --set train.steps=1 \
    --set optim.lr=1e-30 --set optim.lr_min=0 --set moe.bias_update_speed=0 --init-from hf > b.txt 2>&1
check "training from the export starts ($(grep init-from b.txt))" "grep -q 'init-from: ' b.txt && [ -d runs/b/ckpt-1 ]"
"$DUMP" runs/a/ckpt-10 tok_a.bin logits_a.bin 2 > /dev/null
"$DUMP" runs/b/ckpt-1 tok_b.bin logits_b.bin 2 > /dev/null
check "the same logits, bit for bit" "cmp -s logits_a.bin logits_b.bin && [ -s logits_a.bin ]"

rm hf/mtp.safetensors
expect_error "init-from: " train "$SRC/configs/tiny.toml" "${SET[@]}" --set train.name=c --init-from hf
expect_error "not both" train "$SRC/configs/tiny.toml" "${SET[@]}" --set train.name=a --init-from hf --resume latest
finish
