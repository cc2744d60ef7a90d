#!/bin/bash
# tests/interop/check_transformers.sh - by hand, not in CI: transformers itself loads a
# `dstrain export` of a freshly trained tiny model (no missing, unexpected or mismatched
# weights, no load warning) and reproduces dstrain's logits within the fixture rule (a small
# multiple of transformers' own FP32-vs-float64 floor; tests/interop/check_hf.py).
# CI holds the same parity through the fixtures (interop.hf_*, made by make_reference.py).
# Usage: bash tests/interop/check_transformers.sh BUILD_DIR PYTHON SCRATCH_DIR
#   BUILD_DIR holds dstrain and tests/dump_logits; PYTHON has torch + transformers, e.g.
#   python3 -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip install torch transformers safetensors
set -u
BUILD=$(cd "${1:?usage: check_transformers.sh BUILD_DIR PYTHON SCRATCH_DIR}" && pwd)
PY=${2:?}
SCRATCH=${3:?}
SRC=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$BUILD/dstrain
. "$SRC/tests/cli/lib.sh"

"$BIN" train "$SRC/configs/tiny.toml" --set train.run_dir=runs --set data.dir=data --set train.steps=10 \
    --set model.rms_norm_eps=1e-5 > train.txt 2>&1
ckpt=runs/tiny/ckpt-10
check "tiny trained (rms_norm_eps 1e-5)" "[ -d $ckpt ]"
"$BIN" export --ckpt $ckpt --out hf > export.txt 2>&1
check "export ($(tail -c 200 export.txt))" "[ -s hf/config.json ]"
"$BUILD/tests/dump_logits" $ckpt tokens.bin logits.bin 2 > dump.txt 2>&1
check "dstrain's logits dumped" "[ -s logits.bin ]"
"$PY" "$SRC/tests/interop/check_hf.py" hf --tokens tokens.bin --logits logits.bin --batch 2 > hf.txt 2>&1
rc=$?   # taken at once: the $(...) in check's description would reset $?
check "transformers loads the export and matches the logits ($(tail -1 hf.txt))" "[ $rc -eq 0 ] && ! grep -q SKIP hf.txt"
tail -4 hf.txt
finish
