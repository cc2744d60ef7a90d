#!/bin/bash
# tests/cli/test_inspect.sh - `dstrain inspect` and `dstrain export` end to end.
# Usage: bash test_inspect.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR
#
# What it checks: a checkpoint written by `dstrain train` (tiny config, 4 steps, one every
# 2) is listed with its step, tensors (name, shape, dtype, sizes), totals and state, and
# verifies (exit 0); a flipped byte or a truncation of the .h5 or of manifest.json makes
# inspect exit 1 with a message naming that file; a directory without a manifest is refused;
# export writes config.json, model.safetensors and mtp.safetensors, shards with an index
# under a small --shard-bytes, and refuses a damaged checkpoint naming the file; --help of
# both exits 0. Not here: the formats' contents (tests/unit/test_ckpt.c), transformers
# loading the export (tests/interop/check_hf.py).
set -u
BIN=$1
SRC=$2
SCRATCH=$3
rm -rf "$SCRATCH"
mkdir -p "$SCRATCH"
cd "$SCRATCH" || exit 1
passed=0
failed=0

ok() { passed=$((passed + 1)); }
bad() { failed=$((failed + 1)); echo "FAIL: $*"; }
expect_in() {   # expect_in FILE TEXT WHAT
    if grep -qF -- "$2" "$1"; then ok; else bad "$3: '$2' not in output:"; sed 's/^/    /' "$1" | head -20; fi
}
# Change one byte of a file at an offset (xor 0x10), like a bit rot on disk.
flip_byte() {
    local file=$1 at=$2 byte
    byte=$(od -An -tu1 -j "$at" -N1 "$file" | tr -d ' ')
    printf "$(printf '\\%03o' $(( byte ^ 16 )))" | dd of="$file" bs=1 seek="$at" conv=notrunc status=none
}
# Run dstrain with stdout in out.txt and stderr in err.txt; it must succeed / fail.
must_pass() { if "$BIN" "$@" > out.txt 2> err.txt; then ok; else bad "'dstrain $*' failed: $(head -3 err.txt)"; fi; }
must_fail() { if "$BIN" "$@" > out.txt 2> err.txt; then bad "'dstrain $*' exited 0"; else ok; fi; }
# A fresh copy of the good checkpoint to damage.
copy_ckpt() { rm -rf "$1"; cp -r runs/t/ckpt-4 "$1"; }

"$BIN" inspect --help > help.txt 2>&1 && ok || bad "inspect --help exit status"
expect_in help.txt "usage: dstrain inspect" "inspect --help"
"$BIN" export --help > help.txt 2>&1 && ok || bad "export --help exit status"
expect_in help.txt "--shard-bytes" "export --help"

# tiny keeps topk_group = 1: groups scored by their 2 best experts, as transformers does (see export)
"$BIN" train "$SRC/configs/tiny.toml" --set train.run_dir="$SCRATCH/runs" --set train.name=t \
    --set train.steps=4 --set train.checkpoint_every=2 --set data.dir="$SCRATCH/data" \
    --set data.synthetic=true --set model.topk_group=1 > train.txt 2>&1 || { bad "train failed"; cat train.txt; }
[ -d runs/t/ckpt-4 ] && ok || bad "train left no runs/t/ckpt-4"

must_pass inspect runs/t/ckpt-4
expect_in out.txt "step 4 |" "inspect: step"
expect_in out.txt "layout: world size 1" "inspect: layout"
expect_in out.txt "model.embed_tokens.weight" "inspect: tensor list"
expect_in out.txt "model.layers.1.mlp.gate.e_score_correction_bias.exp_avg_sq" "inspect: moments listed"
expect_in out.txt "(32,32)" "inspect: shapes"
expect_in out.txt "float32" "inspect: dtype"
expect_in out.txt "compression ratio" "inspect: totals"
expect_in out.txt "state (rank-00000.h5): step 4" "inspect: state"
expect_in out.txt "verified:" "inspect: verification line"

damage_case() {   # damage_case NAME FILE HOW EXPECTED_TEXT
    copy_ckpt "$1"
    local f="$1/$2" size
    size=$(stat -c %s "$f")
    if [ "$3" = flip ]; then flip_byte "$f" $(( size / 2 )); else truncate -s $(( size / 2 )) "$f"; fi
    must_fail inspect "$1"
    expect_in err.txt "'$2'" "inspect $1: file named"
    expect_in err.txt "$4" "inspect $1: reason"
}
damage_case runs/t/ckpt-h5flip rank-00000.h5 flip "checksum mismatch"
damage_case runs/t/ckpt-h5cut rank-00000.h5 cut "truncated"
damage_case runs/t/ckpt-mfcut manifest.json cut "manifest.json"
# a flipped byte inside the manifest's config text (still valid JSON) is caught by its own checksum
copy_ckpt runs/t/ckpt-mfflip
at=$(grep -bo 'hidden_size = 32' runs/t/ckpt-mfflip/manifest.json | head -1 | cut -d: -f1)
flip_byte runs/t/ckpt-mfflip/manifest.json $(( at + 14 ))
must_fail inspect runs/t/ckpt-mfflip
expect_in err.txt "'manifest.json' checksum mismatch" "inspect: flipped manifest"
mkdir -p runs/t/ckpt-9.tmp
must_fail inspect runs/t/ckpt-9.tmp
expect_in err.txt "manifest.json" "inspect: no manifest"

must_pass export --ckpt runs/t/ckpt-4 --out hf
for f in config.json model.safetensors mtp.safetensors; do [ -s "hf/$f" ] && ok || bad "export: no hf/$f"; done
expect_in hf/config.json '"model_type": "deepseek_v3"' "export: config.json"
expect_in hf/config.json '"rope_interleave": true' "export: rope_interleave"
must_pass export --ckpt runs/t/ckpt-4 --out hf --shard-bytes 20000
[ -s hf/model.safetensors.index.json ] && [ ! -e hf/model.safetensors ] && ok ||
    bad "sharded export: no index, or a stale model.safetensors"
n=$(ls hf | grep -c '^model-[0-9]*-of-[0-9]*\.safetensors$')
[ "$n" -ge 2 ] && ok || bad "sharded export made $n shard(s)"
must_fail export --ckpt runs/t/ckpt-h5flip --out hf2
expect_in err.txt "rank-00000.h5" "export: damaged file named"

# 2 of 4 groups kept with top-2 routing scores groups by their best 1: transformers cannot run that
"$BIN" train "$SRC/configs/tiny.toml" --set train.run_dir="$SCRATCH/runs" --set train.name=t1 \
    --set train.steps=2 --set train.checkpoint_every=2 --set data.dir="$SCRATCH/data" \
    --set data.synthetic=true --set model.topk_group=2 > train.txt 2>&1 || { bad "train (topk_group 2) failed"; cat train.txt; }
must_fail export --ckpt runs/t1/ckpt-2 --out hf3
expect_in err.txt "num_experts_per_tok / topk_group" "export: routing refusal names the keys"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
