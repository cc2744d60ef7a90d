#!/usr/bin/env bash
# tests/mpi/test_mpi_trace.sh BIN_DIR SOURCE_DIR SCRATCH_DIR - `train.trace_steps` over MPI
# ranks (runtime/pipeline/trace.h, the gather over the world comm): configs/tiny.toml for 3
# steps tracing steps 2 and 3 at (DP, EP) = (2, 1) and (2, 2). Checked per layout:
#   - the job exits 0 and rank 0 writes one trace.json that tests/tools/check_trace.py accepts
#     with exactly ranks 0 and 1, each with its compute track and, per traced step, one step
#     span, one optimizer span and grad_accum forwards and backwards;
#   - the ranks' clocks are aligned: both optimizer spans of a step hold the dp reduction of the
#     gradients, which completes on neither rank before both have begun it, so each rank's
#     optimizer end is at or after the other's optimizer begin. Rank 1's times are put on rank
#     0's clock within half the best ping-pong round trip (the file's clock_sync_rtt_us), so
#     the test allows exactly that much.
BIN_DIR=$1
SRC=$2
SCRATCH=$3
. "$SRC/tests/mpi/lib.sh"
use_dstrain
PY=${DSTRAIN_TEST_PYTHON:-python3}
CHECK="$SRC/tests/tools/check_trace.py"
ARGS=("$SRC/configs/tiny.toml" --set data.dir="$SCRATCH/data" --set data.synthetic=true
      --set train.run_dir="$SCRATCH/runs" --set train.steps=3 --set train.val_every=0 --set train.val_batches=1
      --set train.threads=1 --set train.micro_batch_size=2 --set train.trace_steps=2-3)
# tiny: grad_accum = 2 micro-batches a step, so two traced steps hold 4 forwards per rank

for ep in 1 2; do
    name=dp2ep$ep
    run_mpi 2 $name.txt "$DSTRAIN" train "${ARGS[@]}" --set train.name=$name --set parallel.dp=2 \
        --set parallel.ep=$ep
    T="$SCRATCH/runs/$name/trace.json"
    check "dp 2, ep $ep trains and writes a trace (exit $RC)" "[ $RC -eq 0 ] && [ -s '$T' ]" || show $name.txt
    "$PY" "$CHECK" "$T" --ranks 2 --track compute --span "step 2=1" --span "step 3=1" --span optimizer=2 \
        --span forward=4 --span backward=4 > check.$name.txt 2>&1
    check "dp 2, ep $ep: check_trace accepts it ($(tail -n 2 check.$name.txt))" \
        "grep -q '^check_trace: ok' check.$name.txt"
    "$PY" - "$T" > align.$name.txt 2>&1 <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
slack = doc["otherData"]["clock_sync_rtt_us"] / 2
spans = {}   # (pid, step) -> [begin, end] of the optimizer span
for e in doc["traceEvents"]:
    if e["name"] == "optimizer" and e["ph"] == "B":
        spans[(e["pid"], e["args"]["step"])] = [e["ts"], None]
        last = (e["pid"], e["args"]["step"])
    elif e["name"] == "optimizer" and e["ph"] == "E":
        open_ = [k for k, v in spans.items() if k[0] == e["pid"] and v[1] is None]
        spans[open_[0]][1] = e["ts"]
bad = []
for step in (2, 3):
    for x, y in ((0, 1), (1, 0)):
        end_x, begin_y = spans[(x, step)][1], spans[(y, step)][0]
        if end_x + slack < begin_y:
            bad.append("step %d: rank %d's optimizer ends at %.3f us, before rank %d's begins at %.3f (slack %.3f)"
                       % (step, x, end_x, y, begin_y, slack))
print("\n".join(bad) if bad else "aligned (slack %.3f us)" % slack)
PY
    check "dp 2, ep $ep: ranks' clocks aligned ($(head -n 2 align.$name.txt))" "grep -q '^aligned' align.$name.txt"
done
finish
