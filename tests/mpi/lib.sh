# tests/mpi/lib.sh - what every MPI test script shares. Source it after setting SCRATCH: it
# skips the test (exit 77, which ctest reports as skipped) with its reason when mpirun is
# absent, makes and enters a fresh scratch directory, and defines
#   MPIRUN                      mpirun with the flags every test needs: running as root
#                               allowed, more ranks than cores allowed
# and points LeakSanitizer at lsan.supp (OpenMPI's own allocations) for sanitizer builds.
#   run_mpi NP OUT ARGS...      `timeout 60 mpirun -np NP ARGS...`, stdout and stderr to OUT;
#                               sets RC (exit status; 124 = timed out) and ELAPSED (seconds)
#   check DESCRIPTION CONDITION passes when CONDITION (shell text) succeeds (status 1 if not)
#   show OUT                    prints the tail of a run's output (after a failed check)
#   finish                      prints "N passed, N failed"; exit status 1 on any failure
#   use_dstrain                 DSTRAIN = the dstrain binary beside BIN_DIR (the test programs'
#                               directory), and ranks that yield while they wait (oversubscribed)
if ! command -v mpirun > /dev/null 2>&1; then
    echo "SKIP: mpirun not found (install openmpi-bin to run the MPI tests)"
    exit 77
fi
MPIRUN=(mpirun --allow-run-as-root --oversubscribe)
# sanitizer builds: full stacks, so that OpenMPI's own allocations can be told from dstrain's
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}fast_unwind_on_malloc=0"
SUPP=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lsan.supp
export LSAN_OPTIONS="${LSAN_OPTIONS:+$LSAN_OPTIONS:}suppressions=$SUPP:print_suppressions=0"
rm -rf "$SCRATCH"
mkdir -p "$SCRATCH"
cd "$SCRATCH" || exit 1

passed=0
failed=0
check() {
    if eval "$2"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL: $1"
        return 1
    fi
}

run_mpi() {
    local np=$1 out=$2
    shift 2
    local t0=$SECONDS
    timeout -k 5 60 "${MPIRUN[@]}" -np "$np" "$@" > "$out" 2>&1
    RC=$?
    ELAPSED=$((SECONDS - t0))
}

show() { echo "---- $1"; tail -n 30 "$1"; echo "----"; }

finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
}

use_dstrain() {
    export OMPI_MCA_mpi_yield_when_idle=1
    DSTRAIN="$BIN_DIR/../dstrain"
    [ -x "$DSTRAIN" ] || DSTRAIN="$BIN_DIR/dstrain"
}
