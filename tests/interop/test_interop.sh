# tests/interop/test_interop.sh - dstrain's checkpoint read by the Python ecosystem (issue 4,
# acceptance 4): a tiny model trained with MTP, its checkpoint read by h5py + hdf5plugin (every
# dataset, bit for bit against the export). Python is ${DSTRAIN_TEST_PYTHON:-python3}; `./build.sh
# test` points DSTRAIN_TEST_PYTHON at a venv with tests/requirements.txt, and there a missing
# package is a failure. Outside it (DSTRAIN_TEST_PYTHON unset) a python3 without h5py,
# hdf5plugin or numpy makes the test report skipped (exit 77).
# Hugging Face parity is not here: the interop.hf_* fixture tests hold it on every run without
# torch, and check_transformers.sh runs transformers itself on an export, by hand.
# Usage: bash test_interop.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR
set -u
BIN=${1:?usage: test_interop.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR}
SRC=${2:?}
SCRATCH=${3:?}
PY=${DSTRAIN_TEST_PYTHON:-python3}
if ! "$PY" -c "import h5py, hdf5plugin, numpy" 2> /dev/null; then
    if [ -n "${DSTRAIN_TEST_PYTHON:-}" ]; then
        echo "FAIL: $PY cannot import h5py, hdf5plugin and numpy (pip install -r tests/requirements.txt)"
        exit 1
    fi
    echo "SKIP: $PY cannot import h5py, hdf5plugin and numpy (./build.sh test installs them)"
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
rc=$?   # taken at once: the $(...) in check's description would reset $?
check "h5py reads every dataset ($(tail -1 h5py.txt))" "[ $rc -eq 0 ] && ! grep -q SKIP h5py.txt"
tail -3 h5py.txt
finish
