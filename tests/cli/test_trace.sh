# tests/cli/test_trace.sh - `train.trace_steps` end to end on configs/tiny.toml: a run that
# names steps 2 and 3 writes <run>/trace.json, which tests/tools/check_trace.py accepts
# (valid JSON, every event's fields, begin/end matched and times monotonic per track, rank 0's
# process and its compute track, exactly one span per traced step and one forward and one
# backward per micro-batch of them, the optimizer inside the step); a run naming no step
# writes none; the checker rejects broken files (so it can fail); bad values of the key are
# one-line errors.
# Usage: bash test_trace.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR
set -u
BIN=${1:?usage: test_trace.sh DSTRAIN_BINARY SOURCE_DIR SCRATCH_DIR}
SRC=${2:?}
SCRATCH=${3:?}
. "$(dirname "$0")/lib.sh"
PY=${DSTRAIN_TEST_PYTHON:-python3}
CHECK="$SRC/tests/tools/check_trace.py"

# tiny: grad_accum 2, so steps 2 and 3 hold 4 forwards and 4 backwards
SET=(--set train.run_dir=runs --set data.dir=data --set data.synthetic=true --set train.steps=4
     --set train.val_every=0 --set train.val_batches=1)
"$BIN" train "$SRC/configs/tiny.toml" "${SET[@]}" --set train.trace_steps=2,3 > out.txt 2> err.txt
check "a traced run exits 0 ($(head -c 300 err.txt))" "[ -s runs/tiny/trace.json ]"
check "it says where the trace went" "grep -q 'trace: wrote runs/tiny/trace.json (steps 2..3)' out.txt"
"$PY" "$CHECK" runs/tiny/trace.json --ranks 1 --track compute --span "step 2=1" --span "step 3=1" \
    --span forward=4 --span backward=4 --span optimizer=2 --contains "step 2/optimizer" > check.txt 2>&1
check "check_trace accepts it: $(tail -n 3 check.txt)" "grep -q '^check_trace: ok' check.txt"
check "no other step is traced" "! grep -q '\"step 1\"\\|\"step 4\"' runs/tiny/trace.json"
check "every traced event says its step" \
    "[ \$(grep -c '\"ph\":\"B\".*\"args\":{\"step\":[23]' runs/tiny/trace.json) -eq 12 ]"

"$BIN" train "$SRC/configs/tiny.toml" "${SET[@]}" --set train.name=plain > out2.txt 2> err2.txt
check "an untraced run writes no trace ($(head -c 200 err2.txt))" \
    "[ -s runs/plain/metrics.jsonl ] && [ ! -e runs/plain/trace.json ] && ! grep -q '^trace:' out2.txt"

# the checker finds broken files: each edit of the good file must be rejected with its reason
"$PY" - runs/tiny/trace.json <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
ev = doc["traceEvents"]
spans = [i for i, e in enumerate(ev) if e["ph"] in "BE"]
def save(name, events, raw=None):
    with open(name, "w") as f:
        f.write(raw if raw is not None else json.dumps({"traceEvents": events}))
save("bad_json.json", None, open(sys.argv[1]).read()[:-40])
save("bad_unmatched.json", [e for i, e in enumerate(ev) if i != spans[-1]])
save("bad_field.json", [dict((k, v) for k, v in e.items() if not (i == spans[1] and k == "tid")) for i, e in enumerate(ev)])
back = [dict(e) for e in ev]
back[spans[3]]["ts"] = back[spans[2]]["ts"] - 1.0
save("bad_time.json", back)
save("bad_end.json", ev + [{"name": "x", "ph": "E", "ts": 1e9, "pid": 0, "tid": 3}])
save("bad_ph.json", [dict(e, ph="Q") if i == spans[0] else e for i, e in enumerate(ev)])
PY
expect_reject() {  # expect_reject FILE WORDS [OPTIONS...]
    local f=$1 words=$2
    shift 2
    "$PY" "$CHECK" "$f" "$@" > rej.txt 2>&1
    local rc=$?
    check "check_trace rejects $f (exit $rc: $(head -n 1 rej.txt))" "[ $rc -eq 1 ] && grep -q -- \"$words\" rej.txt"
}
expect_reject bad_json.json "is not readable JSON"
expect_reject bad_unmatched.json "never ended"
expect_reject bad_field.json "has no 'tid'"
expect_reject bad_time.json "goes back in time"
expect_reject bad_end.json "an end with no open span"
expect_reject bad_ph.json "is not one of"
expect_reject runs/tiny/trace.json "expected 0..1" --ranks 2
expect_reject runs/tiny/trace.json "has no track named 'ep lane F'" --track "ep lane F"
expect_reject runs/tiny/trace.json "has 4 span(s) named 'forward', expected 5" --span forward=5
expect_reject runs/tiny/trace.json "span 'forward' at .* holds no span 'optimizer'" --contains forward/optimizer

# bad values: one line naming the key, the value and what is wrong
expect_error "'train.trace_steps' = \"0\": step 0: steps count from 1" \
    train "$SRC/configs/tiny.toml" "${SET[@]}" --set train.trace_steps=0
expect_error "'train.trace_steps' = \"3,x\": 'x' is not a step number or a range like 3-5" \
    train "$SRC/configs/tiny.toml" "${SET[@]}" --set train.trace_steps=3,x
expect_error "'train.trace_steps' = \"4-2\": range 4-2 runs backwards" \
    train "$SRC/configs/tiny.toml" "${SET[@]}" --set train.trace_steps=4-2
expect_error "'train.trace_steps' = \"3,9\" names step 9, past 'train.steps' = 4" \
    train "$SRC/configs/tiny.toml" "${SET[@]}" --set train.trace_steps=3,9
finish
