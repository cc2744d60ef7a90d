#!/usr/bin/env bash
# tests/bench/cpu_bench.sh - CPU training speed of configs/small.toml in each precision the CPU
# runs (fp32, and the bf16 / fp8 emulations), next to the machine's BLAS SGEMM rate measured in
# the same run (the target: an fp32 step's model FLOP rate at least a third of SGEMM's; the
# emulations at most 2x the fp32 step time). Prints one column per precision: step time, its
# ratio to fp32, tokens/s, achieved model FLOP/s, SGEMM FLOP/s and their ratio. A precision
# this dstrain refuses on the CPU is listed with its reason.
# Usage: tests/bench/cpu_bench.sh [DSTRAIN_BINARY] [STEPS]   (default build/release/dstrain, 25)
# Timings are only meaningful on an otherwise idle machine.
set -euo pipefail
BIN=${1:-build/release/dstrain}
STEPS=${2:-25}
SRC=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for prec in fp32 bf16 fp8; do
    if ! "$BIN" train "$SRC/configs/small.toml" --set train.run_dir="$WORK/runs-$prec" --set data.dir="$WORK/data" \
        --set train.steps="$STEPS" --set train.val_every=0 --set train.val_batches=1 \
        --set train.checkpoint_every=0 --set train.precision=$prec > "$WORK/out-$prec.txt" 2> "$WORK/err-$prec.txt"; then
        [ "$prec" = fp32 ] && { cat "$WORK/err-fp32.txt" >&2; exit 1; }
        tail -n 1 "$WORK/err-$prec.txt" > "$WORK/refused-$prec.txt"
    fi
done
python3 - "$WORK" <<'PY'
import json, os, statistics, sys
work = sys.argv[1]
cols, refused = [], []
for prec in ("fp32", "bf16", "fp8"):
    path = os.path.join(work, "runs-%s" % prec, "small", "metrics.jsonl")
    if not os.path.exists(path):
        why = open(os.path.join(work, "refused-%s.txt" % prec)).read().strip()
        refused.append("  %-6s not run: %s" % (prec, why))
        continue
    recs = [json.loads(l) for l in open(path)]
    start = next(r for r in recs if r["type"] == "start")
    steps = [r for r in recs if r["type"] == "step"][3:]      # the first steps warm up
    step_s = statistics.median(r["step_s"] for r in steps)
    cols.append((prec, step_s, start, len(steps)))
base = cols[0][1]
print("cpu bench: configs/small.toml, %d timed steps each (median)" % cols[0][3])
row = lambda label, fmt, f: print("  %-22s" % label + "".join(("%14s" % (fmt % f(c))) for c in cols))
row("precision", "%s", lambda c: c[0])
row("step time (s)", "%.3f", lambda c: c[1])
row("vs fp32 (target <= 2)", "%.2fx", lambda c: c[1] / base)
row("tokens/s", "%.0f", lambda c: c[2]["tokens_per_step"] / c[1])
row("model GFLOP/s", "%.2f", lambda c: c[2]["tokens_per_step"] * c[2]["flops_per_token"] / c[1] / 1e9)
row("SGEMM GFLOP/s", "%.2f", lambda c: c[2]["peak_flops"] / 1e9)
row("ratio (fp32 >= 33.3%)", "%.1f%%", lambda c: 100 * c[2]["tokens_per_step"] * c[2]["flops_per_token"] / c[1] / c[2]["peak_flops"])
print("  (model FLOP/token %.2f M, training; SGEMM 1024^3 measured at start-up of each run)"
      % (cols[0][2]["flops_per_token"] / 1e6))
for line in refused:
    print(line)
PY
