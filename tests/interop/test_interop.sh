# tests/interop/test_interop.sh - dstrain's files read by the Python ecosystem (issue 4,
# acceptance 4): a tiny model trained with MTP, its checkpoint read by h5py + hdf5plugin (every
# dataset, bit for bit against the export), and its export loaded by transformers'
# DeepseekV3ForCausalLM with no missing or unexpected weights, logits on a fixed batch equal
# to dstrain's within FP32 rounding. Exits 77 (ctest: skipped) when Python lacks h5py,
# hdf5plugin, numpy, torch or transformers.
# Usage: bash test_interop.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR   (PYTHON overrides python3)
set -u
BIN=${1:?usage: test_interop.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR}
SRC=${2:?}
SCRATCH=${3:?}
PY=${PYTHON:-python3}
TOOLS=$(cd "$(dirname "$BIN")" && pwd)/tests
if ! "$PY" -c "import h5py, hdf5plugin, numpy, torch, transformers" 2> /dev/null; then
    echo "SKIP: $PY cannot import h5py, hdf5plugin, numpy, torch and transformers"
    exit 77
fi
. "$SRC/tests/cli/lib.sh"

"$BIN" train "$SRC/configs/tiny.toml" --set train.run_dir=runs --set data.dir=data --set train.steps=10 \
    > train.txt 2>&1
ckpt=runs/tiny/ckpt-10
check "tiny trained" "[ -d $ckpt ]"
"$BIN" export --ckpt $ckpt --out hf > export.txt 2>&1
check "export ($(tail -c 200 export.txt))" "[ -s hf/config.json ]"
"$PY" "$SRC/tests/interop/check_h5py.py" $ckpt --export hf > h5py.txt 2>&1
check "h5py reads every dataset ($(tail -1 h5py.txt))" "[ \$? -eq 0 ]"
"$TOOLS/dump_logits" $ckpt tokens.bin logits.bin 2 > dump.txt 2>&1
check "dstrain's logits dumped" "[ -s logits.bin ]"
"$PY" "$SRC/tests/interop/check_hf.py" hf --tokens tokens.bin --logits logits.bin --batch 2 > hf.txt 2>&1
check "transformers loads the export and matches the logits ($(tail -1 hf.txt))" "[ \$? -eq 0 ]"
cat h5py.txt hf.txt | tail -6
finish
