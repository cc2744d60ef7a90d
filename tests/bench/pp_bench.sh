#!/usr/bin/env bash
# tests/bench/pp_bench.sh - the pipeline bubble of each schedule (1f1b, zb1p, dualpipe,
# dualpipev) at pp = 4 on configs/small.toml over MPI: trains a few steps per schedule with
# train.trace_steps set, then tests/tools/pp_bubble.py reads each trace.json and prints the
# measured idle fraction per rank next to the simulator's (tests/tools/pp_sim with the measured
# F/B/W times) and SPEC 8's formula for those times. Not part of the ctest suite.
# Usage: tests/bench/pp_bench.sh [BUILD_DIR] [OUT_DIR] [STEPS] [GRAD_ACCUM]
#   BUILD_DIR holds dstrain and tests/pp_sim (default build/dev), OUT_DIR the run directories
#   (default a fresh temporary one, kept), STEPS per run (default 6: steps 4-6 are traced,
#   1-3 warm up), GRAD_ACCUM the micro-batches per step (default 8 = 2 pp, the least dualpipe
#   and dualpipev accept).
# The model is configs/small.toml with model.num_hidden_layers = 8 (2 dense + 6 MoE) for every
# schedule: dualpipev at pp = 4 has 8 stages and each needs a layer, and small's 6 cannot fill
# them; the same 8 layers for all four keeps the runs comparable.
# Timings are only meaningful with no more ranks than idle cores: on a 2-core machine the 4
# ranks are oversubscribed, every rank's spans include time it spent descheduled, and the
# figures are indicative only (the script says so).
set -euo pipefail
BUILD=${1:-build/dev}
OUT=${2:-$(mktemp -d -t pp_bench.XXXXXX)}
STEPS=${3:-6}
ACCUM=${4:-8}
PP=4
here=$(cd "$(dirname "$0")/../.." && pwd)
PY=${DSTRAIN_TEST_PYTHON:-python3}
if ! command -v mpirun > /dev/null 2>&1; then echo "pp_bench: mpirun not found (install openmpi-bin)"; exit 1; fi
for f in "$BUILD/dstrain" "$BUILD/tests/pp_sim"; do
    if [ ! -x "$f" ]; then echo "pp_bench: no '$f' (build first: cmake --build $BUILD)"; exit 1; fi
done
if [ "$STEPS" -lt 2 ]; then echo "pp_bench: STEPS must be >= 2 (got $STEPS)"; exit 1; fi
first=$(( STEPS > 3 ? STEPS / 2 + 1 : 2 ))
cores=$(nproc 2> /dev/null || echo 1)
[ "$PP" -gt "$cores" ] && echo "(pp=$PP: $PP ranks on $cores cores, oversubscribed: timings are noisy, indicative only)"
echo "pp_bench: pp=$PP grad_accum=$ACCUM steps=$STEPS traced=$first-$STEPS out=$OUT"
mkdir -p "$OUT"
traces=()
for s in 1f1b zb1p dualpipe dualpipev; do
    t0=$(date +%s)
    timeout 600 mpirun --allow-run-as-root --oversubscribe -np "$PP" "$BUILD/dstrain" train \
        "$here/configs/small.toml" --set parallel.pp=$PP --set parallel.schedule=$s \
        --set model.num_hidden_layers=8 --set train.grad_accum="$ACCUM" --set train.steps="$STEPS" --set train.trace_steps="$first-$STEPS" \
        --set train.val_every=0 --set train.checkpoint_every=0 \
        --set train.run_dir="$OUT" --set train.name="$s" > "$OUT/$s.log" 2>&1 \
        || { echo "pp_bench: $s failed, see $OUT/$s.log"; tail -5 "$OUT/$s.log"; exit 1; }
    echo "  $s: $(( $(date +%s) - t0 )) s"
    traces+=("$s=$OUT/$s/trace.json")
done
"$PY" "$here/tests/tools/pp_bubble.py" --sim "$BUILD/tests/pp_sim" --pp $PP --micro-batches "$ACCUM" "${traces[@]}"
