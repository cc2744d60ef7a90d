#!/usr/bin/env bash
# tests/bench/gpu_bench.sh - the GPU benchmark of issue 6 in one command, within ten minutes on
# one H100: build (Release, CUDA), run the GPU tests (ctest -L gpu: every op against the CPU,
# tiny/small training against the CPU curve, bit-exact resume), time training steps of
# configs/bench-s.toml and configs/bench-m.toml (tokens/s, MFU with model/flops.h against the
# GPU's dense BF16 peak, with and without MTP, GPU time per op family, peak memory), then the
# same bench-m config in Hugging Face transformers (tests/bench/hf_bench.py) and the ratio.
#
# Usage: tests/bench/gpu_bench.sh [--skip-tests] [--quick] [BUILD_DIR]
#   --skip-tests   time only (the tests take a few minutes of the ten)
#   --quick        bench-s only, no transformers run
#   BUILD_DIR      default build/gpu-bench (configured here; the normal build dirs are untouched)
# Environment: PEAK_TFLOPS overrides the dense BF16 peak (default: from the GPU's name, H100
# SXM / H200 989, H100 PCIe 756); GPU_BENCH_LOG the log folder (default BUILD_DIR/logs).
# Exit status: 0 when everything ran and the tests passed; 1 on a failure or without a GPU.
set -uo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
SKIP_TESTS=0
QUICK=0
BUILD=""
for arg in "$@"; do
    case "$arg" in
        --skip-tests) SKIP_TESTS=1 ;;
        --quick) QUICK=1 ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "gpu_bench: unknown option '$arg' (see --help)" >&2; exit 1 ;;
        *) BUILD=$arg ;;
    esac
done
BUILD=${BUILD:-$SRC/build/gpu-bench}
LOG=${GPU_BENCH_LOG:-$BUILD/logs}
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
say() { echo "[gpu_bench $(elapsed)s] $*"; }

command -v nvcc > /dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ] || {
    echo "gpu_bench: nvcc not found (install the CUDA toolkit or put /usr/local/cuda/bin on PATH)" >&2; exit 1; }
command -v nvcc > /dev/null 2>&1 || export PATH=/usr/local/cuda/bin:$PATH
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null | head -1)
if [ -z "$GPU" ]; then
    echo "gpu_bench: no CUDA GPU (nvidia-smi lists none); this benchmark needs an NVIDIA GPU - nothing was timed" >&2
    exit 1
fi
case "$GPU" in
    *H100*PCIe*) PEAK_DEFAULT=756 ;;
    *H100*|*H200*|*H800*|*GH200*) PEAK_DEFAULT=989 ;;
    *) PEAK_DEFAULT=989; say "unknown GPU '$GPU': assuming a dense BF16 peak of 989 TFLOP/s (set PEAK_TFLOPS)" ;;
esac
PEAK=${PEAK_TFLOPS:-$PEAK_DEFAULT}
mkdir -p "$LOG"
say "GPU: $GPU, dense BF16 peak $PEAK TFLOP/s; logs in $LOG"
STATUS=0

# ---- build ----
say "building (Release, CUDA) in $BUILD"
if ! { cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release > "$LOG/configure.txt" 2>&1 &&
       cmake --build "$BUILD" -j "$(nproc)" > "$LOG/build.txt" 2>&1; }; then
    tail -30 "$LOG/configure.txt" "$LOG/build.txt"
    echo "gpu_bench: the build failed (logs: $LOG/configure.txt, $LOG/build.txt)" >&2
    exit 1
fi
BENCH=$BUILD/tests/gpu/gpu_bench
[ -x "$BENCH" ] || { echo "gpu_bench: $BENCH was not built (was CUDA found? see $LOG/configure.txt)" >&2; exit 1; }
say "built"

# ---- tests ----
if [ $SKIP_TESTS = 0 ]; then
    say "GPU tests (ctest -L gpu)"
    (cd "$BUILD" && timeout 420 ctest -L gpu --output-on-failure --timeout 400) > "$LOG/tests.txt" 2>&1
    rc=$?
    grep -E "tests passed|Passed|Failed|Skipped|\*\*\*" "$LOG/tests.txt" | sed 's/^/  /'
    if [ $rc -ne 0 ]; then STATUS=1; say "GPU tests FAILED (exit $rc; $LOG/tests.txt)"; fi
