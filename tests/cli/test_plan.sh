#!/usr/bin/env bash
# tests/cli/test_plan.sh BINARY SOURCE_DIR SCRATCH_DIR - `dstrain plan` end to end.
# Checks: the text report and --json on DeepSeek-V3 671B and the two dense configs; the JSON
# parses (python3 -m json.tool) and every number printed in the text report is a JSON value
# (compared at the printed precision and unit); headline JSON figures; impossible layouts
# (EP not dividing DP, experts not divisible by EP, odd PP under DualPipe, too few
# micro-batches, memory over HBM) still print the report, exit 1 and name the number on
# stderr; --help; a bad option.
set -u
BIN=$1
SRC=$2
SCRATCH=$3
mkdir -p "$SCRATCH"
passed=0
failed=0
pass() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL: $*" >&2; }

# every number of the text report ($1) must be a value of the JSON ($2); see the python below
check_numbers() {
    python3 - "$1" "$2" <<'EOF'
import json, re, sys
# A printed number, with its unit if one follows (scales to the JSON's base units).
UNITS = {"%": 0.01, "TFLOP/s": 1e12, "GB/s": 1e9, "TFLOP": 1e12, "GFLOP": 1e9, "MFLOP": 1e6,
         "kFLOP": 1e3, "FLOP": 1.0, "GiB": 2.0**30, "MiB": 2.0**20, "KiB": 1024.0, "bytes": 1.0,
         "GB": 1e9, "MB": 1e6, "kB": 1e3, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "s": 1.0,
         "B": 1e9, "M": 1e6, "k": 1e3}
alts = "|".join(re.escape(u) for u in sorted(UNITS, key=len, reverse=True))
# not inside a word (BF16, a2a, 1f1b) nor after "word-" (ZeRO-1); "0-3" still gives 0 and 3
NUM = re.compile(r"(?<![\w.])(?<![A-Za-z]-)(\d+(?:\.(\d+))?)(?:( ?)(" + alts + r")(?![\w/]))?(?![\w.])")

def numbers(s):
    for m in NUM.finditer(s):
        unit = m.group(4)
        decimals = len(m.group(2) or "")
        yield float(m.group(1)), decimals, UNITS[unit] if unit else 1.0, m.group(0)

text = open(sys.argv[1]).read()
data = json.load(open(sys.argv[2]))
pool = []
def walk(x):
    if isinstance(x, bool) or x is None:
        return
    if isinstance(x, (int, float)):
        pool.append(float(x))
    elif isinstance(x, str):            # problem messages: their numbers as printed
        pool.extend(v * scale for v, _, scale, _ in numbers(x))
    elif isinstance(x, list):
        for y in x: walk(y)
    else:
        for y in x.values(): walk(y)
walk(data)
checked, missing = 0, []
for v, decimals, scale, shown in numbers(text):
    # printf rounds to the printed digits: half a unit of the last digit, plus float slack
    tol = 0.5 * 10.0 ** -decimals * scale * (1 + 1e-9) + 1e-12 * abs(v * scale)
    checked += 1
    if not any(abs(j - v * scale) <= tol for j in pool):
        missing.append(shown)
print("checked %d numbers of the text report, %d not in the JSON" % (checked, len(missing)))
if missing:
    print("missing:", missing[:20])
sys.exit(1 if missing or checked < 50 else 0)
EOF
}

# $1 name, then the plan arguments: text and --json, both exit 0, JSON valid, numbers match
plan_ok() {
    local name=$1
    shift
    if "$BIN" plan "$@" >"$SCRATCH/$name.txt" 2>"$SCRATCH/$name.err"; then pass; else fail "$name: text exit $?"; cat "$SCRATCH/$name.err" >&2; fi
    if "$BIN" plan "$@" --json >"$SCRATCH/$name.json" 2>"$SCRATCH/$name.jerr"; then pass; else fail "$name: --json exit $?"; fi
    if python3 -m json.tool "$SCRATCH/$name.json" >/dev/null; then pass; else fail "$name: JSON does not parse"; fi
    if check_numbers "$SCRATCH/$name.txt" "$SCRATCH/$name.json"; then pass; else fail "$name: text numbers missing from the JSON"; fi
}

# python expression over the JSON d must hold
json_expect() {
    local file=$1 expr=$2
    if python3 -c "import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if ($expr) else 1)" "$file"; then
        pass
    else
        fail "$file: expected $expr"
    fi
}

