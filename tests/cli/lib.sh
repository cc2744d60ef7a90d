# tests/cli/lib.sh - what every CLI test shares. Source it after setting BIN and SCRATCH:
# it makes and enters a fresh scratch directory and defines
#   check DESCRIPTION CONDITION      passes when CONDITION (shell text) succeeds
#   expect_error WORDS ARGS...       `dstrain ARGS` exits non-zero with exactly one line on
#                                    stderr containing WORDS, and no sanitizer report
#   finish                           prints "N passed, N failed"; exit status 1 on any failure
if [ ! -x "$BIN" ]; then echo "FAIL: no executable dstrain at '$BIN'"; exit 1; fi
rm -rf "$SCRATCH"
mkdir -p "$SCRATCH"
cd "$SCRATCH" || exit 1

passed=0
failed=0
check() {
    if eval "$2"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL: $1"; fi
}

no_sanitizer_report() {  # no_sanitizer_report FILE
    ! grep -qE 'Sanitizer|runtime error:' "$1"
}

expect_error() {
    local want=$1
    shift
    "$BIN" "$@" > /dev/null 2> err.txt
    local rc=$?
    local lines
    lines=$(wc -l < err.txt)
    if [ $rc -ne 0 ] && [ $rc -lt 128 ] && [ "$lines" -eq 1 ] && grep -q -- "$want" err.txt \
        && no_sanitizer_report err.txt; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL: dstrain $* -> exit $rc, $lines lines: $(head -c 400 err.txt) (want '$want')"
    fi
}

finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
}
