# tests/interop/test_fp8_ml_dtypes.sh - kernels/fp8.h against PyPI's ml_dtypes (issue 10,
# acceptance 1): tests/tools/fp8_dump prints the header's encodings of a dense set of floats and
# some quantised tiles; test_fp8_ml_dtypes.py recomputes them with numpy + ml_dtypes.
# Python: ${DSTRAIN_TEST_PYTHON:-python3} (./build.sh test makes a venv from
# tests/requirements.txt). Without ml_dtypes the test skips (exit 77), except under CI, where
# it fails: CI installs the requirements, so a missing package there is a broken install.
# Usage: bash test_fp8_ml_dtypes.sh FP8_DUMP_BINARY SOURCE_DIR SCRATCH_DIR
set -u
DUMP=${1:?usage: test_fp8_ml_dtypes.sh FP8_DUMP_BINARY SOURCE_DIR SCRATCH_DIR}
SRC=${2:?}
SCRATCH=${3:?}
PY=${DSTRAIN_TEST_PYTHON:-python3}
if ! "$PY" -c "import ml_dtypes, numpy" 2> /dev/null; then
    if [ -n "${CI:-}" ]; then
        echo "FAIL: $PY cannot import ml_dtypes and numpy (CI must install tests/requirements.txt)"
        exit 1
    fi
    echo "SKIP: $PY cannot import ml_dtypes and numpy (pip install -r tests/requirements.txt)"
    exit 77
fi
SEED=${DSTRAIN_TEST_SEED:-$(date +%s)}
echo "seed $SEED (set DSTRAIN_TEST_SEED to replay)"
rm -rf "$SCRATCH" && mkdir -p "$SCRATCH" || exit 1
if ! "$DUMP" "$SEED" > "$SCRATCH/dump.txt"; then
    echo "FAIL: fp8_dump exited non-zero"
    exit 1
fi
"$PY" "$SRC/tests/interop/test_fp8_ml_dtypes.py" "$SCRATCH/dump.txt"
rc=$?
[ $rc -eq 0 ] && rm -rf "$SCRATCH"
exit $rc