V3="$SRC/configs/deepseek-v3-671b.toml"
plan_ok v3 "$V3"
# 671B +- 0.5% (acceptance 1; tests/unit/test_plan.c pins the figures), the layout runs
json_expect "$SCRATCH/v3.json" "abs(d['params']['total'] - 671e9) <= 0.005 * 671e9 and d['ok'] is True"
json_expect "$SCRATCH/v3.json" "d['layout']['schedule'] == 'dualpipe' and len(d['stages']) == 16 and len(d['memory']['ranks']) == 16"
json_expect "$SCRATCH/v3.json" "d['memory']['fits'] and d['communication']['moe'] and d['pipeline']['step_s'] > 0"
json_expect "$SCRATCH/v3.json" "[r['schedule'] for r in d['pipeline']['schedules']] == ['1f1b', 'zb1p', 'dualpipe', 'dualpipev']"
grep -q "verdict: this layout can run" "$SCRATCH/v3.txt" && pass || fail "v3: no verdict line"

plan_ok llama3 "$SRC/configs/llama3-8b.toml"
json_expect "$SCRATCH/llama3.json" "d['params']['total'] == 8030261248 and not d['communication']['moe']"
plan_ok llama2 "$SRC/configs/llama2-7b.toml"
json_expect "$SCRATCH/llama2.json" "d['params']['total'] == 6738415616"

# impossible layouts: $1 name, $2 text stderr must contain, then --set overrides
plan_bad() {
    local name=$1 want=$2
    shift 2
    "$BIN" plan "$V3" "$@" >"$SCRATCH/$name.txt" 2>"$SCRATCH/$name.err"
    local rc=$?
    [ $rc -eq 1 ] && pass || fail "$name: exit $rc, expected 1"
    grep -qF -- "$want" "$SCRATCH/$name.err" && pass || { fail "$name: stderr lacks '$want'"; cat "$SCRATCH/$name.err" >&2; }
    grep -q "verdict: this layout cannot run" "$SCRATCH/$name.txt" && pass || fail "$name: no report"
    "$BIN" plan "$V3" "$@" --json >"$SCRATCH/$name.json" 2>/dev/null
    json_expect "$SCRATCH/$name.json" "d['ok'] is False and any(p['error'] for p in d['problems'])"
}
plan_bad ep_dp "'parallel.ep' = 48 does not divide 'parallel.dp' = 128" --set parallel.ep=48
plan_bad ep_experts "'parallel.ep' = 32 does not divide 'model.n_routed_experts' = 48" \
    --set parallel.ep=32 --set model.n_routed_experts=48 --set model.n_group=8 --set model.topk_group=4
plan_bad pp_odd "'parallel.pp' = 15 must be even" --set parallel.pp=15
plan_bad few_micro "'train.grad_accum' = 20 micro-batches is below 2 * 'parallel.pp' = 32" --set train.grad_accum=20
plan_bad hbm "'cluster.hbm_gib' = 80" --set train.micro_batch_size=4
plan_bad gpus "exceed the 800 of the cluster" --set cluster.nodes=100
check_numbers "$SCRATCH/ep_dp.txt" "$SCRATCH/ep_dp.json" >/dev/null && pass || fail "ep_dp: text numbers missing from the JSON"

# --timeline: one row of exactly COLS schedule characters per pp rank, then each rank's busy/idle
"$BIN" plan "$V3" --timeline=60 >"$SCRATCH/timeline.txt" 2>&1 && pass || fail "--timeline exit"
[ "$(grep -cE '^  rank +[0-9]+ \|[FBWXfbwx.]{60}\|$' "$SCRATCH/timeline.txt")" -eq 16 ] && pass || fail "--timeline: not 16 rows of 60"
[ "$(grep -cE '^  rank +[0-9]+ busy ' "$SCRATCH/timeline.txt")" -eq 16 ] && pass || fail "--timeline: busy lines"
grep -q '^timeline (dualpipe, 120 micro-batches, 60 columns' "$SCRATCH/timeline.txt" && pass || fail "--timeline header"
"$BIN" plan "$V3" --set parallel.pp=15 --timeline >"$SCRATCH/timeline_bad.txt" 2>/dev/null
grep -q "^timeline: none, schedule 'dualpipe' cannot run this layout" "$SCRATCH/timeline_bad.txt" && pass || fail "--timeline on a bad layout"
"$BIN" plan "$V3" --timeline=5 >/dev/null 2>"$SCRATCH/timeline_w.err" && fail "--timeline=5 accepted" || pass
grep -q "'--timeline=5' wants a width of 20 to 1000 columns" "$SCRATCH/timeline_w.err" && pass || fail "--timeline width message"
"$BIN" plan "$V3" --timeline --json >/dev/null 2>"$SCRATCH/timeline_j.err" && fail "--timeline --json accepted" || pass

"$BIN" plan --help >"$SCRATCH/help.txt" 2>&1 && grep -q -- "--json" "$SCRATCH/help.txt" && pass || fail "--help"
"$BIN" plan "$V3" --no-such-option >/dev/null 2>"$SCRATCH/badopt.err" && fail "bad option accepted" || pass
grep -q "unknown option '--no-such-option'" "$SCRATCH/badopt.err" && pass || fail "bad option message"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
