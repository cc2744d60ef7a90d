#!/bin/bash
# tests/cli/test_topo.sh - `dstrain topo` (runtime/topo.h), alone and under mpirun.
# Usage: bash test_topo.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR
#
# What it checks: alone, one rank line (rank 0, this host, local rank 0 of 1), one node
# section whose GPU lines match what the machine has (nvidia-smi's count on a CUDA build with
# a GPU, "no GPU" otherwise) and whose NIC lines match /sys/class/infiniband (one line per
# device port, or "no RDMA devices" where the directory is empty or absent, as on these
# machines); under `mpirun -n 2` (an MPI build) rank 0 alone prints, two rank lines with local
# ranks 0 and 1 of 2 on one node; with DSTRAIN_RANKS_PER_NODE=1 the same two ranks stand for
# two nodes, each with its section. Bad arguments are one-line errors. Needs mpirun for the
# MPI part in an MPI build (./build.sh test installs openmpi-bin): fails without it.
BIN=$1
SRC=$2
SCRATCH=$3
. "$SRC/tests/cli/lib.sh"
HOST=$(hostname)

"$BIN" topo > one.txt 2> one.err
rc=$?
check "topo alone exits 0 ($(head -c 300 one.err))" '[ $rc -eq 0 ] && [ ! -s one.err ]'
check "one rank on one node, backend single" 'grep -q "^topology: 1 rank on 1 node (backend single)$" one.txt'
check "the rank line: rank 0, this host, node 0, local rank 0 of 1" \
    "grep -Eq '^0 +$HOST +0 +0 of 1 ' one.txt"
check "one node section" '[ "$(grep -c "^node " one.txt)" -eq 1 ]'

# GPUs: only a CUDA build with a GPU lists any
gpus=0
if "$BIN" --version | grep -q cuda && command -v nvidia-smi > /dev/null; then
    gpus=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU ')
fi
if [ "$gpus" -eq 0 ]; then
    check "no GPU said so" 'grep -q "^  GPUs: no GPU (" one.txt && grep -Eq "^0 .* no GPU$" one.txt'
else
    check "$gpus GPU lines with PCI ids" \
        "[ \$(grep -Ec '^  GPU [0-9]+: .*, PCI [0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\\.[0-9a-f]$' one.txt) -eq $gpus ]"
fi

# NICs: one line per port of each RDMA device sysfs knows, or the "no RDMA devices" line
ports=0
for d in /sys/class/infiniband/*/ports/*; do [ -e "$d" ] && ports=$((ports + 1)); done
if [ "$ports" -eq 0 ]; then
    check "no RDMA devices said so" 'grep -q "^  NICs: no RDMA devices" one.txt'
    check "and no pairing" 'grep -q "^  pairing: none (" one.txt'
else
    check "$ports NIC port lines" \
        "[ \$(grep -Ec '^  NIC [^ ]+ port [0-9]+: state [A-Z_]+, link layer [A-Za-z]+, speed ' one.txt) -eq $ports ]"
fi

"$BIN" topo --help > help.txt
rc=$?
check "topo --help" '[ $rc -eq 0 ] && grep -q "usage: dstrain topo" help.txt && grep -q "no RDMA devices" help.txt'
expect_error "unexpected argument 'extra'" topo extra

# under mpirun: rank 0 prints for both
if "$BIN" --version | grep -q mpi; then
    if ! command -v mpirun > /dev/null; then
        echo "FAIL: mpirun not found (apt-get install openmpi-bin; ./build.sh test does)"
        exit 1
    fi
    # sanitizer builds: OpenMPI's own allocations are not dstrain's leaks (tests/mpi/lsan.supp)
    export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}fast_unwind_on_malloc=0"
    export LSAN_OPTIONS="${LSAN_OPTIONS:+$LSAN_OPTIONS:}suppressions=$SRC/tests/mpi/lsan.supp:print_suppressions=0"
    MPIRUN=(timeout 120 mpirun --allow-run-as-root --oversubscribe -n 2)
    "${MPIRUN[@]}" "$BIN" topo > two.txt 2> two.err
    rc=$?
    check "mpirun -n 2 topo exits 0 ($(head -c 300 two.err))" '[ $rc -eq 0 ]'
    check "2 ranks on 1 node, backend mpi, printed once" \
        '[ "$(grep -c "^topology: " two.txt)" -eq 1 ] && grep -q "^topology: 2 ranks on 1 node (backend mpi)$" two.txt'
    check "rank 0: local rank 0 of 2" "grep -Eq '^0 +$HOST +0 +0 of 2 ' two.txt"
    check "rank 1: local rank 1 of 2" "grep -Eq '^1 +$HOST +0 +1 of 2 ' two.txt"
    check "one node section of 2 ranks" '[ "$(grep -c "^node " two.txt)" -eq 1 ] && grep -q "^node 0 (.*): 2 ranks$" two.txt'
    DSTRAIN_RANKS_PER_NODE=1 "${MPIRUN[@]}" -x DSTRAIN_RANKS_PER_NODE "$BIN" topo > nodes.txt 2> nodes.err
    rc=$?
    check "DSTRAIN_RANKS_PER_NODE=1: exits 0 ($(head -c 300 nodes.err))" '[ $rc -eq 0 ]'
    check "2 ranks on 2 nodes" 'grep -q "^topology: 2 ranks on 2 nodes (backend mpi)$" nodes.txt'
    check "rank 1 on node 1, local rank 0 of 1" "grep -Eq '^1 +$HOST +1 +0 of 1 ' nodes.txt"
    check "two node sections" 'grep -q "^node 0 (" nodes.txt && grep -q "^node 1 (" nodes.txt'
fi
cat one.txt
finish
