#!/usr/bin/env bash
# tests/cli/test_slurm.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR - a one-machine Slurm cluster
# (munged, slurmctld, slurmd from Debian's slurm-wlm and munge packages, started here by hand,
# every file in a temporary directory, ports picked at random) runs 2-rank MPI jobs of
# comm_mpi_test (next to dstrain, in tests/):
#   - sbatch -n 2 --wrap "mpirun ...": inside it every rank inherits SLURM_PROCID=0, yet the
#     ranks must report ranks 0 and 1 of 2 (rank identity comes from MPI, not Slurm)
#   - srun --mpi=pmix -n 2: no OMPI_* variables; again ranks 0 and 1 of 2
#   - srun --mpi=none -n 2: the tasks cannot find each other; each stops with a message that
#     points at --mpi=pmix instead of training alone
# The daemons are stopped by PID and the directory removed at exit. Skips (exit 77) with the
# reason when Slurm, munge or mpirun are not installed (the test installs nothing;
# `./build.sh test` does), when not root, or when the daemons do not come up; with CI=true each
# of these fails instead. Every step is bounded by a timeout.
BIN=$1
SCRATCH=$3
DRIVER=$(cd "$(dirname "$BIN")" && pwd)/tests/comm_mpi_test
# in CI (CI=true) a missing piece is a failure: ./build.sh test installs Slurm and munge
skip() {
    if [ "${CI:-}" = true ]; then echo "FAIL: $* (CI=true: ./build.sh test installs what this test needs)"; exit 1; fi
    echo "SKIP: $*"; exit 77
}

for tool in munged slurmctld slurmd sbatch srun scontrol sinfo scancel mpirun setpriv; do
    command -v "$tool" > /dev/null 2>&1 || skip "'$tool' not found (needs Debian's slurm-wlm, munge and openmpi-bin)"
done
[ "$(id -u)" -eq 0 ] || skip "slurmd must run as root on a one-machine cluster"
[ -x "$DRIVER" ] || skip "no '$DRIVER' (built only with MPI)"
[ -r /etc/munge/munge.key ] || skip "no munge key at /etc/munge/munge.key"

# sanitizer builds: OpenMPI's own allocations are not dstrain's leaks (tests/mpi/lsan.supp)
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}fast_unwind_on_malloc=0"
export LSAN_OPTIONS="${LSAN_OPTIONS:+$LSAN_OPTIONS:}suppressions=$2/tests/mpi/lsan.supp:print_suppressions=0"

rm -rf "$SCRATCH"
mkdir -p "$SCRATCH"
cd "$SCRATCH" || exit 1
# a short path: the munge socket path must fit a sockaddr_un
TMP=$(mktemp -d /tmp/dstrain-slurm.XXXXXX)
chmod 0755 "$TMP"   # munged (as user munge) must reach its directory
PIDS=()
cleanup() {
    local p
    if [ -n "${SLURM_CONF:-}" ]; then timeout 10 scancel --quiet --user=root > /dev/null 2>&1; fi
    for p in "${PIDS[@]}"; do kill "$p" 2> /dev/null; done
    for _ in $(seq 50); do
        local left=""
        for p in "${PIDS[@]}"; do kill -0 "$p" 2> /dev/null && left=1; done
        [ -z "$left" ] && break
        sleep 0.1
    done
    for p in "${PIDS[@]}"; do kill -9 "$p" 2> /dev/null; done
    rm -rf "$TMP"
}
trap cleanup EXIT

