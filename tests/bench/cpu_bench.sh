#!/usr/bin/env bash
# tests/bench/cpu_bench.sh - CPU training speed of configs/small.toml next to the machine's
# BLAS SGEMM rate, both measured in the same run (the target: a step's model FLOP rate at least
# a third of SGEMM's). Prints step time, achieved model FLOP/s, SGEMM FLOP/s and their ratio.
# Usage: tests/bench/cpu_bench.sh [DSTRAIN_BINARY] [STEPS]   (default build/release/dstrain, 25)
# Timings are only meaningful on an otherwise idle machine.
set -euo pipefail
BIN=${1:-build/release/dstrain}
STEPS=${2:-25}
SRC=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$BIN" train "$SRC/configs/small.toml" --set train.run_dir="$WORK/runs" --set data.dir="$WORK/data" \
    --set train.steps="$STEPS" --set train.val_every=0 --set train.val_batches=1 \
    --set train.checkpoint_every=0 > "$WORK/out.txt"
python3 - "$WORK/runs/small/metrics.jsonl" <<'PY'
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
start = next(r for r in recs if r["type"] == "start")
steps = [r for r in recs if r["type"] == "step"][3:]          # the first steps warm up
step_s = statistics.median(r["step_s"] for r in steps)
achieved = start["tokens_per_step"] * start["flops_per_token"] / step_s
peak = start["peak_flops"]
print("cpu bench: configs/small.toml, %d timed steps (median)" % len(steps))
print("  step time            %8.3f s" % step_s)
print("  tokens/s             %8.0f" % (start["tokens_per_step"] / step_s))
print("  model FLOP/s         %8.2f GFLOP/s  (%.2f MFLOP/token, training)" % (achieved / 1e9, start["flops_per_token"] / 1e6))
print("  BLAS SGEMM FLOP/s    %8.2f GFLOP/s  (1024^3, measured at start-up of the same run)" % (peak / 1e9))
print("  ratio                %8.1f%%  (target >= 33.3%%)" % (100 * achieved / peak))
PY