fi

# ---- timing ----
# run_bench NAME CONFIG [ARGS...]: gpu_bench, its log, and its RESULT line in $LOG/NAME.json
run_bench() {
    local name=$1 cfg=$2
    shift 2
    say "timing $name"
    timeout 240 "$BENCH" "$SRC/$cfg" --label "$name" --peak-tflops "$PEAK" "$@" > "$LOG/$name.txt" 2>&1
    local rc=$?
    grep -E "tokens/s|memory:|loss:|by family|^  [a-z_]+ +[0-9.]+ ms" "$LOG/$name.txt" | sed 's/^/  /'
    if [ $rc -ne 0 ]; then
        STATUS=1
        say "$name FAILED (exit $rc): $(tail -2 "$LOG/$name.txt" | tr '\n' ' ')"
        return
    fi
    grep '^RESULT ' "$LOG/$name.txt" | sed 's/^RESULT //' > "$LOG/$name.json"
}
run_bench bench-s configs/bench-s.toml --steps 5 --warmup 2
if [ $QUICK = 0 ]; then
    run_bench bench-m configs/bench-m.toml --steps 5 --warmup 2 --profile
    run_bench bench-m-nomtp configs/bench-m.toml --steps 5 --warmup 2 --set model.num_nextn_predict_layers=0
    say "transformers on bench-m (no MTP: transformers' DeepseekV3 has none)"
    PYTHONUNBUFFERED=1 timeout 300 python3 "$SRC/tests/bench/hf_bench.py" "$SRC/configs/bench-m.toml" \
        --steps 5 --warmup 2 > "$LOG/hf.txt" 2>&1
    rc=$?
    grep -E "^hf|out of memory|cannot import" "$LOG/hf.txt" | sed 's/^/  /'
    if [ $rc -eq 0 ]; then grep '^RESULT ' "$LOG/hf.txt" | sed 's/^RESULT //' > "$LOG/hf.json"
    else say "transformers run did not finish (exit $rc; $LOG/hf.txt)"; [ $rc -eq 3 ] || STATUS=1; fi
fi

# ---- summary ----
python3 - "$LOG" "$GPU" "$(git -C "$SRC" rev-parse --short HEAD 2> /dev/null || echo unknown)" <<'PY' | tee "$LOG/summary.md"
import json, os, sys, datetime
log, gpu, commit = sys.argv[1:4]
def load(name):
    p = os.path.join(log, name + ".json")
    return json.load(open(p)) if os.path.exists(p) and os.path.getsize(p) else None
print("\n## GPU benchmark, %s, %s, commit %s\n" % (datetime.date.today(), gpu, commit))
print("| run | tokens/s | step (s) | MFU | MTP counted | peak memory (GiB) | loss first -> last |")
print("|---|---:|---:|---:|---|---:|---|")
rows = {}
for name in ("bench-s", "bench-m", "bench-m-nomtp"):
    r = load(name)
    if not r: continue
    rows[name] = r
    print("| %s | %.0f | %.3f | %.1f%% | %s | %.1f | %.3f -> %.3f |" % (name, r["tokens_per_s"], r["step_s"],
          100 * r["mfu"], "yes" if r["mtp"] else "no", r["table_peak_gib"], r["loss_first"], r["loss_last"]))
hf = load("hf")
if hf and "tokens_per_s" in hf:
    print("| transformers (bench-m, no MTP) | %.0f | %.3f | | no | %.1f | %.3f -> %.3f |" % (hf["tokens_per_s"],
          hf["step_s"], hf["peak_gib"], hf["loss_first"], hf["loss_last"]))
    base = rows.get("bench-m-nomtp")
    if base:
        print("\ndstrain / transformers on bench-m without MTP: %.2fx tokens/s" % (base["tokens_per_s"] / hf["tokens_per_s"]))
elif os.path.exists(os.path.join(log, "hf.txt")):
    print("\ntransformers: no result (see hf.txt)")
print("\nMFU: model FLOPs of model/flops.h (causal attention counted as half) over the dense BF16 peak.")
PY
say "done in $(elapsed) s; exit $STATUS"
exit $STATUS