show_logs() { for f in "$TMP"/*.log; do echo "---- $f"; tail -n 15 "$f"; done; }

# munged as the munge user, its socket, pid, seed and log in a directory of its own
install -d -o munge -g munge -m 0755 "$TMP/munge"
setpriv --reuid=munge --regid=munge --init-groups munged -F --socket="$TMP/munge/socket" --pid-file="$TMP/munge/pid" \
    --seed-file="$TMP/munge/seed" --key-file=/etc/munge/munge.key > "$TMP/munge.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do [ -S "$TMP/munge/socket" ] && break; sleep 0.1; done
[ -S "$TMP/munge/socket" ] || { show_logs; skip "munged did not start"; }

HOST=$(hostname -s)
NODE=$(slurmd -C | head -n 1 | sed "s/^NodeName=[^ ]*/NodeName=$HOST NodeAddr=127.0.0.1/")
PORT=$((20000 + RANDOM % 20000))
mkdir -p "$TMP/ctld" "$TMP/slurmd"
export SLURM_CONF="$TMP/slurm.conf"
cat > "$SLURM_CONF" << EOF
ClusterName=dstraintest
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$TMP/munge/socket
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
StateSaveLocation=$TMP/ctld
SlurmdSpoolDir=$TMP/slurmd
SlurmctldPidFile=$TMP/slurmctld.pid
SlurmdPidFile=$TMP/slurmd.pid
SlurmctldLogFile=$TMP/slurmctld.log
SlurmdLogFile=$TMP/slurmd.log
$NODE
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
slurmctld -D -i -f "$SLURM_CONF" > "$TMP/slurmctld.out" 2>&1 &
PIDS+=($!)
slurmd -D -f "$SLURM_CONF" > "$TMP/slurmd.out" 2>&1 &
PIDS+=($!)
up=""
for _ in $(seq 150); do
    state=$(timeout 5 sinfo -h -o %T 2> /dev/null | head -n 1)
    case "$state" in idle*|mixed*|allocated*) up=1; break ;; esac
    sleep 0.2
done
[ -n "$up" ] || { show_logs; skip "slurmctld/slurmd did not come up (node state '${state:-none}')"; }

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
two_ranks() {  # two_ranks FILE: ranks 0 and 1 of 2 each said who they are, through MPI
    [ "$(grep -c '^whoami rank [01] size 2 backend mpi' "$1")" -eq 2 ] && grep -q '^whoami rank 0 ' "$1" \
        && grep -q '^whoami rank 1 ' "$1"
}

# sbatch running mpirun
job=$(timeout 30 sbatch --parsable -n 2 -o "$TMP/batch.out" \
    --wrap "mpirun --allow-run-as-root --oversubscribe $DRIVER whoami" 2> sbatch.err)
check "sbatch accepts the job ($(head -c 300 sbatch.err))" '[ -n "$job" ]'
state=""
for _ in $(seq 300); do
    state=$(timeout 5 scontrol show job "$job" 2> /dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
    case "$state" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) break ;; esac
    sleep 0.2
done
cp "$TMP/batch.out" batch.out 2> /dev/null
check "the sbatch job completes (state '$state')" '[ "$state" = COMPLETED ]' || cat batch.out
check "sbatch + mpirun: ranks 0 and 1 of 2, distinct" 'two_ranks batch.out' || cat batch.out
check "although both inherited SLURM_PROCID=0" '[ "$(grep -c "slurm_procid 0$" batch.out)" -eq 2 ]' || cat batch.out

# srun with PMIx
timeout 60 srun --mpi=pmix -n 2 "$DRIVER" whoami > srun.out 2>&1
rc=$?
check "srun --mpi=pmix -n 2 runs (exit $rc)" '[ $rc -eq 0 ]' || cat srun.out
check "srun --mpi=pmix: ranks 0 and 1 of 2, distinct" 'two_ranks srun.out' || cat srun.out

# srun without an MPI plugin: two processes that cannot find each other must not run alone
timeout 60 srun --mpi=none -n 2 "$DRIVER" whoami > srun_none.out 2>&1
rc=$?
check "srun --mpi=none fails (exit $rc)" '[ $rc -ne 0 ] && [ $rc -ne 124 ]' || cat srun_none.out
check "and says to use --mpi=pmix" 'grep -q "srun --mpi=pmix" srun_none.out && ! grep -q "^whoami" srun_none.out' \
    || cat srun_none.out

[ "$failed" -eq 0 ] || show_logs
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
