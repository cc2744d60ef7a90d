# tests/cli/test_init_from.sh - `dstrain train --init-from HF_DIR` starts from exported weights
# (issue 4): tiny trained 10 steps, exported, then a new run started from the export with a
# learning rate of 1e-30 (its update, ~1e-31 of a weight, rounds away in FP32) and gamma 0
# (router biases untouched): both checkpoints give bit-identical logits on a fixed batch.
# Issue 9: config.json is held against the TOML (a key that changes no shape is refused too,
# one line naming it with both values), the export's routing rule applies on import, a YaRN
# export writes attention_factor and a config.json without it (mscale 0) is refused, and a
# transformers save_pretrained directory (the lite fixture, no MTP weights) starts its MTP
# modules fresh and says so. Also: --init-from with --resume is refused.
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

expect_error "init-from: 'routed_scaling_factor' = 2.5 in 'hf/config.json' but 2 in the config" \
    train "$SRC/configs/tiny.toml" "${SET[@]}" --set train.name=c --set model.routed_scaling_factor=2 --init-from hf
expect_error "init-from: 'rms_norm_eps' = 1e-06 in 'hf/config.json' but 1e-05 in the config" \
    train "$SRC/configs/tiny.toml" "${SET[@]}" --set train.name=c --set model.rms_norm_eps=1e-5 --init-from hf
expect_error "init-from: rope type 'none' in 'hf/config.json' but 'yarn' in the config" \
    train "$SRC/configs/tiny.toml" "${SET[@]}" --set train.name=c --set model.rope_scaling.type=yarn --init-from hf
expect_error "init-from: this model scores an expert group by its 1 best" \
    train "$SRC/configs/tiny.toml" "${SET[@]}" --set train.name=c --set model.topk_group=2 --init-from hf

# YaRN with mscale 0: the export says attention_factor; without it transformers would use another scale
YARN=(--set model.rope_scaling.type=yarn --set model.rope_scaling.factor=4 --set model.rope_scaling.mscale=0
      --set model.rope_scaling.original_max_position_embeddings=8)
"$BIN" train "$SRC/configs/tiny.toml" "${SET[@]}" "${YARN[@]}" --set train.name=y --set train.steps=1 > y.txt 2>&1
"$BIN" export --ckpt runs/y/ckpt-1 --out hfy > /dev/null 2>&1
check "a YaRN export writes attention_factor = 1 / (0.1 ln 4 + 1)" "grep -q '\"attention_factor\": 0.8782' hfy/config.json"
sed -i 's/"attention_factor": [0-9.e+-]*/"attention_factor": null/' hfy/config.json
expect_error "init-from: 'rope_scaling.attention_factor' (the cos/sin scale) is 1.1386294361119891 for transformers in .hfy/config.json. but 0.87824885628694" \
    train "$SRC/configs/tiny.toml" "${SET[@]}" "${YARN[@]}" --set train.name=c --init-from hfy

# a transformers save_pretrained directory: no MTP weights although its config has an MTP layer
cp -r "$SRC/tests/interop/fixtures/lite" lite
rm lite/mtp.safetensors
"$BIN" train lite/model.toml "${SET[@]}" --set data.synthetic=true --set data.synthetic_tokens=4000 \
    --set train.name=l --set train.steps=1 --init-from lite > l.txt 2>&1
check "a transformers save starts, its MTP modules fresh ($(grep 'MTP' l.txt | head -1))" \
    "[ -d runs/l/ckpt-1 ] && grep -q \"init-from: 'lite' holds no MTP weights (a transformers save never does): the 2 MTP modules start fresh\" l.txt"
expect_error "not both" train "$SRC/configs/tiny.toml" "${SET[@]}" --set train.name=a --init-from hf --resume latest
finish
