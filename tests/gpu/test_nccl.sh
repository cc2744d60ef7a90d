# tests/gpu/test_nccl.sh - the nccl comm backend (test_nccl.c):
#   - without a GPU (CUDA_VISIBLE_DEVICES empty) creating it is a one-line error;
#   - the bootstrap: over mpirun (3 ranks) every rank receives rank 0's ncclUniqueId (needs no
#     GPU); without mpirun or MPI, the same on one rank;
#   - the collectives where a GPU is (one rank per GPU, up to 4 under mpirun); skipped, with
#     the reason printed, where none is.
# Usage: bash test_nccl.sh TEST_NCCL SOURCE_DIR SCRATCH_DIR
set -u
T=${1:?usage: test_nccl.sh TEST_NCCL SOURCE_DIR SCRATCH_DIR}
SRC=${2:?}
SCRATCH=${3:?}
BIN=$T
. "$SRC/tests/cli/lib.sh"

CUDA_VISIBLE_DEVICES= "$T" nogpu > out.txt 2> err.txt
rc=$?
check "no GPU: exit 1 with one line (exit $rc: $(head -c 300 err.txt))" \
    '[ $rc -eq 1 ] && [ "$(wc -l < err.txt)" -eq 1 ] && grep -q "comm nccl: no CUDA GPU" err.txt'

MPIRUN=(mpirun --allow-run-as-root --oversubscribe)
if command -v mpirun > /dev/null 2>&1 && ldd "$T" | grep -q libmpi; then
    timeout -k 5 60 "${MPIRUN[@]}" -np 3 "$T" bootstrap > boot.txt 2>&1
    rc=$?
    check "bootstrap on 3 ranks: every rank holds rank 0's id (exit $rc: $(tail -c 400 boot.txt))" \
        '[ $rc -eq 0 ] && [ "$(grep -c " 0 failed" boot.txt)" -eq 3 ]'
else
    echo "note: no mpirun or no MPI in this build: the bootstrap runs on one rank only"
    "$T" bootstrap > boot.txt 2>&1
    rc=$?
    check "bootstrap on one rank (exit $rc: $(tail -c 300 boot.txt))" '[ $rc -eq 0 ]'
fi

"$T" collectives > coll.txt 2>&1
rc=$?
if [ $rc -eq 77 ]; then
    echo "collectives: $(grep SKIP coll.txt)"
else
    check "collectives on one rank (exit $rc: $(tail -c 400 coll.txt))" '[ $rc -eq 0 ]'
    gpus=$(nvidia-smi -L 2> /dev/null | grep -c GPU)
    if [ "$gpus" -ge 2 ] && command -v mpirun > /dev/null 2>&1 && ldd "$T" | grep -q libmpi; then
        np=$(( gpus < 4 ? gpus : 4 ))
        timeout -k 5 120 "${MPIRUN[@]}" -np $np "$T" collectives > coll.np.txt 2>&1
        rc=$?
        check "collectives on $np ranks (exit $rc: $(tail -c 400 coll.np.txt))" \
            '[ $rc -eq 0 ] && [ "$(grep -c " 0 failed" coll.np.txt)" -eq $np ]'
    fi
fi
finish
