# tests/cli/test_memory.sh - memory that cannot fit is refused before it is allocated (issue 14):
# the planned bytes are checked against MemAvailable, RLIMIT_AS and the cgroup limit, and a
# plan over the tightest one ends with one line naming what does not fit, at once, instead of
# growing until the kernel's out-of-memory killer ends the run without a message.
# Usage: bash test_memory.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR
set -u
BIN=${1:?usage: test_memory.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR}
SRC=${2:?}
SCRATCH=${3:?}
. "$(dirname "$0")/lib.sh"

TINY="$SRC/configs/tiny.toml"
R=(--set train.run_dir=runs --set train.steps=2)

# 2^30 routed experts: 3.4e12 parameters, about 100 TiB planned, more than any machine's
# MemAvailable; before the check the parameter table alone grew to 23.7 GB and was killed.
# Refused within seconds (60 s is the bound: measuring the table is arithmetic, not a walk).
HUGE=(--set model.n_routed_experts=1073741824 --set model.n_group=1)
start=$(date +%s)
timeout 60 "$BIN" train "$TINY" "${R[@]}" "${HUGE[@]}" > /dev/null 2> err.txt
rc=$?
check "2^30 experts exit 1 (got $rc)" "[ $rc -eq 1 ]"
check "refused within 60 s" "[ $(( $(date +%s) - start )) -lt 60 ]"
check "one line: $(head -c 300 err.txt)" "[ \$(wc -l < err.txt) -eq 1 ] && grep -q 'memory: the model (3.37e+12 parameters' err.txt"
check "names the expert count" "grep -q \"'model.n_routed_experts' = 1073741824\" err.txt"
check "names what does not fit" "grep -q 'what does not fit: .*parameters' err.txt"

# RLIMIT_AS: a 2^24-token vocabulary plans 4 GiB of embedding and head weights alone; under a
# 1 GiB address-space limit that is refused naming the limit (MemAvailable is larger on any
# machine that runs this suite: checked first, so the limit named is the one set here).
# A sanitizer build cannot start under an address-space limit at all (AddressSanitizer
# reserves terabytes of shadow address space): probed, and the limit cases left out there.
avail_kb=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
limits=1
if ! (ulimit -v 4194304; "$BIN" --help > /dev/null 2>&1); then
    limits=0
    echo "note: this build does not start under ulimit -v (a sanitizer build?): the RLIMIT_AS cases are left out"
fi
if [ $limits = 1 ] && [ "${avail_kb:-0}" -gt 2097152 ]; then
    (ulimit -v 1048576; "$BIN" train "$TINY" "${R[@]}" --set model.vocab_size=16777216 > /dev/null 2> err.txt)
    rc=$?
    check "vocab 2^24 under ulimit -v 1 GiB exits 1 (got $rc)" "[ $rc -eq 1 ]"
    check "one line naming RLIMIT_AS" "[ \$(wc -l < err.txt) -eq 1 ] && grep -q 'RLIMIT_AS' err.txt"
    check "names the parameters" "grep -q 'what does not fit: .*parameters' err.txt"
fi

# a plan that fits is not refused under a limit: tiny (about 2 MiB planned) under 4 GiB
if [ $limits = 1 ]; then
    (ulimit -v 4194304; "$BIN" train "$TINY" "${R[@]}" > out.txt 2> err.txt)
    rc=$?
    check "tiny under ulimit -v 4 GiB trains (exit $rc: $(head -c 300 err.txt))" "[ $rc -eq 0 ]"
    check "start-up table prints the planned total" "grep -q 'planned (all) .* MiB  of .* MiB available (RLIMIT_AS' out.txt"
fi

finish
